#include "emulator/shared.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "core/sys.h"

CPC_NAMESPACE_BEGIN
namespace emu {

namespace {

// The windows the SIGBUS handler may repair: [base, end) pairs, published
// before the mapping can fault and never reused.
struct Window {
  std::atomic<uintptr_t> base{0}, end{0};
};
Window g_windows[SharedFiles::kMaxWindows];
std::atomic<size_t> g_window_count{0};
std::mutex g_windows_mu;  // claims slots (the handler only reads)
constexpr uintptr_t kHugePage = 2u << 20;

// A read past the end of a shrunk shared file: zeros from that page to the
// end of its window (one mapping, however much was cut off), then the read
// is retried. Any other SIGBUS gets the default action.
void OnSigbus(int sig, siginfo_t* info, void*) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  const size_t n = g_window_count.load(std::memory_order_acquire);
  for (size_t i = 0; i < n; ++i) {
    const uintptr_t base = g_windows[i].base.load(std::memory_order_acquire);
    const uintptr_t end = g_windows[i].end.load(std::memory_order_acquire);
    if (addr < base || addr >= end) continue;
    const uintptr_t page = addr & ~uintptr_t{kPageSize - 1};
    if (::mmap(reinterpret_cast<void*>(page), end - page, PROT_READ,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED)
      return;
    break;
  }
  ::signal(sig, SIG_DFL);  // the fault repeats and ends the process
}

void InstallSigbusHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
  });
}

// Replaces [p, p + n) by zeros (read-only, no memory until touched).
void ZeroMap(void* p, size_t n) {
  ::mmap(p, n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
}

void CopyField(char* dst, size_t cap, std::string_view s) {
  size_t n = std::min(s.size(), cap - 1);
  std::memcpy(dst, s.data(), n);
  std::memset(dst + n, 0, cap - n);
}
}  // namespace

Result<SharedRegion> SharedRegion::Create(uint64_t bytes) {
  if (bytes < 3 * kPageSize || bytes % kPageSize != 0)
    return Status(Code::kInvalidArgument,
                  "shared region too small or unaligned");
  int fd = ::memfd_create("cpc-shared", MFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus("memfd_create");
  SharedRegion r;
  r.fd_ = Fd(fd);
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0)
    return ErrnoStatus("ftruncate");
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap shared");
  r.base_ = static_cast<uint8_t*>(p);
  r.size_ = bytes;
  auto* h = reinterpret_cast<SharedHeader*>(r.base_);
  h->magic = kSharedMagic;
  h->size = bytes;
  h->data_offset = 2 * kPageSize;
  h->data_size = bytes - 2 * kPageSize;
  return r;
}

SharedFiles::~SharedFiles() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto r : reserved_) ZeroMap(r.data(), r.size());
}

Result<uint64_t> SharedFiles::Attach(Fd file) {
  struct stat st;
  if (::fstat(file.get(), &st) != 0) return ErrnoStatus("fstat shared file");
  if (!S_ISREG(st.st_mode) || st.st_size <= 0)
    return Status(Code::kInvalidArgument,
                  "a shared file must be a non-empty regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  std::lock_guard<std::mutex> lock(mu_);
  std::lock_guard<std::mutex> slots(g_windows_mu);
  const size_t slot = g_window_count.load();
  if (slot == kMaxWindows)
    return Status(Code::kResourceExhausted,
                  "this CVM has attached too many shared files");
  // Reserve a 2 MiB aligned range, then map the file at its start.
  const uint64_t span = (size + kHugePage - 1) / kHugePage * kHugePage;
  void* r = ::mmap(nullptr, span + kHugePage, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return ErrnoStatus("reserve shared file window");
  const uintptr_t raw = reinterpret_cast<uintptr_t>(r);
  const uintptr_t base = (raw + kHugePage - 1) & ~(kHugePage - 1);
  if (base > raw) ::munmap(r, base - raw);
  if (base + span < raw + span + kHugePage)
    ::munmap(reinterpret_cast<void*>(base + span),
             raw + span + kHugePage - (base + span));
  auto* p = static_cast<uint8_t*>(::mmap(reinterpret_cast<void*>(base), size,
                                         PROT_READ, MAP_SHARED | MAP_FIXED,
                                         file.get(), 0));
  if (p == MAP_FAILED) {
    Status e = ErrnoStatus("map shared file");
    ::munmap(reinterpret_cast<void*>(base), span);
    return e;
  }
  InstallSigbusHandler();
  g_windows[slot].base.store(base, std::memory_order_release);
  g_windows[slot].end.store(base + span, std::memory_order_release);
  g_window_count.store(slot + 1, std::memory_order_release);
  if (!current_.empty())
    ZeroMap(const_cast<uint8_t*>(current_.data()), current_.size());
  reserved_.push_back({p, span});
  current_ = {p, size};
  return size;
}

void SharedFiles::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  if (current_.empty()) return;
  ZeroMap(const_cast<uint8_t*>(current_.data()), current_.size());
  current_ = {};
}

std::span<const uint8_t> SharedFiles::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

Result<SharedRegion> SharedRegion::Map(Fd memfd) {
  struct stat st;
  if (::fstat(memfd.get(), &st) != 0) return ErrnoStatus("fstat shared");
  const uint64_t bytes = static_cast<uint64_t>(st.st_size);
  if (bytes < 3 * kPageSize || bytes % kPageSize != 0)
    return Status(Code::kInvalidArgument, "shared region has a bad size");
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                   memfd.get(), 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap shared");
  SharedRegion r;
  r.fd_ = std::move(memfd);
  r.base_ = static_cast<uint8_t*>(p);
  r.size_ = bytes;
  const auto* h = reinterpret_cast<const SharedHeader*>(r.base_);
  if (h->magic != kSharedMagic || h->size != bytes)
    return Status(Code::kInvalidArgument, "shared region header is invalid");
  return r;
}

SharedRegion::~SharedRegion() {
  if (base_ != nullptr) ::munmap(base_, size_);
}

SharedRegion::SharedRegion(SharedRegion&& o) noexcept
    : fd_(std::move(o.fd_)),
      base_(std::exchange(o.base_, nullptr)),
      size_(std::exchange(o.size_, 0)) {}

SharedRegion& SharedRegion::operator=(SharedRegion&& o) noexcept {
  if (this != &o) {
    if (base_ != nullptr) ::munmap(base_, size_);
    fd_ = std::move(o.fd_);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

Result<Doorbell> Doorbell::Create() {
  int fd = ::eventfd(0, EFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus("eventfd");
  return Doorbell(Fd(fd));
}

Status Doorbell::Ring() {
  uint64_t one = 1;
  if (::write(fd_.get(), &one, sizeof one) != sizeof one)
    return ErrnoStatus("doorbell write");
  return Status::Ok();
}

Status Doorbell::Wait(int timeout_ms, int hangup_fd) {
  pollfd p[2] = {{fd_.get(), POLLIN, 0}, {hangup_fd, 0, 0}};
  for (;;) {
    int r = ::poll(p, hangup_fd >= 0 ? 2 : 1, timeout_ms);
    if (r == 0) return Status(Code::kTimeout, "doorbell not rung in time");
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("poll doorbell");
    }
    if (!(p[0].revents & POLLIN) && (p[1].revents & (POLLHUP | POLLERR)))
      return Status(Code::kIoError, "the CVM process has exited");
    uint64_t v;
    if (::read(fd_.get(), &v, sizeof v) != sizeof v)
      return ErrnoStatus("doorbell read");
    return Status::Ok();
  }
}

Result<std::vector<uint8_t>> RequestTokenFromAgent(
    const SharedRegion& region, Doorbell& to_guest, Doorbell& from_guest,
    const TokenRequest& request, int timeout_ms, int hangup_fd) {
  AgentMailbox* mb = region.mailbox();
  CopyField(mb->module, sizeof mb->module, request.module);
  CopyField(mb->procedure, sizeof mb->procedure, request.procedure);
  mb->budget_bytes = request.budget.bytes;
  mb->budget_time_ms = request.budget.time_ms;
  const uint32_t seq = mb->request_seq.load() + 1;
  mb->request_seq.store(seq, std::memory_order_release);
  CPC_RETURN_IF_ERROR(to_guest.Ring());
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (mb->response_seq.load(std::memory_order_acquire) != seq) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - Clock::now());
    if (left.count() <= 0)
      return Status(Code::kTimeout, "the guest agent did not answer");
    Status s = from_guest.Wait(static_cast<int>(left.count()), hangup_fd);
    if (!s.ok() && s.code() != Code::kTimeout) return s;
  }
  // The answer comes from the (possibly hostile) guest OS: bound everything.
  const auto code = static_cast<Code>(mb->code);
  if (code != Code::kOk) {
    std::string msg(mb->message, strnlen(mb->message, sizeof mb->message));
    return Status(code, "guest agent: " + msg);
  }
  return std::vector<uint8_t>(mb->token, mb->token + Token::kWireSize);
}

}  // namespace emu
CPC_NAMESPACE_END
