#include "emulator/channel.h"

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include "core/sys.h"

CPC_NAMESPACE_BEGIN
namespace emu {

namespace {
constexpr size_t kMaxFds = 8;
}  // namespace

void Fd::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Result<std::pair<Channel, Channel>> Channel::Pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return ErrnoStatus("socketpair");
  return std::make_pair(Channel(Fd(sv[0])), Channel(Fd(sv[1])));
}

Status Channel::Send(uint16_t type, std::span<const uint8_t> payload,
                     std::span<const int> fds) {
  if (payload.size() + 2 > kMaxMessage || fds.size() > kMaxFds)
    return Status(Code::kInvalidArgument, "message too large");
  uint8_t hdr[2];
  StoreLe<uint16_t>(hdr, type);
  iovec iov[2] = {{hdr, 2},
                  {const_cast<uint8_t*>(payload.data()), payload.size()}};
  msghdr msg = {};
  msg.msg_iov = iov;
  msg.msg_iovlen = payload.empty() ? 1 : 2;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n >= 0) return Status::Ok();
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET)
      return Status(Code::kIoError, "peer closed", errno);
    return ErrnoStatus("sendmsg");
  }
}

Result<Message> Channel::Recv(int timeout_ms) {
  pollfd p = {fd_.get(), POLLIN, 0};
  for (;;) {
    int r = ::poll(&p, 1, timeout_ms);
    if (r > 0) break;
    if (r == 0) return Status(Code::kTimeout, "no message before the deadline");
    if (errno != EINTR) return ErrnoStatus("poll");
  }
  std::vector<uint8_t> buf(kMaxMessage);
  iovec iov = {buf.data(), buf.size()};
  msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == ECONNRESET)
      return Status(Code::kIoError, "peer closed", errno);
    return ErrnoStatus("recvmsg");
  }
  Message m;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
       c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        m.fds.emplace_back(fd);
      }
    }
  }
  if (n == 0) return Status(Code::kIoError, "peer closed");
  if (n < 2 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
    return Status(Code::kIoError, "malformed or truncated control message");
  m.type = LoadLe<uint16_t>(buf.data());
  m.payload.assign(buf.begin() + 2, buf.begin() + n);
  return m;
}

void PutBlob(ByteWriter& w, std::span<const uint8_t> b) {
  w.Int<uint32_t>(static_cast<uint32_t>(b.size()));
  w.Bytes(b);
}

std::vector<uint8_t> GetBlob(ByteReader& r) {
  uint32_t n = r.Int<uint32_t>();
  auto b = r.Bytes(n);
  return {b.begin(), b.end()};
}

void EncodeStatus(ByteWriter& w, const Status& s) {
  w.Int<int32_t>(static_cast<int32_t>(s.code()));
  w.Int<int64_t>(s.subcode());
  PutBlob(w, std::span(reinterpret_cast<const uint8_t*>(s.message().data()),
                       s.message().size()));
}

Status DecodeStatus(ByteReader& r) {
  const int32_t raw = r.Int<int32_t>();
  int64_t sub = r.Int<int64_t>();
  auto msg = GetBlob(r);
  const auto code = static_cast<Code>(raw);
  if (code == Code::kOk) return Status::Ok();
  std::string text(msg.begin(), msg.end());
  // The other side is another process or machine: a code this build does
  // not know (a newer peer, or garbage) must not pass for a known one.
  if (CodeName(code) == "unknown_code")
    return Status(Code::kIoError,
                  fmt::format("the peer reported status code {} (unknown "
                              "here): {}",
                              raw, text));
  return Status(code, std::move(text), sub);
}

std::vector<uint8_t> EncodeEntry(const HvcpuEntry& e) {
  std::vector<uint8_t> out;
  ByteWriter w(&out);
  w.Int<uint8_t>(static_cast<uint8_t>(e.kind));
  w.Int<uint64_t>(e.call_id);
  w.String(e.module);
  w.String(e.procedure);
  PutBlob(w, e.token);
  PutBlob(w, e.args);
  w.Int<int64_t>(e.slice.count());
  return out;
}

Result<HvcpuEntry> DecodeEntry(std::span<const uint8_t> b) {
  ByteReader r(b);
  HvcpuEntry e;
  uint8_t kind = r.Int<uint8_t>();
  e.call_id = r.Int<uint64_t>();
  e.module = r.String();
  e.procedure = r.String();
  e.token = GetBlob(r);
  e.args = GetBlob(r);
  e.slice = Duration(r.Int<int64_t>());
  if (!r.done() || kind > 2)
    return Status(Code::kInvalidArgument, "malformed hvCPU entry");
  e.kind = static_cast<HvcpuEntry::Kind>(kind);
  return e;
}

std::vector<uint8_t> EncodeExit(const HvcpuExit& e) {
  std::vector<uint8_t> out;
  ByteWriter w(&out);
  w.Int<uint8_t>(static_cast<uint8_t>(e.reason));
  w.Int<uint64_t>(e.call_id);
  EncodeStatus(w, e.status);
  w.Int<uint64_t>(e.progress.bytes_done);
  w.Int<uint64_t>(e.progress.bytes_total);
  PutBlob(w, e.output);
  return out;
}

Result<HvcpuExit> DecodeExit(std::span<const uint8_t> b) {
  ByteReader r(b);
  HvcpuExit e;
  uint8_t reason = r.Int<uint8_t>();
  e.call_id = r.Int<uint64_t>();
  e.status = DecodeStatus(r);
  e.progress.bytes_done = r.Int<uint64_t>();
  e.progress.bytes_total = r.Int<uint64_t>();
  e.output = GetBlob(r);
  if (!r.done() || reason > 2)
    return Status(Code::kInvalidArgument, "malformed hvCPU exit");
  e.reason = static_cast<HvcpuExit::Reason>(reason);
  return e;
}

}  // namespace emu
CPC_NAMESPACE_END
