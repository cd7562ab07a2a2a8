// The CVM process: what a CVM image's main() calls. It receives the launch
// parameters on the VM channel (fd 3), lets the platform model launch and
// measure the CVM, boots the guest-OS model, creates the hvCPUs with their
// runtimes, shares a memfd region with the host and then serves the
// hypervisor interface until the host shuts it down or goes away.
#ifndef CPC_SRC_EMULATOR_CVM_H_
#define CPC_SRC_EMULATOR_CVM_H_

#include <functional>
#include <memory>
#include <string_view>

#include <cpc/registry.h>

#include "emulator/platform.h"

CPC_NAMESPACE_BEGIN
namespace emu {

using PlatformFactory =
    std::function<Result<std::unique_ptr<EmulatedPlatform>>(std::string_view)>;
using ModuleInstaller = std::function<Status(ModuleRegistry&)>;

// Returns the process exit code.
int RunCvm(const PlatformFactory& platforms, const ModuleInstaller& modules);

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_CVM_H_
