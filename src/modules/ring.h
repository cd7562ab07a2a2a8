// Record rings in host-shared memory: how maintenance modules hand sealed
// records to the host (export) and take them from it (import).
//
// A ring is `count` buffers at `offset` in the CVM's shared region, each a
// 64-byte RingHead followed by its payload. Producer and consumer walk the
// buffers in order 0, 1, ..., count-1, 0, ... A buffer is kFree (the
// producer may fill it) or kFull (filled, not yet taken). Every byte of a
// ring is host-controlled: the module reads a head's len and flags once and
// checks them before use.
//
// RingCursor is the module side of one ring; it is used by one hvCPU thread.
// Errors: kInvalidArgument for a ring outside the shared memory; whatever
// the wait predicate's call context returns (kAborted) while waiting.
#ifndef CPC_SRC_MODULES_RING_H_
#define CPC_SRC_MODULES_RING_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include <cpc/module.h>
#include <cpc/status.h>

CPC_NAMESPACE_BEGIN
namespace ring {

struct RingHead {
  std::atomic<uint32_t> state;  // kFree / kFull / kWriting
  uint32_t flags;               // kEndOfStream, kEndOfRound, kTokens, kResume
  uint64_t len;                 // payload bytes
  uint8_t pad[48];
};
static_assert(sizeof(RingHead) == 64);

inline constexpr uint32_t kFree = 0;     // the producer may fill it
inline constexpr uint32_t kFull = 1;     // filled, not yet taken
inline constexpr uint32_t kWriting = 2;  // host: being sent / written out

inline constexpr uint32_t kEndOfStream = 1;  // last buffer of the stream
inline constexpr uint32_t kEndOfRound = 2;   // last data buffer of a round
inline constexpr uint32_t kTokens = 4;       // holds the round's tokens only
inline constexpr uint32_t kResume = 8;  // the resume record after a reconnect
inline constexpr uint32_t kKnownFlags =
    kEndOfStream | kEndOfRound | kTokens | kResume;

inline constexpr uint32_t kMaxBuffers = 16;

// The buffers of a host-described ring, checked against `shared`.
Result<std::vector<uint8_t*>> MapRing(std::span<uint8_t> shared,
                                      uint64_t offset, uint64_t buf_bytes,
                                      uint32_t count, uint64_t min_buf_bytes);

// A free, empty buffer (the host lays out or resets a ring).
void ResetHead(RingHead* h);

// Doorbells. The shared region is one set of pages mapped into the host and
// the CVM process, so a head's state word doubles as a futex: whoever
// changes a state calls Notify, and a waiter sleeps in WaitChange instead
// of spinning (on 2 cores, spinning waiters took a fifth of the CPU a
// migration needs). Emulation of an event channel / interrupt; a host that
// never notifies only slows the CVM down (waits time out).
void Notify(RingHead* h);
// Sleeps until h->state may differ from `seen`, at most `timeout`.
void WaitChange(RingHead* h, uint32_t seen, std::chrono::microseconds timeout);

// A level: a u32 in shared memory that the host only raises (how far an
// attached file is resident, in 4 KiB pages), with a doorbell of its own.
// Host side: stores `value` and wakes the waiters.
void RaiseLevel(std::atomic<uint32_t>* level, uint32_t value);
// Module side: waits until *level >= want, asleep on the doorbell, yielding
// the hvCPU to the host every 5 ms (its abort policy expects exits).
Status WaitLevel(CallContext& ctx, const std::atomic<uint32_t>* level,
                 uint32_t want);

// The host's side of a doorbell wait: returns true once h->state == want,
// false as soon as stop() (checked at least every `poll`: a stop is not
// rung on this head's doorbell). A few yields first: the CVM usually
// answers within microseconds.
bool AwaitState(RingHead* h, uint32_t want, const std::function<bool()>& stop,
                std::chrono::microseconds poll = std::chrono::milliseconds(1));

// Waits for `ready` to become true: spins briefly (20 us: the host or the
// other hvCPU usually answers within microseconds), then checks every ~30 us
// while sleeping, and yields the hvCPU to the host every 2 ms. For the
// control block's and the other hvCPUs' rare events; ring buffers use
// RingCursor's doorbell waits.
Status WaitFor(CallContext& ctx, const std::function<bool()>& ready);
// WaitFor(ready || stop); kCancelled if it was `stop`.
Status WaitFor(CallContext& ctx, const std::function<bool()>& ready,
               const std::function<bool()>& stop);

class RingCursor {
 public:
  RingCursor(std::vector<uint8_t*> buffers, uint64_t payload)
      : bufs_(std::move(buffers)), payload_(payload) {}

  RingHead* head() const { return reinterpret_cast<RingHead*>(bufs_[cur_]); }
  uint8_t* data() const { return bufs_[cur_] + sizeof(RingHead); }
  uint64_t payload() const { return payload_; }

  // Returns true when the caller should give up waiting (kCancelled).
  using StopFn = std::function<bool()>;

  // Producer: waits until the current buffer is free.
  Status WaitFree(CallContext& ctx, const StopFn& stop);
  std::span<uint8_t> space() const {
    return {data() + used_, payload_ - used_};
  }
  uint64_t used() const { return used_; }
  void Commit(size_t bytes) { used_ += bytes; }
  // Publishes the current buffer (kFull, with `flags`), rings the host's
  // doorbell and moves on.
  void Publish(uint32_t flags);

  // Consumer: waits for the current buffer to be full and returns its
  // payload, checked against the buffer size (kRecordMalformed), and flags.
  Status WaitFull(CallContext& ctx, const StopFn& stop);
  Result<std::span<const uint8_t>> Take(uint32_t* flags) const;
  // Gives the current buffer back to the host (doorbell) and moves on.
  void Release();

 private:
  // Waits until the current head is `want`: spins a few microseconds, then
  // sleeps on the doorbell, yielding the hvCPU to the host now and then.
  Status WaitState(CallContext& ctx, uint32_t want, const StopFn& stop);
  void Advance() {
    cur_ = (cur_ + 1) % bufs_.size();
    used_ = 0;
  }
  std::vector<uint8_t*> bufs_;
  uint64_t payload_ = 0;
  size_t cur_ = 0;
  uint64_t used_ = 0;
};

}  // namespace ring
CPC_NAMESPACE_END

#endif  // CPC_SRC_MODULES_RING_H_
