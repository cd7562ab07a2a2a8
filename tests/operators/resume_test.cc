// Resumption after a network cut (docs/FORMAT.md section 6.2): the
// destination acknowledges where it stands, the source closes the
// interrupted epoch there and re-sends only what was lost; nothing sealed
// before the cut is accepted afterwards and no counter goes back.
#include "operators/op_fixture.h"

namespace {

using cpc::Code;
using cpc_test::OpFixture;
using cpc_test::PageRange;
using cpc_test::Record;

// The backward direction: the destination's sender, the source's receiver.
struct Backward {
  explicit Backward(OpFixture& f) {
    auto engine = cpc::FindAeadEngine();
    REQUIRE_OK(engine);
    auto b = cpc::SenderSession::Create(**engine, f.bwd.span(), f.sid, {});
    REQUIRE_OK(b);
    tx = std::move(*b);
    auto r = cpc::Receiver::Create(**engine, f.bwd.span(), f.sid, {});
    REQUIRE_OK(r);
    rx = std::move(*r);
  }
  std::unique_ptr<cpc::SenderSession> tx;
  std::unique_ptr<cpc::Receiver> rx;
};

Record Ack(OpFixture& f, Backward& b) {
  Record r(64 << 10);
  auto n = f.rx->SealResumeAck(b.tx->stream(0), r);
  REQUIRE_OK(n);
  r.resize(*n);
  return r;
}

// The source side: imports the ack, answers with a resume record.
Record Answer(OpFixture& f, Backward& b, const Record& ack,
              cpc::Receiver::ResumeAck* out = nullptr) {
  REQUIRE_OK(cpc::ImportRecords(b.rx->stream(0), f.src, ack, nullptr));
  auto a = b.rx->TakePeerResumeAck();
  REQUIRE_OK(a);
  Record r(64 << 10);
  auto n = f.tx->SealResume(a->epoch, a->records, r);
  REQUIRE_OK(n);
  r.resize(*n);
  if (out != nullptr) *out = *a;
  return r;
}

// The pages of records [from, end) of `recs` (8-page records).
std::vector<cpc::PageRef> PagesOf(const std::vector<Record>& recs, size_t from,
                                  uint32_t first_page) {
  return PageRange(first_page + static_cast<uint32_t>(from) * 8,
                   static_cast<uint32_t>(recs.size() - from) * 8, 1);
}

TEST_CASE(
    "operators/resume: a cut mid-epoch loses only unacknowledged "
    "records") {
  OpFixture::Config cfg;
  cfg.streams = 2;
  OpFixture f(cfg);
  Backward b(f);
  auto a = f.Seal(0, PageRange(0, 32));   // 4 records
  auto c = f.Seal(1, PageRange(32, 32));  // 4 records
  // The cut: stream 0 delivered 2 records, stream 1 one.
  REQUIRE_OK(f.Import(a[0], 0));
  REQUIRE_OK(f.Import(a[1], 0));
  REQUIRE_OK(f.Import(c[0], 1));

  Record ack = Ack(f, b);
  CHECK(f.rx->resume_pending());
  // Until the resume record, the old stream is refused and changes nothing.
  const auto before = f.dst.Snapshot();
  REQUIRE_CODE(f.Import(a[2], 0), Code::kRecordOutOfOrder);
  REQUIRE_CODE(f.Import(c[1], 1), Code::kRecordOutOfOrder);
  CHECK(f.dst.Snapshot() == before);

  cpc::Receiver::ResumeAck seen;
  Record resume = Answer(f, b, ack, &seen);
  CHECK(seen.epoch == 0);
  CHECK(seen.records == std::vector<uint64_t>{2, 1});
  CHECK(f.tx->epoch() == 1);
  REQUIRE_OK(f.Import(resume, 0));
  CHECK(!f.rx->resume_pending());
  CHECK(f.rx->epoch() == 1);
  // Replaying the resume record, or anything sealed before it, is refused.
  REQUIRE_CODE(f.Import(resume, 0), Code::kRecordReplayed);
  REQUIRE_CODE(f.Import(a[2], 0), Code::kStaleEpoch);
  REQUIRE_CODE(f.Import(c[3], 1), Code::kStaleEpoch);

  // Re-send only the lost records' pages, in the new epoch.
  for (auto& r : f.Seal(0, PagesOf(a, 2, 0))) REQUIRE_OK(f.Import(r, 0));
  for (auto& r : f.Seal(1, PagesOf(c, 1, 32))) REQUIRE_OK(f.Import(r, 1));
  REQUIRE_OK(f.Import(f.CloseEpoch()));
  for (auto& r : f.SealVcpus()) REQUIRE_OK(f.Import(r));
  REQUIRE_OK(f.Import(f.CloseEpoch()));
  REQUIRE_OK(f.Import(f.Start()));
  CHECK(f.rx->started());
  CHECK(f.rx->CountImportedPages() == 64);
  CHECK(f.MemoryEqual());
}

TEST_CASE("operators/resume: an epoch the destination never closed") {
  OpFixture f;
  Backward b(f);
  auto e0 = f.SealAll();
  for (auto& r : e0) REQUIRE_OK(f.Import(r));
  Record token = f.CloseEpoch();  // sealed, lost in the cut
  f.src.mem()[5] ^= 1;
  auto e1 = f.Seal(0, PageRange(0, 8, 1));  // epoch 1, lost too
  Record resume = Answer(f, b, Ack(f, b));
  CHECK(f.tx->epoch() == 2);
  REQUIRE_OK(f.Import(resume));
  CHECK(f.rx->epoch() == 2);
  // The lost token and the epoch-1 record are stale now.
  REQUIRE_CODE(f.Import(token), Code::kStaleEpoch);
  REQUIRE_CODE(f.Import(e1[0]), Code::kStaleEpoch);
  for (auto& r : f.Seal(0, PageRange(0, 8, 2))) REQUIRE_OK(f.Import(r));
  REQUIRE_OK(f.Import(f.CloseEpoch()));
  CHECK(f.MemoryEqual());
}

TEST_CASE("operators/resume: repeated acks and forged or mismatched resumes") {
  OpFixture f;
  Backward b(f);
  auto recs = f.SealAll();
  REQUIRE_OK(f.Import(recs[0]));

  SECTION("a resume record nobody acknowledged is refused") {
    Record r(4096);
    auto n = f.tx->SealResume(0, std::vector<uint64_t>{1}, r);
    REQUIRE_OK(n);
    r.resize(*n);
    REQUIRE_CODE(f.Import(r), Code::kRecordOutOfOrder);
    CHECK(f.rx->epoch() == 0);
  }
  SECTION("a later ack replaces an earlier one that never arrived") {
    Record first = Ack(f, b);
    Record second = Ack(f, b);  // the first reconnect attempt failed
    Record resume = Answer(f, b, second);
    REQUIRE_CODE(cpc::ImportRecords(b.rx->stream(0), f.src, first, nullptr),
                 Code::kRecordReplayed);
    REQUIRE_OK(f.Import(resume));
    for (auto& r : f.Seal(0, PagesOf(recs, 1, 0))) REQUIRE_OK(f.Import(r));
    REQUIRE_OK(f.Import(f.CloseEpoch()));
    CHECK(f.MemoryEqual());
  }
  SECTION("an ack that no longer matches the destination is refused") {
    Record ack = Ack(f, b);
    REQUIRE_OK(cpc::ImportRecords(b.rx->stream(0), f.src, ack, nullptr));
    auto seen = b.rx->TakePeerResumeAck();
    REQUIRE_OK(seen);
    Record r(4096);
    // Claims two records of epoch 0 arrived; one did.
    auto n = f.tx->SealResume(0, std::vector<uint64_t>{2}, r);
    REQUIRE_OK(n);
    r.resize(*n);
    REQUIRE_CODE(f.Import(r), Code::kEpochMismatch);
    CHECK(f.rx->epoch() == 0);
    CHECK(f.rx->resume_pending());
  }
  SECTION("an ack from the future is refused by the sender") {
    Record r(4096);
    REQUIRE_CODE(f.tx->SealResume(3, std::vector<uint64_t>{0}, r),
                 Code::kInvalidArgument);
    REQUIRE_CODE(f.tx->SealResume(0, std::vector<uint64_t>{0, 0}, r),
                 Code::kInvalidArgument);
    CHECK(f.tx->epoch() == 0);
  }
  SECTION("the abort token still arrives after acks the source never saw") {
    (void)Ack(f, b);
    (void)Ack(f, b);
    Record token(4096);
    auto n = f.rx->AbortAndSeal(b.tx->stream(0), 3, token);
    REQUIRE_OK(n);
    token.resize(*n);
    REQUIRE_OK(cpc::ImportRecords(b.rx->stream(0), f.src, token, nullptr));
    CHECK(b.rx->peer_aborted());
    // An aborted destination acknowledges nothing any more.
    Record r(4096);
    REQUIRE_CODE(f.rx->SealResumeAck(b.tx->stream(0), r),
                 Code::kFailedPrecondition);
  }
}

}  // namespace
