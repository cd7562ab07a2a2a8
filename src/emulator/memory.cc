#include "emulator/memory.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <iterator>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>

#include "core/log.h"
#include "core/sys.h"

// Debian 12's uapi headers predate these (kernel >= 6.7); values from
// include/uapi/linux/fs.h and userfaultfd.h.
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef PAGEMAP_SCAN
struct page_region {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};
struct pm_scan_arg {
  uint64_t size;
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;
  uint64_t vec;
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WRITTEN (1 << 1)
#endif

CPC_NAMESPACE_BEGIN
namespace emu {

namespace {
constexpr uint64_t k2M = 2ull << 20;
}  // namespace

Result<std::unique_ptr<GuestMemory>> GuestMemory::Create(uint64_t bytes,
                                                         bool track_dirty) {
  if (bytes == 0 || bytes % k2M != 0)
    return Status(Code::kInvalidArgument,
                  fmt::format("guest memory of {} bytes is not a non-zero "
                              "multiple of 2 MiB",
                              bytes));
  std::unique_ptr<GuestMemory> m(new GuestMemory());
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return Status(Code::kResourceExhausted,
                  fmt::format("cannot map {} MiB of guest memory: {}",
                              bytes >> 20, std::strerror(errno)));
  m->base_ = static_cast<uint8_t*>(p);
  m->size_ = bytes;
  // Never dumped into a core file of the CVM process, never forked.
  ::madvise(p, bytes, MADV_DONTDUMP);
  ::madvise(p, bytes, MADV_DONTFORK);
  ::madvise(p, bytes, MADV_HUGEPAGE);
  // Pre-fault: first touch on these nested machines is slow and variable.
  if (::madvise(p, bytes, MADV_POPULATE_WRITE) != 0) {
    for (uint64_t off = 0; off < bytes; off += kPageSize) m->base_[off] = 0;
  }
  if (!track_dirty) return m;

  int uffd = static_cast<int>(
      ::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  if (uffd < 0) return ErrnoStatus("userfaultfd");
  m->uffd_ = Fd(uffd);
  uffdio_api api = {UFFD_API,
                    UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 0};
  if (::ioctl(uffd, UFFDIO_API, &api) != 0)
    return Status(Code::kUnimplemented,
                  "kernel lacks userfaultfd write-protect async mode", errno);
  // Conservative (every page written) until StartTracking arms it.
  CPC_ASSIGN_OR_RETURN(m->tracker_, WriteTracker::Open(m->base_, bytes));
  return m;
}

Result<WriteTracker*> GuestMemory::StartTracking() {
  if (tracker_ == nullptr)
    return Status(Code::kFailedPrecondition,
                  "dirty tracking is off for this CVM");
  std::lock_guard<std::mutex> lock(frozen_mu_);
  if (!tracking_) {
    // A standing view holds the registration; it arms us when it ends.
    if (frozen_.load() == nullptr) CPC_RETURN_IF_ERROR(ArmAsyncTracking());
    tracking_ = true;
  }
  return tracker_.get();
}

Status GuestMemory::ArmAsyncTracking() {
  uffdio_register reg = {
      {reinterpret_cast<uint64_t>(base_), size_}, UFFDIO_REGISTER_MODE_WP, 0};
  if (::ioctl(uffd_.get(), UFFDIO_REGISTER, &reg) != 0)
    return ErrnoStatus("UFFDIO_REGISTER");
  uffdio_writeprotect wp = {{reinterpret_cast<uint64_t>(base_), size_},
                            UFFDIO_WRITEPROTECT_MODE_WP};
  if (::ioctl(uffd_.get(), UFFDIO_WRITEPROTECT, &wp) != 0) {
    Status e = ErrnoStatus("UFFDIO_WRITEPROTECT");
    uffdio_range all = {reinterpret_cast<uint64_t>(base_), size_};
    (void)::ioctl(uffd_.get(), UFFDIO_UNREGISTER, &all);
    return e;
  }
  tracker_->SetConservative(false);
  return Status::Ok();
}

Status GuestMemory::BeginFrozenView(GpaRange range) {
  std::lock_guard<std::mutex> lock(frozen_mu_);
  if (frozen_.load() != nullptr)
    return Status(Code::kFailedPrecondition,
                  "a frozen view of this guest's memory already exists");
  const uint64_t first = range.base >> kPageShift;
  if (range.base % kPageSize != 0 || range.pages == 0 || first > pages() ||
      range.pages > pages() - first)
    return Status(Code::kInvalidArgument, "frozen view outside guest memory");
  // One uffd per mapping: the async dirty log steps aside for the view.
  if (tracking_) {
    tracker_->SetConservative(true);
    uffdio_range all = {reinterpret_cast<uint64_t>(base_), size_};
    if (::ioctl(uffd_.get(), UFFDIO_UNREGISTER, &all) != 0) {
      Status e = ErrnoStatus("UFFDIO_UNREGISTER");
      tracker_->SetConservative(false);
      return e;
    }
  }
  if (view_ == nullptr) view_.reset(new FrozenView(base_, size_));
  Status s = view_->Start(range);
  if (!s.ok()) {
    view_->Close();
    if (tracking_) {
      Status r = ArmAsyncTracking();
      if (!r.ok()) return r.WithContext("restoring the dirty log");
    }
    return s;
  }
  frozen_.store(view_.get());
  return Status::Ok();
}

Status GuestMemory::PinFrozen(std::span<const Gpa> gpas,
                              std::span<const uint8_t*> out) {
  FrozenView* v = frozen_.load();
  if (v == nullptr) return Status(Code::kFailedPrecondition, "no frozen view");
  return v->Pin(gpas, out);
}

void GuestMemory::ReleaseFrozen(std::span<const Gpa> gpas) {
  if (FrozenView* v = frozen_.load()) v->Release(gpas);
}

Result<uint64_t> GuestMemory::EndFrozenView() {
  std::lock_guard<std::mutex> lock(frozen_mu_);
  FrozenView* v = frozen_.exchange(nullptr);
  if (v == nullptr)
    return Status(Code::kFailedPrecondition, "no frozen view to end");
  v->Close();  // unregisters; faulting writers retry and go on
  if (tracking_) CPC_RETURN_IF_ERROR(ArmAsyncTracking());
  return v->copied();
}

GuestMemory::~GuestMemory() {
  view_.reset();
  if (base_ != nullptr) {
    // Guest memory is scrubbed before it returns to the OS.
    std::memset(base_, 0, size_);
    ::munmap(base_, size_);
  }
}

namespace {
// Sets bits [lo, hi) of `bits`.
void SetRange(PageBits& bits, uint64_t lo, uint64_t hi) {
  while (lo < hi) {
    const uint64_t word = lo / 64, bit = lo % 64;
    const uint64_t n = std::min<uint64_t>(64 - bit, hi - lo);
    const uint64_t mask = n == 64 ? ~0ull : ((1ull << n) - 1) << bit;
    bits[word] |= mask;
    lo += n;
  }
}
}  // namespace

void AppendSetPages(std::span<const uint64_t> bits, uint64_t first_page,
                    std::vector<Gpa>* out) {
  for (size_t w = 0; w < bits.size(); ++w) {
    uint64_t word = bits[w];
    while (word != 0) {
      const int bit = std::countr_zero(word);
      word &= word - 1;
      out->push_back((first_page + w * 64 + static_cast<uint64_t>(bit))
                     << kPageShift);
    }
  }
}

Result<std::unique_ptr<WriteTracker>> WriteTracker::Open(uint8_t* base,
                                                         uint64_t size) {
  std::unique_ptr<WriteTracker> t(new WriteTracker());
  int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open /proc/self/pagemap");
  t->pagemap_ = Fd(fd);
  t->base_ = base;
  t->pages_ = size >> kPageShift;
  t->host_.assign((t->pages_ + 63) / 64, 0);
  t->platform_.assign((t->pages_ + 63) / 64, 0);
  return t;
}

void WriteTracker::SetConservative(bool conservative) {
  std::lock_guard<std::mutex> lock(mu_);
  // No last scan on the way in: leaving reports every page anyway, which
  // covers marks never scanned and writes nothing tracked.
  if (!conservative && conservative_) {
    SetRange(host_, 0, pages_);
    SetRange(platform_, 0, pages_);
  }
  conservative_ = conservative;
}

Status WriteTracker::ScanLocked(uint64_t first_page, uint64_t count) {
  if (conservative_) {
    SetRange(host_, first_page, first_page + count);
    SetRange(platform_, first_page, first_page + count);
    return Status::Ok();
  }
  // Regions come back merged (a run of written pages is one entry), so a
  // mostly clean guest needs one ioctl; a full vector is continued from
  // walk_end (pages past it were neither reported nor re-armed).
  page_region vec[512];
  const uint64_t base = reinterpret_cast<uint64_t>(base_);
  uint64_t start = base + (first_page << kPageShift);
  const uint64_t end = start + (count << kPageShift);
  while (start < end) {
    pm_scan_arg arg = {};
    arg.size = sizeof arg;
    arg.flags = PM_SCAN_CHECK_WPASYNC | PM_SCAN_WP_MATCHING;
    arg.start = start;
    arg.end = end;
    arg.vec = reinterpret_cast<uint64_t>(vec);
    arg.vec_len = std::size(vec);
    arg.category_mask = PAGE_IS_WRITTEN;
    arg.return_mask = PAGE_IS_WRITTEN;
    long n = ::ioctl(pagemap_.get(), PAGEMAP_SCAN, &arg);
    if (n < 0) return ErrnoStatus("PAGEMAP_SCAN");
    for (long i = 0; i < n; ++i) {
      const uint64_t lo = (vec[i].start - base) >> kPageShift;
      const uint64_t hi = (vec[i].end - base) >> kPageShift;
      SetRange(host_, lo, hi);
      SetRange(platform_, lo, hi);
    }
    if (arg.walk_end <= start) break;
    start = arg.walk_end;
  }
  return Status::Ok();
}

Result<PageBits> WriteTracker::ReadHostLog(uint64_t first_page, uint64_t count,
                                           bool rearm) {
  if (first_page % 64 != 0 || first_page > pages_ ||
      count > pages_ - first_page)
    return Status(Code::kInvalidArgument,
                  fmt::format("dirty log range [{}, +{}) of {} pages",
                              first_page, count, pages_));
  std::lock_guard<std::mutex> lock(mu_);
  CPC_RETURN_IF_ERROR(ScanLocked(first_page, count));
  const uint64_t w0 = first_page / 64, words = (count + 63) / 64;
  PageBits out(host_.begin() + static_cast<ptrdiff_t>(w0),
               host_.begin() + static_cast<ptrdiff_t>(w0 + words));
  // A partial last word holds no pages past the range: the next chunk's
  // pages stay in the host bitmap.
  if (count % 64 != 0) out.back() &= (1ull << (count % 64)) - 1;
  if (rearm)
    for (uint64_t w = 0; w < words; ++w) host_[w0 + w] &= ~out[w];
  return out;
}

Result<std::vector<Gpa>> WriteTracker::TakeWritten(GpaRange range) {
  const uint64_t first = range.base >> kPageShift;
  if (range.base % kPageSize != 0 || first > pages_ ||
      range.pages > pages_ - first)
    return Status(Code::kInvalidArgument, "range outside tracked memory");
  std::lock_guard<std::mutex> lock(mu_);
  CPC_RETURN_IF_ERROR(ScanLocked(first, range.pages));
  std::vector<Gpa> out;
  const uint64_t end = first + range.pages;
  uint64_t p = first;
  while (p < end) {
    const uint64_t word = p / 64, bit = p % 64;
    const uint64_t n = std::min<uint64_t>(64 - bit, end - p);
    const uint64_t mask = n == 64 ? ~0ull : ((1ull << n) - 1) << bit;
    const uint64_t hit = platform_[word] & mask;
    if (hit != 0) {
      AppendSetPages(std::span<const uint64_t>(&hit, 1), word * 64, &out);
      platform_[word] &= ~hit;
    }
    p += n;
  }
  return out;
}

// --- FrozenView ---------------------------------------------------------

namespace {
constexpr uint64_t kCopyChunk = 2ull << 20;
}  // namespace

FrozenView::FrozenView(uint8_t* region, uint64_t region_bytes)
    : region_(region), region_bytes_(region_bytes) {
  const uint64_t pages = region_bytes >> kPageShift;
  state_.reset(new std::atomic<uint32_t>[pages]);
  copy_.reset(new std::atomic<const uint8_t*>[pages]);
}

bool FrozenView::InRange(Gpa gpa) const {
  const Gpa base = range_base_.load();
  return gpa >= base && gpa < base + range_pages_.load() * kPageSize;
}

Status FrozenView::Start(GpaRange range) {
  for (uint64_t i = 0; i < (region_bytes_ >> kPageShift); ++i) {
    state_[i].store(kUnread, std::memory_order_relaxed);
    copy_[i].store(nullptr, std::memory_order_relaxed);
  }
  range_base_ = range.base;
  range_pages_ = range.pages;
  copied_ = 0;
  chunk_next_ = 0;
  chunk_used_ = 0;
  closed_ = false;
  // Synchronous write-protect: the writer waits in the kernel until the
  // handler has copied the page aside (if it must) and lifted the protection.
  int uffd = static_cast<int>(
      ::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  if (uffd < 0) return ErrnoStatus("userfaultfd");
  uffd_ = Fd(uffd);
  uffdio_api api = {UFFD_API, UFFD_FEATURE_WP_UNPOPULATED, 0};
  if (::ioctl(uffd, UFFDIO_API, &api) != 0)
    return Status(Code::kUnimplemented,
                  "kernel lacks userfaultfd write-protect of unpopulated pages",
                  errno);
  uffdio_register reg = {{reinterpret_cast<uint64_t>(region_), region_bytes_},
                         UFFDIO_REGISTER_MODE_WP,
                         0};
  if (::ioctl(uffd, UFFDIO_REGISTER, &reg) != 0)
    return ErrnoStatus("UFFDIO_REGISTER (frozen view)");
  uffdio_writeprotect wp = {{reinterpret_cast<uint64_t>(region_ + range.base),
                             range.pages * kPageSize},
                            UFFDIO_WRITEPROTECT_MODE_WP};
  if (::ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0)
    return ErrnoStatus("UFFDIO_WRITEPROTECT (frozen view)");
  int ev = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (ev < 0) return ErrnoStatus("eventfd");
  stop_ = Fd(ev);
  handler_ = std::thread([this] { Serve(); });
  return Status::Ok();
}

FrozenView::~FrozenView() {
  Close();
  for (uint8_t* p : chunks_) ::munmap(p, kCopyChunk);
}

void FrozenView::Close() {
  if (closed_.exchange(true)) return;
  if (handler_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof one);
    handler_.join();
  }
  // Closing the uffd unregisters the region and wakes every waiting writer.
  uffd_ = Fd();
  stop_ = Fd();
  for (size_t i = 0; i < chunk_next_; ++i) {
    std::memset(chunks_[i], 0, kCopyChunk);  // guest plaintext: scrubbed
    // Dropped but still mapped: a reader that loaded a copy reads zeros.
    ::madvise(chunks_[i], kCopyChunk, MADV_DONTNEED);
  }
  chunk_next_ = 0;
}

void FrozenView::Serve() {
  uffd_msg msgs[64];
  for (;;) {
    pollfd fds[2] = {{uffd_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      CPC_LOG_ERROR("frozen view: poll failed: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    const ssize_t n = ::read(uffd_.get(), msgs, sizeof msgs);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      CPC_LOG_ERROR("frozen view: read uffd failed: {}", std::strerror(errno));
      return;
    }
    for (size_t i = 0; i < static_cast<size_t>(n) / sizeof(uffd_msg); ++i) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      const uint64_t addr = msgs[i].arg.pagefault.address & ~(kPageSize - 1);
      const uint64_t gpa = addr - reinterpret_cast<uint64_t>(region_);
      if (InRange(gpa)) OnWrite(gpa >> kPageShift);
      // Lift the protection and wake the writer (also for a page that a
      // second writer faulted on after the first was served).
      uffdio_writeprotect wp = {{addr, kPageSize}, 0};
      if (::ioctl(uffd_.get(), UFFDIO_WRITEPROTECT, &wp) != 0 &&
          errno != ENOENT)
        CPC_LOG_ERROR("frozen view: unprotect {:#x} failed: {}", gpa,
                      std::strerror(errno));
    }
  }
}

const uint8_t* FrozenView::CopyAside(uint64_t idx) {
  if (chunk_next_ == 0 || chunk_used_ == kCopyChunk) {
    if (chunk_next_ == chunks_.size()) {
      void* p = ::mmap(nullptr, kCopyChunk, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      ::madvise(p, kCopyChunk, MADV_DONTDUMP);
      ::madvise(p, kCopyChunk, MADV_DONTFORK);
      chunks_.push_back(static_cast<uint8_t*>(p));
    }
    ++chunk_next_;
    chunk_used_ = 0;
  }
  uint8_t* dst = chunks_[chunk_next_ - 1] + chunk_used_;
  chunk_used_ += kPageSize;
  std::memcpy(dst, region_ + idx * kPageSize, kPageSize);
  return dst;
}

void FrozenView::OnWrite(uint64_t idx) {
  std::atomic<uint32_t>& st = state_[idx];
  for (;;) {
    uint32_t s = st.load(std::memory_order_acquire);
    if (s == kUnread) {
      // The page cannot change while protected, so the copy is the frozen
      // contents. Without memory for a copy the writer waits for its reader.
      if (const uint8_t* c = CopyAside(idx)) {
        copy_[idx].store(c, std::memory_order_relaxed);
        if (st.compare_exchange_strong(s, kCopied, std::memory_order_release,
                                       std::memory_order_acquire)) {
          copied_.fetch_add(1, std::memory_order_relaxed);
          return;
        }
        // Pinned meanwhile: the copy slot is wasted (rare), wait below.
        copy_[idx].store(nullptr, std::memory_order_relaxed);
      }
    }
    if (s == kCopied || s == kRead) return;
    // Pinned (a record is being sealed, ~100 us) or no memory: poll rather
    // than sleep on the page, so that Close never waits for a reader.
    if (closed_.load()) return;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

Status FrozenView::Pin(std::span<const Gpa> gpas,
                       std::span<const uint8_t*> out) {
  if (out.size() < gpas.size())
    return Status(Code::kInvalidArgument, "frozen view: output too short");
  for (size_t i = 0; i < gpas.size(); ++i) {
    const Gpa gpa = gpas[i];
    Status bad = Status::Ok();
    if (gpa % kPageSize != 0 || !InRange(gpa)) {
      bad = Status(Code::kInvalidArgument,
                   fmt::format("page {:#x} is outside the frozen view", gpa));
    } else {
      const uint64_t idx = gpa >> kPageShift;
      uint32_t s = kUnread;
      if (state_[idx].compare_exchange_strong(s, kPinned,
                                              std::memory_order_acq_rel)) {
        out[i] = region_ + gpa;
        continue;
      }
      if (s == kCopied && state_[idx].compare_exchange_strong(
                              s, kRead, std::memory_order_acq_rel)) {
        out[i] = copy_[idx].load(std::memory_order_relaxed);
        continue;
      }
      bad = Status(Code::kFailedPrecondition,
                   fmt::format("page {:#x} was already read through this "
                               "frozen view",
                               gpa));
    }
    Release(gpas.first(i));
    return bad;
  }
  return Status::Ok();
}

void FrozenView::Release(std::span<const Gpa> gpas) {
  for (const Gpa gpa : gpas) {
    if (!InRange(gpa)) continue;
    uint32_t s = kPinned;
    state_[gpa >> kPageShift].compare_exchange_strong(
        s, kRead, std::memory_order_release);
  }
}

Status ProbeDirtyTracking() {
  auto mem = GuestMemory::Create(k2M, true);
  if (!mem.ok()) return mem.status();
  CPC_ASSIGN_OR_RETURN(WriteTracker * t, (*mem)->StartTracking());
  auto before = t->ReadHostLog(0, t->pages(), true);
  if (!before.ok()) return before.status();
  (*mem)->At(5 * kPageSize)[7] = 1;
  auto after = t->ReadHostLog(0, t->pages(), true);
  if (!after.ok()) return after.status();
  std::vector<Gpa> gpas;
  AppendSetPages(*after, 0, &gpas);
  if (gpas.size() != 1 || gpas[0] != 5 * kPageSize)
    return Status(
        Code::kUnimplemented,
        fmt::format("dirty log saw {} pages for 1 write", gpas.size()));
  return Status::Ok();
}

}  // namespace emu
CPC_NAMESPACE_END
