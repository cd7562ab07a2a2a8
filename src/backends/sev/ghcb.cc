#include "backends/sev/ghcb.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "core/bytes.h"

CPC_NAMESPACE_BEGIN
namespace sev {

namespace {
constexpr size_t kPscHeader = 8;
constexpr uint64_t kGhcbErrInvalidInput = 5;  // GHCB_ERR_INVALID_INPUT
}  // namespace

void GhcbPage::Reset() {
  std::fill(p_.begin(), p_.end(), 0);
  StoreLe<uint16_t>(p_.data() + ghcb_off::kProtocolVersion,
                    kGhcbProtocolVersion);
}

void GhcbPage::Set(size_t off, uint64_t v) {
  StoreLe<uint64_t>(p_.data() + off, v);
  size_t bit = off / 8;
  p_[ghcb_off::kValidBitmap + bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
}

uint64_t GhcbPage::Get(size_t off) const {
  return LoadLe<uint64_t>(p_.data() + off);
}

bool GhcbPage::IsValid(size_t off) const {
  size_t bit = off / 8;
  return (p_[ghcb_off::kValidBitmap + bit / 8] >> (bit % 8)) & 1;
}

uint16_t GhcbPage::protocol_version() const {
  return LoadLe<uint16_t>(p_.data() + ghcb_off::kProtocolVersion);
}
uint32_t GhcbPage::usage() const {
  return LoadLe<uint32_t>(p_.data() + ghcb_off::kUsage);
}

uint64_t PscEntry::Encode() const {
  return (uint64_t{cur_page} & 0xfff) | ((gfn & ((1ull << 40) - 1)) << 12) |
         (uint64_t{static_cast<uint8_t>(op)} << 52) | (huge ? 1ull << 56 : 0);
}

PscEntry PscEntry::Decode(uint64_t raw) {
  PscEntry e;
  e.cur_page = raw & 0xfff;
  e.gfn = (raw >> 12) & ((1ull << 40) - 1);
  e.op = static_cast<PscOp>((raw >> 52) & 0xf);
  e.huge = (raw >> 56) & 1;
  return e;
}

Status WritePscRequest(GhcbPage& ghcb, std::span<const PscEntry> entries) {
  if (entries.empty() || entries.size() > kPscMaxEntries)
    return Status(Code::kInvalidArgument, "PSC: 1..253 entries per request");
  ghcb.Reset();
  auto buf = ghcb.shared_buffer();
  StoreLe<uint16_t>(buf.data(), 0);  // cur_entry
  StoreLe<uint16_t>(buf.data() + 2,
                    static_cast<uint16_t>(entries.size() - 1));  // end_entry
  for (size_t i = 0; i < entries.size(); ++i)
    StoreLe<uint64_t>(buf.data() + kPscHeader + 8 * i, entries[i].Encode());
  ghcb.Set(ghcb_off::kSwExitCode, kExitPsc);
  ghcb.Set(ghcb_off::kSwExitInfo1, 0);
  ghcb.Set(ghcb_off::kSwExitInfo2, 0);
  return Status::Ok();
}

Status RequestPsc(SnpMachine& m, GhcbPage& ghcb, const VmgexitChannel& host,
                  std::span<const PscEntry> entries) {
  for (const PscEntry& e : entries) {
    if (e.op != PscOp::kShared) continue;
    uint64_t n = e.huge ? k2MPages : 1;
    for (uint64_t i = 0; i < n; ++i) {
      Gpa gpa = (e.gfn + i) << kPageShift;
      // Probe as VMPL0: OK means owned and still validated.
      if (!m.Check(0, gpa, Access::kRead))
        return Status(Code::kFailedPrecondition,
                      fmt::format("PSC(shared) of GPA {:#x} before rescinding "
                                  "its validation (PVALIDATE first)",
                                  gpa));
    }
  }
  for (size_t at = 0; at < entries.size(); at += kPscMaxEntries) {
    size_t n = std::min<size_t>(kPscMaxEntries, entries.size() - at);
    CPC_RETURN_IF_ERROR(WritePscRequest(ghcb, entries.subspan(at, n)));
    CPC_RETURN_IF_ERROR(host(ghcb));
    uint64_t info2 = ghcb.Get(ghcb_off::kSwExitInfo2);
    uint16_t cur = LoadLe<uint16_t>(ghcb.shared_buffer().data());
    if (info2 != 0 || cur != n)
      return Status(
          Code::kPlatformError,
          fmt::format("host refused PSC ({} of {} entries done)", cur, n),
          static_cast<int64_t>(info2 != 0 ? info2 : kPscErrorGeneric));
  }
  return Status::Ok();
}

Status ConvertToShared(SnpMachine& m, GhcbPage& ghcb,
                       const VmgexitChannel& host, GpaRange range) {
  std::vector<PscEntry> entries;
  for (uint64_t i = 0; i < range.pages; ++i) {
    Gpa gpa = range.base + i * kPageSize;
    CPC_ASSIGN_OR_RETURN(bool changed,
                         m.Pvalidate(0, gpa, PageSize::k4K, false));
    (void)changed;  // already invalid is fine
    entries.push_back({0, gpa >> kPageShift, PscOp::kShared, false});
  }
  return RequestPsc(m, ghcb, host, entries);
}

Status ConvertToPrivate(SnpMachine& m, GhcbPage& ghcb,
                        const VmgexitChannel& host, GpaRange range) {
  std::vector<PscEntry> entries;
  for (uint64_t i = 0; i < range.pages; ++i)
    entries.push_back(
        {0, (range.base >> kPageShift) + i, PscOp::kPrivate, false});
  CPC_RETURN_IF_ERROR(RequestPsc(m, ghcb, host, entries));
  for (uint64_t i = 0; i < range.pages; ++i) {
    Gpa gpa = range.base + i * kPageSize;
    CPC_ASSIGN_OR_RETURN(bool changed,
                         m.Pvalidate(0, gpa, PageSize::k4K, true));
    if (!changed)  // validated already: the host did not really convert it
      return Status(Code::kPlatformError,
                    fmt::format("GPA {:#x} was already validated", gpa));
    CPC_ASSIGN_OR_RETURN(uint8_t * page, m.GuestPage(0, gpa, Access::kWrite));
    std::memset(page, 0, kPageSize);
  }
  return Status::Ok();
}

// ------------------------------------------------------------------ host

namespace {
// NPT lookup as the host sees it (identity unless it remapped).
uint64_t HostSpaOf(SnpMachine& m, Gpa gpa) {
  auto spa = m.NptLookup(gpa);
  return spa.ok() ? *spa : gpa;
}

Status HostApplyPsc(SnpMachine& m, const PscEntry& e) {
  Gpa gpa = e.gfn << kPageShift;
  uint64_t spa = HostSpaOf(m, gpa);
  PageSize size = e.huge ? PageSize::k2M : PageSize::k4K;
  switch (e.op) {
    case PscOp::kPrivate:
      if (e.huge) CPC_RETURN_IF_ERROR(m.NptMap(gpa, spa, PageSize::k2M));
      return m.RmpUpdate(spa, {true, size, false, gpa, m.asid()});
    case PscOp::kShared:
      return m.RmpUpdate(spa, {false, size, false, 0, 0});
    case PscOp::kPsmash:
      CPC_RETURN_IF_ERROR(m.Psmash(spa));
      for (uint64_t i = 0; i < k2MPages; ++i)
        CPC_RETURN_IF_ERROR(
            m.NptMap(gpa + i * kPageSize, spa + i * kPageSize, PageSize::k4K));
      return Status::Ok();
    default:
      return Status(Code::kInvalidArgument, "PSC op not supported");
  }
}
}  // namespace

Status HostHandlePsc(SnpMachine& m, GhcbPage& ghcb) {
  auto buf = ghcb.shared_buffer();
  uint16_t cur = LoadLe<uint16_t>(buf.data());
  uint16_t end = LoadLe<uint16_t>(buf.data() + 2);
  if (end >= kPscMaxEntries || cur > end) {
    ghcb.Set(ghcb_off::kSwExitInfo2, kPscErrorInvalidHdr);
    return Status::Ok();
  }
  for (; cur <= end; ++cur) {
    PscEntry e =
        PscEntry::Decode(LoadLe<uint64_t>(buf.data() + kPscHeader + 8 * cur));
    if (e.op < PscOp::kPrivate || e.op > PscOp::kUnsmash) {
      ghcb.Set(ghcb_off::kSwExitInfo2, kPscErrorInvalidEntry);
      StoreLe<uint16_t>(buf.data(), cur);
      return Status::Ok();
    }
    Status s = HostApplyPsc(m, e);
    if (!s.ok()) {
      ghcb.Set(ghcb_off::kSwExitInfo2, kPscErrorGeneric);
      StoreLe<uint16_t>(buf.data(), cur);
      return Status::Ok();
    }
  }
  StoreLe<uint16_t>(buf.data(), cur);  // = end + 1: all done
  ghcb.Set(ghcb_off::kSwExitInfo2, 0);
  return Status::Ok();
}

Status HostHandleVmgexit(SnpMachine& m, GhcbPage& ghcb) {
  uint64_t code = ghcb.Get(ghcb_off::kSwExitCode);
  if (code == kExitPsc) return HostHandlePsc(m, ghcb);
  if (code == kExitApCreation) {
    if (!ghcb.IsValid(ghcb_off::kRax)) {
      ghcb.Set(ghcb_off::kSwExitInfo1, 2);
      ghcb.Set(ghcb_off::kSwExitInfo2, 4);  // GHCB_ERR_MISSING_INPUT
      return Status::Ok();
    }
    Status s = m.HandleApCreation(ghcb.Get(ghcb_off::kSwExitInfo1),
                                  ghcb.Get(ghcb_off::kSwExitInfo2),
                                  ghcb.Get(ghcb_off::kRax));
    ghcb.Set(ghcb_off::kSwExitInfo1, s.ok() ? 0 : 2);
    ghcb.Set(ghcb_off::kSwExitInfo2, s.ok() ? 0 : kGhcbErrInvalidInput);
    return Status::Ok();
  }
  return Status(Code::kUnimplemented,
                fmt::format("NAE exit code {:#x} not modelled", code));
}

uint64_t HostHandleMsrPsc(SnpMachine& m, uint64_t msr) {
  auto resp = [](uint64_t err) { return kMsrPscResp | (err << 32); };
  if ((msr & 0xfff) != kMsrPscReq) return resp(1);
  PscEntry e;
  e.gfn = (msr >> 12) & ((1ull << 40) - 1);
  e.op = static_cast<PscOp>((msr >> 52) & 0xf);
  if (e.op != PscOp::kPrivate && e.op != PscOp::kShared) return resp(1);
  return resp(HostApplyPsc(m, e).ok() ? 0 : 1);
}

}  // namespace sev
CPC_NAMESPACE_END
