// The sealing side of a session: per-stream counters, the epoch, and the
// record writers that MEE/SEE drive (docs/FORMAT.md).
//
// Ownership: a SenderSession owns one StreamSender per stream; each
// StreamSender owns its keyed AEAD and private staging buffers (allocated
// once, so sealing allocates nothing per page). The session outlives its
// streams' users.
//
// Threading: one StreamSender is used by one thread at a time (one hvCPU per
// stream); different streams seal in parallel. CloseEpoch / SealStart touch
// every stream and require that no stream is sealing at that moment
// (kFailedPrecondition otherwise - the streams are checked, not locked).
//
// Shared-memory discipline: `out` buffers are host-shared rings. Every byte
// that is authenticated (header, metadata, per-page AAD) is built in private
// memory first and only copied out; nothing is ever read back from `out`, so
// a host writing into the ring while we seal cannot change what we MAC.
//
// Errors: kResourceExhausted when `out` cannot hold the record (nothing is
// written, no counter consumed); kInvalidArgument for bad arguments;
// kIncomplete / kFailedPrecondition for token preconditions; kInternal for a
// crypto library failure (the counter is then consumed: IVs never repeat).
#ifndef CPC_SRC_OPERATORS_SENDER_H_
#define CPC_SRC_OPERATORS_SENDER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <cpc/record.h>
#include <cpc/status.h>
#include <cpc/types.h>

#include "operators/aead.h"

CPC_NAMESPACE_BEGIN

class SenderSession;

struct SenderOptions {
  uint32_t streams = 1;  // 1..kMaxStreams; tokens travel on stream 0
  uint32_t vcpu_count = 0;
  uint32_t pages_per_record = kDefaultPagesPerRecord;  // 1..kMaxRecordItems
  // Elide all-zero pages (no ciphertext, only an authenticated descriptor).
  // Leaks which pages are zero: a tenant-policy option, off by default.
  bool elide_zero_pages = false;
};

// One page to export: its address and the caller's version of it (opaque to
// the import rules, authenticated as AAD, reported to the importer).
struct PageRef {
  Gpa gpa = 0;
  uint32_t version = 0;
};

class StreamSender {
 public:
  StreamSender(const StreamSender&) = delete;
  StreamSender& operator=(const StreamSender&) = delete;

  uint16_t stream() const { return stream_; }
  uint64_t next_counter() const { return next_counter_; }
  uint32_t epoch() const;
  uint64_t records_in_epoch() const {
    return records_in_epoch_.load(std::memory_order_acquire);
  }
  const SenderOptions& options() const;

  // Seals one memory record of pages[i] (contents at data[i], kPageSize
  // bytes each) into the start of `out`; returns the bytes written.
  // 1 <= pages.size() <= options().pages_per_record. Prefetches the pages
  // two ahead (the 4 KiB boundary defeats the hardware prefetcher).
  Result<size_t> SealMemory(std::span<const PageRef> pages,
                            std::span<const uint8_t* const> data,
                            std::span<uint8_t> out);
  // Seals gvCPU `vcpu`'s state (<= kMaxVcpuStateBytes) as one record.
  Result<size_t> SealVcpuState(uint32_t vcpu, std::span<const uint8_t> state,
                               std::span<uint8_t> out);
  // Seals an End record: no more records follow on this stream.
  Result<size_t> SealEnd(std::span<uint8_t> out);

  // Upper bound of SealMemory's output for `pages` pages.
  static size_t MemoryRecordBound(uint32_t pages) {
    return MemoryRecordBytes(pages);
  }

 private:
  friend class SenderSession;
  friend class Receiver;  // seals the abort token (Receiver::AbortAndSeal)
  StreamSender(SenderSession* session, uint16_t stream,
               std::unique_ptr<KeyedAead> aead);

  // Header + metadata + header tag for a record of `record_bytes`, metadata
  // taken from meta_ (private). Consumes a counter. Writes out[0, prefix +
  // padded meta).
  Status WritePrefix(RecordType type, uint32_t items, uint32_t meta_bytes,
                     uint32_t record_bytes, std::span<uint8_t> out,
                     uint64_t* counter);
  // A record with metadata only (tokens, End).
  Result<size_t> SealControl(RecordType type, std::span<const uint8_t> meta,
                             bool counts, std::span<uint8_t> out);
  // One block: head (descriptor copy + tag) and ciphertext of `plain`.
  Status SealBlock(uint64_t counter, uint16_t slot,
                   std::span<const uint8_t, 16> descriptor,
                   std::span<const uint8_t> plain, uint8_t* block);

  SenderSession* session_;
  const uint16_t stream_;
  std::unique_ptr<KeyedAead> aead_;
  uint64_t next_counter_ = 0;
  std::atomic<uint64_t> records_in_epoch_{0};
  std::atomic<bool> busy_{false};
  // Private staging: header (64 B) followed by metadata, contiguous so the
  // header tag is one GMAC call.
  std::vector<uint8_t> aad_;
};

class SenderSession {
 public:
  // `key` is this direction's 32-byte key (SessionKeys::tx()). One keyed
  // AEAD per stream is created here with `engine`.
  static Result<std::unique_ptr<SenderSession>> Create(
      const AeadEngine& engine, std::span<const uint8_t> key,
      const SessionId& session_id, const SenderOptions& options);

  StreamSender& stream(uint32_t index) { return *streams_.at(index); }
  uint32_t stream_count() const {
    return static_cast<uint32_t>(streams_.size());
  }
  const SenderOptions& options() const { return options_; }
  const SessionId& session_id() const { return session_id_; }
  uint32_t epoch() const { return epoch_.load(std::memory_order_acquire); }

  // Closes the current epoch: an epoch token on stream 0 carrying every
  // stream's record count for it; then epoch + 1. kFailedPrecondition if a
  // stream is sealing or the epoch space is used up.
  Result<size_t> CloseEpoch(std::span<uint8_t> out);
  // The start token on stream 0. kIncomplete unless every gvCPU's state was
  // sealed and the current epoch is empty (the last one was closed).
  Result<size_t> SealStart(std::span<uint8_t> out);

  // After a network cut, answers the destination's verified resume ack
  // (Receiver::TakePeerResumeAck): a resume record on stream 0 that closes
  // the destination's epoch `acked_epoch` at the record counts it holds,
  // opens epoch epoch() + 1 for both sides and moves the destination's
  // expected counters to this side's next ones, so nothing sealed before
  // is ever accepted again and no IV is reused. Records sealed but not
  // acknowledged are lost: the caller re-sends their pages. kInvalidArgument
  // for an ack of a later epoch or another stream count; kFailedPrecondition
  // if a stream is sealing; kResourceExhausted (nothing changed) if `out`
  // is too small.
  Result<size_t> SealResume(uint32_t acked_epoch,
                            std::span<const uint64_t> acked_records,
                            std::span<uint8_t> out);

 private:
  friend class StreamSender;
  SenderSession() = default;
  Status CheckIdle() const;

  SenderOptions options_;
  SessionId session_id_{};
  std::atomic<uint32_t> epoch_{0};
  std::vector<std::unique_ptr<StreamSender>> streams_;
  std::unique_ptr<std::atomic<bool>[]> vcpu_sealed_;
};

CPC_NAMESPACE_END

#endif  // CPC_SRC_OPERATORS_SENDER_H_
