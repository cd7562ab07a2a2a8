#include "operators/operators.h"

#include <algorithm>
#include <vector>

#include <fmt/format.h>

CPC_NAMESPACE_BEGIN
namespace {

// Charge `bytes` of work before it is done.
Status Charge(CallContext* ctx, uint64_t bytes) {
  return ctx != nullptr ? ctx->Charge(bytes) : Status::Ok();
}
Status Yield(CallContext* ctx) {
  return ctx != nullptr ? ctx->MaybeYield() : Status::Ok();
}

// The most pages (<= want) whose memory record fits in `room` bytes.
uint32_t PagesThatFit(uint32_t want, size_t room) {
  constexpr size_t kPerPage = kPageEntryBytes + kBlockHeadBytes + kPageSize;
  if (room < kRecordPrefixBytes) return 0;
  uint32_t n = static_cast<uint32_t>(
      std::min<size_t>(want, (room - kRecordPrefixBytes) / kPerPage));
  while (n > 0 && MemoryRecordBytes(n) > room) --n;
  return n;
}

}  // namespace

Status ExportMemory(StreamSender& stream, GuestPlatform& platform,
                    std::span<const PageRef> pages, std::span<uint8_t> out,
                    CallContext* ctx, ExportProgress* progress,
                    PageSource source) {
  ExportProgress local;
  ExportProgress& p = progress != nullptr ? *progress : local;
  p = {};
  const uint32_t batch = stream.options().pages_per_record;
  std::vector<const uint8_t*> data(batch);  // once per call, not per page
  std::vector<Gpa> gpas(source == PageSource::kFrozen ? batch : 0);
  while (p.pages < pages.size()) {
    const uint32_t n = PagesThatFit(
        static_cast<uint32_t>(std::min<size_t>(batch, pages.size() - p.pages)),
        out.size() - p.bytes);
    if (n == 0) break;  // ring full: the caller flushes and calls again
    const auto refs = pages.subspan(p.pages, n);
    CPC_RETURN_IF_ERROR(Charge(ctx, uint64_t{n} * kPageSize));
    if (source == PageSource::kFrozen) {
      for (uint32_t i = 0; i < n; ++i) gpas[i] = refs[i].gpa;
      CPC_RETURN_IF_ERROR(platform.PinFrozenPages(std::span(gpas).first(n),
                                                  std::span(data).first(n)));
    } else {
      for (uint32_t i = 0; i < n; ++i) {
        CPC_ASSIGN_OR_RETURN(auto page,
                             platform.PrivatePageForRead(refs[i].gpa));
        if (page.size() < kPageSize)
          return Status(Code::kInternal,
                        fmt::format("short page at {:#x}", refs[i].gpa));
        data[i] = page.data();
      }
    }
    auto sealed =
        stream.SealMemory(refs, std::span(data).first(n), out.subspan(p.bytes));
    // The guest may write these pages again as soon as they are sealed.
    if (source == PageSource::kFrozen)
      platform.ReleaseFrozenPages(std::span(gpas).first(n));
    CPC_ASSIGN_OR_RETURN(size_t written, std::move(sealed));
    p.pages += n;
    p.bytes += written;
    ++p.records;
    CPC_RETURN_IF_ERROR(Yield(ctx));
  }
  return Status::Ok();
}

Status ExportVcpuStates(StreamSender& stream, GuestPlatform& platform,
                        std::span<const uint32_t> vcpus, std::span<uint8_t> out,
                        CallContext* ctx, ExportProgress* progress) {
  ExportProgress local;
  ExportProgress& p = progress != nullptr ? *progress : local;
  p = {};
  for (uint32_t vcpu : vcpus) {
    CPC_ASSIGN_OR_RETURN(std::vector<uint8_t> state,
                         platform.ExportVcpuState(vcpu));
    CPC_RETURN_IF_ERROR(Charge(ctx, state.size()));
    auto written = stream.SealVcpuState(vcpu, state, out.subspan(p.bytes));
    if (!written.ok() && written.status().code() == Code::kResourceExhausted &&
        p.records > 0)
      break;  // ring full after at least one record: flush and call again
    CPC_RETURN_IF_ERROR(written.status());
    p.pages += 1;
    p.bytes += *written;
    ++p.records;
    CPC_RETURN_IF_ERROR(Yield(ctx));
  }
  return Status::Ok();
}

Status ImportRecords(ReceiverStream& stream, GuestPlatform& platform,
                     std::span<const uint8_t> in, CallContext* ctx,
                     ImportProgress* progress) {
  ImportProgress local;
  ImportProgress& p = progress != nullptr ? *progress : local;
  p = {};
  while (p.bytes < in.size()) {
    const auto rest = in.subspan(p.bytes);
    CPC_ASSIGN_OR_RETURN(RecordHeader h, PeekRecordHeader(rest));
    // Charge what the record claims before applying it; a forged claim
    // fails authentication below.
    uint64_t work = 0;
    if (h.type == RecordType::kMemory)
      work = uint64_t{h.item_count} * kPageSize;
    if (h.type == RecordType::kVcpuState) work = h.record_bytes;
    CPC_RETURN_IF_ERROR(Charge(ctx, work));
    CPC_ASSIGN_OR_RETURN(ImportedRecord r, stream.Import(&platform, rest));
    p.bytes += r.record_bytes;
    p.records += 1;
    p.pages += r.pages;
    p.vcpus += r.vcpus;
    CPC_RETURN_IF_ERROR(Yield(ctx));
  }
  return Status::Ok();
}

Status ImportVcpuStateRecord(ReceiverStream& stream, GuestPlatform& platform,
                             std::span<const uint8_t> record,
                             CallContext* ctx) {
  CPC_ASSIGN_OR_RETURN(RecordHeader h, PeekRecordHeader(record));
  if (h.type != RecordType::kVcpuState)
    return Status(Code::kRecordMalformed,
                  fmt::format("SDI takes vCPU-state records, got type {}",
                              static_cast<int>(h.type)));
  CPC_RETURN_IF_ERROR(Charge(ctx, h.record_bytes));
  CPC_ASSIGN_OR_RETURN(ImportedRecord r, stream.Import(&platform, record));
  (void)r;
  return Yield(ctx);
}

CPC_NAMESPACE_END
