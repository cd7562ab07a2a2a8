#include "modules/ring.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>

#include <cpc/types.h>

CPC_NAMESPACE_BEGIN
namespace ring {

namespace {
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
}  // namespace

void ResetHead(RingHead* h) {
  h->flags = 0;
  h->len = 0;
  h->state.store(kFree, std::memory_order_release);
}

namespace {
void Wake(const std::atomic<uint32_t>* word) {
  // Not FUTEX_PRIVATE: the waiter is another process.
  ::syscall(SYS_futex, reinterpret_cast<const uint32_t*>(word), FUTEX_WAKE,
            INT_MAX, nullptr, nullptr, 0);
}
void Sleep(const std::atomic<uint32_t>* word, uint32_t seen,
           std::chrono::microseconds timeout) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  const timespec ts{static_cast<time_t>(timeout.count() / 1000000),
                    static_cast<long>(timeout.count() % 1000000) * 1000};
  ::syscall(SYS_futex, reinterpret_cast<const uint32_t*>(word), FUTEX_WAIT,
            seen, &ts, nullptr, 0);
}

// Sleeps on `word`'s doorbell until done(*word); kCancelled once stop().
// The host's call loop expects an exit now and then (abort policy): the
// hvCPU yields every 5 ms. Each sleep lasts up to the next yield (the
// doorbell ends it early): a shorter timeout (it was 500 us) arms a timer
// before the next scheduler tick, and programming the timer is a VM exit
// here: ~7 us more CPU per wait + wake pair (docs/PERFORMANCE.md), at ~600
// waits per GiB restored.
template <typename Done, typename Stop>
Status SleepUntil(CallContext& ctx, const std::atomic<uint32_t>* word,
                  const Done& done, const Stop& stop) {
  constexpr auto kYieldEvery = std::chrono::milliseconds(5);
  auto yield_at = Clock::now() + kYieldEvery;
  for (;;) {
    const uint32_t seen = word->load(std::memory_order_acquire);
    if (done(seen)) return Status::Ok();
    if (stop()) return Status(Code::kCancelled, "the transfer was stopped");
    if (Clock::now() >= yield_at) {
      CPC_RETURN_IF_ERROR(ctx.Yield());
      yield_at = Clock::now() + kYieldEvery;
      continue;
    }
    Sleep(word, seen,
          std::max(std::chrono::microseconds(0),
                   std::chrono::ceil<std::chrono::microseconds>(yield_at -
                                                                Clock::now())));
  }
}
}  // namespace

void Notify(RingHead* h) { Wake(&h->state); }

void WaitChange(RingHead* h, uint32_t seen, std::chrono::microseconds timeout) {
  Sleep(&h->state, seen, timeout);
}

void RaiseLevel(std::atomic<uint32_t>* level, uint32_t value) {
  level->store(value, std::memory_order_release);
  Wake(level);
}

Status WaitLevel(CallContext& ctx, const std::atomic<uint32_t>* level,
                 uint32_t want) {
  return SleepUntil(
      ctx, level, [want](uint32_t v) { return v >= want; },
      [] { return false; });
}

bool AwaitState(RingHead* h, uint32_t want, const std::function<bool()>& stop,
                std::chrono::microseconds poll) {
  for (int spin = 0;; ++spin) {
    const uint32_t s = h->state.load(std::memory_order_acquire);
    if (s == want) return true;
    if (stop()) return false;
    if (spin < 16) {
      std::this_thread::yield();
    } else {
      WaitChange(h, s, poll);
    }
  }
}

Result<std::vector<uint8_t*>> MapRing(std::span<uint8_t> shared,
                                      uint64_t offset, uint64_t buf_bytes,
                                      uint32_t count, uint64_t min_buf_bytes) {
  if (offset % 64 != 0 || buf_bytes % 64 != 0 || buf_bytes < min_buf_bytes ||
      count < 2 || count > kMaxBuffers || offset > shared.size() ||
      buf_bytes > (shared.size() - offset) / count)
    return Status(Code::kInvalidArgument,
                  "record ring outside the shared memory or malformed");
  std::vector<uint8_t*> bufs(count);
  for (uint32_t i = 0; i < count; ++i)
    bufs[i] = shared.data() + offset + i * buf_bytes;
  return bufs;
}

Status WaitFor(CallContext& ctx, const std::function<bool()>& ready) {
  // Spin only briefly, then sleep in short steps: these waits (for the other
  // hvCPUs, for the host's next round) can last milliseconds, and on 2 cores
  // a spinning hvCPU takes the core from the threads it waits for (spinning
  // 200 us between yields cost a 2 GiB migration ~12 % more CPU and ~10 %
  // more time). The host expects an exit now and then (abort policy).
  constexpr auto kSpin = std::chrono::microseconds(20);
  constexpr auto kSleep = std::chrono::microseconds(30);
  constexpr auto kYieldEvery = std::chrono::milliseconds(2);
  for (;;) {
    if (ready()) return Status::Ok();
    const auto spin_until = Clock::now() + kSpin;
    while (Clock::now() < spin_until) {
      for (int i = 0; i < 64; ++i) CpuRelax();
      if (ready()) return Status::Ok();
    }
    const auto yield_at = Clock::now() + kYieldEvery;
    while (Clock::now() < yield_at) {
      std::this_thread::sleep_for(kSleep);
      if (ready()) return Status::Ok();
    }
    CPC_RETURN_IF_ERROR(ctx.Yield());
  }
}

Status WaitFor(CallContext& ctx, const std::function<bool()>& ready,
               const std::function<bool()>& stop) {
  CPC_RETURN_IF_ERROR(WaitFor(ctx, [&] { return ready() || stop(); }));
  if (!ready()) return Status(Code::kCancelled, "the transfer was stopped");
  return Status::Ok();
}

Status RingCursor::WaitState(CallContext& ctx, uint32_t want,
                             const StopFn& stop) {
  RingHead* h = head();
  for (int i = 0; i < 256; ++i) {
    if (h->state.load(std::memory_order_acquire) == want) return Status::Ok();
    CpuRelax();
  }
  return SleepUntil(
      ctx, &h->state, [want](uint32_t s) { return s == want; }, stop);
}

Status RingCursor::WaitFree(CallContext& ctx, const StopFn& stop) {
  return WaitState(ctx, kFree, stop);
}

void RingCursor::Publish(uint32_t flags) {
  RingHead* h = head();
  h->len = used_;
  h->flags = flags;
  h->state.store(kFull, std::memory_order_release);
  Notify(h);
  Advance();
}

Status RingCursor::WaitFull(CallContext& ctx, const StopFn& stop) {
  return WaitState(ctx, kFull, stop);
}

Result<std::span<const uint8_t>> RingCursor::Take(uint32_t* flags) const {
  RingHead* h = head();
  // Read once: the host may change the head while we look at it.
  const uint64_t len = h->len;
  const uint32_t f = h->flags;
  if (len > payload_ || (f & ~kKnownFlags) != 0)
    return Status(Code::kRecordMalformed, "ring buffer head is malformed");
  *flags = f;
  return std::span<const uint8_t>(data(), len);
}

void RingCursor::Release() {
  head()->state.store(kFree, std::memory_order_release);
  Notify(head());
  Advance();
}

}  // namespace ring
CPC_NAMESPACE_END
