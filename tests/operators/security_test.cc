// The record attack matrix: each attack is refused with its own Code and
// leaves the destination (memory and receiver state) as it was before.
#include "operators/op_fixture.h"

namespace {

using cpc::Code;
using cpc_test::Block;
using cpc_test::OpFixture;
using cpc_test::PageRange;
using cpc_test::Record;

constexpr size_t kTag = 16, kCt = cpc::kBlockHeadBytes;

// Imports `bad`, expects `code`, and checks nothing changed; then the
// genuine record still imports (a refused record consumed nothing).
void RefusedThenGenuine(OpFixture& f, const Record& bad, Code code,
                        const Record* genuine) {
  const auto before = f.dst.Snapshot();
  const uint64_t counter = f.rx->stream(0).expected_counter();
  const uint32_t epoch = f.rx->epoch();
  REQUIRE_CODE(f.Import(bad), code);
  CHECK(f.dst.Snapshot() == before);
  CHECK(f.rx->stream(0).expected_counter() == counter);
  CHECK(f.rx->epoch() == epoch);
  if (genuine != nullptr) REQUIRE_OK(f.Import(*genuine));
}

Record Flip(Record r, size_t off, uint8_t bit = 0x01) {
  r.at(off) ^= bit;
  return r;
}

TEST_CASE("operators/security: tampered header, page table, ciphertext, tag") {
  OpFixture f;
  auto recs = f.SealAll();
  const Record& r = recs[0];
  SECTION("header field (epoch)") {
    RefusedThenGenuine(f, Flip(r, cpc::hdr::kEpoch), Code::kAuthFailed, &r);
  }
  SECTION("header field (counter)") {
    RefusedThenGenuine(f, Flip(r, cpc::hdr::kCounter + 3), Code::kAuthFailed,
                       &r);
  }
  SECTION("header tag") {
    RefusedThenGenuine(f, Flip(r, cpc::hdr::kTag + 7), Code::kAuthFailed, &r);
  }
  SECTION("page table GPA (and the block's copy, consistently)") {
    Record bad = Flip(r, cpc::kRecordPrefixBytes + 1, 0x10);
    bad[Block(0) + 1] ^= 0x10;
    RefusedThenGenuine(f, bad, Code::kAuthFailed, &r);
  }
  SECTION("page version") {
    Record bad = Flip(r, cpc::kRecordPrefixBytes + 3 * 16 + 8);
    bad[Block(3) + 8] ^= 0x01;
    RefusedThenGenuine(f, bad, Code::kAuthFailed, &r);
  }
  SECTION("ciphertext of the 6th page: the first 5 are not written either") {
    RefusedThenGenuine(f, Flip(r, Block(5) + kCt + 1000, 0x80),
                       Code::kAuthFailed, &r);
  }
  SECTION("page tag of the last page") {
    RefusedThenGenuine(f, Flip(r, Block(7) + kTag), Code::kAuthFailed, &r);
  }
  for (size_t i = 1; i < recs.size(); ++i) REQUIRE_OK(f.Import(recs[i]));
  CHECK(f.MemoryEqual());
}

TEST_CASE("operators/security: replay of an older record") {
  OpFixture f;
  auto recs = f.SealAll();
  REQUIRE_OK(f.Import(recs[0]));
  REQUIRE_OK(f.Import(recs[1]));
  RefusedThenGenuine(f, recs[0], Code::kRecordReplayed, &recs[2]);

  // Rollback attack across epochs: page 0 changed and was re-sent in epoch
  // 1; the old epoch-0 record must not bring the old content back.
  for (size_t i = 3; i < recs.size(); ++i) REQUIRE_OK(f.Import(recs[i]));
  REQUIRE_OK(f.Import(f.CloseEpoch()));
  f.src.mem()[17] ^= 0x55;
  auto fresh = f.Seal(0, PageRange(0, 8, 1));
  REQUIRE_OK(f.Import(fresh[0]));
  RefusedThenGenuine(f, recs[0], Code::kStaleEpoch, nullptr);
  CHECK(f.MemoryEqual());
}

TEST_CASE("operators/security: reordered records") {
  OpFixture f;
  auto recs = f.SealAll();
  RefusedThenGenuine(f, recs[1], Code::kRecordOutOfOrder, &recs[0]);
  REQUIRE_OK(f.Import(recs[1]));
  // A record of the next epoch before the token that opens it.
  for (size_t i = 2; i < recs.size(); ++i) REQUIRE_OK(f.Import(recs[i]));
  Record token = f.CloseEpoch();
  auto next = f.Seal(0, PageRange(0, 8, 1));
  // Counter order already refuses it; on another stream the epoch would.
  RefusedThenGenuine(f, next[0], Code::kRecordOutOfOrder, &token);
  REQUIRE_OK(f.Import(next[0]));
}

TEST_CASE(
    "operators/security: a record of the next epoch on another stream "
    "waits for the token") {
  OpFixture::Config cfg;
  cfg.streams = 2;
  OpFixture f(cfg);
  auto a = f.Seal(0, PageRange(0, 8));
  REQUIRE_OK(f.Import(a[0]));
  Record token = f.CloseEpoch();
  auto b = f.Seal(1, PageRange(8, 8));  // epoch 1, stream 1, counter 0
  const auto before = f.dst.Snapshot();
  REQUIRE_CODE(f.Import(b[0], 1), Code::kRecordOutOfOrder);
  CHECK(f.dst.Snapshot() == before);
  REQUIRE_OK(f.Import(token));
  REQUIRE_OK(f.Import(b[0], 1));
}

TEST_CASE("operators/security: dropped records") {
  OpFixture::Config cfg;
  cfg.streams = 2;
  OpFixture f(cfg);
  auto recs = f.Seal(0, PageRange(0, 32));
  auto other = f.Seal(1, PageRange(32, 32));
  Record token = f.CloseEpoch();
  REQUIRE_OK(f.Import(recs[0]));
  SECTION("detected by the next counter") {
    RefusedThenGenuine(f, recs[2], Code::kRecordOutOfOrder, &recs[1]);
  }
  SECTION("before a token on the same stream: by the token's counter") {
    for (size_t i = 1; i + 1 < recs.size(); ++i) REQUIRE_OK(f.Import(recs[i]));
    RefusedThenGenuine(f, token, Code::kRecordOutOfOrder, &recs.back());
  }
  SECTION("the last record of another stream: by the epoch token's counts") {
    for (size_t i = 1; i < recs.size(); ++i) REQUIRE_OK(f.Import(recs[i]));
    for (size_t i = 0; i + 1 < other.size(); ++i)
      REQUIRE_OK(f.Import(other[i], 1));
    RefusedThenGenuine(f, token, Code::kEpochMismatch, nullptr);
    REQUIRE_OK(f.Import(other.back(), 1));
    REQUIRE_OK(f.Import(token));
    CHECK(f.rx->epoch() == 1);
    CHECK(f.MemoryEqual());
  }
}

TEST_CASE("operators/security: duplicate pages in one epoch") {
  OpFixture f;
  SECTION("twice in one record: nothing of the record is written") {
    std::vector<cpc::PageRef> pages = PageRange(0, 4);
    pages.push_back({2 * cpc::kPageSize, 0});
    auto recs = f.Seal(0, pages);
    RefusedThenGenuine(f, recs[0], Code::kDuplicatePage, nullptr);
  }
  SECTION("in two records") {
    auto first = f.Seal(0, PageRange(0, 4));
    auto second = f.Seal(0, PageRange(3, 4));
    REQUIRE_OK(f.Import(first[0]));
    RefusedThenGenuine(f, second[0], Code::kDuplicatePage, nullptr);
  }
}

TEST_CASE("operators/security: swapped GPAs") {
  OpFixture f;
  auto recs = f.SealAll();
  const Record& r = recs[0];
  constexpr size_t kBlockBytes = cpc::kBlockHeadBytes + cpc::kPageSize;
  SECTION("two page blocks swapped") {
    Record bad = r;
    std::swap_ranges(bad.begin() + Block(1),
                     bad.begin() + Block(1) + kBlockBytes,
                     bad.begin() + Block(2));
    RefusedThenGenuine(f, bad, Code::kGpaMismatch, &r);
  }
  SECTION("a block relabelled with another GPA") {
    Record bad = r;
    bad[Block(4) + 1] ^= 0x20;  // gpa 4 -> page 4 ^ 2 = 6
    RefusedThenGenuine(f, bad, Code::kGpaMismatch, &r);
  }
  SECTION("ciphertext + tag swapped, labels kept") {
    Record bad = r;
    std::swap_ranges(bad.begin() + Block(1) + kTag,
                     bad.begin() + Block(1) + kBlockBytes,
                     bad.begin() + Block(2) + kTag);
    RefusedThenGenuine(f, bad, Code::kAuthFailed, &r);
  }
  SECTION("a block moved from another record") {
    Record bad = r;
    std::copy(recs[1].begin() + Block(0),
              recs[1].begin() + Block(0) + kBlockBytes, bad.begin() + Block(0));
    RefusedThenGenuine(f, bad, Code::kGpaMismatch, &r);
  }
}

TEST_CASE("operators/security: truncated records") {
  OpFixture f;
  auto recs = f.SealAll();
  const Record& r = recs[0];
  RefusedThenGenuine(f, Record(r.begin(), r.end() - 1), Code::kRecordTruncated,
                     nullptr);
  RefusedThenGenuine(f, Record(r.begin(), r.begin() + 100),
                     Code::kRecordTruncated, nullptr);
  // A buffer whose last record is cut: the whole ones before it apply.
  Record buf = r;
  buf.insert(buf.end(), recs[1].begin(), recs[1].begin() + 5000);
  cpc::ImportProgress p;
  REQUIRE_CODE(cpc::ImportRecords(f.rx->stream(0), f.dst, buf, nullptr, &p),
               Code::kRecordTruncated);
  CHECK(p.records == 1);
  CHECK(p.bytes == r.size());
}

TEST_CASE("operators/security: malformed records") {
  OpFixture f;
  auto recs = f.SealAll();
  const Record& r = recs[0];
  RefusedThenGenuine(f, Flip(r, cpc::hdr::kVersion, 0x02),
                     Code::kRecordMalformed, nullptr);
  Record bad = r;
  bad[cpc::hdr::kType] = 99;
  RefusedThenGenuine(f, bad, Code::kRecordMalformed, nullptr);
  RefusedThenGenuine(f, Flip(r, cpc::hdr::kMagic), Code::kRecordMalformed,
                     nullptr);
  RefusedThenGenuine(f, Flip(r, cpc::hdr::kReserved2), Code::kRecordMalformed,
                     nullptr);
  RefusedThenGenuine(f, Flip(r, cpc::hdr::kItemCount, 0x02),
                     Code::kRecordMalformed, nullptr);
  RefusedThenGenuine(f, Flip(r, cpc::hdr::kRecordBytes, 0x01),
                     Code::kRecordMalformed, nullptr);
  RefusedThenGenuine(f, Flip(r, Block(2) + 40), Code::kRecordMalformed,
                     nullptr);
  // Routed to the wrong stream.
  OpFixture::Config cfg;
  cfg.streams = 2;
  OpFixture g(cfg);
  auto other = g.Seal(1, PageRange(0, 8));
  REQUIRE_CODE(g.Import(other[0], 0), Code::kRecordMalformed);
  REQUIRE_OK(g.Import(other[0], 1));
}

TEST_CASE("operators/security: another session or key is refused") {
  OpFixture f;
  auto recs = f.SealAll();
  cpc::ReceiverOptions ro = f.rx->options();
  auto engine = cpc::FindAeadEngine();
  REQUIRE_OK(engine);
  cpc::SessionId other = f.sid;
  other[0] ^= 1;
  auto wrong_sid = cpc::Receiver::Create(**engine, f.fwd.span(), other, ro);
  auto wrong_key = cpc::Receiver::Create(**engine, f.bwd.span(), f.sid, ro);
  REQUIRE_OK(wrong_sid);
  REQUIRE_OK(wrong_key);
  REQUIRE_CODE(
      cpc::ImportRecords((*wrong_sid)->stream(0), f.dst, recs[0], nullptr),
      Code::kAuthFailed);
  REQUIRE_CODE(
      cpc::ImportRecords((*wrong_key)->stream(0), f.dst, recs[0], nullptr),
      Code::kAuthFailed);
}

TEST_CASE("operators/security: a platform refusal mid-record writes nothing") {
  OpFixture f;
  auto recs = f.SealAll();
  f.dst.FailWritesTo(5 * cpc::kPageSize);
  RefusedThenGenuine(f, recs[0], Code::kPermissionDenied, nullptr);
  // Page marks were rolled back: pages 0-4 are importable again (and page 5
  // is refused by the platform again, not as a duplicate).
  REQUIRE_CODE(f.Import(recs[0]), Code::kPermissionDenied);
}

// A sender that holds the key but breaks the protocol (defence in depth:
// with an honest sender these checks are unreachable through the host).
Record DishonestToken(OpFixture& f, cpc::RecordType type, uint64_t counter,
                      uint32_t epoch, std::span<const uint8_t> meta) {
  auto engine = cpc::FindAeadEngine();
  REQUIRE_OK(engine);
  auto aead = (*engine)->NewKeyed(f.fwd.span());
  REQUIRE_OK(aead);
  cpc::RecordHeader h;
  h.type = type;
  h.counter = counter;
  h.epoch = epoch;
  h.meta_bytes = static_cast<uint32_t>(meta.size());
  h.record_bytes =
      static_cast<uint32_t>(cpc::kRecordPrefixBytes + cpc::Pad64(meta.size()));
  h.session_id = f.sid;
  Record r(h.record_bytes, 0);
  cpc::EncodeHeader(h, r.data());
  std::vector<uint8_t> aad(r.begin(), r.begin() + cpc::kRecordHeaderBytes);
  aad.insert(aad.end(), meta.begin(), meta.end());
  uint8_t iv[12];
  cpc::MakeRecordIv(counter, 0, 0, iv);
  REQUIRE_OK((*aead)->Seal(iv, aad, {}, nullptr,
                           std::span<uint8_t, 16>(r.data() + 64, 16)));
  std::copy(meta.begin(), meta.end(), r.begin() + cpc::kRecordPrefixBytes);
  return r;
}

TEST_CASE("operators/security: start token only when complete") {
  OpFixture f;
  uint8_t meta[16] = {2, 0, 0, 0, 1, 0, 0, 0};  // 2 vCPUs, 1 stream
  SECTION("vCPU state missing") {
    Record start = DishonestToken(f, cpc::RecordType::kStartToken, 0, 0, meta);
    RefusedThenGenuine(f, start, Code::kIncomplete, nullptr);
    CHECK(!f.rx->started());
  }
  SECTION("last epoch not closed") {
    auto v = f.SealVcpus();
    for (auto& r : v) REQUIRE_OK(f.Import(r));
    Record start = DishonestToken(f, cpc::RecordType::kStartToken, 2, 0, meta);
    RefusedThenGenuine(f, start, Code::kIncomplete, nullptr);
    REQUIRE_OK(f.Import(f.CloseEpoch()));
    REQUIRE_OK(f.Import(f.Start()));
    CHECK(f.rx->started());
  }
  SECTION("a token off stream 0 or for another configuration") {
    uint8_t wrong[16] = {3, 0, 0, 0, 1, 0, 0, 0};
    Record start = DishonestToken(f, cpc::RecordType::kStartToken, 0, 0, wrong);
    RefusedThenGenuine(f, start, Code::kRecordMalformed, nullptr);
  }
}

TEST_CASE(
    "operators/security: abort token - source and destination never "
    "both run") {
  OpFixture f;
  auto engine = cpc::FindAeadEngine();
  REQUIRE_OK(engine);
  // Destination: its own direction key seals the token.
  cpc::SenderOptions bo;
  auto backward = cpc::SenderSession::Create(**engine, f.bwd.span(), f.sid, bo);
  REQUIRE_OK(backward);
  // Source: a token-only receiver for the backward direction.
  cpc::ReceiverOptions ro;
  auto src_rx = cpc::Receiver::Create(**engine, f.bwd.span(), f.sid, ro);
  REQUIRE_OK(src_rx);

  auto recs = f.SealAll();
  REQUIRE_OK(f.Import(recs[0]));
  Record token(256);
  auto n = f.rx->AbortAndSeal((*backward)->stream(0), 7, token);
  REQUIRE_OK(n);
  token.resize(*n);
  CHECK(f.rx->aborted());
  // The aborted destination refuses everything, the start token included.
  RefusedThenGenuine(f, recs[1], Code::kAborted, nullptr);

  // A token sealed with the forward key (by anyone but the destination) is
  // not an abort proof.
  uint8_t meta[16] = {7};
  Record forged = DishonestToken(f, cpc::RecordType::kAbortToken, 0, 0, meta);
  REQUIRE_CODE(cpc::ImportRecords((*src_rx)->stream(0), f.src, forged, nullptr),
               Code::kAuthFailed);
  CHECK(!(*src_rx)->peer_aborted());
  REQUIRE_OK(cpc::ImportRecords((*src_rx)->stream(0), f.src, token, nullptr));
  CHECK((*src_rx)->peer_aborted());  // the source may resume

  // A destination that started cannot abort any more.
  OpFixture g;
  for (auto& r : g.SealAll()) REQUIRE_OK(g.Import(r));
  for (auto& r : g.SealVcpus()) REQUIRE_OK(g.Import(r));
  REQUIRE_OK(g.Import(g.CloseEpoch()));
  REQUIRE_OK(g.Import(g.Start()));
  REQUIRE_CODE(g.rx->AbortAndSeal((*backward)->stream(0), 1, token),
               Code::kFailedPrecondition);
}

}  // namespace
