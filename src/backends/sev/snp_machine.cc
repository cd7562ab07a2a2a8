#include "backends/sev/snp_machine.h"

#include <fmt/format.h>

#include "backends/sev/vmsa.h"
#include "core/bytes.h"

CPC_NAMESPACE_BEGIN
namespace sev {

namespace {
constexpr uint64_t k2MBytes = k2MPages * kPageSize;

Status InstrFail(int64_t code, const char* instr, const char* why) {
  return Status(Code::kPlatformError, fmt::format("{}: {}", instr, why), code);
}
Status Npf(uint64_t info, const char* what) {
  return Status(Code::kPermissionDenied, fmt::format("#VMEXIT(NPF): {}", what),
                static_cast<int64_t>(info));
}
uint64_t AccessBits(Access a) {
  switch (a) {
    case Access::kWrite:
      return kNpfWrite;
    case Access::kExecUser:
    case Access::kExecSuper:
      return kNpfFetch;
    default:
      return 0;
  }
}
bool Aligned2M(uint64_t v) { return (v & (k2MBytes - 1)) == 0; }

// The RMP checks PVALIDATE and RMPADJUST share once the page is translated:
// the guest owns it, and the instruction's page size matches the entry's.
Status CheckInstrEntry(const char* instr, const RmpEntry& e, bool owned,
                       bool big) {
  if (!owned)
    return Npf(kNpfPresent | kNpfRmp | kNpfEnc, "page not owned by guest");
  if (!big && e.page_size == PageSize::k2M)
    return Status(
        Code::kPermissionDenied,
        fmt::format("#VMEXIT(NPF): 4K {} on a 2M RMP entry (host "
                    "should PSMASH)",
                    instr),
        static_cast<int64_t>(kNpfPresent | kNpfRmp | kNpfEnc | kNpfSizeM));
  if (big && e.page_size == PageSize::k4K)
    return Status(Code::kPlatformError,
                  fmt::format("{}: 2M {} on 4K RMP entries", instr, instr),
                  kFailSizeMismatch);
  return Status::Ok();
}
}  // namespace

SnpMachine::SnpMachine(GuestMemory mem, uint32_t asid, uint64_t sev_features)
    : mem_(mem),
      asid_(asid),
      sev_features_(sev_features),
      rmp_(mem.size / kPageSize),
      npt_frames_(mem.size / kPageSize),
      npt_(new std::atomic<uint64_t>[mem.size / kPageSize]) {
  for (uint64_t i = 0; i < npt_frames_; ++i)
    npt_[i].store(i + 1, std::memory_order_relaxed);
}

// ---------------------------------------------------------------- host side

Status SnpMachine::NptMap(Gpa gpa, uint64_t spa, PageSize size) {
  uint64_t n = size == PageSize::k2M ? k2MPages : 1;
  if ((gpa | spa) & (kPageSize - 1) ||
      (size == PageSize::k2M && (!Aligned2M(gpa) || !Aligned2M(spa))))
    return Status(Code::kInvalidArgument, "NPT map: misaligned");
  if ((gpa >> kPageShift) + n > npt_frames_ ||
      (spa >> kPageShift) + n > rmp_.frames())
    return Status(Code::kInvalidArgument, "NPT map: out of range");
  for (uint64_t i = 0; i < n; ++i)
    npt_[(gpa >> kPageShift) + i].store(
        ((spa >> kPageShift) + i + 1) | (size == PageSize::k2M ? kNpt2M : 0),
        std::memory_order_relaxed);
  return Status::Ok();
}

Status SnpMachine::NptUnmap(Gpa gpa) {
  if ((gpa >> kPageShift) >= npt_frames_)
    return Status(Code::kInvalidArgument, "NPT unmap: out of range");
  npt_[gpa >> kPageShift].store(0, std::memory_order_relaxed);
  return Status::Ok();
}

Result<uint64_t> SnpMachine::NptLookup(Gpa gpa) const {
  uint64_t npt = NptRaw(gpa);
  if (npt == 0) return Status(Code::kNotFound, "GPA not mapped in the NPT");
  return ((npt & kNptFrameMask) - 1) * kPageSize + (gpa & (kPageSize - 1));
}

Status SnpMachine::RmpUpdate(uint64_t spa, const RmpUpdateArgs& a) {
  const char* kI = "RMPUPDATE";
  uint64_t frame = spa >> kPageShift;
  bool big = a.page_size == PageSize::k2M;
  uint64_t n = big ? k2MPages : 1;
  if (spa & (kPageSize - 1) || frame + n > rmp_.frames())
    return InstrFail(kFailInput, kI, "SPA not a covered page");
  if (big && (!Aligned2M(spa) || (a.assigned && !Aligned2M(a.gpa))))
    return InstrFail(kFailInput, kI, "2M page not 2M aligned");
  if (a.asid > rmp_bits::kMaxAsid || (a.gpa & (kPageSize - 1)))
    return InstrFail(kFailInput, kI, "bad ASID or GPA");
  // Table 15-35: a guest page has a non-zero ASID; ASID 0 + assigned is an
  // AMD-SP page and must be immutable.
  if (a.assigned && a.asid == 0 && !a.immutable)
    return InstrFail(kFailInput, kI, "assigned page with ASID 0");
  RmpTable::WriteScope w(&rmp_);
  RmpEntry cur = w.Get(frame);
  if (cur.immutable)
    return InstrFail(kFailPermission, kI, "entry is immutable");
  for (uint64_t i = 0; i < n; ++i) {
    RmpEntry e = w.Get(frame + i);
    if (e.in_use) return InstrFail(kFailInUse, kI, "page in use (VMSA)");
    if (e.immutable) return InstrFail(kFailPermission, kI, "immutable");
    if (big && e.assigned && e.page_size == PageSize::k4K)
      return InstrFail(kFailOverlap, kI, "2M update over assigned 4K pages");
  }
  if (!big && cur.assigned && cur.page_size == PageSize::k2M)
    return InstrFail(kFailOverlap, kI, "4K update inside a 2M page (PSMASH)");
  for (uint64_t i = 0; i < n; ++i) {
    RmpEntry e;  // Validated, VMSA and VMPL1-3 permissions cleared
    e.assigned = a.assigned;
    e.page_size = a.page_size;
    e.immutable = a.immutable;
    e.asid = a.asid;
    e.gpa = a.assigned ? a.gpa + i * kPageSize : 0;
    w.Write(frame + i, e);
  }
  return Status::Ok();
}

Status SnpMachine::Psmash(uint64_t spa) {
  const char* kI = "PSMASH";
  uint64_t frame = spa >> kPageShift;
  if (!Aligned2M(spa) || frame + k2MPages > rmp_.frames())
    return InstrFail(kFailInput, kI, "SPA not 2M aligned or not covered");
  RmpTable::WriteScope w(&rmp_);
  RmpEntry head = w.Get(frame);
  if (!head.assigned || head.page_size != PageSize::k2M)
    return InstrFail(kFailInput, kI, "not an assigned 2M entry");
  for (uint64_t i = 0; i < k2MPages; ++i)
    if (w.Get(frame + i).in_use) return InstrFail(kFailInUse, kI, "in use");
  for (uint64_t i = 0; i < k2MPages; ++i) {
    RmpEntry e = w.Get(frame + i);
    e.page_size = PageSize::k4K;  // GPA consecutive, everything else copied
    w.Write(frame + i, e);
  }
  return Status::Ok();
}

Status SnpMachine::HostWriteCheck(uint64_t spa) const {
  if ((spa >> kPageShift) >= rmp_.frames()) return Status::Ok();  // not covered
  uint64_t lo, hi;
  rmp_.ReadRaw(spa >> kPageShift, &lo, &hi);
  if (lo & rmp_bits::kAssigned)
    return Status(Code::kPermissionDenied,
                  "#PF(RMP): host write to a page it does not own", kHostPfRmp);
  return Status::Ok();
}

Result<RmpEntry> SnpMachine::RmpRead(uint64_t spa) const {
  if ((spa >> kPageShift) >= rmp_.frames())
    return Status(Code::kInvalidArgument, "RMPREAD: SPA not covered");
  return rmp_.Read(spa >> kPageShift);
}

Status SnpMachine::HandleApCreation(uint64_t info1, uint64_t info2,
                                    uint64_t rax) {
  uint64_t request = info1 & 0xffff;
  uint32_t vmpl = static_cast<uint32_t>((info1 >> 16) & 0xf);
  uint32_t apic = static_cast<uint32_t>(info1 >> 32);
  if (vmpl > kMaxVmpl)
    return Status(Code::kInvalidArgument, "AP creation: bad VMPL");
  std::lock_guard<std::mutex> l(vcpu_mu_);
  auto key = std::make_pair(apic, vmpl);
  switch (request) {
    case kApCreate:
    case kApCreateOnInit:
      // KVM (sev_snp_ap_creation): SEV_FEATURES must match the VM's; the
      // VMSA GPA must be a page-aligned guest address.
      if (rax != sev_features_)
        return Status(Code::kInvalidArgument,
                      "AP creation: SEV_FEATURES differ from the VM's");
      if (info2 & (kPageSize - 1) || (info2 >> kPageShift) >= npt_frames_)
        return Status(Code::kInvalidArgument, "AP creation: bad VMSA GPA");
      vmsas_[key] = info2;
      return Status::Ok();
    case kApDestroy:
      vmsas_.erase(key);
      return Status::Ok();
    default:
      return Status(Code::kInvalidArgument, "AP creation: unknown request");
  }
}

Result<Gpa> SnpMachine::RegisteredVmsa(uint32_t apic, uint32_t vmpl) const {
  std::lock_guard<std::mutex> l(vcpu_mu_);
  auto it = vmsas_.find({apic, vmpl});
  if (it == vmsas_.end())
    return Status(Code::kNotFound,
                  fmt::format("no VMSA for APIC {} VMPL {}", apic, vmpl));
  return it->second;
}

Result<Gpa> SnpMachine::VmrunBegin(uint32_t apic, uint32_t vmpl) {
  CPC_ASSIGN_OR_RETURN(Gpa gpa, RegisteredVmsa(apic, vmpl));
  auto invalid = [](const char* why) {
    return Status(Code::kPlatformError,
                  fmt::format("VMRUN: VMEXIT_INVALID: {}", why),
                  kVmexitInvalid);
  };
  uint64_t npt = NptRaw(gpa);
  if (npt == 0) return invalid("VMSA GPA not mapped");
  uint64_t frame = (npt & kNptFrameMask) - 1;
  RmpTable::WriteScope w(&rmp_);
  RmpEntry e = w.Get(frame);
  if (!OwnedBy(e, gpa)) return invalid("VMSA page fails the RMP checks");
  if (!e.vmsa) return invalid("RMP VMSA bit clear");
  if (e.in_use) return invalid("VMSA already running");
  std::span<const uint8_t, kPageSize> page(mem_.base + frame * kPageSize,
                                           kPageSize);
  if (!(VmsaLoad64(page, vmsa_off::kEfer) & kEferSvme))
    return invalid("EFER.SVME clear");
  if (page[vmsa_off::kVmpl] != vmpl) return invalid("VMSA.VMPL mismatch");
  if (VmsaLoad64(page, vmsa_off::kSevFeatures) != sev_features_)
    return invalid("SEV_FEATURES mismatch");
  e.in_use = true;
  w.Write(frame, e);
  return gpa;
}

Status SnpMachine::VmrunEnd(uint32_t apic, uint32_t vmpl) {
  CPC_ASSIGN_OR_RETURN(Gpa gpa, RegisteredVmsa(apic, vmpl));
  uint64_t npt = NptRaw(gpa);
  if (npt == 0) return Status(Code::kFailedPrecondition, "VMSA unmapped");
  uint64_t frame = (npt & kNptFrameMask) - 1;
  RmpTable::WriteScope w(&rmp_);
  RmpEntry e = w.Get(frame);
  if (!e.in_use) return Status(Code::kFailedPrecondition, "VMSA not running");
  e.in_use = false;
  w.Write(frame, e);
  return Status::Ok();
}

Result<uint8_t*> SnpMachine::FirmwareLaunchPage(Gpa gpa,
                                                std::array<uint8_t, 3> perms,
                                                bool vmsa) {
  if (gpa & (kPageSize - 1))
    return Status(Code::kPlatformError, "LAUNCH_UPDATE: GPA misaligned",
                  kSevInvalidAddress);
  uint64_t npt = NptRaw(gpa);
  if (npt == 0)
    return Status(Code::kPlatformError, "LAUNCH_UPDATE: GPA not mapped",
                  kSevInvalidAddress);
  uint64_t frame = (npt & kNptFrameMask) - 1;
  RmpTable::WriteScope w(&rmp_);
  RmpEntry e = w.Get(frame);
  if (!OwnedBy(e, gpa) || e.validated || e.page_size != PageSize::k4K)
    return Status(Code::kPlatformError,
                  "LAUNCH_UPDATE: page not assigned to the guest in the "
                  "pre-launch state",
                  kSevInvalidPageState);
  e.validated = true;
  e.vmsa = vmsa;
  e.perms = {kPermAll, static_cast<uint8_t>(perms[0] & kPermAll),
             static_cast<uint8_t>(perms[1] & kPermAll),
             static_cast<uint8_t>(perms[2] & kPermAll)};
  w.Write(frame, e);
  return mem_.base + frame * kPageSize;
}

// ------------------------------------------------------------- guest side

Result<uint64_t> SnpMachine::InstrTranslate(Gpa gpa, Access access) const {
  uint64_t npt = NptRaw(gpa);
  if (npt == 0) return Npf(AccessBits(access) | kNpfEnc, "GPA not mapped");
  return (npt & kNptFrameMask) - 1;
}

Result<bool> SnpMachine::Pvalidate(uint32_t vmpl, Gpa gpa, PageSize size,
                                   bool validate) {
  const char* kI = "PVALIDATE";
  if (vmpl != 0)
    return Status(Code::kPermissionDenied,
                  "PVALIDATE: #GP, only VMPL0 may validate", kGpFault);
  bool big = size == PageSize::k2M;
  if ((gpa & (kPageSize - 1)) || (big && !Aligned2M(gpa)))
    return InstrFail(kFailInput, kI, "GPA misaligned for the page size");
  CPC_ASSIGN_OR_RETURN(uint64_t frame, InstrTranslate(gpa, Access::kWrite));
  RmpTable::WriteScope w(&rmp_);
  RmpEntry e = w.Get(frame);
  CPC_RETURN_IF_ERROR(CheckInstrEntry(kI, e, OwnedBy(e, gpa), big));
  if (big && (frame % k2MPages) != 0)
    return InstrFail(kFailInput, kI, "2M page backed by misaligned SPA");
  if (e.validated == validate) return false;  // CF=1: no update
  uint64_t n = big ? k2MPages : 1;
  for (uint64_t i = 0; i < n; ++i) {
    RmpEntry x = w.Get(frame + i);
    x.validated = validate;
    w.Write(frame + i, x);
  }
  return true;
}

Status SnpMachine::Rmpadjust(uint32_t vmpl, Gpa gpa, PageSize size,
                             uint64_t rdx) {
  const char* kI = "RMPADJUST";
  uint32_t target = static_cast<uint32_t>(rdx & kRmpAdjTargetVmplMask);
  uint8_t perms = static_cast<uint8_t>(rdx >> kRmpAdjPermShift);
  bool want_vmsa = rdx & kRmpAdjVmsa;
  bool big = size == PageSize::k2M;
  if (vmpl > kMaxVmpl || target > kMaxVmpl ||
      (rdx & ~(kRmpAdjTargetVmplMask | (0xffull << kRmpAdjPermShift) |
               kRmpAdjVmsa)) ||
      (perms & ~kPermAll))
    return InstrFail(kFailInput, kI, "reserved bits or VMPL out of range");
  if ((gpa & (kPageSize - 1)) || (big && !Aligned2M(gpa)))
    return InstrFail(kFailInput, kI, "GPA misaligned for the page size");
  CPC_ASSIGN_OR_RETURN(uint64_t frame, InstrTranslate(gpa, Access::kWrite));
  RmpTable::WriteScope w(&rmp_);
  RmpEntry e = w.Get(frame);
  CPC_RETURN_IF_ERROR(CheckInstrEntry(kI, e, OwnedBy(e, gpa), big));
  if (target <= vmpl)
    return InstrFail(kFailPermission, kI,
                     "target VMPL not less privileged than the caller");
  if ((perms & ~e.perms[vmpl]) != 0)
    return InstrFail(kFailPermission, kI,
                     "grants permissions the caller does not hold");
  // The VMSA bit is ignored when the current VMPL != 0 [MSDOC __rmpadjust].
  bool vmsa = vmpl == 0 ? want_vmsa : e.vmsa;
  // Model decision: a VMSA must be one 4 KiB page.
  if (vmsa && big) return InstrFail(kFailInput, kI, "VMSA on a 2M page");
  if (vmsa != e.vmsa && e.in_use)
    return InstrFail(kFailInUse, kI, "VMSA is running");
  uint64_t n = big ? k2MPages : 1;
  for (uint64_t i = 0; i < n; ++i) {
    RmpEntry x = w.Get(frame + i);
    x.perms[target] = perms;
    x.vmsa = vmsa;
    w.Write(frame + i, x);
  }
  return Status::Ok();
}

Result<RmpQueryResult> SnpMachine::Rmpquery(uint32_t vmpl, Gpa gpa,
                                            uint32_t target) const {
  if (target > kMaxVmpl || target < vmpl || (gpa & (kPageSize - 1)))
    return InstrFail(kFailInput, "RMPQUERY", "bad target VMPL or GPA");
  CPC_ASSIGN_OR_RETURN(uint64_t frame, InstrTranslate(gpa, Access::kRead));
  RmpEntry e = rmp_.Read(frame);
  if (!OwnedBy(e, gpa))
    return Npf(kNpfPresent | kNpfRmp | kNpfEnc, "page not owned by guest");
  return RmpQueryResult{e.perms[target], e.vmsa, e.page_size};
}

Fault SnpMachine::Check(uint32_t vmpl, Gpa gpa, Access access,
                        bool c_bit) const noexcept {
  return CheckNpt(vmpl, gpa, access, c_bit, NptRaw(gpa));
}

Fault SnpMachine::CheckNpt(uint32_t vmpl, Gpa gpa, Access access, bool c_bit,
                           uint64_t npt) const noexcept {
  using namespace rmp_bits;
  const bool fetch =
      access == Access::kExecUser || access == Access::kExecSuper;
  c_bit = c_bit || fetch;  // instruction fetches are always C=1
  uint64_t abits = AccessBits(access) | (c_bit ? kNpfEnc : 0);
  if (npt == 0) return {Fault::kNpf, abits};
  uint64_t lo, hi;
  rmp_.ReadRaw((npt & kNptFrameMask) - 1, &lo, &hi);
  if (!c_bit) {
    // Shared access: only data writes are checked (Hypervisor-Owned).
    if (access == Access::kWrite && (lo & kAssigned))
      return {Fault::kNpf, abits | kNpfPresent | kNpfRmp};
    return {};
  }
  // Guest-Owned, Reverse-Map, Mutable, Page-Size -> NPF.
  uint64_t want = kAssigned | (uint64_t{asid_} << kAsidShift) |
                  (gpa & kGpaMask) | ((npt & kNpt2M) ? kPageSize2M : 0);
  uint64_t mask = kAssigned | kAsidMask | kGpaMask | kImmutable | kPageSize2M;
  if ((lo & mask) != want) return {Fault::kNpf, abits | kNpfPresent | kNpfRmp};
  // Validated -> #VC.
  if (!(lo & kValidated)) return {Fault::kVc, uint64_t{kVcPageNotValidated}};
  // VMPL -> NPF.
  if (vmpl != 0) {
    uint8_t p = static_cast<uint8_t>(hi >> (8 * (vmpl & 3)));
    uint8_t need = access == Access::kRead       ? kPermRead
                   : access == Access::kWrite    ? (kPermRead | kPermWrite)
                   : access == Access::kExecUser ? kPermExecUser
                                                 : kPermExecSuper;
    if ((p & need) != need || vmpl > kMaxVmpl)
      return {Fault::kNpf, abits | kNpfPresent | kNpfRmp | kNpfVmpl};
  }
  return {};
}

Status SnpMachine::FaultToStatus(const Fault& f, Gpa gpa) {
  switch (f.kind) {
    case Fault::kNone:
      return Status::Ok();
    case Fault::kVc:
      return Status(Code::kPlatformError,
                    fmt::format("#VC PAGE_NOT_VALIDATED at GPA {:#x}", gpa),
                    static_cast<int64_t>(f.code));
    case Fault::kNpf:
    default:
      return Status(Code::kPermissionDenied,
                    fmt::format("#VMEXIT(NPF) at GPA {:#x}{}", gpa,
                                (f.code & kNpfVmpl)  ? " (VMPL permission)"
                                : (f.code & kNpfRmp) ? " (RMP check)"
                                                     : " (not mapped)"),
                    static_cast<int64_t>(f.code));
  }
}

Status SnpMachine::CheckAccess(uint32_t vmpl, Gpa gpa, Access access,
                               bool c_bit) const {
  Fault f = Check(vmpl, gpa, access, c_bit);
  if (!f) return Status::Ok();
  return FaultToStatus(f, gpa);
}

Result<uint8_t*> SnpMachine::GuestPage(uint32_t vmpl, Gpa gpa, Access access,
                                       bool c_bit) const {
  if ((gpa >> kPageShift) >= npt_frames_)
    return Status(Code::kInvalidArgument,
                  fmt::format("GPA {:#x} beyond guest memory", gpa));
  uint64_t npt = NptRaw(gpa);
  Fault f = CheckNpt(vmpl, gpa, access, c_bit, npt);
  if (f) return FaultToStatus(f, gpa);
  uint64_t frame = (npt & kNptFrameMask) - 1;
  return mem_.base + frame * kPageSize;
}

}  // namespace sev
CPC_NAMESPACE_END
