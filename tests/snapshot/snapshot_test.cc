// CPC-Snapshot on every backend: round trip with a running workload and the
// in-CVM equality proof; corrupt, truncated, reordered, foreign and
// unauthorised snapshots refused with nothing half-restored; no plaintext.
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cpc/policy.h>
#include <cpc/record.h>
#include <cpc/registry.h>
#include <cpc/snapshot.h>

#include "audit_digest.h"
#include "child_processes.h"
#include "conformance/canary.h"
#include "emulator/host.h"
#include "test_util.h"

using namespace cpc;
using namespace std::chrono_literals;

namespace {
constexpr uint64_t kMem = 64ull << 20;

TenantPolicy Policy(bool allow_snapshot = true) {
  TenantPolicy p;
  ModulePolicy audit{"audit",         {"digest"}, Isolation::kPlain,
                     {1ull << 30, 0}, 0,          0};
  ModulePolicy snap{
      "snapshot",
      {"begin", "extract", "finish", "insert_begin", "insert", "insert_finish"},
      Isolation::kPlain,
      {1ull << 30, 0},
      0,
      0};
  p.modules = {audit};
  if (allow_snapshot) p.modules.push_back(snap);
  return p;
}

LaunchConfig Config(uint32_t hvcpus = 1, TenantPolicy policy = Policy()) {
  LaunchConfig c;
  c.memory_bytes = kMem;
  c.gvcpus = 2;
  for (uint32_t i = 0; i < hvcpus; ++i)
    c.hvcpus.push_back({i, Isolation::kPlain});
  c.policy = policy.Serialize();
  c.options = {{"workload", "dirty"},
               {"dirty_mib_s", "64"},
               {"wss_mib", "8"},
               {"canary_seed", "5eed5eed5eed5eed"}};
  return c;
}

struct TempDir {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("cpc-snap-" + std::to_string(::getpid()));
  TempDir() { std::filesystem::create_directories(dir); }
  ~TempDir() { std::filesystem::remove_all(dir); }
  std::string operator/(const std::string& f) const {
    return (dir / f).string();
  }
};

std::vector<std::unique_ptr<Backend>> Backends() {
  std::vector<std::unique_ptr<Backend>> out;
  for (const BackendFactory* f : BackendRegistry::Builtin().List()) {
    auto b = f->Create({});
    REQUIRE_OK(b);
    out.push_back(std::move(b).value());
  }
  return out;
}

std::vector<uint8_t> MemDigest(Backend& b, CvmHandle cvm,
                               std::vector<uint8_t> token) {
  return cpc_test::AuditDigest(b, cvm, std::move(token),
                               (kMem - (2 << 20)) / kPageSize);
}

std::vector<uint8_t> AuditToken(Backend& b, CvmHandle cvm) {
  auto t = b.RequestToken(cvm, {"audit", "digest", {kMem, 0}});
  REQUIRE_OK(t);
  return *t;
}

// Restores `path` into a fresh CVM (launched from `c`, left paused) and
// returns the digest of its memory before it runs (measured inside it).
struct Restored {
  CvmHandle cvm = 0;
  std::vector<uint8_t> digest;
  uint64_t pages = 0;
};
Restored RestoreAndDigest(Backend& b, const LaunchConfig& c,
                          const std::string& path) {
  std::vector<uint8_t> token;
  RestoreOptions ro;
  ro.resume = false;
  ro.before_pause = [&](CvmHandle h) { token = AuditToken(b, h); };
  auto restored = RestoreSnapshot(b, c, path, ro);
  REQUIRE_OK(restored);
  return {restored->cvm, MemDigest(b, restored->cvm, token),
          restored->stats.pages};
}

// Takes a snapshot of a CVM whose workload ran a while; returns the digest
// of its memory at pause time (measured inside the CVM).
std::vector<uint8_t> Snap(Backend& b, CvmHandle cvm, const LaunchConfig& c,
                          const std::string& path, uint32_t streams = 1) {
  std::this_thread::sleep_for(30ms);
  auto token = AuditToken(b, cvm);
  SnapshotOptions o;
  o.hvcpus.clear();
  for (uint32_t i = 0; i < streams; ++i) o.hvcpus.push_back(i);
  o.launch = c;
  o.resume = false;
  o.serial = 77;
  int calls = 0;
  auto st =
      TakeSnapshot(b, cvm, path, o, [&](const SnapshotStats&) { ++calls; });
  REQUIRE_OK(st);
  REQUIRE(st->pages == (kMem - (2 << 20)) / kPageSize);
  REQUIRE(st->vcpus == 2);
  REQUIRE(st->file_bytes > st->pages * kPageSize);
  REQUIRE(calls > 0);
  auto d = MemDigest(b, cvm, token);
  REQUIRE_OK(b.ResumeGuest(cvm));
  return d;
}

std::string ReadText(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

// Drops a file's pages from the page cache.
void Evict(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::fdatasync(fd) == 0);
  REQUIRE(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0);
  ::close(fd);
}

}  // namespace

TEST_CASE(
    "snapshot: round trip with a running workload proves equal memory inside "
    "the CVMs") {
  TempDir tmp;
  for (auto& b : Backends()) {
    INFO(b->name());
    for (uint32_t streams : {1u, 2u}) {
      INFO(streams << " streams");
      auto c = Config(streams);
      auto src = b->LaunchCvm(c);
      REQUIRE_OK(src);
      const std::string path = tmp / ("s" + std::to_string(streams));
      auto before = Snap(*b, *src, c, path, streams);

      auto info = ReadSnapshotInfo(path);
      REQUIRE_OK(info);
      REQUIRE(info->serial == 77);
      REQUIRE(info->streams == streams);
      REQUIRE(info->launch.memory_bytes == kMem);

      auto restored = RestoreAndDigest(*b, info->launch, path);
      REQUIRE(restored.pages == info->pages);
      // Equality, proved inside the CVMs: digest at pause == after restore.
      REQUIRE(restored.digest == before);
      // The hvCPUs read the file in place, through a mapping the restore
      // removes again: the restored CVM holds no view of the file.
      auto* emu = dynamic_cast<emu::EmulatedBackend*>(b.get());
      REQUIRE(emu != nullptr);
      const auto maps = ReadText(
          "/proc/" + std::to_string(emu->Info(restored.cvm)->pid) + "/maps");
      REQUIRE(!maps.empty());
      REQUIRE(maps.find(path) == std::string::npos);
      // Cold: with the file out of the page cache the host reads it ahead
      // of the hvCPUs (they read nothing it has not made resident).
      Evict(path);
      auto cold = RestoreAndDigest(*b, info->launch, path);
      REQUIRE(cold.digest == before);
      REQUIRE_OK(b->DestroyCvm(cold.cvm));
      // The restored guest carries on: its workload changes memory again.
      REQUIRE_OK(b->ResumeGuest(restored.cvm));
      REQUIRE_OK(b->ReadDirtyLog(restored.cvm, true));
      std::this_thread::sleep_for(50ms);
      REQUIRE(b->ReadDirtyLog(restored.cvm, true)->size() > 0);
      // The source kept running too.
      REQUIRE(b->ReadDirtyLog(*src, true)->size() > 0);
      REQUIRE_OK(b->DestroyCvm(restored.cvm));
      REQUIRE_OK(b->DestroyCvm(*src));
    }
  }
}

// A two-stream snapshot of a fresh CVM (gone again) of the first backend at
// `path`; returns that backend.
static std::unique_ptr<Backend> TwoStreamSnapshot(const std::string& path) {
  auto b = std::move(Backends().front());
  auto c = Config(2);
  auto src = b->LaunchCvm(c);
  REQUIRE_OK(src);
  Snap(*b, *src, c, path, 2);
  REQUIRE_OK(b->DestroyCvm(*src));
  return b;
}

// Bytes of `path`'s page cache that map as 2 MiB pages (smaps
// FilePmdMapped of a fresh read-only mapping of the whole file).
static uint64_t PmdMappedBytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  const uint64_t size = std::filesystem::file_size(path);
  // 2 MiB aligned, as the CVM maps it.
  constexpr uint64_t kHuge = 2 << 20;
  auto* raw = static_cast<uint8_t*>(::mmap(nullptr, size + kHuge, PROT_NONE,
                                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  REQUIRE(raw != MAP_FAILED);
  auto* at = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(raw) + kHuge - 1) & ~(kHuge - 1));
  REQUIRE(::mmap(at, size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == at);
  volatile uint8_t sink = 0;
  for (uint64_t o = 0; o < size; o += kPageSize) sink = sink + at[o];
  const std::string smaps = ReadText("/proc/self/smaps");
  ::munmap(raw, size + kHuge);
  ::close(fd);
  char start[32];
  std::snprintf(start, sizeof start, "%lx-",
                reinterpret_cast<unsigned long>(at));
  const size_t vma = smaps.find(start);
  REQUIRE(vma != std::string::npos);
  const size_t field = smaps.find("FilePmdMapped:", vma);
  REQUIRE(field != std::string::npos);
  return std::stoull(smaps.substr(field + 14)) << 10;
}

TEST_CASE(
    "snapshot: the file is written in 2 MiB aligned pieces, so a restore maps "
    "its page cache as huge pages") {
  TempDir tmp;
  TwoStreamSnapshot(tmp / "s");
  const uint64_t size = std::filesystem::file_size(tmp / "s");
  // The control: as many bytes written in aligned 2 MiB blocks. Whether the
  // file system gives such writes 2 MiB folios is its own business (ext4
  // does from Linux 6.16 on); the snapshot must get what the control gets.
  {
    std::vector<uint8_t> block(2 << 20, 0x5a);
    const int fd = ::open((tmp / "control").c_str(),
                          O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    for (uint64_t o = 0; o < size; o += block.size())
      REQUIRE(::write(fd, block.data(),
                      std::min<uint64_t>(block.size(), size - o)) > 0);
    REQUIRE(::fsync(fd) == 0);
    ::close(fd);
  }
  const uint64_t control = PmdMappedBytes(tmp / "control");
  const uint64_t snapshot = PmdMappedBytes(tmp / "s");
  INFO("control " << control << " snapshot " << snapshot << " of " << size);
  if (control == 0)
    WARN("this file system writes no 2 MiB folios: nothing to compare");
  // All but the first 2 MiB (the 4 KiB header is written on its own) and
  // a few pieces flushed early so an hvCPU is never kept waiting.
  REQUIRE(snapshot + 4 * (2 << 20) >= control);
}

TEST_CASE(
    "snapshot: the file never holds the guest's plaintext and the host never "
    "sees it") {
  TempDir tmp;
  const std::array<uint8_t, 8> seed = {0x5e, 0xed, 0x5e, 0xed,
                                       0x5e, 0xed, 0x5e, 0xed};
  auto canary = cpc_test::MaskedCanary(seed);
  for (auto& b : Backends()) {
    auto c = Config();
    auto src = b->LaunchCvm(c);
    REQUIRE_OK(src);
    Snap(*b, *src, c, tmp / "c");
    std::ifstream f(tmp / "c", std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), {});
    REQUIRE(bytes.size() > kMem / 2);
    int hits = 0;
    for (size_t i = 0; i + 32 <= bytes.size(); ++i)
      hits += cpc_test::Matches(&bytes[i], canary);
    REQUIRE(hits == 0);
    std::fill(bytes.begin(), bytes.end(), 0);
    REQUIRE(cpc_test::CountInProcessMemory(canary) == 0);
    REQUIRE_OK(b->DestroyCvm(*src));
  }
}

void WriteBytes(const std::string& path, const std::vector<uint8_t>& v) {
  std::ofstream o(path, std::ios::binary);
  o.write(reinterpret_cast<const char*>(v.data()), static_cast<long>(v.size()));
}

// A restore of `path` fails with one of `codes` and leaves no half-restored
// CVM running (`children` CVM processes, as before it).
void RequireRestoreRefused(Backend& b, const LaunchConfig& launch,
                           const std::string& path,
                           std::initializer_list<Code> codes,
                           uint64_t children) {
  auto r = RestoreSnapshot(b, launch, path, RestoreOptions{});
  REQUIRE_FALSE(r.ok());
  INFO(r.status().ToString());
  REQUIRE(std::find(codes.begin(), codes.end(), r.status().code()) !=
          codes.end());
  REQUIRE(cpc_test::LiveChildren() == children);
}

TEST_CASE(
    "snapshot: corrupt, truncated, reordered and foreign snapshots are "
    "refused") {
  TempDir tmp;
  for (auto& b : Backends()) {
    auto c = Config();
    auto src = b->LaunchCvm(c);
    REQUIRE_OK(src);
    const std::string good = tmp / "good";
    Snap(*b, *src, c, good);
    std::ifstream f(good, std::ios::binary);
    const std::vector<uint8_t> orig((std::istreambuf_iterator<char>(f)), {});
    auto variant = [&](const std::string& name, auto&& mutate) {
      std::vector<uint8_t> v = orig;
      mutate(v);
      WriteBytes(tmp / name, v);
      return tmp / name;
    };
    const uint64_t children = cpc_test::LiveChildren();
    auto refused = [&](const std::string& path, const LaunchConfig& launch,
                       std::initializer_list<Code> codes) {
      RequireRestoreRefused(*b, launch, path, codes, children);
    };
    // A bit flip in the middle of the ciphertext.
    refused(variant("flip", [](auto& v) { v[v.size() / 2] ^= 0x10; }), c,
            {Code::kAuthFailed, Code::kGpaMismatch, Code::kRecordMalformed});
    // A bit flip in a page's ciphertext (the last page of the first memory
    // record): the restore decrypts pages straight into the fresh guest, so
    // the page tag failure must end it - kAuthFailed, no CVM left.
    refused(variant("page",
                    [](auto& v) {
                      size_t pos = 4096 + 8;  // the first chunk's records
                      for (;;) {
                        auto rh = PeekRecordHeader(
                            std::span<const uint8_t>(v).subspan(pos));
                        REQUIRE_OK(rh);
                        if (rh->type == RecordType::kMemory) {
                          v[pos + rh->record_bytes - 100] ^= 0x01;
                          return;
                        }
                        pos += rh->record_bytes;
                      }
                    }),
            c, {Code::kAuthFailed});
    // Truncated: half the file, and all but the final block.
    refused(variant("half", [](auto& v) { v.resize(v.size() / 2); }), c,
            {Code::kDataLoss});
    refused(
        variant("nofinal", [](auto& v) { v.erase(v.end() - 200, v.end()); }), c,
        {Code::kDataLoss, Code::kRecordMalformed, Code::kRecordTruncated});
    // Reordered: swap the first two chunks after the header.
    refused(
        variant(
            "swap",
            [](auto& v) {
              const size_t a = 4096,
                           la = 8 + (v[a + 4] | v[a + 5] << 8 | v[a + 6] << 16);
              const size_t b2 = a + la, lb = 8 + (v[b2 + 4] | v[b2 + 5] << 8 |
                                                  v[b2 + 6] << 16);
              std::vector<uint8_t> first(v.begin() + a, v.begin() + b2);
              std::vector<uint8_t> second(v.begin() + b2, v.begin() + b2 + lb);
              std::copy(second.begin(), second.end(), v.begin() + a);
              std::copy(first.begin(), first.end(), v.begin() + a + lb);
            }),
        c, {Code::kRecordOutOfOrder, Code::kRecordReplayed});
    // Not a snapshot at all.
    refused(variant("junk", [](auto& v) { v[0] = 'X'; }), c,
            {Code::kRecordMalformed});
    // Another CVM image/policy: its measurement differs, so its sealing key.
    auto other = c;
    auto pol = Policy();
    pol.modules[0].per_call.bytes /= 2;
    other.policy = pol.Serialize();
    refused(good, other, {Code::kMeasurementMismatch});
    // A lying header does not help: it can only fail authentication later.
    REQUIRE_OK(b->DestroyCvm(*src));
  }
}

// The chunks of a snapshot file: its header, each chunk (8-byte header +
// payload) and the final block, so a test can drop, duplicate, swap or
// relabel whole chunks of one stream.
struct ChunkedFile {
  std::vector<uint8_t> header;
  std::vector<std::vector<uint8_t>> chunks;  // the final block last
  static ChunkedFile Parse(const std::vector<uint8_t>& v) {
    ChunkedFile f;
    f.header.assign(v.begin(), v.begin() + 4096);
    for (size_t pos = 4096; pos < v.size();) {
      const size_t len = 8 + (v[pos + 4] | v[pos + 5] << 8 | v[pos + 6] << 16 |
                              static_cast<size_t>(v[pos + 7]) << 24);
      REQUIRE(pos + len <= v.size());
      f.chunks.emplace_back(v.begin() + pos, v.begin() + pos + len);
      pos += len;
    }
    return f;
  }
  static uint16_t Stream(const std::vector<uint8_t>& c) {
    return static_cast<uint16_t>(c[0] | c[1] << 8);
  }
  // Index of the n-th chunk of `stream`.
  size_t Nth(uint16_t stream, size_t n) const {
    for (size_t i = 0; i < chunks.size(); ++i)
      if (Stream(chunks[i]) == stream && n-- == 0) return i;
    FAIL("stream " << stream << " has too few chunks");
    return 0;
  }
  std::vector<uint8_t> Join() const {
    std::vector<uint8_t> v = header;
    for (const auto& c : chunks) v.insert(v.end(), c.begin(), c.end());
    return v;
  }
};

// A host that changes the snapshot file under the CVM right after attaching
// it (past every check the host side makes on the file before): `mutate`
// gets the attached fd.
class TamperingBackend final : public BackendWrapper {
 public:
  TamperingBackend(Backend* target, std::function<void(int)> mutate)
      : BackendWrapper(target), mutate_(std::move(mutate)) {}
  Result<uint64_t> AttachSharedFile(CvmHandle cvm, int fd) override {
    auto size = BackendWrapper::AttachSharedFile(cvm, fd);
    if (size.ok()) mutate_(fd);
    return size;
  }

 private:
  std::function<void(int)> mutate_;
};

TEST_CASE(
    "snapshot: a host rewriting or cutting the attached file during a "
    "restore is refused and leaves no CVM") {
  TempDir tmp;
  const std::string good = tmp / "good";
  auto b = TwoStreamSnapshot(good);
  const auto c = Config(2);
  const uint64_t size = std::filesystem::file_size(good);
  const uint64_t children = cpc_test::LiveChildren();
  const auto copy = [&] {
    std::filesystem::copy_file(
        good, tmp / "x", std::filesystem::copy_options::overwrite_existing);
    return tmp / "x";
  };
  // A bit flipped deep in the ciphertext: the hvCPU reads the file in
  // place, so it sees the flip, and the page's tag refuses it.
  const auto writable = [&] {
    const int w = ::open((tmp / "x").c_str(), O_WRONLY | O_CLOEXEC);
    REQUIRE(w >= 0);
    return w;
  };
  // The flip lands mid-payload of a chunk past the middle of the file (not
  // in a chunk header, which the host's own walk would refuse first).
  off_t at = 4096;
  {
    std::ifstream f(good, std::ios::binary);
    const std::vector<uint8_t> v((std::istreambuf_iterator<char>(f)), {});
    const auto chunks = ChunkedFile::Parse(v).chunks;
    for (size_t i = 0; i < chunks.size() * 2 / 3; ++i)
      at += static_cast<off_t>(chunks[i].size());
    at += 8 + static_cast<off_t>(chunks[chunks.size() * 2 / 3].size() / 2);
  }
  TamperingBackend flip(b.get(), [&](int fd) {
    uint8_t x = 0;
    REQUIRE(::pread(fd, &x, 1, at) == 1);
    x ^= 0x20;
    const int w = writable();
    REQUIRE(::pwrite(w, &x, 1, at) == 1);
    ::close(w);
  });
  RequireRestoreRefused(
      flip, c, copy(),
      {Code::kAuthFailed, Code::kGpaMismatch, Code::kRecordMalformed},
      children);
  // Cut to half: the host's own walk and the hvCPUs' reads (zeros past the
  // new end, not a crash) both end in data_loss, and nothing runs.
  TamperingBackend cut(b.get(), [&](int) {
    const int w = writable();
    REQUIRE(::ftruncate(w, static_cast<off_t>(size / 2)) == 0);
    ::close(w);
  });
  RequireRestoreRefused(cut, c, copy(),
                        {Code::kDataLoss, Code::kAuthFailed,
                         Code::kRecordMalformed, Code::kRecordTruncated},
                        children);
  // The genuine file still restores.
  auto ok = RestoreSnapshot(*b, c, good, RestoreOptions{});
  REQUIRE_OK(ok);
  REQUIRE_OK(b->DestroyCvm(ok->cvm));
}

TEST_CASE(
    "snapshot: a two-stream snapshot with a stream's chunks dropped, "
    "duplicated, swapped, relabelled or truncated is refused") {
  TempDir tmp;
  for (auto& b : Backends()) {
    auto c = Config(2);
    auto src = b->LaunchCvm(c);
    REQUIRE_OK(src);
    const std::string good = tmp / "good2";
    Snap(*b, *src, c, good, 2);
    REQUIRE_OK(b->DestroyCvm(*src));
    std::ifstream in(good, std::ios::binary);
    const auto orig = ChunkedFile::Parse(
        std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), {}));
    // Both streams have several chunks (else the cases below test nothing).
    REQUIRE(orig.Nth(0, 2) < orig.chunks.size());
    REQUIRE(orig.Nth(1, 2) < orig.chunks.size());
    const uint64_t children = cpc_test::LiveChildren();
    auto refused = [&](const std::string& name, auto&& mutate,
                       std::initializer_list<Code> codes) {
      INFO(name);
      ChunkedFile f = orig;
      mutate(f);
      WriteBytes(tmp / name, f.Join());
      RequireRestoreRefused(*b, c, tmp / name, codes, children);
    };
    // The unmodified file restores (so the refusals below are the edits').
    {
      auto r = RestoreSnapshot(*b, c, good, RestoreOptions{});
      REQUIRE_OK(r);
      REQUIRE_OK(b->DestroyCvm(r->cvm));
    }
    refused("drop",
            [](ChunkedFile& f) {
              f.chunks.erase(f.chunks.begin() + static_cast<long>(f.Nth(1, 1)));
            },
            {Code::kRecordOutOfOrder, Code::kIncomplete, Code::kDataLoss});
    refused("duplicate",
            [](ChunkedFile& f) {
              const size_t i = f.Nth(1, 1);
              f.chunks.insert(f.chunks.begin() + static_cast<long>(i) + 1,
                              f.chunks[i]);
            },
            {Code::kRecordReplayed, Code::kRecordOutOfOrder});
    refused("swap",
            [](ChunkedFile& f) {
              std::swap(f.chunks[f.Nth(1, 0)], f.chunks[f.Nth(1, 1)]);
            },
            {Code::kRecordOutOfOrder, Code::kRecordReplayed});
    // A chunk of stream 1 presented as stream 0's: stream 0's receiver
    // refuses records sealed for stream 1, and stream 1 misses them.
    refused("relabel",
            [](ChunkedFile& f) {
              auto& ch = f.chunks[f.Nth(1, 1)];
              ch[0] = 0;
              ch[1] = 0;
            },
            {Code::kAuthFailed, Code::kRecordOutOfOrder, Code::kRecordMalformed,
             Code::kEpochMismatch, Code::kRecordReplayed});
    // A chunk naming a stream the snapshot does not have.
    refused("stream 7", [](ChunkedFile& f) { f.chunks[f.Nth(0, 1)][0] = 7; },
            {Code::kRecordMalformed});
    // The file ends inside a chunk of stream 1 (its reader sees it first,
    // stream 0's reader and driver must stop too).
    refused("cut",
            [](ChunkedFile& f) {
              const size_t i = f.Nth(1, 2);
              f.chunks.resize(i + 1);
              f.chunks[i].resize(f.chunks[i].size() / 2);
            },
            {Code::kDataLoss});
    // Stream 1's end-of-stream chunk missing (the final block follows).
    refused("no end",
            [](ChunkedFile& f) {
              for (size_t i = f.chunks.size() - 1; i-- > 0;)
                if (ChunkedFile::Stream(f.chunks[i]) == 1) {
                  f.chunks.erase(f.chunks.begin() + static_cast<long>(i));
                  return;
                }
            },
            {Code::kDataLoss, Code::kIncomplete});
  }
}

TEST_CASE("snapshot: needs a token and stays within budget") {
  TempDir tmp;
  for (auto& b : Backends()) {
    // The policy does not name the module: no token, no snapshot, and the
    // source keeps running.
    auto c = Config(1, Policy(false));
    auto src = b->LaunchCvm(c);
    REQUIRE_OK(src);
    SnapshotOptions o;
    o.launch = c;
    auto r = TakeSnapshot(*b, *src, tmp / "x", o);
    REQUIRE_CODE(r, Code::kNotFound);
    REQUIRE_FALSE(std::filesystem::exists(tmp / "x"));
    REQUIRE_FALSE(std::filesystem::exists(tmp / "x.partial"));
    REQUIRE_OK(b->ReadDirtyLog(*src, true));
    std::this_thread::sleep_for(30ms);
    REQUIRE(b->ReadDirtyLog(*src, true)->size() > 0);
    REQUIRE_OK(b->DestroyCvm(*src));
    // Over budget: the policy grants less than the guest's memory per call.
    auto small = Policy();
    small.modules[1].per_call.bytes = kMem / 4;
    c = Config(1, small);
    src = b->LaunchCvm(c);
    REQUIRE_OK(src);
    o.launch = c;
    r = TakeSnapshot(*b, *src, tmp / "y", o);
    REQUIRE_CODE(r, Code::kTokenOverBudget);
    REQUIRE_FALSE(std::filesystem::exists(tmp / "y.partial"));
    REQUIRE(b->ReadDirtyLog(*src, true).ok());
    REQUIRE_OK(b->DestroyCvm(*src));
  }
}

namespace {
// Background snapshot of `cvm`; measures the guest's digest at the instant
// of `begin` (paused, just before it). The extraction is held up at its
// first exit so the running guest surely writes pages not yet saved.
SnapshotStats SnapBackground(Backend& b, CvmHandle cvm, const LaunchConfig& c,
                             const std::string& path, uint32_t streams,
                             std::vector<uint8_t>* digest_at_begin) {
  auto token = AuditToken(b, cvm);
  SnapshotOptions o;
  o.at_pause = [&] {
    *digest_at_begin = MemDigest(b, cvm, token);
    return Status::Ok();
  };
  o.hvcpus.clear();
  for (uint32_t i = 0; i < streams; ++i) o.hvcpus.push_back(i);
  o.launch = c;
  o.background = true;
  o.slice = 1ms;
  bool held = false;
  auto st = TakeSnapshot(b, cvm, path, o, [&](const SnapshotStats&) {
    if (!held) std::this_thread::sleep_for(100ms);
    held = true;
  });
  REQUIRE_OK(st);
  REQUIRE(held);
  REQUIRE(st->pages == (kMem - (2 << 20)) / kPageSize);
  // The guest ran during the copy and wrote pages before they were saved.
  REQUIRE(st->copied_pages > 0);
  REQUIRE(st->paused < st->elapsed);
  return *st;
}
}  // namespace

TEST_CASE(
    "snapshot: a background snapshot holds the instant of begin while the "
    "guest writes on") {
  TempDir tmp;
  for (auto& b : Backends()) {
    INFO(b->name());
    for (uint32_t streams : {1u, 2u}) {
      INFO(streams << " streams");
      auto c = Config(streams);
      c.options["dirty_mib_s"] = "512";
      c.options["wss_mib"] = "32";
      auto src = b->LaunchCvm(c);
      REQUIRE_OK(src);
      std::this_thread::sleep_for(30ms);
      const std::string path = tmp / ("bg" + std::to_string(streams));
      std::vector<uint8_t> at_begin;
      auto st = SnapBackground(*b, *src, c, path, streams, &at_begin);
      INFO("copied " << st.copied_pages << " pages");

      // The source runs on and its memory has moved past the snapshot.
      auto token = AuditToken(*b, *src);
      REQUIRE_OK(b->PauseGuest(*src));
      REQUIRE(MemDigest(*b, *src, token) != at_begin);
      // Its dirty log reports every page once after the view (nothing
      // tracked writes meanwhile), then is exact again: a paused guest
      // writes nothing.
      REQUIRE(b->ReadDirtyLog(*src, true)->size() >= st.pages);
      REQUIRE(b->ReadDirtyLog(*src, true)->empty());
      REQUIRE_OK(b->ResumeGuest(*src));

      // Equality, proved inside the CVMs: digest at begin == after restore.
      auto restored = RestoreAndDigest(*b, c, path);
      REQUIRE(restored.digest == at_begin);
      REQUIRE_OK(b->ResumeGuest(restored.cvm));
      REQUIRE_OK(b->DestroyCvm(restored.cvm));
      REQUIRE_OK(b->DestroyCvm(*src));
    }
  }
}

TEST_CASE(
    "snapshot: a failed background snapshot ends its view and the guest runs "
    "on") {
  TempDir tmp;
  for (auto& b : Backends()) {
    INFO(b->name());
    auto c = Config(1);
    auto src = b->LaunchCvm(c);
    REQUIRE_OK(src);
    SnapshotOptions o;
    o.launch = c;
    o.background = true;
    o.slice = 1ms;
    // Aborted by the host's policy once the guest runs: the copy is held
    // up past a throughput window it cannot meet.
    o.abort.throughput_floor_bytes_per_s = 1e15;
    o.abort.window = 20ms;
    bool held = false;
    auto r = TakeSnapshot(*b, *src, tmp / "a", o, [&](const SnapshotStats&) {
      if (!held) std::this_thread::sleep_for(60ms);
      held = true;
    });
    REQUIRE_CODE(r, Code::kAborted);
    REQUIRE_FALSE(std::filesystem::exists(tmp / "a"));
    REQUIRE_FALSE(std::filesystem::exists(tmp / "a.partial"));
    // Running, and tracked exactly again once paused.
    REQUIRE_OK(b->ReadDirtyLog(*src, true));
    std::this_thread::sleep_for(30ms);
    REQUIRE(b->ReadDirtyLog(*src, true)->size() > 0);
    REQUIRE_OK(b->PauseGuest(*src));
    (void)b->ReadDirtyLog(*src, true);
    auto dl = b->ReadDirtyLog(*src, true);
    INFO("dirty " << dl->size() << " first " << (dl->empty() ? 0 : (*dl)[0]));
    REQUIRE(dl->empty());
    REQUIRE_OK(b->ResumeGuest(*src));
    // The view was cancelled: the next background snapshot works.
    std::vector<uint8_t> at_begin;
    SnapBackground(*b, *src, c, tmp / "b", 1, &at_begin);
    auto restored = RestoreAndDigest(*b, c, tmp / "b");
    REQUIRE(restored.digest == at_begin);
    REQUIRE_OK(b->DestroyCvm(restored.cvm));
    REQUIRE_OK(b->DestroyCvm(*src));
  }
}
