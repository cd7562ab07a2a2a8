#include "operators/receiver.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <fmt/format.h>
#include <openssl/crypto.h>

#include "operators/record_codec.h"

CPC_NAMESPACE_BEGIN
namespace {

// Bytes of a page's block in a memory record: its head, and its ciphertext
// unless the page table entry `e` marks the page zero.
size_t PageBlockBytes(const uint8_t* e) {
  return kBlockHeadBytes + ((GetLe(e + 12, 4) & kPageFlagZero) ? 0 : kPageSize);
}

Status Malformed(std::string msg) {
  return Status(Code::kRecordMalformed, std::move(msg));
}

}  // namespace

// Commit copy of one verified page into guest memory. Non-temporal stores:
// we never read the guest page back, so skip the read-for-ownership and keep
// the ring and the scratch area in cache. Worth +30 % MDI throughput
// (docs/PERFORMANCE.md). AVX-512 where the CPU has it (picked at run time:
// the build does not use -march=native), SSE2 otherwise.
#if defined(__x86_64__)
namespace {
__attribute__((target("avx512f"))) void CommitPageAvx512(uint8_t* dst,
                                                         const uint8_t* src) {
  for (size_t i = 0; i < kPageSize; i += 256) {
    const __m512i a = _mm512_load_si512(src + i);
    const __m512i b = _mm512_load_si512(src + i + 64);
    const __m512i c = _mm512_load_si512(src + i + 128);
    const __m512i d = _mm512_load_si512(src + i + 192);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), a);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i + 64), b);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i + 128), c);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i + 192), d);
  }
}

void CommitPageSse2(uint8_t* dst, const uint8_t* src) {
  for (size_t i = 0; i < kPageSize; i += 64) {
    const __m128i a = _mm_load_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b =
        _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c =
        _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d =
        _mm_load_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
}

using CommitFn = void (*)(uint8_t*, const uint8_t*);
CommitFn PickCommit() {
  __builtin_cpu_init();  // may run before main
  return __builtin_cpu_supports("avx512f") ? CommitPageAvx512 : CommitPageSse2;
}
const CommitFn kCommitAligned = PickCommit();
}  // namespace
#endif

// `src` (scratch) is 64-byte aligned; guest pages normally are 4 KiB aligned.
void CommitPage(uint8_t* dst, const uint8_t* src) {
#if defined(__x86_64__)
  if ((reinterpret_cast<uintptr_t>(dst) & 63) == 0)
    return kCommitAligned(dst, src);
#endif
  std::memcpy(dst, src, kPageSize);
}

void CommitFence() {
#if defined(__x86_64__)
  _mm_sfence();  // streaming stores are weakly ordered
#endif
}

namespace {

bool IsToken(RecordType t) {
  return t == RecordType::kEpochToken || t == RecordType::kStartToken ||
         t == RecordType::kAbortToken || t == RecordType::kResumeAck ||
         t == RecordType::kResume;
}

// Tokens that stand alone: each is a complete statement, so one may follow
// earlier ones that never arrived (a resume ack sealed for a reconnect
// attempt that failed). Their counters must still only grow: never replayed.
bool IsStandalone(RecordType t) {
  return t == RecordType::kAbortToken || t == RecordType::kResumeAck ||
         t == RecordType::kResume;
}

}  // namespace

ReceiverStream::ReceiverStream(Receiver* rx, uint16_t stream,
                               std::unique_ptr<KeyedAead> aead)
    : rx_(rx), stream_(stream), aead_(std::move(aead)) {
  const size_t pages = rx->options().max_pages_per_record;
  aad_.resize(kRecordHeaderBytes +
              std::max({pages * kPageEntryBytes, ResumeMetaBytes(kMaxStreams),
                        kVcpuMetaBytes}));
  heads_.resize(pages * 32);
  targets_.resize(pages);
  claimed_.resize(pages);
  scratch_ = static_cast<uint8_t*>(std::aligned_alloc(64, pages * kPageSize));
}

ReceiverStream::~ReceiverStream() {
  // Scratch held guest plaintext: wipe it before returning it to the heap.
  if (scratch_ != nullptr)
    OPENSSL_cleanse(scratch_, rx_->options().max_pages_per_record * kPageSize);
  std::free(scratch_);
}

Status ReceiverStream::OpenBlock(const RecordHeader& h, uint16_t slot,
                                 std::span<const uint8_t, 16> descriptor,
                                 const uint8_t* tag,
                                 std::span<const uint8_t> ct, uint8_t* plain) {
  uint8_t iv[kAeadIvBytes];
  MakeRecordIv(h.counter, h.stream, slot, iv);
  Status s = aead_->Open(iv, descriptor, ct, plain,
                         std::span<const uint8_t, kAeadTagBytes>(tag, 16));
  if (!s.ok() && s.code() == Code::kAuthFailed)
    return Status(Code::kAuthFailed,
                  fmt::format("record {} of stream {}: block {} tag mismatch",
                              h.counter, h.stream, slot - 1));
  return s;
}

Result<ImportedRecord> ReceiverStream::Import(GuestPlatform* platform,
                                              std::span<const uint8_t> bytes) {
  if (bytes.size() < kRecordPrefixBytes)
    return Status(Code::kRecordTruncated,
                  fmt::format("{} bytes, a record needs at least {}",
                              bytes.size(), kRecordPrefixBytes));
  // The input may be a host-shared ring: everything we authenticate and then
  // use is copied out once, and only the private copy is used afterwards.
  uint8_t prefix[kRecordPrefixBytes];
  std::memcpy(prefix, bytes.data(), sizeof(prefix));
  CPC_ASSIGN_OR_RETURN(RecordHeader h, DecodePrefix(prefix));
  if (bytes.size() < h.record_bytes)
    return Status(Code::kRecordTruncated,
                  fmt::format("record of {} bytes, only {} present",
                              h.record_bytes, bytes.size()));
  const std::span<const uint8_t> rec = bytes.first(h.record_bytes);
  if (h.session_id != rx_->session_id_)
    return Status(Code::kAuthFailed, "record of another session");
  if (h.stream != stream_)
    return Malformed(fmt::format("record of stream {} delivered to stream {}",
                                 h.stream, stream_));
  if (h.type == RecordType::kMemory &&
      h.item_count > rx_->options_.max_pages_per_record)
    return Malformed(fmt::format("{} pages in a record, receiver takes {}",
                                 h.item_count,
                                 rx_->options_.max_pages_per_record));
  if (IsToken(h.type) && h.stream != 0)
    return Malformed("tokens travel on stream 0");

  // Header tag: GMAC over header || metadata, before anything else is used.
  std::memcpy(aad_.data(), prefix, kRecordHeaderBytes);
  std::memcpy(aad_.data() + kRecordHeaderBytes, rec.data() + kRecordPrefixBytes,
              h.meta_bytes);
  if (!AllZero(rec.data() + kRecordPrefixBytes + h.meta_bytes,
               Pad64(h.meta_bytes) - h.meta_bytes))
    return Malformed("nonzero metadata padding");
  {
    uint8_t iv[kAeadIvBytes];
    MakeRecordIv(h.counter, h.stream, 0, iv);
    Status s = aead_->Open(
        iv, {aad_.data(), kRecordHeaderBytes + h.meta_bytes}, {}, nullptr,
        std::span<const uint8_t, kAeadTagBytes>(prefix + hdr::kTag, 16));
    if (s.code() == Code::kAuthFailed)
      return Status(Code::kAuthFailed,
                    fmt::format("record {} of stream {}: header tag mismatch",
                                h.counter, h.stream));
    CPC_RETURN_IF_ERROR(s);
  }

  // Authentic from here on. Tokens and vCPU records change session-wide
  // state and take the lock exclusively; page records run in parallel.
  const bool exclusive =
      h.type != RecordType::kMemory && h.type != RecordType::kEnd;
  std::shared_lock<std::shared_mutex> shared(rx_->mu_, std::defer_lock);
  std::unique_lock<std::shared_mutex> excl(rx_->mu_, std::defer_lock);
  if (exclusive) {
    excl.lock();
  } else {
    shared.lock();
  }
  if (rx_->state_ == Receiver::State::kAborted)
    return Status(Code::kAborted, "this destination aborted; it never starts");
  if (rx_->poisoned())
    return Status(Code::kFailedPrecondition,
                  "an earlier record failed after writing into guest memory "
                  "(single pass); this import cannot continue");
  if (rx_->state_ == Receiver::State::kStarted)
    return Status(Code::kFailedPrecondition, "already started");
  if (ended_)
    return Status(Code::kFailedPrecondition,
                  fmt::format("stream {} ended", stream_));
  if (rx_->resume_pending_ && h.type != RecordType::kResume)
    return Status(Code::kRecordOutOfOrder,
                  "a record before the resume record that must follow this "
                  "side's resume ack");
  const uint32_t epoch = rx_->epoch();
  // A resume record opens a later epoch: it is what moves us there.
  const bool opens_epoch = h.type == RecordType::kResume;
  if (opens_epoch && h.epoch <= epoch)
    return Status(Code::kRecordReplayed,
                  fmt::format("resume record opening epoch {}, current is {}",
                              h.epoch, epoch));
  if (h.epoch < epoch)
    return Status(
        Code::kStaleEpoch,
        fmt::format("record of epoch {}, current is {}", h.epoch, epoch));
  if (h.epoch > epoch && !opens_epoch)
    return Status(Code::kRecordOutOfOrder,
                  fmt::format("record of epoch {} before the token closing "
                              "epoch {}",
                              h.epoch, epoch));
  if (h.counter < expected_counter_)
    return Status(Code::kRecordReplayed,
                  fmt::format("stream {}: counter {} already seen (next {})",
                              stream_, h.counter, expected_counter_));
  if (h.counter > expected_counter_ && !IsStandalone(h.type))
    return Status(Code::kRecordOutOfOrder,
                  fmt::format("stream {}: counter {}, expected {} (reordered "
                              "or dropped)",
                              stream_, h.counter, expected_counter_));

  ImportedRecord out;
  out.type = h.type;
  out.record_bytes = h.record_bytes;
  const uint8_t* meta = aad_.data() + kRecordHeaderBytes;
  bool counts = true;
  switch (h.type) {
    case RecordType::kMemory:
      CPC_RETURN_IF_ERROR(ImportMemory(platform, h, rec, &out));
      break;
    case RecordType::kVcpuState:
      CPC_RETURN_IF_ERROR(ImportVcpu(platform, h, rec, &out));
      break;
    case RecordType::kEpochToken: {
      counts = false;
      const uint32_t streams = static_cast<uint32_t>(GetLe(meta, 4));
      if (streams != rx_->stream_count() || GetLe(meta + 4, 4) != 0 ||
          h.meta_bytes != EpochMetaBytes(streams))
        return Malformed(
            fmt::format("epoch token for {} streams, session has "
                        "{}",
                        streams, rx_->stream_count()));
      if (epoch >= kMaxEpoch) return Malformed("epoch space exhausted");
      for (uint32_t s = 0; s < streams; ++s) {
        const uint64_t want = GetLe(meta + 8 + 8 * s, 8);
        const uint64_t got = rx_->streams_[s]->records_in_epoch_.load();
        if (want != got)
          return Status(Code::kEpochMismatch,
                        fmt::format("epoch {}: stream {} sent {} records, {} "
                                    "arrived",
                                    epoch, s, want, got));
      }
      for (auto& st : rx_->streams_) st->records_in_epoch_.store(0);
      rx_->epoch_.store(epoch + 1, std::memory_order_release);
      break;
    }
    case RecordType::kStartToken: {
      counts = false;
      if (GetLe(meta, 4) != rx_->options_.vcpu_count ||
          GetLe(meta + 4, 4) != rx_->stream_count() || GetLe(meta + 8, 8) != 0)
        return Malformed("start token for another vCPU/stream configuration");
      for (const auto& st : rx_->streams_)
        if (st->records_in_epoch_.load() != 0)
          return Status(Code::kIncomplete,
                        fmt::format("epoch {} not closed before the start "
                                    "token",
                                    epoch));
      for (uint32_t v = 0; v < rx_->options_.vcpu_count; ++v)
        if (!rx_->vcpu_imported_[v])
          return Status(Code::kIncomplete,
                        fmt::format("vCPU {} state not imported", v));
      rx_->state_ = Receiver::State::kStarted;
      break;
    }
    case RecordType::kAbortToken:
      counts = false;
      if (GetLe(meta + 4, 4) != 0 || GetLe(meta + 8, 8) != 0)
        return Malformed("nonzero reserved abort-token bytes");
      rx_->peer_aborted_ = true;
      break;
    case RecordType::kEnd:
      ended_ = true;
      break;
    case RecordType::kResumeAck: {
      counts = false;
      const uint32_t streams = static_cast<uint32_t>(GetLe(meta, 4));
      if (h.meta_bytes != ResumeAckMetaBytes(streams))
        return Malformed("resume ack: stream count and size disagree");
      Receiver::ResumeAck ack;
      ack.epoch = static_cast<uint32_t>(GetLe(meta + 4, 4));
      for (uint32_t s = 0; s < streams; ++s)
        ack.records.push_back(GetLe(meta + 8 + 8 * s, 8));
      rx_->peer_resume_ = std::move(ack);
      break;
    }
    case RecordType::kResume: {
      counts = false;
      const uint32_t streams = static_cast<uint32_t>(GetLe(meta, 4));
      if (streams != rx_->stream_count() ||
          h.meta_bytes != ResumeMetaBytes(streams))
        return Malformed(
            fmt::format("resume record for {} streams, session "
                        "has {}",
                        streams, rx_->stream_count()));
      if (!rx_->resume_pending_)
        return Status(Code::kRecordOutOfOrder,
                      "a resume record this side did not acknowledge");
      const uint32_t closed = static_cast<uint32_t>(GetLe(meta + 4, 4));
      if (closed != epoch)
        return Status(Code::kEpochMismatch,
                      fmt::format("resume closes epoch {}, this side is in {}",
                                  closed, epoch));
      for (uint32_t s = 0; s < streams; ++s) {
        const ReceiverStream& st = *rx_->streams_[s];
        const uint64_t want = GetLe(meta + 8 + 8 * s, 8);
        const uint64_t next = GetLe(meta + 8 + 8 * (size_t{streams} + s), 8);
        if (want != st.records_in_epoch_.load())
          return Status(
              Code::kEpochMismatch,
              fmt::format("resume: stream {} holds {} records of "
                          "epoch {}, the ack said {}",
                          s, st.records_in_epoch_.load(), epoch, want));
        if (st.ended_ || next < st.expected_counter_ ||
            (s == 0 && next != h.counter + 1))
          return Malformed(
              fmt::format("resume: stream {} next counter {} "
                          "(expected at least {})",
                          s, next, st.expected_counter_));
      }
      for (uint32_t s = 1; s < streams; ++s)
        rx_->streams_[s]->expected_counter_ =
            GetLe(meta + 8 + 8 * (size_t{streams} + s), 8);
      expected_counter_ = h.counter;  // + 1 below
      for (auto& st : rx_->streams_) st->records_in_epoch_.store(0);
      rx_->epoch_.store(h.epoch, std::memory_order_release);
      rx_->resume_pending_ = false;
      break;
    }
  }
  if (IsStandalone(h.type)) expected_counter_ = h.counter;
  ++expected_counter_;
  if (counts) records_in_epoch_.fetch_add(1, std::memory_order_acq_rel);
  return out;
}

Status ReceiverStream::ImportMemory(GuestPlatform* platform,
                                    const RecordHeader& h,
                                    std::span<const uint8_t> rec,
                                    ImportedRecord* out) {
  if (platform == nullptr)
    return Status(Code::kFailedPrecondition, "no guest memory to import into");
  const uint32_t n = h.item_count;
  const uint8_t* table = aad_.data() + kRecordHeaderBytes;
  size_t expect = kRecordPrefixBytes + Pad64(size_t{n} * kPageEntryBytes);
  for (uint32_t i = 0; i < n; ++i) {
    const uint8_t* e = table + size_t{i} * kPageEntryBytes;
    const uint64_t gpa = GetLe(e, 8);
    const uint32_t flags = static_cast<uint32_t>(GetLe(e + 12, 4));
    if (gpa % kPageSize != 0 || gpa >= rx_->options_.memory_bytes ||
        (flags & ~kPageFlagsKnown) != 0)
      return Malformed(
          fmt::format("page entry {}: gpa {:#x} flags {:#x}", i, gpa, flags));
    // A record read in place (an attached file) is in no cache: fetch every
    // block head now rather than one DRAM miss after another below.
    if (expect < rec.size()) __builtin_prefetch(rec.data() + expect);
    expect += PageBlockBytes(e);
  }
  if (expect != h.record_bytes)
    return Malformed(
        fmt::format("memory record is {} bytes, its page table "
                    "says {}",
                    h.record_bytes, expect));

  // Block heads: one private copy each (descriptor + tag), checked against
  // the authenticated page table before any crypto.
  size_t pos = kRecordPrefixBytes + Pad64(size_t{n} * kPageEntryBytes);
  for (uint32_t i = 0; i < n; ++i) {
    uint8_t* head = heads_.data() + size_t{i} * 32;
    std::memcpy(head, rec.data() + pos, 32);
    if (!AllZero(rec.data() + pos + 32, kBlockHeadBytes - 32))
      return Malformed(fmt::format("page block {}: nonzero padding", i));
    const uint8_t* e = table + size_t{i} * kPageEntryBytes;
    if (std::memcmp(head, e, kPageEntryBytes) != 0)
      return Status(Code::kGpaMismatch,
                    fmt::format("page block {} names gpa {:#x}, the page "
                                "table has {:#x}",
                                i, GetLe(head, 8), GetLe(e, 8)));
    pos += PageBlockBytes(e);
  }

  // Claim every page for this epoch; undone if anything below fails.
  const uint32_t mark = h.epoch + 1;
  uint32_t claimed = 0;
  auto rollback = [&] {
    for (uint32_t j = 0; j < claimed; ++j)
      rx_->page_mark_[GetLe(table + size_t{j} * kPageEntryBytes, 8) / kPageSize]
          .store(claimed_[j], std::memory_order_release);
  };
  for (; claimed < n; ++claimed) {
    const uint64_t gpa = GetLe(table + size_t{claimed} * kPageEntryBytes, 8);
    std::atomic<uint32_t>& m = rx_->page_mark_[gpa / kPageSize];
    uint32_t old = m.load(std::memory_order_acquire);
    do {
      if (old == mark) {
        rollback();
        return Status(Code::kDuplicatePage,
                      fmt::format("page {:#x} already imported in epoch {}",
                                  gpa, h.epoch));
      }
    } while (!m.compare_exchange_weak(old, mark, std::memory_order_acq_rel));
    claimed_[claimed] = old;
  }

  if (rx_->options_.single_pass)
    return ImportMemorySinglePass(platform, h, rec, out, rollback);

  // Decrypt + verify every page into private scratch.
  pos = kRecordPrefixBytes + Pad64(size_t{n} * kPageEntryBytes);
  for (uint32_t i = 0; i < n; ++i) {
    bool zero = false;
    if (Status s =
            OpenPage(h, rec, i, &pos, scratch_ + size_t{i} * kPageSize, &zero);
        !s.ok()) {
      rollback();
      return s;
    }
  }
  // Resolve every target before writing any, so a platform refusal cannot
  // leave the record half-applied.
  if (Status s = ResolveTargets(platform, n); !s.ok()) {
    rollback();
    return s;
  }
  // Commit.
  for (uint32_t i = 0; i < n; ++i) {
    if (GetLe(table + size_t{i} * kPageEntryBytes + 12, 4) & kPageFlagZero) {
      std::memset(targets_[i], 0, kPageSize);
    } else {
      CommitPage(targets_[i], scratch_ + size_t{i} * kPageSize);
    }
  }
  CommitFence();
  out->pages = n;
  return Status::Ok();
}

Status ReceiverStream::OpenPage(const RecordHeader& h,
                                std::span<const uint8_t> rec, uint32_t i,
                                size_t* pos, uint8_t* plain, bool* zero) {
  const uint8_t* e =
      aad_.data() + kRecordHeaderBytes + size_t{i} * kPageEntryBytes;
  *zero = GetLe(e + 12, 4) & kPageFlagZero;
  const size_t len = *zero ? 0 : kPageSize;
  if (i + 1 < h.item_count)
    __builtin_prefetch(rec.data() + *pos + kBlockHeadBytes + len);
  CPC_RETURN_IF_ERROR(OpenBlock(
      h, static_cast<uint16_t>(i + 1), std::span<const uint8_t, 16>(e, 16),
      heads_.data() + size_t{i} * 32 + 16,
      rec.subspan(*pos + kBlockHeadBytes, len), plain));
  *pos += kBlockHeadBytes + len;
  return Status::Ok();
}

Status ReceiverStream::ResolveTargets(GuestPlatform* platform, uint32_t n) {
  const uint8_t* table = aad_.data() + kRecordHeaderBytes;
  for (uint32_t i = 0; i < n; ++i) {
    auto page = platform->PrivatePageForWrite(
        GetLe(table + size_t{i} * kPageEntryBytes, 8));
    if (!page.ok()) return page.status();
    if (page->size() < kPageSize)
      return Status(Code::kInternal, "short guest page");
    targets_[i] = page->data();
  }
  return Status::Ok();
}

template <typename Rollback>
Status ReceiverStream::ImportMemorySinglePass(GuestPlatform* platform,
                                              const RecordHeader& h,
                                              std::span<const uint8_t> rec,
                                              ImportedRecord* out,
                                              const Rollback& rollback) {
  const uint32_t n = h.item_count;
  // Every target first: a platform refusal still writes nothing.
  if (Status s = ResolveTargets(platform, n); !s.ok()) {
    rollback();
    return s;
  }
  // Page by page: decrypt + verify into one private page (it stays in L1),
  // then commit it. Decrypting straight into the guest page measured
  // slower: its plain stores read every guest line first, which the
  // non-temporal commit avoids (docs/PERFORMANCE.md).
  uint8_t* const plain = scratch_;
  size_t pos = kRecordPrefixBytes + Pad64(size_t{n} * kPageEntryBytes);
  for (uint32_t i = 0; i < n; ++i) {
    // The next page's ciphertext, a page ahead: read in place from an
    // attached file it comes from DRAM, and the hardware prefetchers stop
    // at every 4 KiB boundary.
    if (i + 1 < n) {
      const uint8_t* next = rec.data() + pos +
                            PageBlockBytes(aad_.data() + kRecordHeaderBytes +
                                           size_t{i} * kPageEntryBytes) +
                            kBlockHeadBytes;
      for (size_t line = 0; line < kPageSize; line += 64)
        __builtin_prefetch(next + line);
    }
    bool zero = false;
    if (Status s = OpenPage(h, rec, i, &pos, plain, &zero); !s.ok()) {
      // The pages before this one are in the guest already: the record is
      // half-applied, so nothing may follow it.
      CommitFence();
      rx_->poisoned_.store(true, std::memory_order_release);
      rollback();
      return s;
    }
    if (zero) {
      std::memset(targets_[i], 0, kPageSize);
    } else {
      CommitPage(targets_[i], plain);
    }
  }
  CommitFence();
  out->pages = n;
  return Status::Ok();
}

Status ReceiverStream::ImportVcpu(GuestPlatform* platform,
                                  const RecordHeader& h,
                                  std::span<const uint8_t> rec,
                                  ImportedRecord* out) {
  if (platform == nullptr)
    return Status(Code::kFailedPrecondition, "no platform to import into");
  const uint8_t* meta = aad_.data() + kRecordHeaderBytes;
  const uint32_t vcpu = static_cast<uint32_t>(GetLe(meta, 4));
  const uint32_t len = static_cast<uint32_t>(GetLe(meta + 4, 4));
  const size_t block = kRecordPrefixBytes + Pad64(kVcpuMetaBytes);
  if (vcpu >= rx_->options_.vcpu_count || GetLe(meta + 8, 8) != 0 ||
      len > kMaxVcpuStateBytes ||
      h.record_bytes != block + kBlockHeadBytes + Pad64(len))
    return Malformed(fmt::format("vCPU record: vcpu {} of {}, {} bytes", vcpu,
                                 rx_->options_.vcpu_count, len));
  uint8_t head[32];
  std::memcpy(head, rec.data() + block, 32);
  if (std::memcmp(head, meta, kVcpuMetaBytes) != 0 ||
      !AllZero(rec.data() + block + 32, kBlockHeadBytes - 32) ||
      !AllZero(rec.data() + block + kBlockHeadBytes + len, Pad64(len) - len))
    return Malformed("vCPU block descriptor or padding");
  if (rx_->vcpu_imported_[vcpu])
    return Status(Code::kDuplicatePage,
                  fmt::format("vCPU {} state already imported", vcpu));
  vcpu_scratch_.resize(len);
  CPC_RETURN_IF_ERROR(OpenBlock(
      h, 1, std::span<const uint8_t, 16>(meta, 16), head + 16,
      rec.subspan(block + kBlockHeadBytes, len), vcpu_scratch_.data()));
  Status s = platform->ImportVcpuState(vcpu, vcpu_scratch_);
  OPENSSL_cleanse(vcpu_scratch_.data(), vcpu_scratch_.size());
  CPC_RETURN_IF_ERROR(s);
  rx_->vcpu_imported_[vcpu] = 1;
  out->vcpus = 1;
  return Status::Ok();
}

Result<std::unique_ptr<Receiver>> Receiver::Create(
    const AeadEngine& engine, std::span<const uint8_t> key,
    const SessionId& session_id, const ReceiverOptions& opts) {
  if (opts.streams == 0 || opts.streams > kMaxStreams)
    return Status(Code::kInvalidArgument,
                  fmt::format("{} streams (1..{})", opts.streams, kMaxStreams));
  if (opts.max_pages_per_record == 0 ||
      opts.max_pages_per_record > kMaxRecordItems)
    return Status(Code::kInvalidArgument, "max_pages_per_record out of range");
  if (opts.memory_bytes % kPageSize != 0)
    return Status(Code::kInvalidArgument, "memory size not page-aligned");
  auto rx = std::unique_ptr<Receiver>(new Receiver());
  rx->options_ = opts;
  rx->session_id_ = session_id;
  rx->pages_ = opts.memory_bytes / kPageSize;
  rx->page_mark_ = std::make_unique<std::atomic<uint32_t>[]>(rx->pages_);
  rx->vcpu_imported_.assign(opts.vcpu_count, 0);
  for (uint32_t i = 0; i < opts.streams; ++i) {
    CPC_ASSIGN_OR_RETURN(auto aead, engine.NewKeyed(key));
    auto st = std::unique_ptr<ReceiverStream>(new ReceiverStream(
        rx.get(), static_cast<uint16_t>(i), std::move(aead)));
    if (st->scratch_ == nullptr)
      return Status(Code::kResourceExhausted, "receiver scratch");
    rx->streams_.push_back(std::move(st));
  }
  return rx;
}

uint64_t Receiver::CountImportedPages() const {
  uint64_t n = 0;
  for (uint64_t i = 0; i < pages_; ++i)
    n += page_mark_[i].load(std::memory_order_relaxed) != 0 ? 1 : 0;
  return n;
}

bool Receiver::started() const {
  std::shared_lock lock(mu_);
  return state_ == State::kStarted;
}

bool Receiver::aborted() const {
  std::shared_lock lock(mu_);
  return state_ == State::kAborted;
}

bool Receiver::peer_aborted() const {
  std::shared_lock lock(mu_);
  return peer_aborted_;
}

bool Receiver::resume_pending() const {
  std::shared_lock lock(mu_);
  return resume_pending_;
}

Result<Receiver::ResumeAck> Receiver::TakePeerResumeAck() {
  std::unique_lock lock(mu_);
  if (!peer_resume_)
    return Status(Code::kNotFound, "no resume ack from the peer");
  ResumeAck ack = std::move(*peer_resume_);
  peer_resume_.reset();
  return ack;
}

Result<size_t> Receiver::SealResumeAck(StreamSender& backward,
                                       std::span<uint8_t> out) {
  std::unique_lock lock(mu_);
  if (state_ != State::kImporting)
    return Status(Code::kFailedPrecondition,
                  state_ == State::kStarted
                      ? "destination already started; nothing to resume"
                      : "this destination aborted; it never resumes");
  if (backward.stream() != 0)
    return Status(Code::kInvalidArgument, "resume acks travel on stream 0");
  for (const auto& st : streams_)
    if (st->ended_)
      return Status(Code::kFailedPrecondition,
                    fmt::format("stream {} already ended", st->stream()));
  const uint32_t n = stream_count();
  std::vector<uint8_t> meta(ResumeAckMetaBytes(n), 0);
  PutLe(meta.data(), n, 4);
  PutLe(meta.data() + 4, epoch(), 4);
  for (uint32_t i = 0; i < n; ++i)
    PutLe(meta.data() + 8 + 8 * i, streams_[i]->records_in_epoch_.load(), 8);
  CPC_ASSIGN_OR_RETURN(size_t bytes,
                       backward.SealControl(RecordType::kResumeAck, meta,
                                            /*counts=*/false, out));
  // Only now: a failed seal leaves the receiver as it was.
  resume_pending_ = true;
  return bytes;
}

Result<size_t> Receiver::AbortAndSeal(StreamSender& backward, uint32_t reason,
                                      std::span<uint8_t> out) {
  {
    std::unique_lock lock(mu_);
    if (state_ == State::kStarted)
      return Status(Code::kFailedPrecondition,
                    "destination already started; it cannot abort");
    state_ = State::kAborted;
  }
  if (backward.stream() != 0)
    return Status(Code::kInvalidArgument, "abort tokens travel on stream 0");
  uint8_t meta[kAbortMetaBytes] = {};
  PutLe(meta, reason, 4);
  return backward.SealControl(RecordType::kAbortToken, meta, /*counts=*/false,
                              out);
}

CPC_NAMESPACE_END
