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
//   cpc migrate   launches an emulated CVM (the source VMM), lets its
//                 workload run and live-migrates it over TCP to a `cpc
//                 incoming` (its own child process unless --to names one),
//                 then proves equal memory with in-CVM digests on both sides
//                 and that the source can no longer run
//   cpc incoming  the destination VMM: receives one migration on another
//                 emulated chip, digests the arrived guest's memory in the
//                 CVM ("digest <hex> pages <n>"), runs it, shuts it down
//
// There is no persistent VMM daemon: `cpc snapshot` / `cpc migrate` launch
// the CVM they work on, and the CVM `cpc restore` / `cpc incoming` receive
// ends with the command.
//
// Errors are one line on stderr ("cpc: <status>") and a non-zero exit code:
// 2 for usage errors, 1 for failed operations. Progress goes to stderr (a bar
// on a terminal, a few plain lines otherwise); results go to stdout.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <poll.h>
#include <signal.h>
#include <span>
#include <spawn.h>
#include <sstream>
#include <string>
#include <string_view>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>

#include <cpc/fmt.h>
#include <cpc/migrate.h>
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
#include "transport/tcp.h"

extern char** environ;

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
    {"background", "",
     "background snapshot: the guest runs on during the copy (copy-on-write "
     "inside the CVM)"},
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
  bool background = false;
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
  so.launch = config;
  // The digest is measured inside the paused guest at the snapshot's
  // instant: after the copy (stop-and-copy, the guest still paused), or
  // right before `begin` (background, the guest runs on during the copy).
  std::optional<MemoryDigest> digest;
  auto measure = [&]() -> Status {
    auto d = RunDigest(*backend, cvm, config.hvcpus[0].index, std::move(token),
                       digest_pages, a.progress);
    if (!d.ok())
      return d.status().WithContext("memory digest of the paused guest");
    digest = std::move(*d);
    return Status::Ok();
  };
  so.background = a.background;
  so.resume = a.background;
  if (a.background && a.verify) so.at_pause = measure;
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

  if (!a.background) {
    // The guest is still paused: its memory is exactly what the file holds.
    if (a.verify) {
      Status d = measure();
      if (!d.ok()) {
        (void)backend->ResumeGuest(cvm);
        return d;
      }
    }
    CPC_RETURN_IF_ERROR(backend->ResumeGuest(cvm));
  }
  const double extra_pause_s =
      a.background ? 0 : Seconds(cpc::Clock::now() - snapshot_end);

  CPC_ASSIGN_OR_RETURN(cpc::SnapshotInfo info, cpc::ReadSnapshotInfo(a.out));
  fmt::print("snapshot written to {} (serial {}, measurement {}...)\n", a.out,
             info.serial, Hex(info.measurement).substr(0, 32));
  PrintStats(stats, false);
  PrintRow("downtime", HumanSeconds(Seconds(stats.paused) + extra_pause_s) +
                           (a.verify ? " (paused + digest, until resumed)"
                                     : " (paused, until resumed)"));
  if (a.background)
    PrintRow("copied", fmt::format("{} pages (written by the running guest "
                                   "before they were saved)",
                                   stats.copied_pages));
  PrintRow("launch", HumanSeconds(launch_s) + " (of the CVM snapshotted)");
  if (digest) {
    DigestFile df;
    df.serial = info.serial;
    df.measurement = Hex(info.measurement);
    df.pages = digest->pages;
    df.sha256 = Hex(digest->sha256);
    CPC_RETURN_IF_ERROR(WriteDigestFile(DigestPath(a.out), df));
    fmt::print(
        "memory digest (in-CVM audit.digest of the paused guest at the "
        "snapshot's instant, {} pages, {}): {}\n",
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
  a.background = f.Has("background");
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

// ------------------------------------------------------------ migration

// The policy `cpc migrate` launches with: the migrate module (every
// procedure; MigrateOut / MigrateIn request their own tokens) and
// audit.digest, the memory-equality proof. The destination launches with the
// same policy: it is part of the launch configuration the source sends, and
// of the measurement both CVMs attest to each other.
cpc::TenantPolicy MigratePolicy(uint64_t memory_bytes) {
  cpc::ModulePolicy migrate;
  migrate.module = "migrate";
  migrate.procedures = {"hello",  "accept", "send", "resume", "recv",
                        "commit", "abort",  "ack",  "rejoin"};
  migrate.per_call = {0, 0};
  cpc::ModulePolicy audit;
  audit.module = "audit";
  audit.procedures = {"digest"};
  audit.per_call = {memory_bytes, 0};
  cpc::TenantPolicy policy;
  policy.modules = {migrate, audit};
  return policy;
}

// The emulated chip each side's machine is: the destination is "another
// machine" (another chip, another attestation key).
constexpr uint64_t kSourceChip = 1;
constexpr uint64_t kDestinationChip = 2;

std::string DirtyRate(double pages_per_s) {
  return fmt::format(
      "{:.0f} pages/s ({})", pages_per_s,
      pages_per_s > 0 ? HumanRate(pages_per_s * cpc::kPageSize) : "0 MB/s");
}

// The migration bar's tail: "round 3  dirty 3 MB/s  throttle 20%".
// `final_round`: the round that started with the switch-over.
std::string MigrationDetail(const cpc::MigrationStats& st,
                            uint32_t final_round) {
  using State = cpc::MigrationStats::State;
  std::string s;
  switch (st.state) {
    case State::kSetup:
      return "setup";
    case State::kActive:
      s = fmt::format("round {}", st.rounds + 1);
      break;
    case State::kSwitchover:
      s = fmt::format("round {} (final, guest paused)", final_round);
      break;
    case State::kCompleted:
    case State::kFailed:
      s = fmt::format("{} rounds", st.rounds);
      break;
  }
  // The dirty rate is measured once a round closed.
  if (st.rounds > 0)
    s += fmt::format("  dirty {}",
                     st.dirty_pages_per_s > 0
                         ? HumanRate(st.dirty_pages_per_s * cpc::kPageSize)
                         : "0 MB/s");
  if (st.throttle > 0)
    s += fmt::format("  throttle {:.0f}%", st.throttle * 100);
  return s;
}

// What QEMU's query-migrate shows, one row each.
void PrintMigrationStats(const cpc::MigrationStats& st, bool source,
                         cpc::Duration limit) {
  PrintRow("status", cpc::MigrationStateName(st.state));
  PrintRow("streams",
           fmt::format("{} (hvCPUs, one TCP connection each)", st.streams));
  PrintRow("total",
           fmt::format("{} (guest memory)", HumanBytes(st.total_bytes)));
  PrintRow("transferred",
           fmt::format("{} ({} bytes of sealed records on the wire)",
                       HumanBytes(st.transferred_bytes), st.transferred_bytes));
  if (source)
    PrintRow("pages sent",
             fmt::format("{} (page versions, all rounds)", st.pages_sent));
  PrintRow("rounds", fmt::format("{} (full pass, then dirty pages; the "
                                 "last one with the guest paused)",
                                 st.rounds));
  if (source) {
    const double active = Seconds(st.elapsed - st.setup_time);
    PrintRow(
        "rate",
        fmt::format("{} average, {} last round",
                    HumanRate(active > 0 ? st.transferred_bytes / active : 0),
                    HumanRate(st.rate_bytes_per_s)));
    PrintRow("dirty rate", DirtyRate(st.dirty_pages_per_s) + ", last round");
    PrintRow("throttle",
             fmt::format("{:.0f}% (auto-converge)", st.throttle * 100));
    PrintRow("setup time",
             HumanSeconds(Seconds(st.setup_time)) +
                 " (connect, destination CVM launch, attested key exchange)");
  } else {
    PrintRow("setup time",
             HumanSeconds(Seconds(st.setup_time)) +
                 " (since listening: source, CVM launch, key exchange)");
  }
  PrintRow("elapsed", HumanSeconds(Seconds(st.elapsed)));
  if (source)
    PrintRow("downtime",
             fmt::format("{} expected, {} actual (limit {}; guest paused on "
                         "the source until the destination committed)",
                         HumanSeconds(Seconds(st.expected_downtime)),
                         HumanSeconds(Seconds(st.downtime)),
                         HumanSeconds(Seconds(limit))));
  if (st.reconnects > 0)
    PrintRow("reconnects", fmt::format("{}", st.reconnects));
}

// `cpc incoming` run by `cpc migrate` as its own process (the destination
// VMM of the demo): /proc/self/exe with the child's stdout and stderr coming
// back through one pipe, collected line by line on a thread.
class IncomingChild {
 public:
  IncomingChild() = default;
  IncomingChild(const IncomingChild&) = delete;
  IncomingChild& operator=(const IncomingChild&) = delete;
  ~IncomingChild() { Stop(cpc::Duration::zero()); }

  bool started() const { return started_; }
  pid_t pid() const { return pid_; }

  Status Start(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
      return Status(Code::kIoError,
                    fmt::format("pipe: {}", std::strerror(errno)), errno);
    read_fd_ = fds[0];
    std::vector<std::string> argv_s = {"cpc", "incoming"};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    // The child dies with us (see Incoming).
    std::vector<std::string> env_s = {
        fmt::format("{}={}", kParentEnv, ::getpid())};
    for (char** e = environ; *e != nullptr; ++e)
      if (!std::string_view(*e).starts_with(kParentEnv)) env_s.push_back(*e);
    std::vector<char*> env;
    for (auto& s : env_s) env.push_back(s.data());
    env.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, fds[1], STDERR_FILENO);
    const int rc = ::posix_spawn(&pid_, "/proc/self/exe", &fa, nullptr,
                                 argv.data(), env.data());
    posix_spawn_file_actions_destroy(&fa);
    ::close(fds[1]);
    if (rc != 0) {
      pid_ = 0;
      return Status(
          Code::kIoError,
          fmt::format("cannot start cpc incoming: {}", std::strerror(rc)), rc);
    }
    started_ = true;
    reader_ = std::thread([this] { ReadLines(); });
    return Status::Ok();
  }

  // The child's first output line; nullopt if it ended (or stayed silent
  // for `timeout`) first.
  std::optional<std::string> FirstLine(cpc::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !lines_.empty() || eof_; });
    if (lines_.empty()) return std::nullopt;
    return lines_.front();
  }

  // Waits up to `timeout` for the child to exit, kills it after that, reaps
  // it and collects the rest of its output. Returns its exit code (128 +
  // signal if killed); idempotent.
  int Stop(cpc::Duration timeout) {
    if (pid_ > 0) {
      const auto until = cpc::Clock::now() + timeout;
      int st = 0;
      bool reaped = false;
      for (;;) {
        const pid_t r = ::waitpid(pid_, &st, WNOHANG);
        if (r == pid_) {
          reaped = true;
          break;
        }
        if (r < 0 && errno != EINTR) break;
        if (cpc::Clock::now() >= until) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (!reaped) {
        ::kill(pid_, SIGKILL);
        pid_t r;
        while ((r = ::waitpid(pid_, &st, 0)) < 0 && errno == EINTR) {
        }
        reaped = r == pid_;
      }
      if (reaped)
        exit_code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      pid_ = 0;
    }
    if (reader_.joinable()) {
      // The CVM processes the child launched hold the pipe a moment longer.
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, std::chrono::seconds(2), [&] { return eof_; });
      }
      stop_ = true;
      reader_.join();
    }
    if (read_fd_ >= 0) {
      ::close(read_fd_);
      read_fd_ = -1;
    }
    return exit_code_;
  }

  std::vector<std::string> Lines() {
    std::lock_guard<std::mutex> lock(mu_);
    return lines_;
  }

  // Its last error line ("cpc: ..."), or a description of how it ended.
  std::string ErrorLine() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = lines_.rbegin(); it != lines_.rend(); ++it)
      if (it->starts_with("cpc: ")) return it->substr(5);
    return fmt::format("exit code {}", exit_code_);
  }

  static constexpr std::string_view kParentEnv = "CPC_INCOMING_PARENT";

 private:
  void ReadLines() {
    std::string partial;
    char buf[4096];
    while (!stop_.load()) {
      pollfd p{read_fd_, POLLIN, 0};
      const int r = ::poll(&p, 1, 100);
      if (r == 0 || (r < 0 && errno == EINTR)) continue;
      if (r < 0) break;
      const ssize_t n = ::read(read_fd_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      partial.append(buf, static_cast<size_t>(n));
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t nl; (nl = partial.find('\n')) != std::string::npos;) {
        lines_.push_back(partial.substr(0, nl));
        partial.erase(0, nl + 1);
      }
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!partial.empty()) lines_.push_back(partial);
    eof_ = true;
    cv_.notify_all();
  }

  bool started_ = false;
  pid_t pid_ = 0;
  int read_fd_ = -1;
  int exit_code_ = -1;
  std::thread reader_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;  // guarded by mu_
  bool eof_ = false;                // guarded by mu_
};

// "digest <hex> pages <n> ...": the machine-readable line of `cpc incoming`.
struct PeerDigest {
  std::string sha256;
  uint64_t pages = 0;
};

std::optional<PeerDigest> FindDigestLine(
    const std::vector<std::string>& lines) {
  for (const auto& line : lines) {
    std::istringstream in(line);
    std::string word, hex, pages_word;
    PeerDigest d;
    if (in >> word >> hex >> pages_word >> d.pages && word == "digest" &&
        pages_word == "pages" && hex.size() == 64 &&
        hex.find_first_not_of("0123456789abcdef") == std::string::npos) {
      d.sha256 = hex;
      return d;
    }
  }
  return std::nullopt;
}

// --------------------------------------------------------------- incoming

constexpr FlagSpec kIncomingFlags[] = {
    {"listen", "HOST:PORT",
     "address to accept the migration on (required; port 0 = any free port)"},
    {"run-ms", "T", "let the migrated guest run T ms before shutdown (200)"},
    {"progress", "MODE", "auto | bar | lines | none (default auto)"},
};

struct IncomingArgs {
  std::string listen;
  uint64_t run_ms = 200;
  ProgressMode progress = ProgressMode::kAuto;
};

Status RunIncoming(const IncomingArgs& a) {
  CPC_ASSIGN_OR_RETURN(
      auto backend,
      cpc::BackendRegistry::Builtin().Create(
          "", {{"chip_seed", fmt::format("{}", kDestinationChip)}}));
  auto* emu = dynamic_cast<cpc::emu::EmulatedBackend*>(backend.get());
  if (emu == nullptr)
    return Status(Code::kUnimplemented,
                  fmt::format("cpc incoming needs an emulated backend, not {}",
                              backend->name()));
  // The progress display is shared by the migration's progress callback and
  // the hooks below: serialised.
  std::mutex display_mu;
  Progress progress("incoming", a.progress);
  std::vector<uint8_t> token;
  uint64_t digest_pages = 0;
  Status token_status(Code::kFailedPrecondition,
                      "the destination CVM was never handed over before its "
                      "pause");
  cpc::IncomingOptions io;
  io.listen = a.listen;
  io.accept_timeout = std::chrono::minutes(10);
  io.resume = false;  // digest first, at the state the source had
  io.on_listening = [&](const std::string& where) {
    fmt::print("listening on {}\n", where);
    std::fflush(stdout);
    std::lock_guard<std::mutex> lock(display_mu);
    progress.Phase("waiting for the source VMM");
  };
  // The audit token is asked from the fresh CVM's agent before MigrateIn
  // pauses it: a paused guest's agent cannot answer.
  io.before_pause = [&](cpc::CvmHandle fresh) {
    std::lock_guard<std::mutex> lock(display_mu);
    auto info = emu->Info(fresh);
    if (!info.ok()) {
      token_status = info.status();
      return;
    }
    progress.Break();  // a terminal shows stdout and stderr on one screen
    fmt::print(
        "launched the destination {} CVM (pid {}, {} guest memory, emulated "
        "chip {}) from the source's launch configuration; receiving\n",
        backend->name(), info->pid, HumanBytes(info->memory_bytes),
        kDestinationChip);
    std::fflush(stdout);
    digest_pages = info->cpc_base / cpc::kPageSize;
    auto t = backend->RequestToken(fresh, AuditRequest(digest_pages));
    if (t.ok()) {
      token = std::move(*t);
      token_status = Status::Ok();
    } else {
      token_status = t.status().WithContext("audit token from the fresh CVM");
    }
    progress.Restart();  // rate and ETA of the migration, not the wait
  };
  auto r = cpc::MigrateIn(*backend, io, [&](const cpc::MigrationStats& st) {
    if (st.state == cpc::MigrationStats::State::kSetup) return;
    std::lock_guard<std::mutex> lock(display_mu);
    progress.Detail(st.state == cpc::MigrationStats::State::kActive
                        ? fmt::format("round {}", st.rounds + 1)
                        : fmt::format("{} rounds", st.rounds));
    progress.Update(st.transferred_bytes,
                    std::max(st.total_bytes, st.transferred_bytes));
  });
  if (!r.ok()) {
    progress.Abandon();
    return r.status().WithContext(
        fmt::format("incoming migration on {}", a.listen));
  }
  const cpc::CvmHandle cvm = r->cvm;
  const cpc::MigrationStats stats = r->stats;
  progress.Detail(fmt::format("{} rounds", stats.rounds));
  progress.Finish(stats.transferred_bytes, stats.transferred_bytes);
  fmt::print(
      "migration completed: the guest arrived over {} stream(s) in {} "
      "round(s), {} received; it is paused and committed here\n",
      stats.streams, stats.rounds, HumanBytes(stats.transferred_bytes));
  std::fflush(stdout);

  // Committed but not yet running: its memory is the source's at the
  // switch-over. (The backend destroys the CVM on every return.)
  CPC_RETURN_IF_ERROR(token_status);
  auto d =
      RunDigest(*backend, cvm, 0, std::move(token), digest_pages, a.progress);
  if (!d.ok())
    return d.status().WithContext("memory digest of the migrated guest");
  fmt::print(
      "digest {} pages {} (in-CVM audit.digest of the migrated guest before "
      "it runs here, {})\n",
      Hex(d->sha256), d->pages, HumanRate(d->rate));
  std::fflush(stdout);

  CPC_RETURN_IF_ERROR(backend->ResumeGuest(cvm));
  CPC_RETURN_IF_ERROR(backend->ReadDirtyLog(cvm, true).status());
  if (a.run_ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(a.run_ms));
  CPC_ASSIGN_OR_RETURN(auto dirty, backend->ReadDirtyLog(cvm, true));
  // The resumed guest's agent answers: the guest OS runs here now.
  auto alive = backend->RequestToken(cvm, AuditRequest(1));
  if (!alive.ok())
    return alive.status().WithContext("migrated guest after resume");
  fmt::print(
      "guest resumed on this machine: in {} ms it dirtied {} pages ({}) and "
      "its agent answered\n",
      a.run_ms, dirty.size(), HumanBytes(dirty.size() * cpc::kPageSize));
  fmt::print("incoming migration statistics:\n");
  PrintMigrationStats(stats, false, cpc::Duration::zero());
  CPC_RETURN_IF_ERROR(backend->DestroyCvm(cvm));
  fmt::print("CVM shut down (no persistent VMM)\n");
  return Status::Ok();
}

int Incoming(const std::vector<std::string>& args) {
  // Started by `cpc migrate` (IncomingChild): end with it.
  if (const char* parent =
          std::getenv(std::string(IncomingChild::kParentEnv).c_str())) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (fmt::format("{}", ::getppid()) != parent) return kExitFailure;
  }
  // Line by line, also into a pipe: `cpc migrate` reads it as it comes.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  Flags f;
  if (auto e = f.Parse("incoming", kIncomingFlags, args)) return UsageFail(*e);
  IncomingArgs a;
  std::optional<std::string> err;
  a.listen = f.Str("listen");
  a.run_ms = f.U64("run-ms", a.run_ms, 0, 86'400'000, &err);
  if (err) return UsageFail("incoming: " + *err);
  if (a.listen.empty())
    return UsageFail("incoming: --listen HOST:PORT is required");
  if (auto ep = cpc::net::ParseEndpoint(a.listen); !ep.ok())
    return UsageFail("incoming: --listen: " + ep.status().message());
  auto mode = ParseProgressMode(f.Str("progress", "auto"));
  if (!mode)
    return UsageFail("incoming: --progress must be auto, bar, lines or none");
  a.progress = *mode;
  Status s = RunIncoming(a);
  return s.ok() ? 0 : Fail(s);
}

// ---------------------------------------------------------------- migrate

constexpr FlagSpec kMigrateFlags[] = {
    {"memory-mib", "N", "guest memory in MiB (default 2048)"},
    {"streams", "N", "hvCPUs = TCP streams (default 2)"},
    {"workload", "KIND", "idle | dirty (default dirty)"},
    {"dirty-mib-s", "R", "dirty workload: MiB written per second (default 32)"},
    {"wss-mib", "W", "dirty workload: working set in MiB (default 64)"},
    {"downtime-ms", "L", "downtime limit in ms (default 50)"},
    {"to", "HOST:PORT",
     "migrate to a `cpc incoming` there (default: start one locally)"},
    {"run-ms", "T",
     "run the guest T ms before migrating, then on the destination (200)"},
    {"progress", "MODE", "auto | bar | lines | none (default auto)"},
};

struct MigrateArgs {
  uint64_t memory_mib = 2048;
  uint32_t streams = 2;
  std::string workload = "dirty";
  double dirty_mib_s = 32;
  uint64_t wss_mib = 64;
  uint64_t downtime_ms = 50;
  std::string to;
  uint64_t run_ms = 200;
  ProgressMode progress = ProgressMode::kAuto;
};

Status RunMigrate(const MigrateArgs& a) {
  CPC_ASSIGN_OR_RETURN(
      auto backend, cpc::BackendRegistry::Builtin().Create(
                        "", {{"chip_seed", fmt::format("{}", kSourceChip)}}));
  const uint64_t memory_bytes = a.memory_mib << 20;
  cpc::LaunchConfig config;
  config.memory_bytes = memory_bytes;
  config.gvcpus = 2;
  for (uint32_t i = 0; i < a.streams; ++i)
    config.hvcpus.push_back({i, cpc::Isolation::kPlain});
  config.policy = MigratePolicy(memory_bytes).Serialize();
  config.options = {{"workload", a.workload}};
  if (a.workload == "dirty") {
    config.options["dirty_mib_s"] = fmt::format("{}", a.dirty_mib_s);
    config.options["wss_mib"] = fmt::format("{}", a.wss_mib);
  }
  // Ring buffers of both sides' streams in the host-shared region.
  config.options["shared_mib"] = fmt::format("{}", 8 * a.streams + 2);

  const auto t0 = cpc::Clock::now();
  CPC_ASSIGN_OR_RETURN(cpc::CvmHandle cvm, backend->LaunchCvm(config));
  const double launch_s = Seconds(cpc::Clock::now() - t0);
  fmt::print(
      "source VMM (pid {}, emulated chip {}): launched {} CVM: {} guest "
      "memory, 2 gvCPUs, {} hvCPU(s), workload {}{} ({})\n",
      ::getpid(), kSourceChip, backend->name(), HumanBytes(memory_bytes),
      a.streams, a.workload,
      a.workload == "dirty"
          ? fmt::format(" ({} MiB/s over {} MiB)", a.dirty_mib_s, a.wss_mib)
          : "",
      HumanSeconds(launch_s));
  std::fflush(stdout);

  // The destination VMM: a `cpc incoming` process of our own unless --to
  // names one. (It is reaped on every return.)
  IncomingChild child;
  std::string destination = a.to;
  if (destination.empty()) {
    CPC_RETURN_IF_ERROR(
        child.Start({"--listen", "127.0.0.1:0", "--progress", "none",
                     "--run-ms", fmt::format("{}", a.run_ms)}));
    const pid_t pid = child.pid();
    auto first = child.FirstLine(std::chrono::seconds(30));
    if (!first || !first->starts_with("listening on ")) {
      child.Stop(std::chrono::seconds(2));
      return Status(Code::kUnavailable,
                    fmt::format("the destination VMM (cpc incoming, pid {}) "
                                "did not start: {}",
                                pid, first ? *first : child.ErrorLine()));
    }
    destination = first->substr(std::string_view("listening on ").size());
    fmt::print(
        "destination VMM (pid {}, emulated chip {}): cpc incoming listening "
        "on {}\n",
        pid, kDestinationChip, destination);
    std::fflush(stdout);
  }
  if (a.run_ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(a.run_ms));

  // The digest token is requested now: once the migration paused the guest,
  // its agent (guest-OS code) cannot answer.
  const uint64_t digest_pages = DigestPages(*backend, cvm, memory_bytes);
  CPC_ASSIGN_OR_RETURN(auto token,
                       backend->RequestToken(cvm, AuditRequest(digest_pages)));

  cpc::MigrateOptions mo;
  mo.destination = destination;
  mo.hvcpus.clear();
  for (const auto& h : config.hvcpus) mo.hvcpus.push_back(h.index);
  mo.downtime_limit = std::chrono::milliseconds(a.downtime_ms);
  mo.launch = config;
  fmt::print(
      "migrating to {}: {} stream(s), downtime limit {} ms (the destination "
      "launches its CVM, the two CVMs attest each other, then precopy)\n",
      destination, a.streams, a.downtime_ms);
  std::fflush(stdout);
  cpc::MigrationStats stats;
  {
    Progress progress("migrate ", a.progress);
    // On a terminal only: plain progress lines stay quiet until pages move,
    // so that a failed setup is just its error line.
    if (progress.bar())
      progress.Phase("setup: destination CVM launch, attested key exchange");
    auto state = cpc::MigrationStats::State::kSetup;
    uint32_t final_round = 0;
    auto r =
        cpc::MigrateOut(*backend, cvm, mo, [&](const cpc::MigrationStats& st) {
          if (st.state != state) {
            state = st.state;
            if (st.state == cpc::MigrationStats::State::kActive) {
              progress.Restart();  // the rate of the precopy, not the setup
              progress.Phase(fmt::format("precopy over {} stream(s) (setup {})",
                                         st.streams,
                                         HumanSeconds(Seconds(st.setup_time))));
            } else if (st.state == cpc::MigrationStats::State::kSwitchover) {
              final_round = st.rounds + 1;
              progress.Phase(fmt::format(
                  "switch-over after {} round(s): guest paused, expected "
                  "downtime {}",
                  st.rounds, HumanSeconds(Seconds(st.expected_downtime))));
            }
          }
          if (st.state == cpc::MigrationStats::State::kSetup) return;
          progress.Detail(MigrationDetail(st, final_round));
          progress.Update(st.transferred_bytes,
                          std::max(st.total_bytes,
                                   st.transferred_bytes + st.remaining_bytes));
        });
    if (!r.ok()) {
      progress.Abandon();
      child.Stop(std::chrono::seconds(5));
      return r.status().WithContext(
          fmt::format("migration to {}", destination));
    }
    stats = *r;
    progress.Detail(MigrationDetail(stats, final_round));
    progress.Finish(stats.transferred_bytes, stats.transferred_bytes);
  }
  fmt::print("migration completed (source VMM's statistics):\n");
  PrintMigrationStats(stats, true, mo.downtime_limit);
  std::fflush(stdout);

  // The source is paused at the switch-over state: digest it in the CVM.
  auto digest = RunDigest(*backend, cvm, config.hvcpus[0].index,
                          std::move(token), digest_pages, a.progress);
  if (!digest.ok())
    return digest.status().WithContext(
        "memory digest of the migrated-out "
        "source");
  const std::string src_hex = Hex(digest->sha256);
  fmt::print(
      "source memory digest (in-CVM audit.digest of the paused, migrated-out "
      "source, {} pages, {}): {}\n",
      digest->pages, HumanRate(digest->rate), src_hex);
  // Never both run: the source's platform refuses to run it again.
  Status resumed = backend->ResumeGuest(cvm);
  if (resumed.ok())
    return Status(Code::kInternal,
                  "the source CVM resumed after it migrated out");
  fmt::print("source can no longer run: ResumeGuest refused: {} ({})\n",
             cpc::CodeName(resumed.code()), resumed.message());
  CPC_RETURN_IF_ERROR(backend->DestroyCvm(cvm));
  fmt::print("source CVM destroyed\n");
  std::fflush(stdout);

  if (!child.started()) {
    fmt::print(
        "memory equality: compare with the 'digest' line of cpc incoming on "
        "{}: {} pages, {}\n",
        destination, digest->pages, src_hex);
    return Status::Ok();
  }
  // The destination digests, runs and shuts down its CVM, then exits.
  const pid_t pid = child.pid();
  const int rc = child.Stop(std::chrono::seconds(120) +
                            std::chrono::milliseconds(a.run_ms));
  fmt::print("destination VMM (cpc incoming, pid {}) said:\n", pid);
  const auto lines = child.Lines();
  for (size_t i = 1; i < lines.size(); ++i) fmt::print("  | {}\n", lines[i]);
  std::fflush(stdout);
  if (rc != 0)
    return Status(Code::kAborted,
                  fmt::format("the destination VMM (cpc incoming, pid {}) "
                              "failed: {}",
                              pid, child.ErrorLine()));
  auto peer = FindDigestLine(lines);
  if (!peer)
    return Status(Code::kInternal,
                  "the destination VMM (cpc incoming) printed no digest line");
  if (peer->sha256 != src_hex || peer->pages != digest->pages)
    return Status(
        Code::kDataLoss,
        fmt::format("memory equality: FAIL: the destination's digest {} ({} "
                    "pages) differs from the source's {} ({} pages)",
                    peer->sha256, peer->pages, src_hex, digest->pages));
  fmt::print(
      "memory equality: PASS (digest {}, {} pages: the source at the "
      "switch-over == the destination before it ran, both computed inside "
      "the CVMs)\n",
      src_hex, digest->pages);
  return Status::Ok();
}

int Migrate(const std::vector<std::string>& args) {
  Flags f;
  if (auto e = f.Parse("migrate", kMigrateFlags, args)) return UsageFail(*e);
  MigrateArgs a;
  std::optional<std::string> err;
  a.memory_mib = f.U64("memory-mib", a.memory_mib, 16, 1 << 20, &err);
  a.streams = static_cast<uint32_t>(f.U64("streams", a.streams, 1, 16, &err));
  a.workload = f.Str("workload", a.workload);
  a.dirty_mib_s = f.Double("dirty-mib-s", a.dirty_mib_s, 0.001, 1e6, &err);
  a.wss_mib = f.U64("wss-mib", std::min<uint64_t>(a.wss_mib, a.memory_mib / 4),
                    1, 1 << 20, &err);
  a.downtime_ms = f.U64("downtime-ms", a.downtime_ms, 1, 3'600'000, &err);
  a.to = f.Str("to");
  a.run_ms = f.U64("run-ms", a.run_ms, 0, 86'400'000, &err);
  if (err) return UsageFail("migrate: " + *err);
  if (a.memory_mib % 2 != 0)
    return UsageFail("migrate: --memory-mib must be a multiple of 2");
  if (a.workload != "idle" && a.workload != "dirty")
    return UsageFail(fmt::format(
        "migrate: --workload must be idle or dirty, not '{}'", a.workload));
  if (a.workload == "dirty" && a.wss_mib > a.memory_mib / 2)
    return UsageFail("migrate: --wss-mib must be at most half the memory");
  if (f.Has("to")) {
    if (auto ep = cpc::net::ParseEndpoint(a.to); !ep.ok())
      return UsageFail("migrate: --to: " + ep.status().message());
  }
  auto mode = ParseProgressMode(f.Str("progress", "auto"));
  if (!mode)
    return UsageFail("migrate: --progress must be auto, bar, lines or none");
  a.progress = *mode;
  Status s = RunMigrate(a);
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
    {"migrate",
     "live-migrate a running emulated CVM to another VMM process, prove "
     "memory equality",
     Migrate, kMigrateFlags},
    {"incoming",
     "the destination VMM of a migration: receive, digest, run the guest",
     Incoming, kIncomingFlags},
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
