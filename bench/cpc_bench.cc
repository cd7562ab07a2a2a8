// cpc-bench: libcpc's benchmarks. One JSON object per line on stdout:
//   {"name", "value", "unit", "baseline", "baseline_value", "ratio", ...}
// where ratio = value / baseline_value and the baseline ran in the same
// process, interleaved repetition by repetition with the measured code (so
// drift hits both alike). Diagnostics go to stderr (every round's time too
// with CPC_BENCH_VERBOSE=1).
//
//   cpc-bench [--list] [--mib N] [--reps N] [--cpu N] [--engine NAME]
//             [--pages-per-record N] [--snapshot-mib N] [--streams N]
//             [--dir DIR] [FILTER...]
//
// A benchmark runs if its name contains any FILTER (all if none). New
// benchmarks (migration, ...) are one more row in kBenchmarks.
//
// snapshot / restore: an emulated CVM of --snapshot-mib MiB (default 2048)
// is snapshotted to a file in --dir (default $TMPDIR or /tmp), against a
// plaintext write() of the same number of guest bytes to the same filesystem
// from a pre-faulted buffer in 1 MiB chunks (same open flags); restore is
// timed against a plaintext read() of as many bytes. ratio = time / plaintext
// time (lower is better). Both writers fsync() before close (TakeSnapshot
// does); each written file is unlinked after its round and the filesystem
// synced (syncfs, untimed) before the next round. Variants run in pairs
// (A A B B ...) and only the second run of a pair counts, so each timed run
// follows a run of its own kind. Nothing is dropped
// from the page cache: both restore inputs were just written and are read
// from the cache alike.
//
// migrate: MigrateOut/MigrateIn of an emulated CVM of --snapshot-mib MiB
// over --streams loopback TCP connections (--workload idle|dirty:MIB_S:WSS),
// timed without setup (destination launch, key exchange). The baseline is
// the same migration, same options, between two CVMs launched from the
// bench-only image cpc-cvm-nullaead (its AEAD engine is a plain copy with a
// zero tag; $CPC_BENCH_NULL_AEAD_IMAGE overrides its path), so ratio = what
// AES-GCM costs the pipeline. Downtime is reported for both; a plaintext
// transfer over the bare TCP transport is an extra reference
// (plaintext_tcp_s, ratio_plaintext_tcp). cpu_s: CPU seconds the migration
// window took (both VMMs, both CVMs, softirq threads), steadier than wall
// time on a shared machine. $CPC_BENCH_MIGRATE_NO_NULL skips the null-AEAD
// pass; $CPC_BENCH_PERF_CTL lets perf sample only the migration windows.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <pthread.h>
#include <sched.h>
#include <sstream>
#include <string>
#include <string_view>
#include <sys/mman.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>

#include <cpc/backend.h>
#include <cpc/migrate.h>
#include <cpc/policy.h>
#include <cpc/registry.h>
#include <cpc/secret.h>
#include <cpc/snapshot.h>

#include "emulator/host.h"
#include "emulator/launch.h"
#include "operators/aead.h"
#include "operators/operators.h"
#include "operators/record_codec.h"
#include "transport/tcp.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  uint64_t mib = 512;
  int reps = 7;
  int cpu = 0;
  std::string engine;  // empty: every available engine
  uint32_t pages_per_record = cpc::kDefaultPagesPerRecord;
  uint64_t snapshot_mib = 2048;
  uint32_t streams = 1;
  std::string workload = "idle";  // migrate: idle, or dirty:MIB_S:WSS_MIB
  std::string dir;                // empty: $TMPDIR, else /tmp
  std::vector<std::string> filters;
};

[[noreturn]] void Die(const cpc::Status& s, std::string_view what) {
  std::fprintf(stderr, "cpc-bench: %.*s: %s\n", static_cast<int>(what.size()),
               what.data(), s.ToString().c_str());
  std::exit(1);
}
template <typename T>
T Check(cpc::Result<T> r, std::string_view what) {
  if (!r.ok()) Die(r.status(), what);
  return std::move(r).value();
}
void Check(const cpc::Status& s, std::string_view what) {
  if (!s.ok()) Die(s, what);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Anonymous memory on transparent huge pages, pre-faulted, page-aligned.
class Buffer {
 public:
  explicit Buffer(size_t bytes) : size_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("mmap");
      std::exit(1);
    }
    madvise(p, bytes, MADV_HUGEPAGE);
    data_ = static_cast<uint8_t*>(p);
    std::memset(data_, 1, bytes);  // pre-fault outside any timing
  }
  ~Buffer() { munmap(data_, size_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* data() { return data_; }
  size_t size() const { return size_; }
  // Touches every page again (untimed), in case the kernel reclaimed or
  // split any of it while another variant ran (DAMON, THP splitting).
  void Refault() {
    for (size_t i = 0; i < size_; i += 4096)
      reinterpret_cast<volatile uint8_t*>(data_)[i] = data_[i];
  }
  std::span<uint8_t> span() { return {data_, size_}; }

  // Incompressible content (xorshift64*).
  void Randomize(uint64_t seed) {
    uint64_t x = seed | 1;
    for (size_t i = 0; i + 8 <= size_; i += 8) {
      x ^= x >> 12;
      x ^= x << 25;
      x ^= x >> 27;
      const uint64_t v = x * 0x2545F4914F6CDD1Dull;
      std::memcpy(data_ + i, &v, 8);
    }
  }

 private:
  uint8_t* data_;
  size_t size_;
};

// Guest memory for the operators: a Buffer seen through GuestPlatform.
class BenchPlatform final : public cpc::GuestPlatform {
 public:
  explicit BenchPlatform(Buffer* mem) : mem_(mem) {}
  uint64_t memory_bytes() const override { return mem_->size(); }
  cpc::GpaRange GuestOsMemory() const override {
    return {0, memory_bytes() / cpc::kPageSize};
  }
  uint32_t vcpu_count() const override { return 0; }
  cpc::Result<std::span<const uint8_t>> PrivatePageForRead(
      cpc::Gpa gpa) override {
    return std::span<const uint8_t>(mem_->data() + gpa, cpc::kPageSize);
  }
  cpc::Result<std::span<uint8_t>> PrivatePageForWrite(cpc::Gpa gpa) override {
    return std::span<uint8_t>(mem_->data() + gpa, cpc::kPageSize);
  }
  cpc::Result<std::vector<uint8_t>> ExportVcpuState(uint32_t) override {
    return No();
  }
  cpc::Status ImportVcpuState(uint32_t, std::span<const uint8_t>) override {
    return No();
  }
  cpc::Status IsolateSecureCpc(uint32_t, cpc::GpaRange) override {
    return No();
  }
  cpc::Status PageStateChange(cpc::GpaRange, cpc::PageState) override {
    return No();
  }
  cpc::Result<std::vector<uint8_t>> AttestationReport(
      std::span<const uint8_t, 64>) override {
    return No();
  }
  cpc::Result<cpc::SecretBytes> SealingKey(std::span<const uint8_t>) override {
    return No();
  }
  cpc::Result<std::vector<uint8_t>> AttestationEvidence(
      std::span<const uint8_t, 64>) override {
    return No();
  }
  cpc::Status VerifyPeerEvidence(std::span<const uint8_t>,
                                 std::span<const uint8_t, 64>) override {
    return No();
  }
  cpc::Result<std::vector<cpc::Gpa>> TakeWrittenPages() override {
    return No();
  }
  cpc::Status SetGuestOsRunnable(bool) override { return No(); }

 private:
  static cpc::Status No() {
    return cpc::Status(cpc::Code::kUnimplemented, "bench platform");
  }
  Buffer* mem_;
};

struct Row {
  std::string name;
  double value;
  std::string unit;
  std::string baseline;
  double baseline_value;
  std::vector<std::pair<std::string, double>> extra;
};

void Emit(const Row& r) {
  std::string line =
      fmt::format(R"({{"name":"{}","value":{:.3f},"unit":"{}","baseline":"{}",)"
                  R"("baseline_value":{:.3f},"ratio":{:.3f})",
                  r.name, r.value, r.unit, r.baseline, r.baseline_value,
                  r.baseline_value > 0 ? r.value / r.baseline_value : 0.0);
  // A skipped variant (CPC_BENCH_MIGRATE_NO_NULL) leaves divisions by zero:
  // JSON has no inf/nan, so they print as null.
  for (const auto& [k, v] : r.extra)
    line += std::isfinite(v) ? fmt::format(R"(,"{}":{:.3f})", k, v)
                             : fmt::format(R"(,"{}":null)", k);
  line += "}";
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// Runs `fns` (one per variant) interleaved, warm-up first, then `reps`
// timed rounds; returns each variant's median seconds.
std::vector<double> Interleaved(
    int reps, const std::vector<std::function<double()>>& fns) {
  static const bool verbose = std::getenv("CPC_BENCH_VERBOSE") != nullptr;
  std::vector<std::vector<double>> t(fns.size());
  for (int r = -1; r < reps; ++r)
    for (size_t i = 0; i < fns.size(); ++i) {
      double s = fns[i]();
      if (verbose)
        std::fprintf(stderr, "cpc-bench: round %d variant %zu: %.4f s\n", r, i,
                     s);
      if (r >= 0) t[i].push_back(s);
    }
  std::vector<double> med;
  for (auto& v : t) med.push_back(Median(v));
  return med;
}

// Interleaved with each variant run twice in a row, A A B B A A B B ...:
// `timed` is the median of the second run of each pair (after a run of its
// own kind), `after_other` that of the first (after the other variant).
struct PairedTimes {
  std::vector<double> timed, after_other;
};
PairedTimes Paired(int reps, const std::vector<std::function<double()>>& fns) {
  std::vector<std::function<double()>> doubled;
  for (const auto& f : fns) {
    doubled.push_back(f);
    doubled.push_back(f);
  }
  auto t = Interleaved(reps, doubled);
  PairedTimes p;
  for (size_t i = 0; i < fns.size(); ++i) {
    p.after_other.push_back(t[2 * i]);
    p.timed.push_back(t[2 * i + 1]);
  }
  return p;
}

template <typename F>
double Seconds(F&& f) {
  auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<const cpc::AeadEngine*> Engines(const Options& o) {
  if (!o.engine.empty())
    return {Check(cpc::FindAeadEngine(o.engine), "engine")};
  return cpc::AvailableAeadEngines();
}

inline void PrefetchPage(const uint8_t* p) {
  for (size_t off = 0; off < cpc::kPageSize; off += 64)
    __builtin_prefetch(p + off);
}

// Shared setup of the page benchmarks: guest memory, the ~1 MiB ring (at
// least two records), a session key.
struct PageBench {
  explicit PageBench(const Options& o)
      : opt(o),
        guest(o.mib << 20),
        ring(std::max<size_t>(1 << 20,
                              2 * cpc::MemoryRecordBytes(o.pages_per_record))),
        key(cpc::SecretBytes::Random(32)),
        platform(&guest),
        pages(guest.size() / cpc::kPageSize) {
    guest.Randomize(0x1234);
    for (uint64_t i = 0; i < pages; ++i)
      refs.push_back({i * cpc::kPageSize, 0});
  }
  double GBps(double seconds) const { return guest.size() / seconds / 1e9; }

  Options opt;
  Buffer guest, ring;
  cpc::SecretBytes key;
  BenchPlatform platform;
  uint64_t pages;
  std::vector<cpc::PageRef> refs;
  cpc::SessionId sid{'b', 'e', 'n', 'c', 'h'};
};

// ---------------------------------------------------------------- MEE

void BenchMee(const Options& o) {
  PageBench b(o);
  constexpr size_t kSlot = cpc::kBlockHeadBytes + cpc::kPageSize;
  const size_t ring_slots = b.ring.size() / kSlot;

  // memcpy: guest page -> ring, the plaintext floor of the export path.
  auto memcpy_pass = [&] {
    return Seconds([&] {
      size_t slot = 0;
      for (uint64_t i = 0; i < b.pages; ++i) {
        if (i + 2 < b.pages)
          PrefetchPage(b.guest.data() + (i + 2) * cpc::kPageSize);
        std::memcpy(b.ring.data() + slot * kSlot + cpc::kBlockHeadBytes,
                    b.guest.data() + i * cpc::kPageSize, cpc::kPageSize);
        if (++slot == ring_slots) slot = 0;
      }
    });
  };

  for (const cpc::AeadEngine* engine : Engines(o)) {
    std::fprintf(stderr, "cpc-bench: %s\n", engine->code_path().c_str());
    auto aead = Check(engine->NewKeyed(b.key.span()), "key");
    // Raw AES-256-GCM: the same pages, fresh IV + 16-byte AAD + tag each,
    // into the ring, prefetching 2 pages ahead like MEE.
    uint64_t counter = 0;
    auto raw_pass = [&] {
      return Seconds([&] {
        size_t slot = 0;
        uint8_t iv[cpc::kAeadIvBytes], aad[16] = {};
        for (uint64_t i = 0; i < b.pages; ++i) {
          const uint8_t* page = b.guest.data() + i * cpc::kPageSize;
          if (i + 2 < b.pages) PrefetchPage(page + 2 * cpc::kPageSize);
          cpc::MakeRecordIv(counter++, 0, 1, iv);
          cpc::PutLe(aad, i * cpc::kPageSize, 8);
          uint8_t* out = b.ring.data() + slot * kSlot;
          Check(aead->Seal(iv, aad, {page, cpc::kPageSize},
                           out + cpc::kBlockHeadBytes,
                           std::span<uint8_t, 16>(out + 16, 16)),
                "seal");
          if (++slot == ring_slots) slot = 0;
        }
      });
    };
    cpc::SenderOptions so;
    so.pages_per_record = o.pages_per_record;
    auto tx = Check(
        cpc::SenderSession::Create(*engine, b.key.span(), b.sid, so), "sender");
    auto mee_pass = [&] {
      return Seconds([&] {
        size_t done = 0;
        cpc::ExportProgress p;
        while (done < b.refs.size()) {
          Check(cpc::ExportMemory(tx->stream(0), b.platform,
                                  std::span(b.refs).subspan(done),
                                  b.ring.span(), nullptr, &p),
                "MEE");
          done += p.pages;
        }
      });
    };
    auto t = Interleaved(o.reps, {memcpy_pass, raw_pass, mee_pass});
    const std::string raw = fmt::format("aead-seal/{}", engine->name());
    Emit({raw, b.GBps(t[1]), "GB/s", "memcpy/guest-to-ring", b.GBps(t[0]), {}});
    Emit({fmt::format("mee/{}", engine->name()),
          b.GBps(t[2]),
          "GB/s",
          raw,
          b.GBps(t[1]),
          {{"memcpy_value", b.GBps(t[0])}, {"ratio_memcpy", t[0] / t[2]}}});
  }
}

// ---------------------------------------------------------------- MDI

void BenchMdi(const Options& o) {
  PageBench b(o);
  // The wire: every record of one MEE pass. Each timed round copies one
  // ring-full of it into the ring (untimed: the host's receive) and then
  // imports from the ring, as a destination hvCPU does.
  Buffer wire(b.pages / o.pages_per_record *
                  cpc::MemoryRecordBytes(o.pages_per_record) +
              cpc::MemoryRecordBytes(o.pages_per_record));
  Buffer dest(b.guest.size());
  BenchPlatform dest_platform(&dest);

  for (const cpc::AeadEngine* engine : Engines(o)) {
    std::fprintf(stderr, "cpc-bench: %s\n", engine->code_path().c_str());
    cpc::SenderOptions so;
    so.pages_per_record = o.pages_per_record;
    auto tx = Check(
        cpc::SenderSession::Create(*engine, b.key.span(), b.sid, so), "sender");
    cpc::ExportProgress ep;
    Check(cpc::ExportMemory(tx->stream(0), b.platform, b.refs, wire.span(),
                            nullptr, &ep),
          "MEE");
    if (ep.pages != b.refs.size())
      Die(cpc::Status(cpc::Code::kInternal, "wire"), "MEE");
    // Chunks of whole records that fit the ring.
    std::vector<std::pair<size_t, size_t>> chunks;
    for (size_t pos = 0; pos < ep.bytes;) {
      size_t len = 0;
      while (pos + len < ep.bytes) {
        auto h = Check(cpc::PeekRecordHeader(wire.span().subspan(pos + len)),
                       "peek");
        if (len + h.record_bytes > b.ring.size()) break;
        len += h.record_bytes;
      }
      chunks.push_back({pos, len});
      pos += len;
    }
    // Times `fn(ring, len)` over every chunk, excluding the copy into the ring.
    auto over_chunks = [&](auto&& fn) {
      double s = 0;
      for (auto [pos, len] : chunks) {
        std::memcpy(b.ring.data(), wire.data() + pos, len);
        s += Seconds([&] { fn(len); });
      }
      return s;
    };
    // Calls fn(ct, tag, aad16, iv, dest page) for every page in the ring.
    auto for_each_block = [&](size_t len, auto&& fn) {
      for (size_t pos = 0; pos < len;) {
        const uint8_t* rec = b.ring.data() + pos;
        const uint64_t counter = cpc::GetLe(rec + cpc::hdr::kCounter, 8);
        const uint32_t n =
            static_cast<uint32_t>(cpc::GetLe(rec + cpc::hdr::kItemCount, 4));
        const uint8_t* blk = rec + cpc::kRecordPrefixBytes + cpc::Pad64(n * 16);
        for (uint32_t i = 0; i < n;
             ++i, blk += cpc::kBlockHeadBytes + cpc::kPageSize) {
          uint8_t iv[cpc::kAeadIvBytes];
          cpc::MakeRecordIv(counter, 0, static_cast<uint16_t>(i + 1), iv);
          fn(blk + cpc::kBlockHeadBytes, blk + 16, blk, iv,
             dest.data() + cpc::GetLe(blk, 8));
        }
        pos += cpc::GetLe(rec + cpc::hdr::kRecordBytes, 4);
      }
    };
    auto memcpy_pass = [&] {
      return over_chunks([&](size_t len) {
        for_each_block(len, [](const uint8_t* ct, const uint8_t*,
                               const uint8_t*, const uint8_t*, uint8_t* dst) {
          std::memcpy(dst, ct, cpc::kPageSize);
        });
      });
    };
    auto aead = Check(engine->NewKeyed(b.key.span()), "key");
    // The engine's Open of every page: straight into the guest page, or
    // (`commit`) into one private page and then the commit copy - the floor
    // of single-pass MDI.
    alignas(64) static uint8_t scratch[cpc::kPageSize];
    auto raw_open = [&](bool commit) {
      return [&, commit] {
        return over_chunks([&](size_t len) {
          for_each_block(
              len, [&](const uint8_t* ct, const uint8_t* tag,
                       const uint8_t* aad, const uint8_t* iv, uint8_t* dst) {
                Check(aead->Open(cpc::AeadIv(iv, 12), {aad, 16},
                                 {ct, cpc::kPageSize}, commit ? scratch : dst,
                                 std::span<const uint8_t, 16>(tag, 16)),
                      "open");
                if (commit) cpc::CommitPage(dst, scratch);
              });
          if (commit) cpc::CommitFence();
        });
      };
    };
    auto mdi = [&](bool single_pass) {
      return [&, single_pass] {
        cpc::ReceiverOptions ro;
        ro.memory_bytes = dest.size();
        ro.max_pages_per_record = o.pages_per_record;
        ro.single_pass = single_pass;
        // A fresh receiver per round: the same records import again.
        auto rx = Check(cpc::Receiver::Create(*engine, b.key.span(), b.sid, ro),
                        "receiver");
        return over_chunks([&](size_t len) {
          Check(cpc::ImportRecords(rx->stream(0), dest_platform,
                                   b.ring.span().first(len), nullptr),
                "MDI");
        });
      };
    };
    auto t = Interleaved(o.reps, {memcpy_pass, raw_open(false), mdi(false),
                                  raw_open(true), mdi(true)});
    if (std::memcmp(dest.data(), b.guest.data(), dest.size()) != 0)
      Die(cpc::Status(cpc::Code::kInternal, "destination differs"), "MDI");
    const std::string raw = fmt::format("aead-open/{}", engine->name());
    Emit({raw, b.GBps(t[1]), "GB/s", "memcpy/ring-to-guest", b.GBps(t[0]), {}});
    Emit({fmt::format("mdi/{}", engine->name()),
          b.GBps(t[2]),
          "GB/s",
          raw,
          b.GBps(t[1]),
          {{"memcpy_value", b.GBps(t[0])}, {"ratio_memcpy", t[0] / t[2]}}});
    const std::string floor =
        fmt::format("aead-open+commit/{}", engine->name());
    Emit({floor, b.GBps(t[3]), "GB/s", raw, b.GBps(t[1]), {}});
    Emit({fmt::format("mdi-single-pass/{}", engine->name()),
          b.GBps(t[4]),
          "GB/s",
          floor,
          b.GBps(t[3]),
          {}});
  }
}

// ------------------------------------------------------ snapshot / restore

// The open flags of the plaintext baselines: the same as the snapshot
// file's (see src/modules/snapshot*).
constexpr int kWriteFlags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
constexpr int kReadFlags = O_RDONLY | O_CLOEXEC;
constexpr size_t kChunk = 1 << 20;

std::string BenchDir(const Options& o) {
  if (!o.dir.empty()) return o.dir;
  const char* t = std::getenv("TMPDIR");
  return t != nullptr && *t != 0 ? t : "/tmp";
}

cpc::Status Errno(std::string_view what, const std::string& path) {
  const int e = errno;
  return cpc::Status(cpc::Code::kIoError,
                     fmt::format("{} '{}': {}", what, path, std::strerror(e)),
                     e);
}

// write() of `bytes` from `buf` in 1 MiB chunks into a new file, then
// fsync() as TakeSnapshot does; seconds.
double PlainWrite(const std::string& path, Buffer& buf, uint64_t bytes) {
  buf.Refault();
  return Seconds([&] {
    int fd = ::open(path.c_str(), kWriteFlags, 0600);
    if (fd < 0) Die(Errno("open", path), "plaintext write");
    for (uint64_t off = 0; off < bytes;) {
      const size_t n = std::min<uint64_t>(kChunk, bytes - off);
      const ssize_t w = ::write(fd, buf.data() + off % buf.size(), n);
      if (w <= 0) Die(Errno("write", path), "plaintext write");
      off += static_cast<uint64_t>(w);
    }
    // TakeSnapshot fsyncs the file before it renames it into place.
    if (::fsync(fd) != 0) Die(Errno("fsync", path), "plaintext write");
    if (::close(fd) != 0) Die(Errno("close", path), "plaintext write");
  });
}

// Unlinks a file and commits the filesystem (syncfs), untimed: freeing (and,
// on a filesystem mounted with `discard`, discarding) the last round's file
// must not land in the next round's fsync, whichever side that is.
void RemoveAndSync(const std::string& path) {
  const std::string dir = path.substr(0, path.rfind('/') + 1);
  ::unlink(path.c_str());
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::syncfs(fd);
    ::close(fd);
  }
}

// read() of the whole file into `buf` in 1 MiB chunks; seconds.
double PlainRead(const std::string& path, Buffer& buf, uint64_t bytes) {
  buf.Refault();
  return Seconds([&] {
    int fd = ::open(path.c_str(), kReadFlags);
    if (fd < 0) Die(Errno("open", path), "plaintext read");
    for (uint64_t off = 0; off < bytes;) {
      const size_t n = std::min<uint64_t>(kChunk, bytes - off);
      const ssize_t r = ::read(fd, buf.data() + off % buf.size(), n);
      if (r <= 0) Die(Errno("read", path), "plaintext read");
      off += static_cast<uint64_t>(r);
    }
    ::close(fd);
  });
}

// The source CVM of the snapshot benchmarks: idle guest of --snapshot-mib,
// one hvCPU per stream, a policy that allows the snapshot module.
struct SnapshotBench {
  // `workload`: the guest's LaunchConfig options (idle unless given).
  explicit SnapshotBench(
      const Options& o,
      std::map<std::string, std::string> workload = {{"workload", "idle"}})
      : opt(o), dir(BenchDir(o)), memory_bytes(o.snapshot_mib << 20) {
    backend = Check(cpc::BackendRegistry::Builtin().Create("", {}), "backend");
    cpc::ModulePolicy snap;
    snap.module = "snapshot";
    snap.procedures = {"begin",        "extract", "finish",
                       "insert_begin", "insert",  "insert_finish"};
    cpc::TenantPolicy policy;
    policy.modules = {snap};
    config.memory_bytes = memory_bytes;
    config.gvcpus = 2;
    for (uint32_t i = 0; i < o.streams; ++i)
      config.hvcpus.push_back({i, cpc::Isolation::kPlain});
    config.policy = policy.Serialize();
    config.options = std::move(workload);
    launch_s = Seconds([&] {
      cvm = Check(backend->LaunchCvm(config), "launch the source CVM");
    });
    // What a snapshot holds: guest-OS memory, [0, cpc_base).
    bytes = memory_bytes - cpc::emu::kCpcRegionBytes;
    if (auto* emu = dynamic_cast<cpc::emu::EmulatedBackend*>(backend.get()))
      bytes = Check(emu->Info(cvm), "CVM info").cpc_base;
    options.hvcpus.clear();
    for (const auto& h : config.hvcpus) options.hvcpus.push_back(h.index);
    options.launch = config;
    std::fprintf(stderr,
                 "cpc-bench: %s CVM of %llu MiB, %u stream(s), files in %s "
                 "(launch %.3f s)\n",
                 std::string(backend->name()).c_str(),
                 static_cast<unsigned long long>(o.snapshot_mib), o.streams,
                 dir.c_str(), launch_s);
  }
  ~SnapshotBench() { (void)backend->DestroyCvm(cvm); }
  std::string Path(std::string_view what) const {
    return fmt::format("{}/cpc-bench-{}-{}.bin", dir, what, ::getpid());
  }
  std::string Label() const { return fmt::format("{}MiB", opt.snapshot_mib); }

  Options opt;
  std::string dir;
  uint64_t memory_bytes;
  uint64_t bytes = 0;  // guest bytes in a snapshot = plaintext bytes
  std::unique_ptr<cpc::Backend> backend;
  cpc::LaunchConfig config;
  cpc::CvmHandle cvm = 0;
  cpc::SnapshotOptions options;
  double launch_s = 0;
};

// Stop-and-copy snapshot of an idle guest, or (`background`) a background
// snapshot (the guest runs on during the copy) of a guest rewriting a quarter
// of its memory at 1 GiB/s, with the pages it wrote before they were saved
// (copied inside the CVM); both against the same plaintext write.
void RunSnapshotBench(const Options& o, bool background) {
  constexpr double kDirtyMibS = 1024;
  const uint64_t wss_mib = std::max<uint64_t>(1, o.snapshot_mib / 4);
  std::map<std::string, std::string> workload = {{"workload", "idle"}};
  if (background)
    workload = {{"workload", "dirty"},
                {"dirty_mib_s", fmt::format("{}", kDirtyMibS)},
                {"wss_mib", std::to_string(wss_mib)}};
  SnapshotBench b(o, std::move(workload));
  b.options.background = background;
  Buffer plain(std::min<uint64_t>(b.bytes, 256ull << 20));
  plain.Randomize(7);
  const std::string snap_path = b.Path("snapshot"),
                    plain_path = b.Path("plain");
  cpc::SnapshotStats last;
  std::vector<double> paused, copied;
  auto snapshot_pass = [&] {
    double s = Seconds([&] {
      last = Check(cpc::TakeSnapshot(*b.backend, b.cvm, snap_path, b.options),
                   "snapshot");
    });
    paused.push_back(std::chrono::duration<double>(last.paused).count());
    copied.push_back(static_cast<double>(last.copied_pages));
    RemoveAndSync(snap_path);
    return s;
  };
  auto plain_pass = [&] {
    double s = PlainWrite(plain_path, plain, b.bytes);
    RemoveAndSync(plain_path);
    return s;
  };
  // Each timed pass runs right after an untimed pass of its own kind (see
  // kPairs): on this VM a plaintext write right after a snapshot was ~3x
  // slower than after another write (fresh page-cache pages), which would
  // flatter the snapshot.
  auto t = Paired(o.reps, {plain_pass, snapshot_pass});
  std::vector<std::pair<std::string, double>> extra = {
      {"guest_gbps", b.bytes / t.timed[1] / 1e9},
      {"plaintext_gbps", b.bytes / t.timed[0] / 1e9},
      {"plaintext_after_snapshot_s", t.after_other[0]},
      {"snapshot_after_plaintext_s", t.after_other[1]},
      {"file_bytes", static_cast<double>(last.file_bytes)},
      {"paused_s", Median(paused)},
      {"streams", static_cast<double>(last.streams)}};
  if (background) {
    extra.push_back({"copied_pages", Median(copied)});
    extra.push_back({"dirty_mib_s", kDirtyMibS});
    extra.push_back({"wss_mib", static_cast<double>(wss_mib)});
  }
  Emit({(background ? "snapshot-background/" : "snapshot/") + b.Label(),
        t.timed[1], "s (lower is better)", "plaintext-write/" + b.Label(),
        t.timed[0], std::move(extra)});
}

void BenchSnapshot(const Options& o) { RunSnapshotBench(o, false); }
void BenchSnapshotBackground(const Options& o) { RunSnapshotBench(o, true); }

// Evicts a file's pages from the page cache (they are clean: both writers
// fsynced), so the next read comes from the disk.
void Evict(const std::string& path) {
  int fd = ::open(path.c_str(), kReadFlags);
  if (fd < 0) Die(Errno("open", path), "evict");
  ::fdatasync(fd);
  if (::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0)
    Die(Errno("posix_fadvise", path), "evict");
  ::close(fd);
}

// Brackets a timed window (the migrations, the hot restores after their
// launch) for an outside profiler: with
// $CPC_BENCH_PERF_CTL naming perf's --control fifo, "enable"/"disable" are
// written to it (so a profile holds those windows only, not the launches
// or the processes started meanwhile).
void PerfControl(const char* command) {
  if (std::getenv("CPC_BENCH_VERBOSE") != nullptr) {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    std::fprintf(stderr, "cpc-bench: profile window %s at %ld.%06ld\n", command,
                 static_cast<long>(ts.tv_sec), ts.tv_nsec / 1000);
  }
  static const char* fifo = std::getenv("CPC_BENCH_PERF_CTL");
  if (fifo == nullptr || *fifo == 0) return;
  if (FILE* f = std::fopen(fifo, "w")) {
    std::fprintf(f, "%s\n", command);
    std::fclose(f);
  }
}

void BenchRestore(const Options& o) {
  SnapshotBench b(o);
  const std::string snap_path = b.Path("snapshot"),
                    plain_path = b.Path("plain");
  Buffer plain(std::min<uint64_t>(b.bytes, 256ull << 20));
  plain.Randomize(7);
  // The inputs, untimed: one snapshot and a plaintext file of as many guest
  // bytes, both written and fsynced the same way.
  Check(cpc::TakeSnapshot(*b.backend, b.cvm, snap_path, b.options), "snapshot");
  PlainWrite(plain_path, plain, b.bytes);
  auto info = Check(cpc::ReadSnapshotInfo(snap_path), "snapshot info");
  // hot: both files in the page cache (just written / read in the previous
  // round); cold: both evicted (posix_fadvise DONTNEED) before every round.
  for (const bool cold : {false, true}) {
    std::vector<double> launch, total;
    cpc::SnapshotStats last;
    auto restore_pass = [&] {
      if (cold) Evict(snap_path);
      cpc::RestoreResult r;
      cpc::RestoreOptions ro;
      if (!cold)
        ro.before_pause = [](cpc::CvmHandle) { PerfControl("enable"); };
      const double s = Seconds([&] {
        r = Check(cpc::RestoreSnapshot(*b.backend, info.launch, snap_path, ro),
                  "restore");
      });
      if (!cold) PerfControl("disable");
      Check(b.backend->DestroyCvm(r.cvm), "destroy the restored CVM");
      last = r.stats;
      const double l = std::chrono::duration<double>(r.stats.launch).count();
      launch.push_back(l);
      total.push_back(s);
      return s - l;  // the restore itself, without launching the fresh CVM
    };
    auto plain_pass = [&] {
      if (cold) Evict(plain_path);
      return PlainRead(plain_path, plain, b.bytes);
    };
    auto t = Paired(o.reps, {plain_pass, restore_pass});
    const std::string cache = cold ? "-cold" : "";
    Emit({"restore" + cache + "/" + b.Label(),
          t.timed[1],
          "s (lower is better)",
          "plaintext-read" + cache + "/" + b.Label(),
          t.timed[0],
          {{"guest_gbps", b.bytes / t.timed[1] / 1e9},
           {"plaintext_gbps", b.bytes / t.timed[0] / 1e9},
           {"plaintext_after_restore_s", t.after_other[0]},
           {"restore_after_plaintext_s", t.after_other[1]},
           {"launch_s", Median(launch)},
           {"restore_incl_launch_s", Median(total)},
           {"file_bytes", static_cast<double>(last.file_bytes)},
           {"streams", static_cast<double>(last.streams)}}});
  }
  ::unlink(snap_path.c_str());
  ::unlink(plain_path.c_str());
}

// ------------------------------------------------------------ migrate

// The second reference of the migrate benchmark: the same transport (N TCP
// connections on loopback, 1 MiB frames written from / read into guest-sized
// buffers) moving plaintext, no CVM and no AEAD.
double PlainTransfer(Buffer& from, Buffer& to, uint64_t bytes, uint32_t n) {
  auto listener = Check(cpc::net::Listener::Listen({"127.0.0.1", 0}), "listen");
  const auto ep = listener->local();
  constexpr uint64_t kFrame = 1 << 20;
  to.Refault();
  return Seconds([&] {
    std::vector<std::thread> threads;
    for (uint32_t i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        auto c =
            Check(cpc::net::Connection::Connect(ep, std::chrono::seconds(5)),
                  "connect");
        for (uint64_t off = i * kFrame; off < bytes; off += n * kFrame) {
          const uint64_t len = std::min(kFrame, bytes - off);
          Check(c->WriteFrame(17, 0, {from.data() + off % from.size(), len}),
                "send");
        }
        Check(c->WriteFrame(17, 1, {}), "send end");
      });
      threads.emplace_back([&] {
        auto c = Check(listener->Accept(std::chrono::seconds(5)), "accept");
        for (;;) {
          auto h = Check(c->ReadFrameHeader(), "recv");
          if (h.flags & 1) break;
          // Frames land at their offset in the receiving guest buffer.
          static std::atomic<uint64_t> at{0};
          const uint64_t off = at.fetch_add(h.length) % (to.size() - kFrame);
          Check(c->ReadExact({to.data() + off, h.length}), "recv");
        }
      });
    }
    for (auto& t : threads) t.join();
  });
}

// The null-AEAD CVM image of the migrate baseline: $CPC_BENCH_NULL_AEAD_IMAGE,
// else the one built with this bench.
std::string NullAeadImage() {
  if (const char* env = std::getenv("CPC_BENCH_NULL_AEAD_IMAGE"); env && *env)
    return env;
#ifdef CPC_BENCH_NULL_AEAD_IMAGE
  return CPC_BENCH_NULL_AEAD_IMAGE;
#else
  return "cpc-cvm-nullaead";
#endif
}

// CPU seconds used so far by this process (both VMMs' threads, dead ones
// included), its child processes (the CVMs) and the softirq threads (where
// the kernel defers loopback TCP work): what a migration costs, which on a
// machine shared with other work says more than its wall time. -1 if /proc
// cannot be read.
double MigrationCpuSeconds() {
  auto cpu = [](clockid_t c) {
    timespec ts{};
    if (::clock_gettime(c, &ts) != 0) return 0.0;
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  };
  double sum = cpu(CLOCK_PROCESS_CPUTIME_ID);
  const pid_t self = ::getpid();
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return -1;
  while (const dirent* e = ::readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0 || pid == self) continue;
    std::ifstream stat(fmt::format("/proc/{}/stat", pid));
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...: comm may hold spaces, so parse after ')'.
    const size_t open = line.find('('), close = line.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    const std::string comm = line.substr(open + 1, close - open - 1);
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    long long ppid = 0;
    rest >> state >> ppid;
    if (ppid != self && comm.rfind("ksoftirqd", 0) != 0) continue;
    // Fields 4..13 after ppid lead to utime (14) and stime (15).
    std::string skip;
    for (int i = 0; i < 9; ++i) rest >> skip;
    unsigned long long utime = 0, stime = 0;
    rest >> utime >> stime;
    sum += (utime + stime) / tick;
  }
  ::closedir(proc);
  return sum;
}

// Per-pass statistics of one migration variant (warm-up pass included; the
// medians skip it).
struct MigrateSamples {
  std::vector<double> total, setup, down, expected, rounds, wire, throttle, cpu;
  static double Med(const std::vector<double>& v) {
    if (v.empty()) return 0;  // a variant that was skipped
    return Median(v.size() > 1 ? std::vector<double>(v.begin() + 1, v.end())
                               : v);
  }
  static double Max(const std::vector<double>& v) {
    if (v.empty()) return 0;
    return *std::max_element(v.begin() + (v.size() > 1 ? 1 : 0), v.end());
  }
};

void BenchMigrate(const Options& o) {
  auto src = Check(cpc::BackendRegistry::Builtin().Create("", {}), "backend");
  auto dst =
      Check(cpc::BackendRegistry::Builtin().Create("", {{"chip_seed", "2"}}),
            "backend");
  cpc::ModulePolicy mig;
  mig.module = "migrate";
  mig.procedures = {"hello",  "accept", "send", "resume", "recv",
                    "commit", "abort",  "ack",  "rejoin"};
  cpc::TenantPolicy policy;
  policy.modules = {mig};
  cpc::LaunchConfig config;
  config.memory_bytes = o.snapshot_mib << 20;
  config.gvcpus = 2;
  for (uint32_t i = 0; i < o.streams; ++i)
    config.hvcpus.push_back({i, cpc::Isolation::kPlain});
  config.policy = policy.Serialize();
  config.options = {{"workload", "idle"},
                    {"shared_mib", std::to_string(8 * o.streams + 2)}};
  std::string label = "idle";
  if (o.workload.starts_with("dirty:")) {
    const auto a = o.workload.find(':', 6);
    config.options["workload"] = "dirty";
    config.options["dirty_mib_s"] = o.workload.substr(6, a - 6);
    config.options["wss_mib"] = o.workload.substr(a + 1);
    label = fmt::format("dirty{}MiBps-wss{}MiB", config.options["dirty_mib_s"],
                        config.options["wss_mib"]);
  }
  // The baseline: the same configuration, both CVMs launched from the
  // null-AEAD image (its seal/open are plain copies), so real / baseline is
  // what AES-GCM (and nothing else) costs the migration.
  cpc::LaunchConfig null_config = config;
  null_config.image = NullAeadImage();
  if (::access(null_config.image.c_str(), X_OK) != 0)
    Die(Errno("access", null_config.image), "the null-AEAD baseline image");
  std::fprintf(stderr, "cpc-bench: migrate baseline image %s\n",
               null_config.image.c_str());
  const uint64_t bytes = config.memory_bytes - cpc::emu::kCpcRegionBytes;
  Buffer from(bytes), to(bytes);
  from.Randomize(9);
  MigrateSamples real, null;
  auto pass = [&](const cpc::LaunchConfig& c, MigrateSamples& out) {
    auto cvm = Check(src->LaunchCvm(c), "launch the source CVM");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::promise<std::string> where;
    cpc::IncomingOptions in;
    in.listen = "127.0.0.1:0";
    in.image = c.image;  // empty: the backend's default (the real image)
    in.on_listening = [&](const std::string& a) { where.set_value(a); };
    cpc::Result<cpc::IncomingResult> incoming =
        cpc::Status(cpc::Code::kInternal, "not run");
    std::thread t([&] { incoming = cpc::MigrateIn(*dst, in); });
    cpc::MigrateOptions mo;
    mo.destination = where.get_future().get();
    mo.launch = c;
    mo.hvcpus.clear();
    for (uint32_t i = 0; i < o.streams; ++i) mo.hvcpus.push_back(i);
    // The migration proper starts when the source turns active (setup -
    // the destination's launch included - is over).
    double cpu0 = -1;
    auto st = Check(
        cpc::MigrateOut(*src, cvm, mo,
                        [&](const cpc::MigrationStats& s) {
                          if (cpu0 < 0 &&
                              s.state == cpc::MigrationStats::State::kActive) {
                            cpu0 = MigrationCpuSeconds();
                            PerfControl("enable");
                          }
                        }),
        "migrate");
    t.join();
    PerfControl("disable");
    out.cpu.push_back(cpu0 < 0 ? 0 : MigrationCpuSeconds() - cpu0);
    if (std::getenv("CPC_BENCH_VERBOSE") != nullptr)
      std::fprintf(stderr, "cpc-bench: migration cpu %.3f s\n", out.cpu.back());
    auto in_res = Check(std::move(incoming), "incoming");
    Check(dst->DestroyCvm(in_res.cvm), "destroy");
    Check(src->DestroyCvm(cvm), "destroy");
    // The destination's launch is part of setup (QEMU's destination is
    // started beforehand): the migration proper is elapsed - setup.
    const double s =
        std::chrono::duration<double>(st.elapsed - st.setup_time).count();
    out.total.push_back(std::chrono::duration<double>(st.elapsed).count());
    out.setup.push_back(std::chrono::duration<double>(st.setup_time).count());
    out.down.push_back(std::chrono::duration<double>(st.downtime).count() *
                       1e3);
    out.expected.push_back(
        std::chrono::duration<double>(st.expected_downtime).count() * 1e3);
    out.rounds.push_back(st.rounds);
    out.wire.push_back(static_cast<double>(st.transferred_bytes));
    out.throttle.push_back(st.throttle);
    return s;
  };
  auto migrate_pass = [&] { return pass(config, real); };
  // CPC_BENCH_MIGRATE_NO_NULL=1 skips the null-AEAD pass (its columns read
  // 0): a third of the time, for A/B runs of the real pipeline on a busy box.
  static const bool no_null =
      std::getenv("CPC_BENCH_MIGRATE_NO_NULL") != nullptr;
  auto null_pass = [&] { return no_null ? 0.0 : pass(null_config, null); };
  // Plaintext over the bare transport: cheap, kept as a second reference.
  auto plain_pass = [&] { return PlainTransfer(from, to, bytes, o.streams); };
  auto t = Interleaved(o.reps, {plain_pass, null_pass, migrate_pass});
  using M = MigrateSamples;
  const double null_down = M::Med(null.down);
  Emit(
      {fmt::format("migrate-{}/{}MiB/{}ch", label, o.snapshot_mib, o.streams),
       t[2],
       "s (lower is better)",
       fmt::format("migrate-null-aead-{}/{}MiB/{}ch", label, o.snapshot_mib,
                   o.streams),
       t[1],
       {{"guest_gbps", bytes / t[2] / 1e9},
        {"null_aead_gbps", bytes / t[1] / 1e9},
        {"downtime_ms", M::Med(real.down)},
        {"downtime_ms_max", M::Max(real.down)},
        {"null_aead_downtime_ms", null_down},
        {"null_aead_downtime_ms_max", M::Max(null.down)},
        {"ratio_downtime", null_down > 0 ? M::Med(real.down) / null_down : 0.0},
        {"expected_downtime_ms", M::Med(real.expected)},
        {"null_aead_expected_downtime_ms", M::Med(null.expected)},
        {"rounds", M::Med(real.rounds)},
        {"null_aead_rounds", M::Med(null.rounds)},
        {"wire_bytes", M::Med(real.wire)},
        {"null_aead_wire_bytes", M::Med(null.wire)},
        {"throttle", M::Med(real.throttle)},
        {"null_aead_throttle", M::Med(null.throttle)},
        {"cpu_s", M::Med(real.cpu)},
        {"null_aead_cpu_s", M::Med(null.cpu)},
        {"setup_s", M::Med(real.setup)},
        {"null_aead_setup_s", M::Med(null.setup)},
        {"total_incl_setup_s", M::Med(real.total)},
        {"null_aead_total_incl_setup_s", M::Med(null.total)},
        {"plaintext_tcp_s", t[0]},
        {"plaintext_tcp_gbps", bytes / t[0] / 1e9},
        {"ratio_plaintext_tcp", t[2] / t[0]}}});
}

struct Benchmark {
  const char* name;
  const char* description;
  void (*run)(const Options&);
  bool pin;  // pin to --cpu (else: every CPU; the CVM's threads need them)
};

constexpr Benchmark kBenchmarks[] = {
    {"mee", "MEE vs raw AES-256-GCM seal vs memcpy, 4 KiB pages, per thread",
     BenchMee, true},
    {"mdi",
     "MDI (two-pass and single-pass) vs raw AES-256-GCM open (+ commit copy) "
     "vs memcpy, 4 KiB pages, per thread",
     BenchMdi, true},
    {"snapshot", "TakeSnapshot of an emulated CVM vs plaintext write()",
     BenchSnapshot, false},
    {"snapshot-background",
     "background TakeSnapshot of a guest writing 1 GiB/s vs plaintext write()",
     BenchSnapshotBackground, false},
    {"restore",
     "RestoreSnapshot (excl. launch) vs plaintext read(), hot and cold cache",
     BenchRestore, false},
    {"migrate",
     "live migration (MigrateOut/MigrateIn over loopback TCP) vs the same "
     "migration between null-AEAD CVM images (and plaintext TCP)",
     BenchMigrate, false},
};

void Pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
    std::fprintf(stderr, "cpc-bench: cannot pin to CPU %d\n", cpu);
}

// Back to the CPUs the process started with (threads and child processes
// inherit the affinity).
void Unpin(const cpu_set_t& initial) {
  if (pthread_setaffinity_np(pthread_self(), sizeof(initial), &initial) != 0)
    std::fprintf(stderr, "cpc-bench: cannot restore the CPU affinity\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "cpc-bench: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--list") {
      list = true;
    } else if (a == "--mib") {
      o.mib = std::strtoull(value(), nullptr, 10);
    } else if (a == "--reps") {
      o.reps = std::max(1, std::atoi(value()));
    } else if (a == "--cpu") {
      o.cpu = std::atoi(value());
    } else if (a == "--engine") {
      o.engine = value();
    } else if (a == "--snapshot-mib") {
      o.snapshot_mib = std::strtoull(value(), nullptr, 10);
    } else if (a == "--streams") {
      o.streams = static_cast<uint32_t>(std::strtoul(value(), nullptr, 10));
    } else if (a == "--workload") {
      o.workload = value();
    } else if (a == "--dir") {
      o.dir = value();
    } else if (a == "--pages-per-record") {
      o.pages_per_record =
          static_cast<uint32_t>(std::strtoul(value(), nullptr, 10));
    } else if (a.starts_with("-")) {
      std::fprintf(
          stderr,
          "usage: cpc-bench [--list] [--mib N] [--reps N] [--cpu N] "
          "[--engine NAME] [--pages-per-record N] "
          "[--snapshot-mib N] [--streams N] [--workload W] [--dir DIR] "
          "[FILTER...]\n");
      return 2;
    } else {
      o.filters.emplace_back(a);
    }
  }
  if (o.pages_per_record == 0 || o.pages_per_record > cpc::kMaxRecordItems ||
      o.mib == 0 || o.snapshot_mib < 16 || o.snapshot_mib % 2 != 0 ||
      o.streams == 0 || o.streams > 16) {
    std::fprintf(stderr,
                 "cpc-bench: bad --mib / --pages-per-record / --snapshot-mib "
                 "(even, >= 16) / --streams (1..16)\n");
    return 2;
  }
  cpu_set_t initial;
  CPU_ZERO(&initial);
  pthread_getaffinity_np(pthread_self(), sizeof(initial), &initial);
  for (const Benchmark& b : kBenchmarks) {
    bool selected = o.filters.empty();
    for (const auto& f : o.filters)
      selected |= std::string_view(b.name).find(f) != std::string_view::npos;
    if (list) {
      std::printf("%-8s %s\n", b.name, b.description);
    } else if (selected) {
      if (b.pin)
        Pin(o.cpu);
      else
        Unpin(initial);
      b.run(o);
    }
  }
  return 0;
}
