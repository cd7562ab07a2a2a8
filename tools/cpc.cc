// The `cpc` command-line tool for operators:
//
//   cpc info      the library, the AEAD engines and every built-in backend
//                 with its probe facts
//   cpc snapshot  launches an emulated CVM, lets its workload run, takes a
//                 sealed snapshot of it and proves the snapshot's memory with
//                 an in-CVM digest (audit.digest on the paused guest)
//   cpc restore   launches a fresh CVM from a snapshot file, restores it and
//                 compares the restored memory's in-CVM digest with the one
//                 `cpc snapshot` stored next to the file (FILE.digest)
//
// There is no persistent VMM daemon: `cpc snapshot` launches the CVM it
// snapshots, and the CVM `cpc restore` restores ends with the command.
//
// Errors are one line on stderr ("cpc: <status>") and a non-zero exit code:
// 2 for usage errors, 1 for failed operations. Progress goes to stderr (a bar
// on a terminal, a few plain lines otherwise); results go to stdout.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>

#include <cpc/fmt.h>
#include <cpc/policy.h>
#include <cpc/registry.h>
#include <cpc/runtime.h>
#include <cpc/snapshot.h>
#include <cpc/version.h>

#include "emulator/host.h"
#include "emulator/launch.h"
#include "modules/audit.h"
#include "operators/aead.h"
#include "progress.h"

namespace {

using cpc::Code;
using cpc::Status;
using cpc_cli::HumanBytes;
using cpc_cli::HumanRate;
using cpc_cli::HumanSeconds;
using cpc_cli::Progress;
using cpc_cli::ProgressMode;

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

int Fail(const Status& s) {
  fmt::print(stderr, "cpc: {}\n", s);
  return kExitFailure;
}

int UsageFail(const std::string& message) {
  fmt::print(stderr, "cpc: {} (try: cpc help)\n",
             Status(Code::kInvalidArgument, message));
  return kExitUsage;
}

double Seconds(cpc::Duration d) {
  return std::chrono::duration<double>(d).count();
}

std::string Hex(std::span<const uint8_t> b) {
  std::string s;
  s.reserve(b.size() * 2);
  for (uint8_t c : b) s += fmt::format("{:02x}", c);
  return s;
}

// ------------------------------------------------------------------ flags

struct FlagSpec {
  std::string_view name;   // without "--"
  std::string_view value;  // placeholder; empty for a boolean flag
  std::string_view help;
};

// Parsed `--name value`, `--name=value` and boolean `--name` flags.
class Flags {
 public:
  // An error message (a usage error) or nullopt.
  std::optional<std::string> Parse(std::string_view command,
                                   std::span<const FlagSpec> specs,
                                   const std::vector<std::string>& args) {
    for (size_t i = 0; i < args.size(); ++i) {
      std::string_view a = args[i];
      if (!a.starts_with("--") || a.size() == 2)
        return fmt::format("{}: unexpected argument '{}'", command, a);
      std::string_view name = a.substr(2);
      std::optional<std::string> value;
      if (auto eq = name.find('='); eq != std::string_view::npos) {
        value = std::string(name.substr(eq + 1));
        name = name.substr(0, eq);
      }
      const FlagSpec* spec = nullptr;
      for (const auto& s : specs)
        if (s.name == name) spec = &s;
      if (spec == nullptr)
        return fmt::format("{}: unknown flag '--{}'", command, name);
      if (spec->value.empty()) {
        if (value) return fmt::format("{}: --{} takes no value", command, name);
        value = "1";
      } else if (!value) {
        if (i + 1 >= args.size())
          return fmt::format("{}: --{} needs a value ({})", command, name,
                             spec->value);
        value = args[++i];
      }
      values_[std::string(name)] = *value;
    }
    return std::nullopt;
  }

  bool Has(std::string_view name) const {
    return values_.count(std::string(name)) != 0;
  }
  std::string Str(std::string_view name, std::string def = {}) const {
    auto it = values_.find(std::string(name));
    return it == values_.end() ? def : it->second;
  }
  // Parses an unsigned integer in [lo, hi]; sets *error on failure.
  uint64_t U64(std::string_view name, uint64_t def, uint64_t lo, uint64_t hi,
               std::optional<std::string>* error) const {
    auto it = values_.find(std::string(name));
    if (it == values_.end()) return def;
    const std::string& v = it->second;
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || v[0] == '-' || end == v.c_str() || *end != 0 ||
        errno != 0 || n < lo || n > hi) {
      if (!*error)
        *error = fmt::format("--{} wants an integer in [{}, {}], not '{}'",
                             name, lo, hi, v);
      return def;
    }
    return n;
  }
  double Double(std::string_view name, double def, double lo, double hi,
                std::optional<std::string>* error) const {
    auto it = values_.find(std::string(name));
    if (it == values_.end()) return def;
    const std::string& v = it->second;
    char* end = nullptr;
    double d = std::strtod(v.c_str(), &end);
    if (v.empty() || end == v.c_str() || *end != 0 || !(d >= lo && d <= hi)) {
      if (!*error)
        *error = fmt::format("--{} wants a number in [{}, {}], not '{}'", name,
                             lo, hi, v);
      return def;
    }
    return d;
  }

 private:
  std::map<std::string, std::string> values_;
};

std::optional<ProgressMode> ParseProgressMode(const std::string& v) {
  if (v == "auto") return ProgressMode::kAuto;
  if (v == "bar") return ProgressMode::kBar;
  if (v == "lines") return ProgressMode::kLines;
  if (v == "none") return ProgressMode::kOff;
  return std::nullopt;
}

// ------------------------------------------------------------ shared bits

// The policy `cpc snapshot` launches with: the snapshot module (every
// procedure; TakeSnapshot / RestoreSnapshot request their own tokens) and
// audit.digest, the memory-equality proof. It is measured, so a restore
// launches with the one stored in the file.
cpc::TenantPolicy CliPolicy(uint64_t memory_bytes) {
  cpc::ModulePolicy snapshot;
  snapshot.module = "snapshot";
  snapshot.procedures = {"begin",        "extract", "finish",
                         "insert_begin", "insert",  "insert_finish"};
  cpc::ModulePolicy audit;
  audit.module = "audit";
  audit.procedures = {"digest"};
  audit.per_call = {memory_bytes, 0};
  cpc::TenantPolicy policy;
  policy.modules = {snapshot, audit};
  return policy;
}

// Guest-OS pages the digest covers: [0, cpc_base), what the snapshot holds.
// The CPC region above it (VMSAs, secrets page, Secure-CPC memory) belongs
// to each CVM instance and is not part of the guest's memory image.
uint64_t DigestPages(cpc::Backend& backend, cpc::CvmHandle cvm,
                     uint64_t memory_bytes) {
  if (auto* emu = dynamic_cast<cpc::emu::EmulatedBackend*>(&backend)) {
    if (auto info = emu->Info(cvm); info.ok())
      return info->cpc_base / cpc::kPageSize;
  }
  return (memory_bytes - cpc::emu::kCpcRegionBytes) / cpc::kPageSize;
}

cpc::TokenRequest AuditRequest(uint64_t pages) {
  return {"audit", "digest", {pages * cpc::kPageSize, 0}};
}

struct MemoryDigest {
  std::vector<uint8_t> sha256;  // 32 bytes
  uint64_t pages = 0;
  double seconds = 0;
  double rate = 0;
};

// Runs audit.digest over guest pages [0, pages) on `hvcpu` with `token`
// (requested while the guest could still answer).
cpc::Result<MemoryDigest> RunDigest(cpc::Backend& backend, cpc::CvmHandle cvm,
                                    uint32_t hvcpu, std::vector<uint8_t> token,
                                    uint64_t pages, ProgressMode mode) {
  cpc::HvcpuEntry entry;
  entry.module = "audit";
  entry.procedure = "digest";
  entry.token = std::move(token);
  entry.args = cpc::AuditArgs(0, pages);
  entry.slice = std::chrono::milliseconds(50);
  Progress progress("digest  ", mode);
  auto out = cpc::DriveCall(
      [&](const cpc::HvcpuEntry& e) {
        return backend.ScheduleHvcpu(cvm, hvcpu, e);
      },
      entry, cpc::AbortPolicy{},
      [&](const cpc::CallProgress& p, const cpc::CallStats&) {
        progress.Update(p.bytes_done, p.bytes_total);
      });
  if (!out.ok()) return out.status().WithContext("audit.digest");
  if (!out->status.ok()) return out->status.WithContext("audit.digest");
  if (out->output.size() != 40)
    return Status(Code::kInternal, "audit.digest: unexpected output size");
  progress.Finish(pages * cpc::kPageSize, pages * cpc::kPageSize);
  MemoryDigest d;
  d.sha256.assign(out->output.begin(), out->output.begin() + 32);
  d.pages = pages;
  d.seconds = Seconds(out->stats.elapsed);
  d.rate = out->stats.rate_bytes_per_s;
  return d;
}

// FILE.digest: the memory digest `cpc snapshot` measured inside the paused
// CVM, bound to the snapshot by its serial and measurement.
struct DigestFile {
  uint64_t serial = 0;
  std::string measurement;  // hex
  uint64_t pages = 0;
  std::string sha256;  // hex
};

std::string DigestPath(const std::string& snapshot) {
  return snapshot + ".digest";
}

Status WriteDigestFile(const std::string& path, const DigestFile& d) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << "# cpc snapshot memory digest: audit.digest run inside the CVM on "
         "the paused guest\n"
      << "serial " << d.serial << "\n"
      << "measurement " << d.measurement << "\n"
      << "first_gpa 0\n"
      << "pages " << d.pages << "\n"
      << "sha256 " << d.sha256 << "\n";
    f.flush();
    if (!f)
      return Status(Code::kIoError, fmt::format("cannot write '{}'", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return Status(Code::kIoError,
                  fmt::format("cannot rename '{}' to '{}': {}", tmp, path,
                              std::strerror(errno)),
                  errno);
  return Status::Ok();
}

// nullopt if the file does not exist; an error if it is unreadable/garbled.
cpc::Result<std::optional<DigestFile>> ReadDigestFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) {
    if (::access(path.c_str(), F_OK) != 0) return std::optional<DigestFile>();
    return Status(Code::kIoError, fmt::format("cannot read '{}'", path));
  }
  DigestFile d;
  int fields = 0;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string key;
    in >> key;
    if (key == "serial") {
      in >> d.serial;
      ++fields;
    } else if (key == "measurement") {
      in >> d.measurement;
      ++fields;
    } else if (key == "pages") {
      in >> d.pages;
      ++fields;
    } else if (key == "sha256") {
      in >> d.sha256;
      ++fields;
    }
  }
  if (fields != 4 || d.sha256.size() != 64)
    return Status(Code::kDataLoss,
                  fmt::format("'{}' is not a cpc snapshot digest file", path));
  return std::optional<DigestFile>(std::move(d));
}

void PrintRow(std::string_view name, const std::string& value) {
  fmt::print("  {:<13} {}\n", name, value);
}

void PrintStats(const cpc::SnapshotStats& st, bool restore) {
  PrintRow("pages", fmt::format("{} ({})", st.pages,
                                HumanBytes(st.pages * cpc::kPageSize)));
  PrintRow("vCPUs", fmt::format("{}", st.vcpus));
  PrintRow("streams", fmt::format("{} (hvCPUs)", st.streams));
  PrintRow("guest bytes",
           fmt::format("{} ({})", st.guest_bytes, HumanBytes(st.guest_bytes)));
  PrintRow("file bytes",
           fmt::format("{} ({})", st.file_bytes, HumanBytes(st.file_bytes)));
  PrintRow("elapsed", HumanSeconds(Seconds(st.elapsed)));
  if (restore) {
    PrintRow("launch", HumanSeconds(Seconds(st.launch)) +
                           " (fresh CVM, part of elapsed)");
    PrintRow("restore",
             HumanSeconds(Seconds(st.elapsed - st.launch)) + " (w/o launch)");
    PrintRow("rate",
             HumanRate(st.rate_bytes_per_s) + " (guest bytes, w/o launch)");
  } else {
    PrintRow("paused", HumanSeconds(Seconds(st.paused)) +
                           " (guest paused during the snapshot)");
    PrintRow("rate", HumanRate(st.rate_bytes_per_s) + " (guest bytes)");
  }
}

// ------------------------------------------------------------- snapshot

constexpr FlagSpec kSnapshotFlags[] = {
    {"out", "FILE", "snapshot file to write (required); FILE.digest too"},
    {"backend", "NAME",
     "backend (default: $CPC_BACKEND, else first available)"},
    {"memory-mib", "N", "guest memory in MiB (default 2048)"},
    {"gvcpus", "N", "guest vCPUs (default 2)"},
    {"hvcpus", "N", "hvCPUs = record streams (default 1)"},
    {"workload", "KIND", "idle | dirty | cpu (default dirty)"},
    {"dirty-mib-s", "R", "dirty workload: MiB written per second (default 32)"},
    {"wss-mib", "N", "dirty workload: working set in MiB (default 64)"},
    {"run-ms", "T", "let the workload run T ms before the snapshot (200)"},
    {"slice-ms", "T", "hvCPU slice in ms (default 50)"},
    {"no-verify", "", "skip the in-CVM memory digest (no FILE.digest)"},
    {"progress", "MODE", "auto | bar | lines | none (default auto)"},
};

struct SnapshotArgs {
  std::string out;
  std::string backend;
  uint64_t memory_mib = 2048;
  uint32_t gvcpus = 2;
  uint32_t hvcpus = 1;
  std::string workload = "dirty";
  double dirty_mib_s = 32;
  uint64_t wss_mib = 64;
  uint64_t run_ms = 200;
  uint64_t slice_ms = 50;
  bool verify = true;
  ProgressMode progress = ProgressMode::kAuto;
};

Status RunSnapshot(const SnapshotArgs& a) {
  CPC_ASSIGN_OR_RETURN(auto backend,
                       cpc::BackendRegistry::Builtin().Create(a.backend, {}));
  const uint64_t memory_bytes = a.memory_mib << 20;
  cpc::LaunchConfig config;
  config.memory_bytes = memory_bytes;
  config.gvcpus = a.gvcpus;
  for (uint32_t i = 0; i < a.hvcpus; ++i)
    config.hvcpus.push_back({i, cpc::Isolation::kPlain});
  config.policy = CliPolicy(memory_bytes).Serialize();
  config.options = {{"workload", a.workload}};
  if (a.workload == "dirty") {
    config.options["dirty_mib_s"] = fmt::format("{}", a.dirty_mib_s);
    config.options["wss_mib"] = fmt::format("{}", a.wss_mib);
  }
  // Two 1 MiB ring buffers per stream in the shared region (8 MiB default).
  if (2 * a.hvcpus + 2 > 8)
    config.options["shared_mib"] = fmt::format("{}", 2 * a.hvcpus + 2);

  const auto t0 = cpc::Clock::now();
  CPC_ASSIGN_OR_RETURN(cpc::CvmHandle cvm, backend->LaunchCvm(config));
  const double launch_s = Seconds(cpc::Clock::now() - t0);
  fmt::print(
      "launched {} CVM: {} guest memory, {} gvCPU(s), {} hvCPU(s), workload "
      "{}{} ({})\n",
      backend->name(), HumanBytes(memory_bytes), a.gvcpus, a.hvcpus, a.workload,
      a.workload == "dirty"
          ? fmt::format(" ({} MiB/s over {} MiB)", a.dirty_mib_s, a.wss_mib)
          : "",
      HumanSeconds(launch_s));
  std::fflush(stdout);
  if (a.run_ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(a.run_ms));

  // The digest token is requested now: once the snapshot has paused the
  // guest, its agent (guest-OS code) cannot answer.
  const uint64_t digest_pages = DigestPages(*backend, cvm, memory_bytes);
  std::vector<uint8_t> token;
  if (a.verify) {
    CPC_ASSIGN_OR_RETURN(
        token, backend->RequestToken(cvm, AuditRequest(digest_pages)));
  }

  cpc::SnapshotOptions so;
  so.hvcpus.clear();
  for (const auto& h : config.hvcpus) so.hvcpus.push_back(h.index);
  so.slice = std::chrono::milliseconds(a.slice_ms);
  so.resume = false;
  so.launch = config;
  cpc::SnapshotStats stats;
  {
    Progress progress("snapshot", a.progress);
    auto r = cpc::TakeSnapshot(
        *backend, cvm, a.out, so, [&](const cpc::SnapshotStats& st) {
          progress.Update(st.guest_bytes, st.total_guest_bytes);
        });
    if (!r.ok()) {
      progress.Abandon();
      return r.status().WithContext(fmt::format("snapshot to '{}'", a.out));
    }
    stats = *r;
    progress.Finish(stats.guest_bytes, stats.total_guest_bytes);
  }
  const auto snapshot_end = cpc::Clock::now();

  // The guest is still paused: its memory is exactly what the file holds.
  std::optional<MemoryDigest> digest;
  if (a.verify) {
    auto d = RunDigest(*backend, cvm, config.hvcpus[0].index, std::move(token),
                       digest_pages, a.progress);
    if (!d.ok()) {
      (void)backend->ResumeGuest(cvm);
      return d.status().WithContext("memory digest of the paused guest");
    }
    digest = std::move(*d);
  }
  CPC_RETURN_IF_ERROR(backend->ResumeGuest(cvm));
  const double extra_pause_s = Seconds(cpc::Clock::now() - snapshot_end);

  CPC_ASSIGN_OR_RETURN(cpc::SnapshotInfo info, cpc::ReadSnapshotInfo(a.out));
  fmt::print("snapshot written to {} (serial {}, measurement {}...)\n", a.out,
             info.serial, Hex(info.measurement).substr(0, 32));
  PrintStats(stats, false);
  PrintRow("downtime", HumanSeconds(Seconds(stats.paused) + extra_pause_s) +
                           (a.verify ? " (paused + digest, until resumed)"
                                     : " (paused, until resumed)"));
  PrintRow("launch", HumanSeconds(launch_s) + " (of the CVM snapshotted)");
  if (digest) {
    DigestFile df;
    df.serial = info.serial;
    df.measurement = Hex(info.measurement);
    df.pages = digest->pages;
    df.sha256 = Hex(digest->sha256);
    CPC_RETURN_IF_ERROR(WriteDigestFile(DigestPath(a.out), df));
    fmt::print(
        "memory digest (in-CVM audit.digest of the paused guest, {} pages, "
        "{}): {}\n",
        digest->pages, HumanRate(digest->rate), df.sha256);
    fmt::print("digest written to {} (cpc restore compares with it)\n",
               DigestPath(a.out));
  }
  fmt::print("guest resumed; CVM shut down (no persistent VMM)\n");
  return backend->DestroyCvm(cvm);
}

int Snapshot(const std::vector<std::string>& args) {
  Flags f;
  if (auto e = f.Parse("snapshot", kSnapshotFlags, args)) return UsageFail(*e);
  SnapshotArgs a;
  std::optional<std::string> err;
  a.out = f.Str("out");
  a.backend = f.Str("backend");
  a.memory_mib = f.U64("memory-mib", a.memory_mib, 16, 1 << 20, &err);
  a.gvcpus = static_cast<uint32_t>(f.U64("gvcpus", a.gvcpus, 1, 64, &err));
  a.hvcpus = static_cast<uint32_t>(f.U64("hvcpus", a.hvcpus, 1, 16, &err));
  a.workload = f.Str("workload", a.workload);
  a.dirty_mib_s = f.Double("dirty-mib-s", a.dirty_mib_s, 0.001, 1e6, &err);
  a.wss_mib = f.U64("wss-mib", std::min<uint64_t>(a.wss_mib, a.memory_mib / 4),
                    1, 1 << 20, &err);
  a.run_ms = f.U64("run-ms", a.run_ms, 0, 86'400'000, &err);
  a.slice_ms = f.U64("slice-ms", a.slice_ms, 1, 60'000, &err);
  a.verify = !f.Has("no-verify");
  if (err) return UsageFail("snapshot: " + *err);
  if (a.out.empty()) return UsageFail("snapshot: --out FILE is required");
  if (a.memory_mib % 2 != 0)
    return UsageFail("snapshot: --memory-mib must be a multiple of 2");
  if (a.workload != "idle" && a.workload != "dirty" && a.workload != "cpu")
    return UsageFail(
        fmt::format("snapshot: --workload must be idle, dirty or cpu, not '{}'",
                    a.workload));
  if (a.workload == "dirty" && a.wss_mib > a.memory_mib / 2)
    return UsageFail("snapshot: --wss-mib must be at most half the memory");
  auto mode = ParseProgressMode(f.Str("progress", "auto"));
  if (!mode)
    return UsageFail("snapshot: --progress must be auto, bar, lines or none");
  a.progress = *mode;
  Status s = RunSnapshot(a);
  return s.ok() ? 0 : Fail(s);
}

// -------------------------------------------------------------- restore

constexpr FlagSpec kRestoreFlags[] = {
    {"in", "FILE", "snapshot file to restore (required)"},
    {"backend", "NAME",
     "backend (default: $CPC_BACKEND, else first available)"},
    {"run-ms", "T", "let the restored guest run T ms before shutdown (200)"},
    {"slice-ms", "T", "hvCPU slice in ms (default 50)"},
    {"no-verify", "", "skip the in-CVM memory digest"},
    {"progress", "MODE", "auto | bar | lines | none (default auto)"},
};

struct RestoreArgs {
  std::string in;
  std::string backend;
  uint64_t run_ms = 200;
  uint64_t slice_ms = 50;
  bool verify = true;
  ProgressMode progress = ProgressMode::kAuto;
};

Status RunRestore(const RestoreArgs& a) {
  CPC_ASSIGN_OR_RETURN(cpc::SnapshotInfo info, cpc::ReadSnapshotInfo(a.in));
  fmt::print(
      "snapshot {}: version {}, serial {}, {} pages ({}), {} vCPU(s), {} "
      "stream(s), measurement {}...\n",
      a.in, info.version, info.serial, info.pages,
      HumanBytes(info.pages * cpc::kPageSize), info.vcpus, info.streams,
      Hex(info.measurement).substr(0, 32));
  std::fflush(stdout);
  // The digest file is checked before anything is launched.
  std::optional<DigestFile> expected;
  std::string not_compared;
  if (a.verify) {
    CPC_ASSIGN_OR_RETURN(expected, ReadDigestFile(DigestPath(a.in)));
    if (!expected) {
      not_compared = fmt::format("no {}", DigestPath(a.in));
    } else if (expected->serial != info.serial ||
               expected->measurement != Hex(info.measurement)) {
      not_compared = fmt::format(
          "{} belongs to another snapshot (serial {}, this file: {})",
          DigestPath(a.in), expected->serial, info.serial);
      expected.reset();
    }
  }

  CPC_ASSIGN_OR_RETURN(auto backend,
                       cpc::BackendRegistry::Builtin().Create(a.backend, {}));
  // RestoreSnapshot launches the fresh CVM itself and pauses it before it
  // restores; a paused guest's agent cannot issue tokens. The audit token is
  // asked from the fresh CVM's agent just before that pause - the same order
  // as on the snapshot side.
  std::vector<uint8_t> token;
  uint64_t digest_pages = 0;
  Status token_status(Code::kFailedPrecondition,
                      "the fresh CVM was never handed over before its pause");
  cpc::RestoreOptions ro;
  ro.slice = std::chrono::milliseconds(a.slice_ms);
  ro.resume = false;
  if (a.verify) {
    ro.before_pause = [&](cpc::CvmHandle fresh) {
      digest_pages = DigestPages(*backend, fresh, info.launch.memory_bytes);
      auto t = backend->RequestToken(fresh, AuditRequest(digest_pages));
      if (t.ok()) {
        token = std::move(*t);
        token_status = Status::Ok();
      } else {
        token_status = t.status().WithContext("audit token from the fresh CVM");
      }
    };
  }
  cpc::RestoreResult restored;
  {
    Progress progress("restore ", a.progress);
    progress.Phase(fmt::format("launching a fresh CVM ({} guest memory)",
                               HumanBytes(info.launch.memory_bytes)));
    ro.before_pause =
        [&, get_token = std::move(ro.before_pause)](cpc::CvmHandle fresh) {
          if (get_token) get_token(fresh);
          progress.Restart();  // rate and ETA of the restore, not the launch
        };
    auto r = cpc::RestoreSnapshot(
        *backend, info.launch, a.in, ro, [&](const cpc::SnapshotStats& st) {
          progress.Update(st.guest_bytes, st.total_guest_bytes);
        });
    if (!r.ok()) {
      progress.Abandon();
      return r.status().WithContext(fmt::format("restore of '{}'", a.in));
    }
    restored = std::move(*r);
    progress.Finish(restored.stats.guest_bytes,
                    restored.stats.total_guest_bytes);
  }
  const cpc::CvmHandle cvm = restored.cvm;

  // The restored guest is paused: digest its memory before it runs.
  std::optional<MemoryDigest> digest;
  if (a.verify) {
    if (!token_status.ok()) {
      (void)backend->DestroyCvm(cvm);
      return token_status;
    }
    const uint32_t hv =
        info.launch.hvcpus.empty() ? 0 : info.launch.hvcpus[0].index;
    auto d = RunDigest(*backend, cvm, hv, std::move(token), digest_pages,
                       a.progress);
    if (!d.ok()) {
      (void)backend->DestroyCvm(cvm);
      return d.status().WithContext("memory digest of the restored guest");
    }
    digest = std::move(*d);
  }
  fmt::print("restored {} into a fresh {} CVM\n", a.in, backend->name());
  PrintStats(restored.stats, true);
  if (digest) {
    const std::string got = Hex(digest->sha256);
    fmt::print(
        "memory digest (in-CVM audit.digest of the restored, paused guest, {} "
        "pages): {}\n",
        digest->pages, got);
    if (expected) {
      if (expected->pages != digest->pages || expected->sha256 != got) {
        (void)backend->DestroyCvm(cvm);
        return Status(
            Code::kDataLoss,
            fmt::format("restored memory digest {} ({} pages) differs from "
                        "the snapshot's {} ({} pages) in {}; the restored "
                        "CVM was destroyed without running",
                        got, digest->pages, expected->sha256, expected->pages,
                        DigestPath(a.in)));
      }
      fmt::print(
          "memory digest matches the snapshot's (from {}, written by cpc "
          "snapshot)\n",
          DigestPath(a.in));
    } else {
      fmt::print("memory digest NOT compared: {}\n", not_compared);
    }
  }
  CPC_RETURN_IF_ERROR(backend->ResumeGuest(cvm));
  if (a.run_ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(a.run_ms));
  // The resumed guest's agent answers: the guest OS runs again.
  auto alive = backend->RequestToken(cvm, AuditRequest(1));
  if (!alive.ok())
    return alive.status().WithContext("restored guest after resume");
  fmt::print(
      "guest resumed; it ran {} ms and its agent answered; CVM shut down (no "
      "persistent VMM)\n",
      a.run_ms);
  return backend->DestroyCvm(cvm);
}

int Restore(const std::vector<std::string>& args) {
  Flags f;
  if (auto e = f.Parse("restore", kRestoreFlags, args)) return UsageFail(*e);
  RestoreArgs a;
  std::optional<std::string> err;
  a.in = f.Str("in");
  a.backend = f.Str("backend");
  a.run_ms = f.U64("run-ms", a.run_ms, 0, 86'400'000, &err);
  a.slice_ms = f.U64("slice-ms", a.slice_ms, 1, 60'000, &err);
  a.verify = !f.Has("no-verify");
  if (err) return UsageFail("restore: " + *err);
  if (a.in.empty()) return UsageFail("restore: --in FILE is required");
  auto mode = ParseProgressMode(f.Str("progress", "auto"));
  if (!mode)
    return UsageFail("restore: --progress must be auto, bar, lines or none");
  a.progress = *mode;
  Status s = RunRestore(a);
  return s.ok() ? 0 : Fail(s);
}

// ----------------------------------------------------------------- info

int Info(const std::vector<std::string>& args) {
  if (!args.empty())
    return Fail({cpc::Code::kInvalidArgument, "info takes no arguments"});
  fmt::print("libcpc {} (C API {})\n", CPC_VERSION_STRING, CPC_API_VERSION);
  // The AEAD engines, best first; the first is what records use unless
  // CPC_AEAD names another.
  auto active = cpc::FindAeadEngine();
  fmt::print("AEAD engines (AES-256-GCM):\n");
  for (const cpc::AeadEngine* e : cpc::AvailableAeadEngines())
    fmt::print("  {} {:<9} {}\n", active.ok() && *active == e ? "*" : " ",
               e->name(), e->code_path());
  auto backends = cpc::BackendRegistry::Builtin().List();
  fmt::print("backends: {}\n", backends.size());
  for (const cpc::BackendFactory* b : backends) {
    fmt::print("  {:<10} {:<11} {}\n", b->name(),
               b->Available() ? "available" : "unavailable", b->description());
    for (const auto& fact : b->Probe())
      fmt::print("    [{}] {:<28} {}\n", fact.pass ? "ok" : "--", fact.name,
                 fact.info);
  }
  return 0;
}

struct Command {
  std::string_view name;
  std::string_view help;
  int (*run)(const std::vector<std::string>&);
  std::span<const FlagSpec> flags;
};

constexpr Command kCommands[] = {
    {"info",
     "library, AEAD engines and backends with their probe facts",
     Info,
     {}},
    {"snapshot",
     "launch an emulated CVM, snapshot it to a sealed file, digest its memory",
     Snapshot, kSnapshotFlags},
    {"restore",
     "restore a snapshot into a fresh CVM and check its memory digest", Restore,
     kRestoreFlags},
};

void Usage(std::FILE* out) {
  fmt::print(out, "usage: cpc <command> [options]\n\ncommands:\n");
  for (const auto& c : kCommands) {
    fmt::print(out, "  {:<10} {}\n", c.name, c.help);
    for (const auto& f : c.flags) {
      std::string flag = fmt::format("--{}", f.name);
      if (!f.value.empty()) flag += fmt::format(" {}", f.value);
      fmt::print(out, "      {:<20} {}\n", flag, f.help);
    }
  }
  fmt::print(out,
             "\nexit codes: 0 ok, 1 operation failed, 2 usage error. "
             "CPC_LOG=info shows libcpc's log.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage(stderr);
    return kExitUsage;
  }
  std::string_view cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    Usage(stdout);
    return 0;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const auto& c : kCommands)
    if (c.name == cmd) return c.run(args);
  return UsageFail(fmt::format("unknown command '{}'", cmd));
}
