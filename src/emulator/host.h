// The host (VMM) side of every emulated backend: it spawns the CVM image as
// its own process and drives it through the emulated hypervisor interface.
// Platform specifics (SNP RMP, CCA granules, TDX SEPT) live in the CVM
// process's EmulatedPlatform; the host side is the same for every platform,
// which is why one class serves all backends.
//
// Thread-safe: calls on different CVMs and on different hvCPUs of one CVM run
// concurrently; calls on one hvCPU are serialised.
#ifndef CPC_SRC_EMULATOR_HOST_H_
#define CPC_SRC_EMULATOR_HOST_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <sys/types.h>

#include <cpc/backend.h>
#include <cpc/registry.h>

#include "emulator/launch.h"

CPC_NAMESPACE_BEGIN
namespace emu {

class EmulatedBackend : public Backend {
 public:
  // `platform`: the platform model the CVM process instantiates ("sev-snp").
  // `image`: the CVM image executable; `chip_seed`: which emulated chip.
  EmulatedBackend(std::string name, std::string image, uint64_t chip_seed);
  ~EmulatedBackend() override;

  std::string_view name() const override { return name_; }
  Result<CvmHandle> LaunchCvm(const LaunchConfig& config) override;
  Status DestroyCvm(CvmHandle cvm) override;
  Result<uint32_t> CreateHvcpu(CvmHandle cvm,
                               const HvcpuConfig& config) override;
  Result<HvcpuExit> ScheduleHvcpu(CvmHandle cvm, uint32_t hvcpu,
                                  const HvcpuEntry& entry) override;
  Result<SharedRegion> MapSharedRegion(CvmHandle cvm) override;
  Result<uint64_t> AttachSharedFile(CvmHandle cvm, int fd) override;
  Status DetachSharedFile(CvmHandle cvm) override;
  Status PauseGuest(CvmHandle cvm) override;
  Status ResumeGuest(CvmHandle cvm) override;
  Result<std::vector<Gpa>> ReadDirtyLog(CvmHandle cvm, bool rearm) override;
  Result<std::vector<uint8_t>> RequestToken(
      CvmHandle cvm, const TokenRequest& request) override;
  Status ThrottleGuest(CvmHandle cvm, double fraction) override;

  // Beyond the Backend interface, for tests and diagnostics:
  // a compromised guest OS touching `gpa` (the platform model decides).
  Status GuestOsAccess(CvmHandle cvm, Gpa gpa, bool write);
  Result<LaunchedInfo> Info(CvmHandle cvm);
  // Kills the CVM process as a crash would (no shutdown handshake).
  Status Kill(CvmHandle cvm);

 private:
  struct Cvm;
  Result<std::shared_ptr<Cvm>> Find(CvmHandle cvm);

  const std::string name_;
  const std::string image_;
  const uint64_t chip_seed_;
  std::mutex mu_;
  CvmHandle next_ = 1;
  std::map<CvmHandle, std::shared_ptr<Cvm>> cvms_;
};

// The path of the CVM image built with libcpc: $CPC_CVM_IMAGE, else
// `cpc-cvm` next to the running executable, else the build tree's.
std::string DefaultCvmImage();

// Registry entry of one emulated platform.
class EmulatedBackendFactory : public BackendFactory {
 public:
  EmulatedBackendFactory(std::string name, std::string description,
                         std::vector<ProbeFact> (*platform_probe)());
  std::string_view name() const override { return name_; }
  std::string_view description() const override { return description_; }
  bool Available() const override;
  std::vector<ProbeFact> Probe() const override;
  // Options: image=<path>, chip_seed=<n>. Anything else is misconfigured.
  Result<std::unique_ptr<Backend>> Create(
      const BackendOptions& options) const override;

 private:
  std::string name_;
  std::string description_;
  std::vector<ProbeFact> (*platform_probe_)();
};

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_HOST_H_
