#include "operators/keys.h"

#include <algorithm>
#include <memory>
#include <string_view>
#include <vector>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <cpc/secret.h>

CPC_NAMESPACE_BEGIN
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;

Pkey PrivateKey(const SecretBytes& priv) {
  return Pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr,
                                           priv.data(), priv.size()));
}

constexpr std::string_view kLabel = "libcpc record key v1 ";

Result<SecretBytes> Hkdf(const SecretBytes& ikm, std::span<const uint8_t> salt,
                         std::span<const uint8_t> info) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (kdf == nullptr) return Status(Code::kInternal, "HKDF unavailable");
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (ctx == nullptr) return Status(Code::kInternal, "HKDF context");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(
          OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(ikm.data()), ikm.size()),
      OSSL_PARAM_construct_octet_string(
          OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()), salt.size()),
      OSSL_PARAM_construct_octet_string(
          OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info.data()), info.size()),
      OSSL_PARAM_construct_end()};
  SecretBytes out(32);
  int rc = EVP_KDF_derive(ctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(ctx);
  if (rc != 1) return Status(Code::kInternal, "HKDF derive failed");
  return out;
}

}  // namespace

Result<X25519KeyPair> X25519KeyPair::Generate() {
  SecretBytes priv = SecretBytes::Random(kX25519KeyBytes);
  return FromPrivate(priv.span());
}

Result<X25519KeyPair> X25519KeyPair::FromPrivate(
    std::span<const uint8_t> priv) {
  if (priv.size() != kX25519KeyBytes)
    return Status(Code::kInvalidArgument, "X25519 private key is 32 bytes");
  X25519KeyPair kp;
  kp.private_ = SecretBytes(priv);
  Pkey key = PrivateKey(kp.private_);
  size_t len = kp.public_.size();
  if (!key ||
      EVP_PKEY_get_raw_public_key(key.get(), kp.public_.data(), &len) != 1 ||
      len != kp.public_.size())
    return Status(Code::kInternal, "X25519 key setup failed");
  return kp;
}

Result<SecretBytes> X25519KeyPair::Agree(std::span<const uint8_t> peer) const {
  if (peer.size() != kX25519KeyBytes)
    return Status(Code::kInvalidArgument, "X25519 public key is 32 bytes");
  Pkey mine = PrivateKey(private_);
  Pkey theirs(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer.data(),
                                          peer.size()));
  if (!mine || !theirs) return Status(Code::kInternal, "X25519 key objects");
  PkeyCtx ctx(EVP_PKEY_CTX_new(mine.get(), nullptr));
  SecretBytes secret(kX25519KeyBytes);
  size_t len = secret.size();
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer(ctx.get(), theirs.get()) != 1 ||
      EVP_PKEY_derive(ctx.get(), secret.data(), &len) != 1 ||
      len != secret.size())
    // OpenSSL refuses a low-order peer point (all-zero shared secret) here.
    return Status(Code::kInvalidArgument, "X25519 agreement refused");
  const uint8_t zero[kX25519KeyBytes] = {};
  if (ConstantTimeEqual(secret.span(), zero))
    return Status(Code::kInvalidArgument, "X25519 shared secret is zero");
  return secret;
}

Result<std::array<uint8_t, 32>> TranscriptHash(const SessionTranscript& t) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx);
    return Status(Code::kInternal, "SHA-256 init");
  }
  bool ok = true;
  auto field = [&](std::span<const uint8_t> f) {
    // Length prefixes make the encoding injective: no two transcripts hash
    // the same byte string by shifting bytes between fields.
    uint8_t len[4];
    for (int i = 0; i < 4; ++i)
      len[i] = static_cast<uint8_t>(f.size() >> (8 * i));
    ok = ok && EVP_DigestUpdate(ctx, len, sizeof(len)) == 1 &&
         (f.empty() || EVP_DigestUpdate(ctx, f.data(), f.size()) == 1);
  };
  field(t.source_report);
  field(t.destination_report);
  field(t.source_public);
  field(t.destination_public);
  field(t.session_id);
  std::array<uint8_t, 32> out{};
  unsigned int n = 0;
  ok = ok && EVP_DigestFinal_ex(ctx, out.data(), &n) == 1 && n == out.size();
  EVP_MD_CTX_free(ctx);
  if (!ok) return Status(Code::kInternal, "SHA-256 failed");
  return out;
}

Result<SessionKeys> DeriveSessionKeys(const X25519KeyPair& mine,
                                      SessionRole role,
                                      const SessionTranscript& t) {
  if (t.source_public.size() != kX25519KeyBytes ||
      t.destination_public.size() != kX25519KeyBytes)
    return Status(Code::kInvalidArgument,
                  "transcript public keys are 32 bytes");
  std::span<const uint8_t> own =
      role == SessionRole::kSource ? t.source_public : t.destination_public;
  std::span<const uint8_t> peer =
      role == SessionRole::kSource ? t.destination_public : t.source_public;
  if (!std::equal(own.begin(), own.end(), mine.public_key().begin()))
    return Status(Code::kInvalidArgument,
                  "own public key is not the one in the transcript");
  CPC_ASSIGN_OR_RETURN(SecretBytes shared, mine.Agree(peer));
  CPC_ASSIGN_OR_RETURN(auto th, TranscriptHash(t));

  SessionKeys keys;
  keys.session_id = t.session_id;
  keys.role = role;
  for (std::string_view dir :
       {std::string_view("forward"), std::string_view("backward")}) {
    std::vector<uint8_t> info(kLabel.begin(), kLabel.end());
    info.insert(info.end(), dir.begin(), dir.end());
    info.insert(info.end(), th.begin(), th.end());
    CPC_ASSIGN_OR_RETURN(SecretBytes k, Hkdf(shared, t.session_id, info));
    (dir == "forward" ? keys.forward : keys.backward) = std::move(k);
  }
  return keys;
}

CPC_NAMESPACE_END
