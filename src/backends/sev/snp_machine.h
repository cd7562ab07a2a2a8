// SnpMachine: the emulated SEV-SNP silicon for one guest (one ASID).
//
// It owns the RMP (rmp.h), a host-controlled nested page table (NPT: GPA
// frame -> SPA frame), and the host's AP-creation registry, and implements
// the hardware instructions with their real rules and return codes
// (APM vol. 2 sec. 15.36; shared/research/sev-snp.md sec. 2):
//   host:   RMPUPDATE, PSMASH, host-write check, VMRUN checks (Table 15-41)
//   guest:  PVALIDATE, RMPADJUST, RMPQUERY, and the access check of every
//           guest access (Table 15-39).
// The guest memory is a caller-provided region: SPA s is base + s. GPA and
// SPA are distinct: a guest access walks the NPT (which the untrusted host
// may change at any time) and the RMP reverse-map check (entry.gpa == GPA)
// catches a remap.
//
// Errors. Instruction return codes (EAX) come back as kPlatformError with
// the code in the subcode (1 FAIL_INPUT, 2 FAIL_PERMISSION, 3 FAIL_INUSE,
// 4 FAIL_OVERLAP, 6 FAIL_SIZEMISMATCH). Faults the hardware would raise:
//   #VMEXIT(NPF)  -> kPermissionDenied, subcode = EXITINFO1 (kNpf* bits)
//   #VC 0x404     -> kPlatformError, subcode kVcPageNotValidated
//   #GP(0)        -> kPermissionDenied, subcode kGpFault
//   host #PF(RMP) -> kPermissionDenied, subcode kHostPfRmp
//   VMRUN refused -> kPlatformError, subcode kVmexitInvalid (-1)
// Out-of-range addresses are kInvalidArgument.
//
// Ownership: the memory region must outlive the machine. Threading: every
// method is thread-safe. Check/CheckAccess/GuestPage are lock-free (hot
// path: one NPT load + one seqlock RMP read); the mutating instructions are
// serialised (the hardware would return FAIL_INUSE on a race instead).
#ifndef CPC_SRC_BACKENDS_SEV_SNP_MACHINE_H_
#define CPC_SRC_BACKENDS_SEV_SNP_MACHINE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include <cpc/status.h>
#include <cpc/types.h>
#include <cpc/version.h>

#include "backends/sev/rmp.h"
#include "backends/sev/snp_abi.h"

CPC_NAMESPACE_BEGIN
namespace sev {

struct GuestMemory {
  uint8_t* base = nullptr;  // SPA 0
  size_t size = 0;          // multiple of 4 KiB (2 MiB for 2M pages)
};

enum class Access : uint8_t { kRead, kWrite, kExecUser, kExecSuper };

// Outcome of an access check; kind == kNone means allowed.
struct Fault {
  enum Kind : uint8_t { kNone = 0, kNpf, kVc };
  Kind kind = kNone;
  uint64_t code = 0;  // NPF: EXITINFO1; VC: error code (0x404)
  explicit operator bool() const { return kind != kNone; }
};

struct RmpUpdateArgs {
  bool assigned = false;
  PageSize page_size = PageSize::k4K;
  bool immutable = false;
  Gpa gpa = 0;
  uint32_t asid = 0;
};

struct RmpQueryResult {
  uint8_t perms = 0;  // of the target VMPL
  bool vmsa = false;
  PageSize page_size = PageSize::k4K;
};

class SnpMachine {
 public:
  // `mem` is the SPA space; the NPT starts as the identity map (GPA == SPA)
  // at 4 KiB granularity and every page hypervisor-owned. `asid` is the
  // guest's ASID (1..1023); `sev_features` the VM's SEV_FEATURES (must
  // include kSevFeatSnpActive).
  SnpMachine(GuestMemory mem, uint32_t asid,
             uint64_t sev_features = kSevFeatSnpActive);
  SnpMachine(const SnpMachine&) = delete;
  SnpMachine& operator=(const SnpMachine&) = delete;

  uint32_t asid() const { return asid_; }
  uint64_t sev_features() const { return sev_features_; }
  uint64_t frames() const { return rmp_.frames(); }
  uint64_t memory_bytes() const { return mem_.size; }

  // ---- Host (hypervisor; untrusted) ----
  // Maps GPA -> SPA in the nested page table (4K, or 2M if both aligned).
  Status NptMap(Gpa gpa, uint64_t spa, PageSize size = PageSize::k4K);
  Status NptUnmap(Gpa gpa);
  // The SPA `gpa` is mapped to (kNotFound if unmapped).
  Result<uint64_t> NptLookup(Gpa gpa) const;
  // RMPUPDATE: rewrites the entry of `spa` and clears Validated, VMSA and the
  // VMPL1-3 permissions (APM 15.36.6/15.36.7).
  Status RmpUpdate(uint64_t spa, const RmpUpdateArgs& args);
  // PSMASH: splits the 2 MiB entry at `spa` into 512 4 KiB entries, keeping
  // Validated and the permissions (APM 15.36.11).
  Status Psmash(uint64_t spa);
  // Host store to `spa`: #PF(RMP) if the page is not hypervisor-owned.
  Status HostWriteCheck(uint64_t spa) const;
  // RMPREAD (architectural view of one entry).
  Result<RmpEntry> RmpRead(uint64_t spa) const;
  // AP Creation NAE (SW_EXITCODE 0x80000013) as KVM handles it: EXITINFO1 =
  // request | vmpl << 16 | apic_id << 32, EXITINFO2 = VMSA GPA, RAX =
  // SEV_FEATURES (must equal the VM's). kInvalidArgument when refused.
  Status HandleApCreation(uint64_t exit_info1, uint64_t exit_info2,
                          uint64_t rax);
  // The VMSA GPA the host has registered for (apic_id, vmpl), if any.
  Result<Gpa> RegisteredVmsa(uint32_t apic_id, uint32_t vmpl) const;
  // Emulated VMRUN of (apic_id, vmpl): Table 15-41 checks on the VMSA page
  // (assigned to this ASID, reverse map, mutable, VMSA bit) plus the VMSA's
  // own EFER.SVME, VMPL and SEV_FEATURES; then marks the page in use until
  // VmrunEnd. Returns the VMSA GPA. kPlatformError(kVmexitInvalid) if not
  // runnable.
  Result<Gpa> VmrunBegin(uint32_t apic_id, uint32_t vmpl);
  Status VmrunEnd(uint32_t apic_id, uint32_t vmpl);

  // ---- AMD-SP (firmware) privileges; called by SnpFirmware only ----
  // SNP_LAUNCH_UPDATE's RMP transition of the page at `gpa`: it must be
  // assigned to this ASID at that GPA, 4K, mutable and not yet validated
  // (else kPlatformError(kSevInvalidPageState)). Sets Validated, the
  // VMPL1..3 masks `perms` and, for a VMSA page, the VMSA bit. Returns the
  // page's bytes for the firmware to measure/fill.
  Result<uint8_t*> FirmwareLaunchPage(Gpa gpa, std::array<uint8_t, 3> perms,
                                      bool vmsa);

  // ---- Guest instructions (vmpl = VMPL of the executing VMSA) ----
  // PVALIDATE. Returns true if the Validated bit changed, false for the
  // "no update" case (CF=1; Linux PVALIDATE_FAIL_NOUPDATE).
  Result<bool> Pvalidate(uint32_t vmpl, Gpa gpa, PageSize size, bool validate);
  // RMPADJUST with RDX = target_vmpl | perms << 8 | vmsa << 16.
  Status Rmpadjust(uint32_t vmpl, Gpa gpa, PageSize size, uint64_t rdx);
  static uint64_t RmpadjustRdx(uint32_t target_vmpl, uint8_t perms,
                               bool vmsa = false) {
    return target_vmpl | (uint64_t{perms} << kRmpAdjPermShift) |
           (vmsa ? kRmpAdjVmsa : 0);
  }
  // RMPQUERY: permissions of `target_vmpl` (>= vmpl) on the page.
  Result<RmpQueryResult> Rmpquery(uint32_t vmpl, Gpa gpa,
                                  uint32_t target_vmpl) const;

  // ---- Access checks (hot path) ----
  // The check a guest access at `vmpl` to `gpa` gets (Table 15-39), with
  // effective C-bit `c_bit` (private = true). Lock-free, no allocation.
  Fault Check(uint32_t vmpl, Gpa gpa, Access access,
              bool c_bit = true) const noexcept;
  Status CheckAccess(uint32_t vmpl, Gpa gpa, Access access,
                     bool c_bit = true) const;
  // Check + the page's bytes (the SPA the NPT maps `gpa` to).
  Result<uint8_t*> GuestPage(uint32_t vmpl, Gpa gpa, Access access,
                             bool c_bit = true) const;
  static Status FaultToStatus(const Fault& f, Gpa gpa);

  // Raw SPA bytes (what DRAM holds; tests and the firmware model only).
  uint8_t* SpaPointer(uint64_t spa) const { return mem_.base + spa; }

 private:
  static constexpr uint64_t kNpt2M = 1ull << 63;
  static constexpr uint64_t kNptFrameMask = (1ull << 52) - 1;
  // NPT lookup: SPA frame + 1 (0 = not present) | kNpt2M.
  uint64_t NptRaw(Gpa gpa) const {
    uint64_t gfn = gpa >> kPageShift;
    return gfn < npt_frames_ ? npt_[gfn].load(std::memory_order_relaxed) : 0;
  }
  Fault CheckNpt(uint32_t vmpl, Gpa gpa, Access access, bool c_bit,
                 uint64_t npt) const noexcept;
  // Resolves gpa for an instruction: SPA frame, or the NPF it raises.
  Result<uint64_t> InstrTranslate(Gpa gpa, Access access) const;
  bool OwnedBy(const RmpEntry& e, Gpa gpa) const {
    return e.assigned && e.asid == asid_ && !e.immutable &&
           e.gpa == (gpa & ~uint64_t{kPageSize - 1});
  }

  GuestMemory mem_;
  uint32_t asid_;
  uint64_t sev_features_;
  RmpTable rmp_;
  uint64_t npt_frames_;
  std::unique_ptr<std::atomic<uint64_t>[]> npt_;
  mutable std::mutex vcpu_mu_;
  std::map<std::pair<uint32_t, uint32_t>, Gpa> vmsas_;  // (apic, vmpl) -> GPA
};

}  // namespace sev
CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_SEV_SNP_MACHINE_H_
