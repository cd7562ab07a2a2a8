#include "modules/ring.h"

#include <chrono>

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
  for (;;) {
    if (ready()) return Status::Ok();
    const auto until = Clock::now() + std::chrono::microseconds(200);
    while (Clock::now() < until) {
      for (int i = 0; i < 64; ++i) CpuRelax();
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

Status RingCursor::WaitFree(CallContext& ctx, const StopFn& stop) {
  RingHead* h = head();
  return WaitFor(
      ctx, [h] { return h->state.load(std::memory_order_acquire) == kFree; },
      stop);
}

void RingCursor::Publish(uint32_t flags) {
  RingHead* h = head();
  h->len = used_;
  h->flags = flags;
  h->state.store(kFull, std::memory_order_release);
  Advance();
}

Status RingCursor::WaitFull(CallContext& ctx, const StopFn& stop) {
  RingHead* h = head();
  return WaitFor(
      ctx, [h] { return h->state.load(std::memory_order_acquire) == kFull; },
      stop);
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
  Advance();
}

}  // namespace ring
CPC_NAMESPACE_END
