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
#include "migrate/migrate_fixture.h"
#include "modules/audit.h"
#include "operators/aead.h"
#include "test_util.h"

using namespace cpc;
using namespace std::chrono_literals;

namespace {
using namespace cpc_test::migrate;
constexpr const char* kRealImage = CPC_TEST_REAL_CVM_IMAGE;
constexpr const char* kNullImage = CPC_TEST_NULL_AEAD_IMAGE;

// One hvCPU, launched from `image`.
LaunchConfig Config(const std::string& image) {
  LaunchConfig c = cpc_test::migrate::Config(1);
  c.image = image;
  return c;
}

// Migrates `cvm` (launched from `c`) from `src` to `dst`, whose CVM is
// launched from `dst_image`.
Outcome Migrate(Backend& src, Backend& dst, CvmHandle cvm,
                const LaunchConfig& c, const std::string& dst_image) {
  IncomingOptions in;
  in.image = dst_image;
  return cpc_test::migrate::Migrate(src, dst, cvm, Options(c, 1), nullptr, {},
                                    in);
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
