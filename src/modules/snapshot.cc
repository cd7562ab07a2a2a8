#include "modules/snapshot.h"

#include <cstring>
#include <map>
#include <mutex>

#include <fmt/format.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <cpc/backend.h>
#include <cpc/record.h>

#include "core/bytes.h"
#include "operators/aead.h"
#include "operators/operators.h"
#include "operators/receiver.h"
#include "operators/sender.h"

CPC_NAMESPACE_BEGIN
namespace snap {

uint64_t MinRingBuffer() {
  return sizeof(RingHead) + MemoryRecordBytes(kDefaultPagesPerRecord) + 4096;
}

namespace {

constexpr uint16_t kManifestStream = 0xFFFF;     // outside the record streams
constexpr uint32_t kManifestMagic = 0x4d4e5043;  // "CPNM"

Result<SecretBytes> SnapshotKey(GuestPlatform& p, const SessionId& id) {
  static constexpr std::string_view kContext = "cpc/snapshot/v1";
  CPC_ASSIGN_OR_RETURN(
      SecretBytes seal,
      p.SealingKey({reinterpret_cast<const uint8_t*>(kContext.data()),
                    kContext.size()}));
  SecretBytes key(32);
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  char digest[] = "SHA256";
  char info[] = "cpc snapshot key v1";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, seal.data(),
                                        seal.size()),
      OSSL_PARAM_construct_octet_string(
          OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(id.data()), id.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info,
                                        sizeof info - 1),
      OSSL_PARAM_construct_end()};
  const int ok = EVP_KDF_derive(kctx, key.data(), key.size(), params);
  EVP_KDF_CTX_free(kctx);
  if (ok != 1) return Status(Code::kInternal, "HKDF failed");
  return key;
}

// The manifest: what the snapshot must contain, sealed under its key.
struct Manifest {
  uint64_t serial = 0;
  uint64_t pages = 0;
  uint32_t vcpus = 0;
  uint32_t streams = 0;
  Digest measurement{};

  std::vector<uint8_t> Plain() const {
    std::vector<uint8_t> out;
    ByteWriter w(&out);
    w.Int<uint32_t>(kManifestMagic);
    w.Int<uint64_t>(serial);
    w.Int<uint64_t>(pages);
    w.Int<uint32_t>(vcpus);
    w.Int<uint32_t>(streams);
    w.Bytes(measurement);
    return out;
  }
};
constexpr size_t kManifestPlain = 4 + 8 + 8 + 4 + 4 + 32;
constexpr size_t kManifestSealed = kManifestPlain + kAeadTagBytes;

Status SealManifest(std::span<const uint8_t> key, const SessionId& id,
                    const Manifest& m, std::vector<uint8_t>* out) {
  CPC_ASSIGN_OR_RETURN(const AeadEngine* engine, FindAeadEngine());
  CPC_ASSIGN_OR_RETURN(auto aead, engine->NewKeyed(key));
  std::array<uint8_t, kAeadIvBytes> iv;
  MakeRecordIv(0, kManifestStream, 0, iv);
  auto plain = m.Plain();
  const size_t at = out->size();
  out->resize(at + kManifestSealed);
  return aead->Seal(iv, id, plain, out->data() + at,
                    std::span<uint8_t, kAeadTagBytes>(
                        out->data() + at + plain.size(), kAeadTagBytes));
}

Result<Manifest> OpenManifest(std::span<const uint8_t> key, const SessionId& id,
                              std::span<const uint8_t> sealed) {
  if (sealed.size() != kManifestSealed)
    return Status(Code::kRecordMalformed, "snapshot manifest has a bad size");
  CPC_ASSIGN_OR_RETURN(const AeadEngine* engine, FindAeadEngine());
  CPC_ASSIGN_OR_RETURN(auto aead, engine->NewKeyed(key));
  std::array<uint8_t, kAeadIvBytes> iv;
  MakeRecordIv(0, kManifestStream, 0, iv);
  std::vector<uint8_t> plain(kManifestPlain);
  CPC_RETURN_IF_ERROR(
      aead->Open(iv, id, sealed.first(kManifestPlain), plain.data(),
                 std::span<const uint8_t, kAeadTagBytes>(
                     sealed.data() + kManifestPlain, kAeadTagBytes)));
  ByteReader r(plain);
  Manifest m;
  if (r.Int<uint32_t>() != kManifestMagic)
    return Status(Code::kRecordMalformed, "not a snapshot manifest");
  m.serial = r.Int<uint64_t>();
  m.pages = r.Int<uint64_t>();
  m.vcpus = r.Int<uint32_t>();
  m.streams = r.Int<uint32_t>();
  auto meas = r.Bytes(32);
  if (!r.done()) return Status(Code::kRecordMalformed, "bad snapshot manifest");
  std::memcpy(m.measurement.data(), meas.data(), 32);
  return m;
}

struct ExportSession {
  SecretBytes key;
  std::unique_ptr<SenderSession> sender;
  Manifest manifest;
  GpaRange memory;
  // Background: the guest runs on; pages come from the platform's frozen
  // view and the gvCPU states were taken at begin, while it was paused.
  bool background = false;
  std::atomic<bool> view_open{false};  // the frozen view is not ended yet
  std::vector<std::vector<uint8_t>> vcpu_states;
};

// SEE of the gvCPU states a background snapshot took at begin.
class TakenVcpuStates final : public GuestPlatformWrapper {
 public:
  TakenVcpuStates(GuestPlatform* p, const ExportSession* s)
      : GuestPlatformWrapper(p), s_(s) {}
  Result<std::vector<uint8_t>> ExportVcpuState(uint32_t vcpu) override {
    if (vcpu >= s_->vcpu_states.size())
      return Status(Code::kInvalidArgument, "no such gvCPU");
    return s_->vcpu_states[vcpu];
  }

 private:
  const ExportSession* s_;
};

struct ImportSession {
  SecretBytes key;
  std::unique_ptr<Receiver> receiver;
  Manifest expected;
  std::atomic<uint64_t> pages{0};
  std::atomic<uint32_t> vcpus{0};
};

// The page range of `stream` of `streams` over `memory`.
GpaRange Share(GpaRange memory, uint32_t stream, uint32_t streams) {
  const uint64_t per = memory.pages / streams, extra = memory.pages % streams;
  const uint64_t first = stream * per + std::min<uint64_t>(stream, extra);
  return {memory.base + first * kPageSize, per + (stream < extra ? 1 : 0)};
}

Result<SessionId> ReadId(ByteReader& r) {
  auto b = r.Bytes(16);
  if (!r.ok())
    return Status(Code::kInvalidArgument, "missing snapshot session id");
  SessionId id;
  std::memcpy(id.data(), b.data(), 16);
  return id;
}

// Checks a host-supplied ring {offset, buffer bytes, buffer count} against
// the shared memory.
Result<ring::RingCursor> MapRing(CallContext& ctx, ByteReader& r) {
  const uint64_t off = r.Int<uint64_t>(), buf = r.Int<uint64_t>();
  const uint32_t count = r.Int<uint32_t>();
  if (!r.ok())
    return Status(Code::kInvalidArgument, "missing snapshot ring arguments");
  CPC_ASSIGN_OR_RETURN(auto bufs, ring::MapRing(ctx.shared_memory(), off, buf,
                                                count, MinRingBuffer()));
  return ring::RingCursor(std::move(bufs), buf - sizeof(RingHead));
}

// Snapshot calls stop only through the host's abort policy (at the yields
// the ring waits make): there is no control block to watch.
bool NeverStop() { return false; }

class SnapshotModule final : public Module {
 public:
  std::string_view name() const override { return kModule; }
  std::vector<std::string> procedures() const override {
    return {"begin",        "extract", "finish",
            "insert_begin", "insert",  "insert_finish"};
  }
  Isolation isolation() const override { return Isolation::kPlain; }

  Status Run(CallContext& ctx) override {
    const std::string_view p = ctx.procedure();
    if (p == "begin") return Begin(ctx);
    if (p == "extract") return Extract(ctx);
    if (p == "finish") return Finish(ctx);
    if (p == "insert_begin") return InsertBegin(ctx);
    if (p == "insert") return Insert(ctx);
    if (p == "insert_finish") return InsertFinish(ctx);
    return Status(Code::kNotFound,
                  fmt::format("snapshot has no procedure '{}'", p));
  }

 private:
  // One snapshot at a time: a new begin drops the sessions of snapshots that
  // never finished (and ends a frozen view one left behind).
  void DropExports(GuestPlatform& p) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, s] : exports_)
      if (s->view_open.exchange(false)) (void)p.EndFrozenView();
    exports_.clear();
  }

  Status Begin(CallContext& ctx) {
    ByteReader r(ctx.args());
    const uint32_t streams = r.Int<uint32_t>();
    const uint64_t serial = r.Int<uint64_t>();
    const uint8_t flags = r.Int<uint8_t>();
    if (!r.done() || streams == 0 || streams > 64 || flags > kBeginBackground)
      return Status(Code::kInvalidArgument,
                    "snapshot.begin wants 1..64 streams and known flags");
    GuestPlatform& p = ctx.platform();
    DropExports(p);
    SessionId id;
    RAND_bytes(id.data(), id.size());  // a fresh key and IV space per snapshot
    auto s = std::make_shared<ExportSession>();
    CPC_ASSIGN_OR_RETURN(s->key, SnapshotKey(p, id));
    CPC_ASSIGN_OR_RETURN(const AeadEngine* engine, FindAeadEngine());
    SenderOptions so;
    so.streams = streams;
    so.vcpu_count = p.vcpu_count();
    CPC_ASSIGN_OR_RETURN(s->sender,
                         SenderSession::Create(*engine, s->key.span(), id, so));
    s->memory = p.GuestOsMemory();
    s->manifest = {serial, s->memory.pages, p.vcpu_count(), streams,
                   ctx.identity().measurement};
    if (flags & kBeginBackground) {
      // The gvCPUs are paused: their states and the view are one instant.
      for (uint32_t v = 0; v < p.vcpu_count(); ++v) {
        CPC_ASSIGN_OR_RETURN(auto st, p.ExportVcpuState(v));
        s->vcpu_states.push_back(std::move(st));
      }
      CPC_RETURN_IF_ERROR(p.BeginFrozenView());
      s->background = true;
      s->view_open = true;
    }
    // A begin the host sees fail (aborted even after Run returned) leaves
    // neither a session nor a frozen view behind.
    ctx.OnRollback([this, id, &p, s] {
      {
        std::lock_guard<std::mutex> lock(mu_);
        exports_.erase(id);
      }
      if (s->view_open.exchange(false)) (void)p.EndFrozenView();
    });
    std::vector<uint8_t> out(id.begin(), id.end());
    ByteWriter w(&out);
    w.Int<uint64_t>(s->memory.pages);
    w.Int<uint32_t>(p.vcpu_count());
    w.Bytes(ctx.identity().measurement);
    {
      std::lock_guard<std::mutex> lock(mu_);
      exports_[id] = std::move(s);
    }
    ctx.SetOutput(std::move(out));
    return Status::Ok();
  }

  Result<std::shared_ptr<ExportSession>> FindExport(const SessionId& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = exports_.find(id);
    if (it == exports_.end())
      return Status(Code::kNotFound, "no such snapshot session in this CVM");
    return it->second;
  }

  Status Extract(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    const uint32_t stream = r.Int<uint32_t>();
    CPC_ASSIGN_OR_RETURN(ring::RingCursor cur, MapRing(ctx, r));
    CPC_ASSIGN_OR_RETURN(auto s, FindExport(id));
    if (!r.done() || stream >= s->manifest.streams)
      return Status(Code::kInvalidArgument, "bad snapshot.extract arguments");
    StreamSender& tx = s->sender->stream(stream);
    TakenVcpuStates taken(&ctx.platform(), s.get());
    GuestPlatform& p = s->background ? taken : ctx.platform();
    const PageSource source =
        s->background ? PageSource::kFrozen : PageSource::kLive;
    const GpaRange share = Share(s->memory, stream, s->manifest.streams);
    ctx.SetWorkSize(share.pages * kPageSize);

    std::vector<PageRef> pages(share.pages);
    for (uint64_t i = 0; i < share.pages; ++i)
      pages[i] = {share.base + i * kPageSize, 0};
    std::vector<uint32_t> vcpus;
    if (stream == 0)
      for (uint32_t v = 0; v < p.vcpu_count(); ++v) vcpus.push_back(v);

    size_t done_pages = 0, done_vcpus = 0;
    for (;;) {
      // The host's writer frees buffers as it writes them out (doorbell).
      CPC_RETURN_IF_ERROR(cur.WaitFree(ctx, NeverStop));
      if (done_vcpus < vcpus.size()) {
        ExportProgress ep;
        CPC_RETURN_IF_ERROR(
            ExportVcpuStates(tx, p, std::span(vcpus).subspan(done_vcpus),
                             cur.space(), &ctx, &ep));
        done_vcpus += ep.pages;
        cur.Commit(ep.bytes);
      }
      if (done_vcpus == vcpus.size() && done_pages < pages.size()) {
        ExportProgress ep;
        CPC_RETURN_IF_ERROR(ExportMemory(tx, p,
                                         std::span(pages).subspan(done_pages),
                                         cur.space(), &ctx, &ep, source));
        done_pages += ep.pages;
        cur.Commit(ep.bytes);
      }
      const bool all = done_vcpus == vcpus.size() && done_pages == pages.size();
      // Stream 0 ends with the epoch and start tokens (finish), the others
      // with an End record.
      if (all && stream != 0) {
        CPC_ASSIGN_OR_RETURN(size_t n, tx.SealEnd(cur.space()));
        cur.Commit(n);
      }
      cur.Publish(all ? kEndOfStream : 0);
      if (all) return Status::Ok();
    }
  }

  // Output: u64 pages the guest wrote before they were saved (copied by the
  // frozen view), then the final block (epoch + start tokens, manifest).
  // With the cancel flag, ends the session without a final block.
  Status Finish(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    const uint8_t flags = r.Int<uint8_t>();
    if (!r.done() || flags > kFinishCancel)
      return Status(Code::kInvalidArgument, "bad snapshot.finish arguments");
    CPC_ASSIGN_OR_RETURN(auto s, FindExport(id));
    // The view ends first: refused while an extract still pins pages, and
    // then the session stays for a later finish (or the next begin).
    uint64_t copied = 0;
    if (s->view_open) {
      CPC_ASSIGN_OR_RETURN(copied, ctx.platform().EndFrozenView());
      s->view_open = false;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      exports_.erase(id);  // the key is wiped with the session
    }
    if (flags & kFinishCancel) return Status::Ok();
    std::vector<uint8_t> out(8 + (64 << 10));
    StoreLe<uint64_t>(out.data(), copied);
    const auto body = std::span(out).subspan(8);
    CPC_ASSIGN_OR_RETURN(size_t a, s->sender->CloseEpoch(body));
    CPC_ASSIGN_OR_RETURN(size_t b, s->sender->SealStart(body.subspan(a)));
    out.resize(8 + a + b);
    CPC_RETURN_IF_ERROR(SealManifest(s->key.span(), id, s->manifest, &out));
    ctx.SetOutput(std::move(out));
    return Status::Ok();
  }

  Result<std::shared_ptr<ImportSession>> FindImport(const SessionId& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = imports_.find(id);
    if (it == imports_.end())
      return Status(Code::kNotFound, "no such restore session in this CVM");
    return it->second;
  }

  Status InsertBegin(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    Manifest m;
    m.streams = r.Int<uint32_t>();
    m.pages = r.Int<uint64_t>();
    m.vcpus = r.Int<uint32_t>();
    auto meas = r.Bytes(32);
    if (!r.done() || m.streams == 0 || m.streams > 64)
      return Status(Code::kInvalidArgument,
                    "bad snapshot.insert_begin arguments");
    std::memcpy(m.measurement.data(), meas.data(), 32);
    GuestPlatform& p = ctx.platform();
    // The header is unauthenticated, but a snapshot of another image or
    // policy deserves a clear error before its first record fails.
    if (m.measurement != ctx.identity().measurement)
      return Status(Code::kMeasurementMismatch,
                    "the snapshot was taken from a CVM with another image or "
                    "policy (measurement differs)");
    if (m.pages != p.GuestOsMemory().pages || m.vcpus != p.vcpu_count())
      return Status(
          Code::kInvalidArgument,
          fmt::format("snapshot of {} pages / {} vCPUs cannot restore into "
                      "{} pages / {} vCPUs",
                      m.pages, m.vcpus, p.GuestOsMemory().pages,
                      p.vcpu_count()));
    auto s = std::make_shared<ImportSession>();
    s->expected = m;
    CPC_ASSIGN_OR_RETURN(s->key, SnapshotKey(p, id));
    CPC_ASSIGN_OR_RETURN(const AeadEngine* engine, FindAeadEngine());
    ReceiverOptions ro;
    ro.streams = m.streams;
    ro.memory_bytes = p.memory_bytes();
    ro.vcpu_count = m.vcpus;
    // Single pass (receiver.h): a refused record may be half-applied, but
    // it poisons the receiver (insert_finish can never start the guest) and
    // RestoreSnapshot destroys this fresh CVM on any error. Faster commit.
    ro.single_pass = true;
    CPC_ASSIGN_OR_RETURN(s->receiver,
                         Receiver::Create(*engine, s->key.span(), id, ro));
    std::lock_guard<std::mutex> lock(mu_);
    imports_[id] = std::move(s);
    return Status::Ok();
  }

  // Decrypts straight from the attached file (no ring, no copy, no waits
  // for the host): each stream's hvCPU walks the whole chunk chain and
  // imports its own chunks.
  Status Insert(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    const uint32_t stream = r.Int<uint32_t>();
    uint64_t off = r.Int<uint64_t>();
    const uint64_t ready_at = r.Int<uint64_t>();
    CPC_ASSIGN_OR_RETURN(auto s, FindImport(id));
    const std::span<uint8_t> shared = ctx.shared_memory();
    if (!r.done() || stream >= s->expected.streams || ready_at % 4 != 0 ||
        ready_at > shared.size() || shared.size() - ready_at < 4)
      return Status(Code::kInvalidArgument, "bad snapshot.insert arguments");
    // How far the host has the file resident, in pages (it reads a cold
    // file ahead): reading further would fault it in folio by folio. A host
    // that lies only slows this down.
    const auto* ready = reinterpret_cast<const std::atomic<uint32_t>*>(
        shared.data() + ready_at);
    const auto resident = [&](uint64_t end) -> Status {
      const uint64_t pages = (end + kPageSize - 1) / kPageSize;
      if (pages > UINT32_MAX)
        return Status(Code::kInvalidArgument, "snapshot file too large");
      if (ready->load(std::memory_order_acquire) >= pages) return Status::Ok();
      return ring::WaitLevel(ctx, ready, static_cast<uint32_t>(pages));
    };
    const std::span<const uint8_t> file = ctx.shared_file();
    if (file.empty())
      return Status(Code::kFailedPrecondition,
                    "snapshot.insert reads the snapshot file, and the host "
                    "attached none (Backend::AttachSharedFile)");
    ctx.SetWorkSize(
        Share({0, s->expected.pages}, stream, s->expected.streams).pages *
        kPageSize);
    ReceiverStream& rx = s->receiver->stream(stream);
    const auto truncated = [&] {
      return Status(Code::kDataLoss,
                    fmt::format("snapshot stream {} is truncated", stream));
    };
    for (;;) {
      if (off > file.size() || file.size() - off < kChunkHeaderBytes)
        return truncated();
      CPC_RETURN_IF_ERROR(resident(off + kChunkHeaderBytes));
      uint8_t ch[kChunkHeaderBytes];  // host-controlled: read once
      std::memcpy(ch, file.data() + off, sizeof ch);
      const uint16_t chunk_stream = LoadLe<uint16_t>(ch);
      const uint16_t flags = LoadLe<uint16_t>(ch + 2);
      const uint32_t len = LoadLe<uint32_t>(ch + 4);
      off += kChunkHeaderBytes;
      if (chunk_stream == kFinalStream || len > file.size() - off)
        return truncated();
      if (chunk_stream == stream) {
        CPC_RETURN_IF_ERROR(resident(off + len));
        ImportProgress ip;
        Status st = ImportRecords(rx, ctx.platform(), file.subspan(off, len),
                                  &ctx, &ip);
        s->pages += ip.pages;
        s->vcpus += static_cast<uint32_t>(ip.vcpus);
        CPC_RETURN_IF_ERROR(st);
        if (flags & kEndOfStream) {
          if (stream != 0 && !rx.ended())
            return Status(
                Code::kDataLoss,
                fmt::format("snapshot stream {} ended without its end record",
                            stream));
          return Status::Ok();
        }
      }
      off += len;
      CPC_RETURN_IF_ERROR(ctx.MaybeYield());
    }
  }

  Status InsertFinish(CallContext& ctx) {
    ByteReader r(ctx.args());
    CPC_ASSIGN_OR_RETURN(SessionId id, ReadId(r));
    CPC_ASSIGN_OR_RETURN(auto s, FindImport(id));
    auto rest = r.rest();
    if (rest.size() < kManifestSealed)
      return Status(Code::kDataLoss, "snapshot final block truncated");
    const auto tokens = rest.first(rest.size() - kManifestSealed);
    const auto sealed = rest.last(kManifestSealed);
    CPC_RETURN_IF_ERROR(
        ImportRecords(s->receiver->stream(0), ctx.platform(), tokens, &ctx));
    if (!s->receiver->started())
      return Status(Code::kIncomplete, "snapshot has no valid start token");
    CPC_ASSIGN_OR_RETURN(Manifest m, OpenManifest(s->key.span(), id, sealed));
    const Manifest& e = s->expected;
    if (m.pages != e.pages || m.vcpus != e.vcpus || m.streams != e.streams ||
        m.measurement != e.measurement)
      return Status(Code::kDataLoss,
                    "snapshot manifest disagrees with its header");
    if (s->pages.load() != m.pages || s->vcpus.load() != m.vcpus)
      return Status(
          Code::kIncomplete,
          fmt::format("restored {} of {} pages and {} of {} vCPU states",
                      s->pages.load(), m.pages, s->vcpus.load(), m.vcpus));
    std::vector<uint8_t> out;
    ByteWriter(&out).Int<uint64_t>(m.serial);
    ctx.SetOutput(std::move(out));
    std::lock_guard<std::mutex> lock(mu_);
    imports_.erase(id);
    return Status::Ok();
  }

  std::mutex mu_;
  std::map<SessionId, std::shared_ptr<ExportSession>> exports_;
  std::map<SessionId, std::shared_ptr<ImportSession>> imports_;
};

}  // namespace
}  // namespace snap

std::unique_ptr<Module> MakeSnapshotModule() {
  return std::make_unique<snap::SnapshotModule>();
}

CPC_NAMESPACE_END
