#include <memory>
#include <set>

#include <catch2/catch.hpp>

#include <cpc/fmt.h>
#include <cpc/secret.h>
#include <cpc/status.h>

#include "core/bytes.h"
#include "emulator/channel.h"
#include "test_util.h"

using cpc::Code;
using cpc::Result;
using cpc::Status;

namespace {
Result<int> Half(int x) {
  if (x % 2 != 0) return Status(Code::kInvalidArgument, "odd");
  return x / 2;
}
Result<int> Quarter(int x) {
  CPC_ASSIGN_OR_RETURN(int h, Half(x));
  return Half(h);
}
}  // namespace

TEST_CASE("Status carries code, subcode and message") {
  Status ok;
  REQUIRE(ok.ok());
  REQUIRE(ok.ToString() == "ok");
  Status s(Code::kPlatformError, "RMPADJUST refused", 0x10);
  REQUIRE_FALSE(s.ok());
  REQUIRE(s.subcode() == 0x10);
  REQUIRE(s.ToString() == "platform_error: RMPADJUST refused [subcode 0x10]");
  REQUIRE(fmt::format("{}", s) == s.ToString());
  REQUIRE(s.WithContext("isolate").message() == "isolate: RMPADJUST refused");
  REQUIRE(fmt::format("{}", Code::kTokenReplayed) == "token_replayed");
}

TEST_CASE("Every code has a distinct name") {
  std::set<std::string_view> names;
  int count = 0;
  for (int i = 0; i < 64; ++i) {
    auto name = cpc::CodeName(static_cast<Code>(i));
    if (name == "unknown_code") continue;
    ++count;
    REQUIRE(names.insert(name).second);
  }
  REQUIRE(count >= 35);
}

TEST_CASE("Result propagates errors and values") {
  REQUIRE(*Quarter(8) == 2);
  auto r = Quarter(6);  // 6 -> 3 -> odd
  REQUIRE_CODE(r, Code::kInvalidArgument);
  Result<int> bad{Status()};
  REQUIRE_CODE(bad, Code::kInternal);  // an OK status is never a Result error
  Result<std::unique_ptr<int>> moved{std::make_unique<int>(5)};
  std::unique_ptr<int> p = std::move(moved).value();
  REQUIRE(*p == 5);
}

TEST_CASE("SecretBytes wipes, moves and compares in constant time") {
  auto a = cpc::SecretBytes::Random(32);
  REQUIRE(a.size() == 32);
  cpc::SecretBytes b(a.span());
  REQUIRE(cpc::ConstantTimeEqual(a.span(), b.span()));
  b.data()[31] ^= 1;
  REQUIRE_FALSE(cpc::ConstantTimeEqual(a.span(), b.span()));
  REQUIRE_FALSE(cpc::ConstantTimeEqual(a.span(), b.span().first(16)));
  cpc::SecretBytes c(std::move(a));
  REQUIRE(a.empty());  // NOLINT(bugprone-use-after-move): checked on purpose
  REQUIRE(c.size() == 32);
  c.Clear();
  REQUIRE(c.empty());
}

TEST_CASE(
    "A status from another process keeps known codes and refuses unknown") {
  auto round_trip = [](const cpc::Status& s) {
    std::vector<uint8_t> b;
    cpc::ByteWriter w(&b);
    cpc::emu::EncodeStatus(w, s);
    cpc::ByteReader r(b);
    return cpc::emu::DecodeStatus(r);
  };
  const cpc::Status known(cpc::Code::kAuthFailed, "tag mismatch", 7);
  const cpc::Status back = round_trip(known);
  CHECK(back.code() == cpc::Code::kAuthFailed);
  CHECK(back.subcode() == 7);
  CHECK(back.message() == "tag mismatch");
  CHECK(round_trip(cpc::Status::Ok()).ok());
  // A code this build does not have (a newer peer, or garbage).
  const cpc::Status odd(static_cast<cpc::Code>(977), "from the future");
  const cpc::Status got = round_trip(odd);
  CHECK(got.code() == cpc::Code::kIoError);
  CHECK(got.message().find("977") != std::string::npos);
  CHECK(got.message().find("from the future") != std::string::npos);
}
