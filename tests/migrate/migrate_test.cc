// CPC-LiveMigration between two VMMs (two backends, two emulated machines)
// over TCP: equality proved inside the CVMs with a running workload, a
// man-in-the-middle that tampers, replays, reorders, drops, duplicates and
// truncates, never-both-run, destination crash, and a peer of another image.
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "child_processes.h"
#include "conformance/canary.h"
#include "emulator/host.h"
#include "migrate/migrate_fixture.h"
#include "test_util.h"

using namespace cpc_test::migrate;

TEST_CASE(
    "migrate: a running guest moves to another machine with equal memory "
    "proved inside the CVMs") {
  auto src = MakeBackend("1");
  auto dst = MakeBackend("2");
  for (uint32_t streams : {1u, 2u}) {
    INFO(streams << " streams");
    auto c = Config(streams);
    auto cvm = src->LaunchCvm(c);
    REQUIRE_OK(cvm);
    std::this_thread::sleep_for(30ms);
    auto src_audit = AuditToken(*src, *cvm);
    std::vector<MigrationStats> seen;
    auto r = Migrate(*src, *dst, *cvm, Options(c, streams));
    REQUIRE_OK(r.out);
    REQUIRE_OK(r.in);
    const MigrationStats& st = *r.out;
    CHECK(st.state == MigrationStats::State::kCompleted);
    CHECK(st.streams == streams);
    CHECK(st.rounds >= 2);  // the full pass, then at least the final round
    CHECK(st.pages_sent >= kGuestPages);
    CHECK(st.transferred_bytes > kGuestPages * kPageSize);
    CHECK(st.downtime > Duration::zero());
    CHECK(st.setup_time > Duration::zero());
    CHECK(r.in->stats.state == MigrationStats::State::kCompleted);
    // Equality inside the CVMs: the source at switch-over == destination.
    REQUIRE(MemDigest(*src, *cvm, src_audit) ==
            MemDigest(*dst, r.in->cvm, r.dst_audit));
    // Never both: the source's platform refuses to run it again.
    REQUIRE_CODE(src->ResumeGuest(*cvm), Code::kFailedPrecondition);
    REQUIRE_FALSE(Runs(*src, *cvm));
    REQUIRE_OK(dst->ResumeGuest(r.in->cvm));
    REQUIRE(Runs(*dst, r.in->cvm));
    REQUIRE_OK(dst->DestroyCvm(r.in->cvm));
    REQUIRE_OK(src->DestroyCvm(*cvm));
  }
}

TEST_CASE(
    "migrate: a man in the middle that tampers, replays, reorders, drops, "
    "duplicates or truncates is refused and the source carries on") {
  auto src = MakeBackend("1");
  auto dst = MakeBackend("2");
  auto c = Config(2);
  auto cvm = src->LaunchCvm(c);
  REQUIRE_OK(cvm);
  const uint64_t children = cpc_test::LiveChildren();
  using A = MitmProxy::Action;
  struct Attack {
    const char* name;
    A action;
    std::vector<Code> codes;
  };
  const std::vector<Attack> attacks = {
      {"tamper", A::kTamper, {Code::kAuthFailed}},
      {"replay", A::kReplay, {Code::kRecordReplayed}},
      {"reorder",
       A::kReorder,
       {Code::kRecordOutOfOrder, Code::kRecordReplayed}},
      {"drop", A::kDrop, {Code::kRecordOutOfOrder, Code::kEpochMismatch}},
      {"duplicate", A::kDuplicate, {Code::kRecordReplayed}},
      // A frame cut short inside a well-formed frame (a cut of the
      // connection mid-frame is a network cut: see the reconnect test).
      {"truncate", A::kShorten, {Code::kRecordTruncated}},
  };
  for (const Attack& a : attacks) {
    INFO(a.name);
    MitmProxy::Rule rule;
    rule.action = a.action;
    rule.connection = 1;  // the first data connection (0 is control)
    rule.type = kChunkFrame;
    rule.min_payload = 64 << 10;
    rule.ordinal = 3;
    std::unique_ptr<MitmProxy> proxy;
    auto r = Migrate(*src, *dst, *cvm, Options(c, 2), &proxy, {rule});
    REQUIRE(proxy->stats().rules_fired == 1);
    REQUIRE_FALSE(r.out.ok());
    REQUIRE_FALSE(r.in.ok());
    INFO("source: " << r.out.status().ToString());
    INFO("destination: " << r.in.status().ToString());
    // The destination names the attack; the source reports it.
    REQUIRE(std::find(a.codes.begin(), a.codes.end(), r.in.status().code()) !=
            a.codes.end());
    REQUIRE(r.out.status().code() != Code::kUnavailable);
    proxy.reset();
    // Nothing lost: no destination CVM is left, the source runs.
    REQUIRE(cpc_test::LiveChildren() == children);
    REQUIRE(Runs(*src, *cvm));
  }
  // And it can still migrate for real afterwards.
  auto src_audit = AuditToken(*src, *cvm);
  auto r = Migrate(*src, *dst, *cvm, Options(c, 2));
  REQUIRE_OK(r.out);
  REQUIRE_OK(r.in);
  REQUIRE(MemDigest(*src, *cvm, src_audit) ==
          MemDigest(*dst, r.in->cvm, r.dst_audit));
  REQUIRE_OK(dst->DestroyCvm(r.in->cvm));
  REQUIRE_OK(src->DestroyCvm(*cvm));
}

TEST_CASE("migrate: a peer of another image is refused before a page moves") {
  auto src = MakeBackend("1");
  auto dst = MakeBackend("2");
  auto c = Config(1);
  auto cvm = src->LaunchCvm(c);
  REQUIRE_OK(cvm);
  const uint64_t children = cpc_test::LiveChildren();
  IncomingOptions in;
  in.image = CPC_TEST_CVM_IMAGE;  // another build: another measurement
  std::unique_ptr<MitmProxy> proxy;
  auto r = Migrate(*src, *dst, *cvm, Options(c, 1), &proxy, {}, in);
  REQUIRE_CODE(r.in, Code::kMeasurementMismatch);
  REQUIRE_FALSE(r.out.ok());
  INFO(r.out.status().ToString());
  REQUIRE(r.out.status().code() == Code::kMeasurementMismatch);
  // No page moved: only the control connection carried anything.
  REQUIRE(proxy->stats().connections == 1);
  proxy.reset();
  REQUIRE(cpc_test::LiveChildren() == children);
  REQUIRE(Runs(*src, *cvm));
  REQUIRE_OK(src->DestroyCvm(*cvm));
}

TEST_CASE("migrate: a destination crash leaves the source running") {
  auto src = MakeBackend("1");
  auto dst = MakeBackend("2");
  // A guest that dirties faster than it converges with a tiny downtime
  // limit: precopy runs until the crash.
  auto c = Config(1, "512", "16");
  auto cvm = src->LaunchCvm(c);
  REQUIRE_OK(cvm);
  auto o = Options(c, 1);
  o.downtime_limit = 1us;
  o.auto_converge = false;
  o.max_rounds = 100000;
  o.deadline = 60s;
  std::atomic<CvmHandle> victim{0};
  IncomingOptions in;
  std::promise<std::string> where;
  in.listen = "127.0.0.1:0";
  in.on_listening = [&](const std::string& a) { where.set_value(a); };
  in.before_pause = [&](CvmHandle h) { victim = h; };
  Result<IncomingResult> incoming = Status(Code::kInternal, "not run");
  std::thread t([&] { incoming = MigrateIn(*dst, in); });
  o.destination = where.get_future().get();
  std::thread killer([&] {
    while (victim.load() == 0) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(400ms);  // well into precopy
    auto* emu = dynamic_cast<emu::EmulatedBackend*>(dst.get());
    REQUIRE(emu != nullptr);
    REQUIRE_OK(emu->Kill(victim.load()));
  });
  auto out = MigrateOut(*src, *cvm, o);
  killer.join();
  t.join();
  REQUIRE_FALSE(incoming.ok());
  REQUIRE_FALSE(out.ok());
  INFO(out.status().ToString());
  REQUIRE(out.status().code() != Code::kUnavailable);
  REQUIRE(Runs(*src, *cvm));
  REQUIRE_OK(src->DestroyCvm(*cvm));
}

TEST_CASE(
    "migrate: a guest that dirties faster than the link converges by "
    "throttling") {
  auto src = MakeBackend("1");
  auto dst = MakeBackend("2");
  // The guest rewrites its working set faster than a round can send it, and
  // what it dirties during the first round takes longer to send than the
  // downtime limit (~130 of 192 MiB at ~3.5 GB/s here: ~40 ms). Measured
  // throttle 0.83-0.90 (ASan 0.93-0.95), 4 rounds. The earlier 48 MiB set
  // written at 1 GB/s stopped meeting that once import got faster: the
  // migration switched over after its first round, unthrottled.
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer slows the sealing hvCPUs far more than the guest's plain
  // stores: the 48 MiB set at 1 GB/s with a 200 ms limit (below) already
  // needs throttling there; the set above outran even the 99 % cap.
  auto c = Config(2, "1000", "48");
#else
  auto c = Config(2, "3000", "192", 256ull << 20);
#endif
  auto cvm = src->LaunchCvm(c);
  REQUIRE_OK(cvm);
  std::this_thread::sleep_for(50ms);
  auto src_audit = AuditToken(*src, *cvm);
  auto o = Options(c, 2);
  o.downtime_limit = 20ms;  // ASan builds converge under it too
#if defined(__SANITIZE_THREAD__)
  // Even at the 99 % throttle cap the guest outran a 20 ms limit there (64
  // rounds). The set still takes ~10 rounds' worth unthrottled.
  o.downtime_limit = 200ms;
#endif
  o.max_rounds = 64;
  o.deadline = 100s;  // a clear failure before ctest's 120 s kill
  auto r = Migrate(*src, *dst, *cvm, o);
  REQUIRE_OK(r.out);
  REQUIRE_OK(r.in);
  INFO("rounds " << r.out->rounds << " throttle " << r.out->throttle);
  CHECK(r.out->throttle > 0);
  CHECK(r.out->rounds < o.max_rounds - 1);  // converged, not forced
  REQUIRE(MemDigest(*src, *cvm, src_audit) ==
          MemDigest(*dst, r.in->cvm, r.dst_audit));
  REQUIRE_OK(dst->DestroyCvm(r.in->cvm));
  REQUIRE_OK(src->DestroyCvm(*cvm));
}

TEST_CASE(
    "migrate: a network cut during precopy reconnects and re-sends only what "
    "the destination lacks") {
  auto src = MakeBackend("1");
  auto dst = MakeBackend("2");
  constexpr uint64_t kBig = 256ull << 20;
  using A = MitmProxy::Action;
  struct Cut {
    const char* name;
    A action;
    int connection;    // 0 = control, 1.. = data streams
    bool all = false;  // every connection at once, from outside
    bool idle = true;  // else a running workload
  };
  const std::vector<Cut> cuts = {
      {"one data connection", A::kCut, 1},
      {"mid-frame on the other stream", A::kTruncate, 2},
      {"every connection under a running workload", A::kCut, -1, true, false},
  };
  for (const Cut& cut : cuts) {
    INFO(cut.name);
    auto c = Config(2, "4", "2", kBig);
    if (cut.idle) c.options["workload"] = "idle";
    auto cvm = src->LaunchCvm(c);
    REQUIRE_OK(cvm);
    auto src_audit = AuditToken(*src, *cvm, kBig);
    std::vector<MitmProxy::Rule> rules;
    if (!cut.all) {
      MitmProxy::Rule rule;
      rule.action = cut.action;
      rule.connection = cut.connection;
      rule.type = kChunkFrame;
      rule.min_payload = 64 << 10;
      rule.ordinal = 48;  // about 48 MiB into the stream: mid round 0
      rules.push_back(rule);
    }
    std::unique_ptr<MitmProxy> proxy;
    std::atomic<bool> done{false};
    std::thread cutter;
    // The outside cut: once about 96 frames went through.
    auto cut_all = [&](MitmProxy& p) {
      cutter = std::thread([&, pp = &p] {
        while (!done.load() && pp->stats().frames_read[0] < 96)
          std::this_thread::sleep_for(1ms);
        if (!done.load()) pp->CutAll();
      });
    };
    auto o = Options(c, 2);
    o.reconnect_timeout = 20s;
    IncomingOptions in;
    in.reconnect_timeout = 20s;
    Outcome r =
        Migrate(*src, *dst, *cvm, o, &proxy, rules, in,
                cut.all ? std::function<void(MitmProxy&)>(cut_all) : nullptr);
    done = true;
    if (cutter.joinable()) cutter.join();
    INFO("source: " << r.out.status().ToString());
    INFO("destination: " << r.in.status().ToString());
    REQUIRE_OK(r.out);
    REQUIRE_OK(r.in);
    if (!cut.all) REQUIRE(proxy->stats().rules_fired == 1);
    CHECK(r.out->reconnects == 1);
    CHECK(r.in->stats.reconnects == 1);
    INFO("imported " << r.in->stats.pages_sent << " of " << GuestPages(kBig));
    // What was in flight at the cut (TCP buffers, rings) is lost and sent
    // again; nothing the destination held is: with an idle guest every page
    // is imported once, but the few its agent writes (starting over would
    // import the 48+ MiB before the cut twice).
    if (cut.idle) {
      CHECK(r.in->stats.pages_sent >= GuestPages(kBig));
      CHECK(r.in->stats.pages_sent < GuestPages(kBig) + 256);
    }
    REQUIRE(MemDigest(*src, *cvm, src_audit, kBig) ==
            MemDigest(*dst, r.in->cvm, r.dst_audit, kBig));
    REQUIRE_OK(dst->DestroyCvm(r.in->cvm));
    REQUIRE_OK(src->DestroyCvm(*cvm));
  }
}

TEST_CASE(
    "migrate: a cut after the pause still ends with exactly one side "
    "running") {
  auto src = MakeBackend("1");
  auto dst = MakeBackend("2");
  auto c = Config(2);
  auto cvm = src->LaunchCvm(c);
  REQUIRE_OK(cvm);
  const uint64_t children = cpc_test::LiveChildren();
  // Stream 0's last frame carries the start token: cut the connection
  // instead. The source has sealed it, so only the destination's abort
  // token can give it its guest back; the verdict must survive the cut (the
  // source reconnects to ask for it) or the source stays paused.
  MitmProxy::Rule rule;
  rule.action = MitmProxy::Action::kCut;
  rule.connection = 1;
  rule.type = kChunkFrame;
  rule.flags = 4 | 1;  // ring::kTokens | ring::kEndOfStream
  auto o = Options(c, 2);
  o.reconnect_timeout = 10s;
  IncomingOptions in;
  in.reconnect_timeout = 10s;
  std::unique_ptr<MitmProxy> proxy;
  auto r = Migrate(*src, *dst, *cvm, o, &proxy, {rule}, in);
  REQUIRE(proxy->stats().rules_fired == 1);
  INFO("source: " << r.out.status().ToString());
  INFO("destination: " << r.in.status().ToString());
  // The destination never saw the start token: it aborted, and the source
  // got the abort token on a new connection.
  REQUIRE_FALSE(r.in.ok());
  REQUIRE_FALSE(r.out.ok());
  REQUIRE(r.out.status().code() != Code::kUnavailable);
  proxy.reset();
  REQUIRE(cpc_test::LiveChildren() == children);
  REQUIRE(Runs(*src, *cvm));
  REQUIRE_OK(src->DestroyCvm(*cvm));
}
