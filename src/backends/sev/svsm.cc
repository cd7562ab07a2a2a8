#include "backends/sev/svsm.h"

#include <chrono>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "core/bytes.h"

CPC_NAMESPACE_BEGIN
namespace sev {

namespace {
constexpr uint64_t kCoreProtocolVersion = 1;

std::span<uint8_t, kPageSize> PageSpan(uint8_t* p) {
  return std::span<uint8_t, kPageSize>(p, kPageSize);
}
}  // namespace

SvsmCore::SvsmCore(SnpMachine* machine, uint32_t guest_vmpl,
                   std::set<uint32_t> apic_ids, VmgexitChannel host)
    : m_(machine),
      guest_vmpl_(guest_vmpl),
      apic_ids_(std::move(apic_ids)),
      host_(std::move(host)),
      ghcb_page_(kPageSize, 0) {}

bool SvsmCore::GuestRam(Gpa gpa) const { return gpa < m_->memory_bytes(); }

bool SvsmCore::ProtectedLocked(Gpa gpa) const {
  return protected_.count(gpa >> kPageShift) != 0;
}

bool SvsmCore::IsProtected(Gpa gpa) const {
  std::lock_guard<std::mutex> l(mu_);
  return ProtectedLocked(gpa);
}

Status SvsmCore::RevokeLower(Gpa gpa, PageSize size) {
  for (uint32_t v = 1; v <= kMaxVmpl; ++v)
    CPC_RETURN_IF_ERROR(
        m_->Rmpadjust(0, gpa, size, SnpMachine::RmpadjustRdx(v, 0)));
  return Status::Ok();
}

Status SvsmCore::GrantGuest(Gpa gpa, PageSize size) {
  return m_->Rmpadjust(0, gpa, size,
                       SnpMachine::RmpadjustRdx(guest_vmpl_, kPermAll));
}

Status SvsmCore::RegisterLaunchVmsa(uint32_t apic, uint32_t vmpl, Gpa vmsa,
                                    Gpa caa) {
  std::lock_guard<std::mutex> l(mu_);
  if (vmpl > kMaxVmpl || (vmsa & (kPageSize - 1)) || !GuestRam(vmsa))
    return Status(Code::kInvalidArgument, "bad launch VMSA");
  if (!vcpus_.emplace(Key{apic, vmpl}, VcpuRec{vmsa, caa}).second)
    return Status(Code::kAlreadyExists, "vCPU already registered");
  apic_ids_.insert(apic);
  protected_.insert(vmsa >> kPageShift);
  return Status::Ok();
}

Result<std::pair<SvsmCore::Key, SvsmCore::VcpuRec>> SvsmCore::FindVmsa(
    Gpa vmsa) const {
  for (const auto& [k, r] : vcpus_)
    if (r.vmsa == vmsa) return std::make_pair(k, r);
  return Status(Code::kNotFound, "VMSA not registered");
}

// ---------------------------------------------------------- core protocol

void SvsmCore::HandleCall(uint32_t apic, SvsmRegs& regs) {
  std::lock_guard<std::mutex> l(mu_);
  uint32_t protocol = static_cast<uint32_t>(regs.rax >> 32);
  uint32_t call = static_cast<uint32_t>(regs.rax);
  if (protocol != kSvsmCoreProtocol) {
    regs.rax = kSvsmErrUnsupportedProtocol;
    return;
  }
  regs.rax = CoreCall(apic, call, regs);
}

uint64_t SvsmCore::CoreCall(uint32_t apic, uint32_t call, SvsmRegs& regs) {
  switch (call) {
    case kSvsmCoreRemapCa: {
      Gpa caa = regs.rcx;
      if ((caa & (kPageSize - 1)) || !GuestRam(caa) || ProtectedLocked(caa))
        return kSvsmErrInvalidParameter;
      auto it = vcpus_.find({apic, guest_vmpl_});
      if (it == vcpus_.end()) return kSvsmErrInvalidRequest;
      auto page = Vmpl0Page(caa, Access::kWrite);
      if (!page.ok()) return kSvsmErrInvalidAddress;
      std::memset(*page, 0, kCaaBuffer);  // zero the 8-byte header
      it->second.caa = caa;
      return kSvsmSuccess;
    }
    case kSvsmCorePvalidate:
      return Pvalidate(regs);
    case kSvsmCoreCreateVcpu:
      return CreateVcpu(regs);
    case kSvsmCoreDeleteVcpu:
      return DeleteVcpu(regs);
    case kSvsmCoreQueryProtocol: {
      uint32_t protocol = static_cast<uint32_t>(regs.rcx >> 32);
      uint32_t version = static_cast<uint32_t>(regs.rcx);
      regs.rcx =
          (protocol == kSvsmCoreProtocol && version >= kCoreProtocolVersion)
              ? (kCoreProtocolVersion | (kCoreProtocolVersion << 32))
              : 0;
      return kSvsmSuccess;
    }
    default:
      return kSvsmErrUnsupportedCall;
  }
}

uint64_t SvsmCore::CreateVcpu(SvsmRegs& regs) {
  Gpa vmsa = regs.rcx, caa = regs.rdx;
  uint32_t apic = static_cast<uint32_t>(regs.r8);
  if ((vmsa & (kPageSize - 1)) || (caa & (kPageSize - 1)) || !GuestRam(vmsa) ||
      !GuestRam(caa) || vmsa == caa || ProtectedLocked(vmsa) ||
      ProtectedLocked(caa))
    return kSvsmErrInvalidAddress;
  if (!apic_ids_.count(apic)) return kSvsmErrInvalidParameter;
  if (FindVmsa(vmsa).ok()) return kSvsmErrInvalidParameter;
  // The page must be guest-owned and validated for VMPL0 to read it.
  if (!m_->CheckAccess(0, vmsa, Access::kWrite).ok())
    return kSvsmErrInvalidAddress;
  // Revoke guest access first, so the checks below see the final content.
  if (!RevokeLower(vmsa, PageSize::k4K).ok()) return kSvsmErrInvalidAddress;
  auto page = Vmpl0Page(vmsa, Access::kRead);
  Vmsa v = Vmsa::Parse(PageSpan(*page));
  // "VMSA validity checks according to SVSM spec" [COCONUT core_create_vcpu]
  if (!v.runnable() || v.vmpl != guest_vmpl_ ||
      v.sev_features != m_->sev_features()) {
    (void)GrantGuest(vmsa, PageSize::k4K);
    return kSvsmErrInvalidParameter;
  }
  // COCONUT: RMPADJUST(GUEST_VMPL | READ | VMSA).
  if (!m_->Rmpadjust(0, vmsa, PageSize::k4K,
                     SnpMachine::RmpadjustRdx(guest_vmpl_, kPermRead, true))
           .ok()) {
    (void)GrantGuest(vmsa, PageSize::k4K);
    return kSvsmErrInvalidAddress;
  }
  vcpus_[{apic, guest_vmpl_}] = VcpuRec{vmsa, caa};
  return kSvsmSuccess;
}

uint64_t SvsmCore::DeleteVcpu(SvsmRegs& regs) {
  Gpa vmsa = regs.rcx;
  auto found = FindVmsa(vmsa);
  // Only the guest's own VMSAs; VMPL0's are not the guest's to delete.
  if (!found.ok() || found->first.second != guest_vmpl_)
    return kSvsmErrInvalidParameter;
  auto page = Vmpl0Page(vmsa, Access::kWrite);
  if (!page.ok()) return kSvsmErrInvalidAddress;
  auto span = PageSpan(*page);
  VmsaStore64(span, vmsa_off::kEfer,
              VmsaLoad64(span, vmsa_off::kEfer) & ~kEferSvme);
  // "loops until" the VMSA stops running [COCONUT core_delete_vcpu].
  auto spa = m_->NptLookup(vmsa);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (spa.ok()) {
    auto e = m_->RmpRead(*spa);
    if (!e.ok() || !e->in_use) break;
    if (std::chrono::steady_clock::now() > deadline) return kSvsmErrBusy;
    std::this_thread::yield();
  }
  // Clear the VMSA bit and give the page back.
  if (!m_->Rmpadjust(0, vmsa, PageSize::k4K,
                     SnpMachine::RmpadjustRdx(guest_vmpl_, kPermAll, false))
           .ok())
    return kSvsmErrInvalidAddress;
  vcpus_.erase(found->first);
  return kSvsmSuccess;
}

uint64_t SvsmCore::PvalidateOne(Gpa gpa, PageSize size, bool validate,
                                bool ignore_cf) {
  uint64_t n = size == PageSize::k2M ? k2MPages : 1;
  for (uint64_t i = 0; i < n; ++i)
    if (ProtectedLocked(gpa + i * kPageSize)) return kSvsmErrInvalidAddress;
  if (!validate) {
    // Revoke lower-VMPL access before rescinding.
    Status s = RevokeLower(gpa, size);
    if (!s.ok() && s.code() == Code::kPlatformError)
      return kSvsmPvalidateFailBase + static_cast<uint64_t>(s.subcode());
  }
  auto r = m_->Pvalidate(0, gpa, size, validate);
  if (!r.ok()) {
    if (r.status().code() == Code::kPlatformError)
      return kSvsmPvalidateFailBase +
             static_cast<uint64_t>(r.status().subcode());
    return kSvsmErrInvalidAddress;  // #NPF: not a page the guest owns
  }
  if (!*r && !ignore_cf) return kSvsmPvalidateFailUnchanged;
  if (validate && *r) {
    // Zero before granting: stops a host remapping a VMPL0 secret page to an
    // OS GPA [COCONUT core_pvalidate_one].
    for (uint64_t i = 0; i < n; ++i) {
      auto page = Vmpl0Page(gpa + i * kPageSize, Access::kWrite);
      if (page.ok()) std::memset(*page, 0, kPageSize);
    }
    if (!GrantGuest(gpa, size).ok()) return kSvsmErrInvalidAddress;
  }
  return kSvsmSuccess;
}

uint64_t SvsmCore::Pvalidate(SvsmRegs& regs) {
  Gpa list = regs.rcx;
  if ((list & 7) || !GuestRam(list) || ProtectedLocked(list))
    return kSvsmErrInvalidParameter;
  auto page = Vmpl0Page(list & ~uint64_t{kPageSize - 1}, Access::kWrite);
  if (!page.ok()) return kSvsmErrInvalidAddress;
  uint8_t* hdr = *page + (list & (kPageSize - 1));
  size_t room = (kPageSize - (list & (kPageSize - 1)) - 8) / 8;
  uint16_t num = LoadLe<uint16_t>(hdr);
  uint16_t cur = LoadLe<uint16_t>(hdr + 2);
  if (num > room || cur > num) return kSvsmErrInvalidParameter;
  for (; cur < num; ++cur) {
    uint64_t e = LoadLe<uint64_t>(hdr + 8 + 8 * cur);
    uint64_t psize = e & 3;
    bool validate = (e >> 2) & 1;
    bool ignore_cf = (e >> 3) & 1;
    Gpa gpa = (e >> 12) << kPageShift;
    if (psize > 1 || !GuestRam(gpa)) {
      StoreLe<uint16_t>(hdr + 2, cur);
      return kSvsmErrInvalidParameter;
    }
    uint64_t rc =
        PvalidateOne(gpa, static_cast<PageSize>(psize), validate, ignore_cf);
    if (rc != kSvsmSuccess) {
      StoreLe<uint16_t>(hdr + 2, cur);  // the guest resumes from here
      return rc;
    }
  }
  StoreLe<uint16_t>(hdr + 2, cur);
  return kSvsmSuccess;
}

Status SvsmCore::ServiceVcpu(uint32_t apic) {
  VcpuRec rec;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = vcpus_.find({apic, guest_vmpl_});
    if (it == vcpus_.end() || it->second.caa == 0)
      return Status(Code::kNotFound,
                    fmt::format("no guest vCPU/CAA for APIC {}", apic));
    rec = it->second;
  }
  CPC_ASSIGN_OR_RETURN(uint8_t * caa, Vmpl0Page(rec.caa, Access::kWrite));
  // xchg(&caa->call_pending, 0)
  uint8_t pending =
      __atomic_exchange_n(caa + kCaaCallPending, uint8_t{0}, __ATOMIC_ACQ_REL);
  if (pending != 1)
    return Status(Code::kFailedPrecondition, "no SVSM call pending");
  CPC_ASSIGN_OR_RETURN(uint8_t * vp, Vmpl0Page(rec.vmsa, Access::kWrite));
  auto v = PageSpan(vp);
  SvsmRegs regs{VmsaLoad64(v, vmsa_off::kRax), VmsaLoad64(v, vmsa_off::kRcx),
                VmsaLoad64(v, vmsa_off::kRdx), VmsaLoad64(v, vmsa_off::kR8),
                VmsaLoad64(v, vmsa_off::kR8 + 8)};
  HandleCall(apic, regs);
  VmsaStore64(v, vmsa_off::kRax, regs.rax);
  VmsaStore64(v, vmsa_off::kRcx, regs.rcx);
  VmsaStore64(v, vmsa_off::kRdx, regs.rdx);
  VmsaStore64(v, vmsa_off::kR8, regs.r8);
  return Status::Ok();
}

// ------------------------------------------------------- VMPL0's vCPUs

Status SvsmCore::CreateVmpl0Vcpu(uint32_t apic, Gpa vmsa, const Vmsa& init) {
  std::lock_guard<std::mutex> l(mu_);
  if ((vmsa & (kPageSize - 1)) || !GuestRam(vmsa))
    return Status(Code::kInvalidArgument, "VMSA GPA misaligned or not RAM");
  if (vcpus_.count({apic, 0}) || FindVmsa(vmsa).ok())
    return Status(Code::kAlreadyExists, "VMPL0 vCPU or VMSA page in use");
  CPC_RETURN_IF_ERROR(m_->CheckAccess(0, vmsa, Access::kWrite));
  CPC_RETURN_IF_ERROR(RevokeLower(vmsa, PageSize::k4K));
  CPC_ASSIGN_OR_RETURN(uint8_t * p, Vmpl0Page(vmsa, Access::kWrite));
  Vmsa v = init;
  v.vmpl = 0;
  v.efer |= kEferSvme;
  v.sev_features = m_->sev_features();
  std::memset(p, 0, kPageSize);
  v.WriteTo(PageSpan(p));
  // The VMSA bit of a VMPL0 VMSA is set by an RMPADJUST aimed at VMPL1
  // [COCONUT make_page_vmsa / RMPADJUST(VMPL1 | VMSA)].
  CPC_RETURN_IF_ERROR(m_->Rmpadjust(0, vmsa, PageSize::k4K,
                                    SnpMachine::RmpadjustRdx(1, 0, true)));
  GhcbPage ghcb(PageSpan(ghcb_page_.data()));
  ghcb.Reset();
  ghcb.Set(ghcb_off::kRax, m_->sev_features());
  ghcb.Set(ghcb_off::kSwExitCode, kExitApCreation);
  ghcb.Set(ghcb_off::kSwExitInfo1,
           kApCreate | (0ull << 16) | (uint64_t{apic} << 32));
  ghcb.Set(ghcb_off::kSwExitInfo2, vmsa);
  Status hs = host_ ? host_(ghcb)
                    : Status(Code::kFailedPrecondition, "no host channel");
  if (!hs.ok() || ghcb.Get(ghcb_off::kSwExitInfo1) != 0) {
    (void)m_->Rmpadjust(0, vmsa, PageSize::k4K,
                        SnpMachine::RmpadjustRdx(1, 0, false));
    return hs.ok()
               ? Status(Code::kPlatformError, "host refused AP creation",
                        static_cast<int64_t>(ghcb.Get(ghcb_off::kSwExitInfo2)))
               : hs;
  }
  vcpus_[{apic, 0}] = VcpuRec{vmsa, 0};
  apic_ids_.insert(apic);
  protected_.insert(vmsa >> kPageShift);
  return Status::Ok();
}

Status SvsmCore::DeleteVmpl0Vcpu(uint32_t apic) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = vcpus_.find({apic, 0});
  if (it == vcpus_.end()) return Status(Code::kNotFound, "no VMPL0 vCPU");
  Gpa vmsa = it->second.vmsa;
  CPC_ASSIGN_OR_RETURN(uint64_t spa, m_->NptLookup(vmsa));
  CPC_ASSIGN_OR_RETURN(RmpEntry e, m_->RmpRead(spa));
  if (e.in_use) return Status(Code::kFailedPrecondition, "VMSA is running");
  CPC_ASSIGN_OR_RETURN(uint8_t * p, Vmpl0Page(vmsa, Access::kWrite));
  auto span = PageSpan(p);
  VmsaStore64(span, vmsa_off::kEfer,
              VmsaLoad64(span, vmsa_off::kEfer) & ~kEferSvme);
  CPC_RETURN_IF_ERROR(m_->Rmpadjust(0, vmsa, PageSize::k4K,
                                    SnpMachine::RmpadjustRdx(1, 0, false)));
  GhcbPage ghcb(PageSpan(ghcb_page_.data()));
  ghcb.Reset();
  ghcb.Set(ghcb_off::kRax, m_->sev_features());
  ghcb.Set(ghcb_off::kSwExitCode, kExitApCreation);
  ghcb.Set(ghcb_off::kSwExitInfo1, kApDestroy | (uint64_t{apic} << 32));
  ghcb.Set(ghcb_off::kSwExitInfo2, vmsa);
  if (host_) (void)host_(ghcb);  // the host may ignore it; the bit is gone
  std::memset(p, 0, kPageSize);
  CPC_RETURN_IF_ERROR(GrantGuest(vmsa, PageSize::k4K));
  protected_.erase(vmsa >> kPageShift);
  vcpus_.erase(it);
  return Status::Ok();
}

// ------------------------------------------------------------ isolation

Status SvsmCore::Isolate(GpaRange range) {
  std::lock_guard<std::mutex> l(mu_);
  for (uint64_t i = 0; i < range.pages; ++i) {
    Gpa gpa = range.base + i * kPageSize;
    CPC_RETURN_IF_ERROR(RevokeLower(gpa, PageSize::k4K));
    protected_.insert(gpa >> kPageShift);
  }
  return Status::Ok();
}

Status SvsmCore::Release(GpaRange range) {
  std::lock_guard<std::mutex> l(mu_);
  for (uint64_t i = 0; i < range.pages; ++i) {
    Gpa gpa = range.base + i * kPageSize;
    if (!ProtectedLocked(gpa)) continue;
    CPC_ASSIGN_OR_RETURN(uint8_t * p, Vmpl0Page(gpa, Access::kWrite));
    std::memset(p, 0, kPageSize);
    CPC_RETURN_IF_ERROR(GrantGuest(gpa, PageSize::k4K));
    protected_.erase(gpa >> kPageShift);
  }
  return Status::Ok();
}

// ------------------------------------------------------------ vCPU state

Result<uint8_t*> SvsmCore::StoppedVmsaLocked(uint32_t apic, uint32_t vmpl,
                                             Access access) const {
  auto it = vcpus_.find({apic, vmpl});
  if (it == vcpus_.end())
    return Status(Code::kNotFound,
                  fmt::format("no VMSA for APIC {} VMPL {}", apic, vmpl));
  CPC_ASSIGN_OR_RETURN(uint64_t spa, m_->NptLookup(it->second.vmsa));
  CPC_ASSIGN_OR_RETURN(RmpEntry e, m_->RmpRead(spa));
  if (e.in_use)
    return Status(Code::kFailedPrecondition, "vCPU is running; pause it");
  return Vmpl0Page(it->second.vmsa, access);
}

Result<std::vector<uint8_t>> SvsmCore::ExportVcpuState(uint32_t apic,
                                                       uint32_t vmpl) {
  std::lock_guard<std::mutex> l(mu_);
  CPC_ASSIGN_OR_RETURN(uint8_t * p,
                       StoppedVmsaLocked(apic, vmpl, Access::kRead));
  return std::vector<uint8_t>(p, p + kPageSize);
}

Status SvsmCore::ImportVcpuState(uint32_t apic, uint32_t vmpl,
                                 std::span<const uint8_t> state) {
  if (state.size() != kPageSize)
    return Status(Code::kInvalidArgument, "VMSA state must be 4096 bytes");
  std::span<const uint8_t, kPageSize> in(state.data(), kPageSize);
  if (in[vmsa_off::kVmpl] != vmpl)
    return Status(Code::kPermissionDenied, "VMSA VMPL field differs");
  if (VmsaLoad64(in, vmsa_off::kSevFeatures) != m_->sev_features())
    return Status(Code::kPermissionDenied, "VMSA SEV_FEATURES differ");
  std::lock_guard<std::mutex> l(mu_);
  CPC_ASSIGN_OR_RETURN(uint8_t * p,
                       StoppedVmsaLocked(apic, vmpl, Access::kWrite));
  std::memcpy(p, state.data(), kPageSize);
  return Status::Ok();
}

}  // namespace sev
CPC_NAMESPACE_END
