#include "modules/migrate.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>

#include <fmt/format.h>

#include <cpc/backend.h>
#include <cpc/policy.h>
#include <cpc/record.h>

#include "core/bytes.h"
#include "modules/ring.h"
#include "operators/aead.h"
#include "operators/keys.h"
#include "operators/operators.h"
#include "operators/receiver.h"
#include "operators/sender.h"

CPC_NAMESPACE_BEGIN
namespace mig {
namespace {

using ring::RingCursor;

constexpr size_t kMaxPending = 8;
constexpr size_t kMaxEvidence = 64 << 10;

// report_data of a hello: binds role, public key and stream count, so the
// host can neither reflect a CVM's own evidence back at it nor tell the two
// sides different stream counts.
std::array<uint8_t, 64> Binding(uint8_t role, const X25519PublicKey& pub,
                                uint32_t streams) {
  static constexpr std::string_view kLabel = "cpc/migrate/hello/v1";
  // Constructed, not inserted into an empty vector: gcc 12 -O1 (TSan)
  // reports a false -Wstringop-overflow for the latter.
  std::vector<uint8_t> b(kLabel.begin(), kLabel.end());
  ByteWriter w(&b);
  w.Int<uint8_t>(role);
  w.Bytes(pub);
  w.Int<uint32_t>(streams);
  const Digest d = Sha256(b);
  std::array<uint8_t, 64> out{};
  std::memcpy(out.data(), d.data(), d.size());
  return out;
}

SessionId MakeSessionId(const X25519PublicKey& src,
                        const X25519PublicKey& dst) {
  static constexpr std::string_view kLabel = "cpc/migrate/session/v1";
  std::vector<uint8_t> b(kLabel.begin(), kLabel.end());
  b.insert(b.end(), src.begin(), src.end());
  b.insert(b.end(), dst.begin(), dst.end());
  const Digest d = Sha256(b);
  SessionId id;
  std::memcpy(id.data(), d.data(), id.size());
  return id;
}

struct Pending {
  X25519KeyPair keys;
  uint8_t role = 0;
  uint32_t streams = 0;
  std::vector<uint8_t> evidence;
};

struct Session {
  uint8_t role = 0;
  uint32_t streams = 0;
  GpaRange memory;
  // Source: forward sender + backward receiver (abort token).
  std::unique_ptr<SenderSession> tx;
  std::unique_ptr<Receiver> back_rx;
  // Destination: forward receiver + backward sender (abort token).
  std::unique_ptr<Receiver> rx;
  std::unique_ptr<SenderSession> back_tx;

  // The current round's pages (leader writes before publishing plan_round).
  std::shared_ptr<const std::vector<PageRef>> plan;
  bool plan_final = false;
  std::atomic<uint32_t> plan_round{0};
  std::unique_ptr<std::atomic<uint32_t>[]> done;  // rounds each stream did
  std::unique_ptr<std::atomic<bool>[]> claimed;   // a call runs the stream
  std::atomic<uint32_t> running{0};               // stream calls running
  std::atomic<bool> failed{false};
  std::atomic<bool> start_sealed{false};  // the start token may be out
  std::atomic<bool> revoked{false};       // the guest OS may not run

  // Source, resumption (the leader's, or rejoin's with no call running).
  struct Run {  // one MEE call: all records full but maybe the last
    uint32_t records;
    uint32_t pages;
  };
  struct Round {
    uint32_t epoch;
    std::shared_ptr<const std::vector<PageRef>> plan;
    std::vector<std::vector<Run>> runs;  // per stream, in sealing order
  };
  std::deque<Round> journal;  // rounds the destination may lack
  uint64_t journal_pages = 0;
  bool tracking = false;        // write tracking started (first plan)
  uint32_t first_round = 0;     // where the next send calls start
  std::vector<PageRef> lost;    // re-sent by the next round
  std::vector<uint8_t> resume;  // resume record, sent first

  // A stream call gives up waiting: another stream failed or the host
  // stopped the migration.
  bool Stopped(const Control& ctl) const {
    return failed.load() || ctl.stop.load(std::memory_order_acquire);
  }

  bool AllDone(uint32_t rounds) const {
    for (uint32_t i = 0; i < streams; ++i)
      if (done[i].load(std::memory_order_acquire) < rounds) return false;
    return true;
  }
};

// [first, first + count) of `total` items for `stream` of `streams`.
std::pair<size_t, size_t> Share(size_t total, uint32_t stream,
                                uint32_t streams) {
  const size_t per = total / streams, extra = total % streams;
  const size_t first = stream * per + std::min<size_t>(stream, extra);
  return {first, per + (stream < extra ? 1 : 0)};
}

Result<SessionId> ReadId(ByteReader& r) {
  auto b = r.Bytes(16);
  if (!r.ok())
    return Status(Code::kInvalidArgument, "missing migration session id");
  SessionId id;
  std::memcpy(id.data(), b.data(), 16);
  return id;
}

Result<X25519PublicKey> ReadKey(ByteReader& r) {
  auto b = r.Bytes(kX25519KeyBytes);
  if (!r.ok()) return Status(Code::kInvalidArgument, "missing public key");
  X25519PublicKey k;
  std::memcpy(k.data(), b.data(), k.size());
  return k;
}

// The ring and control block a stream call names, checked.
struct StreamArgs {
  SessionId id{};
  std::shared_ptr<Session> session;  // set by OpenStream
  uint32_t stream = 0;
  std::vector<uint8_t*> bufs;
  uint64_t payload = 0;
  Control* control = nullptr;
};

Result<StreamArgs> ParseStreamArgs(CallContext& ctx) {
  ByteReader r(ctx.args());
  StreamArgs a;
  CPC_ASSIGN_OR_RETURN(a.id, ReadId(r));
  a.stream = r.Int<uint32_t>();
  const uint64_t off = r.Int<uint64_t>(), buf = r.Int<uint64_t>();
  const uint32_t count = r.Int<uint32_t>();
  const uint64_t ctl = r.Int<uint64_t>();
  if (!r.done())
    return Status(Code::kInvalidArgument, "bad migration stream arguments");
  auto shared = ctx.shared_memory();
  CPC_ASSIGN_OR_RETURN(
      a.bufs,
      ring::MapRing(shared, off, buf, count,
                    sizeof(ring::RingHead) +
                        MemoryRecordBytes(kDefaultPagesPerRecord) + 4096));
  a.payload = buf - sizeof(ring::RingHead);
  if (ctl % 64 != 0 || ctl > shared.size() ||
      shared.size() - ctl < sizeof(Control))
    return Status(Code::kInvalidArgument,
                  "migration control block outside the shared memory");
  // Control bytes may overlap a ring: both are host-controlled anyway.
  a.control = reinterpret_cast<Control*>(shared.data() + ctl);
  return a;
}

class MigrateModule final : public Module {
 public:
  std::string_view name() const override { return kModule; }
  std::vector<std::string> procedures() const override {
    return {"hello",  "accept", "send", "resume", "recv",
            "commit", "abort",  "ack",  "rejoin"};
  }
  Isolation isolation() const override { return Isolation::kPlain; }

  Status Run(CallContext& ctx) override {
    const std::string_view p = ctx.procedure();
    if (p == "hello") return Hello(ctx);
    if (p == "accept") return Accept(ctx);
    if (p == "send") return Send(ctx);
    if (p == "resume") return Resume(ctx);
    if (p == "recv") return Recv(ctx);
    if (p == "commit") return Commit(ctx);
    if (p == "abort") return Abort(ctx);
    if (p == "ack") return Ack(ctx);
    if (p == "rejoin") return Rejoin(ctx);
    return Status(Code::kNotFound,
                  fmt::format("migrate has no procedure '{}'", p));
  }

 private:
  Status Hello(CallContext& ctx) {
    ByteReader r(ctx.args());
    const uint8_t role = r.Int<uint8_t>();
    const uint32_t streams = r.Int<uint32_t>();
    if (!r.done() || role > kRoleDestination || streams == 0 ||
        streams > kMaxStreams)
      return Status(Code::kInvalidArgument,
                    fmt::format("migrate.hello wants a role and 1..{} streams",
                                kMaxStreams));
    Pending pending;
    CPC_ASSIGN_OR_RETURN(pending.keys, X25519KeyPair::Generate());
    pending.role = role;
    pending.streams = streams;
    const auto binding = Binding(role, pending.keys.public_key(), streams);
    CPC_ASSIGN_OR_RETURN(pending.evidence,
                         ctx.platform().AttestationEvidence(binding));
    std::vector<uint8_t> out(pending.keys.public_key().begin(),
                             pending.keys.public_key().end());
    ByteWriter w(&out);
    w.Int<uint32_t>(static_cast<uint32_t>(pending.evidence.size()));
    w.Bytes(pending.evidence);
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back(std::move(pending));
      if (pending_.size() > kMaxPending) pending_.pop_front();
    }
    ctx.SetOutput(std::move(out));
    return Status::Ok();
  }

  Status Accept(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(X25519PublicKey mine, ReadKey(r));
    CPC_ASSIGN_OR_RETURN(X25519PublicKey peer, ReadKey(r));
    const uint32_t n = r.Int<uint32_t>();
    if (n > kMaxEvidence)
      return Status(Code::kInvalidArgument, "peer evidence too large");
    auto peer_evidence = r.Bytes(n);
    if (!r.done())
      return Status(Code::kInvalidArgument, "bad migrate.accept arguments");
    Pending pending;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = std::find_if(pending_.begin(), pending_.end(), [&](auto& p) {
        return p.keys.public_key() == mine;
      });
      if (it == pending_.end())
        return Status(Code::kNotFound, "no migrate.hello with that key");
      pending = std::move(*it);
      pending_.erase(it);  // one accept per key pair
    }
    GuestPlatform& p = ctx.platform();
    const uint8_t peer_role =
        pending.role == kRoleSource ? kRoleDestination : kRoleSource;
    CPC_RETURN_IF_ERROR(
        p.VerifyPeerEvidence(peer_evidence,
                             Binding(peer_role, peer, pending.streams))
            .WithContext("the migration peer's attestation"));

    const bool src = pending.role == kRoleSource;
    const X25519PublicKey& src_pub = src ? mine : peer;
    const X25519PublicKey& dst_pub = src ? peer : mine;
    const std::span<const uint8_t> own_ev(pending.evidence);
    SessionTranscript t;
    t.source_report = src ? own_ev : peer_evidence;
    t.destination_report = src ? peer_evidence : own_ev;
    t.source_public = src_pub;
    t.destination_public = dst_pub;
    t.session_id = MakeSessionId(src_pub, dst_pub);
    CPC_ASSIGN_OR_RETURN(
        SessionKeys keys,
        DeriveSessionKeys(
            pending.keys,
            src ? SessionRole::kSource : SessionRole::kDestination, t));

    auto s = std::make_shared<Session>();
    s->role = pending.role;
    s->streams = pending.streams;
    s->memory = p.GuestOsMemory();
    s->done = std::make_unique<std::atomic<uint32_t>[]>(s->streams);
    s->claimed = std::make_unique<std::atomic<bool>[]>(s->streams);
    CPC_ASSIGN_OR_RETURN(const AeadEngine* engine, FindAeadEngine());
    if (src) {
      SenderOptions so;
      so.streams = s->streams;
      so.vcpu_count = p.vcpu_count();
      CPC_ASSIGN_OR_RETURN(
          s->tx,
          SenderSession::Create(*engine, keys.tx().span(), t.session_id, so));
      ReceiverOptions ro;
      ro.streams = 1;
      CPC_ASSIGN_OR_RETURN(
          s->back_rx,
          Receiver::Create(*engine, keys.rx().span(), t.session_id, ro));
    } else {
      ReceiverOptions ro;
      ro.streams = s->streams;
      ro.memory_bytes = p.memory_bytes();
      ro.vcpu_count = p.vcpu_count();
      CPC_ASSIGN_OR_RETURN(
          s->rx, Receiver::Create(*engine, keys.rx().span(), t.session_id, ro));
      SenderOptions so;
      so.streams = 1;
      CPC_ASSIGN_OR_RETURN(
          s->back_tx,
          SenderSession::Create(*engine, keys.tx().span(), t.session_id, so));
      // The destination must not run before the start token: nothing but
      // commit gives its guest OS the right back.
      CPC_RETURN_IF_ERROR(p.SetGuestOsRunnable(false).WithContext(
          "revoking the destination guest (pause it first)"));
      s->revoked = true;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      sessions_[t.session_id] = s;
    }
    ctx.SetOutput(
        std::vector<uint8_t>(t.session_id.begin(), t.session_id.end()));
    return Status::Ok();
  }

  Result<std::shared_ptr<Session>> Find(const SessionId& id, uint8_t role) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second->role != role)
      return Status(Code::kNotFound,
                    role == kRoleSource
                        ? "no outgoing migration session with that id"
                        : "no incoming migration session with that id");
    return it->second;
  }

  void Erase(const SessionId& id) {
    std::lock_guard<std::mutex> lock(mu_);
    sessions_.erase(id);  // keys are wiped with the session
  }

  // Claims stream `i` for this call; marks the session failed if the call
  // fails (the other streams stop waiting for it).
  struct StreamClaim {
    StreamClaim(Session* session, uint32_t stream) : s(session), i(stream) {
      s->running.fetch_add(1);
    }
    ~StreamClaim() {
      if (!ok) s->failed.store(true);
      s->running.fetch_sub(1);
    }
    Session* s;
    uint32_t i;
    bool ok = false;
  };

  // A stream call's arguments, its session, and the stream claimed for it
  // (each stream runs in one call only).
  Result<StreamArgs> OpenStream(CallContext& ctx, uint8_t role) {
    CPC_ASSIGN_OR_RETURN(StreamArgs a, ParseStreamArgs(ctx));
    CPC_ASSIGN_OR_RETURN(a.session, Find(a.id, role));
    if (a.stream >= a.session->streams)
      return Status(Code::kInvalidArgument, "no such migration stream");
    if (a.session->claimed[a.stream].exchange(true))
      return Status(Code::kFailedPrecondition,
                    fmt::format("migration stream {} already ran", a.stream));
    ctx.SetWorkSize(a.session->memory.pages * kPageSize / a.session->streams);
    return a;
  }

  // Leader: which pages round `round` sends.
  Status Plan(CallContext& ctx, Session& s, Control* ctl, uint32_t round,
              bool final) {
    GuestPlatform& p = ctx.platform();
    if (final) {
      // No write can happen after this: the platform refuses to run the
      // guest OS, whatever the host asks, until the destination aborts.
      CPC_RETURN_IF_ERROR(p.SetGuestOsRunnable(false).WithContext(
          "revoking the source guest for the final round (pause it first)"));
      s.revoked = true;
    }
    CPC_ASSIGN_OR_RETURN(std::vector<Gpa> written, p.TakeWrittenPages());
    auto plan = std::make_shared<std::vector<PageRef>>();
    if (!s.tracking) {
      // Tracking starts now (the call above); the first round sends all.
      s.tracking = true;
      plan->resize(s.memory.pages);
      for (uint64_t i = 0; i < s.memory.pages; ++i)
        (*plan)[i] = {s.memory.base + i * kPageSize, 0};
    } else {
      // Written pages and those a cut lost, each once.
      plan->reserve(written.size() + s.lost.size());
      for (Gpa gpa : written) plan->push_back({gpa, round});
      for (const PageRef& r : s.lost) plan->push_back({r.gpa, round});
      if (!s.lost.empty()) {
        std::sort(plan->begin(), plan->end(),
                  [](auto& a, auto& b) { return a.gpa < b.gpa; });
        plan->erase(
            std::unique(plan->begin(), plan->end(),
                        [](auto& a, auto& b) { return a.gpa == b.gpa; }),
            plan->end());
        s.lost.clear();
      }
    }
    Journal(s, ctl->peer_epoch.load(std::memory_order_acquire), plan);
    s.plan = std::move(plan);
    s.plan_final = final;
    ctl->round_pages.store(s.plan->size(), std::memory_order_relaxed);
    s.plan_round.store(round + 1, std::memory_order_release);
    return Status::Ok();
  }

  // Keeps `plan` for a rejoin; forgets rounds the destination is past (the
  // host's word: a lie only makes a rejoin fail) and, beyond four guest
  // memories of pages, the oldest.
  void Journal(Session& s, uint32_t peer_epoch,
               std::shared_ptr<const std::vector<PageRef>> plan) {
    const auto drop = [&] {
      s.journal_pages -= s.journal.front().plan->size();
      s.journal.pop_front();
    };
    while (!s.journal.empty() && s.journal.front().epoch < peer_epoch) drop();
    s.journal.push_back({s.tx->epoch(), plan, {}});
    s.journal.back().runs.resize(s.streams);
    s.journal_pages += plan->size();
    while (s.journal.size() > 1 && s.journal_pages > 4 * s.memory.pages) drop();
  }

  Status Send(CallContext& ctx) {
    CPC_ASSIGN_OR_RETURN(StreamArgs a, OpenStream(ctx, kRoleSource));
    auto s = std::move(a.session);
    StreamClaim claim{s.get(), a.stream};
    const uint32_t i = a.stream;
    Control* ctl = a.control;
    GuestPlatform& p = ctx.platform();
    StreamSender& tx = s->tx->stream(i);
    RingCursor cur(std::move(a.bufs), a.payload);
    const auto stop = [&] { return s->Stopped(*ctl); };

    // Seals `items` with `seal` into ring buffers, publishing full ones.
    const auto pump = [&](size_t items, auto&& seal) -> Status {
      size_t done = 0;
      while (done < items) {
        CPC_RETURN_IF_ERROR(cur.WaitFree(ctx, stop));
        ExportProgress ep;
        Status st = seal(done, cur.space(), &ep);
        done += ep.pages;
        cur.Commit(ep.bytes);
        ctl->round_bytes.fetch_add(ep.pages * kPageSize,
                                   std::memory_order_relaxed);
        if (!st.ok() &&
            !(st.code() == Code::kResourceExhausted && cur.used() > 0))
          return st;
        if (done < items) cur.Publish(0);  // full: the host sends it
      }
      return Status::Ok();
    };

    if (i == 0 && !s->resume.empty()) {
      // After a rejoin: the destination takes nothing before this record.
      CPC_RETURN_IF_ERROR(cur.WaitFree(ctx, stop));
      if (cur.space().size() < s->resume.size())
        return Status(Code::kInvalidArgument, "ring buffers too small");
      std::memcpy(cur.space().data(), s->resume.data(), s->resume.size());
      cur.Commit(s->resume.size());
      cur.Publish(ring::kResume);
      s->resume.clear();
    }
    for (uint32_t round = s->first_round;; ++round) {
      CPC_RETURN_IF_ERROR(ring::WaitFor(
          ctx, [&] { return ctl->go_round.load() > round; }, stop));
      if (i == 0) {
        CPC_RETURN_IF_ERROR(
            Plan(ctx, *s, ctl, round, ctl->final_round.load() == round + 1));
      } else {
        CPC_RETURN_IF_ERROR(ring::WaitFor(
            ctx, [&] { return s->plan_round.load() > round; }, stop));
      }
      const bool final = s->plan_final;
      if (i == 0 && final) {
        std::vector<uint32_t> vcpus(p.vcpu_count());
        for (uint32_t v = 0; v < vcpus.size(); ++v) vcpus[v] = v;
        CPC_RETURN_IF_ERROR(
            pump(vcpus.size(), [&](size_t from, auto out, ExportProgress* ep) {
              return ExportVcpuStates(tx, p, std::span(vcpus).subspan(from),
                                      out, &ctx, ep);
            }));
      }
      const auto [first, count] = Share(s->plan->size(), i, s->streams);
      const std::span<const PageRef> mine(s->plan->data() + first, count);
      std::vector<Session::Run>* runs = &s->journal.back().runs[i];
      CPC_RETURN_IF_ERROR(
          pump(mine.size(), [&](size_t from, auto out, ExportProgress* ep) {
            Status st = ExportMemory(tx, p, mine.subspan(from), out, &ctx, ep);
            if (ep->records > 0)  // what a rejoin needs to know
              runs->push_back({static_cast<uint32_t>(ep->records),
                               static_cast<uint32_t>(ep->pages)});
            return st;
          }));
      CPC_RETURN_IF_ERROR(cur.WaitFree(ctx, stop));
      cur.Publish(ring::kEndOfRound |
                  (final && i != 0 ? ring::kEndOfStream : 0));
      s->done[i].store(round + 1, std::memory_order_release);
      if (i == 0) {
        CPC_RETURN_IF_ERROR(ring::WaitFor(
            ctx, [&] { return s->AllDone(round + 1); }, stop));
        CPC_RETURN_IF_ERROR(cur.WaitFree(ctx, stop));
        CPC_ASSIGN_OR_RETURN(size_t n, s->tx->CloseEpoch(cur.space()));
        cur.Commit(n);
        if (final) {
          s->start_sealed.store(true);  // before its first byte is visible
          CPC_ASSIGN_OR_RETURN(size_t m, s->tx->SealStart(cur.space()));
          cur.Commit(m);
        }
        cur.Publish(ring::kTokens | (final ? ring::kEndOfStream : 0));
        s->first_round = round + 1;  // a rejoin continues there
        ctl->rounds_done.store(round + 1, std::memory_order_release);
      }
      if (final) {
        claim.ok = true;
        return Status::Ok();
      }
    }
  }

  Status Resume(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    CPC_ASSIGN_OR_RETURN(auto s, Find(id, kRoleSource));
    const auto token = r.rest();
    s->failed.store(true);  // the stream calls stop
    if (s->start_sealed.load()) {
      if (token.empty())
        return Status(Code::kFailedPrecondition,
                      "the start token has left this CVM: only the "
                      "destination's abort token can resume it");
      CPC_RETURN_IF_ERROR(
          ImportRecords(s->back_rx->stream(0), ctx.platform(), token, &ctx)
              .WithContext("the destination's abort token"));
      if (!s->back_rx->peer_aborted())
        return Status(Code::kFailedPrecondition,
                      "that is not the destination's abort token");
    }
    if (s->revoked.load())
      CPC_RETURN_IF_ERROR(ctx.platform().SetGuestOsRunnable(true));
    Erase(id);
    return Status::Ok();
  }

  Status Recv(CallContext& ctx) {
    CPC_ASSIGN_OR_RETURN(StreamArgs a, OpenStream(ctx, kRoleDestination));
    auto s = std::move(a.session);
    StreamClaim claim{s.get(), a.stream};
    const uint32_t i = a.stream;
    Control* ctl = a.control;
    GuestPlatform& p = ctx.platform();
    ReceiverStream& rx = s->rx->stream(i);
    RingCursor cur(std::move(a.bufs), a.payload);
    const auto stop = [&] { return s->Stopped(*ctl); };

    // After an ack, stream 0 takes the resume record first: the others'
    // records belong to the epoch it opens.
    if (i != 0)
      CPC_RETURN_IF_ERROR(ring::WaitFor(
          ctx, [&] { return !s->rx->resume_pending(); }, stop));
    uint32_t epoch = s->rx->epoch();  // of the round this stream is in
    for (uint32_t round = 0;;) {      // rounds of this call
      CPC_RETURN_IF_ERROR(cur.WaitFull(ctx, stop));
      uint32_t flags = 0;
      CPC_ASSIGN_OR_RETURN(auto data, cur.Take(&flags));
      if (flags & (ring::kTokens | ring::kResume)) {
        if (i != 0)
          return Status(Code::kRecordMalformed,
                        "round tokens on a stream other than 0");
        // Every stream must have delivered the round before its epoch
        // token can balance.
        if (flags & ring::kTokens)
          CPC_RETURN_IF_ERROR(ring::WaitFor(
              ctx, [&] { return s->AllDone(round + 1); }, stop));
        ImportProgress ip;
        CPC_RETURN_IF_ERROR(ImportRecords(rx, p, data, &ctx, &ip));
        cur.Release();
        const uint32_t now = s->rx->epoch();
        ctl->epoch.store(now, std::memory_order_release);
        if (flags & ring::kResume) {
          if (s->rx->resume_pending() || flags != ring::kResume)
            return Status(Code::kRecordMalformed,
                          "a resume buffer without the resume record");
          epoch = now;
          continue;
        }
        if (now != epoch + 1)
          return Status(Code::kEpochMismatch,
                        "a round ended without its epoch token");
        epoch = now;
        ++round;
        ctl->rounds_done.fetch_add(1, std::memory_order_release);
        if (flags & ring::kEndOfStream) {
          if (!s->rx->started())
            return Status(Code::kIncomplete,
                          "the migration ended without a start token");
          claim.ok = true;
          return Status::Ok();
        }
        continue;
      }
      ImportProgress ip;
      Status st = ImportRecords(rx, p, data, &ctx, &ip);
      // Counted also when stopped half-way: those pages are held.
      ctl->round_bytes.fetch_add(ip.pages * kPageSize,
                                 std::memory_order_relaxed);
      CPC_RETURN_IF_ERROR(st);
      cur.Release();
      if (flags & ring::kEndOfRound) {
        s->done[i].store(round + 1, std::memory_order_release);
        if (i != 0) {
          if (flags & ring::kEndOfStream) {
            claim.ok = true;
            return Status::Ok();
          }
          // The next round's records belong to the next epoch.
          CPC_RETURN_IF_ERROR(ring::WaitFor(
              ctx, [&] { return s->rx->epoch() > epoch; }, stop));
          epoch = s->rx->epoch();
          ++round;
        }
      } else if (flags & ring::kEndOfStream) {
        return Status(Code::kRecordMalformed,
                      "a migration stream ended inside a round");
      }
    }
  }

  // Destination, after a cut: where we stand, for the source.
  Status Ack(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    if (!r.done())
      return Status(Code::kInvalidArgument, "bad migrate.ack arguments");
    CPC_ASSIGN_OR_RETURN(auto s, Find(id, kRoleDestination));
    if (s->running.load() != 0)
      return Status(Code::kFailedPrecondition,
                    "recv calls still run: stop them before the ack");
    std::vector<uint8_t> out(64 << 10);
    CPC_ASSIGN_OR_RETURN(size_t n,
                         s->rx->SealResumeAck(s->back_tx->stream(0), out));
    out.resize(n);
    // New recv calls continue the session (the receiver kept its state).
    for (uint32_t k = 0; k < s->streams; ++k) {
      s->done[k].store(0);
      s->claimed[k].store(false);
    }
    s->failed.store(false);
    ctx.SetOutput(std::move(out));
    return Status::Ok();
  }

  // Source, after a cut: the destination's ack decides what is re-sent.
  Status Rejoin(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    CPC_ASSIGN_OR_RETURN(auto s, Find(id, kRoleSource));
    if (s->running.load() != 0)
      return Status(Code::kFailedPrecondition,
                    "send calls still run: stop them before a rejoin");
    if (s->revoked.load() || s->start_sealed.load())
      return Status(Code::kFailedPrecondition,
                    "the final round began: a migration cannot rejoin then");
    CPC_RETURN_IF_ERROR(
        ImportRecords(s->back_rx->stream(0), ctx.platform(), r.rest(), &ctx)
            .WithContext("the destination's resume ack"));
    CPC_ASSIGN_OR_RETURN(Receiver::ResumeAck ack,
                         s->back_rx->TakePeerResumeAck());
    if (ack.records.size() != s->streams)
      return Status(Code::kRecordMalformed, "resume ack for another session");
    if (!s->journal.empty() && ack.epoch < s->journal.front().epoch)
      return Status(Code::kFailedPrecondition,
                    fmt::format("the destination is at epoch {}; this side "
                                "kept rounds from epoch {} on",
                                ack.epoch, s->journal.front().epoch));
    // Every page the destination may lack: the unacknowledged part of each
    // stream's share of its epoch, and all of every later round.
    const size_t ppr = s->tx->options().pages_per_record;
    std::vector<PageRef> lost;
    std::vector<uint64_t> covered(s->streams, 0);
    for (const Session::Round& rd : s->journal) {
      if (rd.epoch < ack.epoch) continue;
      for (uint32_t k = 0; k < s->streams; ++k) {
        const auto [first, count] = Share(rd.plan->size(), k, s->streams);
        size_t acked = 0;
        if (rd.epoch == ack.epoch) {
          // MEE fills records with pages_per_record pages but the last of
          // each call.
          uint64_t left = ack.records[k];
          for (const Session::Run& run : rd.runs[k]) {
            if (left == 0) break;
            const uint64_t take = std::min<uint64_t>(left, run.records);
            acked += take == run.records ? run.pages : take * ppr;
            left -= take;
          }
          if (left != 0)
            return Status(Code::kEpochMismatch,
                          fmt::format("the ack counts {} records of stream "
                                      "{} in epoch {}; fewer were sealed",
                                      ack.records[k], k, rd.epoch));
          covered[k] = ack.records[k];
        }
        lost.insert(lost.end(), rd.plan->begin() + first + acked,
                    rd.plan->begin() + first + count);
      }
    }
    for (uint32_t k = 0; k < s->streams; ++k)
      if (covered[k] != ack.records[k])
        return Status(Code::kEpochMismatch,
                      fmt::format("the ack counts {} records of stream {} in "
                                  "epoch {}; none were sealed",
                                  ack.records[k], k, ack.epoch));
    std::vector<uint8_t> resume(64 << 10);
    CPC_ASSIGN_OR_RETURN(size_t n,
                         s->tx->SealResume(ack.epoch, ack.records, resume));
    resume.resize(n);
    s->resume = std::move(resume);
    s->lost = std::move(lost);  // deduplicated by the next plan
    for (uint32_t k = 0; k < s->streams; ++k) {
      s->done[k].store(s->first_round);
      s->claimed[k].store(false);
    }
    s->plan_round.store(s->first_round);
    s->failed.store(false);
    std::vector<uint8_t> out;
    ByteWriter(&out).Int<uint32_t>(s->first_round);
    ctx.SetOutput(std::move(out));
    return Status::Ok();
  }

  Status Commit(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    CPC_ASSIGN_OR_RETURN(auto s, Find(id, kRoleDestination));
    if (!s->rx->started())
      return Status(Code::kIncomplete,
                    "the source's start token has not been accepted");
    // Every page the guest OS owns arrived at least once, in its latest
    // version (epochs), and every vCPU state (the start token checked it).
    const uint64_t have = s->rx->CountImportedPages();
    if (have != s->memory.pages)
      return Status(
          Code::kIncomplete,
          fmt::format("migrated {} of {} guest pages", have, s->memory.pages));
    CPC_RETURN_IF_ERROR(ctx.platform().SetGuestOsRunnable(true));
    std::vector<uint8_t> out;
    ByteWriter w(&out);
    w.Int<uint64_t>(have);
    w.Int<uint32_t>(s->rx->epoch());
    Erase(id);
    ctx.SetOutput(std::move(out));
    return Status::Ok();
  }

  Status Abort(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    const uint32_t reason = r.Int<uint32_t>();
    if (!r.done())
      return Status(Code::kInvalidArgument, "bad migrate.abort arguments");
    CPC_ASSIGN_OR_RETURN(auto s, Find(id, kRoleDestination));
    s->failed.store(true);
    std::vector<uint8_t> out(64 << 10);
    // Marks the receiver aborted first: no start token is accepted after.
    CPC_ASSIGN_OR_RETURN(
        size_t n, s->rx->AbortAndSeal(s->back_tx->stream(0), reason, out));
    out.resize(n);
    Erase(id);  // the guest OS stays revoked: this CVM never runs
    ctx.SetOutput(std::move(out));
    return Status::Ok();
  }

  std::mutex mu_;
  std::deque<Pending> pending_;
  std::map<SessionId, std::shared_ptr<Session>> sessions_;
};

}  // namespace
}  // namespace mig

std::unique_ptr<Module> MakeMigrateModule() {
  return std::make_unique<mig::MigrateModule>();
}

CPC_NAMESPACE_END
