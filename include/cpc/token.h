// Authorization tokens and the token authority.
//
// The guest side (the CPC runtime inside the CVM) holds a TokenAuthority with
// a MAC key that never leaves the runtime. When the host wants maintenance it
// asks for a token; the guest-OS agent approves or refuses; an approved
// request is minted into a Token bound to {CVM identity, module, procedure,
// serial, budget} and MACed with HMAC-SHA256. The host only carries the wire
// bytes to an hvCPU. Token Validation refuses, each with its own Code:
//   kTokenMalformed  wrong size/magic/version
//   kTokenWrongCvm   issued for another CVM instance
//   kTokenForged     MAC does not verify (checked in constant time)
//   kTokenMismatch   issued for another module/procedure
//   kTokenReplayed   its call already ran (serial consumed)
//   kTokenReused     its call is still in progress on some hvCPU
//   kTokenOverBudget the policy's remaining allowance cannot cover it
// Tokens are single-use: a validated token is Active until Retire().
//
// Threading: TokenAuthority is thread-safe (the agent mints from guest-OS
// threads while hvCPUs validate). The GuestAgent is called without the
// authority's lock held.
#ifndef CPC_TOKEN_H_
#define CPC_TOKEN_H_

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/export.h>
#include <cpc/policy.h>
#include <cpc/secret.h>
#include <cpc/status.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN

// The fields a token binds. Wire layout (little-endian, 160 bytes):
//   0 magic "CPCT" | 4 u16 version=1 | 6 u16 reserved=0 | 8 cvm_id[32]
//   40 module[32] NUL-padded | 72 procedure[32] NUL-padded | 104 u64 serial
//   112 u64 budget.bytes | 120 u64 budget.time_ms | 128 HMAC-SHA256[32]
struct Token {
  static constexpr size_t kWireSize = 160;
  static constexpr size_t kMacOffset = 128;
  static constexpr uint16_t kVersion = 1;

  Digest cvm_id{};
  std::string module;
  std::string procedure;
  uint64_t serial = 0;
  Budget budget;
  std::array<uint8_t, 32> mac{};

  // Encodes all fields including `mac`.
  std::vector<uint8_t> Encode() const;
  // Decodes without verifying the MAC: kTokenMalformed on bad input.
  static Result<Token> Decode(std::span<const uint8_t> wire);
};

struct TokenRequest {
  std::string module;
  std::string procedure;
  Budget budget;
};

// The guest-OS side that approves maintenance (a daemon in a real guest).
class CPC_EXPORT GuestAgent {
 public:
  virtual ~GuestAgent();
  // True to approve minting a token for `request`. Called on the thread that
  // called Mint, without authority locks held.
  virtual bool Approve(const TokenRequest& request) = 0;
};

class CPC_EXPORT TokenAuthority {
 public:
  // `agent` is not owned and must outlive the authority. `mac_key` (32 bytes)
  // is generated inside the runtime; tests may pass a fixed one.
  TokenAuthority(CvmIdentity identity, TenantPolicy policy, GuestAgent* agent,
                 SecretBytes mac_key = SecretBytes::Random(32));
  TokenAuthority(const TokenAuthority&) = delete;
  TokenAuthority& operator=(const TokenAuthority&) = delete;

  // Mints a token if the policy names the module and procedure, the budget
  // fits the per-call limits and the agent approves. Errors: kNotFound
  // (module not in policy), kPermissionDenied (procedure not allowed),
  // kInvalidArgument (a limited budget dimension left 0 = unlimited),
  // kTokenOverBudget, kNotApproved, kResourceExhausted (too many
  // outstanding tokens).
  Result<std::vector<uint8_t>> Mint(const TokenRequest& request);

  // Token Validation for a call of `module`.`procedure`. On success the token
  // is Active and its budget reserved until Retire(serial, ...).
  Result<Token> Validate(std::span<const uint8_t> wire, std::string_view module,
                         std::string_view procedure);

  // State Reset: the token's serial is consumed forever; `bytes_used` is
  // charged to the module's lifetime allowance (the reservation released).
  void Retire(uint64_t serial, uint64_t bytes_used);

  const CvmIdentity& identity() const { return identity_; }
  const TenantPolicy& policy() const { return policy_; }

  static constexpr size_t kMaxOutstanding = 256;

 private:
  enum class SerialState : uint8_t { kMinted, kActive };
  struct Ledger {
    uint64_t calls_started = 0;
    uint64_t bytes_used = 0;
    uint64_t bytes_reserved = 0;  // budgets of Active tokens
  };
  std::array<uint8_t, 32> Mac(std::span<const uint8_t> body) const;

  const CvmIdentity identity_;
  const Digest cvm_id_;
  const TenantPolicy policy_;
  GuestAgent* const agent_;
  const SecretBytes key_;

  mutable std::mutex mu_;
  uint64_t next_serial_ = 1;
  std::map<uint64_t, SerialState> live_;  // minted or active; else consumed
  std::map<uint64_t, std::pair<std::string, Budget>> active_budget_;
  std::map<std::string, Ledger, std::less<>> ledgers_;
};

CPC_NAMESPACE_END

#endif  // CPC_TOKEN_H_
