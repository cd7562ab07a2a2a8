// Writes the seed corpus of record_fuzzer (fuzz/corpus/record/):
//   make_record_corpus DIR
// Valid records of every type under the fuzzer's fixed key, a whole session
// in one input, and mutated variants. The key, session id and memory
// contents are fixed, so re-running it reproduces
// the checked-in files byte for byte. Not part of the test run; rerun it
// (and commit the result) when the record format changes.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz/record_fuzz_common.h"
#include "operators/mem_platform.h"
#include "operators/operators.h"
#include "operators/record_codec.h"

namespace {

using Bytes = std::vector<uint8_t>;

[[noreturn]] void Die(const cpc::Status& s) {
  std::fprintf(stderr, "make_record_corpus: %s\n", s.ToString().c_str());
  std::exit(1);
}
template <typename T>
T Check(cpc::Result<T> r) {
  if (!r.ok()) Die(r.status());
  return std::move(r).value();
}
void Check(const cpc::Status& s) {
  if (!s.ok()) Die(s);
}

struct Gen {
  explicit Gen(bool elide = false)
      : src(uint64_t{cpc_fuzz::kPages} * cpc::kPageSize, cpc_fuzz::kVcpus, 64) {
    src.Randomize(3);
    cpc::SenderOptions so;
    so.streams = cpc_fuzz::kStreams;
    so.vcpu_count = cpc_fuzz::kVcpus;
    so.pages_per_record = cpc_fuzz::kPagesPerRecord;
    so.elide_zero_pages = elide;
    engine = Check(cpc::FindAeadEngine("openssl"));
    tx =
        Check(cpc::SenderSession::Create(*engine, key, cpc_fuzz::kSession, so));
  }
  Bytes Pages(uint32_t stream, uint32_t first, uint32_t n) {
    Bytes ring(1 << 20);
    cpc::ExportProgress p;
    std::vector<cpc::PageRef> refs;
    for (uint32_t i = 0; i < n; ++i)
      refs.push_back({uint64_t{first + i} * cpc::kPageSize, 0});
    Check(cpc::ExportMemory(tx->stream(stream), src, refs, ring, nullptr, &p));
    ring.resize(p.bytes);
    return ring;
  }
  Bytes Vcpus(uint32_t stream) {
    Bytes ring(1 << 16);
    cpc::ExportProgress p;
    std::vector<uint32_t> ids{0, 1};
    Check(
        cpc::ExportVcpuStates(tx->stream(stream), src, ids, ring, nullptr, &p));
    ring.resize(p.bytes);
    return ring;
  }
  Bytes Token(bool start) {
    Bytes out(4096);
    out.resize(Check(start ? tx->SealStart(out) : tx->CloseEpoch(out)));
    return out;
  }
  Bytes End(uint32_t stream) {
    Bytes out(4096);
    out.resize(Check(tx->stream(stream).SealEnd(out)));
    return out;
  }

  std::array<uint8_t, 32> key = cpc_fuzz::Key();
  cpc_test::MemPlatform src;
  const cpc::AeadEngine* engine;
  std::unique_ptr<cpc::SenderSession> tx;
};

Bytes Cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  int n = 0;
  auto write = [&](const char* name, uint8_t stream, const Bytes& records) {
    std::ofstream out(dir + "/" + std::to_string(10 + n++) + "-" + name,
                      std::ios::binary);
    out.put(static_cast<char>(stream));
    out.write(reinterpret_cast<const char*>(records.data()),
              static_cast<std::streamsize>(records.size()));
  };

  {  // A whole session on stream 0: pages, vCPU state, epoch, start.
    Gen g;
    Bytes pages = g.Pages(0, 0, 8), vcpus = g.Vcpus(0), epoch = g.Token(false);
    Bytes start = g.Token(true);
    write("session", 0, Cat({pages, vcpus, epoch, start}));
    write("memory", 0,
          Bytes(pages.begin(), pages.begin() + cpc::MemoryRecordBytes(4)));
    Bytes flipped = pages;
    flipped[cpc::hdr::kEpoch] ^= 1;
    write("memory-header-flip", 0, flipped);
    Bytes ct = pages;
    ct[cpc::kRecordPrefixBytes + 64 + 64 + 100] ^= 0x10;
    write("memory-ciphertext-flip", 0, ct);
    write("memory-truncated", 0, Bytes(pages.begin(), pages.end() - 7));
    Bytes swapped = pages;
    const size_t b0 = cpc::kRecordPrefixBytes + 64, blk = 64 + cpc::kPageSize;
    std::swap_ranges(swapped.begin() + b0, swapped.begin() + b0 + blk,
                     swapped.begin() + b0 + blk);
    write("memory-swapped", 0, swapped);
    Bytes reordered =
        Cat({Bytes(pages.begin() + cpc::MemoryRecordBytes(4), pages.end()),
             Bytes(pages.begin(), pages.begin() + cpc::MemoryRecordBytes(4))});
    write("memory-reordered", 0, reordered);
    Bytes version = pages;
    version[cpc::hdr::kVersion] = 2;
    write("memory-bad-version", 0, version);
    write("vcpu-before-pages", 0, vcpus);
    write("epoch-early", 0,
          Cat({Bytes(pages.begin(), pages.begin() + cpc::MemoryRecordBytes(4)),
               epoch}));
  }
  {  // An epoch token alone (nothing sent in epoch 0).
    Gen g;
    write("epoch-empty", 0, g.Token(false));
  }
  {
    Gen g;
    Bytes p = g.Pages(1, 4, 4);
    write("stream1-memory-end", 1, Cat({p, g.End(1)}));
    write("stream1-misrouted", 0, p);
  }
  {
    Gen g;
    Bytes p = g.Pages(0, 0, 2);
    write("replay", 0, Cat({p, p}));
  }
  {  // Zero-page elision: pages 8..11 zeroed.
    Gen g(true);
    std::memset(g.src.mem() + 8 * cpc::kPageSize, 0, 4 * cpc::kPageSize);
    write("memory-zero-elided", 0, g.Pages(0, 6, 8));
  }
  {  // An abort token under the fixed key (the fuzzer's receiver opens it).
    Gen g;
    auto engine = g.engine;
    cpc::ReceiverOptions ro;
    auto dst =
        Check(cpc::Receiver::Create(*engine, g.key, cpc_fuzz::kSession, ro));
    Bytes out(4096);
    out.resize(Check(dst->AbortAndSeal(g.tx->stream(0), 9, out)));
    write("abort", 0, out);
  }
  write("garbage", 0, Bytes(300, 0xA5));
  std::printf("wrote %d seeds to %s\n", n, dir.c_str());
  return 0;
}
