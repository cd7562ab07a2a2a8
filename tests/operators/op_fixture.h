// A sender/receiver pair over two MemPlatforms, for the operator tests.
#ifndef CPC_TESTS_OPERATORS_OP_FIXTURE_H_
#define CPC_TESTS_OPERATORS_OP_FIXTURE_H_

#include <memory>
#include <numeric>
#include <vector>

#include <cpc/record.h>
#include <cpc/secret.h>

#include "operators/mem_platform.h"
#include "operators/operators.h"
#include "operators/record_codec.h"
#include "test_util.h"

namespace cpc_test {

using Record = std::vector<uint8_t>;

// Splits a buffer of whole records.
inline std::vector<Record> SplitRecords(std::span<const uint8_t> buf) {
  std::vector<Record> out;
  size_t pos = 0;
  while (pos < buf.size()) {
    auto h = cpc::PeekRecordHeader(buf.subspan(pos));
    REQUIRE_OK(h);
    out.emplace_back(buf.begin() + pos, buf.begin() + pos + h->record_bytes);
    pos += h->record_bytes;
  }
  return out;
}

// Offset of page block i in an 8-page memory record (docs/FORMAT.md
// section 2).
constexpr size_t Block(size_t i) {
  return cpc::kRecordPrefixBytes + 8 * cpc::kPageEntryBytes +
         i * (cpc::kBlockHeadBytes + cpc::kPageSize);
}

inline std::vector<cpc::PageRef> PageRange(uint32_t first, uint32_t count,
                                           uint32_t version = 0) {
  std::vector<cpc::PageRef> v;
  for (uint32_t i = 0; i < count; ++i)
    v.push_back({uint64_t{first + i} * cpc::kPageSize, version});
  return v;
}

struct OpConfig {
  uint32_t streams = 1;
  uint32_t pages_per_record = 8;
  uint32_t pages = 64;
  uint32_t vcpus = 2;
  bool elide_zero_pages = false;
  bool single_pass = false;                    // ReceiverOptions::single_pass
  const cpc::AeadEngine* tx_engine = nullptr;  // default engine if null
  const cpc::AeadEngine* rx_engine = nullptr;
};

struct OpFixture {
  using Config = OpConfig;

  explicit OpFixture(Config c = {})
      : cfg(c),
        src(uint64_t{c.pages} * cpc::kPageSize, c.vcpus),
        dst(uint64_t{c.pages} * cpc::kPageSize, c.vcpus),
        fwd(cpc::SecretBytes::Random(32)),
        bwd(cpc::SecretBytes::Random(32)) {
    src.Randomize(1);
    dst.Randomize(2);  // a destination that differs everywhere
    sid = {0xc0, 0xff, 0xee};
    auto def = cpc::FindAeadEngine();
    REQUIRE_OK(def);
    cpc::SenderOptions so;
    so.streams = c.streams;
    so.vcpu_count = c.vcpus;
    so.pages_per_record = c.pages_per_record;
    so.elide_zero_pages = c.elide_zero_pages;
    auto t = cpc::SenderSession::Create(c.tx_engine ? *c.tx_engine : **def,
                                        fwd.span(), sid, so);
    REQUIRE_OK(t);
    tx = std::move(*t);
    cpc::ReceiverOptions ro;
    ro.streams = c.streams;
    ro.memory_bytes = dst.memory_bytes();
    ro.vcpu_count = c.vcpus;
    ro.max_pages_per_record = c.pages_per_record;
    ro.single_pass = c.single_pass;
    auto r = cpc::Receiver::Create(c.rx_engine ? *c.rx_engine : **def,
                                   fwd.span(), sid, ro);
    REQUIRE_OK(r);
    rx = std::move(*r);
  }

  // MEE of `pages` on `stream`, one Record per sealed record.
  std::vector<Record> Seal(uint32_t stream,
                           const std::vector<cpc::PageRef>& pages) {
    std::vector<uint8_t> ring(1 << 20);
    cpc::ExportProgress p;
    REQUIRE_OK(
        cpc::ExportMemory(tx->stream(stream), src, pages, ring, nullptr, &p));
    REQUIRE(p.pages == pages.size());
    return SplitRecords(std::span(ring).first(p.bytes));
  }
  std::vector<Record> SealAll(uint32_t stream = 0) {
    return Seal(stream, PageRange(0, cfg.pages));
  }
  std::vector<Record> SealVcpus(uint32_t stream = 0) {
    std::vector<uint32_t> ids(cfg.vcpus);
    std::iota(ids.begin(), ids.end(), 0);
    std::vector<uint8_t> ring(1 << 20);
    cpc::ExportProgress p;
    REQUIRE_OK(
        cpc::ExportVcpuStates(tx->stream(stream), src, ids, ring, nullptr, &p));
    return SplitRecords(std::span(ring).first(p.bytes));
  }
  Record CloseEpoch() {
    Record r(64 << 10);
    auto n = tx->CloseEpoch(r);
    REQUIRE_OK(n);
    r.resize(*n);
    return r;
  }
  Record Start() {
    Record r(4096);
    auto n = tx->SealStart(r);
    REQUIRE_OK(n);
    r.resize(*n);
    return r;
  }
  cpc::Status Import(const Record& r, uint32_t stream = 0) {
    return cpc::ImportRecords(rx->stream(stream), dst, r, nullptr);
  }
  bool MemoryEqual() {
    return std::memcmp(src.mem(), dst.mem(), src.memory_bytes()) == 0;
  }

  Config cfg;
  MemPlatform src, dst;
  cpc::SecretBytes fwd, bwd;
  cpc::SessionId sid{};
  std::unique_ptr<cpc::SenderSession> tx;
  std::unique_ptr<cpc::Receiver> rx;
};

}  // namespace cpc_test

#endif  // CPC_TESTS_OPERATORS_OP_FIXTURE_H_
