// MEE / SEE / MDI / SDI round trips, streams, epochs, tokens, call context.
#include <thread>

#include "operators/op_fixture.h"

namespace {

using cpc::Code;
using cpc_test::OpFixture;
using cpc_test::PageRange;
using cpc_test::Record;

TEST_CASE(
    "operators/pipeline: pages + vCPU state + epoch + start round trip, "
    "across engines") {
  for (auto* tx_engine : cpc::AvailableAeadEngines()) {
    for (auto* rx_engine : cpc::AvailableAeadEngines()) {
      INFO(tx_engine->name() << " -> " << rx_engine->name());
      OpFixture::Config cfg;
      cfg.tx_engine = tx_engine;
      cfg.rx_engine = rx_engine;
      OpFixture f(cfg);
      auto pages = f.SealAll();
      REQUIRE(pages.size() == 8);  // 64 pages, 8 per record
      CHECK(pages[0].size() == cpc::MemoryRecordBytes(8));
      auto vcpus = f.SealVcpus();
      REQUIRE(vcpus.size() == 2);
      Record epoch = f.CloseEpoch();
      Record start = f.Start();

      CHECK(!f.MemoryEqual());
      for (auto& r : pages) REQUIRE_OK(f.Import(r));
      for (auto& r : vcpus)
        REQUIRE_OK(
            cpc::ImportVcpuStateRecord(f.rx->stream(0), f.dst, r, nullptr));
      CHECK(!f.rx->started());
      REQUIRE_OK(f.Import(epoch));
      CHECK(f.rx->epoch() == 1);
      REQUIRE_OK(f.Import(start));
      CHECK(f.rx->started());
      CHECK(f.MemoryEqual());
      CHECK(f.dst.state(0) == f.src.state(0));
      CHECK(f.dst.state(1) == f.src.state(1));
      // Nothing is accepted once started.
      REQUIRE_CODE(f.Import(pages[0]), Code::kFailedPrecondition);
    }
  }
}

TEST_CASE("operators/pipeline: the ciphertext hides the page") {
  OpFixture f;
  auto recs = f.SealAll();
  // No 16-byte window of page 0's plaintext appears in its record.
  const uint8_t* page0 = f.src.mem();
  const Record& r = recs[0];
  bool found = false;
  for (size_t i = 0; i + 16 <= r.size() && !found; ++i)
    found = std::memcmp(r.data() + i, page0 + 100, 16) == 0;
  CHECK(!found);
}

TEST_CASE(
    "operators/pipeline: a full ring stops MEE early and the rest follows") {
  OpFixture f;
  std::vector<uint8_t> ring(cpc::MemoryRecordBytes(8) * 2 + 100);
  auto pages = PageRange(0, 64);
  cpc::ExportProgress p;
  size_t done = 0, records = 0;
  while (done < pages.size()) {
    REQUIRE_OK(cpc::ExportMemory(f.tx->stream(0), f.src,
                                 std::span(pages).subspan(done), ring, nullptr,
                                 &p));
    REQUIRE(p.pages > 0);
    CHECK(p.bytes <= ring.size());
    REQUIRE_OK(cpc::ImportRecords(f.rx->stream(0), f.dst,
                                  std::span(ring).first(p.bytes), nullptr));
    done += p.pages;
    records += p.records;
  }
  CHECK(records == 8);
  CHECK(f.MemoryEqual());
  // A ring too small for even one page exports nothing and says so.
  std::vector<uint8_t> tiny(200);
  REQUIRE_OK(
      cpc::ExportMemory(f.tx->stream(0), f.src, pages, tiny, nullptr, &p));
  CHECK(p.pages == 0);
  CHECK(f.tx->stream(0).next_counter() == 8);  // no counter consumed
}

TEST_CASE("operators/pipeline: a newer epoch re-imports a page") {
  OpFixture f;
  for (auto& r : f.Seal(0, PageRange(0, 16))) REQUIRE_OK(f.Import(r));
  REQUIRE_OK(f.Import(f.CloseEpoch()));
  // The guest dirtied page 3; it is sent again in epoch 1.
  f.src.mem()[3 * cpc::kPageSize + 5] ^= 0xff;
  auto again = f.Seal(0, PageRange(3, 1, /*version=*/1));
  REQUIRE_OK(f.Import(again[0]));
  CHECK(std::memcmp(f.src.mem(), f.dst.mem(), 16 * cpc::kPageSize) == 0);
  // ...but only once per epoch.
  auto twice = f.Seal(0, PageRange(3, 1, 2));
  REQUIRE_CODE(f.Import(twice[0]), Code::kDuplicatePage);
}

TEST_CASE("operators/pipeline: two streams sealed and imported in parallel") {
  OpFixture::Config cfg;
  cfg.streams = 2;
  cfg.pages = 128;
  OpFixture f(cfg);
  // Catch2 assertions are not thread-safe: workers only record statuses.
  std::vector<uint8_t> rings[2] = {std::vector<uint8_t>(1 << 20),
                                   std::vector<uint8_t>(1 << 20)};
  cpc::ExportProgress prog[2];
  cpc::Status sealed[2];
  {
    auto seal = [&](uint32_t s) {
      sealed[s] =
          cpc::ExportMemory(f.tx->stream(s), f.src, PageRange(64 * s, 64),
                            rings[s], nullptr, &prog[s]);
    };
    std::jthread t0(seal, 0);
    std::jthread t1(seal, 1);
  }
  REQUIRE_OK(sealed[0]);
  REQUIRE_OK(sealed[1]);
  std::vector<Record> recs[2] = {
      cpc_test::SplitRecords(std::span(rings[0]).first(prog[0].bytes)),
      cpc_test::SplitRecords(std::span(rings[1]).first(prog[1].bytes))};
  CHECK(f.tx->stream(0).records_in_epoch() == 8);
  CHECK(f.tx->stream(1).records_in_epoch() == 8);
  auto vcpus = f.SealVcpus(1);
  Record epoch = f.CloseEpoch();
  Record start = f.Start();

  cpc::Status st[2];
  {
    auto run = [&](uint32_t s) {
      for (auto& r : recs[s]) {
        st[s] = f.Import(r, s);
        if (!st[s].ok()) return;
      }
    };
    std::jthread t0(run, 0);
    std::jthread t1(run, 1);
  }
  REQUIRE_OK(st[0]);
  REQUIRE_OK(st[1]);
  // The vCPU records of stream 1 are still missing: the token says so.
  REQUIRE_CODE(f.Import(epoch), Code::kEpochMismatch);
  for (auto& r : vcpus) REQUIRE_OK(f.Import(r, 1));
  REQUIRE_OK(f.Import(epoch));
  REQUIRE_OK(f.Import(start));
  CHECK(f.MemoryEqual());
  CHECK(f.dst.state(1) == f.src.state(1));
}

TEST_CASE("operators/pipeline: call context charges, yields and aborts") {
  OpFixture f;
  auto pages = PageRange(0, 64);
  std::vector<uint8_t> ring(1 << 20);
  {
    cpc_test::FakeCallContext ctx(&f.src);
    cpc::ExportProgress p;
    REQUIRE_OK(
        cpc::ExportMemory(f.tx->stream(0), f.src, pages, ring, &ctx, &p));
    CHECK(ctx.charged == 64 * cpc::kPageSize);
    CHECK(ctx.yields == 8);
    cpc_test::FakeCallContext ictx(&f.dst);
    cpc::ImportProgress ip;
    REQUIRE_OK(cpc::ImportRecords(f.rx->stream(0), f.dst,
                                  std::span(ring).first(p.bytes), &ictx, &ip));
    CHECK(ip.pages == 64);
    CHECK(ictx.charged == 64 * cpc::kPageSize);
    CHECK(f.MemoryEqual());
  }
  {
    // The host aborts at the 3rd yield: 3 records were produced, no more.
    cpc_test::FakeCallContext ctx(&f.src, 0, 3);
    cpc::ExportProgress p;
    REQUIRE_CODE(
        cpc::ExportMemory(f.tx->stream(0), f.src, pages, ring, &ctx, &p),
        Code::kAborted);
    CHECK(p.records == 3);
    CHECK(p.pages == 24);
  }
  {
    // Budget for 2.5 records: the third is not produced.
    cpc_test::FakeCallContext ctx(&f.src, 20 * cpc::kPageSize);
    cpc::ExportProgress p;
    REQUIRE_CODE(
        cpc::ExportMemory(f.tx->stream(0), f.src, pages, ring, &ctx, &p),
        Code::kBudgetExceeded);
    CHECK(p.records == 2);
    CHECK(f.tx->stream(0).next_counter() == 8 + 3 + 2);
  }
}

TEST_CASE("operators/pipeline: zero-page elision (policy option)") {
  OpFixture::Config cfg;
  cfg.elide_zero_pages = true;
  OpFixture f(cfg);
  std::memset(f.src.mem() + 2 * cpc::kPageSize, 0, 3 * cpc::kPageSize);
  auto recs = f.Seal(0, PageRange(0, 8));
  REQUIRE(recs.size() == 1);
  CHECK(recs[0].size() == cpc::MemoryRecordBytes(8) - 3 * cpc::kPageSize);
  REQUIRE_OK(f.Import(recs[0]));
  CHECK(std::memcmp(f.src.mem(), f.dst.mem(), 8 * cpc::kPageSize) == 0);
}

TEST_CASE(
    "operators/pipeline: SEE needs paused gvCPUs and SDI takes only state") {
  OpFixture f;
  f.src.set_paused(false);
  std::vector<uint8_t> ring(1 << 16);
  std::vector<uint32_t> ids{0};
  REQUIRE_CODE(
      cpc::ExportVcpuStates(f.tx->stream(0), f.src, ids, ring, nullptr),
      Code::kFailedPrecondition);
  f.src.set_paused(true);
  auto pages = f.Seal(0, PageRange(0, 8));
  REQUIRE_CODE(
      cpc::ImportVcpuStateRecord(f.rx->stream(0), f.dst, pages[0], nullptr),
      Code::kRecordMalformed);
  auto v = f.SealVcpus();
  REQUIRE_OK(f.Import(pages[0]));
  f.dst.set_paused(false);  // the platform refuses: the record changes nothing
  REQUIRE_CODE(f.Import(v[0]), Code::kFailedPrecondition);
  f.dst.set_paused(true);
  REQUIRE_OK(f.Import(v[0]));
  REQUIRE_CODE(f.Import(v[0]), Code::kRecordReplayed);
}

TEST_CASE("operators/pipeline: sender-side token preconditions") {
  OpFixture f;
  std::vector<uint8_t> buf(4096);
  f.SealAll();
  REQUIRE_CODE(f.tx->SealStart(buf), Code::kIncomplete);  // no vCPU state
  f.SealVcpus();
  REQUIRE_CODE(f.tx->SealStart(buf), Code::kIncomplete);  // epoch open
  f.CloseEpoch();
  REQUIRE_OK(f.tx->SealStart(buf));
  REQUIRE_CODE(f.tx->CloseEpoch(std::span(buf).first(64)),
               Code::kResourceExhausted);
}

TEST_CASE("operators/pipeline: End closes a stream") {
  OpFixture f;
  auto recs = f.Seal(0, PageRange(0, 16));
  Record end(256);
  auto n = f.tx->stream(0).SealEnd(end);
  REQUIRE_OK(n);
  end.resize(*n);
  REQUIRE_OK(f.Import(recs[0]));
  REQUIRE_OK(f.Import(recs[1]));
  CHECK(!f.rx->stream(0).ended());
  REQUIRE_OK(f.Import(end));
  CHECK(f.rx->stream(0).ended());
  auto more = f.Seal(0, PageRange(16, 8));
  REQUIRE_CODE(f.Import(more[0]), Code::kFailedPrecondition);
}

}  // namespace
