// The host side of CPC-Snapshot (include/cpc/snapshot.h). The file:
//   header (4 KiB, plaintext): magic "CPCSNAP1", u32 version, u32 header
//     bytes, session id[16], u64 serial, measurement[32], u64 pages,
//     u32 vcpus, u32 streams, u32 launch-config bytes, launch config
//   chunks: u16 stream, u16 flags (1 = end of stream), u32 length, records
//   final chunk: stream 0xFFFF: epoch token, start token, sealed manifest
// Everything after the header is ciphertext produced inside the CVM.
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <mutex>
#include <sys/stat.h>
#include <sys/uio.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>

#include <cpc/snapshot.h>

#include "core/bytes.h"
#include "core/log.h"
#include "core/sys.h"
#include "emulator/launch.h"
#include "modules/host_call.h"
#include "modules/snapshot.h"

CPC_NAMESPACE_BEGIN

namespace {
using snap::kEndOfStream;
using snap::kFree;
using snap::kFull;
using snap::RingHead;
using snap::SessionId;

constexpr char kMagic[8] = {'C', 'P', 'C', 'S', 'N', 'A', 'P', '1'};
constexpr uint32_t kFileVersion = 1;
constexpr size_t kHeaderBytes = 4096;
using snap::kFinalStream;
constexpr uint64_t kRingBuffer = 1 << 20;  // per buffer
constexpr uint32_t kRingDepth = 4;         // buffers per stream, at most

Status WriteAll(int fd, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return ErrnoStatus("write snapshot");
    b += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

// Reads exactly n bytes at `offset` (or, if offset < 0, at the file
// position); kDataLoss at a premature end of file.
Status ReadAll(int fd, void* p, size_t n, off_t offset = -1) {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    ssize_t r = offset < 0 ? ::read(fd, b, n) : ::pread(fd, b, n, offset);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoStatus("read snapshot");
    if (r == 0) return Status(Code::kDataLoss, "snapshot file is truncated");
    b += r;
    n -= static_cast<size_t>(r);
    if (offset >= 0) offset += r;
  }
  return Status::Ok();
}

struct Header {
  SessionId id{};
  uint64_t serial = 0;
  Digest measurement{};
  uint64_t pages = 0;
  uint32_t vcpus = 0;
  uint32_t streams = 0;
  LaunchConfig launch;

  std::vector<uint8_t> Encode() const {
    std::vector<uint8_t> out(kMagic, kMagic + 8);
    ByteWriter w(&out);
    w.Int<uint32_t>(kFileVersion);
    w.Int<uint32_t>(kHeaderBytes);
    w.Bytes(id);
    w.Int<uint64_t>(serial);
    w.Bytes(measurement);
    w.Int<uint64_t>(pages);
    w.Int<uint32_t>(vcpus);
    w.Int<uint32_t>(streams);
    emu::LaunchParams lp;
    lp.config = launch;
    auto blob = lp.Encode();
    w.Int<uint32_t>(static_cast<uint32_t>(blob.size()));
    w.Bytes(blob);
    out.resize(kHeaderBytes);
    return out;
  }

  static Result<Header> Decode(std::span<const uint8_t> b) {
    if (b.size() != kHeaderBytes || std::memcmp(b.data(), kMagic, 8) != 0)
      return Status(Code::kRecordMalformed, "not a libcpc snapshot file");
    ByteReader r(b.subspan(8));
    Header h;
    const uint32_t version = r.Int<uint32_t>();
    const uint32_t hbytes = r.Int<uint32_t>();
    if (version != kFileVersion || hbytes != kHeaderBytes)
      return Status(
          Code::kRecordMalformed,
          fmt::format("snapshot file version {} is not supported", version));
    auto id = r.Bytes(16);
    h.serial = r.Int<uint64_t>();
    auto meas = r.Bytes(32);
    h.pages = r.Int<uint64_t>();
    h.vcpus = r.Int<uint32_t>();
    h.streams = r.Int<uint32_t>();
    const uint32_t blob = r.Int<uint32_t>();
    auto lp = r.Bytes(blob);
    if (!r.ok() || h.streams == 0 || h.streams > 64)
      return Status(Code::kRecordMalformed, "snapshot header is corrupt");
    std::memcpy(h.id.data(), id.data(), 16);
    std::memcpy(h.measurement.data(), meas.data(), 32);
    CPC_ASSIGN_OR_RETURN(auto params, emu::LaunchParams::Decode(lp));
    h.launch = std::move(params.config);
    return h;
  }
};

// One stream's ring buffers in the shared region.
struct StreamRing {
  uint64_t offset = 0;
  std::vector<uint8_t*> buf;
  uint32_t count() const { return static_cast<uint32_t>(buf.size()); }
  RingHead* head(uint32_t i) const {
    return reinterpret_cast<RingHead*>(buf[i]);
  }
  uint8_t* payload(uint32_t i) const { return buf[i] + sizeof(RingHead); }
};

// Up to kRingDepth buffers per stream, as many as the shared region holds
// (at least two: older launch configurations reserve two per stream). More
// than two let the file side run ahead while the hvCPU works on a buffer.
Result<std::vector<StreamRing>> LayOutRings(Backend& b, CvmHandle cvm,
                                            uint32_t streams) {
  CPC_ASSIGN_OR_RETURN(SharedRegion shared, b.MapSharedRegion(cvm));
  const uint64_t fit = shared.size / (kRingBuffer * streams);
  if (fit < 2)
    return Status(
        Code::kResourceExhausted,
        fmt::format("the shared region ({} MiB) cannot hold rings for {} "
                    "streams; launch with option shared_mib >= {}",
                    shared.size >> 20, streams, 2 * streams + 1));
  const uint32_t depth =
      static_cast<uint32_t>(std::min<uint64_t>(fit, kRingDepth));
  std::vector<StreamRing> rings(streams);
  for (uint32_t i = 0; i < streams; ++i) {
    rings[i].offset = uint64_t{depth} * kRingBuffer * i;
    for (uint32_t k = 0; k < depth; ++k) {
      rings[i].buf.push_back(shared.base + rings[i].offset + k * kRingBuffer);
      ring::ResetHead(rings[i].head(k));
    }
  }
  return rings;
}

std::vector<uint8_t> RingArgs(const SessionId& id, uint32_t stream,
                              const StreamRing& ring) {
  std::vector<uint8_t> a(id.begin(), id.end());
  ByteWriter w(&a);
  w.Int<uint32_t>(stream);
  w.Int<uint64_t>(ring.offset);
  w.Int<uint64_t>(kRingBuffer);
  w.Int<uint32_t>(ring.count());
  return a;
}

struct Tokens {
  std::vector<uint8_t> begin, finish;
  std::vector<std::vector<uint8_t>> streams;
};

// All tokens first: the guest's agent cannot answer once the guest is paused.
Result<Tokens> GetTokens(Backend& b, CvmHandle cvm, std::string_view first,
                         std::string_view each, std::string_view last,
                         uint32_t streams, uint64_t bytes) {
  Tokens t;
  // Every token asks the same budget so one policy line covers the module.
  CPC_ASSIGN_OR_RETURN(
      t.begin,
      b.RequestToken(cvm, {snap::kModule, std::string(first), {bytes, 0}}));
  for (uint32_t i = 0; i < streams; ++i) {
    CPC_ASSIGN_OR_RETURN(
        auto tok,
        b.RequestToken(cvm, {snap::kModule, std::string(each), {bytes, 0}}));
    t.streams.push_back(std::move(tok));
  }
  CPC_ASSIGN_OR_RETURN(
      t.finish,
      b.RequestToken(cvm, {snap::kModule, std::string(last), {bytes, 0}}));
  return t;
}

HvcpuEntry Entry(std::string procedure, std::vector<uint8_t> token,
                 std::vector<uint8_t> args, Duration slice) {
  return CallEntry(snap::kModule, std::move(procedure), std::move(token),
                   std::move(args), slice);
}

// Appends chunks to the file from a thread of its own, so the hvCPU fills
// ring buffers while others are being written (straight from shared
// memory: writev, no copy here).
//
// Writes end on 2 MiB file offsets whatever the chunk boundaries, holding
// back a buffer's unwritten tail until the next write: the page cache then
// holds the file in 2 MiB folios, which a restore maps as huge pages (next to
// no cost). Written chunk by chunk (8-byte header + payload) the file was cut
// into 4 KiB..512 KiB folios, and mapping those cost as much as copying.
// A stream whose every buffer the writer holds is flushed at once, unaligned,
// so its hvCPU never waits for a write that waits for it.
class ChunkWriter {
 public:
  static constexpr uint64_t kAlign = 2 << 20;
  // `at`: the file offset of the first chunk; `depth[i]`: stream i's buffers.
  ChunkWriter(int fd, uint64_t at, std::vector<uint32_t> depth)
      : fd_(fd),
        pos_(at),
        depth_(std::move(depth)),
        held_(depth_.size(), 0),
        thread_([this] { Main(); }) {}
  ~ChunkWriter() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    thread_.join();
  }
  void Submit(uint16_t stream, RingHead* head, const uint8_t* data) {
    std::lock_guard<std::mutex> lock(mu_);
    Job j{stream, head, data, 0, {}};
    StoreLe<uint16_t>(j.hdr, stream);
    StoreLe<uint16_t>(j.hdr + 2,
                      static_cast<uint16_t>(head->flags & kEndOfStream));
    StoreLe<uint32_t>(j.hdr + 4, static_cast<uint32_t>(head->len));
    if (!status_.ok()) {  // after a write error: nothing more is written
      Free(j);
      return;
    }
    pending_ += j.size();
    ++held_[stream];
    queue_.push_back(j);
    cv_.notify_all();
  }
  // The first write error, if any.
  Status status() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  // Writes everything submitted (unaligned tail included).
  Status Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    drain_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return (queue_.empty() && !busy_) || !status_.ok(); });
    return status_;
  }
  uint64_t bytes() const { return bytes_.load(); }

 private:
  struct Job {
    uint16_t stream;
    RingHead* head;
    const uint8_t* data;
    uint64_t done;  // bytes of header + payload already written
    uint8_t hdr[8];
    uint64_t size() const { return 8 + head->len; }
  };
  // Bytes to write now: up to the last 2 MiB boundary the queue reaches, or
  // all of it when draining or a stream is starved; 0 = wait for more.
  uint64_t Due() const {
    if (queue_.empty()) return 0;
    const uint64_t end = (pos_ + pending_) / kAlign * kAlign;
    if (end > pos_) return end - pos_;
    bool starved = false;
    for (size_t i = 0; i < held_.size(); ++i)
      starved = starved || held_[i] >= depth_[i];
    return drain_ || stop_ || starved ? pending_ : 0;
  }
  void Free(const Job& j) {
    j.head->state.store(kFree, std::memory_order_release);
    ring::Notify(j.head);  // the module may be waiting for this buffer
  }
  void Main() {
    std::unique_lock<std::mutex> lock(mu_);
    std::vector<iovec> iov;
    for (;;) {
      cv_.wait(lock, [&] { return Due() > 0 || (stop_ && queue_.empty()); });
      const uint64_t want = Due();
      if (want == 0) return;
      busy_ = true;
      // The jobs at the queue's front stay put while unlocked (Submit only
      // appends).
      iov.clear();
      uint64_t left = want;
      for (size_t k = 0; k < queue_.size() && left > 0; ++k) {
        const Job& j = queue_[k];
        for (int part = 0; part < 2 && left > 0; ++part) {
          const uint64_t lo = part == 0 ? 0 : 8, hi = part == 0 ? 8 : j.size();
          if (j.done >= hi) continue;
          const uint64_t from = std::max(j.done, lo);
          const uint64_t n = std::min(hi - from, left);
          const uint8_t* p = part == 0 ? j.hdr + from : j.data + (from - 8);
          iov.push_back({const_cast<uint8_t*>(p), n});
          left -= n;
        }
      }
      lock.unlock();
      Status s = WriteV(iov, want);
      lock.lock();
      busy_ = false;
      bytes_ += want;
      pos_ += want;
      pending_ -= want;
      for (uint64_t adv = want; adv > 0;) {
        Job& j = queue_.front();
        const uint64_t k = std::min(adv, j.size() - j.done);
        j.done += k;
        adv -= k;
        if (j.done < j.size()) break;
        --held_[j.stream];
        Free(j);
        queue_.pop_front();
      }
      if (!s.ok()) {
        if (status_.ok()) status_ = s;
        for (const Job& j : queue_) Free(j);
        queue_.clear();
        pending_ = 0;
      }
      cv_.notify_all();
    }
  }
  Status WriteV(std::vector<iovec>& iov, uint64_t want) {
    size_t first = 0;
    while (want > 0) {
      const int n =
          static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
      const ssize_t w = ::writev(fd_, iov.data() + first, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return ErrnoStatus("write snapshot");
      want -= static_cast<uint64_t>(w);
      // Advance the iovecs past what was written.
      for (size_t adv = static_cast<size_t>(w); adv > 0;) {
        const size_t k = std::min(adv, iov[first].iov_len);
        iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + k;
        iov[first].iov_len -= k;
        adv -= k;
        if (iov[first].iov_len == 0) ++first;
      }
    }
    return Status::Ok();
  }

  const int fd_;
  uint64_t pos_;  // file offset of the next write
  const std::vector<uint32_t> depth_;
  std::vector<uint32_t> held_;  // per stream: buffers queued here
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  uint64_t pending_ = 0;  // unwritten bytes in queue_
  bool busy_ = false, drain_ = false, stop_ = false;
  Status status_;
  std::atomic<uint64_t> bytes_{0};
  std::thread thread_;
};

void Report(const SnapshotProgressFn& fn, std::mutex& mu, SnapshotStats& stats,
            Clock::time_point t0, uint64_t add_bytes, uint64_t file_bytes) {
  std::lock_guard<std::mutex> lock(mu);
  stats.guest_bytes += add_bytes;
  stats.file_bytes = file_bytes;
  stats.elapsed = Clock::now() - t0;
  const double s = std::chrono::duration<double>(stats.elapsed).count();
  stats.rate_bytes_per_s = s > 0 ? stats.guest_bytes / s : 0;
  if (fn) fn(stats);
}

}  // namespace

Result<SnapshotStats> TakeSnapshot(Backend& backend, CvmHandle cvm,
                                   const std::string& path,
                                   const SnapshotOptions& options,
                                   const SnapshotProgressFn& progress) {
  const auto t0 = Clock::now();
  const uint32_t streams = static_cast<uint32_t>(options.hvcpus.size());
  if (streams == 0 || streams > 64)
    return Status(Code::kInvalidArgument, "a snapshot needs 1..64 hvCPUs");
  for (uint32_t i = 0; i < streams; ++i)
    for (uint32_t j = 0; j < i; ++j)
      if (options.hvcpus[i] == options.hvcpus[j])
        return Status(Code::kInvalidArgument,
                      fmt::format("hvCPU {} listed twice: one stream per hvCPU",
                                  options.hvcpus[i]));
  if (options.launch.memory_bytes == 0)
    return Status(Code::kInvalidArgument,
                  "SnapshotOptions.launch must describe the CVM (memory_bytes, "
                  "policy, ...) so the snapshot can be restored");
  if (options.background && !options.resume)
    return Status(Code::kInvalidArgument,
                  "a background snapshot resumes the guest right after begin "
                  "(resume = false contradicts it)");
  CPC_ASSIGN_OR_RETURN(auto rings, LayOutRings(backend, cvm, streams));
  CPC_ASSIGN_OR_RETURN(Tokens tokens,
                       GetTokens(backend, cvm, "begin", "extract", "finish",
                                 streams, options.launch.memory_bytes));
  const std::string tmp = path + ".partial";
  const int fd =
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(fmt::format("create {}", tmp));

  SnapshotStats stats;
  stats.streams = streams;
  std::mutex stats_mu;
  Clock::time_point paused_at;
  bool paused = false;
  Header h;
  bool begun_background = false;
  // Whatever happens, the source CVM is left as `resume` asks (running, or
  // paused for the caller) and no partial file stays (nor a frozen view: the
  // unused finish token cancels it).
  auto fail = [&](Status s) -> Status {
    if (begun_background) {
      std::vector<uint8_t> args(h.id.begin(), h.id.end());
      ByteWriter(&args).Int<uint8_t>(snap::kFinishCancel);
      auto c = RunCall(backend, cvm, options.hvcpus[0],
                       Entry("finish", tokens.finish, args, options.slice),
                       AbortPolicy{});
      if (!c.ok())
        CPC_LOG_WARN("snapshot: cancelling the frozen view failed: {}",
                     c.status().ToString());
    }
    if (paused && options.resume) (void)backend.ResumeGuest(cvm);
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };

  Status st = backend.PauseGuest(cvm);
  if (!st.ok()) return fail(st);
  paused = true;
  paused_at = Clock::now();
  if (options.at_pause) {
    st = options.at_pause();
    if (!st.ok()) return fail(st);
  }

  std::vector<uint8_t> begin_args;
  ByteWriter(&begin_args).Int<uint32_t>(streams);
  const uint64_t serial =
      options.serial != 0
          ? options.serial
          : static_cast<uint64_t>(
                std::chrono::system_clock::now().time_since_epoch().count());
  ByteWriter(&begin_args).Int<uint64_t>(serial);
  ByteWriter(&begin_args)
      .Int<uint8_t>(options.background ? snap::kBeginBackground : 0);
  auto begun = RunCall(backend, cvm, options.hvcpus[0],
                       Entry("begin", tokens.begin, begin_args, options.slice),
                       options.abort);
  if (!begun.ok()) return fail(begun.status());
  {
    ByteReader r(*begun);
    auto id = r.Bytes(16);
    h.pages = r.Int<uint64_t>();
    h.vcpus = r.Int<uint32_t>();
    auto meas = r.Bytes(32);
    if (!r.done())
      return fail(Status(Code::kInternal, "bad snapshot.begin output"));
    std::memcpy(h.id.data(), id.data(), 16);
    std::memcpy(h.measurement.data(), meas.data(), 32);
  }
  if (options.background) {
    // The view and the gvCPU states are taken: the guest runs on.
    begun_background = true;
    st = backend.ResumeGuest(cvm);
    if (!st.ok()) return fail(st);
    paused = false;
    stats.paused = Clock::now() - paused_at;
  }
  h.serial = serial;
  h.streams = streams;
  h.launch = options.launch;
  stats.pages = h.pages;
  stats.vcpus = h.vcpus;
  stats.total_guest_bytes = h.pages * kPageSize;
  auto hdr = h.Encode();
  st = WriteAll(fd, hdr.data(), hdr.size());
  if (!st.ok()) return fail(st);

  std::vector<Status> results(streams);
  {
    std::vector<uint32_t> depth;
    for (const StreamRing& r : rings) depth.push_back(r.count());
    ChunkWriter writer(fd, kHeaderBytes, std::move(depth));
    std::vector<std::thread> drivers;
    for (uint32_t i = 0; i < streams; ++i) {
      drivers.emplace_back([&, i] {
        const StreamRing& ring = rings[i];
        std::atomic<bool> done{false};
        // Hands every buffer the module publishes to the writer, once and
        // in order (kFull -> kWriting; the writer frees it and rings the
        // module's doorbell), until the end of the stream or of the call.
        std::thread collector([&] {
          for (uint32_t next = 0;; next = (next + 1) % ring.count()) {
            RingHead* hd = ring.head(next);
            if (!ring::AwaitState(hd, kFull, [&] { return done.load(); }))
              return;
            const bool eos = (hd->flags & kEndOfStream) != 0;
            hd->state.store(snap::kWriting, std::memory_order_relaxed);
            writer.Submit(static_cast<uint16_t>(i), hd, ring.payload(next));
            if (eos) return;
          }
        });
        uint64_t reported = 0;
        auto out = DriveCallWith(
            [&](const HvcpuEntry& x) {
              return backend.ScheduleHvcpu(cvm, options.hvcpus[i], x);
            },
            Entry("extract", tokens.streams[i], RingArgs(h.id, i, ring),
                  options.slice),
            options.abort,
            [&](const HvcpuExit& exit, const CallStats&) {
              Report(progress, stats_mu, stats, t0,
                     exit.progress.bytes_done - reported, writer.bytes());
              reported = exit.progress.bytes_done;
              return writer.status();
            });
        // The module published its last buffer before returning: the
        // collector takes every full one before it looks at `done`.
        done = true;
        collector.join();
        Status s = out.ok() ? out->status : out.status();
        if (out.ok())
          Report(progress, stats_mu, stats, t0, out->stats.bytes - reported,
                 writer.bytes());
        results[i] = s.WithContext(fmt::format("stream {}", i));
      });
    }
    for (auto& d : drivers) d.join();
    Status ws = writer.Drain();
    if (!ws.ok()) return fail(ws);
    stats.file_bytes = writer.bytes() + kHeaderBytes;
  }
  for (const Status& s : results)
    if (!s.ok()) return fail(s);

  std::vector<uint8_t> finish_args(h.id.begin(), h.id.end());
  ByteWriter(&finish_args).Int<uint8_t>(0);
  auto finished =
      RunCall(backend, cvm, options.hvcpus[0],
              Entry("finish", tokens.finish, finish_args, options.slice),
              options.abort);
  begun_background = false;  // finish ends the view, whatever its outcome
  if (!finished.ok()) return fail(finished.status());
  if (finished->size() < 8)
    return fail(Status(Code::kInternal, "bad snapshot.finish output"));
  stats.copied_pages = LoadLe<uint64_t>(finished->data());
  const auto final_block = std::span(*finished).subspan(8);
  uint8_t chdr[8];
  StoreLe<uint16_t>(chdr, kFinalStream);
  StoreLe<uint16_t>(chdr + 2, 0);
  StoreLe<uint32_t>(chdr + 4, static_cast<uint32_t>(final_block.size()));
  st = WriteAll(fd, chdr, 8);
  if (st.ok()) st = WriteAll(fd, final_block.data(), final_block.size());
  if (!st.ok()) return fail(st);
  stats.file_bytes += 8 + final_block.size();
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    Status e = ErrnoStatus("close snapshot");
    ::unlink(tmp.c_str());
    if (paused && options.resume) (void)backend.ResumeGuest(cvm);
    return e;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status e = ErrnoStatus(fmt::format("rename to {}", path));
    ::unlink(tmp.c_str());
    if (paused && options.resume) (void)backend.ResumeGuest(cvm);
    return e;
  }
  if (paused) stats.paused = Clock::now() - paused_at;
  if (paused && options.resume) {
    CPC_RETURN_IF_ERROR(backend.ResumeGuest(cvm));
    stats.paused = Clock::now() - paused_at;
  }
  stats.elapsed = Clock::now() - t0;
  stats.guest_bytes = stats.total_guest_bytes;
  const double secs = std::chrono::duration<double>(stats.elapsed).count();
  stats.rate_bytes_per_s = secs > 0 ? stats.guest_bytes / secs : 0;
  if (progress) progress(stats);
  return stats;
}

Result<SnapshotInfo> ReadSnapshotInfo(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(fmt::format("open {}", path));
  std::vector<uint8_t> b(kHeaderBytes);
  Status s = ReadAll(fd, b.data(), b.size());
  ::close(fd);
  if (!s.ok())
    return s.code() == Code::kDataLoss
               ? Status(Code::kRecordMalformed, "not a libcpc snapshot file")
               : s;
  CPC_ASSIGN_OR_RETURN(Header h, Header::Decode(b));
  SnapshotInfo info;
  info.version = kFileVersion;
  info.serial = h.serial;
  info.measurement = h.measurement;
  info.pages = h.pages;
  info.vcpus = h.vcpus;
  info.streams = h.streams;
  info.launch = std::move(h.launch);
  return info;
}

namespace {

// Whether all but 1/64 of the pages of [off, off + len) of `fd` are in the
// page cache, by cachestat(2) (Linux 6.5: no copy, no folio locks); false if
// the kernel cannot tell. Not all: reclaim (this VM runs DAMON) takes a few
// pages of a hot file now and then - 520 of 534 152 once - and those the
// hvCPUs fault in themselves.
bool MostlyResident(int fd, uint64_t off, uint64_t len) {
  struct {
    uint64_t off, len;
  } range{off, len};
  struct {
    uint64_t cache, dirty, writeback, evicted, recently_evicted;
  } cs{};
  constexpr long kSysCachestat = 451;  // x86-64 and generic tables
  if (::syscall(kSysCachestat, fd, &range, &cs, 0) != 0) return false;
  const uint64_t pages = (len + kPageSize - 1) / kPageSize;
  return cs.cache >= pages - pages / 64;
}

// Walks the chunk chain of a snapshot file of `size` bytes as the hvCPUs do:
// every stream must end before the final chunk, no chunk may be larger than
// a ring buffer or name an unknown or ended stream; returns the final block.
// kCancelled on `stop`.
//
// It also keeps the file resident ahead of the hvCPUs, and says how far in
// `ready` (pages; the hvCPUs read no further): a file (mostly) in the page
// cache is left alone (a copy would cost what the mapping saves), and of a
// cold one the walk reads every chunk as it reaches it - the I/O pattern of
// the plain read() it is measured against - rather than leave it to the
// hvCPUs' page faults, one synchronous folio at a time. (Reading ahead in
// 8 MiB pieces, each skipped if cachestat called it resident, made cold
// restores 2-4x slower than the plain read; a 1-byte RWF_NOWAIT probe read
// "not cached" for folios the hvCPUs were mapping at that moment.)
Status WalkChunks(int fd, uint64_t size, uint32_t streams,
                  const std::atomic<bool>& stop, std::atomic<uint32_t>* ready,
                  std::vector<uint8_t>* final_block) {
  const auto publish = [&](uint64_t end) {
    ring::RaiseLevel(
        ready, static_cast<uint32_t>((std::min(end, size) + kPageSize - 1) /
                                     kPageSize));
  };
  const bool cold = !MostlyResident(fd, 0, size);
  if (!cold) publish(size);
  std::vector<uint8_t> buf(cold ? kRingBuffer : 0);
  std::vector<bool> ended(streams, false);
  uint64_t off = kHeaderBytes;
  for (;;) {
    if (stop) return Status(Code::kCancelled, "restore stopped");
    uint8_t ch[snap::kChunkHeaderBytes];
    CPC_RETURN_IF_ERROR(ReadAll(fd, ch, sizeof ch, static_cast<off_t>(off)));
    const uint16_t stream = LoadLe<uint16_t>(ch);
    const uint16_t flags = LoadLe<uint16_t>(ch + 2);
    const uint32_t len = LoadLe<uint32_t>(ch + 4);
    off += sizeof ch;
    if (stream == kFinalStream) {
      if (len > (1u << 20))
        return Status(Code::kRecordMalformed, "snapshot final block too large");
      for (uint32_t i = 0; i < streams; ++i)
        if (!ended[i])
          return Status(Code::kDataLoss,
                        fmt::format("snapshot stream {} is truncated", i));
      final_block->resize(len);
      CPC_RETURN_IF_ERROR(
          ReadAll(fd, final_block->data(), len, static_cast<off_t>(off)));
      if (final_block->empty())
        return Status(Code::kDataLoss, "snapshot has no final block");
      return Status::Ok();
    }
    if (stream >= streams || len > kRingBuffer - sizeof(RingHead) ||
        ended[stream])
      return Status(
          Code::kRecordMalformed,
          fmt::format("snapshot chunk for stream {} is malformed", stream));
    if (flags & kEndOfStream) ended[stream] = true;
    if (size - std::min(size, off) < len)
      return Status(Code::kDataLoss, "snapshot file is truncated");
    if (cold) {
      CPC_RETURN_IF_ERROR(
          ReadAll(fd, buf.data(), len, static_cast<off_t>(off)));
      publish(off + len);
    }
    off += len;
  }
}

// Restores into a launched, paused CVM. Every error leaves it to the caller
// to destroy the CVM.
Status RestoreInto(Backend& backend, CvmHandle cvm, int fd, const Header& h,
                   const Tokens& tokens, const std::vector<uint32_t>& hvcpus,
                   const RestoreOptions& options,
                   const SnapshotProgressFn& progress, SnapshotStats& stats,
                   Clock::time_point t0) {
  std::vector<uint8_t> args(h.id.begin(), h.id.end());
  ByteWriter w(&args);
  w.Int<uint32_t>(h.streams);
  w.Int<uint64_t>(h.pages);
  w.Int<uint32_t>(h.vcpus);
  w.Bytes(h.measurement);
  CPC_RETURN_IF_ERROR(
      RunCall(backend, cvm, hvcpus[0],
              Entry("insert_begin", tokens.begin, args, options.slice),
              options.abort)
          .status());

  // The hvCPUs read the file in place: the host attaches it to the CVM's
  // shared memory (read-only) and each stream's hvCPU walks the chunk chain
  // and decrypts its own chunks. The host neither copies nor hands over
  // buffers; its one thread here walks the same chain to check the file's
  // shape and find the final block and, if the file is not in the page
  // cache, reads it ahead of the hvCPUs (see WalkChunks).
  CPC_ASSIGN_OR_RETURN(const uint64_t file_size,
                       backend.AttachSharedFile(cvm, fd));
  struct Detach {
    Backend& b;
    CvmHandle cvm;
    bool attached = true;
    Status Now() {
      attached = false;
      return b.DetachSharedFile(cvm);
    }
    ~Detach() {
      if (attached) (void)b.DetachSharedFile(cvm);
    }
  } detach{backend, cvm};

  // How far the file is resident (WalkChunks), for the hvCPUs: at the start
  // of the shared data area (no ring uses it during a restore).
  CPC_ASSIGN_OR_RETURN(SharedRegion shared, backend.MapSharedRegion(cvm));
  constexpr uint64_t kReadyAt = 0;
  if (shared.size < kReadyAt + sizeof(uint32_t))
    return Status(Code::kResourceExhausted, "no shared memory for a restore");
  if (file_size / kPageSize >= UINT32_MAX)
    return Status(Code::kInvalidArgument, "snapshot file too large");
  auto* ready = new (shared.base + kReadyAt) std::atomic<uint32_t>(0);
  std::vector<uint8_t> final_block;
  std::atomic<bool> stop{false};
  Status walked;
  std::thread walker([&] {
    walked = WalkChunks(fd, file_size, h.streams, stop, ready, &final_block);
    if (!walked.ok()) stop = true;
  });

  std::mutex stats_mu;
  std::vector<Status> results(h.streams);
  std::vector<std::thread> drivers;
  for (uint32_t i = 0; i < h.streams; ++i) {
    drivers.emplace_back([&, i] {
      const uint32_t hv = hvcpus[i % hvcpus.size()];
      std::vector<uint8_t> a(h.id.begin(), h.id.end());
      ByteWriter(&a).Int<uint32_t>(i);
      ByteWriter(&a).Int<uint64_t>(kHeaderBytes);
      ByteWriter(&a).Int<uint64_t>(kReadyAt);
      uint64_t reported = 0;
      auto out = DriveCallWith(
          [&](const HvcpuEntry& x) {
            return backend.ScheduleHvcpu(cvm, hv, x);
          },
          Entry("insert", tokens.streams[i], std::move(a), options.slice),
          options.abort,
          [&](const HvcpuExit& exit, const CallStats&) -> Status {
            Report(progress, stats_mu, stats, t0,
                   exit.progress.bytes_done - reported, file_size);
            reported = exit.progress.bytes_done;
            if (stop) return Status(Code::kCancelled, "restore stopped");
            return Status::Ok();
          });
      Status s = out.ok() ? out->status : out.status();
      if (out.ok()) {
        std::lock_guard<std::mutex> sl(stats_mu);
        stats.guest_bytes += out->stats.bytes - reported;
      }
      if (!s.ok()) stop = true;
      results[i] = s.WithContext(fmt::format("stream {}", i));
    });
  }
  for (auto& d : drivers) d.join();
  walker.join();
  // Prefer the file's own error (truncation, malformed chunk) over its
  // symptoms in the streams, then the stream that failed over those it
  // stopped or poisoned (a refused page poisons the receiver: the other
  // streams then fail with kFailedPrecondition, maybe before it reports).
  if (!walked.ok() && walked.code() != Code::kCancelled) return walked;
  const auto failed = [&](auto&& pick) -> const Status* {
    for (const Status& s : results)
      if (!s.ok() && pick(s.code())) return &s;
    return nullptr;
  };
  if (const Status* s = failed([](Code c) {
        return c != Code::kCancelled && c != Code::kFailedPrecondition;
      }))
    return *s;
  if (const Status* s = failed([](Code c) { return c != Code::kCancelled; }))
    return *s;
  for (const Status& s : results) CPC_RETURN_IF_ERROR(s);
  CPC_RETURN_IF_ERROR(walked);
  // The restored CVM keeps no view of the file.
  CPC_RETURN_IF_ERROR(detach.Now());
  std::vector<uint8_t> fargs(h.id.begin(), h.id.end());
  fargs.insert(fargs.end(), final_block.begin(), final_block.end());
  CPC_RETURN_IF_ERROR(
      RunCall(backend, cvm, hvcpus[0],
              Entry("insert_finish", tokens.finish, fargs, options.slice),
              options.abort)
          .status());
  stats.file_bytes = file_size;
  return Status::Ok();
}

}  // namespace

Result<RestoreResult> RestoreSnapshot(Backend& backend,
                                      const LaunchConfig& launch,
                                      const std::string& path,
                                      const RestoreOptions& options,
                                      const SnapshotProgressFn& progress) {
  const auto t0 = Clock::now();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(fmt::format("open {}", path));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  std::vector<uint8_t> hb(kHeaderBytes);
  Status rs = ReadAll(fd, hb.data(), hb.size());
  if (!rs.ok())
    return rs.code() == Code::kDataLoss
               ? Status(Code::kRecordMalformed, "not a libcpc snapshot file")
               : rs;
  CPC_ASSIGN_OR_RETURN(Header h, Header::Decode(hb));
  std::vector<uint32_t> hvcpus;
  for (const auto& hc : launch.hvcpus) hvcpus.push_back(hc.index);
  if (hvcpus.empty())
    return Status(Code::kInvalidArgument, "restore needs a CVM with hvCPUs");

  RestoreResult result;
  result.stats.pages = h.pages;
  result.stats.vcpus = h.vcpus;
  result.stats.streams = h.streams;
  result.stats.total_guest_bytes = h.pages * kPageSize;
  CPC_ASSIGN_OR_RETURN(CvmHandle cvm, backend.LaunchCvm(launch));
  result.stats.launch = Clock::now() - t0;
  // A failed restore leaves no half-built CVM behind.
  auto fail = [&](Status s) -> Status {
    (void)backend.DestroyCvm(cvm);
    return s;
  };
  auto tokens = GetTokens(backend, cvm, "insert_begin", "insert",
                          "insert_finish", h.streams, launch.memory_bytes);
  if (!tokens.ok()) return fail(tokens.status());
  if (options.before_pause) options.before_pause(cvm);
  Status s = backend.PauseGuest(cvm);
  if (!s.ok()) return fail(s);
  s = RestoreInto(backend, cvm, fd, h, *tokens, hvcpus, options, progress,
                  result.stats, t0);
  if (!s.ok()) return fail(s);
  if (options.resume) {
    s = backend.ResumeGuest(cvm);
    if (!s.ok()) return fail(s);
  }
  result.cvm = cvm;
  result.stats.elapsed = Clock::now() - t0;
  result.stats.guest_bytes = result.stats.total_guest_bytes;
  const double secs =
      std::chrono::duration<double>(result.stats.elapsed - result.stats.launch)
          .count();
  result.stats.rate_bytes_per_s =
      secs > 0 ? result.stats.guest_bytes / secs : 0;
  if (progress) progress(result.stats);
  return result;
}

CPC_NAMESPACE_END
