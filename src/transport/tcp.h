// TCP transport for live migration (Boost.Asio): blocking connections with
// deadlines, a listener, and the frame format every migration connection
// speaks.
//
// Frame = 8-byte header {u16 type, u16 flags, u32 length} (little-endian) +
// `length` payload bytes. Control connections carry protocol messages; data
// connections carry ring buffers of sealed records (the payload is
// ciphertext produced inside the CVM; the host only frames it). Nothing in a
// frame header is trusted by the CVM.
//
// Ownership: a Connection owns its socket and an io_context of its own.
// Threading: one thread may read while another writes; Shutdown() may be
// called from any thread and makes blocked and later reads/writes fail.
// Errors: kIoError (connection reset, refused, or closed by the peer: the
// message says which), kTimeout (deadline passed), kDataLoss (the peer closed
// in the middle of a frame), kInvalidArgument (bad endpoint, oversized
// frame), kCancelled (after Shutdown). Nothing throws.
//
// A timeout covers the whole call (ReadFrame: header and payload). After a
// timeout or error in the middle of a frame the stream position is lost: the
// connection is only good for Shutdown. Sockets are non-blocking underneath;
// a read or write waits in ppoll() only when the kernel has nothing to give or
// no room, so data moves in as few system calls as the kernel allows; a
// waiting read asks to be woken only once the rest of it (up to 1 MiB) is
// there (SO_RCVLOWAT).
#ifndef CPC_SRC_TRANSPORT_TCP_H_
#define CPC_SRC_TRANSPORT_TCP_H_

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/status.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN
namespace net {

struct Endpoint {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string ToString() const;  // "host:port" ([v6]:port for IPv6)
};

// "host:port", "[v6]:port" or ":port" (loopback). kInvalidArgument otherwise.
Result<Endpoint> ParseEndpoint(std::string_view text);

inline constexpr size_t kFrameHeaderBytes = 8;
inline constexpr uint32_t kMaxFramePayload = 64u << 20;

struct FrameHeader {
  uint16_t type = 0;
  uint16_t flags = 0;
  uint32_t length = 0;
};

struct Frame {
  FrameHeader header;
  std::vector<uint8_t> payload;
};

// The 8 header bytes on the wire (little-endian), and back.
std::array<uint8_t, kFrameHeaderBytes> EncodeFrameHeader(const FrameHeader& h);
FrameHeader DecodeFrameHeader(std::span<const uint8_t, kFrameHeaderBytes> b);

// A duration of zero or less means no deadline.
class Connection {
 public:
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Connects with TCP_NODELAY and large socket buffers (SO_SNDBUF/SO_RCVBUF
  // 4 MiB; 256 KiB once connected if the peer is loopback, where nothing is
  // on a wire and big buffers only cost cache misses; accepted connections
  // alike). To a loopback peer the congestion control is Reno, which does
  // not pace sends (BBR does, with timers that cost CPU and nothing else
  // there). A host name is resolved (without deadline) and its addresses
  // tried in order. Refused: kIoError; deadline passed: kTimeout.
  static Result<std::unique_ptr<Connection>> Connect(const Endpoint& to,
                                                     Duration timeout);

  // Writes every buffer in order, gathered (no copy of the data).
  Status WriteAll(std::span<const std::span<const uint8_t>> buffers,
                  Duration timeout = Duration::zero());
  // Reads exactly out.size() bytes straight into `out`. kIoError "connection
  // closed by peer" (subcode 0) on EOF before the first byte, kDataLoss on EOF
  // after it.
  Status ReadExact(std::span<uint8_t> out, Duration timeout = Duration::zero());

  // Frame helpers. WriteFrame gathers header + payload (kInvalidArgument if
  // the payload is over kMaxFramePayload); ReadFrameHeader reads and validates
  // one header (length <= max_payload, else kInvalidArgument), so the caller
  // can read the payload straight into its own buffer with ReadExact. A header
  // cut short by EOF is kDataLoss; ReadFrame also reports a payload cut short
  // (even before its first byte) as kDataLoss.
  Status WriteFrame(uint16_t type, uint16_t flags,
                    std::span<const uint8_t> payload,
                    Duration timeout = Duration::zero());
  Result<FrameHeader> ReadFrameHeader(Duration timeout = Duration::zero(),
                                      uint32_t max_payload = kMaxFramePayload);
  Result<Frame> ReadFrame(Duration timeout = Duration::zero(),
                          uint32_t max_payload = kMaxFramePayload);

  // Unblocks and fails every current and later operation (thread-safe).
  void Shutdown();
  // Half-close: sends FIN after everything written so far (the peer reads
  // EOF); reads keep working, later writes fail with kIoError. Thread-safe.
  void CloseWrite();
  Endpoint peer() const;
  // The socket's TCP congestion control ("reno" to a loopback peer, see
  // Connect; the system default otherwise); "" if the kernel does not say.
  std::string congestion_control() const;
  uint64_t bytes_written() const;
  uint64_t bytes_read() const;

 private:
  struct Impl;
  explicit Connection(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class Listener;
};

class Listener {
 public:
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Binds and listens (SO_REUSEADDR); port 0 picks a free port.
  static Result<std::unique_ptr<Listener>> Listen(const Endpoint& at);
  Endpoint local() const;  // the bound address and port
  // kTimeout when no client arrives in time, kCancelled after Close().
  Result<std::unique_ptr<Connection>> Accept(
      Duration timeout = Duration::zero());
  // Unblocks and fails current and later Accept calls (thread-safe). The
  // port stays bound until destruction.
  void Close();

 private:
  struct Impl;
  explicit Listener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace net
CPC_NAMESPACE_END

#endif  // CPC_SRC_TRANSPORT_TCP_H_
