// ReceiverOptions::single_pass: pages decrypted straight into the guest. The
// same results as the two-pass import, except that a page-tag failure
// poisons the receiver (it may have written unverified bytes) - while every
// refusal before the first guest write still changes nothing.
#include "operators/op_fixture.h"

namespace {

using cpc::Code;
using cpc_test::Block;
using cpc_test::OpFixture;
using cpc_test::Record;

OpFixture SinglePass(bool elide_zero_pages = false) {
  OpFixture::Config c;
  c.single_pass = true;
  c.elide_zero_pages = elide_zero_pages;
  return OpFixture(c);
}

bool PageEqual(OpFixture& f, size_t page) {
  return std::memcmp(f.src.mem() + page * cpc::kPageSize,
                     f.dst.mem() + page * cpc::kPageSize, cpc::kPageSize) == 0;
}

TEST_CASE("operators/single-pass: round trip, zero pages and start") {
  for (const bool elide : {false, true}) {
    INFO("elide zero pages " << elide);
    OpFixture f = SinglePass(elide);
    // Zero pages among random ones: elided blocks carry no ciphertext.
    std::memset(f.src.mem() + 3 * cpc::kPageSize, 0, 2 * cpc::kPageSize);
    auto pages = f.SealAll();
    auto vcpus = f.SealVcpus();
    Record epoch = f.CloseEpoch();
    Record start = f.Start();
    for (auto& r : pages) REQUIRE_OK(f.Import(r));
    for (auto& r : vcpus)
      REQUIRE_OK(
          cpc::ImportVcpuStateRecord(f.rx->stream(0), f.dst, r, nullptr));
    REQUIRE_OK(f.Import(epoch));
    REQUIRE_OK(f.Import(start));
    CHECK(f.rx->started());
    CHECK_FALSE(f.rx->poisoned());
    CHECK(f.MemoryEqual());
  }
}

TEST_CASE(
    "operators/single-pass: a failed page tag poisons the receiver, it never "
    "starts") {
  OpFixture f = SinglePass();
  auto pages = f.SealAll();
  auto vcpus = f.SealVcpus();
  // Page 5's ciphertext: pages 0-4 are decrypted into the guest first.
  Record bad = pages[0];
  bad.at(Block(5) + cpc::kBlockHeadBytes + 1000) ^= 0x80;
  REQUIRE_CODE(f.Import(bad), Code::kAuthFailed);
  CHECK(f.rx->poisoned());
  // Single pass really wrote into the guest (the two-pass import would not
  // have touched page 0): that is why the receiver must stop here.
  CHECK(PageEqual(f, 0));
  CHECK_FALSE(PageEqual(f, 5));
  // Nothing is accepted any more, not even the genuine record, and the
  // receiver cannot start.
  REQUIRE_CODE(f.Import(pages[0]), Code::kFailedPrecondition);
  REQUIRE_CODE(f.Import(pages[1]), Code::kFailedPrecondition);
  REQUIRE_CODE(
      cpc::ImportVcpuStateRecord(f.rx->stream(0), f.dst, vcpus[0], nullptr),
      Code::kFailedPrecondition);
  REQUIRE_CODE(f.Import(f.CloseEpoch()), Code::kFailedPrecondition);
  REQUIRE_CODE(f.Import(f.Start()), Code::kFailedPrecondition);
  CHECK_FALSE(f.rx->started());
}

TEST_CASE(
    "operators/single-pass: refusals before any guest write change nothing") {
  OpFixture f = SinglePass();
  auto pages = f.SealAll();
  const auto before = f.dst.Snapshot();
  bool platform_refuses = false;
  SECTION("header tag") {
    Record bad = pages[0];
    bad.at(cpc::hdr::kTag + 3) ^= 0x01;
    REQUIRE_CODE(f.Import(bad), Code::kAuthFailed);
  }
  SECTION("block descriptor (GPA mismatch)") {
    Record bad = pages[0];
    bad.at(Block(2) + 1) ^= 0x10;
    REQUIRE_CODE(f.Import(bad), Code::kGpaMismatch);
  }
  SECTION("platform refusal of the 6th page") {
    f.dst.FailWritesTo(5 * cpc::kPageSize);
    platform_refuses = true;
    REQUIRE_CODE(f.Import(pages[0]), Code::kPermissionDenied);
  }
  CHECK(f.dst.Snapshot() == before);
  CHECK_FALSE(f.rx->poisoned());
  CHECK(f.rx->stream(0).expected_counter() == 0);
  if (!platform_refuses) {
    // The genuine record is still accepted.
    REQUIRE_OK(f.Import(pages[0]));
    CHECK(PageEqual(f, 0));
    CHECK(PageEqual(f, 7));
  }
}

}  // namespace
