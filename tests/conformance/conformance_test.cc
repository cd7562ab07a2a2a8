// The backend conformance suite: one set of tests every backend passes,
// run against each built-in backend through the public Backend interface
// (host face) and the CVM image's modules (guest face).
#include <fstream>
#include <thread>

#include <catch2/catch.hpp>

#include <cpc/policy.h>
#include <cpc/registry.h>
#include <cpc/runtime.h>

#include "conformance/canary.h"
#include "emulator/host.h"
#include "emulator/launch.h"
#include "modules/audit.h"
#include "test_util.h"

using cpc::Code;
using cpc::HvcpuEntry;
using cpc::HvcpuExit;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t kMem = 64ull << 20;
constexpr uint64_t kOsPages =
    (kMem - cpc::emu::kCpcRegionBytes) / cpc::kPageSize;

cpc::TenantPolicy Policy() {
  cpc::TenantPolicy p;
  cpc::ModulePolicy audit;
  audit.module = "audit";
  audit.procedures = {"digest"};
  audit.per_call = {1ull << 30, 0};
  cpc::ModulePolicy seal;
  seal.module = "sealprobe";
  seal.procedures = {"probe"};
  cpc::ModulePolicy hog;
  hog.module = "hog";
  hog.procedures = {"spin"};
  p.modules = {audit, seal, hog};
  return p;
}

struct Env {
  std::string backend;
  std::unique_ptr<cpc::Backend> b;
  cpc::emu::EmulatedBackend* emu = nullptr;
};

std::vector<Env> Backends() {
  std::vector<Env> out;
  for (const cpc::BackendFactory* f : cpc::BackendRegistry::Builtin().List()) {
    auto b = f->Create({{"image", CPC_TEST_CVM_IMAGE}});
    REQUIRE_OK(b);
    Env e;
    e.backend = std::string(f->name());
    e.b = std::move(b).value();
    e.emu = dynamic_cast<cpc::emu::EmulatedBackend*>(e.b.get());
    out.push_back(std::move(e));
  }
  REQUIRE_FALSE(out.empty());
  return out;
}

cpc::LaunchConfig Config(std::map<std::string, std::string> options = {}) {
  cpc::LaunchConfig c;
  c.memory_bytes = kMem;
  c.gvcpus = 2;
  c.hvcpus = {{0, cpc::Isolation::kPlain}, {1, cpc::Isolation::kSecure}};
  c.policy = Policy().Serialize();
  c.options = std::move(options);
  return c;
}

HvcpuEntry AuditEntry(std::vector<uint8_t> token, uint64_t pages = kOsPages) {
  HvcpuEntry e;
  e.module = "audit";
  e.procedure = "digest";
  e.token = std::move(token);
  e.args = cpc::AuditArgs(0, pages);
  e.slice = 20ms;
  return e;
}

cpc::Result<std::vector<uint8_t>> AuditToken(cpc::Backend& b,
                                             cpc::CvmHandle cvm) {
  return b.RequestToken(cvm, {"audit", "digest", {kMem, 0}});
}

// Drives audit.digest to completion (with a fresh token unless given one).
cpc::Result<std::vector<uint8_t>> Digest(cpc::Backend& b, cpc::CvmHandle cvm,
                                         uint32_t hvcpu = 0,
                                         std::vector<uint8_t> token = {}) {
  if (token.empty()) {
    CPC_ASSIGN_OR_RETURN(token, AuditToken(b, cvm));
  }
  CPC_ASSIGN_OR_RETURN(
      cpc::CallOutcome out,
      cpc::DriveCall(
          [&](const HvcpuEntry& e) { return b.ScheduleHvcpu(cvm, hvcpu, e); },
          AuditEntry(token), cpc::AbortPolicy{}));
  if (!out.status.ok()) return out.status;
  return out.output;
}

double CpuSeconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), {});
  // Fields after the ")" of the command name: utime is the 12th, stime 13th.
  std::istringstream in(s.substr(s.rfind(')') + 2));
  std::string tok;
  double utime = 0, stime = 0;
  for (int i = 1; i <= 13 && in >> tok; ++i) {
    if (i == 12) utime = std::stod(tok);
    if (i == 13) stime = std::stod(tok);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace

TEST_CASE(
    "conformance: launch measures image and policy and destroy cleans up") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto a = env.b->LaunchCvm(Config());
    REQUIRE_OK(a);
    auto b = env.b->LaunchCvm(Config());
    REQUIRE_OK(b);
    auto ia = env.emu->Info(*a), ib = env.emu->Info(*b);
    REQUIRE_OK(ia);
    REQUIRE_OK(ib);
    // Same image + policy: same measurement; two instances: two identities.
    REQUIRE(ia->identity.measurement == ib->identity.measurement);
    REQUIRE(ia->identity.instance_id != ib->identity.instance_id);
    REQUIRE(ia->identity.measurement != cpc::Digest{});
    REQUIRE(ia->hvcpu_isolation ==
            std::vector<cpc::Isolation>{cpc::Isolation::kPlain,
                                        cpc::Isolation::kSecure});
    // Another policy: another measurement.
    auto other = Config();
    auto pol = Policy();
    pol.modules.pop_back();
    other.policy = pol.Serialize();
    auto c = env.b->LaunchCvm(other);
    REQUIRE_OK(c);
    REQUIRE(env.emu->Info(*c)->identity.measurement !=
            ia->identity.measurement);
    auto shared = env.b->MapSharedRegion(*a);
    REQUIRE_OK(shared);
    REQUIRE(shared->size > 0);
    for (auto h : {*a, *b, *c}) REQUIRE_OK(env.b->DestroyCvm(h));
    REQUIRE_CODE(env.b->DestroyCvm(*a), Code::kNotFound);
    REQUIRE_CODE(env.b->PauseGuest(*a), Code::kNotFound);
    // Bad configurations are refused before anything starts.
    auto bad = Config();
    bad.memory_bytes = 3 << 20;
    REQUIRE_CODE(env.b->LaunchCvm(bad), Code::kInvalidArgument);
    bad = Config();
    bad.policy = {1, 2, 3};
    REQUIRE_CODE(env.b->LaunchCvm(bad), Code::kInvalidArgument);
    bad = Config({{"workload", "bogus"}});
    REQUIRE_CODE(env.b->LaunchCvm(bad), Code::kInvalidArgument);
  }
}

TEST_CASE("conformance: a guest-approved token runs a module on an hvCPU") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config(
        {{"workload", "dirty"}, {"dirty_mib_s", "64"}, {"wss_mib", "8"}}));
    REQUIRE_OK(cvm);
    // Running guest: memory changes between two audits.
    auto d1 = Digest(*env.b, *cvm);
    REQUIRE_OK(d1);
    REQUIRE(d1->size() == 40);
    std::this_thread::sleep_for(20ms);
    auto d2 = Digest(*env.b, *cvm);
    REQUIRE_OK(d2);
    REQUIRE(*d1 != *d2);
    // Paused guest: memory is stable, on either hvCPU. Its agent does not
    // run either, so tokens are obtained first.
    auto t1 = AuditToken(*env.b, *cvm), t2 = AuditToken(*env.b, *cvm);
    REQUIRE_OK(t1);
    REQUIRE_OK(t2);
    REQUIRE_OK(env.b->PauseGuest(*cvm));
    REQUIRE_CODE(AuditToken(*env.b, *cvm), Code::kFailedPrecondition);
    auto p1 = Digest(*env.b, *cvm, 0, *t1);
    auto p2 = Digest(*env.b, *cvm, 1, *t2);
    REQUIRE_OK(p1);
    REQUIRE_OK(p2);
    REQUIRE(*p1 == *p2);
    REQUIRE_OK(env.b->ResumeGuest(*cvm));
    // An hvCPU added after launch where the platform allows it.
    auto added = env.b->CreateHvcpu(*cvm, {5, cpc::Isolation::kPlain});
    if (added.ok()) {
      REQUIRE_OK(Digest(*env.b, *cvm, 5));
    } else {
      REQUIRE_CODE(added, Code::kFailedPrecondition);
    }
    REQUIRE_CODE(env.b->ScheduleHvcpu(*cvm, 9, AuditEntry({})),
                 Code::kNotFound);
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
  }
}

TEST_CASE(
    "conformance: the agent and the policy can refuse and tokens resist "
    "attacks") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config({{"agent.deny", "hog"}}));
    auto twin = env.b->LaunchCvm(Config());
    REQUIRE_OK(cvm);
    REQUIRE_OK(twin);
    REQUIRE_CODE(env.b->RequestToken(*cvm, {"hog", "spin", {}}),
                 Code::kNotApproved);
    REQUIRE_CODE(env.b->RequestToken(*cvm, {"nope", "x", {}}), Code::kNotFound);
    REQUIRE_CODE(
        env.b->RequestToken(*cvm, {"audit", "digest", {2ull << 30, 0}}),
        Code::kTokenOverBudget);

    auto token = env.b->RequestToken(*cvm, {"audit", "digest", {kMem, 0}});
    REQUIRE_OK(token);
    auto run = [&](cpc::CvmHandle h, std::vector<uint8_t> t) {
      auto exit = env.b->ScheduleHvcpu(h, 0, AuditEntry(std::move(t), 16));
      REQUIRE_OK(exit);
      REQUIRE(exit->reason == HvcpuExit::Reason::kCompleted);
      return exit->status;
    };
    // Moved to another CVM (same image and policy): refused there.
    REQUIRE_CODE(run(*twin, *token), Code::kTokenWrongCvm);
    // Forged by the host: refused.
    auto forged = *token;
    forged[110] ^= 0x40;
    REQUIRE_CODE(run(*cvm, forged), Code::kTokenForged);
    // Genuine: runs once; replayed: refused.
    REQUIRE_OK(run(*cvm, *token));
    REQUIRE_CODE(run(*cvm, *token), Code::kTokenReplayed);
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
    REQUIRE_OK(env.b->DestroyCvm(*twin));
  }
}

TEST_CASE(
    "conformance: the dirty log names written GPAs only, none while paused") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config(
        {{"workload", "dirty"}, {"dirty_mib_s", "64"}, {"wss_mib", "4"}}));
    REQUIRE_OK(cvm);
    REQUIRE_OK(env.b->ReadDirtyLog(*cvm, true));
    std::this_thread::sleep_for(100ms);
    auto dirty = env.b->ReadDirtyLog(*cvm, true);
    REQUIRE_OK(dirty);
    REQUIRE(dirty->size() > 16);
    REQUIRE(std::is_sorted(dirty->begin(), dirty->end()));
    // The workload writes its 4 MiB working set (after 17 OS pages), plus the
    // CPC's save areas; nothing else.
    const cpc::Gpa ws_lo = 17 * cpc::kPageSize, ws_hi = ws_lo + (4u << 20);
    size_t in_ws = 0;
    for (cpc::Gpa g : *dirty) in_ws += (g >= ws_lo && g < ws_hi);
    REQUIRE(in_ws * 10 >= dirty->size() * 9);
    REQUIRE_OK(env.b->PauseGuest(*cvm));
    REQUIRE_OK(env.b->ReadDirtyLog(*cvm, true));
    std::this_thread::sleep_for(50ms);
    auto quiet = env.b->ReadDirtyLog(*cvm, true);
    REQUIRE_OK(quiet);
    REQUIRE(quiet->empty());
    REQUIRE_OK(env.b->ResumeGuest(*cvm));
    std::this_thread::sleep_for(50ms);
    REQUIRE_FALSE(env.b->ReadDirtyLog(*cvm, false)->empty());
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
  }
}

TEST_CASE("conformance: the host never holds the guest's plaintext canary") {
  const std::array<uint8_t, 8> seed = {0xc0, 0xff, 0xee, 0x12,
                                       0x34, 0x56, 0x78, 0x9a};
  auto canary = cpc_test::MaskedCanary(seed);
  // Positive control: the scanner finds the secret where it is.
  {
    std::vector<uint8_t> planted(64);
    for (int i = 0; i < 32; ++i)
      planted[16 + i] = canary.masked[i] ^ canary.mask[i];
    REQUIRE(cpc_test::CountInProcessMemory(canary) >= 1);
    std::fill(planted.begin(), planted.end(), 0);
  }
  REQUIRE(cpc_test::CountInProcessMemory(canary) == 0);
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config({{"canary_seed", "c0ffee123456789a"},
                                        {"workload", "dirty"},
                                        {"dirty_mib_s", "32"},
                                        {"wss_mib", "8"}}));
    REQUIRE_OK(cvm);
    // The guest works on the secret-bearing memory; the host relays calls,
    // maps the shared region, reads the dirty log.
    REQUIRE_OK(Digest(*env.b, *cvm));
    REQUIRE_OK(env.b->ReadDirtyLog(*cvm, true));
    REQUIRE_OK(env.b->MapSharedRegion(*cvm));
    REQUIRE(cpc_test::CountInProcessMemory(canary) == 0);
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
  }
}

TEST_CASE("conformance: the guest OS cannot touch the CPC's memory") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config());
    REQUIRE_OK(cvm);
    auto info = env.emu->Info(*cvm);
    REQUIRE_OK(info);
    REQUIRE_OK(env.emu->GuestOsAccess(*cvm, 0x20000, true));
    for (cpc::Gpa gpa :
         {info->cpc_base, info->cpc_base + 0x10000, kMem - 0x1000}) {
      for (bool write : {false, true}) {
        auto s = env.emu->GuestOsAccess(*cvm, gpa, write);
        INFO(s.ToString());
        REQUIRE_FALSE(s.ok());
        REQUIRE((s.code() == Code::kPermissionDenied ||
                 s.code() == Code::kPlatformError));
      }
    }
    // Beyond guest memory: a nested page fault (or an argument error).
    auto beyond = env.emu->GuestOsAccess(*cvm, kMem + 0x1000, false);
    REQUIRE((beyond.code() == Code::kPermissionDenied ||
             beyond.code() == Code::kInvalidArgument));
    // The CVM survives the attempts and still serves calls.
    REQUIRE_OK(Digest(*env.b, *cvm));
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
  }
}

TEST_CASE(
    "conformance: a dishonest module is stopped; unscheduled hvCPUs do not "
    "run") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config());
    REQUIRE_OK(cvm);
    const pid_t pid = env.emu->Info(*cvm)->pid;
    auto token = env.b->RequestToken(*cvm, {"hog", "spin", {}});
    REQUIRE_OK(token);
    HvcpuEntry e;
    e.module = "hog";
    e.procedure = "spin";
    e.token = *token;
    e.slice = 10ms;
    auto exit = env.b->ScheduleHvcpu(*cvm, 0, e);
    REQUIRE_OK(exit);
    REQUIRE(exit->reason == HvcpuExit::Reason::kPreempted);
    // Not scheduled: the CVM (idle guest, parked hog) burns no CPU.
    const double before = CpuSeconds(pid);
    std::this_thread::sleep_for(300ms);
    REQUIRE(CpuSeconds(pid) - before < 0.1);
    // The abort protocol ends it: ABORTED, and the hvCPU serves again.
    cpc::AbortPolicy policy;
    policy.base_time = 30ms;
    policy.min_rate_bytes_per_s = 1e9;
    auto fresh = env.b->RequestToken(*cvm, {"hog", "spin", {}});
    REQUIRE_OK(fresh);
    e.token = *fresh;
    auto out = cpc::DriveCall(
        [&](const HvcpuEntry& x) { return env.b->ScheduleHvcpu(*cvm, 1, x); },
        e, policy);
    REQUIRE_OK(out);
    REQUIRE_CODE(out->status, Code::kAborted);
    REQUIRE(out->stats.preemptions >= 1);
    REQUIRE_OK(Digest(*env.b, *cvm, 1));
    // hvCPU 0 still holds the first, preempted call: a new call is refused
    // until the host aborts it.
    REQUIRE_CODE(env.b->ScheduleHvcpu(*cvm, 0, AuditEntry({})),
                 Code::kIllegalTransition);
    exit = env.b->ScheduleHvcpu(
        *cvm, 0,
        {HvcpuEntry::Kind::kAbort, exit->call_id, {}, {}, {}, {}, 0ns});
    REQUIRE_OK(exit);
    REQUIRE_CODE(exit->status, Code::kAborted);
    REQUIRE_OK(Digest(*env.b, *cvm, 0));
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
  }
}

TEST_CASE("conformance: a crashed CVM is reported, not hung on") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config());
    REQUIRE_OK(cvm);
    REQUIRE_OK(env.emu->Kill(*cvm));
    auto t = env.b->RequestToken(*cvm, {"audit", "digest", {kMem, 0}});
    REQUIRE_FALSE(t.ok());
    REQUIRE_CODE(env.b->ScheduleHvcpu(*cvm, 0, AuditEntry({})), Code::kIoError);
    REQUIRE_FALSE(env.b->PauseGuest(*cvm).ok());
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
  }
}

TEST_CASE(
    "conformance: sealing keys follow image and policy and not the instance") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto probe = [&](cpc::CvmHandle h, std::string ctx) {
      auto token = env.b->RequestToken(h, {"sealprobe", "probe", {}});
      REQUIRE_OK(token);
      HvcpuEntry e;
      e.module = "sealprobe";
      e.procedure = "probe";
      e.token = *token;
      e.args.assign(ctx.begin(), ctx.end());
      auto exit = env.b->ScheduleHvcpu(h, 0, e);
      REQUIRE_OK(exit);
      REQUIRE_OK(exit->status);
      REQUIRE(exit->output.size() == 32);
      return exit->output;
    };
    auto a = env.b->LaunchCvm(Config());
    auto b = env.b->LaunchCvm(Config());
    auto other = Config();
    auto pol = Policy();
    pol.modules.front().per_call.bytes /= 2;
    other.policy = pol.Serialize();
    auto c = env.b->LaunchCvm(other);
    REQUIRE_OK(a);
    REQUIRE_OK(b);
    REQUIRE_OK(c);
    REQUIRE(probe(*a, "snapshot") == probe(*b, "snapshot"));  // same identity
    REQUIRE(probe(*a, "snapshot") != probe(*a, "other"));     // per context
    REQUIRE(probe(*a, "snapshot") != probe(*c, "snapshot"));  // per policy
    for (auto h : {*a, *b, *c}) REQUIRE_OK(env.b->DestroyCvm(h));
  }
}
