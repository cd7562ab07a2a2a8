// The backends compiled into libcpc (CMake's CPC_BACKENDS list): their
// registry entries on the host side and their platform models inside the CVM
// image.
#ifndef CPC_SRC_BACKENDS_BUILTIN_H_
#define CPC_SRC_BACKENDS_BUILTIN_H_

#include <memory>
#include <string_view>

#include <cpc/registry.h>

#include "emulator/platform.h"

CPC_NAMESPACE_BEGIN

// Called once by BackendRegistry::Builtin().
void RegisterBuiltinBackends(BackendRegistry& registry);
// kBackendUnknown for a platform this image does not contain.
Result<std::unique_ptr<emu::EmulatedPlatform>> MakeEmulatedPlatform(
    std::string_view name);

CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_BUILTIN_H_
