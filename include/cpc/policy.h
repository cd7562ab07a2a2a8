// The tenant policy: which maintenance modules a CVM may run, with which
// procedures, isolation and budgets. It is part of the measured launch
// configuration (its canonical serialization is hashed into the launch
// measurement), so the host cannot change it without changing the CVM's
// identity. Plain values; not synchronised.
#ifndef CPC_POLICY_H_
#define CPC_POLICY_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/export.h>
#include <cpc/status.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN

struct ModulePolicy {
  std::string module;                   // Module::name()
  std::vector<std::string> procedures;  // allowed procedures
  Isolation isolation = Isolation::kPlain;
  Budget per_call;           // most one token may grant (0 = no limit)
  uint64_t max_calls = 0;    // calls over the CVM's life (0 = no limit)
  uint64_t total_bytes = 0;  // bytes over the CVM's life (0 = no limit)

  bool AllowsProcedure(std::string_view procedure) const;
};

struct CPC_EXPORT TenantPolicy {
  std::vector<ModulePolicy> modules;

  // nullptr if the policy names no such module.
  const ModulePolicy* Find(std::string_view module) const;
  // Canonical, versioned binary form (what is measured). Deterministic.
  std::vector<uint8_t> Serialize() const;
  // kInvalidArgument for a malformed or inconsistent encoding (duplicate
  // module, empty names, trailing bytes).
  static Result<TenantPolicy> Parse(std::span<const uint8_t> bytes);
  // Checks names are non-empty, at most kMaxNameLength, and unique.
  Status Validate() const;

  static constexpr size_t kMaxNameLength = 31;
};

// Launch measurement of a CVM: SHA-256("cpc-measurement-v1" || image_digest ||
// SHA-256(policy bytes) || hvCPU configuration).
CPC_EXPORT Digest LaunchMeasurement(const Digest& image_digest,
                                    std::span<const uint8_t> policy_bytes,
                                    std::span<const uint8_t> hvcpu_config);

// SHA-256 helper used for measurements.
CPC_EXPORT Digest Sha256(std::span<const uint8_t> bytes);

CPC_NAMESPACE_END

#endif  // CPC_POLICY_H_
