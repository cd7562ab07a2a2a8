// Guest memory and the dirty log of the emulated machine.
//
// GuestMemory (CVM process) is private anonymous memory, backed by THP where
// the kernel allows and pre-faulted, so the VMM process can never map it.
// With dirty tracking on, it is registered with userfaultfd write-protect in
// async mode: the kernel marks written pages without any fault handler.
// Tracking starts at its first use (StartTracking), as a VMM turns on KVM's
// dirty log when a migration begins: write-protecting splits each huge page
// on its first write and then costs every first write to a 4 KiB page a
// fault (a 2 GiB guest OS's boot, which writes every page, took ~0.4 s of
// faults, and a restore's commits ran on 4 KiB pages), so a CVM nobody
// tracks keeps its huge pages and writes fault-free.
//
// WriteTracker (CVM process) is the only owner of those marks: it reads and
// re-arms them with PAGEMAP_SCAN on /proc/self/pagemap and ORs every scan's
// written pages into two bitmaps - the host's dirty log (the emulated
// hypervisor's dirty bitmap, read over the VM channel; only GPAs reach the
// host) and the platform's own record (GuestPlatform::TakeWrittenPages).
// Each consumer clears only its own bitmap, so the untrusted host re-arming
// its log as often as it likes cannot hide a write from the platform. The VMM
// process never opens the CVM's pagemap.
//
// FrozenView (CVM process) is a point-in-time view of guest memory while the
// guest keeps writing (background snapshot): the region is write-protected
// through a second, synchronous userfaultfd, and the first guest write to a
// page nobody has read yet copies the page aside before the write goes on.
// While a view exists the async registration is suspended and the write
// tracker reports every page as written (nothing tracks writes to pages the
// view has released), then re-arms exact tracking when the view ends.
#ifndef CPC_SRC_EMULATOR_MEMORY_H_
#define CPC_SRC_EMULATOR_MEMORY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include <cpc/backend.h>
#include <cpc/status.h>
#include <cpc/types.h>

#include "emulator/channel.h"

CPC_NAMESPACE_BEGIN
namespace emu {

class WriteTracker;
class FrozenView;

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
  // The write tracker, tracking from the first call on: that call
  // write-protects the region (or, while a frozen view stands, leaves that
  // to EndFrozenView) and the tracker's first scans report every page.
  // Thread-safe. kFailedPrecondition if dirty tracking is off; kIoError if
  // the region cannot be write-protected.
  Result<WriteTracker*> StartTracking();

  // Freezes pages [range) (see FrozenView). The caller makes sure no guest
  // write is in flight (gvCPUs paused). kFailedPrecondition if a view
  // exists; kUnimplemented without synchronous uffd write-protect.
  Status BeginFrozenView(GpaRange range);
  // FrozenView::Pin / Release of the current view (kFailedPrecondition if
  // none). Lock-free, so a reader parked for good (a discarded hvCPU
  // context) can never block EndFrozenView.
  Status PinFrozen(std::span<const Gpa> gpas, std::span<const uint8_t*> out);
  void ReleaseFrozen(std::span<const Gpa> gpas);
  // Ends the view, even with pages still pinned (their writers go on; what a
  // reader still seals then is garbage of a snapshot that can no longer
  // complete), and returns how many pages it copied; restores exact write
  // tracking. kFailedPrecondition if there is no view.
  Result<uint64_t> EndFrozenView();

 private:
  GuestMemory() = default;
  // (Re-)registers the region with uffd_ (async), write-protects it and
  // turns the tracker's conservative mode off. Caller holds frozen_mu_.
  Status ArmAsyncTracking();

  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  Fd uffd_;
  std::unique_ptr<WriteTracker> tracker_;
  // Serialises Begin/EndFrozenView and StartTracking (the uffd registrations).
  std::mutex frozen_mu_;
  bool tracking_ = false;  // StartTracking was called (guarded by frozen_mu_)
  // One view object for the life of the memory, reused by every view: a
  // reader that loaded it before its view ended never touches freed state.
  std::unique_ptr<FrozenView> view_;
  std::atomic<FrozenView*> frozen_{nullptr};  // view_ while a view stands
};

// A point-in-time view of some guest pages. Pin() returns each page as it
// was when the view began: the live page (still write-protected; a guest
// write to it waits until Release) or the copy taken when the guest first
// wrote it. A handler thread serves the guest's write faults. Pin/Release
// are thread-safe (one stream per hvCPU); each page is pinned at most once.
class FrozenView {
 public:
  ~FrozenView();
  FrozenView(const FrozenView&) = delete;
  FrozenView& operator=(const FrozenView&) = delete;

  // Pointers to the frozen contents of `gpas` (inside the view's range,
  // each never pinned before in this view; kInvalidArgument /
  // kFailedPrecondition otherwise, and nothing stays pinned).
  Status Pin(std::span<const Gpa> gpas, std::span<const uint8_t*> out);
  // Ends the pins of `gpas` taken by Pin (the guest may write them).
  void Release(std::span<const Gpa> gpas);
  // Pages the guest wrote before they were read (copied first).
  uint64_t copied() const { return copied_.load(std::memory_order_relaxed); }

 private:
  friend class GuestMemory;
  // Page states: written to in this order only.
  enum : uint32_t { kUnread = 0, kPinned = 1, kCopied = 2, kRead = 3 };
  // Page states for all of `region` (never reallocated).
  FrozenView(uint8_t* region, uint64_t region_bytes);
  // Begins a view of `range` (states reset, a new uffd and handler).
  Status Start(GpaRange range);
  // Stops the handler and lifts every protection (waking every writer);
  // scrubs and drops the copies (their mappings stay for reuse).
  void Close();
  bool InRange(Gpa gpa) const;
  void Serve();
  // A guest write fault at page `idx` (of the region): copy unless read.
  void OnWrite(uint64_t idx);
  const uint8_t* CopyAside(uint64_t idx);

  uint8_t* const region_;  // the registered mapping (all guest memory)
  const uint64_t region_bytes_;
  std::atomic<Gpa> range_base_{0};
  std::atomic<uint64_t> range_pages_{0};
  Fd uffd_, stop_;
  std::atomic<bool> closed_{true};
  std::unique_ptr<std::atomic<uint32_t>[]> state_;
  std::unique_ptr<std::atomic<const uint8_t*>[]> copy_;
  std::atomic<uint64_t> copied_{0};
  // Copies live in 2 MiB chunks used by the handler thread only, kept
  // mapped (dropped when a view closes) until the object dies.
  std::vector<uint8_t*> chunks_;
  size_t chunk_next_ = 0;    // chunks_[chunk_next_ - 1] is being filled
  uint64_t chunk_used_ = 0;  // bytes used in it
  std::thread handler_;
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
  // `base`/`size`: a region of this process that GuestMemory registers with
  // uffd-wp async; conservative until then (kIoError if /proc/self/pagemap
  // cannot be opened).
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
  // While `conservative`, scans report every page as written without
  // reading the marks (nothing tracks them; see FrozenView); turning it off
  // reports every page once more.
  void SetConservative(bool conservative);

 private:
  WriteTracker() = default;
  // PAGEMAP_SCAN with PM_SCAN_WP_MATCHING over the pages: ORs written pages
  // into both bitmaps and write-protects them again. Caller holds mu_.
  Status ScanLocked(uint64_t first_page, uint64_t count);

  Fd pagemap_;
  uint8_t* base_ = nullptr;
  uint64_t pages_ = 0;
  std::mutex mu_;
  bool conservative_ = true;  // until the region is armed
  PageBits host_;
  PageBits platform_;
};

// Whether this kernel offers uffd-wp async + PAGEMAP_SCAN (probe for `cpc
// info`): creates and scans a small region in this process.
Status ProbeDirtyTracking();

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_MEMORY_H_
