#include "emulator/memory.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
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
  return m;
}

GuestMemory::~GuestMemory() {
  if (base_ != nullptr) {
    // Guest memory is scrubbed before it returns to the OS.
    std::memset(base_, 0, size_);
    ::munmap(base_, size_);
  }
}

Result<DirtyLog> DirtyLog::Open(pid_t pid, uint64_t base, uint64_t size) {
  DirtyLog log;
  int fd = ::open(fmt::format("/proc/{}/pagemap", pid).c_str(),
                  O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open pagemap");
  log.pagemap_ = Fd(fd);
  log.base_ = base;
  log.size_ = size;
  return log;
}

Result<std::vector<Gpa>> DirtyLog::Read(bool rearm) {
  std::vector<Gpa> out;
  std::vector<page_region> vec(512);
  uint64_t start = base_;
  const uint64_t end = base_ + size_;
  while (start < end) {
    pm_scan_arg arg = {};
    arg.size = sizeof arg;
    arg.flags = PM_SCAN_CHECK_WPASYNC | (rearm ? PM_SCAN_WP_MATCHING : 0);
    arg.start = start;
    arg.end = end;
    arg.vec = reinterpret_cast<uint64_t>(vec.data());
    arg.vec_len = vec.size();
    arg.category_mask = PAGE_IS_WRITTEN;
    arg.return_mask = PAGE_IS_WRITTEN;
    long n = ::ioctl(pagemap_.get(), PAGEMAP_SCAN, &arg);
    if (n < 0) return ErrnoStatus("PAGEMAP_SCAN");
    for (long i = 0; i < n; ++i)
      for (uint64_t a = vec[i].start; a < vec[i].end; a += kPageSize)
        out.push_back(a - base_);
    if (arg.walk_end <= start) break;
    start = arg.walk_end;
  }
  return out;
}

Status ProbeDirtyTracking() {
  auto mem = GuestMemory::Create(k2M, true);
  if (!mem.ok()) return mem.status();
  auto log = DirtyLog::Open(
      ::getpid(), reinterpret_cast<uint64_t>((*mem)->base()), (*mem)->size());
  if (!log.ok()) return log.status();
  auto before = log->Read(true);
  if (!before.ok()) return before.status();
  (*mem)->At(5 * kPageSize)[7] = 1;
  auto after = log->Read(true);
  if (!after.ok()) return after.status();
  if (after->size() != 1 || (*after)[0] != 5 * kPageSize)
    return Status(
        Code::kUnimplemented,
        fmt::format("dirty log saw {} pages for 1 write", after->size()));
  return Status::Ok();
}

}  // namespace emu
CPC_NAMESPACE_END
