#include <catch2/catch.hpp>

#include <cpc/token.h>

#include "core/fixtures.h"
#include "test_util.h"

using cpc::Code;
using cpc::TokenAuthority;
using cpc::TokenRequest;

namespace {
struct Fixture {
  cpc_test::ScriptedAgent agent;
  TokenAuthority auth{cpc_test::MakeIdentity(7), cpc_test::MakePolicy(),
                      &agent};
  std::vector<uint8_t> Mint(const std::string& proc = "run",
                            uint64_t bytes = 1024) {
    auto t = auth.Mint(TokenRequest{"work", proc, {bytes, 1000}});
    REQUIRE_OK(t);
    return *t;
  }
};
}  // namespace

TEST_CASE("A minted token validates once, binds its fields, and is consumed") {
  Fixture f;
  auto wire = f.Mint();
  REQUIRE(wire.size() == cpc::Token::kWireSize);
  REQUIRE(f.agent.asked == 1);
  auto t = f.auth.Validate(wire, "work", "run");
  REQUIRE_OK(t);
  REQUIRE(t->cvm_id == f.auth.identity().Id());
  REQUIRE(t->module == "work");
  REQUIRE(t->budget.bytes == 1024);
  // In use: a second presentation while the call runs is reuse.
  REQUIRE_CODE(f.auth.Validate(wire, "work", "run"), Code::kTokenReused);
  f.auth.Retire(t->serial, 512);
  // After State Reset it is a replay.
  REQUIRE_CODE(f.auth.Validate(wire, "work", "run"), Code::kTokenReplayed);
}

TEST_CASE("Minting needs the agent's approval and the policy's consent") {
  Fixture f;
  f.agent.approve = false;
  REQUIRE_CODE(f.auth.Mint({"work", "run", {1024, 1000}}), Code::kNotApproved);
  f.agent.approve = true;
  REQUIRE_CODE(f.auth.Mint({"nope", "run", {1024, 1000}}), Code::kNotFound);
  REQUIRE_CODE(f.auth.Mint({"work", "erase", {1024, 1000}}),
               Code::kPermissionDenied);
  // Over the per-call limit, or leaving a limited dimension unlimited.
  REQUIRE_CODE(f.auth.Mint({"work", "run", {(1 << 20) + 1, 1000}}),
               Code::kTokenOverBudget);
  REQUIRE_CODE(f.auth.Mint({"work", "run", {0, 1000}}), Code::kTokenOverBudget);
  REQUIRE_CODE(f.auth.Mint({"work", "run", {1024, 0}}), Code::kTokenOverBudget);
}

TEST_CASE("Forged tokens are refused: any bit of the body or MAC") {
  Fixture f;
  auto wire = f.Mint();
  // Flip every bit of the MACed body after the CVM id, and of the MAC.
  for (size_t byte = 40; byte < cpc::Token::kWireSize; ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      auto bad = wire;
      bad[byte] ^= static_cast<uint8_t>(1u << bit);
      auto r = f.auth.Validate(bad, "work", "run");
      REQUIRE_FALSE(r.ok());
      // Name fields may stop parsing (malformed) or mismatch; never accepted.
      INFO(r.status().ToString());
      REQUIRE((r.status().code() == Code::kTokenForged ||
               r.status().code() == Code::kTokenMalformed));
    }
  }
  // A token minted with a different key for the same CVM: forged.
  cpc_test::ScriptedAgent agent;
  TokenAuthority other(cpc_test::MakeIdentity(7), cpc_test::MakePolicy(),
                       &agent);
  auto foreign = other.Mint({"work", "run", {1024, 1000}});
  REQUIRE_OK(foreign);
  REQUIRE_CODE(f.auth.Validate(*foreign, "work", "run"), Code::kTokenForged);
  // The genuine one still works afterwards: nothing was consumed.
  REQUIRE_OK(f.auth.Validate(wire, "work", "run"));
}

TEST_CASE("A token of another CVM is refused as such") {
  Fixture f;
  cpc_test::ScriptedAgent agent;
  // Same image and policy, another instance: a different CVM.
  auto id = cpc_test::MakeIdentity(7);
  id.instance_id[0] ^= 1;
  TokenAuthority twin(id, cpc_test::MakePolicy(), &agent);
  auto t = twin.Mint({"work", "run", {1024, 1000}});
  REQUIRE_OK(t);
  REQUIRE_CODE(f.auth.Validate(*t, "work", "run"), Code::kTokenWrongCvm);
}

TEST_CASE("A token cannot be moved to another module or procedure") {
  Fixture f;
  auto wire = f.Mint("audit");
  REQUIRE_CODE(f.auth.Validate(wire, "work", "run"), Code::kTokenMismatch);
  REQUIRE_CODE(f.auth.Validate(wire, "limited", "audit"), Code::kTokenMismatch);
  REQUIRE_OK(f.auth.Validate(wire, "work", "audit"));
}

TEST_CASE("Malformed tokens are refused before any check") {
  Fixture f;
  auto wire = f.Mint();
  REQUIRE_CODE(f.auth.Validate({}, "work", "run"), Code::kTokenMalformed);
  REQUIRE_CODE(f.auth.Validate(std::span(wire).first(100), "work", "run"),
               Code::kTokenMalformed);
  auto bad = wire;
  bad[0] = 'X';
  REQUIRE_CODE(f.auth.Validate(bad, "work", "run"), Code::kTokenMalformed);
  bad = wire;
  bad[4] = 2;  // version
  REQUIRE_CODE(f.auth.Validate(bad, "work", "run"), Code::kTokenMalformed);
}

TEST_CASE("Lifetime allowances: bytes and calls run out, over-budget refused") {
  Fixture f;
  // total_bytes = 3 MiB, per call 1 MiB.
  std::vector<std::vector<uint8_t>> tokens;
  for (int i = 0; i < 4; ++i) tokens.push_back(f.Mint("run", 1 << 20));
  std::vector<uint64_t> serials;
  for (int i = 0; i < 3; ++i) {
    auto t = f.auth.Validate(tokens[i], "work", "run");
    REQUIRE_OK(t);
    serials.push_back(t->serial);
  }
  // Three active calls reserve all 3 MiB: the fourth is over budget.
  REQUIRE_CODE(f.auth.Validate(tokens[3], "work", "run"),
               Code::kTokenOverBudget);
  // One call used only half its reservation: half a MiB comes back, still
  // not enough for a 1 MiB token.
  f.auth.Retire(serials[0], 1 << 19);
  REQUIRE_CODE(f.auth.Validate(tokens[3], "work", "run"),
               Code::kTokenOverBudget);
  f.auth.Retire(serials[1], 0);
  REQUIRE_OK(f.auth.Validate(tokens[3], "work", "run"));

  // max_calls = 2.
  std::vector<std::vector<uint8_t>> lt;
  for (int i = 0; i < 3; ++i) {
    auto t = f.auth.Mint({"limited", "run", {}});
    REQUIRE_OK(t);
    lt.push_back(*t);
  }
  REQUIRE_OK(f.auth.Validate(lt[0], "limited", "run"));
  REQUIRE_OK(f.auth.Validate(lt[1], "limited", "run"));
  REQUIRE_CODE(f.auth.Validate(lt[2], "limited", "run"),
               Code::kTokenOverBudget);
}

TEST_CASE("Token encoding round-trips and rejects trailing garbage in names") {
  cpc::Token t;
  t.cvm_id.fill(3);
  t.module = "snapshot";
  t.procedure = "extract";
  t.serial = 42;
  t.budget = {4096, 10};
  t.mac.fill(9);
  auto wire = t.Encode();
  auto back = cpc::Token::Decode(wire);
  REQUIRE_OK(back);
  REQUIRE(back->module == "snapshot");
  REQUIRE(back->serial == 42);
  REQUIRE(back->budget == t.budget);
  wire[40 + 20] = 'x';  // a byte after the module name's NUL
  REQUIRE_CODE(cpc::Token::Decode(wire), Code::kTokenMalformed);
}

TEST_CASE("Tenant policy serialises canonically and rejects bad encodings") {
  auto p = cpc_test::MakePolicy();
  auto bytes = p.Serialize();
  auto back = cpc::TenantPolicy::Parse(bytes);
  REQUIRE_OK(back);
  REQUIRE(back->Serialize() == bytes);
  REQUIRE(back->Find("seclog")->isolation == cpc::Isolation::kSecure);
  auto longer = bytes;
  longer.push_back(0);
  REQUIRE_CODE(cpc::TenantPolicy::Parse(longer), Code::kInvalidArgument);
  REQUIRE_CODE(
      cpc::TenantPolicy::Parse(std::span(bytes).first(bytes.size() - 1)),
      Code::kInvalidArgument);
  p.modules.push_back(p.modules[0]);
  REQUIRE_CODE(p.Validate(), Code::kInvalidArgument);
  REQUIRE_CODE(cpc::TenantPolicy::Parse(p.Serialize()), Code::kInvalidArgument);
  // The measurement changes with the policy.
  cpc::Digest img{};
  auto m1 = cpc::LaunchMeasurement(img, bytes, {});
  auto m2 = cpc::LaunchMeasurement(img, p.Serialize(), {});
  REQUIRE(m1 != m2);
}
