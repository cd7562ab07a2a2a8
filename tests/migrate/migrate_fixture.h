// Shared by the migration tests: two backends (two emulated chips), a CVM
// launch configuration with a dirtying workload, memory digests proved inside
// the CVMs, and a MigrateIn/MigrateOut pair run in one process (optionally
// through a man-in-the-middle proxy).
#ifndef CPC_TESTS_MIGRATE_MIGRATE_FIXTURE_H_
#define CPC_TESTS_MIGRATE_MIGRATE_FIXTURE_H_

#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include <cpc/migrate.h>
#include <cpc/policy.h>
#include <cpc/registry.h>

#include "audit_digest.h"
#include "test_util.h"
#include "transport/mitm_proxy.h"

namespace cpc_test::migrate {

using namespace cpc;
using namespace std::chrono_literals;
using net::MitmProxy;

inline constexpr uint64_t kMem = 64ull << 20;
// The guest OS's pages (the top 2 MiB hold the emulated firmware's share).
constexpr uint64_t GuestPages(uint64_t mem) {
  return (mem - (2 << 20)) / kPageSize;
}
inline constexpr uint64_t kGuestPages = GuestPages(kMem);
inline constexpr uint16_t kChunkFrame = 17;  // migrate_host.cc: data chunks

inline TenantPolicy Policy() {
  TenantPolicy p;
  p.modules = {{"audit", {"digest"}, Isolation::kPlain, {1ull << 30, 0}, 0, 0},
               {"migrate",
                {"hello", "accept", "send", "resume", "recv", "commit", "abort",
                 "ack", "rejoin"},
                Isolation::kPlain,
                {0, 0},
                0,
                0}};
  return p;
}

inline LaunchConfig Config(uint32_t hvcpus, const char* dirty_mib_s = "64",
                           const char* wss_mib = "8", uint64_t mem = kMem) {
  LaunchConfig c;
  c.memory_bytes = mem;
  c.gvcpus = 2;
  for (uint32_t i = 0; i < hvcpus; ++i)
    c.hvcpus.push_back({i, Isolation::kPlain});
  c.policy = Policy().Serialize();
  c.options = {{"workload", "dirty"},
               {"dirty_mib_s", dirty_mib_s},
               {"wss_mib", wss_mib},
               {"shared_mib", "16"},
               {"canary_seed", "5eed5eed5eed5eed"}};
  return c;
}

inline std::unique_ptr<Backend> MakeBackend(const char* chip_seed) {
  const BackendFactory* f = BackendRegistry::Builtin().List().front();
  auto b = f->Create({{"chip_seed", chip_seed}});
  REQUIRE_OK(b);
  return std::move(b).value();
}

inline std::vector<uint8_t> AuditToken(Backend& b, CvmHandle cvm,
                                       uint64_t mem = kMem) {
  auto t = b.RequestToken(cvm, {"audit", "digest", {mem, 0}});
  REQUIRE_OK(t);
  return *t;
}

inline std::vector<uint8_t> MemDigest(Backend& b, CvmHandle cvm,
                                      std::vector<uint8_t> token,
                                      uint64_t mem = kMem) {
  return cpc_test::AuditDigest(b, cvm, std::move(token), GuestPages(mem));
}

// Whether the guest OS runs: its workload dirties pages within 50 ms.
inline bool Runs(Backend& b, CvmHandle cvm) {
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

// Runs MigrateIn on `dst` in a thread and MigrateOut of `cvm` on `src`,
// through a MITM proxy with `rules` if `proxy` is set.
inline Outcome Migrate(
    Backend& src, Backend& dst, CvmHandle cvm, MigrateOptions o,
    std::unique_ptr<MitmProxy>* proxy = nullptr,
    std::vector<MitmProxy::Rule> rules = {}, IncomingOptions in = {},
    const std::function<void(MitmProxy&)>& with_proxy = nullptr,
    const MigrationProgressFn& progress = {}) {
  Outcome res;
  std::promise<std::string> where;
  in.listen = "127.0.0.1:0";
  in.resume = false;
  in.on_listening = [&](const std::string& a) { where.set_value(a); };
  const uint64_t mem = o.launch.memory_bytes;
  in.before_pause = [&](CvmHandle h) {
    res.dst_audit = AuditToken(dst, h, mem);
  };
  std::thread t([&] { res.in = MigrateIn(dst, in); });
  auto addr = where.get_future().get();
  if (proxy != nullptr) {
    auto ep = net::ParseEndpoint(addr);
    REQUIRE_OK(ep);
    auto p = MitmProxy::Start(*ep, rules);
    REQUIRE_OK(p);
    *proxy = std::move(p).value();
    addr = (*proxy)->endpoint().ToString();
    if (with_proxy) with_proxy(**proxy);
  }
  o.destination = addr;
  res.out = MigrateOut(src, cvm, o, progress);
  t.join();
  return res;
}

inline MigrateOptions Options(const LaunchConfig& c, uint32_t streams) {
  MigrateOptions o;
  o.launch = c;
  o.hvcpus.clear();
  for (uint32_t i = 0; i < streams; ++i) o.hvcpus.push_back(i);
  o.verdict_timeout = 5s;
  return o;
}

}  // namespace cpc_test::migrate

#endif  // CPC_TESTS_MIGRATE_MIGRATE_FIXTURE_H_
