// Shared fixtures for core tests: a tenant policy, a scriptable guest agent
// and small modules exercising yield, commit/rollback and budgets.
#ifndef CPC_TESTS_CORE_FIXTURES_H_
#define CPC_TESTS_CORE_FIXTURES_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <cpc/policy.h>
#include <cpc/runtime.h>
#include <cpc/token.h>

namespace cpc_test {

class ScriptedAgent : public cpc::GuestAgent {
 public:
  bool Approve(const cpc::TokenRequest& r) override {
    ++asked;
    last = r;
    return approve;
  }
  bool approve = true;
  int asked = 0;
  cpc::TokenRequest last;
};

inline cpc::CvmIdentity MakeIdentity(uint8_t seed) {
  cpc::CvmIdentity id;
  id.measurement.fill(seed);
  id.instance_id.fill(static_cast<uint8_t>(seed + 1));
  return id;
}

inline cpc::TenantPolicy MakePolicy() {
  cpc::TenantPolicy p;
  cpc::ModulePolicy work;
  work.module = "work";
  work.procedures = {"run", "audit"};
  work.per_call = {1 << 20, 60'000};
  work.total_bytes = 3 << 20;
  cpc::ModulePolicy secure;
  secure.module = "seclog";
  secure.procedures = {"append"};
  secure.isolation = cpc::Isolation::kSecure;
  cpc::ModulePolicy limited;
  limited.module = "limited";
  limited.procedures = {"run"};
  limited.max_calls = 2;
  p.modules = {work, secure, limited};
  return p;
}

// Processes `units` units of `unit_bytes`, yielding between them; applies
// `*target += units` only on commit. Optionally ignores aborts.
class CountingModule : public cpc::Module {
 public:
  CountingModule(std::string name, cpc::Isolation iso, std::atomic<int>* target)
      : name_(std::move(name)), iso_(iso), target_(target) {}
  std::string_view name() const override { return name_; }
  std::vector<std::string> procedures() const override {
    return {"run", "audit", "append"};
  }
  cpc::Isolation isolation() const override { return iso_; }
  cpc::Status Run(cpc::CallContext& ctx) override {
    // args: [units, unit_kib, fail_at (0 = never)]
    auto a = ctx.args();
    const int units = a.size() > 0 ? a[0] : 1;
    const uint64_t unit_bytes = (a.size() > 1 ? a[1] : 1) * 1024ull;
    const int fail_at = a.size() > 2 ? a[2] : 0;
    ctx.SetWorkSize(units * unit_bytes);
    int done = 0;
    ctx.OnRollback([this] { ++rollbacks; });
    for (int i = 0; i < units; ++i) {
      if (i + 1 == fail_at)
        return cpc::Status(cpc::Code::kDataLoss, "module failure injected");
      CPC_RETURN_IF_ERROR(ctx.Charge(unit_bytes));
      ++done;
      ++steps;
      if (spin_us > 0) {
        auto until = cpc::Clock::now() + std::chrono::microseconds(spin_us);
        while (cpc::Clock::now() < until) {
        }
      }
      CPC_RETURN_IF_ERROR(ctx.MaybeYield());
    }
    ctx.OnCommit([this, done] { *target_ += done; });
    ctx.SetOutput({static_cast<uint8_t>(done)});
    return cpc::Status::Ok();
  }
  std::atomic<int> steps{0};
  std::atomic<int> rollbacks{0};
  int spin_us = 0;

 private:
  std::string name_;
  cpc::Isolation iso_;
  std::atomic<int>* target_;
};

// A dishonest module: spins forever without yielding; it stages a commit
// (that must never apply) and a rollback.
class HogModule : public cpc::Module {
 public:
  explicit HogModule(std::atomic<int>* target) : target_(target) {}
  std::string_view name() const override { return "work"; }
  std::vector<std::string> procedures() const override { return {"run"}; }
  cpc::Isolation isolation() const override { return cpc::Isolation::kPlain; }
  cpc::Status Run(cpc::CallContext& ctx) override {
    ctx.SetWorkSize(1 << 20);
    ctx.OnCommit([this] { *target_ += 1000; });
    ctx.OnRollback([this] { ++rollbacks; });
    if (ctx.args().empty()) {
      for (;;) spins.fetch_add(1, std::memory_order_relaxed);
    }
    // With an argument it spins but honours MaybeYield (checks it rarely).
    for (;;) {
      for (int i = 0; i < 1000; ++i)
        spins.fetch_add(1, std::memory_order_relaxed);
      CPC_RETURN_IF_ERROR(ctx.MaybeYield());
    }
  }
  std::atomic<uint64_t> spins{0};
  std::atomic<int> rollbacks{0};

 private:
  std::atomic<int>* target_;
};

}  // namespace cpc_test

#endif  // CPC_TESTS_CORE_FIXTURES_H_
