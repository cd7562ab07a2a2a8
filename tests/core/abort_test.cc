#include <catch2/catch.hpp>

#include <cpc/runtime.h>

#include "core/fixtures.h"
#include "test_util.h"

using cpc::AbortMonitor;
using cpc::AbortPolicy;
using cpc::CallProgress;
using cpc::Code;
using namespace std::chrono_literals;

TEST_CASE("The time limit is derived from the work size") {
  AbortPolicy p;
  p.base_time = 100ms;
  p.min_rate_bytes_per_s = 1e6;  // 1 MB/s
  REQUIRE(p.TimeLimit(0) == 100ms);
  REQUIRE(p.TimeLimit(2'000'000) == 2100ms);
  AbortPolicy none;
  REQUIRE(none.TimeLimit(1 << 30) == cpc::Duration::max());

  const auto t0 = cpc::Clock::time_point{};
  AbortMonitor m(p, t0);
  CallProgress prog{500'000, 2'000'000};
  REQUIRE_OK(m.Observe(prog, t0 + 2000ms));
  REQUIRE_OK(m.Observe(prog, t0 + 2100ms));
  auto s = m.Observe(prog, t0 + 2101ms);
  REQUIRE_CODE(s, Code::kAborted);
  REQUIRE(s.message().find("time limit") != std::string::npos);
}

TEST_CASE("The throughput floor is measured over a sliding window") {
  AbortPolicy p;
  p.throughput_floor_bytes_per_s = 1000;
  p.window = 1s;
  const auto t0 = cpc::Clock::time_point{};
  AbortMonitor m(p, t0);
  // Not judged before one window has passed, however slow.
  REQUIRE_OK(m.Observe({0, 0}, t0 + 500ms));
  // 2000 B in the first 1.5 s: fine.
  REQUIRE_OK(m.Observe({2000, 0}, t0 + 1500ms));
  REQUIRE_OK(m.Observe({3000, 0}, t0 + 2000ms));
  // Then it stalls: over the last window only 200 B arrive.
  REQUIRE_OK(m.Observe({3100, 0}, t0 + 2500ms));
  auto s = m.Observe({3200, 0}, t0 + 3100ms);
  REQUIRE_CODE(s, Code::kAborted);
  REQUIRE(s.message().find("floor") != std::string::npos);
}

TEST_CASE("DriveCall aborts a slow call: ABORTED, nothing half-applied") {
  cpc_test::ScriptedAgent agent;
  cpc::TokenAuthority auth(cpc_test::MakeIdentity(2), cpc_test::MakePolicy(),
                           &agent);
  cpc::ModuleRegistry modules;
  std::atomic<int> committed{0};
  auto mod = std::make_unique<cpc_test::CountingModule>(
      "work", cpc::Isolation::kPlain, &committed);
  auto* work = mod.get();
  work->spin_us = 2000;  // 1 KiB per 2 ms = 0.5 MB/s
  REQUIRE_OK(modules.Register(std::move(mod)));
  cpc::HvcpuRuntime hv(0, cpc::Isolation::kPlain, {&auth, &modules, nullptr});

  cpc::HvcpuEntry e;
  e.module = "work";
  e.procedure = "run";
  e.args = {200, 1};  // 200 KiB: ~400 ms at the module's pace
  e.slice = 5ms;
  e.token = *auth.Mint({"work", "run", {1 << 20, 60'000}});

  AbortPolicy policy;
  policy.base_time = 20ms;
  policy.min_rate_bytes_per_s = 10e6;  // expects 200 KiB in 20 + 20 ms
  int progress_calls = 0;
  auto out = cpc::DriveCall(
      [&](const cpc::HvcpuEntry& x) { return hv.Enter(x); }, e, policy,
      [&](const cpc::CallProgress&, const cpc::CallStats&) {
        ++progress_calls;
      });
  REQUIRE_OK(out);
  REQUIRE_CODE(out->status, Code::kAborted);
  REQUIRE(out->status.message().find("abort protocol") != std::string::npos);
  REQUIRE(out->stats.yields >= 1);
  REQUIRE(progress_calls >= 1);
  REQUIRE(committed == 0);
  REQUIRE(work->rollbacks == 1);
  REQUIRE(work->steps < 200);
  REQUIRE(hv.state() == cpc::CallState::kIdle);

  // The same call without a bound completes and commits.
  work->spin_us = 0;
  e.token = *auth.Mint({"work", "run", {1 << 20, 60'000}});
  out = cpc::DriveCall([&](const cpc::HvcpuEntry& x) { return hv.Enter(x); }, e,
                       cpc::AbortPolicy{});
  REQUIRE_OK(out);
  REQUIRE_OK(out->status);
  REQUIRE(committed == 200);
  REQUIRE(out->stats.bytes == 200 * 1024);
}
