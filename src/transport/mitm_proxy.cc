// MitmProxy (test / diagnostic tool): see mitm_proxy.h.
#include "transport/mitm_proxy.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

CPC_NAMESPACE_BEGIN
namespace net {
namespace {

constexpr Duration kTargetConnectTimeout = std::chrono::seconds(5);

size_t Dir(MitmProxy::Direction d) { return static_cast<size_t>(d); }

// A read that ended at a frame boundary because the peer closed (see
// Connection::ReadExact), as opposed to a reset, a shutdown or a mid-frame
// EOF.
bool IsCleanEof(const Status& s) {
  return s.code() == Code::kIoError && s.subcode() == 0 &&
         s.message() == "connection closed by peer";
}

}  // namespace

struct MitmProxy::Impl {
  struct Conn {
    int index = 0;
    std::unique_ptr<Connection> client;
    std::unique_ptr<Connection> server;
    std::atomic<bool> closed{false};
    std::thread threads[2];
  };

  Endpoint target;
  std::unique_ptr<Listener> listener;
  Endpoint local;
  std::thread accept_thread;

  std::mutex stop_mu;  // serialises Stop()
  bool stopped = false;

  // Lock order: conns_mu before mu.
  std::mutex conns_mu;
  std::vector<std::unique_ptr<Conn>> conns;
  bool stopping = false;  // under conns_mu

  mutable std::mutex mu;  // rules, fired, stats
  mutable std::condition_variable fired_cv;
  std::vector<Rule> rules;
  std::vector<uint64_t> fired;
  Stats stats;

  void AcceptLoop();
  void Forward(Conn& c, Direction d);
  void CloseBoth(Conn& c);
  bool Send(Connection& out, Direction d, const FrameHeader& h,
            std::span<const uint8_t> payload);
  // The rule that fires on this frame, if any (counts the frame for every
  // matching rule). `counts` holds the forwarder's per-rule ordinals.
  std::optional<Rule> Match(int conn, Direction d, const FrameHeader& h,
                            size_t payload_size, std::vector<uint32_t>& counts);
};

void MitmProxy::Impl::CloseBoth(Conn& c) {
  if (!c.closed.exchange(true)) {
    std::lock_guard lock(mu);
    ++stats.closed_connections;
  }
  c.client->Shutdown();
  if (c.server) c.server->Shutdown();
}

bool MitmProxy::Impl::Send(Connection& out, Direction d, const FrameHeader& h,
                           std::span<const uint8_t> payload) {
  if (!out.WriteFrame(h.type, h.flags, payload).ok()) return false;
  std::lock_guard lock(mu);
  ++stats.frames_sent[Dir(d)];
  return true;
}

std::optional<MitmProxy::Rule> MitmProxy::Impl::Match(
    int conn, Direction d, const FrameHeader& h, size_t payload_size,
    std::vector<uint32_t>& counts) {
  std::lock_guard lock(mu);
  ++stats.frames_read[Dir(d)];
  if (counts.size() < rules.size()) counts.resize(rules.size(), 0);
  std::optional<Rule> fire;
  for (size_t i = 0; i < rules.size(); ++i) {
    const Rule& r = rules[i];
    if (r.connection >= 0 && r.connection != conn) continue;
    if (r.direction != d) continue;
    if (r.type != 0 && r.type != h.type) continue;
    if ((h.flags & r.flags) != r.flags) continue;
    if (payload_size < r.min_payload) continue;
    if (r.action == Action::kTamper &&
        payload_size <= static_cast<size_t>(std::max<int64_t>(r.offset, 0)))
      continue;
    const uint32_t ordinal = counts[i]++;
    if (!fire && ordinal >= r.ordinal && fired[i] < r.times) {
      fire = r;
      ++fired[i];
      ++stats.rules_fired;
      fired_cv.notify_all();
    }
  }
  return fire;
}

void MitmProxy::Impl::Forward(Conn& c, Direction d) {
  const bool c2s = d == Direction::kClientToServer;
  Connection& in = c2s ? *c.client : *c.server;
  Connection& out = c2s ? *c.server : *c.client;
  std::vector<uint32_t> counts;
  std::vector<uint8_t> payload;
  std::optional<Frame> held;  // kReorder
  struct Replay {
    Frame frame;
    uint32_t left;  // frames to read before it goes out again
  };
  std::vector<Replay> replays;

  for (;;) {
    auto header = in.ReadFrameHeader();
    if (!header.ok()) {
      if (!IsCleanEof(header.status()) || c.closed.load()) break;
      // Clean EOF: flush what the actions still hold, then half-close.
      if (held && !Send(out, d, held->header, held->payload)) break;
      for (const Replay& r : replays)
        if (!Send(out, d, r.frame.header, r.frame.payload)) break;
      out.CloseWrite();
      return;
    }
    const FrameHeader h = *header;
    payload.resize(h.length);
    if (!in.ReadExact(payload).ok()) break;
    const std::optional<Rule> rule =
        Match(c.index, d, h, payload.size(), counts);

    // Frames held by earlier actions go out after this one.
    std::optional<Frame> release = std::move(held);
    held.reset();
    std::vector<Frame> due;
    for (auto it = replays.begin(); it != replays.end();) {
      if (--it->left == 0) {
        due.push_back(std::move(it->frame));
        it = replays.erase(it);
      } else {
        ++it;
      }
    }

    bool ok = true;
    if (!rule) {
      ok = Send(out, d, h, payload);
    } else {
      switch (rule->action) {
        case Action::kTamper: {
          const size_t at = rule->offset >= 0
                                ? static_cast<size_t>(rule->offset)
                                : payload.size() / 2;
          payload[at] ^= 0xff;
          ok = Send(out, d, h, payload);
          break;
        }
        case Action::kDrop:
          break;
        case Action::kDuplicate:
          ok = Send(out, d, h, payload) && Send(out, d, h, payload);
          break;
        case Action::kReorder:
          held = Frame{h, payload};
          break;
        case Action::kReplay:
          ok = Send(out, d, h, payload);
          replays.push_back(
              {Frame{h, payload}, std::max(rule->replay_after, 1u)});
          break;
        case Action::kShorten: {
          const size_t keep =
              rule->offset >= 0
                  ? std::min(static_cast<size_t>(rule->offset), payload.size())
                  : payload.size() / 2;
          ok = Send(out, d, h, std::span<const uint8_t>(payload).first(keep));
          break;
        }
        case Action::kTruncate: {
          const size_t keep =
              rule->offset >= 0
                  ? std::min(static_cast<size_t>(rule->offset), payload.size())
                  : payload.size() / 2;
          const auto raw = EncodeFrameHeader(h);
          const std::span<const uint8_t> parts[2] = {
              raw, std::span<const uint8_t>(payload).first(keep)};
          if (out.WriteAll(parts).ok()) {
            std::lock_guard lock(mu);
            ++stats.frames_sent[Dir(d)];
          }
          CloseBoth(c);
          return;
        }
        case Action::kCut:
          CloseBoth(c);
          return;
      }
    }
    if (ok && release) ok = Send(out, d, release->header, release->payload);
    for (const Frame& f : due) {
      if (!ok) break;
      ok = Send(out, d, f.header, f.payload);
    }
    if (!ok) break;
  }
  CloseBoth(c);
}

void MitmProxy::Impl::AcceptLoop() {
  for (;;) {
    auto client = listener->Accept();
    if (!client.ok()) {
      if (client.status().code() == Code::kCancelled) return;
      // Transient (e.g. out of descriptors): back off a little.
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    Conn* c;
    {
      // Registered before the target is dialled, so CutAll() and Stop() see
      // every connection whose client got through.
      auto conn = std::make_unique<Conn>();
      {
        std::lock_guard lock(mu);
        conn->index = static_cast<int>(stats.connections++);
      }
      conn->client = std::move(client).value();
      c = conn.get();
      std::lock_guard lock(conns_mu);
      conns.push_back(std::move(conn));  // keeps the sockets until destruction
    }
    auto server = Connection::Connect(target, kTargetConnectTimeout);
    std::lock_guard lock(conns_mu);
    if (server.ok()) c->server = std::move(server).value();
    if (stopping || !c->server || c->closed.load()) {
      CloseBoth(*c);
      continue;
    }
    try {
      c->threads[0] =
          std::thread([this, c] { Forward(*c, Direction::kClientToServer); });
      c->threads[1] =
          std::thread([this, c] { Forward(*c, Direction::kServerToClient); });
    } catch (const std::system_error&) {
      CloseBoth(*c);  // the thread that did start exits on its own
    }
  }
}

MitmProxy::MitmProxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MitmProxy::~MitmProxy() { Stop(); }

Result<std::unique_ptr<MitmProxy>> MitmProxy::Start(const Endpoint& target,
                                                    std::vector<Rule> rules,
                                                    const Endpoint& listen_at) {
  auto impl = std::make_unique<Impl>();
  impl->target = target;
  CPC_ASSIGN_OR_RETURN(impl->listener, Listener::Listen(listen_at));
  impl->local = impl->listener->local();
  impl->fired.assign(rules.size(), 0);
  impl->rules = std::move(rules);
  Impl* raw = impl.get();
  try {
    impl->accept_thread = std::thread([raw] { raw->AcceptLoop(); });
  } catch (const std::system_error& e) {
    return Status(
        Code::kResourceExhausted,
        std::string("mitm proxy: cannot start a thread: ") + e.what());
  }
  return std::unique_ptr<MitmProxy>(new MitmProxy(std::move(impl)));
}

Endpoint MitmProxy::endpoint() const { return impl_->local; }

MitmProxy::RuleId MitmProxy::AddRule(const Rule& rule) {
  std::lock_guard lock(impl_->mu);
  impl_->rules.push_back(rule);
  impl_->fired.push_back(0);
  return static_cast<RuleId>(impl_->rules.size() - 1);
}

uint64_t MitmProxy::fired(RuleId id) const {
  std::lock_guard lock(impl_->mu);
  if (id < 0 || static_cast<size_t>(id) >= impl_->fired.size()) return 0;
  return impl_->fired[static_cast<size_t>(id)];
}

bool MitmProxy::WaitFired(RuleId id, uint64_t times, Duration timeout) const {
  std::unique_lock lock(impl_->mu);
  if (id < 0 || static_cast<size_t>(id) >= impl_->fired.size()) return false;
  return impl_->fired_cv.wait_for(lock, timeout, [&] {
    return impl_->fired[static_cast<size_t>(id)] >= times;
  });
}

MitmProxy::Stats MitmProxy::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

void MitmProxy::CutAll() {
  std::lock_guard lock(impl_->conns_mu);
  for (auto& c : impl_->conns) impl_->CloseBoth(*c);
}

void MitmProxy::Stop() {
  std::lock_guard stop_lock(impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->listener->Close();
  if (impl_->accept_thread.joinable()) impl_->accept_thread.join();
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(impl_->conns_mu);
    impl_->stopping = true;
    for (auto& c : impl_->conns) {
      impl_->CloseBoth(*c);
      for (auto& t : c->threads)
        if (t.joinable()) threads.push_back(std::move(t));
    }
  }
  for (auto& t : threads) t.join();
}

}  // namespace net
CPC_NAMESPACE_END
