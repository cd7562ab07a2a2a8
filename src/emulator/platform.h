// What the emulated machine needs from a platform model (SEV-SNP, CCA, TDX)
// beyond the guest face: the firmware's launch flow, vCPU creation, the
// hardware's check of guest-OS memory accesses, and the save/restore of vCPU
// registers at VMEXIT/VMENTER (into the VMSA, REC or TDVPS).
//
// Lives in the CVM process. Thread-safe like GuestPlatform.
#ifndef CPC_SRC_EMULATOR_PLATFORM_H_
#define CPC_SRC_EMULATOR_PLATFORM_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include <cpc/backend.h>
#include <cpc/status.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN
namespace emu {

class GuestMemory;

// Architectural registers of an emulated vCPU (the subset the guest-OS model
// and the CPC runtime use). Platforms serialise it in their own layout.
struct VcpuRegs {
  std::array<uint64_t, 16>
      gpr{};  // rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8-r15
  uint64_t rip = 0;
  uint64_t rflags = 0x2;
  uint64_t cr0 = 0x80050033;
  uint64_t cr3 = 0;
  uint64_t cr4 = 0x3506f0;
  uint64_t efer = 0xd01;

  friend bool operator==(const VcpuRegs&, const VcpuRegs&) = default;
};

struct LaunchInfo {
  Digest image_digest{};            // SHA-256 of the CVM image
  std::vector<uint8_t> policy;      // serialized TenantPolicy
  std::vector<HvcpuConfig> hvcpus;  // measured hvCPU set
  uint32_t gvcpus = 1;
  std::vector<VcpuRegs> gvcpu_regs;  // initial registers (measured)
  uint64_t chip_seed = 0;            // which emulated chip this machine is
};

class EmulatedPlatform : public GuestPlatform {
 public:
  // The firmware's launch: assign all of `memory` to this CVM, create the
  // gvCPUs' save areas, measure image + policy + vCPU set, validate memory
  // for the guest OS below `cpc_base` and keep [cpc_base, size) for the CPC
  // runtime (save areas, Secure-CPC memory). The guest OS boots after it.
  virtual Status Launch(GuestMemory* memory, Gpa cpc_base,
                        const LaunchInfo& info) = 0;
  virtual CvmIdentity identity() const = 0;
  // Creates hvCPU `config.index` (SEV: SVSM CREATE_VCPU of a VMPL0 VMSA).
  // `after_launch` is true for hvCPUs added to a running CVM; platforms that
  // cannot (CCA) refuse with kFailedPrecondition. Returns the isolation the
  // platform established for it.
  virtual Result<Isolation> CreateHvcpu(const HvcpuConfig& config,
                                        bool after_launch) = 0;
  // Hardware check of a guest-OS (not CPC) access: the guest OS runs at the
  // platform's less privileged level (VMPL1, plane 1, L2 TD).
  virtual Status CheckGuestOsAccess(Gpa gpa, bool write) const = 0;
  // VMEXIT / VMENTER of gvCPU `vcpu`.
  virtual Status SaveVcpu(uint32_t vcpu, const VcpuRegs& regs) = 0;
  virtual Result<VcpuRegs> LoadVcpu(uint32_t vcpu) = 0;
  // Self-diagnosis for `cpc info`.
  virtual std::vector<ProbeFact> Probe() const = 0;

  // Written-page tracking and the guest OS's right to run are implemented
  // once for every platform by the emulated machine (the CVM process wraps
  // the platform it hands to the CPC runtime, see cvm.cc): the write marks
  // and the gvCPUs belong to the machine, not to a platform model.
  Result<std::vector<Gpa>> TakeWrittenPages() final {
    return Status(Code::kUnimplemented, "provided by the emulated machine");
  }
  Status SetGuestOsRunnable(bool) final {
    return Status(Code::kUnimplemented, "provided by the emulated machine");
  }
};

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_PLATFORM_H_
