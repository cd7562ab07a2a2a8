// MitmProxy: a man-in-the-middle TCP proxy that attacks migration frames.
//
// TEST AND DIAGNOSTIC TOOL ONLY. It is compiled into cpc_internal so tests and
// benchmarks can reach it; nothing in the library uses it, and it must never
// sit on a production path. It is not tuned for speed (each frame is copied
// through a user-space buffer) and trusts nothing but the frame header it
// parses.
//
// The proxy listens on an ephemeral port (by default 127.0.0.1:0). For every
// accepted connection (numbered 0, 1, ... in accept order) it connects to the
// target endpoint and forwards both directions frame by frame (frame format:
// transport/tcp.h), with two threads per connection. A half-close is
// forwarded as a half-close; an error or a mid-frame EOF on either side closes
// both sides of that connection.
//
// Fault rules pick frames by connection index, direction, frame type, flags and
// the ordinal of the frame among the frames that match the rule on that
// connection and direction; each rule fires at most `times` times in total
// (default once), on the matching frames whose ordinal is >= `ordinal`.
// A frame gets at most one action: when several rules want to fire on the same
// frame, the one added first wins and the others still count the frame (so
// they fire on their next match). Frames the proxy injects (duplicates,
// replays, released reordered frames) are never matched.
//
// Closing "both sides" shuts both sockets down (FIN, then RST if the end keeps
// sending); the sockets themselves stay open until the proxy is destroyed, so
// an end always reads everything forwarded before the close, then EOF.
#ifndef CPC_SRC_TRANSPORT_MITM_PROXY_H_
#define CPC_SRC_TRANSPORT_MITM_PROXY_H_

#include <cstdint>
#include <memory>
#include <vector>

#include <cpc/status.h>
#include <cpc/types.h>

#include "transport/tcp.h"

CPC_NAMESPACE_BEGIN
namespace net {

class MitmProxy {
 public:
  enum class Direction : uint8_t {
    kClientToServer = 0,  // from the accepted client to the target
    kServerToClient = 1,
  };

  enum class Action : uint8_t {
    // Flip (XOR 0xff) one payload byte at `offset` (default: the middle).
    // Only frames with a payload longer than `offset` (non-empty for the
    // default) match.
    kTamper,
    // Do not forward the frame.
    kDrop,
    // Forward the frame twice, back to back.
    kDuplicate,
    // Hold the frame and forward it right after the next frame read in the
    // same connection and direction (in place of it if that one is dropped).
    // A held frame is flushed at a clean EOF.
    kReorder,
    // Forward the frame, and forward it again after the next `replay_after`
    // frames read in the same connection and direction (flushed at a clean
    // EOF if the stream ends first).
    kReplay,
    // Forward the header (with its original length) and only `offset` bytes
    // of the payload (default: half), then close both sides.
    kTruncate,
    // Close both sides of the connection instead of forwarding the frame.
    kCut,
    // Forward a well-formed frame with only the first `offset` bytes of the
    // payload (default: half), its header length to match; the connection
    // stays open (what the frame carries is truncated, not the stream).
    kShorten,
  };

  struct Rule {
    Action action = Action::kDrop;
    int connection = -1;  // accept-order index (0-based); -1 = any
    Direction direction = Direction::kClientToServer;
    uint16_t type = 0;         // frame type to match; 0 = any type
    uint16_t flags = 0;        // frames whose flags contain all these bits
    uint32_t min_payload = 0;  // frames with shorter payloads do not match
    uint32_t ordinal = 0;      // 0-based: 0 = the first matching frame
    uint32_t times = 1;        // how many times the rule fires in total
    int64_t offset = -1;       // kTamper / kTruncate (see Action); -1 = default
    uint32_t replay_after = 1;  // kReplay: K
  };
  using RuleId = int;  // index in order of addition

  struct Stats {
    uint64_t connections = 0;          // accepted
    uint64_t frames_read[2] = {0, 0};  // by Direction, frames read from an end
    uint64_t frames_sent[2] = {0, 0};  // by Direction, incl. injected copies
    uint64_t rules_fired = 0;          // all rules, all firings
    // Closed by the proxy: kTruncate/kCut, an error on either side, a failed
    // connect to the target, CutAll() or Stop(). Clean EOFs are not counted.
    uint64_t closed_connections = 0;
  };

  ~MitmProxy();  // stops accepting, closes every connection, joins threads
  MitmProxy(const MitmProxy&) = delete;
  MitmProxy& operator=(const MitmProxy&) = delete;

  // Starts listening at `listen_at` and forwarding to `target`.
  static Result<std::unique_ptr<MitmProxy>> Start(
      const Endpoint& target, std::vector<Rule> rules = {},
      const Endpoint& listen_at = Endpoint{"127.0.0.1", 0});

  // Where clients connect.
  Endpoint endpoint() const;

  // Adds a rule (thread-safe). Its ordinals count matching frames read after
  // the call.
  RuleId AddRule(const Rule& rule);
  // How many times the rule fired so far.
  uint64_t fired(RuleId id) const;
  // Waits until the rule fired at least `times` times; false on timeout.
  bool WaitFired(RuleId id, uint64_t times, Duration timeout) const;
  Stats stats() const;

  // Closes both sides of every current connection now (a network cut); the
  // proxy keeps accepting new ones.
  void CutAll();
  // Stops accepting and closes every connection (the destructor does this).
  void Stop();

 private:
  struct Impl;
  explicit MitmProxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace net
CPC_NAMESPACE_END

#endif  // CPC_SRC_TRANSPORT_MITM_PROXY_H_
