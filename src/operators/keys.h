// Session key schedule: X25519 agreement + HKDF-SHA256, bound to a transcript.
//
// The two CVMs of a session (source and destination) each generate an
// ephemeral X25519 key pair, put SHA-256 of their public key into their
// attestation report (the module's job), exchange reports and public keys
// through the untrusted host, and derive two 32-byte record keys:
//   forward  = source -> destination (pages, vCPU state, tokens)
//   backward = destination -> source (abort token)
// HKDF-SHA256(IKM = X25519 shared secret, salt = session id,
//             info = label || direction || SHA-256(transcript)),
// transcript = length-prefixed (source report, destination report, source
// public key, destination public key, session id). A different report, key,
// session id or direction gives an unrelated key. docs/FORMAT.md section 3.
//
// Ownership: private keys and derived keys live in SecretBytes (wiped when
// released). Threading: plain values, not synchronised. Errors:
// kInvalidArgument for malformed peer input (wrong length, low-order point ->
// all-zero secret), kInternal for a library failure. Nothing throws.
#ifndef CPC_SRC_OPERATORS_KEYS_H_
#define CPC_SRC_OPERATORS_KEYS_H_

#include <array>
#include <cstdint>
#include <span>

#include <cpc/record.h>
#include <cpc/secret.h>
#include <cpc/status.h>

CPC_NAMESPACE_BEGIN

inline constexpr size_t kX25519KeyBytes = 32;
using X25519PublicKey = std::array<uint8_t, kX25519KeyBytes>;

enum class SessionRole : uint8_t { kSource = 0, kDestination = 1 };

class X25519KeyPair {
 public:
  // A fresh ephemeral key pair from the OS CSPRNG.
  static Result<X25519KeyPair> Generate();
  // From a raw 32-byte private key (tests, known-answer vectors).
  static Result<X25519KeyPair> FromPrivate(std::span<const uint8_t> priv);

  const X25519PublicKey& public_key() const { return public_; }
  // The raw shared secret with `peer` (32 bytes).
  Result<SecretBytes> Agree(std::span<const uint8_t> peer) const;

 private:
  SecretBytes private_;
  X25519PublicKey public_{};
};

// What both sides must agree on; spans are borrowed for the call only.
struct SessionTranscript {
  std::span<const uint8_t> source_report;
  std::span<const uint8_t> destination_report;
  std::span<const uint8_t> source_public;       // 32 bytes
  std::span<const uint8_t> destination_public;  // 32 bytes
  SessionId session_id{};
};

struct SessionKeys {
  SessionId session_id{};
  SecretBytes forward;   // source -> destination
  SecretBytes backward;  // destination -> source
  SessionRole role = SessionRole::kSource;

  // The key this side seals with, and the one it opens with.
  const SecretBytes& tx() const {
    return role == SessionRole::kSource ? forward : backward;
  }
  const SecretBytes& rx() const {
    return role == SessionRole::kSource ? backward : forward;
  }
};

// SHA-256 over the length-prefixed transcript (u32 LE length || bytes, per
// field, in the order above; session id last).
Result<std::array<uint8_t, 32>> TranscriptHash(const SessionTranscript& t);

// Derives both direction keys. `mine` must be the key pair whose public key
// appears in `t` for `role` (kInvalidArgument otherwise).
Result<SessionKeys> DeriveSessionKeys(const X25519KeyPair& mine,
                                      SessionRole role,
                                      const SessionTranscript& t);

CPC_NAMESPACE_END

#endif  // CPC_SRC_OPERATORS_KEYS_H_
