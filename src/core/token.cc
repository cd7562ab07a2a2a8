#include <cstring>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cpc/token.h>

#include "core/bytes.h"

CPC_NAMESPACE_BEGIN

namespace {
constexpr uint8_t kMagic[4] = {'C', 'P', 'C', 'T'};
constexpr size_t kNameField = 32;

// True if `limit` caps a dimension that `asked` leaves unlimited or exceeds.
bool Exceeds(uint64_t asked, uint64_t limit) {
  return limit != 0 && (asked == 0 || asked > limit);
}
}  // namespace

GuestAgent::~GuestAgent() = default;

std::vector<uint8_t> Token::Encode() const {
  std::vector<uint8_t> out;
  out.reserve(kWireSize);
  ByteWriter w(&out);
  w.Bytes(kMagic);
  w.Int<uint16_t>(kVersion);
  w.Int<uint16_t>(0);
  w.Bytes(cvm_id);
  w.Fixed(module, kNameField);
  w.Fixed(procedure, kNameField);
  w.Int<uint64_t>(serial);
  w.Int<uint64_t>(budget.bytes);
  w.Int<uint64_t>(budget.time_ms);
  w.Bytes(mac);
  return out;
}

Result<Token> Token::Decode(std::span<const uint8_t> wire) {
  if (wire.size() != kWireSize)
    return Status(
        Code::kTokenMalformed,
        fmt::format("token is {} bytes, expected {}", wire.size(), kWireSize));
  ByteReader r(wire);
  auto magic = r.Bytes(4);
  uint16_t version = r.Int<uint16_t>();
  uint16_t reserved = r.Int<uint16_t>();
  if (std::memcmp(magic.data(), kMagic, 4) != 0 || version != kVersion ||
      reserved != 0)
    return Status(Code::kTokenMalformed, "bad token magic, version or flags");
  Token t;
  auto id = r.Bytes(32);
  std::memcpy(t.cvm_id.data(), id.data(), 32);
  t.module = r.Fixed(kNameField);
  t.procedure = r.Fixed(kNameField);
  t.serial = r.Int<uint64_t>();
  t.budget.bytes = r.Int<uint64_t>();
  t.budget.time_ms = r.Int<uint64_t>();
  auto mac = r.Bytes(32);
  if (!r.done() || t.module.empty() || t.procedure.empty())
    return Status(Code::kTokenMalformed, "bad token name fields");
  std::memcpy(t.mac.data(), mac.data(), 32);
  return t;
}

TokenAuthority::TokenAuthority(CvmIdentity identity, TenantPolicy policy,
                               GuestAgent* agent, SecretBytes mac_key)
    : identity_(identity),
      cvm_id_(identity.Id()),
      policy_(std::move(policy)),
      agent_(agent),
      key_(std::move(mac_key)) {
  if (key_.size() < 32)
    AbortWithStatus(Status(Code::kInvalidArgument, "MAC key under 32 bytes"),
                    "TokenAuthority");
}

std::array<uint8_t, 32> TokenAuthority::Mac(
    std::span<const uint8_t> body) const {
  std::array<uint8_t, 32> mac{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()), body.data(),
       body.size(), mac.data(), &len);
  return mac;
}

Result<std::vector<uint8_t>> TokenAuthority::Mint(const TokenRequest& req) {
  const ModulePolicy* mp = policy_.Find(req.module);
  if (mp == nullptr)
    return Status(Code::kNotFound,
                  fmt::format("tenant policy has no module '{}'", req.module));
  if (!mp->AllowsProcedure(req.procedure))
    return Status(
        Code::kPermissionDenied,
        fmt::format("policy does not allow {}.{}", req.module, req.procedure));
  if (Exceeds(req.budget.bytes, mp->per_call.bytes) ||
      Exceeds(req.budget.time_ms, mp->per_call.time_ms))
    return Status(Code::kTokenOverBudget,
                  fmt::format("{}.{} asks {} B / {} ms; policy allows at most "
                              "{} B / {} ms per call",
                              req.module, req.procedure, req.budget.bytes,
                              req.budget.time_ms, mp->per_call.bytes,
                              mp->per_call.time_ms));
  if (agent_ == nullptr || !agent_->Approve(req))
    return Status(Code::kNotApproved, fmt::format("guest agent refused {}.{}",
                                                  req.module, req.procedure));
  Token t;
  t.cvm_id = cvm_id_;
  t.module = req.module;
  t.procedure = req.procedure;
  t.budget = req.budget;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (live_.size() >= kMaxOutstanding)
      return Status(Code::kResourceExhausted, "too many outstanding tokens");
    t.serial = next_serial_++;
    live_.emplace(t.serial, SerialState::kMinted);
  }
  std::vector<uint8_t> wire = t.Encode();
  auto mac = Mac(std::span(wire).first(Token::kMacOffset));
  std::memcpy(wire.data() + Token::kMacOffset, mac.data(), mac.size());
  return wire;
}

Result<Token> TokenAuthority::Validate(std::span<const uint8_t> wire,
                                       std::string_view module,
                                       std::string_view procedure) {
  CPC_ASSIGN_OR_RETURN(Token t, Token::Decode(wire));
  // The CVM id is checked first so a token of another CVM (whose MAC key we
  // do not have) gets its own error rather than "forged".
  if (!ConstantTimeEqual(t.cvm_id, cvm_id_))
    return Status(Code::kTokenWrongCvm, "token was issued for another CVM");
  auto mac = Mac(wire.first(Token::kMacOffset));
  if (!ConstantTimeEqual(mac, t.mac))
    return Status(Code::kTokenForged, "token MAC does not verify");
  if (t.module != module || t.procedure != procedure)
    return Status(Code::kTokenMismatch,
                  fmt::format("token is for {}.{}, call is {}.{}", t.module,
                              t.procedure, module, procedure));
  const ModulePolicy* mp = policy_.Find(t.module);
  if (mp == nullptr)  // a valid MAC over a module the policy lacks: our bug
    return Status(Code::kInternal, "minted token names unknown module");

  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(t.serial);
  if (it == live_.end()) {
    if (t.serial >= next_serial_)
      return Status(Code::kTokenForged, "token serial was never issued");
    return Status(Code::kTokenReplayed,
                  fmt::format("token {} was already used", t.serial));
  }
  if (it->second == SerialState::kActive)
    return Status(
        Code::kTokenReused,
        fmt::format("token {} is in use by a running call", t.serial));
  Ledger& ledger = ledgers_[t.module];
  if (mp->max_calls != 0 && ledger.calls_started >= mp->max_calls)
    return Status(Code::kTokenOverBudget,
                  fmt::format("module '{}' used all {} calls its policy allows",
                              t.module, mp->max_calls));
  if (mp->total_bytes != 0) {
    uint64_t committed = ledger.bytes_used + ledger.bytes_reserved;
    if (t.budget.bytes == 0 || committed > mp->total_bytes ||
        t.budget.bytes > mp->total_bytes - committed)
      return Status(
          Code::kTokenOverBudget,
          fmt::format("module '{}' has {} of {} bytes left; token "
                      "asks {}",
                      t.module,
                      mp->total_bytes - std::min(committed, mp->total_bytes),
                      mp->total_bytes, t.budget.bytes));
  }
  it->second = SerialState::kActive;
  ++ledger.calls_started;
  ledger.bytes_reserved += t.budget.bytes;
  active_budget_[t.serial] = {t.module, t.budget};
  return t;
}

void TokenAuthority::Retire(uint64_t serial, uint64_t bytes_used) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(serial);
  if (it == live_.end()) return;
  live_.erase(it);
  auto ab = active_budget_.find(serial);
  if (ab == active_budget_.end()) return;
  Ledger& ledger = ledgers_[ab->second.first];
  ledger.bytes_reserved -= ab->second.second.bytes;
  ledger.bytes_used += bytes_used;
  active_budget_.erase(ab);
}

CPC_NAMESPACE_END
