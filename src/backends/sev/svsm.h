// SvsmCore: the VMPL0 side of one CVM (what COCONUT-SVSM does; in libcpc the
// CPC runtime on hvCPUs plays this role): the SVSM core protocol for a
// guest OS running at a lower VMPL, VMPL0's own vCPUs (hvCPUs), Secure-CPC
// isolation by RMPADJUST, and vCPU state export/import in the VMSA layout.
//
// Core protocol [COCONUT kernel/src/protocols/core.rs; Linux sev.h;
// AMD #58019]: RAX = protocol << 32 | call id; arguments RCX, RDX, R8, R9;
// results RAX (0 or 0x8000_xxxx), RCX, RDX, R8. Calls modelled:
//   REMAP_CA 0 (RCX = new CAA GPA), PVALIDATE 1 (RCX = GPA of the request
//   list), CREATE_VCPU 2 (RCX = VMSA GPA, RDX = CAA GPA, R8[31:0] = APIC
//   ID), DELETE_VCPU 3 (RCX = VMSA GPA), QUERY_PROTOCOL 6. Others return
//   UNSUPPORTED_CALL, other protocols UNSUPPORTED_PROTOCOL.
// CAA [Linux struct svsm_ca]: byte 0 call_pending, byte 1 mem_available,
// svsm_buffer at 8. ServiceVcpu() is the request-loop body: it reads
// call_pending from the caller's CAA and the registers from the caller's
// own VMSA (as COCONUT's execloop does), dispatches and writes back.
//
// Ownership: borrows the SnpMachine (must outlive it). Threading: every
// method takes an internal mutex (COCONUT's PVALIDATE_LOCK role), so calls
// from several vCPUs serialise. Errors: protocol results are returned in
// RAX, never as a Status; the Status-returning methods use kInvalidArgument
// (malformed), kNotFound (unknown vCPU), kFailedPrecondition (running
// VMSA), kPermissionDenied (a state that would change VMPL/features), and
// propagate the machine's kPlatformError/kPermissionDenied.
#ifndef CPC_SRC_BACKENDS_SEV_SVSM_H_
#define CPC_SRC_BACKENDS_SEV_SVSM_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include <cpc/backend.h>
#include <cpc/status.h>
#include <cpc/types.h>
#include <cpc/version.h>

#include "backends/sev/ghcb.h"
#include "backends/sev/snp_machine.h"
#include "backends/sev/vmsa.h"

CPC_NAMESPACE_BEGIN
namespace sev {

struct SvsmRegs {
  uint64_t rax = 0, rcx = 0, rdx = 0, r8 = 0, r9 = 0;
};

inline constexpr size_t kCaaCallPending = 0;
inline constexpr size_t kCaaMemAvailable = 1;
inline constexpr size_t kCaaBuffer = 8;
// SVSM_CORE_PVALIDATE failures: 0x8000_1000 + PVALIDATE code; FAIL_UNCHANGED
// 0x10 [COCONUT protocols/errors.rs; Linux SVSM_PVALIDATE_FAIL_*].
inline constexpr uint64_t kSvsmPvalidateFailBase = 0x80001000;
inline constexpr uint64_t kSvsmPvalidateFailUnchanged = 0x80001010;

class SvsmCore {
 public:
  // `guest_vmpl`: where the guest OS runs (1..3; COCONUT uses 2).
  // `apic_ids`: the APIC IDs the platform knows (CREATE_VCPU refuses others).
  // `host`: the VMGEXIT channel to the hypervisor (AP creation).
  SvsmCore(SnpMachine* machine, uint32_t guest_vmpl,
           std::set<uint32_t> apic_ids, VmgexitChannel host);
  SvsmCore(const SvsmCore&) = delete;
  SvsmCore& operator=(const SvsmCore&) = delete;

  uint32_t guest_vmpl() const { return guest_vmpl_; }

  // Records a VMSA created at launch (SNP_LAUNCH_UPDATE type VMSA) for
  // (apic_id, vmpl) and its CAA (for the guest VMPL; 0 if none).
  Status RegisterLaunchVmsa(uint32_t apic_id, uint32_t vmpl, Gpa vmsa_gpa,
                            Gpa caa_gpa);

  // One core-protocol call from the guest OS on vCPU `apic_id`.
  void HandleCall(uint32_t apic_id, SvsmRegs& regs);
  // The request-loop body after the host ran VMPL0 of `apic_id`: reads and
  // clears the CAA's call_pending, takes RAX/RCX/RDX/R8/R9 from the guest
  // VMSA, dispatches, writes RAX/RCX/RDX/R8 back. kFailedPrecondition if no
  // call is pending (the call was not serviced; the guest sees pending=1).
  Status ServiceVcpu(uint32_t apic_id);

  // ---- VMPL0's own vCPUs: hvCPUs of Secure CPCs ----
  // Makes `vmsa_gpa` a VMPL0 VMSA holding `initial` (vmpl forced to 0,
  // EFER.SVME and the VM's SEV_FEATURES set): revokes VMPL1-3 access,
  // writes the page, sets the RMP VMSA bit (RMPADJUST from VMPL0, aimed at
  // VMPL1 as COCONUT does), then asks the host to register it (AP Create
  // NAE, vmpl 0). The page joins the protected set.
  Status CreateVmpl0Vcpu(uint32_t apic_id, Gpa vmsa_gpa, const Vmsa& initial);
  // Clears EFER.SVME and the VMSA bit, asks the host to forget it (AP
  // Destroy) and returns the page to the guest OS. kFailedPrecondition while
  // it runs.
  Status DeleteVmpl0Vcpu(uint32_t apic_id);

  // ---- Secure-CPC isolation ----
  // Revokes every VMPL1-3 permission on `range` (RMPADJUST target 1..3,
  // perms 0) and refuses later guest requests (PVALIDATE, CREATE_VCPU) that
  // touch it. Release grants the guest VMPL RWX back (pages are zeroed
  // first, so no Secure-CPC data leaks).
  Status Isolate(GpaRange range);
  Status Release(GpaRange range);
  bool IsProtected(Gpa gpa) const;

  // ---- vCPU state (SEE/SDI) ----
  // The 4 KiB VMSA of (apic_id, vmpl) from VMPL0's own registry (not the
  // host's). kFailedPrecondition while it runs.
  Result<std::vector<uint8_t>> ExportVcpuState(uint32_t apic_id, uint32_t vmpl);
  // Replaces it. The state must be a 4 KiB page (kInvalidArgument) whose
  // VMPL field equals `vmpl` and whose SEV_FEATURES equal the VM's
  // (kPermissionDenied otherwise: an import may not change privilege or
  // features).
  Status ImportVcpuState(uint32_t apic_id, uint32_t vmpl,
                         std::span<const uint8_t> state);

 private:
  struct VcpuRec {
    Gpa vmsa = 0;
    Gpa caa = 0;
  };
  using Key = std::pair<uint32_t, uint32_t>;  // (apic, vmpl)

  uint64_t CoreCall(uint32_t apic_id, uint32_t call, SvsmRegs& regs);
  uint64_t CreateVcpu(SvsmRegs& regs);
  uint64_t DeleteVcpu(SvsmRegs& regs);
  uint64_t Pvalidate(SvsmRegs& regs);
  uint64_t PvalidateOne(Gpa gpa, PageSize size, bool validate, bool ignore_cf);
  bool GuestRam(Gpa gpa) const;
  bool ProtectedLocked(Gpa gpa) const;
  // The VMSA page of (apic, vmpl) from VMPL0's registry, if that vCPU is not
  // running (kNotFound, kFailedPrecondition). Caller holds mu_.
  Result<uint8_t*> StoppedVmsaLocked(uint32_t apic, uint32_t vmpl,
                                     Access access) const;
  Status RevokeLower(Gpa gpa, PageSize size);
  Status GrantGuest(Gpa gpa, PageSize size);
  Result<uint8_t*> Vmpl0Page(Gpa gpa, Access a) const {
    return m_->GuestPage(0, gpa, a);
  }
  Result<std::pair<Key, VcpuRec>> FindVmsa(Gpa vmsa_gpa) const;

  SnpMachine* m_;
  uint32_t guest_vmpl_;
  std::set<uint32_t> apic_ids_;
  VmgexitChannel host_;
  mutable std::mutex mu_;
  std::map<Key, VcpuRec> vcpus_;
  std::set<uint64_t> protected_;  // GPA frames VMPL0 keeps for itself
  std::vector<uint8_t> ghcb_page_;
};

}  // namespace sev
CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_SEV_SVSM_H_
