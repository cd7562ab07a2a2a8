#include "operators/keys.h"

#include <string>
#include <vector>

#include "test_util.h"

namespace {

using cpc::Code;
using cpc::SessionRole;

std::vector<uint8_t> Bytes(std::string_view s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

std::vector<uint8_t> Copy(const cpc::SecretBytes& s) {
  return std::vector<uint8_t>(s.data(), s.data() + s.size());
}

struct Pair {
  cpc::X25519KeyPair src, dst;
  std::vector<uint8_t> src_report = Bytes("report of the source CVM");
  std::vector<uint8_t> dst_report = Bytes("report of the destination CVM");
  cpc::SessionId sid{1, 2, 3};

  cpc::SessionTranscript Transcript() const {
    return {src_report, dst_report, src.public_key(), dst.public_key(), sid};
  }
};

Pair MakePair() {
  auto a = cpc::X25519KeyPair::Generate();
  auto b = cpc::X25519KeyPair::Generate();
  REQUIRE_OK(a);
  REQUIRE_OK(b);
  return Pair{std::move(*a), std::move(*b)};
}

TEST_CASE("operators/keys: RFC 7748 X25519 known answer") {
  // RFC 7748 section 6.1.
  auto hex = [](std::string_view s) {
    std::vector<uint8_t> v;
    for (size_t i = 0; i < s.size(); i += 2)
      v.push_back(static_cast<uint8_t>(
          std::stoi(std::string(s.substr(i, 2)), nullptr, 16)));
    return v;
  };
  auto alice = cpc::X25519KeyPair::FromPrivate(
      hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
  auto bob = cpc::X25519KeyPair::FromPrivate(
      hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
  REQUIRE_OK(alice);
  REQUIRE_OK(bob);
  auto a_pub =
      hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  CHECK(std::vector<uint8_t>(alice->public_key().begin(),
                             alice->public_key().end()) == a_pub);
  auto s1 = alice->Agree(bob->public_key());
  auto s2 = bob->Agree(alice->public_key());
  REQUIRE_OK(s1);
  REQUIRE_OK(s2);
  CHECK(
      Copy(*s1) ==
      hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"));
  CHECK(Copy(*s1) == Copy(*s2));
  // A low-order point gives an all-zero secret: refused.
  REQUIRE_CODE(alice->Agree(std::vector<uint8_t>(32, 0)),
               Code::kInvalidArgument);
}

TEST_CASE("operators/keys: both sides derive the same per-direction keys") {
  Pair p = MakePair();
  auto src =
      cpc::DeriveSessionKeys(p.src, SessionRole::kSource, p.Transcript());
  auto dst =
      cpc::DeriveSessionKeys(p.dst, SessionRole::kDestination, p.Transcript());
  REQUIRE_OK(src);
  REQUIRE_OK(dst);
  REQUIRE(src->forward.size() == 32);
  CHECK(Copy(src->forward) == Copy(dst->forward));
  CHECK(Copy(src->backward) == Copy(dst->backward));
  CHECK(Copy(src->forward) != Copy(src->backward));
  // What one side sends the other receives with.
  CHECK(Copy(src->tx()) == Copy(dst->rx()));
  CHECK(Copy(dst->tx()) == Copy(src->rx()));
  // Using the wrong own key pair for the role is refused.
  REQUIRE_CODE(
      cpc::DeriveSessionKeys(p.src, SessionRole::kDestination, p.Transcript()),
      Code::kInvalidArgument);
}

TEST_CASE("operators/keys: every transcript element changes the keys") {
  Pair p = MakePair();
  auto base =
      cpc::DeriveSessionKeys(p.src, SessionRole::kSource, p.Transcript());
  REQUIRE_OK(base);
  auto differs = [&](const cpc::SessionTranscript& t) {
    auto k = cpc::DeriveSessionKeys(p.src, SessionRole::kSource, t);
    REQUIRE_OK(k);
    CHECK(Copy(k->forward) != Copy(base->forward));
    CHECK(Copy(k->backward) != Copy(base->backward));
  };
  auto t = p.Transcript();
  auto other_report = Bytes("report of the destination CVM!");
  t.destination_report = other_report;
  differs(t);
  t = p.Transcript();
  t.source_report = other_report;
  differs(t);
  t = p.Transcript();
  t.session_id[15] ^= 1;
  differs(t);
  // Moving a byte between two fields changes the hash (length prefixes).
  auto r1 = Bytes("ab"), r2 = Bytes("c"), r3 = Bytes("a"), r4 = Bytes("bc");
  cpc::SessionTranscript x = p.Transcript(), y = p.Transcript();
  x.source_report = r1;
  x.destination_report = r2;
  y.source_report = r3;
  y.destination_report = r4;
  auto hx = cpc::TranscriptHash(x), hy = cpc::TranscriptHash(y);
  REQUIRE_OK(hx);
  REQUIRE_OK(hy);
  CHECK(*hx != *hy);
  // A fresh key exchange (new session) gives unrelated keys too.
  Pair q = MakePair();
  auto other =
      cpc::DeriveSessionKeys(q.src, SessionRole::kSource, q.Transcript());
  REQUIRE_OK(other);
  CHECK(Copy(other->forward) != Copy(base->forward));
}

}  // namespace
