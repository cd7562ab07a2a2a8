#include <thread>

#include <catch2/catch.hpp>

#include <cpc/runtime.h>

#include "core/fixtures.h"
#include "test_util.h"

using cpc::Code;
using cpc::HvcpuEntry;
using cpc::HvcpuExit;
using namespace std::chrono_literals;

namespace {
struct HogCvm {
  cpc_test::ScriptedAgent agent;
  cpc::TokenAuthority auth{cpc_test::MakeIdentity(4), cpc_test::MakePolicy(),
                           &agent};
  cpc::ModuleRegistry modules;
  std::atomic<int> committed{0};
  cpc_test::HogModule* hog = nullptr;
  HogCvm() {
    auto h = std::make_unique<cpc_test::HogModule>(&committed);
    hog = h.get();
    REQUIRE_OK(modules.Register(std::move(h)));
  }
  HvcpuEntry Start(cpc::Duration slice, std::vector<uint8_t> args = {}) {
    HvcpuEntry e;
    e.module = "work";
    e.procedure = "run";
    e.slice = slice;
    e.args = std::move(args);
    e.token = *auth.Mint({"work", "run", {1 << 20, 60'000}});
    return e;
  }
};

uint64_t SpinsAfter(cpc_test::HogModule* hog, cpc::Duration d) {
  std::this_thread::sleep_for(d);
  return hog->spins.load();
}
}  // namespace

TEST_CASE("A hogging hvCPU is preempted and does not run unless scheduled") {
  HogCvm cvm;
  cpc::HvcpuRuntime hv(0, cpc::Isolation::kPlain,
                       {&cvm.auth, &cvm.modules, nullptr});
  const auto t0 = cpc::Clock::now();
  auto exit = hv.Enter(cvm.Start(10ms));
  REQUIRE_OK(exit);
  REQUIRE(exit->reason == HvcpuExit::Reason::kPreempted);
  REQUIRE(cpc::Clock::now() - t0 < 2s);  // the host got its CPU back
  REQUIRE(hv.preemptions() == 1);
  const uint64_t id = exit->call_id;

  // Descheduled: the counter is frozen while the host does not enter.
  const uint64_t frozen = SpinsAfter(cvm.hog, 0ms);
  REQUIRE(frozen > 0);
  REQUIRE(SpinsAfter(cvm.hog, 50ms) == frozen);

  // Scheduled again: it runs (exactly where it was) for one more slice.
  exit = hv.Enter({HvcpuEntry::Kind::kResume, id, {}, {}, {}, {}, 10ms});
  REQUIRE_OK(exit);
  REQUIRE(exit->reason == HvcpuExit::Reason::kPreempted);
  const uint64_t after = SpinsAfter(cvm.hog, 0ms);
  REQUIRE(after > frozen);
  REQUIRE(SpinsAfter(cvm.hog, 30ms) == after);

  // Abort: the hog never checks, so its context is discarded.
  exit = hv.Enter({HvcpuEntry::Kind::kAbort, id, {}, {}, {}, {}, 0ns});
  REQUIRE_OK(exit);
  REQUIRE(exit->reason == HvcpuExit::Reason::kCompleted);
  REQUIRE_CODE(exit->status, Code::kAborted);
  REQUIRE(hv.discarded_contexts() == 1);
  REQUIRE(cvm.committed == 0);
  REQUIRE(cvm.hog->rollbacks == 1);
  REQUIRE(hv.state() == cpc::CallState::kIdle);
  const uint64_t dead = SpinsAfter(cvm.hog, 0ms);
  REQUIRE(SpinsAfter(cvm.hog, 30ms) == dead);
  // The discarded call is gone for good.
  REQUIRE_CODE(hv.Enter({HvcpuEntry::Kind::kResume, id, {}, {}, {}, {}, 0ns}),
               Code::kIllegalTransition);

  // The hvCPU is usable again on a fresh context: a cooperative call runs.
  exit = hv.Enter(cvm.Start(5ms, {1}));
  REQUIRE_OK(exit);
  REQUIRE(exit->reason != HvcpuExit::Reason::kCompleted);
  exit =
      hv.Enter({HvcpuEntry::Kind::kAbort, exit->call_id, {}, {}, {}, {}, 0ns});
  REQUIRE_OK(exit);
  REQUIRE_CODE(exit->status, Code::kAborted);
  REQUIRE(hv.discarded_contexts() == 1);  // it unwound by itself
  REQUIRE(cvm.hog->rollbacks == 2);
}

TEST_CASE("The abort policy stops a dishonest module with nothing applied") {
  HogCvm cvm;
  cpc::HvcpuRuntime hv(0, cpc::Isolation::kPlain,
                       {&cvm.auth, &cvm.modules, nullptr});
  cpc::AbortPolicy policy;
  policy.base_time = 50ms;
  policy.min_rate_bytes_per_s = 1e9;  // 1 MiB of declared work: ~51 ms
  const auto t0 = cpc::Clock::now();
  auto out = cpc::DriveCall([&](const HvcpuEntry& e) { return hv.Enter(e); },
                            cvm.Start(5ms), policy);
  REQUIRE_OK(out);
  REQUIRE_CODE(out->status, Code::kAborted);
  REQUIRE(out->stats.preemptions >= 1);
  REQUIRE(cpc::Clock::now() - t0 < 5s);
  REQUIRE(cvm.committed == 0);
  REQUIRE(cvm.hog->rollbacks == 1);
  REQUIRE(hv.state() == cpc::CallState::kIdle);
}
