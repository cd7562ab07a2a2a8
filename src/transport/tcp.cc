// TCP transport on Boost.Asio.
//
// Design: every socket is put in non-blocking mode once connected; reads and
// writes call Asio's synchronous read_some/write_some (error_code overloads,
// recv/sendmsg underneath) and, when the kernel says "would block", wait with
// ppoll() until the socket is ready or the deadline passes. Shutdown() sets a
// flag and calls ::shutdown(SHUT_RDWR) on the native handle, which wakes every
// ppoll() on the socket; the woken operation sees the flag and returns
// kCancelled. The per-connection io_context is used for the (asynchronous,
// deadline-bounded) connect only, so a reader and a writer thread never share
// an event loop. Listener::Close() wakes Accept through an eventfd.
#include "transport/tcp.h"

#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <exception>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <new>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <utility>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <fmt/format.h>

#include "core/sys.h"

CPC_NAMESPACE_BEGIN
namespace net {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

// SO_SNDBUF / SO_RCVBUF request (the kernel doubles it, capped by
// net.core.{w,r}mem_max).
constexpr int kSocketBufferBytes = 4 << 20;
// The same for a loopback peer (both ends on this host): no bytes are on a
// wire there, so big buffers only park megabytes that the receiver then
// copies out of cache-cold memory. Moving 2 GiB over two loopback
// connections took ~35 % less CPU with these (docs/PERFORMANCE.md).
constexpr int kLoopbackBufferBytes = 256 << 10;
// Asio gathers at most 64 buffers per sendmsg on Linux.
constexpr size_t kMaxGather = 64;
// A read that has to wait asks the kernel to wake it only once this much of
// what it still lacks has arrived (SO_RCVLOWAT; the kernel caps it at half
// the receive buffer).
constexpr size_t kMaxReadLowat = 1 << 20;

constexpr Clock::time_point kNoDeadline = Clock::time_point::max();

Clock::time_point DeadlineAfter(Duration timeout) {
  return timeout > Duration::zero() ? Clock::now() + timeout : kNoDeadline;
}

enum class WaitResult { kReady, kTimeout, kWoken, kError };

// Waits until `fd` reports one of `events` (or an error / hangup), `wake_fd`
// (if >= 0) becomes readable, or the deadline passes. errno is set on kError.
WaitResult WaitFd(int fd, short events, Clock::time_point deadline,
                  int wake_fd = -1) {
  pollfd fds[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
  const nfds_t nfds = wake_fd >= 0 ? 2 : 1;
  for (;;) {
    timespec ts{};
    timespec* tsp = nullptr;
    if (deadline != kNoDeadline) {
      const auto now = Clock::now();
      if (now >= deadline) return WaitResult::kTimeout;
      const auto left = deadline - now;
      ts.tv_sec =
          std::chrono::duration_cast<std::chrono::seconds>(left).count();
      ts.tv_nsec = (left % std::chrono::seconds(1)).count();
      tsp = &ts;
    }
    const int r = ::ppoll(fds, nfds, tsp, nullptr);
    if (r < 0) {
      if (errno == EINTR) continue;
      return WaitResult::kError;
    }
    if (r == 0) continue;  // the deadline check above decides
    if (nfds == 2 && fds[1].revents != 0) return WaitResult::kWoken;
    if (fds[0].revents != 0) return WaitResult::kReady;
  }
}

bool WouldBlock(const error_code& ec) {
  return ec == asio::error::would_block || ec == asio::error::try_again;
}

Endpoint FromAsio(const tcp::endpoint& ep) {
  return Endpoint{ep.address().to_string(), ep.port()};
}

Status IoStatus(std::string_view what, const error_code& ec) {
  return Status(Code::kIoError, fmt::format("{}: {}", what, ec.message()),
                ec.value());
}

Status CancelledStatus() {
  return Status(Code::kCancelled, "connection shut down");
}

// Status for a failed read or write on a connected socket.
Status StreamError(const error_code& ec) {
  if (ec == asio::error::broken_pipe || ec == asio::error::eof)
    return Status(Code::kIoError, "connection closed by peer", EPIPE);
  if (ec == asio::error::connection_reset)
    return Status(Code::kIoError, "connection reset by peer", ECONNRESET);
  return IoStatus("socket", ec);
}

Status ExceptionStatus(std::string_view what, std::exception_ptr e) {
  try {
    std::rethrow_exception(std::move(e));
  } catch (const std::bad_alloc&) {
    return Status(Code::kResourceExhausted,
                  fmt::format("{}: out of memory", what));
  } catch (const boost::system::system_error& se) {
    return IoStatus(what, se.code());
  } catch (const std::exception& ex) {
    return Status(Code::kInternal, fmt::format("{}: {}", what, ex.what()));
  } catch (...) {
    return Status(Code::kInternal, fmt::format("{}: unknown exception", what));
  }
}

int BufferBytes(const asio::ip::address& peer) {
  return peer.is_loopback() ? kLoopbackBufferBytes : kSocketBufferBytes;
}

// TCP_NODELAY, the buffers (set before connect / listen so the window scale
// is negotiated for them) and, to a loopback peer, the congestion control.
Status ConfigureSocket(tcp::socket& s, const asio::ip::address& peer) {
  const int buffer_bytes = BufferBytes(peer);
  error_code ec;
  s.set_option(tcp::no_delay(true), ec);
  if (ec) return IoStatus("setsockopt(TCP_NODELAY)", ec);
  s.set_option(asio::socket_base::send_buffer_size(buffer_bytes), ec);
  if (ec) return IoStatus("setsockopt(SO_SNDBUF)", ec);
  s.set_option(asio::socket_base::receive_buffer_size(buffer_bytes), ec);
  if (ec) return IoStatus("setsockopt(SO_RCVBUF)", ec);
  if (peer.is_loopback()) {
    // Nothing is lost or queued on loopback, so congestion control only
    // costs CPU: BBR (a common default) paces every send with hrtimers when
    // the qdisc does not, ~15 % of a 2 GiB migration's CPU here. Reno, always
    // built in and allowed to unprivileged processes, does not pace. Best
    // effort: a kernel that refuses keeps its default.
    static constexpr char kReno[] = "reno";
    (void)::setsockopt(s.native_handle(), IPPROTO_TCP, TCP_CONGESTION, kReno,
                       sizeof kReno - 1);
  }
  return Status::Ok();
}

// A literal address, or the host name resolved (first match first).
Result<std::vector<tcp::endpoint>> Resolve(asio::io_context& io,
                                           const Endpoint& ep, bool passive) {
  if (ep.host.empty())
    return Status(Code::kInvalidArgument, "empty host in endpoint");
  error_code ec;
  const asio::ip::address addr = asio::ip::make_address(ep.host, ec);
  if (!ec) return std::vector<tcp::endpoint>{tcp::endpoint(addr, ep.port)};
  tcp::resolver resolver(io);
  auto flags = tcp::resolver::numeric_service;
  if (passive) flags |= tcp::resolver::passive;
  const auto results =
      resolver.resolve(ep.host, std::to_string(ep.port), flags, ec);
  if (ec || results.empty()) {
    return Status(Code::kInvalidArgument,
                  fmt::format("cannot resolve '{}': {}", ep.host,
                              ec ? ec.message() : "no address"));
  }
  std::vector<tcp::endpoint> out;
  for (const auto& r : results) out.push_back(r.endpoint());
  return out;
}

bool ValidHostName(std::string_view h) {
  if (h.empty()) return false;
  for (char c : h) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

// ---------------------------------------------------------------- Endpoint

std::string Endpoint::ToString() const {
  if (host.find(':') != std::string::npos)
    return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

Result<Endpoint> ParseEndpoint(std::string_view text) {
  auto bad = [text](std::string_view why) {
    return Status(Code::kInvalidArgument,
                  fmt::format("bad endpoint '{}': {}", text, why));
  };
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return bad("missing ']'");
    host = text.substr(1, close - 1);
    const std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return bad("missing ':port'");
    port = rest.substr(1);
    error_code ec;
    asio::ip::make_address_v6(std::string(host), ec);
    if (ec) return bad("not an IPv6 address");
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad("missing ':port'");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos)
      return bad("an IPv6 address needs brackets: [addr]:port");
    if (host.empty()) host = "127.0.0.1";
    if (!ValidHostName(host)) return bad("invalid host");
  }
  if (port.empty() || port.size() > 5) return bad("invalid port");
  unsigned value = 0;
  const auto [end, ec] =
      std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || value > 65535)
    return bad("invalid port");
  return Endpoint{std::string(host), static_cast<uint16_t>(value)};
}

// ------------------------------------------------------------ frame header

std::array<uint8_t, kFrameHeaderBytes> EncodeFrameHeader(const FrameHeader& h) {
  return {static_cast<uint8_t>(h.type),
          static_cast<uint8_t>(h.type >> 8),
          static_cast<uint8_t>(h.flags),
          static_cast<uint8_t>(h.flags >> 8),
          static_cast<uint8_t>(h.length),
          static_cast<uint8_t>(h.length >> 8),
          static_cast<uint8_t>(h.length >> 16),
          static_cast<uint8_t>(h.length >> 24)};
}

FrameHeader DecodeFrameHeader(std::span<const uint8_t, kFrameHeaderBytes> b) {
  FrameHeader h;
  h.type = static_cast<uint16_t>(b[0] | (b[1] << 8));
  h.flags = static_cast<uint16_t>(b[2] | (b[3] << 8));
  h.length = static_cast<uint32_t>(b[4]) | (static_cast<uint32_t>(b[5]) << 8) |
             (static_cast<uint32_t>(b[6]) << 16) |
             (static_cast<uint32_t>(b[7]) << 24);
  return h;
}

// -------------------------------------------------------------- Connection

struct Connection::Impl {
  asio::io_context io{1};
  tcp::socket socket{io};
  Endpoint peer;
  std::atomic<bool> shut{false};
  std::atomic<uint64_t> written{0};
  std::atomic<uint64_t> read{0};
  int read_lowat = 1;  // SO_RCVLOWAT as last set (by the reading thread)

  int fd() { return socket.native_handle(); }

  // Puts a connected socket in non-blocking mode and records its peer.
  Status Connected() {
    error_code ec;
    socket.non_blocking(true, ec);
    if (ec) return IoStatus("set non-blocking", ec);
    const tcp::endpoint remote = socket.remote_endpoint(ec);
    if (ec) return IoStatus("getpeername", ec);
    peer = FromAsio(remote);
    return Status::Ok();
  }

  Status Read(std::span<uint8_t> out, Clock::time_point deadline,
              bool mid_frame);
  Status Write(std::span<const std::span<const uint8_t>> buffers,
               Clock::time_point deadline);
};

Status Connection::Impl::Read(std::span<uint8_t> out,
                              Clock::time_point deadline, bool mid_frame) {
  if (shut.load(std::memory_order_acquire)) return CancelledStatus();
  size_t done = 0;
  while (done < out.size()) {
    if (shut.load(std::memory_order_acquire)) return CancelledStatus();
    error_code ec;
    const size_t n = socket.read_some(
        asio::buffer(out.data() + done, out.size() - done), ec);
    if (n > 0) {
      done += n;
      read.fetch_add(n, std::memory_order_relaxed);
      continue;
    }
    if (shut.load(std::memory_order_acquire)) return CancelledStatus();
    if (ec == asio::error::interrupted) continue;
    if (ec == asio::error::eof) {
      if (done == 0 && !mid_frame)
        return Status(Code::kIoError, "connection closed by peer");
      return Status(Code::kDataLoss,
                    fmt::format("connection closed by peer in the middle of "
                                "a frame ({} of {} bytes read)",
                                done, out.size()));
    }
    if (!WouldBlock(ec)) return StreamError(ec);
    // Sleep until the rest is there, not until the next segment: one
    // wake-up per large read instead of one per 64 KiB segment on loopback.
    // EOF, errors and Shutdown still wake the poll, and TCP wakes it early
    // when its receive window closes, so this cannot stall the sender.
    const int want =
        static_cast<int>(std::min(out.size() - done, kMaxReadLowat));
    if (want != read_lowat &&
        ::setsockopt(fd(), SOL_SOCKET, SO_RCVLOWAT, &want, sizeof want) == 0)
      read_lowat = want;
    switch (WaitFd(fd(), POLLIN, deadline)) {
      case WaitResult::kReady:
      case WaitResult::kWoken:
        break;
      case WaitResult::kTimeout:
        return Status(Code::kTimeout,
                      fmt::format("read timed out ({} of {} bytes read)", done,
                                  out.size()));
      case WaitResult::kError:
        return ErrnoStatus("ppoll");
    }
  }
  return Status::Ok();
}

Status Connection::Impl::Write(
    std::span<const std::span<const uint8_t>> buffers,
    Clock::time_point deadline) {
  if (shut.load(std::memory_order_acquire)) return CancelledStatus();
  size_t total = 0;
  for (const auto& b : buffers) total += b.size();
  size_t idx = 0, off = 0, done = 0;
  std::array<asio::const_buffer, kMaxGather> iov;
  for (;;) {
    while (idx < buffers.size() && off == buffers[idx].size()) {
      ++idx;
      off = 0;
    }
    if (idx == buffers.size()) return Status::Ok();
    if (shut.load(std::memory_order_acquire)) return CancelledStatus();
    size_t count = 0;
    for (size_t i = idx; i < buffers.size() && count < kMaxGather; ++i) {
      const size_t skip = i == idx ? off : 0;
      if (buffers[i].size() > skip)
        iov[count++] = asio::const_buffer(buffers[i].data() + skip,
                                          buffers[i].size() - skip);
    }
    error_code ec;
    size_t n = socket.write_some(std::span(iov.data(), count), ec);
    if (n > 0) {
      written.fetch_add(n, std::memory_order_relaxed);
      done += n;
      while (n > 0) {
        const size_t take = std::min(n, buffers[idx].size() - off);
        off += take;
        n -= take;
        if (off == buffers[idx].size()) {
          ++idx;
          off = 0;
        }
      }
      continue;
    }
    if (shut.load(std::memory_order_acquire)) return CancelledStatus();
    if (ec == asio::error::interrupted) continue;
    if (!WouldBlock(ec)) return StreamError(ec);
    switch (WaitFd(fd(), POLLOUT, deadline)) {
      case WaitResult::kReady:
      case WaitResult::kWoken:
        break;
      case WaitResult::kTimeout:
        return Status(Code::kTimeout,
                      fmt::format("write timed out ({} of {} bytes written)",
                                  done, total));
      case WaitResult::kError:
        return ErrnoStatus("ppoll");
    }
  }
}

Connection::Connection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Connection::~Connection() = default;

Result<std::unique_ptr<Connection>> Connection::Connect(const Endpoint& to,
                                                        Duration timeout) {
  const std::string where = fmt::format("connect {}", to.ToString());
  try {
    const auto deadline = DeadlineAfter(timeout);
    auto impl = std::make_unique<Impl>();
    CPC_ASSIGN_OR_RETURN(auto endpoints, Resolve(impl->io, to, false));
    Status last(Code::kIoError, where + ": no address");
    for (const tcp::endpoint& ep : endpoints) {
      if (deadline != kNoDeadline && Clock::now() >= deadline) break;
      if (impl->socket.is_open()) {
        impl = std::make_unique<Impl>();
      }
      error_code ec;
      impl->socket.open(ep.protocol(), ec);
      if (ec) {
        last = IoStatus(where + ": socket", ec);
        continue;
      }
      if (Status s = ConfigureSocket(impl->socket, ep.address()); !s.ok()) {
        last = s.WithContext(where);
        continue;
      }
      bool done = false;
      error_code result;
      impl->socket.async_connect(ep, [&](const error_code& e) {
        done = true;
        result = e;
      });
      if (deadline == kNoDeadline) {
        impl->io.run();
      } else {
        impl->io.run_until(deadline);
      }
      if (!done) {
        impl->socket.close(ec);  // completes the connect as aborted
        impl->io.restart();
        impl->io.run();
        last = Status(Code::kTimeout, where + ": timed out");
        break;
      }
      if (result) {
        last = IoStatus(where, result);
        continue;
      }
      if (Status s = impl->Connected(); !s.ok()) return s.WithContext(where);
      return std::unique_ptr<Connection>(new Connection(std::move(impl)));
    }
    if (last.code() != Code::kTimeout && deadline != kNoDeadline &&
        Clock::now() >= deadline)
      last = Status(Code::kTimeout, where + ": timed out");
    return last;
  } catch (...) {
    return ExceptionStatus(where, std::current_exception());
  }
}

Status Connection::WriteAll(std::span<const std::span<const uint8_t>> buffers,
                            Duration timeout) {
  return impl_->Write(buffers, DeadlineAfter(timeout));
}

Status Connection::ReadExact(std::span<uint8_t> out, Duration timeout) {
  return impl_->Read(out, DeadlineAfter(timeout), /*mid_frame=*/false);
}

Status Connection::WriteFrame(uint16_t type, uint16_t flags,
                              std::span<const uint8_t> payload,
                              Duration timeout) {
  if (payload.size() > kMaxFramePayload) {
    return Status(Code::kInvalidArgument,
                  fmt::format("frame payload of {} bytes exceeds the {} byte "
                              "limit",
                              payload.size(), kMaxFramePayload));
  }
  const auto header =
      EncodeFrameHeader({type, flags, static_cast<uint32_t>(payload.size())});
  const std::span<const uint8_t> parts[2] = {header, payload};
  return impl_->Write(parts, DeadlineAfter(timeout));
}

namespace {
Result<FrameHeader> CheckHeader(const FrameHeader& h, uint32_t max_payload) {
  if (h.length > max_payload) {
    return Status(Code::kInvalidArgument,
                  fmt::format("frame (type {}) announces {} payload bytes, "
                              "over the {} byte limit",
                              h.type, h.length, max_payload));
  }
  return h;
}
}  // namespace

Result<FrameHeader> Connection::ReadFrameHeader(Duration timeout,
                                                uint32_t max_payload) {
  std::array<uint8_t, kFrameHeaderBytes> raw;
  CPC_RETURN_IF_ERROR(impl_->Read(raw, DeadlineAfter(timeout), false));
  return CheckHeader(DecodeFrameHeader(raw), max_payload);
}

Result<Frame> Connection::ReadFrame(Duration timeout, uint32_t max_payload) {
  const auto deadline = DeadlineAfter(timeout);
  std::array<uint8_t, kFrameHeaderBytes> raw;
  CPC_RETURN_IF_ERROR(impl_->Read(raw, deadline, false));
  CPC_ASSIGN_OR_RETURN(const FrameHeader header,
                       CheckHeader(DecodeFrameHeader(raw), max_payload));
  Frame frame;
  frame.header = header;
  try {
    frame.payload.resize(header.length);
  } catch (const std::bad_alloc&) {
    return Status(Code::kResourceExhausted,
                  fmt::format("no memory for a {} byte frame", header.length));
  }
  CPC_RETURN_IF_ERROR(impl_->Read(frame.payload, deadline, true));
  return frame;
}

void Connection::Shutdown() {
  impl_->shut.store(true, std::memory_order_release);
  // Wakes every ppoll() on the socket; errors (already shut down, reset) are
  // irrelevant.
  ::shutdown(impl_->fd(), SHUT_RDWR);
}

void Connection::CloseWrite() { ::shutdown(impl_->fd(), SHUT_WR); }

Endpoint Connection::peer() const { return impl_->peer; }
std::string Connection::congestion_control() const {
  char name[32] = {};
  socklen_t len = sizeof name - 1;
  if (::getsockopt(impl_->fd(), IPPROTO_TCP, TCP_CONGESTION, name, &len) != 0)
    return "";
  return std::string(name, ::strnlen(name, len));
}
uint64_t Connection::bytes_written() const {
  return impl_->written.load(std::memory_order_relaxed);
}
uint64_t Connection::bytes_read() const {
  return impl_->read.load(std::memory_order_relaxed);
}

// ---------------------------------------------------------------- Listener

struct Listener::Impl {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  Endpoint local;
  int wake_fd = -1;  // eventfd written by Close()
  std::atomic<bool> closed{false};

  ~Impl() {
    if (wake_fd >= 0) ::close(wake_fd);
  }
};

Listener::Listener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Listener::~Listener() = default;

Result<std::unique_ptr<Listener>> Listener::Listen(const Endpoint& at) {
  const std::string where = fmt::format("listen {}", at.ToString());
  try {
    auto impl = std::make_unique<Impl>();
    impl->wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (impl->wake_fd < 0) return ErrnoStatus(where + ": eventfd");
    CPC_ASSIGN_OR_RETURN(auto endpoints, Resolve(impl->io, at, true));
    const tcp::endpoint ep = endpoints.front();
    auto& acc = impl->acceptor;
    error_code ec;
    acc.open(ep.protocol(), ec);
    if (ec) return IoStatus(where + ": socket", ec);
    acc.set_option(asio::socket_base::reuse_address(true), ec);
    if (ec) return IoStatus(where + ": setsockopt(SO_REUSEADDR)", ec);
    // Accepted sockets inherit these (the window scale is fixed at SYN time).
    const int buffer_bytes = BufferBytes(ep.address());
    acc.set_option(asio::socket_base::receive_buffer_size(buffer_bytes), ec);
    if (ec) return IoStatus(where + ": setsockopt(SO_RCVBUF)", ec);
    acc.set_option(asio::socket_base::send_buffer_size(buffer_bytes), ec);
    if (ec) return IoStatus(where + ": setsockopt(SO_SNDBUF)", ec);
    acc.bind(ep, ec);
    if (ec) return IoStatus(where + ": bind", ec);
    acc.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return IoStatus(where + ": listen", ec);
    acc.non_blocking(true, ec);
    if (ec) return IoStatus(where + ": set non-blocking", ec);
    const tcp::endpoint bound = acc.local_endpoint(ec);
    if (ec) return IoStatus(where + ": getsockname", ec);
    impl->local = FromAsio(bound);
    return std::unique_ptr<Listener>(new Listener(std::move(impl)));
  } catch (...) {
    return ExceptionStatus(where, std::current_exception());
  }
}

Endpoint Listener::local() const { return impl_->local; }

Result<std::unique_ptr<Connection>> Listener::Accept(Duration timeout) {
  const std::string where =
      fmt::format("accept on {}", impl_->local.ToString());
  try {
    const auto deadline = DeadlineAfter(timeout);
    auto conn = std::make_unique<Connection::Impl>();
    for (;;) {
      if (impl_->closed.load(std::memory_order_acquire))
        return Status(Code::kCancelled, where + ": listener closed");
      error_code ec;
      tcp::endpoint remote;
      impl_->acceptor.accept(conn->socket, remote, ec);
      if (!ec) {
        // A loopback client of a wildcard listener gets the small buffers
        // only now, after the handshake (the larger window scale is
        // harmless).
        if (Status s = ConfigureSocket(conn->socket, remote.address()); !s.ok())
          return s.WithContext(where);
        if (Status s = conn->Connected(); !s.ok()) return s.WithContext(where);
        return std::unique_ptr<Connection>(new Connection(std::move(conn)));
      }
      if (ec == asio::error::interrupted ||
          ec == asio::error::connection_aborted)
        continue;
      if (!WouldBlock(ec)) return IoStatus(where, ec);
      switch (WaitFd(impl_->acceptor.native_handle(), POLLIN, deadline,
                     impl_->wake_fd)) {
        case WaitResult::kReady:
        case WaitResult::kWoken:
          break;
        case WaitResult::kTimeout:
          return Status(Code::kTimeout, where + ": timed out");
        case WaitResult::kError:
          return ErrnoStatus(where + ": ppoll");
      }
    }
  } catch (...) {
    return ExceptionStatus(where, std::current_exception());
  }
}

void Listener::Close() {
  impl_->closed.store(true, std::memory_order_release);
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(impl_->wake_fd, &one, sizeof one);
}

}  // namespace net
CPC_NAMESPACE_END
