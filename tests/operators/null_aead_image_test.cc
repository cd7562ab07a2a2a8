// The bench-only null-AEAD CVM image (cpc-cvm-nullaead) stays out of the real
// system: libcpc and the real image offer no "null" engine (not even through
// $CPC_AEAD), the null image has its own measurement, and a real CVM refuses
// to migrate to or from it (kMeasurementMismatch) while two null-image CVMs
// migrate to each other (the bench baseline works).
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <future>
#include <iterator>
#include <string>
#include <string_view>
#include <thread>

#include <catch2/catch.hpp>

#include <cpc/migrate.h>
#include <cpc/policy.h>
#include <cpc/registry.h>
#include <cpc/runtime.h>

#include "emulator/host.h"
#include "modules/audit.h"
#include "operators/aead.h"
#include "test_util.h"

using namespace cpc;
using namespace std::chrono_literals;

namespace {
constexpr uint64_t kMem = 64ull << 20;
constexpr uint64_t kGuestPages = (kMem - (2 << 20)) / kPageSize;
constexpr const char* kRealImage = CPC_TEST_REAL_CVM_IMAGE;
constexpr const char* kNullImage = CPC_TEST_NULL_AEAD_IMAGE;

LaunchConfig Config(const std::string& image) {
  TenantPolicy p;
  p.modules = {{"audit", {"digest"}, Isolation::kPlain, {1ull << 30, 0}, 0, 0},
               {"migrate",
                {"hello", "accept", "send", "resume", "recv", "commit", "abort",
                 "ack", "rejoin"},
                Isolation::kPlain,
                {0, 0},
                0,
                0}};
  LaunchConfig c;
  c.image = image;
  c.memory_bytes = kMem;
  c.gvcpus = 2;
  c.hvcpus = {{0, Isolation::kPlain}};
  c.policy = p.Serialize();
  c.options = {{"workload", "dirty"},
               {"dirty_mib_s", "64"},
               {"wss_mib", "8"},
               {"shared_mib", "16"}};
  return c;
}

std::unique_ptr<Backend> MakeBackend(const char* chip_seed) {
  auto b = BackendRegistry::Builtin().List().front()->Create(
      {{"chip_seed", chip_seed}});
  REQUIRE_OK(b);
  return std::move(b).value();
}

std::vector<uint8_t> AuditToken(Backend& b, CvmHandle cvm) {
  auto t = b.RequestToken(cvm, {"audit", "digest", {kMem, 0}});
  REQUIRE_OK(t);
  return *t;
}

std::vector<uint8_t> MemDigest(Backend& b, CvmHandle cvm,
                               std::vector<uint8_t> token) {
  HvcpuEntry e;
  e.module = "audit";
  e.procedure = "digest";
  e.token = std::move(token);
  e.args = AuditArgs(0, kGuestPages);
  auto out =
      DriveCall([&](const HvcpuEntry& x) { return b.ScheduleHvcpu(cvm, 0, x); },
                e, AbortPolicy{});
  REQUIRE_OK(out);
  REQUIRE_OK(out->status);
  return out->output;
}

// Whether the guest OS runs: its workload dirties pages within 50 ms.
bool Runs(Backend& b, CvmHandle cvm) {
  if (!b.ReadDirtyLog(cvm, true).ok()) return false;
  std::this_thread::sleep_for(50ms);
  auto d = b.ReadDirtyLog(cvm, true);
  return d.ok() && !d->empty();
}

struct Outcome {
  Result<MigrationStats> out = Status(Code::kInternal, "not run");
  Result<IncomingResult> in = Status(Code::kInternal, "not run");
  std::vector<uint8_t> dst_audit;
};

// Migrates `cvm` (launched from `c`) from `src` to `dst`, whose CVM is
// launched from `dst_image`.
Outcome Migrate(Backend& src, Backend& dst, CvmHandle cvm,
                const LaunchConfig& c, const std::string& dst_image) {
  Outcome res;
  std::promise<std::string> where;
  IncomingOptions in;
  in.listen = "127.0.0.1:0";
  in.image = dst_image;
  in.resume = false;
  in.on_listening = [&](const std::string& a) { where.set_value(a); };
  in.before_pause = [&](CvmHandle h) { res.dst_audit = AuditToken(dst, h); };
  std::thread t([&] { res.in = MigrateIn(dst, in); });
  MigrateOptions o;
  o.destination = where.get_future().get();
  o.launch = c;
  o.hvcpus = {0};
  o.verdict_timeout = 5s;
  res.out = MigrateOut(src, cvm, o);
  t.join();
  return res;
}

bool FileContains(const char* path, std::string_view needle) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  const std::string bytes((std::istreambuf_iterator<char>(f)),
                          std::istreambuf_iterator<char>());
  return bytes.find(needle) != std::string::npos;
}
}  // namespace

TEST_CASE("null-aead image: libcpc and the real cpc-cvm offer no null engine") {
  // cpc_internal is what the real image links: no "null" by name, in the
  // list, or as a default picked through the environment.
  REQUIRE_CODE(FindAeadEngine("null"), Code::kNotFound);
  for (const AeadEngine* e : AvailableAeadEngines()) CHECK(e->name() != "null");
  const char* old = std::getenv("CPC_AEAD");
  const std::string saved = old != nullptr ? old : "";
  setenv("CPC_AEAD", "null", 1);
  auto def = FindAeadEngine();
  if (old != nullptr)
    setenv("CPC_AEAD", saved.c_str(), 1);
  else
    unsetenv("CPC_AEAD");
  REQUIRE_CODE(def, Code::kNotFound);
  // The real image's file holds none of the null engine's code (its code
  // path string); the null image's does, which shows the probe works.
  constexpr std::string_view kMarker = "bench baseline: plaintext";
  CHECK_FALSE(FileContains(kRealImage, kMarker));
  CHECK(FileContains(kNullImage, kMarker));
}

TEST_CASE("null-aead image: its measurement differs from the real image's") {
  auto b = MakeBackend("1");
  auto* emu = dynamic_cast<emu::EmulatedBackend*>(b.get());
  REQUIRE(emu != nullptr);
  auto real = b->LaunchCvm(Config(kRealImage));
  REQUIRE_OK(real);
  auto null = b->LaunchCvm(Config(kNullImage));
  REQUIRE_OK(null);
  auto ri = emu->Info(*real);
  auto ni = emu->Info(*null);
  REQUIRE_OK(ri);
  REQUIRE_OK(ni);
  CHECK(ri->identity.measurement != ni->identity.measurement);
  REQUIRE_OK(b->DestroyCvm(*null));
  REQUIRE_OK(b->DestroyCvm(*real));
}

TEST_CASE("null-aead image: a real CVM refuses a null-image peer both ways") {
  auto src = MakeBackend("1");
  auto dst = MakeBackend("2");
  for (const bool real_source : {true, false}) {
    INFO((real_source ? "real -> null" : "null -> real"));
    const auto c = Config(real_source ? kRealImage : kNullImage);
    auto cvm = src->LaunchCvm(c);
    REQUIRE_OK(cvm);
    auto r =
        Migrate(*src, *dst, *cvm, c, real_source ? kNullImage : kRealImage);
    REQUIRE_CODE(r.in, Code::kMeasurementMismatch);
    REQUIRE_CODE(r.out, Code::kMeasurementMismatch);
    // Refused before anything moved: the source still runs.
    REQUIRE(Runs(*src, *cvm));
    REQUIRE_OK(src->DestroyCvm(*cvm));
  }
}

TEST_CASE("null-aead image: two null-image CVMs migrate (the bench baseline)") {
  auto src = MakeBackend("1");
  auto dst = MakeBackend("2");
  const auto c = Config(kNullImage);
  auto cvm = src->LaunchCvm(c);
  REQUIRE_OK(cvm);
  auto src_audit = AuditToken(*src, *cvm);
  auto r = Migrate(*src, *dst, *cvm, c, kNullImage);
  REQUIRE_OK(r.out);
  REQUIRE_OK(r.in);
  CHECK(r.out->state == MigrationStats::State::kCompleted);
  REQUIRE(MemDigest(*src, *cvm, src_audit) ==
          MemDigest(*dst, r.in->cvm, r.dst_audit));
  REQUIRE_OK(dst->DestroyCvm(r.in->cvm));
  REQUIRE_OK(src->DestroyCvm(*cvm));
}
