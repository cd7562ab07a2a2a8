#include <cstdlib>

#include <catch2/catch.hpp>

#include <cpc/registry.h>

#include "core/fixtures.h"
#include "test_util.h"

using cpc::Code;

namespace {
// A backend whose only behaviour is its name: enough for registry plumbing.
class NamedBackend : public cpc::Backend {
 public:
  explicit NamedBackend(std::string n) : n_(std::move(n)) {}
  std::string_view name() const override { return n_; }
  cpc::Result<cpc::CvmHandle> LaunchCvm(const cpc::LaunchConfig&) override {
    return cpc::CvmHandle{1};
  }
  cpc::Status DestroyCvm(cpc::CvmHandle) override { return {}; }
  cpc::Result<uint32_t> CreateHvcpu(cpc::CvmHandle,
                                    const cpc::HvcpuConfig& c) override {
    return c.index;
  }
  cpc::Result<cpc::HvcpuExit> ScheduleHvcpu(cpc::CvmHandle, uint32_t,
                                            const cpc::HvcpuEntry&) override {
    return cpc::HvcpuExit{};
  }
  cpc::Result<cpc::SharedRegion> MapSharedRegion(cpc::CvmHandle) override {
    return cpc::SharedRegion{};
  }
  cpc::Status PauseGuest(cpc::CvmHandle) override { return {}; }
  cpc::Status ResumeGuest(cpc::CvmHandle) override { return {}; }
  cpc::Result<std::vector<cpc::Gpa>> ReadDirtyLog(cpc::CvmHandle,
                                                  bool) override {
    return std::vector<cpc::Gpa>{0x1000, 0x3000};
  }
  cpc::Result<std::vector<uint8_t>> RequestToken(
      cpc::CvmHandle, const cpc::TokenRequest&) override {
    return cpc::Status(Code::kNotApproved, "no agent");
  }
  cpc::Status ThrottleGuest(cpc::CvmHandle, double) override { return {}; }

 private:
  std::string n_;
};

class FakeFactory : public cpc::BackendFactory {
 public:
  FakeFactory(std::string n, bool avail) : n_(std::move(n)), avail_(avail) {}
  std::string_view name() const override { return n_; }
  std::string_view description() const override { return "test backend"; }
  bool Available() const override { return avail_; }
  std::vector<cpc::ProbeFact> Probe() const override {
    return {{"cpu", true, "ok"}, {"firmware", avail_, "model present"}};
  }
  cpc::Result<std::unique_ptr<cpc::Backend>> Create(
      const cpc::BackendOptions& o) const override {
    if (o.count("bogus"))
      return cpc::Status(Code::kInvalidArgument, "unknown option 'bogus'");
    return std::unique_ptr<cpc::Backend>(new NamedBackend(n_));
  }

 private:
  std::string n_;
  bool avail_;
};

// Fault injection by overriding one method of the wrapper.
class FailingDirtyLog : public cpc::BackendWrapper {
 public:
  using BackendWrapper::BackendWrapper;
  cpc::Result<std::vector<cpc::Gpa>> ReadDirtyLog(cpc::CvmHandle,
                                                  bool) override {
    return cpc::Status(Code::kIoError, "injected", 5);
  }
};
}  // namespace

TEST_CASE(
    "Backend selection distinguishes unknown, unavailable, misconfigured") {
  cpc::BackendRegistry reg;
  REQUIRE_OK(reg.Register(std::make_unique<FakeFactory>("alpha", false)));
  REQUIRE_OK(reg.Register(std::make_unique<FakeFactory>("beta", true)));
  REQUIRE_CODE(reg.Register(std::make_unique<FakeFactory>("beta", true)),
               Code::kAlreadyExists);

  auto unknown = reg.Create("gamma", {});
  REQUIRE_CODE(unknown, Code::kBackendUnknown);
  REQUIRE(unknown.status().message().find("alpha, beta") != std::string::npos);
  auto unavailable = reg.Create("alpha", {});
  REQUIRE_CODE(unavailable, Code::kBackendUnavailable);
  REQUIRE(unavailable.status().message().find("firmware") != std::string::npos);
  REQUIRE_CODE(reg.Create("beta", {{"bogus", "1"}}),
               Code::kBackendMisconfigured);
  auto ok = reg.Create("beta", {});
  REQUIRE_OK(ok);
  REQUIRE((*ok)->name() == "beta");
  // No name: the first available one.
  auto def = reg.Create("", {});
  REQUIRE_OK(def);
  REQUIRE((*def)->name() == "beta");
  // The environment variable picks by name.
  setenv("CPC_BACKEND", "alpha", 1);
  REQUIRE_CODE(reg.Create("", {}), Code::kBackendUnavailable);
  unsetenv("CPC_BACKEND");
  cpc::BackendRegistry empty;
  REQUIRE_CODE(empty.Create("", {}), Code::kBackendUnavailable);
}

TEST_CASE("BackendWrapper forwards everything and lets one method fail") {
  NamedBackend base("base");
  cpc::BackendWrapper plain(&base);
  REQUIRE(plain.name() == "base");
  REQUIRE(plain.ReadDirtyLog(1, true)->size() == 2);
  REQUIRE(*plain.CreateHvcpu(1, {3, cpc::Isolation::kSecure}) == 3);
  FailingDirtyLog faulty(&base);
  REQUIRE(faulty.name() == "base");
  auto r = faulty.ReadDirtyLog(1, true);
  REQUIRE_CODE(r, Code::kIoError);
  REQUIRE(r.status().subcode() == 5);
  REQUIRE_OK(faulty.PauseGuest(1));
}

TEST_CASE(
    "Module and operator registries refuse duplicates and unknown names") {
  cpc::ModuleRegistry modules;
  std::atomic<int> sink{0};
  REQUIRE_OK(modules.Register(std::make_unique<cpc_test::CountingModule>(
      "work", cpc::Isolation::kPlain, &sink)));
  REQUIRE_CODE(modules.Register(std::make_unique<cpc_test::CountingModule>(
                   "work", cpc::Isolation::kPlain, &sink)),
               Code::kAlreadyExists);
  REQUIRE_CODE(modules.Register(std::make_unique<cpc_test::CountingModule>(
                   "", cpc::Isolation::kPlain, &sink)),
               Code::kInvalidArgument);
  REQUIRE_OK(modules.Find("work"));
  REQUIRE_CODE(modules.Find("nope"), Code::kNotFound);
  REQUIRE(modules.Names() == std::vector<std::string>{"work"});

  struct Op : cpc::Operator {
    Op(cpc::OperatorKind k, std::string n) : k_(k), n_(std::move(n)) {}
    cpc::OperatorKind kind() const override { return k_; }
    std::string_view name() const override { return n_; }
    cpc::OperatorKind k_;
    std::string n_;
  };
  cpc::OperatorRegistry ops;
  REQUIRE_CODE(ops.Find(cpc::OperatorKind::kMee), Code::kNotFound);
  REQUIRE_OK(
      ops.Register(std::make_shared<Op>(cpc::OperatorKind::kMee, "mee-a")));
  REQUIRE_OK(
      ops.Register(std::make_shared<Op>(cpc::OperatorKind::kMee, "mee-b")));
  REQUIRE_CODE(
      ops.Register(std::make_shared<Op>(cpc::OperatorKind::kSee, "mee-a")),
      Code::kAlreadyExists);
  REQUIRE((*ops.Find(cpc::OperatorKind::kMee))->name() == "mee-a");
  REQUIRE((*ops.Find("mee-b"))->kind() == cpc::OperatorKind::kMee);
  REQUIRE_CODE(ops.Find(cpc::OperatorKind::kSdi), Code::kNotFound);
}
