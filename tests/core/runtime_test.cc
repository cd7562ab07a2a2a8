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
struct Cvm {
  cpc_test::ScriptedAgent agent;
  cpc::TokenAuthority auth{cpc_test::MakeIdentity(1), cpc_test::MakePolicy(),
                           &agent};
  cpc::ModuleRegistry modules;
  std::atomic<int> committed{0};
  cpc_test::CountingModule* work = nullptr;
  cpc_test::CountingModule* limited = nullptr;
  cpc::HvcpuRuntime hv0{0, cpc::Isolation::kPlain, {&auth, &modules, nullptr}};
  cpc::HvcpuRuntime hv1{1, cpc::Isolation::kSecure, {&auth, &modules, nullptr}};

  Cvm() {
    auto w = std::make_unique<cpc_test::CountingModule>(
        "work", cpc::Isolation::kPlain, &committed);
    work = w.get();
    REQUIRE_OK(modules.Register(std::move(w)));
    auto l = std::make_unique<cpc_test::CountingModule>(
        "limited", cpc::Isolation::kPlain, &committed);
    limited = l.get();
    REQUIRE_OK(modules.Register(std::move(l)));
    REQUIRE_OK(modules.Register(std::make_unique<cpc_test::CountingModule>(
        "seclog", cpc::Isolation::kSecure, &committed)));
  }
  HvcpuEntry Start(std::string module, std::string proc,
                   std::vector<uint8_t> args, uint64_t bytes = 1 << 20,
                   cpc::Duration slice = 0ns, uint64_t time_ms = 60'000) {
    HvcpuEntry e;
    e.kind = HvcpuEntry::Kind::kStart;
    e.module = module;
    e.procedure = proc;
    e.args = std::move(args);
    e.slice = slice;
    cpc::Budget b{bytes, time_ms};
    if (module == "limited" || module == "seclog") b = {};
    auto t = auth.Mint({module, proc, b});
    REQUIRE_OK(t);
    e.token = *t;
    return e;
  }
};

HvcpuEntry Next(HvcpuEntry::Kind kind, uint64_t id, cpc::Duration slice = 0ns) {
  HvcpuEntry e;
  e.kind = kind;
  e.call_id = id;
  e.slice = slice;
  return e;
}
}  // namespace

TEST_CASE(
    "A call runs Token Validation -> Core Tasks -> Yield Termination -> "
    "Reset") {
  Cvm cvm;
  auto exit = cvm.hv0.Enter(cvm.Start("work", "run", {4, 1}));
  REQUIRE_OK(exit);
  REQUIRE(exit->reason == HvcpuExit::Reason::kCompleted);
  REQUIRE_OK(exit->status);
  REQUIRE(exit->output == std::vector<uint8_t>{4});
  REQUIRE(exit->progress.bytes_done == 4096);
  REQUIRE(cvm.committed == 4);
  REQUIRE(cvm.hv0.state() == cpc::CallState::kIdle);
}

TEST_CASE(
    "A yielding call is resumed without a new token but a reset call "
    "never") {
  Cvm cvm;
  // Zero-length slices: the module yields after every unit.
  auto start = cvm.Start("work", "run", {3, 1}, 1 << 20, 1ns);
  auto exit = cvm.hv0.Enter(start);
  REQUIRE_OK(exit);
  REQUIRE(exit->reason == HvcpuExit::Reason::kYielded);
  const uint64_t id = exit->call_id;
  REQUIRE(cvm.hv0.state() == cpc::CallState::kSuspended);
  REQUIRE(cvm.committed == 0);  // nothing applied mid-call

  // While suspended: no new call, no foreign resume, no token reuse.
  REQUIRE_CODE(cvm.hv0.Enter(cvm.Start("work", "run", {1, 1})),
               Code::kIllegalTransition);
  REQUIRE_CODE(cvm.hv0.Enter(Next(HvcpuEntry::Kind::kResume, id + 100)),
               Code::kIllegalTransition);
  auto again = cvm.hv1.Enter(start);  // same token on another hvCPU
  REQUIRE_OK(again);
  REQUIRE_CODE(again->status, Code::kTokenReused);

  int yields = 1;
  for (;;) {
    exit = cvm.hv0.Enter(Next(HvcpuEntry::Kind::kResume, id, 1ns));
    REQUIRE_OK(exit);
    if (exit->reason == HvcpuExit::Reason::kCompleted) break;
    ++yields;
  }
  REQUIRE(yields == 3);
  REQUIRE_OK(exit->status);
  REQUIRE(cvm.committed == 3);
  // The call was reset: resuming or aborting it is refused for ever.
  REQUIRE_CODE(cvm.hv0.Enter(Next(HvcpuEntry::Kind::kResume, id)),
               Code::kIllegalTransition);
  REQUIRE_CODE(cvm.hv0.Enter(Next(HvcpuEntry::Kind::kAbort, id)),
               Code::kIllegalTransition);
  // And its token is spent.
  auto replay = cvm.hv0.Enter(start);
  REQUIRE_OK(replay);
  REQUIRE_CODE(replay->status, Code::kTokenReplayed);
  REQUIRE(cvm.hv0.state() == cpc::CallState::kIdle);
}

TEST_CASE("An aborted call applies nothing and runs its rollback") {
  Cvm cvm;
  auto exit = cvm.hv0.Enter(cvm.Start("work", "run", {5, 1}, 1 << 20, 1ns));
  REQUIRE_OK(exit);
  REQUIRE(exit->reason == HvcpuExit::Reason::kYielded);
  exit = cvm.hv0.Enter(Next(HvcpuEntry::Kind::kAbort, exit->call_id));
  REQUIRE_OK(exit);
  REQUIRE(exit->reason == HvcpuExit::Reason::kCompleted);
  REQUIRE_CODE(exit->status, Code::kAborted);
  REQUIRE(exit->output.empty());
  REQUIRE(cvm.committed == 0);
  REQUIRE(cvm.work->rollbacks == 1);
  REQUIRE(cvm.hv0.state() == cpc::CallState::kIdle);
}

TEST_CASE("Token and isolation failures end the call before any work") {
  Cvm cvm;
  // Forged token.
  auto e = cvm.Start("work", "run", {2, 1});
  e.token[106] ^= 1;  // inside the serial
  auto exit = cvm.hv0.Enter(e);
  REQUIRE_OK(exit);
  REQUIRE_CODE(exit->status, Code::kTokenForged);
  // Unknown module.
  e = cvm.Start("work", "run", {2, 1});
  e.module = "ghost";
  exit = cvm.hv0.Enter(e);
  REQUIRE_OK(exit);
  REQUIRE_CODE(exit->status, Code::kNotFound);
  // A Secure module on a plain hvCPU.
  exit = cvm.hv0.Enter(cvm.Start("seclog", "append", {1, 1}));
  REQUIRE_OK(exit);
  REQUIRE_CODE(exit->status, Code::kPermissionDenied);
  // ...runs on the isolated one.
  exit = cvm.hv1.Enter(cvm.Start("seclog", "append", {1, 1}));
  REQUIRE_OK(exit);
  REQUIRE_OK(exit->status);
  REQUIRE(cvm.work->steps == 0);
  REQUIRE(cvm.committed == 1);
}

TEST_CASE(
    "A call that outgrows its token's budget fails with nothing applied") {
  Cvm cvm;
  // 8 units of 1 KiB against a 4 KiB token.
  auto exit = cvm.hv0.Enter(cvm.Start("work", "run", {8, 1}, 4096));
  REQUIRE_OK(exit);
  REQUIRE_CODE(exit->status, Code::kBudgetExceeded);
  REQUIRE(exit->progress.bytes_done == 4096);
  REQUIRE(cvm.committed == 0);
  REQUIRE(cvm.work->rollbacks == 1);
  // A module error also rolls back.
  exit = cvm.hv0.Enter(cvm.Start("work", "run", {4, 1, 3}));
  REQUIRE_OK(exit);
  REQUIRE_CODE(exit->status, Code::kDataLoss);
  REQUIRE(cvm.committed == 0);
  // Time budget: 1 ms token, module spins 5 ms per unit.
  cvm.work->spin_us = 5000;
  exit = cvm.hv0.Enter(cvm.Start("work", "run", {3, 1}, 1 << 20, 0ns, 1));
  REQUIRE_OK(exit);
  REQUIRE_CODE(exit->status, Code::kBudgetExceeded);
  REQUIRE(cvm.committed == 0);
}

TEST_CASE("Calls run on several hvCPUs at once") {
  Cvm cvm;
  cpc::HvcpuRuntime hv2{
      2, cpc::Isolation::kPlain, {&cvm.auth, &cvm.modules, nullptr}};
  auto e0 = cvm.Start("work", "run", {50, 1}, 1 << 20, 1ns);
  auto e2 = cvm.Start("work", "audit", {50, 1}, 1 << 20, 1ns);
  auto drive = [](cpc::HvcpuRuntime& hv, HvcpuEntry e, cpc::Status* out) {
    auto r = cpc::DriveCall([&](const HvcpuEntry& x) { return hv.Enter(x); },
                            std::move(e), cpc::AbortPolicy{});
    *out = r.ok() ? r->status : r.status();
  };
  cpc::Status s0, s2;
  std::thread t0(drive, std::ref(cvm.hv0), e0, &s0);
  std::thread t2(drive, std::ref(hv2), e2, &s2);
  t0.join();
  t2.join();
  REQUIRE_OK(s0);
  REQUIRE_OK(s2);
  REQUIRE(cvm.committed == 100);
}

TEST_CASE("Destroying a runtime with a suspended call rolls it back") {
  Cvm cvm;
  {
    cpc::HvcpuRuntime hv{
        9, cpc::Isolation::kPlain, {&cvm.auth, &cvm.modules, nullptr}};
    auto exit = hv.Enter(cvm.Start("work", "run", {5, 1}, 1 << 20, 1ns));
    REQUIRE_OK(exit);
    REQUIRE(exit->reason == HvcpuExit::Reason::kYielded);
  }
  REQUIRE(cvm.work->rollbacks == 1);
  REQUIRE(cvm.committed == 0);
}
