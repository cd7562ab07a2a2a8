#include "emulator/shared.h"

#include <cerrno>
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
