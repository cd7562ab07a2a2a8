// The maintenance modules built into the CVM image.
#ifndef CPC_SRC_MODULES_BUILTIN_H_
#define CPC_SRC_MODULES_BUILTIN_H_

#include <cpc/registry.h>

CPC_NAMESPACE_BEGIN
Status InstallBuiltinModules(ModuleRegistry& registry);
CPC_NAMESPACE_END

#endif  // CPC_SRC_MODULES_BUILTIN_H_
