#include "operators/sender.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "operators/record_codec.h"

CPC_NAMESPACE_BEGIN
namespace {

// Clears `flag` on scope exit; the flag marks a stream as sealing.
class BusyScope {
 public:
  explicit BusyScope(std::atomic<bool>& flag) : flag_(flag) {
    flag_.store(true, std::memory_order_release);
  }
  ~BusyScope() { flag_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool>& flag_;
};

Status NoRoom(size_t need, size_t have) {
  return Status(
      Code::kResourceExhausted,
      fmt::format("record needs {} bytes, buffer has {}", need, have));
}

inline void PrefetchPage(const uint8_t* p) {
  for (size_t off = 0; off < kPageSize; off += 64) __builtin_prefetch(p + off);
}

bool PageIsZero(const uint8_t* p) {
  uint64_t acc = 0;
  for (size_t i = 0; i < kPageSize; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    acc |= v;
  }
  return acc == 0;
}

}  // namespace

StreamSender::StreamSender(SenderSession* session, uint16_t stream,
                           std::unique_ptr<KeyedAead> aead)
    : session_(session), stream_(stream), aead_(std::move(aead)) {
  const size_t max_meta = std::max<size_t>(
      {size_t{session->options().pages_per_record} * kPageEntryBytes,
       ResumeMetaBytes(kMaxStreams), kVcpuMetaBytes});
  aad_.resize(kRecordHeaderBytes + max_meta);
}

uint32_t StreamSender::epoch() const { return session_->epoch(); }
const SenderOptions& StreamSender::options() const {
  return session_->options();
}

Status StreamSender::WritePrefix(RecordType type, uint32_t items,
                                 uint32_t meta_bytes, uint32_t record_bytes,
                                 std::span<uint8_t> out, uint64_t* counter) {
  if (next_counter_ == std::numeric_limits<uint64_t>::max())
    return Status(Code::kFailedPrecondition, "stream counter exhausted");
  RecordHeader h;
  h.type = type;
  h.stream = stream_;
  h.item_count = items;
  h.counter = next_counter_++;  // consumed before any IV use
  h.epoch = session_->epoch();
  h.meta_bytes = meta_bytes;
  h.record_bytes = record_bytes;
  h.session_id = session_->session_id();
  EncodeHeader(h, aad_.data());
  uint8_t iv[kAeadIvBytes];
  MakeRecordIv(h.counter, stream_, 0, iv);
  uint8_t tag[kAeadTagBytes];
  CPC_RETURN_IF_ERROR(aead_->Seal(
      iv, {aad_.data(), kRecordHeaderBytes + meta_bytes}, {}, nullptr, tag));
  uint8_t* p = out.data();
  std::memcpy(p, aad_.data(), kRecordHeaderBytes);
  std::memcpy(p + kRecordHeaderBytes, tag, kAeadTagBytes);
  std::memset(p + kRecordHeaderBytes + kAeadTagBytes, 0,
              kRecordPrefixBytes - kRecordHeaderBytes - kAeadTagBytes);
  std::memcpy(p + kRecordPrefixBytes, aad_.data() + kRecordHeaderBytes,
              meta_bytes);
  std::memset(p + kRecordPrefixBytes + meta_bytes, 0,
              Pad64(meta_bytes) - meta_bytes);
  *counter = h.counter;
  return Status::Ok();
}

Status StreamSender::SealBlock(uint64_t counter, uint16_t slot,
                               std::span<const uint8_t, 16> descriptor,
                               std::span<const uint8_t> plain, uint8_t* block) {
  uint8_t iv[kAeadIvBytes];
  MakeRecordIv(counter, stream_, slot, iv);
  std::memcpy(block, descriptor.data(), 16);
  std::memset(block + 32, 0, kBlockHeadBytes - 32);
  // AAD = the private descriptor, not the copy just written to `block`.
  return aead_->Seal(iv, descriptor, plain, block + kBlockHeadBytes,
                     std::span<uint8_t, kAeadTagBytes>(block + 16, 16));
}

Result<size_t> StreamSender::SealMemory(std::span<const PageRef> pages,
                                        std::span<const uint8_t* const> data,
                                        std::span<uint8_t> out) {
  const size_t n = pages.size();
  if (n == 0 || n > options().pages_per_record || data.size() != n)
    return Status(Code::kInvalidArgument,
                  fmt::format("{} pages per record (1..{})", n,
                              options().pages_per_record));
  BusyScope busy(busy_);
  const bool elide = options().elide_zero_pages;
  // Private page table: the AAD of the header tag and of every page.
  uint8_t* meta = aad_.data() + kRecordHeaderBytes;
  size_t bytes = kRecordPrefixBytes + Pad64(n * kPageEntryBytes);
  for (size_t i = 0; i < n; ++i) {
    if (pages[i].gpa % kPageSize != 0 || data[i] == nullptr)
      return Status(Code::kInvalidArgument,
                    fmt::format("page {:#x} not page-aligned", pages[i].gpa));
    const uint32_t flags = (elide && PageIsZero(data[i])) ? kPageFlagZero : 0;
    PutLe(meta + i * kPageEntryBytes, pages[i].gpa, 8);
    PutLe(meta + i * kPageEntryBytes + 8, pages[i].version, 4);
    PutLe(meta + i * kPageEntryBytes + 12, flags, 4);
    bytes += kBlockHeadBytes + (flags & kPageFlagZero ? 0 : kPageSize);
  }
  if (bytes > out.size()) return NoRoom(bytes, out.size());

  uint64_t counter = 0;
  CPC_RETURN_IF_ERROR(WritePrefix(RecordType::kMemory, static_cast<uint32_t>(n),
                                  static_cast<uint32_t>(n * kPageEntryBytes),
                                  static_cast<uint32_t>(bytes), out, &counter));
  uint8_t* block = out.data() + kRecordPrefixBytes + Pad64(n * kPageEntryBytes);
  PrefetchPage(data[0]);
  if (n > 1) PrefetchPage(data[1]);
  for (size_t i = 0; i < n; ++i) {
    if (i + 2 < n) PrefetchPage(data[i + 2]);
    const uint8_t* entry = meta + i * kPageEntryBytes;
    const bool zero = GetLe(entry + 12, 4) & kPageFlagZero;
    CPC_RETURN_IF_ERROR(SealBlock(
        counter, static_cast<uint16_t>(i + 1),
        std::span<const uint8_t, 16>(entry, 16),
        zero ? std::span<const uint8_t>() : std::span(data[i], kPageSize),
        block));
    block += kBlockHeadBytes + (zero ? 0 : kPageSize);
  }
  records_in_epoch_.fetch_add(1, std::memory_order_acq_rel);
  return bytes;
}

Result<size_t> StreamSender::SealVcpuState(uint32_t vcpu,
                                           std::span<const uint8_t> state,
                                           std::span<uint8_t> out) {
  if (vcpu >= options().vcpu_count)
    return Status(Code::kInvalidArgument,
                  fmt::format("vCPU {} of {}", vcpu, options().vcpu_count));
  if (state.size() > kMaxVcpuStateBytes)
    return Status(Code::kInvalidArgument, "vCPU state too large");
  BusyScope busy(busy_);
  const size_t bytes = kRecordPrefixBytes + Pad64(kVcpuMetaBytes) +
                       kBlockHeadBytes + Pad64(state.size());
  if (bytes > out.size()) return NoRoom(bytes, out.size());
  uint8_t* meta = aad_.data() + kRecordHeaderBytes;
  std::memset(meta, 0, kVcpuMetaBytes);
  PutLe(meta, vcpu, 4);
  PutLe(meta + 4, state.size(), 4);
  uint64_t counter = 0;
  CPC_RETURN_IF_ERROR(WritePrefix(RecordType::kVcpuState, 1, kVcpuMetaBytes,
                                  static_cast<uint32_t>(bytes), out, &counter));
  uint8_t* block = out.data() + kRecordPrefixBytes + Pad64(kVcpuMetaBytes);
  CPC_RETURN_IF_ERROR(SealBlock(
      counter, 1, std::span<const uint8_t, 16>(meta, 16), state, block));
  std::memset(block + kBlockHeadBytes + state.size(), 0,
              Pad64(state.size()) - state.size());
  session_->vcpu_sealed_[vcpu].store(true, std::memory_order_release);
  records_in_epoch_.fetch_add(1, std::memory_order_acq_rel);
  return bytes;
}

Result<size_t> StreamSender::SealControl(RecordType type,
                                         std::span<const uint8_t> meta,
                                         bool counts, std::span<uint8_t> out) {
  const size_t bytes = kRecordPrefixBytes + Pad64(meta.size());
  if (bytes > out.size()) return NoRoom(bytes, out.size());
  if (meta.size() > aad_.size() - kRecordHeaderBytes)
    return Status(Code::kInternal, "metadata larger than staging");
  if (!meta.empty())  // memcpy from an empty span's null data is UB
    std::memcpy(aad_.data() + kRecordHeaderBytes, meta.data(), meta.size());
  uint64_t counter = 0;
  CPC_RETURN_IF_ERROR(WritePrefix(type, 0, static_cast<uint32_t>(meta.size()),
                                  static_cast<uint32_t>(bytes), out, &counter));
  if (counts) records_in_epoch_.fetch_add(1, std::memory_order_acq_rel);
  return bytes;
}

Result<size_t> StreamSender::SealEnd(std::span<uint8_t> out) {
  BusyScope busy(busy_);
  return SealControl(RecordType::kEnd, {}, /*counts=*/true, out);
}

Result<std::unique_ptr<SenderSession>> SenderSession::Create(
    const AeadEngine& engine, std::span<const uint8_t> key,
    const SessionId& session_id, const SenderOptions& options) {
  if (options.streams == 0 || options.streams > kMaxStreams)
    return Status(
        Code::kInvalidArgument,
        fmt::format("{} streams (1..{})", options.streams, kMaxStreams));
  if (options.pages_per_record == 0 ||
      options.pages_per_record > kMaxRecordItems)
    return Status(Code::kInvalidArgument,
                  fmt::format("{} pages per record (1..{})",
                              options.pages_per_record, kMaxRecordItems));
  auto s = std::unique_ptr<SenderSession>(new SenderSession());
  s->options_ = options;
  s->session_id_ = session_id;
  s->vcpu_sealed_ = std::make_unique<std::atomic<bool>[]>(options.vcpu_count);
  for (uint32_t i = 0; i < options.streams; ++i) {
    CPC_ASSIGN_OR_RETURN(auto aead, engine.NewKeyed(key));
    s->streams_.push_back(std::unique_ptr<StreamSender>(
        new StreamSender(s.get(), static_cast<uint16_t>(i), std::move(aead))));
  }
  return s;
}

Status SenderSession::CheckIdle() const {
  for (const auto& st : streams_)
    if (st->busy_.load(std::memory_order_acquire))
      return Status(Code::kFailedPrecondition,
                    fmt::format("stream {} is sealing", st->stream()));
  return Status::Ok();
}

Result<size_t> SenderSession::CloseEpoch(std::span<uint8_t> out) {
  CPC_RETURN_IF_ERROR(CheckIdle());
  const uint32_t e = epoch();
  if (e >= kMaxEpoch)
    return Status(Code::kFailedPrecondition, "epoch space exhausted");
  std::vector<uint8_t> meta(EpochMetaBytes(stream_count()), 0);
  PutLe(meta.data(), stream_count(), 4);
  for (uint32_t i = 0; i < stream_count(); ++i)
    PutLe(meta.data() + 8 + 8 * i, streams_[i]->records_in_epoch(), 8);
  StreamSender& s0 = *streams_[0];
  BusyScope busy(s0.busy_);
  CPC_ASSIGN_OR_RETURN(size_t n, s0.SealControl(RecordType::kEpochToken, meta,
                                                /*counts=*/false, out));
  for (auto& st : streams_) st->records_in_epoch_.store(0);
  epoch_.store(e + 1, std::memory_order_release);
  return n;
}

Result<size_t> SenderSession::SealStart(std::span<uint8_t> out) {
  CPC_RETURN_IF_ERROR(CheckIdle());
  for (uint32_t v = 0; v < options_.vcpu_count; ++v)
    if (!vcpu_sealed_[v].load(std::memory_order_acquire))
      return Status(Code::kIncomplete,
                    fmt::format("vCPU {} state not exported", v));
  for (const auto& st : streams_)
    if (st->records_in_epoch() != 0)
      return Status(Code::kIncomplete,
                    fmt::format("epoch {} not closed (stream {} has records)",
                                epoch(), st->stream()));
  uint8_t meta[kStartMetaBytes] = {};
  PutLe(meta, options_.vcpu_count, 4);
  PutLe(meta + 4, stream_count(), 4);
  StreamSender& s0 = *streams_[0];
  BusyScope busy(s0.busy_);
  return s0.SealControl(RecordType::kStartToken, meta, /*counts=*/false, out);
}

Result<size_t> SenderSession::SealResume(
    uint32_t acked_epoch, std::span<const uint64_t> acked_records,
    std::span<uint8_t> out) {
  CPC_RETURN_IF_ERROR(CheckIdle());
  const uint32_t e = epoch();
  if (acked_records.size() != stream_count())
    return Status(Code::kInvalidArgument,
                  fmt::format("resume ack for {} streams, session has {}",
                              acked_records.size(), stream_count()));
  if (acked_epoch > e)
    return Status(Code::kInvalidArgument,
                  fmt::format("resume ack of epoch {}, this side is at {}",
                              acked_epoch, e));
  if (e >= kMaxEpoch)
    return Status(Code::kFailedPrecondition, "epoch space exhausted");
  const uint32_t n = stream_count();
  const size_t meta_bytes = ResumeMetaBytes(n);
  if (kRecordPrefixBytes + Pad64(meta_bytes) > out.size())
    return NoRoom(kRecordPrefixBytes + Pad64(meta_bytes), out.size());
  StreamSender& s0 = *streams_[0];
  BusyScope busy(s0.busy_);
  std::vector<uint8_t> meta(meta_bytes, 0);
  PutLe(meta.data(), n, 4);
  PutLe(meta.data() + 4, acked_epoch, 4);
  for (uint32_t i = 0; i < n; ++i) {
    PutLe(meta.data() + 8 + 8 * i, acked_records[i], 8);
    // Stream 0's next record follows this one.
    const uint64_t next = streams_[i]->next_counter_ + (i == 0 ? 1 : 0);
    PutLe(meta.data() + 8 + 8 * (size_t{n} + i), next, 8);
  }
  // The record opens the new epoch: it carries it in its header.
  for (auto& st : streams_) st->records_in_epoch_.store(0);
  epoch_.store(e + 1, std::memory_order_release);
  return s0.SealControl(RecordType::kResume, meta, /*counts=*/false, out);
}

CPC_NAMESPACE_END
