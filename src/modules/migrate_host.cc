// The host side of CPC-LiveMigration (include/cpc/migrate.h).
//
// Control connection (frames, src <-> dst):
//   kHello   src: u32 magic, u32 version, u32 streams, launch configuration
//   kReady   dst: the destination CVM is launched and paused
//   kOffer   src: the source CVM's hello (public key + evidence)
//   kAnswer  dst: the destination CVM's hello
//   kCommitted dst: the destination committed and runs (u64 pages)
//   kAbortToken dst: the destination aborted; its abort token
//   kFail    either: status (code, subcode, message); the sender gives up
//   kEpoch   dst: u32 its epoch (lets the source forget older rounds)
// After a network cut during precopy, on a new control connection:
//   kResumeHello src: u32 magic, u32 version, session id
//   kResumeAck   dst: the destination CVM's resume ack (sealed record)
// then new data connections, and the streams run on. After the pause the
// source instead asks for the verdict it missed:
//   kVerdictHello src: as kResumeHello
//   dst: kCommitted if it had everything (it runs), else kFail + kAbortToken
// Data connections (one per stream): kDataHello {session id, u32 stream},
// then kChunk frames: flags = ring flags, payload = one ring buffer.
//
// A side fails on purpose with kFail on the control connection before it
// closes anything; a connection lost without one is a cut, which precopy
// survives (reconnect_timeout) and the final round does not.
// The hosts never look inside a chunk: it is sealed inside the CVMs.
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <sys/prctl.h>
#include <thread>

#include <fmt/format.h>

#include <cpc/migrate.h>
#include <cpc/record.h>

#include "core/bytes.h"
#include "core/log.h"
#include "emulator/channel.h"
#include "emulator/launch.h"
#include "modules/host_call.h"
#include "modules/migrate.h"
#include "modules/ring.h"
#include "transport/tcp.h"

CPC_NAMESPACE_BEGIN

const char* MigrationStateName(MigrationStats::State state) {
  switch (state) {
    case MigrationStats::State::kSetup:
      return "setup";
    case MigrationStats::State::kActive:
      return "active";
    case MigrationStats::State::kSwitchover:
      return "switchover";
    case MigrationStats::State::kCompleted:
      return "completed";
    case MigrationStats::State::kFailed:
      return "failed";
  }
  return "unknown";
}

namespace {

using mig::Control;
using net::Connection;
using ring::RingHead;
using namespace std::chrono_literals;

enum FrameType : uint16_t {
  kHello = 1,
  kReady = 2,
  kOffer = 3,
  kAnswer = 4,
  kCommitted = 5,
  kAbortToken = 6,
  kFail = 7,
  kResumeHello = 8,
  kResumeAck = 9,
  kEpoch = 10,
  kVerdictHello = 11,
  kDataHello = 16,
  kChunk = 17,
};
constexpr uint32_t kMagic = 0x4d435043;  // "CPCM"
constexpr uint32_t kWireVersion = 1;
constexpr Duration kSetupTimeout = 120s;  // includes launching a CVM

std::vector<uint8_t> EncodeFail(const Status& s) {
  std::vector<uint8_t> out;
  ByteWriter w(&out);
  emu::EncodeStatus(w, s);
  return out;
}

Status DecodeFail(std::span<const uint8_t> b) {
  ByteReader r(b);
  Status s = emu::DecodeStatus(r);
  if (s.ok()) return Status(Code::kIoError, "the peer failed");
  return s.WithContext("the migration peer");
}

// Reads the next control frame; a kFail frame becomes its status.
Result<net::Frame> ReadControl(Connection& c, uint16_t want, Duration timeout) {
  CPC_ASSIGN_OR_RETURN(net::Frame f, c.ReadFrame(timeout, 1u << 20));
  if (f.header.type == kFail) return DecodeFail(f.payload);
  if (f.header.type != want)
    return Status(Code::kIoError,
                  fmt::format("migration protocol: expected message {}, got {}",
                              want, f.header.type));
  return f;
}

HvcpuEntry Entry(std::string procedure, std::vector<uint8_t> token,
                 std::vector<uint8_t> args, Duration slice) {
  return CallEntry(mig::kModule, std::move(procedure), std::move(token),
                   std::move(args), slice);
}

// Every token a side needs, requested while its guest runs (a paused
// guest's agent cannot answer).
struct Tokens {
  std::map<std::string, std::vector<uint8_t>> once;
  std::vector<std::vector<uint8_t>> streams;
};

Result<Tokens> GetTokens(Backend& b, CvmHandle cvm,
                         std::initializer_list<const char*> once,
                         const char* stream, uint32_t streams,
                         uint64_t memory) {
  Tokens t;
  for (const char* p : once) {
    CPC_ASSIGN_OR_RETURN(t.once[p],
                         b.RequestToken(cvm, {mig::kModule, p, {memory, 0}}));
  }
  // A stream call runs the whole migration: its budget covers many rounds.
  for (uint32_t i = 0; i < streams; ++i) {
    CPC_ASSIGN_OR_RETURN(
        auto tok,
        b.RequestToken(cvm, {mig::kModule, stream, {memory * 64, 0}}));
    t.streams.push_back(std::move(tok));
  }
  return t;
}

// The rings and the control block in the shared region.
struct Rings {
  Control* control = nullptr;
  uint64_t control_offset = 0;
  uint32_t count = 0;
  uint64_t buf_bytes = 0;
  std::vector<uint64_t> offsets;  // per stream
  std::vector<std::vector<uint8_t*>> bufs;

  RingHead* head(uint32_t s, uint32_t k) const {
    return reinterpret_cast<RingHead*>(bufs[s][k]);
  }
  uint8_t* payload(uint32_t s, uint32_t k) const {
    return bufs[s][k] + sizeof(RingHead);
  }
  uint64_t payload_bytes() const { return buf_bytes - sizeof(RingHead); }

  std::vector<uint8_t> Args(const SessionId& id, uint32_t stream) const {
    std::vector<uint8_t> a(id.begin(), id.end());
    ByteWriter w(&a);
    w.Int<uint32_t>(stream);
    w.Int<uint64_t>(offsets[stream]);
    w.Int<uint64_t>(buf_bytes);
    w.Int<uint32_t>(count);
    w.Int<uint64_t>(control_offset);
    return a;
  }
};

Result<Rings> LayOutRings(Backend& b, CvmHandle cvm, uint32_t streams,
                          uint32_t count, uint64_t buf_bytes) {
  CPC_ASSIGN_OR_RETURN(SharedRegion shared, b.MapSharedRegion(cvm));
  if (count < 2 || count > ring::kMaxBuffers || buf_bytes % 4096 != 0 ||
      buf_bytes < (512 << 10))
    return Status(Code::kInvalidArgument,
                  "migration rings need 2..16 buffers of >= 512 KiB");
  // As many buffers as fit, down to 2 per stream.
  const uint64_t room = shared.size > 4096 ? shared.size - 4096 : 0;
  count = static_cast<uint32_t>(
      std::min<uint64_t>(count, room / (uint64_t{streams} * buf_bytes)));
  if (count < 2)
    return Status(Code::kResourceExhausted,
                  fmt::format("the shared region ({} MiB) cannot hold two "
                              "{} KiB ring buffers per stream; launch with "
                              "option shared_mib >= {}",
                              shared.size >> 20, buf_bytes >> 10,
                              ((2 * streams * buf_bytes) >> 20) + 1));
  Rings r;
  r.count = count;
  r.buf_bytes = buf_bytes;
  for (uint32_t s = 0; s < streams; ++s) {
    r.offsets.push_back(uint64_t{s} * count * buf_bytes);
    std::vector<uint8_t*> bufs;
    for (uint32_t k = 0; k < count; ++k) {
      uint8_t* p = shared.base + r.offsets[s] + k * buf_bytes;
      ring::ResetHead(reinterpret_cast<RingHead*>(p));
      bufs.push_back(p);
    }
    r.bufs.push_back(std::move(bufs));
  }
  r.control_offset = uint64_t{streams} * count * buf_bytes;
  r.control = reinterpret_cast<Control*>(shared.base + r.control_offset);
  std::memset(static_cast<void*>(r.control), 0, sizeof(Control));
  return r;
}

// Waits for a ring head to reach `state` (ring::AwaitState), or `stop`.
bool WaitHead(RingHead* h, uint32_t state, const std::atomic<bool>& stop) {
  return ring::AwaitState(h, state,
                          [&] { return stop.load(std::memory_order_relaxed); });
}

// Runs one hvCPU's stream call; re-enters after yields, pausing briefly
// when the call made no progress (it waits for the host or another stream).
Status DriveStream(Backend& b, CvmHandle cvm, uint32_t hv, HvcpuEntry e,
                   const AbortPolicy& abort, const std::atomic<bool>& stop) {
  uint64_t last = ~0ull;
  auto out = DriveCallWith(
      [&](const HvcpuEntry& x) { return b.ScheduleHvcpu(cvm, hv, x); }, e,
      abort,
      [&](const HvcpuExit& exit, const CallStats&) -> Status {
        if (stop.load()) return Status(Code::kCancelled, "migration stopped");
        if (exit.progress.bytes_done == last) std::this_thread::sleep_for(30us);
        last = exit.progress.bytes_done;
        return Status::Ok();
      });
  if (!out.ok()) return out.status();
  return out->status;
}

void FineTimerSlack() { ::prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0); }

std::vector<uint8_t> HelloArgs(uint8_t role, uint32_t streams) {
  std::vector<uint8_t> a;
  ByteWriter w(&a);
  w.Int<uint8_t>(role);
  w.Int<uint32_t>(streams);
  return a;
}

// accept's arguments from our hello output and the peer's.
Result<std::vector<uint8_t>> AcceptArgs(std::span<const uint8_t> mine,
                                        std::span<const uint8_t> peer) {
  if (mine.size() < 36 || peer.size() < 36)
    return Status(Code::kIoError, "migration protocol: short hello");
  std::vector<uint8_t> a(mine.begin(), mine.begin() + 32);
  a.insert(a.end(), peer.begin(), peer.end());
  return a;
}

Result<SessionId> ReadSessionId(std::span<const uint8_t> b) {
  if (b.size() != 16)
    return Status(Code::kInternal, "bad migrate.accept output");
  SessionId id;
  std::memcpy(id.data(), b.data(), 16);
  return id;
}

// Serialises progress callbacks and keeps the shared statistics.
class StatsBox {
 public:
  explicit StatsBox(const MigrationProgressFn& fn, Clock::time_point t0)
      : fn_(fn), t0_(t0) {}
  template <typename F>
  void Update(F&& f, bool report = true) {
    std::lock_guard<std::mutex> lock(mu_);
    f(stats_);
    stats_.elapsed = Clock::now() - t0_;
    if (report && fn_) fn_(stats_);
  }
  MigrationStats Get() {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.elapsed = Clock::now() - t0_;
    return stats_;
  }

 private:
  const MigrationProgressFn& fn_;
  Clock::time_point t0_;
  std::mutex mu_;
  MigrationStats stats_;
};

// Threads of one side's streams; Stop() makes them all return.
class StreamThreads {
 public:
  ~StreamThreads() { Join(); }
  void Add(std::function<Status()> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    results_.emplace_back();
    const size_t i = results_.size() - 1;
    threads_.emplace_back([this, i, fn = std::move(fn)] {
      FineTimerSlack();
      Status s = fn();
      std::lock_guard<std::mutex> done(mu_);
      results_[i] = s;
      if (!s.ok() && first_error_.ok() && s.code() != Code::kCancelled)
        first_error_ = s;
      if (!s.ok()) stop_ = true;
      ++finished_;
      cv_.notify_all();
    });
  }
  void Join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  const std::atomic<bool>& stop_flag() const { return stop_; }
  void Stop() { stop_ = true; }
  bool failed() const { return stop_.load(); }
  Status first_error() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!first_error_.ok()) return first_error_;
    for (const Status& s : results_)
      if (!s.ok()) return s;
    return Status::Ok();
  }
  // Waits until every thread finished or `deadline`.
  bool WaitAll(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_until(lock, deadline,
                          [&] { return finished_ == threads_.size(); });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  std::vector<Status> results_;
  Status first_error_;
  size_t finished_ = 0;
  std::atomic<bool> stop_{false};
};

// Reads a control connection on a thread of its own, so a side can wait for
// its data streams and still hear the peer give up at any moment.
class Inbox {
 public:
  ~Inbox() { Stop(); }
  void Start(Connection* c) {
    conn_ = c;
    thread_ = std::thread([this] {
      for (;;) {
        auto f = conn_->ReadFrame(Duration::zero(), 1u << 20);
        std::lock_guard<std::mutex> lock(mu_);
        if (!f.ok()) {
          closed_ = f.status();
          cv_.notify_all();
          return;
        }
        if (f->header.type == kEpoch) {  // a hint, not a message to wait for
          if (f->payload.size() == 4)
            peer_epoch_.store(LoadLe<uint32_t>(f->payload.data()));
          continue;
        }
        if (f->header.type == kFail && failure_.ok())
          failure_ = DecodeFail(f->payload);
        frames_.push_back(std::move(f).value());
        cv_.notify_all();
      }
    });
  }
  bool started() const { return conn_ != nullptr; }
  // Ends the connection (reads and writes) and the thread.
  void Stop() {
    if (thread_.joinable()) {
      conn_->Shutdown();
      thread_.join();
    }
  }
  // The next frame; kTimeout, or the connection's error once drained.
  Result<net::Frame> Next(Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout,
                 [&] { return !frames_.empty() || !closed_.ok(); });
    if (!frames_.empty()) {
      net::Frame f = std::move(frames_.front());
      frames_.pop_front();
      return f;
    }
    if (!closed_.ok()) return closed_;
    return Status(Code::kTimeout, "no word from the migration peer");
  }
  // The peer's kFail, if one arrived (the frame stays queued for Next).
  Status PeerFailure() {
    std::lock_guard<std::mutex> lock(mu_);
    return failure_;
  }
  // The connection ended (error or EOF).
  bool Closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return !closed_.ok();
  }
  // Waits up to `timeout` for a kFail or the end of the connection; true if
  // the peer failed on purpose.
  bool PeerFailed(Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout,
                 [&] { return !failure_.ok() || !closed_.ok(); });
    return !failure_.ok();
  }
  uint32_t peer_epoch() const { return peer_epoch_.load(); }

 private:
  Connection* conn_ = nullptr;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<net::Frame> frames_;
  Status failure_;
  Status closed_;
  std::atomic<uint32_t> peer_epoch_{0};
};

// Before a reconnect: stops a side's stream calls and threads, closes every
// connection, and leaves fresh (idle) threads and control reader.
void TearDownLink(const Rings& rings, std::unique_ptr<StreamThreads>& threads,
                  std::vector<std::unique_ptr<Connection>>& data,
                  Connection& ctl, std::unique_ptr<Inbox>& inbox) {
  rings.control->stop.store(1, std::memory_order_release);
  threads->Stop();
  for (auto& c : data)
    if (c) c->Shutdown();
  ctl.Shutdown();
  threads->Join();
  inbox->Stop();
  threads = std::make_unique<StreamThreads>();
  inbox = std::make_unique<Inbox>();
  data.clear();
}

// Every ring buffer free again (no call uses the rings).
void ResetRings(const Rings& r) {
  for (const auto& bufs : r.bufs)
    for (uint8_t* p : bufs) ring::ResetHead(reinterpret_cast<RingHead*>(p));
}

// The next control frame of a resume handshake: kFail is final (the peer
// gave up), anything else unexpected or an I/O error may be retried.
Result<net::Frame> ReadResumeFrame(Connection& c, uint16_t want,
                                   Duration timeout, bool* final) {
  *final = false;
  auto f = c.ReadFrame(timeout, 1u << 20);
  if (!f.ok()) return f.status();
  if (f->header.type == kFail) {
    *final = true;
    return DecodeFail(f->payload);
  }
  if (f->header.type != want)
    return Status(Code::kIoError, "migration protocol: unexpected message");
  return f;
}

std::vector<uint8_t> ResumeHello(const SessionId& id) {
  std::vector<uint8_t> h;
  ByteWriter w(&h);
  w.Int<uint32_t>(kMagic);
  w.Int<uint32_t>(kWireVersion);
  w.Bytes(id);
  return h;
}

// --- source --------------------------------------------------------------

class Source {
 public:
  Source(Backend& b, CvmHandle cvm, const MigrateOptions& o,
         const MigrationProgressFn& progress)
      : b_(b), cvm_(cvm), o_(o), t0_(Clock::now()), stats_(progress, t0_) {}

  Result<MigrationStats> Run() {
    Status s = Migrate();
    if (s.ok()) return stats_.Get();
    return Fail(s);
  }

 private:
  uint32_t streams() const { return static_cast<uint32_t>(o_.hvcpus.size()); }
  void Trace(const char* what) const {
    static const bool on = std::getenv("CPC_MIGRATE_TRACE") != nullptr;
    if (on)
      std::fprintf(
          stderr, "cpc migrate: +%.3f ms %s\n",
          std::chrono::duration<double, std::milli>(Clock::now() - paused_at_)
              .count(),
          what);
  }

  Status Migrate() {
    const uint32_t n = streams();
    if (n == 0 || n > mig::kMaxStreams)
      return Status(Code::kInvalidArgument,
                    "a migration needs 1..64 hvCPUs (one per stream)");
    for (uint32_t i = 0; i < n; ++i)
      for (uint32_t j = 0; j < i; ++j)
        if (o_.hvcpus[i] == o_.hvcpus[j])
          return Status(Code::kInvalidArgument,
                        fmt::format("hvCPU {} listed twice", o_.hvcpus[i]));
    if (o_.launch.memory_bytes == 0)
      return Status(Code::kInvalidArgument,
                    "MigrateOptions.launch must describe the CVM for the "
                    "destination (memory_bytes, policy, hvCPUs)");
    CPC_ASSIGN_OR_RETURN(ep_, net::ParseEndpoint(o_.destination));
    const net::Endpoint& ep = ep_;
    CPC_ASSIGN_OR_RETURN(rings_, LayOutRings(b_, cvm_, n, o_.ring_buffers,
                                             o_.ring_buffer_bytes));
    CPC_ASSIGN_OR_RETURN(
        tokens_, GetTokens(b_, cvm_, {"hello", "accept", "resume"}, "send", n,
                           o_.launch.memory_bytes));
    stats_.Update([&](MigrationStats& st) {
      st.streams = n;
      st.total_bytes = o_.launch.memory_bytes;
    });

    CPC_ASSIGN_OR_RETURN(ctl_, Connection::Connect(ep, 10s));
    {
      std::vector<uint8_t> hello;
      ByteWriter w(&hello);
      w.Int<uint32_t>(kMagic);
      w.Int<uint32_t>(kWireVersion);
      w.Int<uint32_t>(n);
      emu::LaunchParams lp;
      lp.config = o_.launch;
      w.Bytes(lp.Encode());
      CPC_RETURN_IF_ERROR(ctl_->WriteFrame(kHello, 0, hello));
    }
    CPC_RETURN_IF_ERROR(ReadControl(*ctl_, kReady, kSetupTimeout).status());
    CPC_ASSIGN_OR_RETURN(
        auto offer, RunCall(b_, cvm_, o_.hvcpus[0],
                            Entry("hello", tokens_.once["hello"],
                                  HelloArgs(mig::kRoleSource, n), o_.slice),
                            o_.abort));
    CPC_RETURN_IF_ERROR(ctl_->WriteFrame(kOffer, 0, offer));
    CPC_ASSIGN_OR_RETURN(net::Frame answer,
                         ReadControl(*ctl_, kAnswer, kSetupTimeout));
    CPC_ASSIGN_OR_RETURN(auto args, AcceptArgs(offer, answer.payload));
    CPC_ASSIGN_OR_RETURN(
        auto id_bytes,
        RunCall(b_, cvm_, o_.hvcpus[0],
                Entry("accept", tokens_.once["accept"], args, o_.slice),
                o_.abort));
    CPC_ASSIGN_OR_RETURN(id_, ReadSessionId(id_bytes));
    have_session_ = true;

    for (uint32_t i = 0; i < n; ++i) {
      CPC_ASSIGN_OR_RETURN(auto c, Connection::Connect(ep, 10s));
      std::vector<uint8_t> h(id_.begin(), id_.end());
      ByteWriter(&h).Int<uint32_t>(i);
      CPC_RETURN_IF_ERROR(c->WriteFrame(kDataHello, 0, h));
      data_.push_back(std::move(c));
    }
    inbox_->Start(ctl_.get());
    stats_.Update([&](MigrationStats& st) {
      st.state = MigrationStats::State::kActive;
      st.setup_time = Clock::now() - t0_;
    });

    bytes_.reset(new std::atomic<uint64_t>[n]);
    for (uint32_t i = 0; i < n; ++i) bytes_[i] = 0;
    StartStreams(tokens_.streams);
    CPC_RETURN_IF_ERROR(Rounds());
    return AwaitVerdict();
  }

  // One thread moving stream i's ring to its connection, one driving its
  // send call, per stream.
  void StartStreams(const std::vector<std::vector<uint8_t>>& tokens) {
    for (uint32_t i = 0; i < streams(); ++i) {
      threads_->Add([this, i] { return SendStream(i); });
      threads_->Add([this, i, t = tokens[i]] {
        return DriveStream(b_, cvm_, o_.hvcpus[i],
                           Entry("send", t, rings_.Args(id_, i), o_.slice),
                           o_.abort, threads_->stop_flag());
      });
    }
  }

  // After a stream or the control connection failed: whether that was a
  // cut this migration survives, rather than the peer giving up.
  bool Resumable() {
    if (paused_ || o_.reconnect_timeout <= Duration::zero() ||
        reconnects_ >= o_.max_reconnects || !link_lost_.load())
      return false;
    // A peer failing on purpose says so before it closes anything.
    return !inbox_->PeerFailed(1s);
  }

  // Stops the streams, reconnects, and lets the destination's resume ack
  // decide what is re-sent. Returns the round to continue with.
  Result<uint32_t> Reconnect() {
    const uint32_t n = streams();
    CPC_LOG_WARN("migration: connection lost; reconnecting to {}",
                 o_.destination);
    TearDownLink(rings_, threads_, data_, *ctl_, inbox_);
    link_lost_ = false;
    ++reconnects_;
    stats_.Update([&](MigrationStats& st) { st.reconnects = reconnects_; });
    // The guest runs (precopy): its agent issues the new calls' tokens.
    CPC_ASSIGN_OR_RETURN(Tokens t, GetTokens(b_, cvm_, {"rejoin"}, "send", n,
                                             o_.launch.memory_bytes));
    const auto until = Clock::now() + o_.reconnect_timeout;
    Status last(Code::kTimeout, "no attempt");
    std::vector<uint8_t> ack;
    for (;;) {
      const auto left = until - Clock::now();
      if (left <= Duration::zero())
        return last.WithContext(fmt::format(
            "reconnecting for {:.1f} s",
            std::chrono::duration<double>(o_.reconnect_timeout).count()));
      auto c = Connection::Connect(ep_, std::min<Duration>(left, 2s));
      if (c.ok() &&
          (last = (*c)->WriteFrame(kResumeHello, 0, ResumeHello(id_), 2s))
              .ok()) {
        bool final = false;
        auto f = ReadResumeFrame(**c, kResumeAck,
                                 std::min<Duration>(until - Clock::now(), 10s),
                                 &final);
        if (f.ok()) {
          ack = std::move(f->payload);
          ctl_ = std::move(c).value();
          break;
        }
        if (final) return f.status();
        last = f.status();
      } else if (!c.ok()) {
        last = c.status();
      }
      std::this_thread::sleep_for(100ms);
    }
    std::vector<uint8_t> a(id_.begin(), id_.end());
    a.insert(a.end(), ack.begin(), ack.end());
    CPC_ASSIGN_OR_RETURN(
        auto out,
        RunCall(b_, cvm_, o_.hvcpus[0],
                Entry("rejoin", t.once["rejoin"], a, o_.slice), o_.abort));
    if (out.size() != 4)
      return Status(Code::kInternal, "bad migrate.rejoin output");
    const uint32_t next = LoadLe<uint32_t>(out.data());
    for (uint32_t i = 0; i < n; ++i) {
      CPC_ASSIGN_OR_RETURN(auto c, Connection::Connect(ep_, 10s));
      std::vector<uint8_t> h(id_.begin(), id_.end());
      ByteWriter(&h).Int<uint32_t>(i);
      CPC_RETURN_IF_ERROR(c->WriteFrame(kDataHello, 0, h));
      data_.push_back(std::move(c));
    }
    ResetRings(rings_);
    rings_.control->stop.store(0, std::memory_order_release);
    inbox_->Start(ctl_.get());
    StartStreams(t.streams);
    CPC_LOG_INFO("migration: reconnected; continuing with round {}", next);
    return next;
  }

  uint64_t WireBytes() const {
    uint64_t t = 0;
    for (uint32_t i = 0; i < streams(); ++i) t += bytes_[i].load();
    return t;
  }

  // Moves one stream's filled ring buffers to its TCP connection, straight
  // from shared memory.
  Status SendStream(uint32_t i) {
    Connection& c = *data_[i];
    for (uint32_t k = 0;; k = (k + 1) % rings_.count) {
      RingHead* h = rings_.head(i, k);
      if (!WaitHead(h, ring::kFull, threads_->stop_flag()))
        return Status(Code::kCancelled, "migration stopped");
      const uint32_t flags = h->flags;
      const uint64_t len = h->len;
      if (len > rings_.payload_bytes())
        return Status(Code::kInternal, "ring buffer length out of range");
      if (Status w = c.WriteFrame(kChunk, static_cast<uint16_t>(flags),
                                  {rings_.payload(i, k), len});
          !w.ok()) {
        if (!threads_->failed()) link_lost_ = true;
        return w.WithContext(fmt::format("stream {}", i));
      }
      bytes_[i] += net::kFrameHeaderBytes + len;
      h->state.store(ring::kFree, std::memory_order_release);
      ring::Notify(h);
      if (flags & ring::kEndOfStream) return Status::Ok();
    }
  }

  // Waits until the module closed `rounds` epochs (or a stream failed).
  Status WaitRounds(uint32_t rounds) {
    auto last_report = Clock::now();
    while (rings_.control->rounds_done.load() < rounds) {
      if (threads_->failed()) return threads_->first_error();
      CPC_RETURN_IF_ERROR(inbox_->PeerFailure());
      if (inbox_->Closed()) {
        link_lost_ = true;
        return Status(Code::kIoError, "the control connection was lost");
      }
      rings_.control->peer_epoch.store(inbox_->peer_epoch(),
                                       std::memory_order_release);
      if (o_.deadline > Duration::zero() && Clock::now() - t0_ > o_.deadline)
        return Status(Code::kAborted,
                      "the migration did not complete within its deadline");
      std::this_thread::sleep_for(200us);
      if (Clock::now() - last_report > 100ms) {
        last_report = Clock::now();
        Report();
      }
    }
    return Status::Ok();
  }

  void Report() {
    const uint64_t wire = WireBytes();
    const uint64_t planned = rings_.control->round_pages.load() * kPageSize;
    const uint64_t sealed = rings_.control->round_bytes.load();
    stats_.Update([&](MigrationStats& st) {
      st.transferred_bytes = wire;
      st.remaining_bytes = planned > (sealed - round_base_)
                               ? planned - (sealed - round_base_)
                               : 0;
    });
  }

  Status Rounds() {
    Control* ctl = rings_.control;
    CPC_RETURN_IF_ERROR(b_.ReadDirtyLog(cvm_, true).status());
    double bw = 0;  // wire bytes per second (conservative estimate)
    double throttle = 0;
    for (uint32_t round = 0;; ++round) {
      const auto t_round = Clock::now();
      const uint64_t wire0 = WireBytes();
      round_base_ = ctl->round_bytes.load();
      ctl->go_round.store(round + 1, std::memory_order_release);
      if (Status st = WaitRounds(round + 1); !st.ok()) {
        if (!Resumable()) return st;
        CPC_ASSIGN_OR_RETURN(round, Reconnect());
        --round;  // the loop's ++ takes us there
        continue;
      }
      const double dt =
          std::chrono::duration<double>(Clock::now() - t_round).count();
      const uint64_t sent = WireBytes() - wire0;
      const uint64_t pages = ctl->round_pages.load();
      // Pages the guest wrote during the round: what the next one sends.
      CPC_ASSIGN_OR_RETURN(auto dirty, b_.ReadDirtyLog(cvm_, true));
      const double rate = dt > 0 ? sent / dt : 0;
      // Small rounds are dominated by latency: only big ones calibrate.
      if (sent >= (16u << 20) || bw == 0)
        bw = bw == 0 ? rate : std::min(rate, 0.5 * bw + 0.5 * rate);
      const double dirty_rate = dt > 0 ? dirty.size() / dt : 0;
      const double remaining =
          static_cast<double>(dirty.size()) *
          (static_cast<double>(MemoryRecordBytes(kDefaultPagesPerRecord)) /
           kDefaultPagesPerRecord);
      const Duration expected =
          std::chrono::duration_cast<Duration>(std::chrono::duration<double>(
              (bw > 0 ? remaining / bw : 1.0) + 0.003));
      stats_.Update([&](MigrationStats& st) {
        st.rounds = round + 1;
        st.pages_sent += pages;
        st.transferred_bytes = WireBytes();
        st.rate_bytes_per_s = rate;
        st.dirty_pages_per_s = dirty_rate;
        st.remaining_bytes = dirty.size() * kPageSize;
        st.expected_downtime = expected;
        st.throttle = throttle;
      });
      if (expected <= o_.downtime_limit || round + 2 >= o_.max_rounds)
        return Switchover(round + 1, expected);
      if (o_.auto_converge && bw > 0 && dirty_rate > 0) {
        // The next round lasts about remaining / bw; for the one after to
        // fit the downtime limit the guest may dirty at most
        // bw * limit / 2 bytes meanwhile. The guest's unthrottled rate is
        // dirty_rate / (1 - throttle).
        const double next_round_s = remaining / bw;
        const double limit_s =
            std::chrono::duration<double>(o_.downtime_limit).count();
        const double allowed =
            bw * limit_s * 0.5 / std::max(next_round_s, limit_s);
        const double base = dirty_rate * kPageSize / (1 - throttle);
        const double want =
            std::clamp(1 - allowed / base, 0.0, o_.max_throttle);
        if (want > throttle + 0.01 || (want < throttle - 0.2)) {
          throttle = want;
          CPC_RETURN_IF_ERROR(b_.ThrottleGuest(cvm_, throttle));
          throttled_ = true;
        }
      }
    }
  }

  Status Switchover(uint32_t round, Duration expected) {
    Control* ctl = rings_.control;
    stats_.Update([&](MigrationStats& st) {
      st.state = MigrationStats::State::kSwitchover;
      st.expected_downtime = expected;
    });
    paused_at_ = Clock::now();
    CPC_RETURN_IF_ERROR(b_.PauseGuest(cvm_));
    paused_ = true;
    Trace("paused");
    round_base_ = ctl->round_bytes.load();
    ctl->final_round.store(round + 1, std::memory_order_release);
    ctl->go_round.store(round + 1, std::memory_order_release);
    CPC_RETURN_IF_ERROR(WaitRounds(round + 1));
    Trace("final round sealed");
    // Every stream thread ends once its last buffer is on the wire.
    while (!threads_->WaitAll(Clock::now() + 10ms)) {
      if (threads_->failed()) return threads_->first_error();
      CPC_RETURN_IF_ERROR(inbox_->PeerFailure());
    }
    CPC_RETURN_IF_ERROR(threads_->first_error());
    Trace("final round sent");
    const uint64_t pages = ctl->round_pages.load();
    stats_.Update([&](MigrationStats& st) {
      st.rounds = round + 1;
      st.pages_sent += pages;
      st.transferred_bytes = WireBytes();
      st.remaining_bytes = 0;
    });
    return Status::Ok();
  }

  Status AwaitVerdict() {
    auto f = inbox_->Next(o_.verdict_timeout);
    if (!f.ok()) return f.status().WithContext("waiting for the destination");
    if (f->header.type == kCommitted) {
      Trace("committed");
      const Duration down = Clock::now() - paused_at_;
      stats_.Update([&](MigrationStats& st) {
        st.state = MigrationStats::State::kCompleted;
        st.downtime = down;
      });
      if (throttled_) (void)b_.ThrottleGuest(cvm_, 0);
      return Status::Ok();
    }
    if (f->header.type == kAbortToken) {
      abort_token_ = std::move(f->payload);
      return Status(Code::kAborted, "the destination aborted the migration");
    }
    if (f->header.type == kFail) return DecodeFail(f->payload);
    return Status(Code::kIoError, "migration protocol: unexpected verdict");
  }

  // Stops everything and gives the source its guest back when that is safe.
  Result<MigrationStats> Fail(Status cause) {
    // Say so before closing anything: the destination must not take this
    // for a network cut.
    const bool tell = ctl_ != nullptr && abort_token_.empty();
    if (tell) (void)ctl_->WriteFrame(kFail, 0, EncodeFail(cause), 1s);
    if (rings_.control != nullptr)
      rings_.control->stop.store(1, std::memory_order_release);
    threads_->Stop();
    for (auto& c : data_) c->Shutdown();
    threads_->Join();
    if (tell) {
      // The destination answers with its reason and, if it had a session,
      // its abort token. Once the start token may be out, that token is the
      // only way back for the source, so wait for it longer.
      const Duration wait = paused_ ? o_.verdict_timeout : Duration(2s);
      const auto until = Clock::now() + wait;
      while (abort_token_.empty() && Clock::now() < until) {
        auto f = inbox_->started()
                     ? inbox_->Next(until - Clock::now())
                     : ctl_->ReadFrame(until - Clock::now(), 1u << 20);
        if (!f.ok()) break;
        if (f->header.type == kFail) {
          cause = DecodeFail(f->payload);  // the destination's own reason
        } else if (f->header.type == kAbortToken) {
          abort_token_ = std::move(f->payload);
        } else if (f->header.type == kCommitted) {
          // It committed before it saw our failure: it runs, we stay
          // stopped. The migration succeeded.
          return Committed();
        }
      }
    }
    // The link went down after the pause: the start token may be out and
    // the verdict lost with the connection. Ask again on a new one.
    if (abort_token_.empty() && paused_ && have_session_ &&
        (link_lost_.load() || inbox_->Closed()) &&
        o_.reconnect_timeout > Duration::zero() && AskVerdict(&cause))
      return Committed();
    stats_.Update(
        [](MigrationStats& st) { st.state = MigrationStats::State::kFailed; });
    if (have_session_) {
      std::vector<uint8_t> a(id_.begin(), id_.end());
      a.insert(a.end(), abort_token_.begin(), abort_token_.end());
      auto r = RunCall(b_, cvm_, o_.hvcpus[0],
                       Entry("resume", tokens_.once["resume"], a, o_.slice),
                       o_.abort);
      if (!r.ok())
        return Status(Code::kUnavailable,
                      fmt::format("{}; the source stays paused: the "
                                  "destination may be running ({})",
                                  cause.ToString(), r.status().ToString()));
    }
    if (throttled_) (void)b_.ThrottleGuest(cvm_, 0);
    if (paused_) {
      Status s = b_.ResumeGuest(cvm_);
      if (!s.ok())
        return Status(Code::kUnavailable,
                      fmt::format("{}; and the source did not resume: {}",
                                  cause.ToString(), s.ToString()));
    }
    return cause;
  }

  Result<MigrationStats> Committed() {
    stats_.Update([&](MigrationStats& st) {
      st.state = MigrationStats::State::kCompleted;
      st.downtime = Clock::now() - paused_at_;
    });
    if (throttled_) (void)b_.ThrottleGuest(cvm_, 0);
    return stats_.Get();
  }

  // Reconnects to learn the destination's verdict: true if it committed;
  // otherwise its abort token (and reason) are kept, if they came.
  bool AskVerdict(Status* cause) {
    inbox_->Stop();
    const auto until = Clock::now() + o_.reconnect_timeout;
    while (Clock::now() < until) {
      auto c = Connection::Connect(ep_, 2s);
      if (!c.ok() ||
          !(*c)->WriteFrame(kVerdictHello, 0, ResumeHello(id_), 2s).ok()) {
        std::this_thread::sleep_for(100ms);
        continue;
      }
      for (;;) {
        auto f = (*c)->ReadFrame(std::min<Duration>(until - Clock::now(), 10s),
                                 1u << 20);
        if (!f.ok()) break;
        if (f->header.type == kCommitted) return true;
        if (f->header.type == kFail) *cause = DecodeFail(f->payload);
        if (f->header.type == kAbortToken) {
          abort_token_ = std::move(f->payload);
          return false;
        }
      }
    }
    return false;
  }

  Backend& b_;
  const CvmHandle cvm_;
  const MigrateOptions& o_;
  const Clock::time_point t0_;
  StatsBox stats_;
  Rings rings_;
  Tokens tokens_;
  net::Endpoint ep_;
  std::unique_ptr<Connection> ctl_;
  // Reads ctl_ once the streams run. Declared after ctl_: stops first.
  std::unique_ptr<Inbox> inbox_ = std::make_unique<Inbox>();
  std::vector<std::unique_ptr<Connection>> data_;
  SessionId id_{};
  bool have_session_ = false;
  std::unique_ptr<std::atomic<uint64_t>[]> bytes_;
  std::unique_ptr<StreamThreads> threads_ = std::make_unique<StreamThreads>();
  std::atomic<bool> link_lost_{false};  // a connection failed under us
  uint32_t reconnects_ = 0;
  uint64_t round_base_ = 0;
  Clock::time_point paused_at_;
  bool paused_ = false;
  bool throttled_ = false;
  std::vector<uint8_t> abort_token_;
};

// --- destination ---------------------------------------------------------

class Destination {
 public:
  Destination(Backend& b, const IncomingOptions& o,
              const MigrationProgressFn& progress)
      : b_(b), o_(o), t0_(Clock::now()), stats_(progress, t0_) {}

  Result<IncomingResult> Run() {
    Status s = Migrate();
    if (s.ok()) return IncomingResult{cvm_, stats_.Get()};
    return Fail(s);
  }

 private:
  Status Migrate() {
    CPC_ASSIGN_OR_RETURN(net::Endpoint ep, net::ParseEndpoint(o_.listen));
    CPC_ASSIGN_OR_RETURN(listener_, net::Listener::Listen(ep));
    if (o_.on_listening) o_.on_listening(listener_->local().ToString());
    CPC_ASSIGN_OR_RETURN(ctl_, listener_->Accept(o_.accept_timeout));
    CPC_ASSIGN_OR_RETURN(net::Frame hello,
                         ReadControl(*ctl_, kHello, kSetupTimeout));
    ByteReader r(hello.payload);
    const uint32_t magic = r.Int<uint32_t>(), version = r.Int<uint32_t>();
    n_ = r.Int<uint32_t>();
    if (!r.ok() || magic != kMagic)
      return Status(Code::kIoError, "not a libcpc migration");
    if (version != kWireVersion)
      return Status(Code::kUnimplemented,
                    fmt::format("migration protocol version {} (this side "
                                "speaks {})",
                                version, kWireVersion));
    if (n_ == 0 || n_ > mig::kMaxStreams)
      return Status(Code::kIoError, "bad stream count");
    CPC_ASSIGN_OR_RETURN(emu::LaunchParams lp,
                         emu::LaunchParams::Decode(r.rest()));
    LaunchConfig cfg = std::move(lp.config);
    if (!o_.image.empty()) cfg.image = o_.image;
    for (const auto& [k, v] : o_.launch_options) cfg.options[k] = v;
    if (cfg.hvcpus.size() < n_)
      return Status(Code::kInvalidArgument,
                    "the destination needs an hvCPU per stream");
    stats_.Update([&](MigrationStats& st) {
      st.streams = n_;
      st.total_bytes = cfg.memory_bytes;
    });
    CPC_ASSIGN_OR_RETURN(cvm_, b_.LaunchCvm(cfg));
    launched_ = true;
    for (uint32_t i = 0; i < n_; ++i) hvcpus_.push_back(cfg.hvcpus[i].index);
    if (o_.before_pause) o_.before_pause(cvm_);
    CPC_ASSIGN_OR_RETURN(
        tokens_, GetTokens(b_, cvm_, {"hello", "accept", "commit", "abort"},
                           "recv", n_, cfg.memory_bytes));
    // A paused guest's agent issues no tokens: those for reconnecting now.
    // A policy without "ack" only means a cut ends the migration.
    for (uint32_t k = 0;
         k < o_.max_reconnects && o_.reconnect_timeout > Duration::zero();
         ++k) {
      auto t = GetTokens(b_, cvm_, {"ack"}, "recv", n_, cfg.memory_bytes);
      if (!t.ok()) {
        CPC_LOG_WARN("migration: no reconnects ({})", t.status().ToString());
        break;
      }
      spare_.push_back(std::move(t).value());
    }
    CPC_RETURN_IF_ERROR(b_.PauseGuest(cvm_));
    CPC_ASSIGN_OR_RETURN(rings_, LayOutRings(b_, cvm_, n_, 4, 1 << 20));
    CPC_RETURN_IF_ERROR(ctl_->WriteFrame(kReady, 0, {}));

    CPC_ASSIGN_OR_RETURN(net::Frame offer,
                         ReadControl(*ctl_, kOffer, kSetupTimeout));
    CPC_ASSIGN_OR_RETURN(
        auto mine,
        RunCall(b_, cvm_, hvcpus_[0],
                Entry("hello", tokens_.once["hello"],
                      HelloArgs(mig::kRoleDestination, n_), o_.slice),
                o_.abort));
    CPC_ASSIGN_OR_RETURN(auto args, AcceptArgs(mine, offer.payload));
    CPC_ASSIGN_OR_RETURN(
        auto id_bytes,
        RunCall(b_, cvm_, hvcpus_[0],
                Entry("accept", tokens_.once["accept"], args, o_.slice),
                o_.abort));
    CPC_ASSIGN_OR_RETURN(id_, ReadSessionId(id_bytes));
    have_session_ = true;
    CPC_RETURN_IF_ERROR(ctl_->WriteFrame(kAnswer, 0, mine));

    CPC_RETURN_IF_ERROR(AcceptData(Clock::now() + kSetupTimeout));
    stats_.Update([&](MigrationStats& st) {
      st.state = MigrationStats::State::kActive;
      st.setup_time = Clock::now() - t0_;
    });

    // The source may give up at any time: its kFail stops us.
    inbox_->Start(ctl_.get());
    bytes_.reset(new std::atomic<uint64_t>[n_]);
    for (uint32_t i = 0; i < n_; ++i) bytes_[i] = 0;
    StartStreams(tokens_.streams);
    for (;;) {
      Status st = WaitStreams();
      if (st.ok()) break;
      if (!Resumable()) return st;
      CPC_ASSIGN_OR_RETURN(const bool verdict, AwaitRejoin());
      // The source paused before the cut and asks how it ended: commit
      // if the start token is in, else abort (Fail sends the token).
      if (verdict) break;
    }

    std::vector<uint8_t> cargs(id_.begin(), id_.end());
    CPC_ASSIGN_OR_RETURN(
        auto committed,
        RunCall(b_, cvm_, hvcpus_[0],
                Entry("commit", tokens_.once["commit"], cargs, o_.slice),
                o_.abort));
    have_session_ = false;  // committed: abort is impossible now
    if (o_.resume) CPC_RETURN_IF_ERROR(b_.ResumeGuest(cvm_));
    (void)ctl_->WriteFrame(kCommitted, 0, committed, 5s);
    Report();
    stats_.Update([&](MigrationStats& st) {
      st.state = MigrationStats::State::kCompleted;
      st.remaining_bytes = 0;
      if (committed.size() >= 12)
        st.rounds = LoadLe<uint32_t>(committed.data() + 8);
    });
    return Status::Ok();
  }

  // Accepts one data connection per stream (until `deadline`).
  Status AcceptData(Clock::time_point deadline) {
    data_.clear();
    data_.resize(n_);
    for (uint32_t got = 0; got < n_; ++got) {
      const auto left = deadline - Clock::now();
      if (left <= Duration::zero())
        return Status(Code::kTimeout, "the source opened too few streams");
      CPC_ASSIGN_OR_RETURN(auto c, listener_->Accept(left));
      CPC_ASSIGN_OR_RETURN(net::Frame h,
                           c->ReadFrame(std::min<Duration>(left, 10s), 64));
      if (h.header.type != kDataHello || h.payload.size() != 20 ||
          std::memcmp(h.payload.data(), id_.data(), 16) != 0)
        return Status(Code::kIoError, "unexpected migration data connection");
      const uint32_t s = LoadLe<uint32_t>(h.payload.data() + 16);
      if (s >= n_ || data_[s] != nullptr)
        return Status(Code::kIoError, "bad migration stream index");
      data_[s] = std::move(c);
    }
    return Status::Ok();
  }

  void StartStreams(const std::vector<std::vector<uint8_t>>& tokens) {
    for (uint32_t i = 0; i < n_; ++i) {
      threads_->Add([this, i] { return ReceiveStream(i); });
      threads_->Add([this, i, t = tokens[i]] {
        return DriveStream(b_, cvm_, hvcpus_[i],
                           Entry("recv", t, rings_.Args(id_, i), o_.slice),
                           o_.abort, threads_->stop_flag());
      });
    }
  }

  // Until every stream ended; relays our epoch to the source meanwhile.
  Status WaitStreams() {
    auto last = Clock::now();
    uint32_t told = 0;
    while (!threads_->WaitAll(Clock::now() + 5ms)) {
      if (Status pf = inbox_->PeerFailure(); !pf.ok() && peer_failed_.ok()) {
        peer_failed_ = pf;
        rings_.control->stop.store(1);
        threads_->Stop();
        for (auto& c : data_) c->Shutdown();
      }
      if (inbox_->Closed() && !threads_->failed()) {
        link_lost_ = true;
        rings_.control->stop.store(1);
        threads_->Stop();
      }
      if (const uint32_t e = rings_.control->epoch.load(); e != told) {
        std::vector<uint8_t> b;
        ByteWriter(&b).Int<uint32_t>(e);
        if (ctl_->WriteFrame(kEpoch, 0, b, 1s).ok()) told = e;
      }
      if (Clock::now() - last >= 100ms) {
        last = Clock::now();
        Report();
      }
    }
    // Our own finding (tampering, loss) names the attack better than the
    // source's report of its symptoms.
    if (Status own = threads_->first_error(); !own.ok()) {
      if (own.code() != Code::kCancelled) return own;
      CPC_RETURN_IF_ERROR(peer_failed_);
      CPC_RETURN_IF_ERROR(inbox_->PeerFailure());
      return own;
    }
    CPC_RETURN_IF_ERROR(peer_failed_);
    return inbox_->PeerFailure();
  }

  bool Resumable() {
    if (o_.reconnect_timeout <= Duration::zero() || !link_lost_.load() ||
        reconnects_ >= spare_.size() || !peer_failed_.ok())
      return false;
    return !inbox_->PeerFailed(1s);
  }

  // After a cut: stops the streams, and waits for the source to come back
  // with the session id; answers with this CVM's resume ack. True if the
  // source asked for the verdict instead (it had paused: no resuming).
  Result<bool> AwaitRejoin() {
    CPC_LOG_WARN("migration: connection lost; waiting {:.1f} s for the source",
                 std::chrono::duration<double>(o_.reconnect_timeout).count());
    TearDownLink(rings_, threads_, data_, *ctl_, inbox_);
    link_lost_ = false;
    const auto until = Clock::now() + o_.reconnect_timeout;
    Status last(Code::kTimeout, "the source did not come back");
    for (;;) {
      const auto left = until - Clock::now();
      if (left <= Duration::zero() || reconnects_ >= spare_.size())
        return last.WithContext("waiting for the source to reconnect");
      auto c = listener_->Accept(left);
      if (!c.ok()) {
        last = c.status();
        continue;
      }
      auto f = (*c)->ReadFrame(std::min<Duration>(left, 5s), 64);
      if (!f.ok() ||
          (f->header.type != kResumeHello && f->header.type != kVerdictHello) ||
          f->payload != ResumeHello(id_))
        continue;  // not our source, or not a resume
      if (f->header.type == kVerdictHello) {
        ctl_ = std::move(c).value();
        return true;
      }
      Tokens& t = spare_[reconnects_++];
      std::vector<uint8_t> args(id_.begin(), id_.end());
      CPC_ASSIGN_OR_RETURN(
          auto ack,
          RunCall(b_, cvm_, hvcpus_[0],
                  Entry("ack", t.once["ack"], args, o_.slice), o_.abort));
      if (!(*c)->WriteFrame(kResumeAck, 0, ack, 5s).ok()) continue;
      ctl_ = std::move(c).value();
      if (Status st = AcceptData(until); !st.ok()) {
        last = st;
        continue;
      }
      stats_.Update([&](MigrationStats& st) { st.reconnects = reconnects_; });
      ResetRings(rings_);
      rings_.control->stop.store(0);
      inbox_->Start(ctl_.get());
      StartStreams(t.streams);
      CPC_LOG_INFO("migration: the source reconnected");
      return false;
    }
  }

  Status ReceiveStream(uint32_t i) {
    Connection& c = *data_[i];
    for (uint32_t k = 0;; k = (k + 1) % rings_.count) {
      auto h = c.ReadFrameHeader(Duration::zero(),
                                 static_cast<uint32_t>(rings_.payload_bytes()));
      if (!h.ok()) {
        if (threads_->failed())
          return Status(Code::kCancelled, "migration stopped");
        link_lost_ = true;
        return h.status().WithContext(fmt::format("stream {}", i));
      }
      if (h->type != kChunk)
        return Status(Code::kIoError,
                      fmt::format("stream {}: unexpected frame", i));
      RingHead* head = rings_.head(i, k);
      if (!WaitHead(head, ring::kFree, threads_->stop_flag()))
        return Status(Code::kCancelled, "migration stopped");
      if (Status r = c.ReadExact({rings_.payload(i, k), h->length}); !r.ok()) {
        if (!threads_->failed()) link_lost_ = true;
        return r.WithContext(fmt::format("stream {}", i));
      }
      bytes_[i] += net::kFrameHeaderBytes + h->length;
      head->len = h->length;
      head->flags = h->flags;
      head->state.store(ring::kFull, std::memory_order_release);
      ring::Notify(head);
      if (h->flags & ring::kEndOfStream) return Status::Ok();
    }
  }

  void Report() {
    uint64_t wire = 0;
    for (uint32_t i = 0; i < n_; ++i) wire += bytes_[i].load();
    const uint32_t rounds = rings_.control->rounds_done.load();
    stats_.Update([&](MigrationStats& st) {
      st.transferred_bytes = wire;
      st.rounds = rounds;
      st.pages_sent = rings_.control->round_bytes.load() / kPageSize;
    });
  }

  Result<IncomingResult> Fail(const Status& cause) {
    // Our reason first, before closing anything (the source must not take
    // this for a network cut), then, if we had a session, the abort token
    // that lets the source run again: this CVM is destroyed and never runs.
    const bool peer_failed = !peer_failed_.ok() ||
                             (inbox_->started() && !inbox_->PeerFailure().ok());
    if (ctl_ != nullptr && !peer_failed)
      (void)ctl_->WriteFrame(kFail, 0, EncodeFail(cause), 1s);
    if (rings_.control != nullptr) rings_.control->stop.store(1);
    threads_->Stop();
    for (auto& c : data_)
      if (c) c->Shutdown();
    threads_->Join();
    if (have_session_) {
      std::vector<uint8_t> a(id_.begin(), id_.end());
      ByteWriter(&a).Int<uint32_t>(static_cast<uint32_t>(cause.code()));
      auto token =
          RunCall(b_, cvm_, hvcpus_[0],
                  Entry("abort", tokens_.once["abort"], a, o_.slice), o_.abort);
      if (token.ok() && ctl_ != nullptr)
        (void)ctl_->WriteFrame(kAbortToken, 0, *token, 5s);
    }
    if (launched_) (void)b_.DestroyCvm(cvm_);
    stats_.Update(
        [](MigrationStats& st) { st.state = MigrationStats::State::kFailed; });
    return cause;
  }

  Backend& b_;
  const IncomingOptions& o_;
  const Clock::time_point t0_;
  StatsBox stats_;
  std::unique_ptr<net::Listener> listener_;
  std::unique_ptr<Connection> ctl_;
  // Reads ctl_ once the streams run. Declared after ctl_: stops first.
  std::unique_ptr<Inbox> inbox_ = std::make_unique<Inbox>();
  std::vector<std::unique_ptr<Connection>> data_;
  uint32_t n_ = 0;
  std::vector<Tokens> spare_;  // ack + recv tokens, one set per reconnect
  std::atomic<bool> link_lost_{false};
  uint32_t reconnects_ = 0;
  CvmHandle cvm_ = 0;
  bool launched_ = false;
  std::vector<uint32_t> hvcpus_;
  Tokens tokens_;
  Rings rings_;
  SessionId id_{};
  bool have_session_ = false;
  std::unique_ptr<std::atomic<uint64_t>[]> bytes_;
  std::unique_ptr<StreamThreads> threads_ = std::make_unique<StreamThreads>();
  Status peer_failed_;
};

}  // namespace

Result<MigrationStats> MigrateOut(Backend& backend, CvmHandle cvm,
                                  const MigrateOptions& options,
                                  const MigrationProgressFn& progress) {
  Source s(backend, cvm, options, progress);
  return s.Run();
}

Result<IncomingResult> MigrateIn(Backend& backend,
                                 const IncomingOptions& options,
                                 const MigrationProgressFn& progress) {
  Destination d(backend, options, progress);
  return d.Run();
}

CPC_NAMESPACE_END
