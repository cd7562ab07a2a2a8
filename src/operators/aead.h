// AES-256-GCM engines behind one interface (internal to libcpc).
//
// Two engines exist: Intel ipsec-mb 1.3 (direct API; init_mb_mgr_auto picks
// SSE/AVX2/AVX-512+VAES at run time) and OpenSSL 3 EVP. Both produce identical
// ciphertext and tags for the same key, IV and AAD, so a record sealed by one
// opens with the other. (The bench-only CVM image adds a third, "null"; see
// RegisterBenchAeadEngine.)
//
// Two object kinds:
//  * AeadEngine  - a stateless, immortal description of one implementation
//                  (name, code path). Obtained from FindAeadEngine(); never
//                  freed by the caller; thread-safe.
//  * KeyedAead   - an engine keyed with one 32-byte key: the expanded key
//                  schedule (ipsec-mb) or one keyed EVP_CIPHER_CTX per
//                  direction (OpenSSL). Keyed once; only the IV changes per
//                  call. NOT thread-safe: a KeyedAead is used by one thread
//                  at a time (one per stream/hvCPU and direction). Key
//                  material it holds is wiped on destruction.
//
// Errors: Open returns kAuthFailed when the tag does not verify (the output
// then holds unauthenticated bytes the caller must discard); anything else the
// library reports is kInternal. Nothing throws.
#ifndef CPC_SRC_OPERATORS_AEAD_H_
#define CPC_SRC_OPERATORS_AEAD_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/status.h>

CPC_NAMESPACE_BEGIN

inline constexpr size_t kAeadKeyBytes = 32;
inline constexpr size_t kAeadIvBytes = 12;
inline constexpr size_t kAeadTagBytes = 16;

using AeadIv = std::span<const uint8_t, kAeadIvBytes>;

class KeyedAead {
 public:
  virtual ~KeyedAead() = default;

  // ciphertext[0..n) = E(plaintext[0..n)), tag = GCM tag over (aad, ct).
  // `plaintext` and `ciphertext` have the same size and may be the same
  // buffer but must not otherwise overlap. Empty plaintext gives a GMAC over
  // `aad`. The output is written once and never read back, so it may live in
  // memory shared with an untrusted host.
  virtual Status Seal(AeadIv iv, std::span<const uint8_t> aad,
                      std::span<const uint8_t> plaintext, uint8_t* ciphertext,
                      std::span<uint8_t, kAeadTagBytes> tag) = 0;

  // plaintext = D(ciphertext) and the tag check (constant time). kAuthFailed
  // on a mismatch. `ciphertext` is read exactly once, so it may live in
  // host-shared memory; `plaintext` must be private (it holds unverified
  // bytes until this returns OK).
  virtual Status Open(AeadIv iv, std::span<const uint8_t> aad,
                      std::span<const uint8_t> ciphertext, uint8_t* plaintext,
                      std::span<const uint8_t, kAeadTagBytes> tag) = 0;
};

class AeadEngine {
 public:
  virtual ~AeadEngine() = default;
  // Registry name: "ipsec-mb" or "openssl" ("null" in the bench image).
  virtual std::string_view name() const = 0;
  // The implementation that runs on this CPU, e.g.
  // "ipsec-mb 1.3.0 arch=AVX512 vaes=1 vpclmulqdq=1" - log it at start-up: a
  // wrong pick costs 3x.
  virtual std::string code_path() const = 0;
  // A keyed instance for one thread. kInvalidArgument for a key that is not
  // 32 bytes; kInternal if the library fails to set up.
  virtual Result<std::unique_ptr<KeyedAead>> NewKeyed(
      std::span<const uint8_t> key) const = 0;
};

// Engines built into this libcpc, best first ("ipsec-mb" only when compiled
// with CPC_HAVE_IPSEC_MB and the CPU has AES-NI).
std::vector<const AeadEngine*> AvailableAeadEngines();

// By name. Empty name = the default: a registered bench engine (below) if
// any, else $CPC_AEAD if set, else the first of AvailableAeadEngines().
// kNotFound for an unknown name, kUnimplemented for a known engine that is
// not built in or cannot run on this CPU.
Result<const AeadEngine*> FindAeadEngine(std::string_view name = {});

// BENCH-ONLY HOOK. It exists only for the bench CVM image
// `cpc-cvm-nullaead` (src/CMakeLists.txt), whose main() registers the "null"
// engine (operators/null_aead.h: a plain copy, no confidentiality, no
// integrity) so that `cpc-bench migrate` can time the same pipeline without
// AES-GCM. Nothing in libcpc, cpc_internal or the real `cpc-cvm` image calls
// it, so none of them has a "null" engine (kNotFound). Once registered,
// `engine` is listed first by AvailableAeadEngines(), is found by name and
// is FindAeadEngine()'s default even when $CPC_AEAD names another (a
// baseline must not silently measure AES). The image's own hash is part of
// its launch measurement, so a real CVM refuses a null-image peer
// (kMeasurementMismatch). Call it once from main() before any other thread
// starts; `engine` must be immortal; nullptr unregisters.
void RegisterBenchAeadEngine(const AeadEngine* engine);

// 96-bit IV of the record format (docs/FORMAT.md section 4):
// counter (u64 LE) || stream (u16 LE) || slot (u16 LE).
inline void MakeRecordIv(uint64_t counter, uint16_t stream, uint16_t slot,
                         std::span<uint8_t, kAeadIvBytes> iv) {
  for (int i = 0; i < 8; ++i) iv[i] = static_cast<uint8_t>(counter >> (8 * i));
  iv[8] = static_cast<uint8_t>(stream);
  iv[9] = static_cast<uint8_t>(stream >> 8);
  iv[10] = static_cast<uint8_t>(slot);
  iv[11] = static_cast<uint8_t>(slot >> 8);
}

CPC_NAMESPACE_END

#endif  // CPC_SRC_OPERATORS_AEAD_H_
