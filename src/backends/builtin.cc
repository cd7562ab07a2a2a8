#include "backends/builtin.h"

#include <fmt/format.h>

#include "backends/sev/sev_platform.h"
#include "emulator/host.h"

CPC_NAMESPACE_BEGIN

void RegisterBuiltinBackends(BackendRegistry& registry) {
  (void)registry.Register(std::make_unique<emu::EmulatedBackendFactory>(
      "sev-snp",
      "AMD SEV-SNP, emulated: RMP/VMPL checks, SVSM vCPUs, signed reports",
      &SevProbe));
}

Result<std::unique_ptr<emu::EmulatedPlatform>> MakeEmulatedPlatform(
    std::string_view name) {
  if (name == "sev-snp") return MakeSevPlatform();
  return Status(Code::kBackendUnknown,
                fmt::format("this CVM image has no platform '{}'", name));
}

CPC_NAMESPACE_END
