#include "backends/sev/rmp.h"

CPC_NAMESPACE_BEGIN
namespace sev {

uint64_t RmpEntry::PackLo() const {
  using namespace rmp_bits;
  uint64_t lo = 0;
  if (assigned) lo |= kAssigned;
  if (page_size == PageSize::k2M) lo |= kPageSize2M;
  if (immutable) lo |= kImmutable;
  lo |= gpa & kGpaMask;
  lo |= (uint64_t{asid} << kAsidShift) & kAsidMask;
  if (vmsa) lo |= kVmsa;
  if (validated) lo |= kValidated;
  if (in_use) lo |= kInUse;
  return lo;
}

uint64_t RmpEntry::PackHi() const {
  return (uint64_t{perms[1]} << 8) | (uint64_t{perms[2]} << 16) |
         (uint64_t{perms[3]} << 24);
}

RmpEntry RmpEntry::Unpack(uint64_t lo, uint64_t hi) {
  using namespace rmp_bits;
  RmpEntry e;
  e.assigned = lo & kAssigned;
  e.page_size = (lo & kPageSize2M) ? PageSize::k2M : PageSize::k4K;
  e.immutable = lo & kImmutable;
  e.gpa = lo & kGpaMask;
  e.asid = static_cast<uint32_t>((lo & kAsidMask) >> kAsidShift);
  e.vmsa = lo & kVmsa;
  e.validated = lo & kValidated;
  e.in_use = lo & kInUse;
  e.perms = {kPermAll, static_cast<uint8_t>(hi >> 8),
             static_cast<uint8_t>(hi >> 16), static_cast<uint8_t>(hi >> 24)};
  return e;
}

RmpTable::RmpTable(uint64_t frames)
    : frames_(frames), slots_(new Slot[frames]) {}

RmpEntry RmpTable::WriteScope::Get(uint64_t frame) const {
  const Slot& s = t_->slots_[frame];
  return RmpEntry::Unpack(s.lo.load(std::memory_order_relaxed),
                          s.hi.load(std::memory_order_relaxed));
}

void RmpTable::WriteScope::Write(uint64_t frame, const RmpEntry& e) {
  Slot& s = t_->slots_[frame];
  uint64_t seq = t_->seq_.load(std::memory_order_relaxed);
  t_->seq_.store(seq + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  s.lo.store(e.PackLo(), std::memory_order_relaxed);
  s.hi.store(e.PackHi(), std::memory_order_relaxed);
  t_->seq_.store(seq + 2, std::memory_order_release);
}

}  // namespace sev
CPC_NAMESPACE_END
