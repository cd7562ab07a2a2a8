#include <cstdlib>
#include <cstring>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cpc/secret.h>
#include <cpc/status.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN

SecretBytes::SecretBytes(size_t size) : size_(size) {
  if (size_ == 0) return;
  data_ = static_cast<uint8_t*>(OPENSSL_secure_zalloc(size_));
  if (data_ == nullptr) data_ = static_cast<uint8_t*>(OPENSSL_zalloc(size_));
  if (data_ == nullptr)
    AbortWithStatus(Status(Code::kResourceExhausted, "secret allocation"),
                    "SecretBytes");
}

SecretBytes::SecretBytes(std::span<const uint8_t> bytes)
    : SecretBytes(bytes.size()) {
  if (!bytes.empty()) std::memcpy(data_, bytes.data(), bytes.size());
}

SecretBytes::~SecretBytes() { Clear(); }

SecretBytes::SecretBytes(SecretBytes&& other) noexcept
    : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    Clear();
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void SecretBytes::Clear() {
  if (data_ != nullptr) {
    OPENSSL_cleanse(data_, size_);
    if (CRYPTO_secure_allocated(data_)) {
      OPENSSL_secure_free(data_);
    } else {
      OPENSSL_free(data_);
    }
  }
  data_ = nullptr;
  size_ = 0;
}

SecretBytes SecretBytes::Random(size_t size) {
  SecretBytes s(size);
  if (size > 0 && RAND_bytes(s.data_, static_cast<int>(size)) != 1)
    AbortWithStatus(Status(Code::kInternal, "RAND_bytes failed"),
                    "SecretBytes::Random");
  return s;
}

bool ConstantTimeEqual(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Digest CvmIdentity::Id() const {
  Digest out{};
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  EVP_DigestUpdate(ctx, measurement.data(), measurement.size());
  EVP_DigestUpdate(ctx, instance_id.data(), instance_id.size());
  EVP_DigestFinal_ex(ctx, out.data(), &len);
  EVP_MD_CTX_free(ctx);
  return out;
}

CPC_NAMESPACE_END
