// cpc::SecretBytes: key material that is wiped (OPENSSL_cleanse) when released.
//
// Move-only; a moved-from object is empty. Not synchronised. Never logged: it
// has no formatter and ToString on purpose.
#ifndef CPC_SECRET_H_
#define CPC_SECRET_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include <cpc/export.h>
#include <cpc/version.h>

CPC_NAMESPACE_BEGIN

class CPC_EXPORT SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t size);  // zero-filled
  explicit SecretBytes(std::span<const uint8_t> bytes);
  ~SecretBytes();
  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;

  // `size` bytes from the OS CSPRNG (OpenSSL RAND_bytes).
  static SecretBytes Random(size_t size);

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<const uint8_t> span() const { return {data_, size_}; }
  std::span<uint8_t> mutable_span() { return {data_, size_}; }
  // Wipes and frees now.
  void Clear();

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Constant-time equality of two byte strings of equal length (false if the
// lengths differ; the length itself is not secret).
CPC_EXPORT bool ConstantTimeEqual(std::span<const uint8_t> a,
                                  std::span<const uint8_t> b);

CPC_NAMESPACE_END

#endif  // CPC_SECRET_H_
