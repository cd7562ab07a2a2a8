#include "operators/aead.h"

#include <array>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/provider.h>

#if defined(CPC_HAVE_IPSEC_MB)
#include <intel-ipsec-mb.h>
#endif

#include "core/log.h"

CPC_NAMESPACE_BEGIN
namespace {

Status CheckKey(std::span<const uint8_t> key) {
  if (key.size() != kAeadKeyBytes)
    return Status(Code::kInvalidArgument,
                  fmt::format("AES-256-GCM key must be {} bytes, got {}",
                              kAeadKeyBytes, key.size()));
  return Status::Ok();
}

// ------------------------------------------------------------------ OpenSSL

class OpenSslKeyed final : public KeyedAead {
 public:
  ~OpenSslKeyed() override {
    EVP_CIPHER_CTX_free(enc_);  // frees (and cleanses) the key schedule
    EVP_CIPHER_CTX_free(dec_);
  }

  static Result<std::unique_ptr<KeyedAead>> Create(
      const EVP_CIPHER* cipher, std::span<const uint8_t> key) {
    auto k = std::unique_ptr<OpenSslKeyed>(new OpenSslKeyed());
    k->enc_ = EVP_CIPHER_CTX_new();
    k->dec_ = EVP_CIPHER_CTX_new();
    if (k->enc_ == nullptr || k->dec_ == nullptr ||
        EVP_EncryptInit_ex2(k->enc_, cipher, key.data(), nullptr, nullptr) !=
            1 ||
        EVP_DecryptInit_ex2(k->dec_, cipher, key.data(), nullptr, nullptr) != 1)
      return Status(Code::kInternal, "EVP AES-256-GCM key setup failed");
    return std::unique_ptr<KeyedAead>(std::move(k));
  }

  Status Seal(AeadIv iv, std::span<const uint8_t> aad,
              std::span<const uint8_t> pt, uint8_t* ct,
              std::span<uint8_t, kAeadTagBytes> tag) override {
    int n = 0;
    if (aad.size() > INT_MAX || pt.size() > INT_MAX) return TooLong();
    // Only the IV changes per call: the key schedule stays in the context.
    if (EVP_EncryptInit_ex2(enc_, nullptr, nullptr, iv.data(), nullptr) != 1 ||
        (!aad.empty() &&
         EVP_EncryptUpdate(enc_, nullptr, &n, aad.data(),
                           static_cast<int>(aad.size())) != 1) ||
        (!pt.empty() && EVP_EncryptUpdate(enc_, ct, &n, pt.data(),
                                          static_cast<int>(pt.size())) != 1) ||
        EVP_EncryptFinal_ex(enc_, ct + pt.size(), &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_GCM_GET_TAG, kAeadTagBytes,
                            tag.data()) != 1)
      return Status(Code::kInternal, "EVP AES-256-GCM seal failed");
    return Status::Ok();
  }

  Status Open(AeadIv iv, std::span<const uint8_t> aad,
              std::span<const uint8_t> ct, uint8_t* pt,
              std::span<const uint8_t, kAeadTagBytes> tag) override {
    int n = 0;
    if (aad.size() > INT_MAX || ct.size() > INT_MAX) return TooLong();
    std::array<uint8_t, kAeadTagBytes> t;
    std::memcpy(t.data(), tag.data(), t.size());
    if (EVP_DecryptInit_ex2(dec_, nullptr, nullptr, iv.data(), nullptr) != 1 ||
        (!aad.empty() &&
         EVP_DecryptUpdate(dec_, nullptr, &n, aad.data(),
                           static_cast<int>(aad.size())) != 1) ||
        (!ct.empty() && EVP_DecryptUpdate(dec_, pt, &n, ct.data(),
                                          static_cast<int>(ct.size())) != 1) ||
        EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_GCM_SET_TAG, kAeadTagBytes,
                            t.data()) != 1)
      return Status(Code::kInternal, "EVP AES-256-GCM open failed");
    // DecryptFinal does the (constant-time) tag comparison.
    if (EVP_DecryptFinal_ex(dec_, pt + ct.size(), &n) != 1)
      return Status(Code::kAuthFailed, "AES-GCM tag mismatch");
    return Status::Ok();
  }

 private:
  OpenSslKeyed() = default;
  static Status TooLong() {
    return Status(Code::kInvalidArgument, "AEAD input longer than INT_MAX");
  }
  EVP_CIPHER_CTX* enc_ = nullptr;
  EVP_CIPHER_CTX* dec_ = nullptr;
};

class OpenSslEngine final : public AeadEngine {
 public:
  OpenSslEngine()
      : cipher_(EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr)) {}
  // Immortal (function-local static): the fetched cipher is never freed.

  bool available() const { return cipher_ != nullptr; }
  std::string_view name() const override { return "openssl"; }
  std::string code_path() const override {
    return fmt::format(
        "{} EVP AES-256-GCM (provider {})", OpenSSL_version(OPENSSL_VERSION),
        cipher_ ? OSSL_PROVIDER_get0_name(EVP_CIPHER_get0_provider(cipher_))
                : "none");
  }
  Result<std::unique_ptr<KeyedAead>> NewKeyed(
      std::span<const uint8_t> key) const override {
    CPC_RETURN_IF_ERROR(CheckKey(key));
    if (cipher_ == nullptr)
      return Status(Code::kUnimplemented, "OpenSSL lacks AES-256-GCM");
    return OpenSslKeyed::Create(cipher_, key);
  }

 private:
  EVP_CIPHER* cipher_;
};

// ----------------------------------------------------------------- ipsec-mb

#if defined(CPC_HAVE_IPSEC_MB)

class IpsecMbKeyed final : public KeyedAead {
 public:
  ~IpsecMbKeyed() override {
    OPENSSL_cleanse(&key_, sizeof(key_));
    OPENSSL_cleanse(&ctx_, sizeof(ctx_));
    free_mb_mgr(mgr_);
  }

  static Result<std::unique_ptr<KeyedAead>> Create(
      std::span<const uint8_t> key) {
    auto k = std::unique_ptr<IpsecMbKeyed>(new IpsecMbKeyed());
    k->mgr_ = alloc_mb_mgr(0);
    if (k->mgr_ == nullptr)
      return Status(Code::kResourceExhausted, "ipsec-mb: alloc_mb_mgr failed");
    init_mb_mgr_auto(k->mgr_, nullptr);
    if (int e = imb_get_errno(k->mgr_); e != 0) return Error("init", e);
    // The key schedule and GHASH tables are expanded once, here.
    IMB_AES256_GCM_PRE(k->mgr_, key.data(), &k->key_);
    if (int e = imb_get_errno(k->mgr_); e != 0) return Error("pre", e);
    return std::unique_ptr<KeyedAead>(std::move(k));
  }

  Status Seal(AeadIv iv, std::span<const uint8_t> aad,
              std::span<const uint8_t> pt, uint8_t* ct,
              std::span<uint8_t, kAeadTagBytes> tag) override {
    IMB_AES256_GCM_ENC(mgr_, &key_, &ctx_, ct, pt.data(), pt.size(), iv.data(),
                       aad.data(), aad.size(), tag.data(), kAeadTagBytes);
    // The direct API returns void; errors come through imb_errno.
    if (int e = imb_get_errno(mgr_); e != 0) [[unlikely]]
      return Error("seal", e);
    return Status::Ok();
  }

  Status Open(AeadIv iv, std::span<const uint8_t> aad,
              std::span<const uint8_t> ct, uint8_t* pt,
              std::span<const uint8_t, kAeadTagBytes> tag) override {
    alignas(16) uint8_t computed[kAeadTagBytes];
    IMB_AES256_GCM_DEC(mgr_, &key_, &ctx_, pt, ct.data(), ct.size(), iv.data(),
                       aad.data(), aad.size(), computed, kAeadTagBytes);
    if (int e = imb_get_errno(mgr_); e != 0) [[unlikely]]
      return Error("open", e);
    if (CRYPTO_memcmp(computed, tag.data(), kAeadTagBytes) != 0)
      return Status(Code::kAuthFailed, "AES-GCM tag mismatch");
    return Status::Ok();
  }

 private:
  IpsecMbKeyed() = default;
  static Status Error(const char* what, int e) {
    return Status(Code::kInternal,
                  fmt::format("ipsec-mb {}: {}", what, imb_get_strerror(e)), e);
  }
  IMB_MGR* mgr_ = nullptr;
  alignas(64) struct gcm_key_data key_;
  alignas(64) struct gcm_context_data ctx_;
};

class IpsecMbEngine final : public AeadEngine {
 public:
  IpsecMbEngine() {
    IMB_MGR* mgr = alloc_mb_mgr(0);
    if (mgr == nullptr) return;
    IMB_ARCH arch = IMB_ARCH_NONE;
    init_mb_mgr_auto(mgr, &arch);
    features_ = mgr->features;
    arch_ = arch;
    free_mb_mgr(mgr);
    // Without AES-NI ipsec-mb emulates AES in software: slower than OpenSSL.
    available_ = imb_get_errno(nullptr) == 0 && arch_ != IMB_ARCH_NONE &&
                 arch_ != IMB_ARCH_NOAESNI;
  }

  bool available() const { return available_; }
  std::string_view name() const override { return "ipsec-mb"; }
  std::string code_path() const override {
    static constexpr const char* kArch[] = {"none", "noaesni", "SSE",
                                            "AVX",  "AVX2",    "AVX512"};
    const char* arch =
        arch_ < static_cast<int>(std::size(kArch)) ? kArch[arch_] : "unknown";
    return fmt::format("ipsec-mb {} arch={} vaes={} vpclmulqdq={}",
                       imb_get_version_str(), arch,
                       (features_ & IMB_FEATURE_VAES) ? 1 : 0,
                       (features_ & IMB_FEATURE_VPCLMULQDQ) ? 1 : 0);
  }
  Result<std::unique_ptr<KeyedAead>> NewKeyed(
      std::span<const uint8_t> key) const override {
    CPC_RETURN_IF_ERROR(CheckKey(key));
    if (!available_)
      return Status(Code::kUnimplemented, "ipsec-mb cannot run on this CPU");
    return IpsecMbKeyed::Create(key);
  }

 private:
  bool available_ = false;
  int arch_ = 0;
  uint64_t features_ = 0;
};

#endif  // CPC_HAVE_IPSEC_MB

const OpenSslEngine& OpenSsl() {
  static const OpenSslEngine* engine = new OpenSslEngine();  // immortal
  return *engine;
}

#if defined(CPC_HAVE_IPSEC_MB)
const IpsecMbEngine& IpsecMb() {
  static const IpsecMbEngine* engine = new IpsecMbEngine();  // immortal
  return *engine;
}
#endif

// The bench image's engine (RegisterBenchAeadEngine); null everywhere else.
std::atomic<const AeadEngine*> bench_engine{nullptr};

}  // namespace

void RegisterBenchAeadEngine(const AeadEngine* engine) {
  bench_engine.store(engine, std::memory_order_release);
}

std::vector<const AeadEngine*> AvailableAeadEngines() {
  std::vector<const AeadEngine*> out;
  if (const AeadEngine* b = bench_engine.load(std::memory_order_acquire))
    out.push_back(b);
#if defined(CPC_HAVE_IPSEC_MB)
  if (IpsecMb().available()) out.push_back(&IpsecMb());
#endif
  if (OpenSsl().available()) out.push_back(&OpenSsl());
  return out;
}

Result<const AeadEngine*> FindAeadEngine(std::string_view name) {
  if (name.empty()) {
    const char* env = std::getenv("CPC_AEAD");
    if (const AeadEngine* b = bench_engine.load(std::memory_order_acquire)) {
      // The bench image: its engine wins over $CPC_AEAD, which the VMM's
      // environment passes down to every CVM it launches.
      name = b->name();
    } else if (env != nullptr && *env != '\0') {
      name = env;
    } else {
      auto all = AvailableAeadEngines();
      if (all.empty())
        return Status(Code::kUnimplemented, "no AES-256-GCM engine available");
      name = all.front()->name();
    }
  }
  for (const AeadEngine* e : AvailableAeadEngines()) {
    if (e->name() != name) continue;
    // Log the pick once per change: a wrong code path costs 3x (limits.md).
    static std::atomic<const AeadEngine*> logged{nullptr};
    if (logged.exchange(e) != e)
      CPC_LOG_INFO("AEAD engine: {}", e->code_path());
    return e;
  }
  if (name == "ipsec-mb" || name == "openssl")
    return Status(Code::kUnimplemented,
                  fmt::format("AEAD engine '{}' is not built in or cannot run "
                              "on this CPU",
                              name));
  return Status(Code::kNotFound, fmt::format("unknown AEAD engine '{}'", name));
}

CPC_NAMESPACE_END
