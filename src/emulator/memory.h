// Guest memory and the dirty log of the emulated machine.
//
// GuestMemory (CVM process) is private anonymous memory, backed by THP where
// the kernel allows and pre-faulted, so the VMM process can never map it.
// With dirty tracking on, it is registered with userfaultfd write-protect in
// async mode: the kernel marks written pages without any fault handler.
//
// WriteTracker (CVM process) is the only owner of those marks: it reads and
// re-arms them with PAGEMAP_SCAN on /proc/self/pagemap and ORs every scan's
// written pages into two bitmaps - the host's dirty log (the emulated
// hypervisor's dirty bitmap, read over the VM channel; only GPAs reach the
// host) and the platform's own record (GuestPlatform::TakeWrittenPages).
// Each consumer clears only its own bitmap, so the untrusted host re-arming
// its log as often as it likes cannot hide a write from the platform. The VMM
// process never opens the CVM's pagemap.
#ifndef CPC_SRC_EMULATOR_MEMORY_H_
#define CPC_SRC_EMULATOR_MEMORY_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include <cpc/backend.h>
#include <cpc/status.h>
#include <cpc/types.h>

#include "emulator/channel.h"

CPC_NAMESPACE_BEGIN
namespace emu {

class WriteTracker;

class GuestMemory {
 public:
  // kInvalidArgument unless `bytes` is a non-zero multiple of 2 MiB;
  // kResourceExhausted if the mapping fails; kUnimplemented if dirty tracking
  // is asked for and the kernel lacks uffd-wp async.
  static Result<std::unique_ptr<GuestMemory>> Create(uint64_t bytes,
                                                     bool track_dirty);
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }
  uint64_t pages() const { return size_ >> kPageShift; }
  bool Contains(Gpa gpa) const { return gpa < size_; }
  uint8_t* At(Gpa gpa) const { return base_ + gpa; }
  // The write tracker, or nullptr if dirty tracking is off.
  WriteTracker* tracker() const { return tracker_.get(); }

 private:
  GuestMemory() = default;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  Fd uffd_;
  std::unique_ptr<WriteTracker> tracker_;
};

// Bit i of word i / 64 stands for page `first_page + i`.
using PageBits = std::vector<uint64_t>;

// Appends the GPAs of the set bits of `bits` to `out`, in ascending order.
// Zero words are skipped, so a sparse bitmap converts in a few microseconds.
void AppendSetPages(std::span<const uint64_t> bits, uint64_t first_page,
                    std::vector<Gpa>* out);

// The written-page marks of one uffd-wp async region of this process, and the
// two bitmaps fed from them. Thread-safe: one mutex covers scan + OR + read,
// so the host's and the platform's scans never interleave.
class WriteTracker {
 public:
  // `base`/`size`: a region of this process registered with uffd-wp async
  // (kIoError if /proc/self/pagemap cannot be opened).
  static Result<std::unique_ptr<WriteTracker>> Open(uint8_t* base,
                                                    uint64_t size);
  uint64_t pages() const { return pages_; }

  // The host's dirty log for pages [first_page, first_page + count): scans
  // (and re-arms) those pages, then returns the host bitmap's words for them
  // - pages written since the host last read them with `rearm` (or since
  // the region was registered). `rearm` clears the returned bits of the host
  // bitmap only; `rearm` = false leaves them set. first_page must be a
  // multiple of 64 and the range inside the region (kInvalidArgument).
  Result<PageBits> ReadHostLog(uint64_t first_page, uint64_t count, bool rearm);
  // The platform's record: GPAs of pages inside `range` written since the
  // previous call (or since registration), sorted; clears them from the
  // platform bitmap. The host bitmap is not touched.
  Result<std::vector<Gpa>> TakeWritten(GpaRange range);

 private:
  WriteTracker() = default;
  // PAGEMAP_SCAN with PM_SCAN_WP_MATCHING over the pages: ORs written pages
  // into both bitmaps and write-protects them again. Caller holds mu_.
  Status ScanLocked(uint64_t first_page, uint64_t count);

  Fd pagemap_;
  uint8_t* base_ = nullptr;
  uint64_t pages_ = 0;
  std::mutex mu_;
  PageBits host_;
  PageBits platform_;
};

// Whether this kernel offers uffd-wp async + PAGEMAP_SCAN (probe for `cpc
// info`): creates and scans a small region in this process.
Status ProbeDirtyTracking();

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_MEMORY_H_
