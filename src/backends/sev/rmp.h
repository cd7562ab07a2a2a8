// The Reverse Map Table: one entry per 4 KiB system-physical page (SPA frame).
//
// Entry fields follow APM vol. 2 Table 15-34 (Assigned, Page_Size, Immutable,
// Guest_Physical_Address, ASID, VMSA, Validated, Permissions[VMPL]). Storage
// is two 64-bit words per frame. `lo` uses Linux's raw RMP layout
// (arch/x86/virt/svm/sev.c `struct rmpentry_raw`): bit 0 assigned, 1 pagesize,
// 2 immutable, 12..50 GPA>>12, 51..60 ASID, 61 VMSA, 62 validated; bit 63
// (reserved in hardware) is the model's VMRUN "in-use" mark (Table 15-41:
// RMPUPDATE on an in-use page returns FAIL_INUSE). `hi` holds the VMPL1..3
// permission masks in bytes 1..3 (VMPL0 implicitly has every permission).
//
// A 2 MiB page is stored as 512 entries that all carry page_size=2M and the
// same attributes (GPAs consecutive); operations on it update all 512 under
// one write. A check therefore reads exactly one entry, and PSMASH only has
// to clear the size bit.
//
// Threading: reads are lock-free and consistent (a table-wide seqlock over
// relaxed atomics: a reader retries only if a writer ran concurrently).
// Writes are rare (RMPUPDATE, PVALIDATE, RMPADJUST, VMRUN marks) and are
// serialised by WriteScope, which holds a mutex for its lifetime.
#ifndef CPC_SRC_BACKENDS_SEV_RMP_H_
#define CPC_SRC_BACKENDS_SEV_RMP_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include <cpc/types.h>
#include <cpc/version.h>

#include "backends/sev/snp_abi.h"

CPC_NAMESPACE_BEGIN
namespace sev {

struct RmpEntry {
  bool assigned = false;
  PageSize page_size = PageSize::k4K;
  bool immutable = false;
  Gpa gpa = 0;        // page-aligned GPA this SPA is bound to
  uint32_t asid = 0;  // 10 bits
  bool vmsa = false;
  bool validated = false;
  bool in_use = false;  // model: VMSA currently executing (VMRUN..#VMEXIT)
  // perms[v] for VMPL v; perms[0] is always kPermAll.
  std::array<uint8_t, 4> perms{kPermAll, 0, 0, 0};

  uint64_t PackLo() const;
  uint64_t PackHi() const;
  static RmpEntry Unpack(uint64_t lo, uint64_t hi);
  friend bool operator==(const RmpEntry&, const RmpEntry&) = default;
};

namespace rmp_bits {
inline constexpr uint64_t kAssigned = 1ull << 0;
inline constexpr uint64_t kPageSize2M = 1ull << 1;
inline constexpr uint64_t kImmutable = 1ull << 2;
inline constexpr int kGpaShift = 12;
inline constexpr uint64_t kGpaMask = ((1ull << 39) - 1) << 12;  // bits 12..50
inline constexpr int kAsidShift = 51;
inline constexpr uint64_t kAsidMask = 0x3ffull << 51;
inline constexpr uint64_t kVmsa = 1ull << 61;
inline constexpr uint64_t kValidated = 1ull << 62;
inline constexpr uint64_t kInUse = 1ull << 63;
inline constexpr uint32_t kMaxAsid = 0x3ff;
}  // namespace rmp_bits

class RmpTable {
 public:
  // A table for `frames` SPA frames, all hypervisor-owned (zeroed, as after
  // SNP_INIT).
  explicit RmpTable(uint64_t frames);
  RmpTable(const RmpTable&) = delete;
  RmpTable& operator=(const RmpTable&) = delete;

  uint64_t frames() const { return frames_; }

  // Consistent snapshot of the raw words of `frame` (< frames()). Lock-free.
  void ReadRaw(uint64_t frame, uint64_t* lo, uint64_t* hi) const {
    const Slot& s = slots_[frame];
    for (;;) {
      uint64_t s1 = seq_.load(std::memory_order_acquire);
      if (s1 & 1) {
        Pause();
        continue;
      }
      *lo = s.lo.load(std::memory_order_relaxed);
      *hi = s.hi.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (seq_.load(std::memory_order_relaxed) == s1) return;
    }
  }
  RmpEntry Read(uint64_t frame) const {
    uint64_t lo, hi;
    ReadRaw(frame, &lo, &hi);
    return RmpEntry::Unpack(lo, hi);
  }

  // Exclusive writer section: holds the writer mutex for its lifetime.
  // Get() reads without the seqlock (safe: no other writer can run); each
  // Write() is published atomically for readers (seqlock odd/even bump).
  class WriteScope {
   public:
    explicit WriteScope(RmpTable* t) : t_(t), lock_(t->mu_) {}
    WriteScope(const WriteScope&) = delete;
    WriteScope& operator=(const WriteScope&) = delete;
    RmpEntry Get(uint64_t frame) const;
    void Write(uint64_t frame, const RmpEntry& e);

   private:
    RmpTable* t_;
    std::unique_lock<std::mutex> lock_;
  };

 private:
  static void Pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  struct Slot {
    std::atomic<uint64_t> lo{0};
    std::atomic<uint64_t> hi{0};
  };
  uint64_t frames_;
  std::unique_ptr<Slot[]> slots_;
  alignas(64) std::atomic<uint64_t> seq_{0};
  std::mutex mu_;
};

}  // namespace sev
CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_SEV_RMP_H_
