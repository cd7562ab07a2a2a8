#include <algorithm>
#include <set>

#include <fmt/format.h>
#include <openssl/evp.h>

#include <cpc/policy.h>

#include "core/bytes.h"

CPC_NAMESPACE_BEGIN

namespace {
constexpr uint32_t kPolicyMagic = 0x59504350;  // "PCPY"
constexpr uint16_t kPolicyVersion = 1;
}  // namespace

bool ModulePolicy::AllowsProcedure(std::string_view procedure) const {
  return std::find(procedures.begin(), procedures.end(), procedure) !=
         procedures.end();
}

const ModulePolicy* TenantPolicy::Find(std::string_view module) const {
  for (const auto& m : modules)
    if (m.module == module) return &m;
  return nullptr;
}

Status TenantPolicy::Validate() const {
  std::set<std::string_view> seen;
  auto check_name = [](std::string_view what, std::string_view n) -> Status {
    if (n.empty() || n.size() > kMaxNameLength)
      return Status(Code::kInvalidArgument,
                    fmt::format("{} name '{}' must be 1..{} bytes", what, n,
                                kMaxNameLength));
    if (n.find('\0') != std::string_view::npos)
      return Status(Code::kInvalidArgument,
                    fmt::format("{} name has NUL", what));
    return Status::Ok();
  };
  for (const auto& m : modules) {
    CPC_RETURN_IF_ERROR(check_name("module", m.module));
    if (!seen.insert(m.module).second)
      return Status(Code::kInvalidArgument,
                    fmt::format("module '{}' listed twice", m.module));
    if (m.procedures.empty())
      return Status(Code::kInvalidArgument,
                    fmt::format("module '{}' allows no procedure", m.module));
    std::set<std::string_view> procs;
    for (const auto& p : m.procedures) {
      CPC_RETURN_IF_ERROR(check_name("procedure", p));
      if (!procs.insert(p).second)
        return Status(Code::kInvalidArgument,
                      fmt::format("procedure '{}' listed twice", p));
    }
  }
  return Status::Ok();
}

std::vector<uint8_t> TenantPolicy::Serialize() const {
  std::vector<uint8_t> out;
  ByteWriter w(&out);
  w.Int<uint32_t>(kPolicyMagic);
  w.Int<uint16_t>(kPolicyVersion);
  w.Int<uint16_t>(static_cast<uint16_t>(modules.size()));
  for (const auto& m : modules) {
    w.String(m.module);
    w.Int<uint8_t>(static_cast<uint8_t>(m.isolation));
    w.Int<uint64_t>(m.per_call.bytes);
    w.Int<uint64_t>(m.per_call.time_ms);
    w.Int<uint64_t>(m.max_calls);
    w.Int<uint64_t>(m.total_bytes);
    w.Int<uint16_t>(static_cast<uint16_t>(m.procedures.size()));
    for (const auto& p : m.procedures) w.String(p);
  }
  return out;
}

Result<TenantPolicy> TenantPolicy::Parse(std::span<const uint8_t> bytes) {
  ByteReader r(bytes);
  if (r.Int<uint32_t>() != kPolicyMagic || r.Int<uint16_t>() != kPolicyVersion)
    return Status(Code::kInvalidArgument, "not a version-1 tenant policy");
  TenantPolicy policy;
  uint16_t n = r.Int<uint16_t>();
  for (uint16_t i = 0; i < n && r.ok(); ++i) {
    ModulePolicy m;
    m.module = r.String();
    uint8_t iso = r.Int<uint8_t>();
    if (iso > 1) return Status(Code::kInvalidArgument, "bad isolation value");
    m.isolation = static_cast<Isolation>(iso);
    m.per_call.bytes = r.Int<uint64_t>();
    m.per_call.time_ms = r.Int<uint64_t>();
    m.max_calls = r.Int<uint64_t>();
    m.total_bytes = r.Int<uint64_t>();
    uint16_t np = r.Int<uint16_t>();
    for (uint16_t j = 0; j < np && r.ok(); ++j)
      m.procedures.push_back(r.String());
    policy.modules.push_back(std::move(m));
  }
  if (!r.done())
    return Status(Code::kInvalidArgument,
                  "tenant policy truncated or has trailing bytes");
  CPC_RETURN_IF_ERROR(policy.Validate());
  return policy;
}

Digest Sha256(std::span<const uint8_t> bytes) {
  Digest d{};
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), d.data(), &len, EVP_sha256(), nullptr);
  return d;
}

Digest LaunchMeasurement(const Digest& image_digest,
                         std::span<const uint8_t> policy_bytes,
                         std::span<const uint8_t> hvcpu_config) {
  static constexpr std::string_view kLabel = "cpc-measurement-v1";
  std::vector<uint8_t> m(kLabel.begin(), kLabel.end());
  m.insert(m.end(), image_digest.begin(), image_digest.end());
  Digest pd = Sha256(policy_bytes);
  m.insert(m.end(), pd.begin(), pd.end());
  m.insert(m.end(), hvcpu_config.begin(), hvcpu_config.end());
  return Sha256(m);
}

CPC_NAMESPACE_END
