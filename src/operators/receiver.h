// The opening side of a session: the import rules of docs/FORMAT.md section 6.
//
// A Receiver holds the session-wide state (current epoch, which page was
// imported in which epoch, which gvCPU states arrived, started / aborted) and
// one ReceiverStream per stream with that stream's expected counter, its
// record count in the current epoch, its keyed AEAD and a private scratch
// area of max_pages_per_record pages.
//
// Atomic records: a record that is refused changes nothing - neither guest
// memory, nor the receiver's counters, epoch or page marks - so the host may
// deliver the genuine record afterwards. To get there every page is
// decrypted and verified into the private scratch area, and copied into the
// guest only once the whole record verified and passed the rules. That costs
// one extra 4 KiB copy per page (docs/PERFORMANCE.md) and is also what keeps
// a host that rewrites the shared ring while we read it from getting
// unverified bytes into the guest: every input byte is read exactly once.
//
// Exception, ReceiverOptions::single_pass (default off): each page is
// decrypted + verified into one private page and committed at once (one
// pass over the record, every input byte still read once, and no
// unverified byte ever reaches the guest), so a record refused at a page tag
// may be half-applied. Such a refusal poisons the receiver: it refuses every
// later record, the start token included (kFailedPrecondition), so it never
// starts. Only for a fresh target that any refusal destroys (CPC-Snapshot
// restore); never for migration, which relies on retransmission after a
// refusal.
//
// Ownership: the Receiver owns its streams; the GuestPlatform passed to
// Import is borrowed for the call. Threading: one ReceiverStream is used by
// one thread at a time; different streams import in parallel (page marks are
// atomic; tokens take the session lock exclusively, records take it shared).
// Receiver's own methods are thread-safe.
//
// Errors (each refusal has its own code): kRecordTruncated, kRecordMalformed,
// kAuthFailed (tag, or another session), kStaleEpoch, kRecordReplayed,
// kRecordOutOfOrder (counter ahead, or an epoch not yet opened),
// kDuplicatePage (page or gvCPU state already imported in this epoch),
// kGpaMismatch (a page block names another GPA than the authenticated page
// table at its position), kEpochMismatch (epoch token counts differ),
// kIncomplete (start token too early), kAborted (this destination aborted),
// kRecordOutOfOrder also for any record but the resume record after
// SealResumeAck, and for a resume record that answers no ack,
// kFailedPrecondition (already started, stream ended, no platform, poisoned
// by a failed single-pass record); platform
// errors from PrivatePageForWrite / ImportVcpuState pass through.
#ifndef CPC_SRC_OPERATORS_RECEIVER_H_
#define CPC_SRC_OPERATORS_RECEIVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <vector>

#include <cpc/backend.h>
#include <cpc/record.h>
#include <cpc/status.h>

#include "operators/aead.h"
#include "operators/sender.h"

CPC_NAMESPACE_BEGIN

class Receiver;

struct ReceiverOptions {
  uint32_t streams = 1;       // must equal the sender's
  uint64_t memory_bytes = 0;  // guest memory; pages must lie below
  uint32_t vcpu_count = 0;    // gvCPUs whose state must arrive before start
  uint32_t max_pages_per_record = kDefaultPagesPerRecord;  // scratch size
  // Commit memory records page by page as each page verifies (see above):
  // the commit copy reads an L1-resident page instead of a record-sized
  // scratch area; a failed page tag poisons the receiver.
  bool single_pass = false;
};

// What one imported record did.
struct ImportedRecord {
  RecordType type = RecordType::kMemory;
  uint32_t record_bytes = 0;  // bytes consumed from the input
  uint32_t pages = 0;         // guest pages written
  uint32_t vcpus = 0;         // gvCPU states imported
};

class ReceiverStream {
 public:
  ~ReceiverStream();  // wipes the scratch area (it held guest plaintext)
  ReceiverStream(const ReceiverStream&) = delete;
  ReceiverStream& operator=(const ReceiverStream&) = delete;

  uint16_t stream() const { return stream_; }
  uint64_t expected_counter() const { return expected_counter_; }
  bool ended() const { return ended_; }

  // Verifies and applies the record at the start of `bytes` (which may hold
  // more after it). `platform` may be null for a receiver that only takes
  // tokens (the source's backward direction).
  Result<ImportedRecord> Import(GuestPlatform* platform,
                                std::span<const uint8_t> bytes);

 private:
  friend class Receiver;
  ReceiverStream(Receiver* rx, uint16_t stream,
                 std::unique_ptr<KeyedAead> aead);

  Status ImportMemory(GuestPlatform* platform, const RecordHeader& h,
                      std::span<const uint8_t> rec, ImportedRecord* out);
  // Opens page block i of the memory record `rec` (at *pos, which moves past
  // it) into `plain` (private); *zero for an elided page.
  Status OpenPage(const RecordHeader& h, std::span<const uint8_t> rec,
                  uint32_t i, size_t* pos, uint8_t* plain, bool* zero);
  // targets_[0, n) = write access to the pages of the record's table.
  Status ResolveTargets(GuestPlatform* platform, uint32_t n);
  // ImportMemory's single_pass tail, after the checks and page claims;
  // `rollback` undoes the claims.
  template <typename Rollback>
  Status ImportMemorySinglePass(GuestPlatform* platform, const RecordHeader& h,
                                std::span<const uint8_t> rec,
                                ImportedRecord* out, const Rollback& rollback);
  Status ImportVcpu(GuestPlatform* platform, const RecordHeader& h,
                    std::span<const uint8_t> rec, ImportedRecord* out);
  // Opens block `slot` at `block` into `plain` (private).
  Status OpenBlock(const RecordHeader& h, uint16_t slot,
                   std::span<const uint8_t, 16> descriptor, const uint8_t* tag,
                   std::span<const uint8_t> ct, uint8_t* plain);

  Receiver* rx_;
  const uint16_t stream_;
  std::unique_ptr<KeyedAead> aead_;
  uint64_t expected_counter_ = 0;
  bool ended_ = false;
  std::atomic<uint64_t> records_in_epoch_{0};
  // Private copies, allocated once: header + metadata (the header-tag AAD),
  // block heads, decrypted pages, and the guest pages to commit into.
  std::vector<uint8_t> aad_;
  std::vector<uint8_t> heads_;
  uint8_t* scratch_ = nullptr;  // max_pages_per_record * kPageSize, aligned
  std::vector<uint8_t*> targets_;
  std::vector<uint32_t> claimed_;  // previous page marks, for rollback
  std::vector<uint8_t> vcpu_scratch_;
};

class Receiver {
 public:
  // `key` is the direction's key this side opens with (SessionKeys::rx()).
  static Result<std::unique_ptr<Receiver>> Create(const AeadEngine& engine,
                                                  std::span<const uint8_t> key,
                                                  const SessionId& session_id,
                                                  const ReceiverOptions& opts);

  ReceiverStream& stream(uint32_t index) { return *streams_.at(index); }
  uint32_t stream_count() const {
    return static_cast<uint32_t>(streams_.size());
  }
  const ReceiverOptions& options() const { return options_; }
  const SessionId& session_id() const { return session_id_; }

  uint32_t epoch() const { return epoch_.load(std::memory_order_acquire); }
  // The start token was accepted: the destination may run.
  bool started() const;
  // This destination aborted (AbortAndSeal): it will never start.
  bool aborted() const;
  // A valid abort token from the peer arrived (source side): the source may
  // resume.
  bool peer_aborted() const;
  // single_pass: a record was refused half-applied; every later record is
  // refused, and the receiver never starts.
  bool poisoned() const { return poisoned_.load(std::memory_order_acquire); }
  // Distinct guest pages imported at least once in this session (O(pages)).
  uint64_t CountImportedPages() const;

  // Resumption after a network cut (docs/FORMAT.md section 6.2).
  // Destination: seals, with `backward` (stream 0 of this side's direction
  // key), where this receiver stands - its epoch and every stream's record
  // count in it - and from then on refuses every record but the source's
  // resume record answering it (kRecordOutOfOrder). May be called again
  // (a reconnect attempt failed): the statement is the same. kFailed-
  // Precondition once started or aborted, or if a stream ended.
  Result<size_t> SealResumeAck(StreamSender& backward, std::span<uint8_t> out);
  // A resume ack was sealed and its resume record not yet imported.
  bool resume_pending() const;
  // Source (backward receiver): the last resume ack imported from the peer,
  // taken (kNotFound if none).
  struct ResumeAck {
    uint32_t epoch = 0;
    std::vector<uint64_t> records;  // per stream, in `epoch`
  };
  Result<ResumeAck> TakePeerResumeAck();

  // Destination side of the abort protocol: marks this receiver aborted
  // (refusing every later record, the start token included) and then seals
  // the abort token with `backward` (a stream of the destination's own
  // direction key). kFailedPrecondition once started: a running destination
  // cannot abort. Order matters: no token exists while we could still start.
  Result<size_t> AbortAndSeal(StreamSender& backward, uint32_t reason,
                              std::span<uint8_t> out);

 private:
  friend class ReceiverStream;
  enum class State : uint8_t { kImporting, kStarted, kAborted };
  Receiver() = default;

  ReceiverOptions options_;
  SessionId session_id_{};
  std::vector<std::unique_ptr<ReceiverStream>> streams_;
  mutable std::shared_mutex mu_;          // shared: records; exclusive: tokens
  State state_ = State::kImporting;       // guarded by mu_
  bool peer_aborted_ = false;             // guarded by mu_
  bool resume_pending_ = false;           // guarded by mu_
  std::optional<ResumeAck> peer_resume_;  // guarded by mu_
  std::vector<uint8_t> vcpu_imported_;    // guarded by mu_ (exclusive)
  std::atomic<uint32_t> epoch_{0};
  // Set without the lock (records hold it shared); checked by every record.
  std::atomic<bool> poisoned_{false};
  // Per page: 1 + the epoch it was last imported in; 0 = never.
  std::unique_ptr<std::atomic<uint32_t>[]> page_mark_;
  uint64_t pages_ = 0;
};

// The commit copy of a verified page (kPageSize bytes from 64-byte aligned
// private scratch) into guest memory: non-temporal stores where the CPU has
// them, so the guest page is never read first. CommitFence orders them
// before anything published after. Used by MDI; exposed for the benchmark's
// floor (decrypt into scratch + this copy).
void CommitPage(uint8_t* dst, const uint8_t* src);
void CommitFence();

CPC_NAMESPACE_END

#endif  // CPC_SRC_OPERATORS_RECEIVER_H_
