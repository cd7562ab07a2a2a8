#include "emulator/memory.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <iterator>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>

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
  uffdio_register reg = {
      {reinterpret_cast<uint64_t>(p), bytes}, UFFDIO_REGISTER_MODE_WP, 0};
  if (::ioctl(uffd, UFFDIO_REGISTER, &reg) != 0)
    return ErrnoStatus("UFFDIO_REGISTER");
  uffdio_writeprotect wp = {{reinterpret_cast<uint64_t>(p), bytes},
                            UFFDIO_WRITEPROTECT_MODE_WP};
  if (::ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0)
    return ErrnoStatus("UFFDIO_WRITEPROTECT");
  CPC_ASSIGN_OR_RETURN(m->tracker_, WriteTracker::Open(m->base_, bytes));
  return m;
}

GuestMemory::~GuestMemory() {
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

Status WriteTracker::ScanLocked(uint64_t first_page, uint64_t count) {
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

Status ProbeDirtyTracking() {
  auto mem = GuestMemory::Create(k2M, true);
  if (!mem.ok()) return mem.status();
  WriteTracker* t = (*mem)->tracker();
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
