// The backend conformance suite: one set of tests every backend passes,
// run against each built-in backend through the public Backend interface
// (host face) and the CVM image's modules (guest face).
#include <algorithm>
#include <cmath>
#include <fcntl.h>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cpc/policy.h>
#include <cpc/registry.h>
#include <cpc/runtime.h>

#include "conformance/canary.h"
#include "emulator/host.h"
#include "emulator/launch.h"
#include "emulator/memory.h"
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
  cpc::ModulePolicy probe;
  probe.module = "probe";
  probe.procedures = {"written", "runnable", "evidence", "verify", "file"};
  p.modules = {audit, seal, probe, hog};
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

// A token for the test image's "probe" module (see test_image.cc).
std::vector<uint8_t> ProbeToken(cpc::Backend& b, cpc::CvmHandle cvm,
                                const std::string& procedure) {
  auto t = b.RequestToken(cvm, {"probe", procedure, {}});
  REQUIRE_OK(t);
  return *t;
}

// Runs probe.`procedure` with `args` to completion; the call's own outcome.
cpc::Result<std::vector<uint8_t>> Probe(cpc::Backend& b, cpc::CvmHandle cvm,
                                        const std::string& procedure,
                                        std::vector<uint8_t> args = {},
                                        std::vector<uint8_t> token = {}) {
  if (token.empty()) token = ProbeToken(b, cvm, procedure);
  HvcpuEntry e;
  e.module = "probe";
  e.procedure = procedure;
  e.token = std::move(token);
  e.args = std::move(args);
  CPC_ASSIGN_OR_RETURN(HvcpuExit exit, b.ScheduleHvcpu(cvm, 0, e));
  REQUIRE(exit.reason == HvcpuExit::Reason::kCompleted);
  if (!exit.status.ok()) return exit.status;
  return exit.output;
}

std::vector<cpc::Gpa> Gpas(const std::vector<uint8_t>& le) {
  REQUIRE(le.size() % 8 == 0);
  std::vector<cpc::Gpa> out(le.size() / 8);
  for (size_t i = 0; i < out.size(); ++i)
    for (int b = 0; b < 8; ++b)
      out[i] |= static_cast<cpc::Gpa>(le[i * 8 + b]) << (8 * b);
  return out;
}

// TakeWrittenPages inside the CVM (with a token obtained earlier if given).
std::vector<cpc::Gpa> Written(cpc::Backend& b, cpc::CvmHandle cvm,
                              std::vector<uint8_t> token = {}) {
  auto out = Probe(b, cvm, "written", {}, std::move(token));
  REQUIRE_OK(out);
  return Gpas(*out);
}

cpc::Status SetRunnable(cpc::Backend& b, cpc::CvmHandle cvm, bool runnable,
                        std::vector<uint8_t> token) {
  auto out = Probe(b, cvm, "runnable", {static_cast<uint8_t>(runnable)},
                   std::move(token));
  return out.status();
}

// Where a backend's evidence carries the signed report (to tamper with it).
std::optional<size_t> EvidenceReportOffset(const std::string& backend) {
  if (backend == "sev-snp") return 12;  // sev::kEvidenceReportOffset
  return std::nullopt;
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
    "conformance: a dishonest module is stopped and unscheduled hvCPUs do "
    "not run") {
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

TEST_CASE(
    "conformance: the platform's written-page record survives the host "
    "re-arming its dirty log") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config(
        {{"workload", "dirty"}, {"dirty_mib_s", "64"}, {"wss_mib", "4"}}));
    REQUIRE_OK(cvm);
    const cpc::Gpa cpc_base = env.emu->Info(*cvm)->cpc_base;
    // The first call names every page written since launch (the guest OS
    // booted: its allocator wrote every page of its area), all below the
    // CPC region, sorted.
    auto first = Written(*env.b, *cvm);
    REQUIRE(first.size() > kOsPages / 2);
    REQUIRE(std::is_sorted(first.begin(), first.end()));
    REQUIRE(first.back() < cpc_base);

    // Both records start clean at the same instant (the guest is paused).
    auto t0 = ProbeToken(*env.b, *cvm, "written");
    REQUIRE_OK(env.b->PauseGuest(*cvm));
    REQUIRE_OK(env.b->ReadDirtyLog(*cvm, true));
    (void)Written(*env.b, *cvm, t0);
    REQUIRE_OK(env.b->ResumeGuest(*cvm));
    // The (adversarial) host re-arms its own log over and over while the
    // guest writes: every write it saw is still in the platform's record,
    // and the record is not empty.
    std::set<cpc::Gpa> host_saw;
    for (int i = 0; i < 40; ++i) {
      auto d = env.b->ReadDirtyLog(*cvm, true);
      REQUIRE_OK(d);
      for (cpc::Gpa g : *d)
        if (g < cpc_base) host_saw.insert(g);
      std::this_thread::sleep_for(3ms);
    }
    REQUIRE(host_saw.size() > 16);
    auto taken = Written(*env.b, *cvm);
    REQUIRE(std::is_sorted(taken.begin(), taken.end()));
    REQUIRE(taken.size() > 16);
    const std::set<cpc::Gpa> taken_set(taken.begin(), taken.end());
    for (cpc::Gpa g : host_saw) REQUIRE(taken_set.count(g) == 1);
    // The host's log is unaffected by the platform's takes.
    std::this_thread::sleep_for(30ms);
    (void)Written(*env.b, *cvm);
    REQUIRE(env.b->ReadDirtyLog(*cvm, false)->size() > 0);

    // Paused: after one take (which holds the pause's own log entry), no
    // page is written.
    auto t1 = ProbeToken(*env.b, *cvm, "written");
    auto t2 = ProbeToken(*env.b, *cvm, "written");
    REQUIRE_OK(env.b->PauseGuest(*cvm));
    (void)Written(*env.b, *cvm, t1);
    std::this_thread::sleep_for(50ms);
    REQUIRE(Written(*env.b, *cvm, t2).empty());
    REQUIRE_OK(env.b->ResumeGuest(*cvm));
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
  }
}

// probe.file: the size of the CVM's shared file, and its bytes [off, +len).
cpc::Result<std::pair<uint64_t, std::vector<uint8_t>>> ReadSharedFile(
    cpc::Backend& b, cpc::CvmHandle cvm, uint64_t off, uint64_t len) {
  std::vector<uint8_t> args(16);
  std::memcpy(args.data(), &off, 8);
  std::memcpy(args.data() + 8, &len, 8);
  CPC_ASSIGN_OR_RETURN(auto out, Probe(b, cvm, "file", args));
  REQUIRE(out.size() == 8 + len);
  uint64_t size = 0;
  std::memcpy(&size, out.data(), 8);
  return std::make_pair(size, std::vector<uint8_t>(out.begin() + 8, out.end()));
}

TEST_CASE(
    "conformance: a host file attached to the CVM is read in place, and a "
    "host shrinking or detaching it cannot crash the CVM") {
  char path[] = "/tmp/cpc-attach-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::unlink(path);
  std::vector<uint8_t> bytes((3u << 20) + 123);  // not a page multiple
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<uint8_t>(i * 7 + (i >> 12));
  REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), 0) ==
          static_cast<ssize_t>(bytes.size()));
  for (auto& env : Backends()) {
    INFO(env.backend);
    REQUIRE(::ftruncate(fd, 0) == 0);
    REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), 0) ==
            static_cast<ssize_t>(bytes.size()));
    auto cvm = env.b->LaunchCvm(Config());
    REQUIRE_OK(cvm);
    // Nothing attached: the module sees no file.
    auto none = ReadSharedFile(*env.b, *cvm, 0, 0);
    REQUIRE_OK(none);
    REQUIRE(none->first == 0);

    auto size = env.b->AttachSharedFile(*cvm, fd);
    REQUIRE_OK(size);
    REQUIRE(*size == bytes.size());
    auto head = ReadSharedFile(*env.b, *cvm, 0, 4096);
    REQUIRE_OK(head);
    REQUIRE(head->first == bytes.size());
    REQUIRE(head->second ==
            std::vector<uint8_t>(bytes.begin(), bytes.begin() + 4096));
    auto tail = ReadSharedFile(*env.b, *cvm, bytes.size() - 200, 200);
    REQUIRE_OK(tail);
    REQUIRE(tail->second ==
            std::vector<uint8_t>(bytes.end() - 200, bytes.end()));
    REQUIRE(ReadSharedFile(*env.b, *cvm, bytes.size() - 1, 2).status().code() ==
            Code::kInvalidArgument);

    // In place, not a copy: the host's later write shows.
    const uint8_t x = static_cast<uint8_t>(~bytes[5000]);
    REQUIRE(::pwrite(fd, &x, 1, 5000) == 1);
    auto changed = ReadSharedFile(*env.b, *cvm, 5000, 1);
    REQUIRE_OK(changed);
    REQUIRE(changed->second[0] == x);

    // The host cuts the file to 1 MiB: the pages beyond read as zeros (a
    // plain mapping would raise SIGBUS and kill the CVM), the rest as before.
    REQUIRE(::ftruncate(fd, 1 << 20) == 0);
    auto cut = ReadSharedFile(*env.b, *cvm, (2u << 20) + 10, 4096);
    REQUIRE_OK(cut);
    REQUIRE(cut->second == std::vector<uint8_t>(4096, 0));
    auto kept = ReadSharedFile(*env.b, *cvm, 100, 100);
    REQUIRE_OK(kept);
    REQUIRE(kept->second ==
            std::vector<uint8_t>(bytes.begin() + 100, bytes.begin() + 200));

    // Detached: the module sees no file any more; the CVM lives on.
    REQUIRE_OK(env.b->DetachSharedFile(*cvm));
    auto gone = ReadSharedFile(*env.b, *cvm, 0, 0);
    REQUIRE_OK(gone);
    REQUIRE(gone->first == 0);
    REQUIRE_OK(env.b->DetachSharedFile(*cvm));  // twice is fine
    REQUIRE_OK(Digest(*env.b, *cvm));

    // Only non-empty regular files.
    int p[2];
    REQUIRE(::pipe(p) == 0);
    REQUIRE(env.b->AttachSharedFile(*cvm, p[0]).status().code() ==
            Code::kInvalidArgument);
    ::close(p[0]);
    ::close(p[1]);
    REQUIRE(::ftruncate(fd, 0) == 0);
    REQUIRE(env.b->AttachSharedFile(*cvm, fd).status().code() ==
            Code::kInvalidArgument);
    REQUIRE(env.b->AttachSharedFile(*cvm, -1).status().code() ==
            Code::kInvalidArgument);
    REQUIRE(env.b->AttachSharedFile(9999, fd).status().code() ==
            Code::kNotFound);
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
  }
  ::close(fd);
}

TEST_CASE(
    "conformance: a revoked guest OS cannot be resumed by the host until the "
    "platform restores it") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config(
        {{"workload", "dirty"}, {"dirty_mib_s", "64"}, {"wss_mib", "4"}}));
    REQUIRE_OK(cvm);
    // The guest agent answers only while the guest runs: tokens first.
    auto refused = ProbeToken(*env.b, *cvm, "runnable");
    auto revoke = ProbeToken(*env.b, *cvm, "runnable");
    auto restore = ProbeToken(*env.b, *cvm, "runnable");
    REQUIRE_CODE(SetRunnable(*env.b, *cvm, false, refused),
                 Code::kFailedPrecondition);
    REQUIRE_OK(env.b->PauseGuest(*cvm));
    REQUIRE_OK(SetRunnable(*env.b, *cvm, false, revoke));
    auto resumed = env.b->ResumeGuest(*cvm);
    REQUIRE_CODE(resumed, Code::kFailedPrecondition);
    REQUIRE_THAT(resumed.message(), Catch::Contains("may not run"));
    // ... and the guest indeed does not run.
    REQUIRE_OK(env.b->ReadDirtyLog(*cvm, true));
    std::this_thread::sleep_for(50ms);
    auto quiet = env.b->ReadDirtyLog(*cvm, true);
    REQUIRE_OK(quiet);
    REQUIRE(quiet->empty());
    REQUIRE_OK(SetRunnable(*env.b, *cvm, true, restore));
    REQUIRE_OK(env.b->ResumeGuest(*cvm));
    std::this_thread::sleep_for(50ms);
    REQUIRE_FALSE(env.b->ReadDirtyLog(*cvm, true)->empty());
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
  }
}

TEST_CASE(
    "conformance: peer evidence verifies across chips for the same image and "
    "policy only") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    // Another machine of the same vendor: another chip.
    auto f = cpc::BackendRegistry::Builtin().Find(env.backend);
    REQUIRE_OK(f);
    auto other_chip =
        (*f)->Create({{"image", CPC_TEST_CVM_IMAGE}, {"chip_seed", "2"}});
    REQUIRE_OK(other_chip);
    auto a = env.b->LaunchCvm(Config());
    auto b = (*other_chip)->LaunchCvm(Config());
    auto other = Config();
    auto pol = Policy();
    pol.modules.front().per_call.bytes /= 2;
    other.policy = pol.Serialize();
    auto c = (*other_chip)->LaunchCvm(other);
    REQUIRE_OK(a);
    REQUIRE_OK(b);
    REQUIRE_OK(c);

    std::vector<uint8_t> rd(64);
    for (size_t i = 0; i < rd.size(); ++i) rd[i] = static_cast<uint8_t>(i * 7);
    auto evidence = Probe(*env.b, *a, "evidence", rd);
    REQUIRE_OK(evidence);
    REQUIRE(evidence->size() > 64);
    auto verify = [&](cpc::Backend& be, cpc::CvmHandle h,
                      const std::vector<uint8_t>& data,
                      const std::vector<uint8_t>& ev) {
      std::vector<uint8_t> args = data;
      args.insert(args.end(), ev.begin(), ev.end());
      return Probe(be, h, "verify", args).status();
    };
    // Same image + policy on another chip: genuine peer.
    REQUIRE_OK(verify(**other_chip, *b, rd, *evidence));
    REQUIRE_OK(verify(*env.b, *a, rd, *evidence));
    // Another policy: another launch measurement.
    REQUIRE_CODE(verify(**other_chip, *c, rd, *evidence),
                 Code::kMeasurementMismatch);
    // Another challenge.
    auto rd2 = rd;
    rd2[5] ^= 1;
    REQUIRE_CODE(verify(**other_chip, *b, rd2, *evidence),
                 Code::kReportDataMismatch);
    // Tampered or malformed evidence.
    if (auto off = EvidenceReportOffset(env.backend)) {
      auto flipped = *evidence;
      flipped[*off + 0x90] ^= 0x01;  // in the signed measurement
      REQUIRE_CODE(verify(**other_chip, *b, rd, flipped),
                   Code::kReportBadSignature);
    }
    REQUIRE(evidence->size() > 1);
    const std::vector<uint8_t> truncated(evidence->begin(),
                                         evidence->end() - 1);
    REQUIRE_CODE(verify(**other_chip, *b, rd, truncated),
                 Code::kInvalidArgument);
    REQUIRE_CODE(verify(**other_chip, *b, rd, {}), Code::kInvalidArgument);
    auto mid = *evidence;
    mid[mid.size() / 2] ^= 0x80;
    REQUIRE_FALSE(verify(**other_chip, *b, rd, mid).ok());
    REQUIRE_OK(env.b->DestroyCvm(*a));
    REQUIRE_OK((*other_chip)->DestroyCvm(*b));
    REQUIRE_OK((*other_chip)->DestroyCvm(*c));
  }
}

TEST_CASE("conformance: throttling the guest slows its dirty rate") {
  for (auto& env : Backends()) {
    INFO(env.backend);
    auto cvm = env.b->LaunchCvm(Config(
        {{"workload", "dirty"}, {"dirty_mib_s", "32"}, {"wss_mib", "32"}}));
    REQUIRE_OK(cvm);
    auto dirtied_in_300ms = [&] {
      REQUIRE_OK(env.b->ReadDirtyLog(*cvm, true));
      std::this_thread::sleep_for(300ms);
      auto d = env.b->ReadDirtyLog(*cvm, true);
      REQUIRE_OK(d);
      return d->size();
    };
    const size_t full = dirtied_in_300ms();
    REQUIRE_OK(env.b->ThrottleGuest(*cvm, 0.9));
    const size_t throttled = dirtied_in_300ms();
    REQUIRE_OK(env.b->ThrottleGuest(*cvm, 0));
    const size_t again = dirtied_in_300ms();
    INFO("unthrottled " << full << ", throttled " << throttled << ", again "
                        << again);
    REQUIRE(full > 500);
    REQUIRE(throttled * 3 < full);
    REQUIRE(throttled * 3 < again);
    // The guest still pauses promptly while throttled.
    REQUIRE_OK(env.b->ThrottleGuest(*cvm, 0.99));
    REQUIRE_OK(env.b->PauseGuest(*cvm));
    REQUIRE_OK(env.b->ResumeGuest(*cvm));
    for (double bad : {1.5, -0.1, 0.995, std::nan("")})
      REQUIRE_CODE(env.b->ThrottleGuest(*cvm, bad), Code::kInvalidArgument);
    REQUIRE_OK(env.b->DestroyCvm(*cvm));
    REQUIRE_CODE(env.b->ThrottleGuest(*cvm, 0.5), Code::kNotFound);
  }
}

TEST_CASE(
    "emulator: the write tracker keeps the host's and the platform's bitmaps "
    "apart") {
  using cpc::emu::AppendSetPages;
  using cpc::emu::GuestMemory;
  constexpr uint64_t kBytes = 8ull << 20;
  constexpr uint64_t kPages = kBytes / cpc::kPageSize;
  auto mem = GuestMemory::Create(kBytes, true);
  REQUIRE_OK(mem);
  auto started = (*mem)->StartTracking();
  REQUIRE_OK(started);
  cpc::emu::WriteTracker* t = *started;
  REQUIRE(t->pages() == kPages);
  auto host = [&](uint64_t first, uint64_t n, bool rearm) {
    auto bits = t->ReadHostLog(first, n, rearm);
    REQUIRE_OK(bits);
    std::vector<cpc::Gpa> out;
    AppendSetPages(*bits, first, &out);
    return out;
  };
  // Start clean on both sides.
  (void)host(0, kPages, true);
  REQUIRE_OK(t->TakeWritten({0, kPages}));
  REQUIRE(host(0, kPages, true).empty());
  REQUIRE(t->TakeWritten({0, kPages})->empty());

  const std::vector<cpc::Gpa> writes = {0x0, 0x3000, 0x40000, 0x41000,
                                        kBytes - 0x1000};
  for (cpc::Gpa g : writes) (*mem)->At(g)[17] = 1;
  REQUIRE(host(0, kPages, false) == writes);  // kept without rearm
  REQUIRE(host(0, kPages, true) == writes);
  REQUIRE(host(0, kPages, true).empty());  // the host's copy is cleared...
  // ... but not the platform's, which only it clears, inside its range.
  REQUIRE(*t->TakeWritten({0x1000, 0x100}) ==
          std::vector<cpc::Gpa>{0x3000, 0x40000, 0x41000});
  REQUIRE(*t->TakeWritten({0, kPages}) ==
          std::vector<cpc::Gpa>{0x0, kBytes - 0x1000});
  REQUIRE(t->TakeWritten({0, kPages})->empty());

  // The host reads in chunks; a partial last word reports no later page.
  (*mem)->At(64 * cpc::kPageSize)[0] = 2;
  (*mem)->At(65 * cpc::kPageSize)[0] = 2;
  REQUIRE(host(0, 65, true) == std::vector<cpc::Gpa>{64 * cpc::kPageSize});
  REQUIRE(host(64, 64, true) == std::vector<cpc::Gpa>{65 * cpc::kPageSize});
  REQUIRE_CODE(t->ReadHostLog(1, 8, true), Code::kInvalidArgument);
  REQUIRE_CODE(t->ReadHostLog(0, kPages + 1, true), Code::kInvalidArgument);
  REQUIRE_CODE(t->TakeWritten({0, kPages + 1}), Code::kInvalidArgument);
}
