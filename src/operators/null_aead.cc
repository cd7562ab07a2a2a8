// The bench-only "null" AEAD engine (see null_aead.h). Not part of libcpc.
#include "operators/null_aead.h"

#include <cstring>

#include <fmt/format.h>

CPC_NAMESPACE_BEGIN
namespace {

class NullKeyed final : public KeyedAead {
 public:
  Status Seal(AeadIv, std::span<const uint8_t>, std::span<const uint8_t> pt,
              uint8_t* ct, std::span<uint8_t, kAeadTagBytes> tag) override {
    // In-place sealing (ct == pt) is allowed and then a no-op, as the real
    // engines' in-place pass costs nothing extra here either.
    if (!pt.empty() && ct != pt.data()) std::memcpy(ct, pt.data(), pt.size());
    std::memset(tag.data(), 0, tag.size());
    return Status::Ok();
  }

  Status Open(AeadIv, std::span<const uint8_t>, std::span<const uint8_t> ct,
              uint8_t* pt,
              std::span<const uint8_t, kAeadTagBytes> tag) override {
    uint8_t any = 0;
    for (uint8_t b : tag) any |= b;
    if (any != 0) return Status(Code::kAuthFailed, "null AEAD: non-zero tag");
    // One read of `ct`, as the real engines (it may be host-shared).
    if (!ct.empty() && pt != ct.data()) std::memcpy(pt, ct.data(), ct.size());
    return Status::Ok();
  }
};

class NullEngine final : public AeadEngine {
 public:
  std::string_view name() const override { return "null"; }
  std::string code_path() const override {
    return "none (bench baseline: plaintext, no tag)";
  }
  Result<std::unique_ptr<KeyedAead>> NewKeyed(
      std::span<const uint8_t> key) const override {
    // The same contract as the real engines, so the callers' paths match.
    if (key.size() != kAeadKeyBytes)
      return Status(Code::kInvalidArgument,
                    fmt::format("AEAD key must be {} bytes, got {}",
                                kAeadKeyBytes, key.size()));
    return std::unique_ptr<KeyedAead>(std::make_unique<NullKeyed>());
  }
};

}  // namespace

const AeadEngine& NullAeadEngine() {
  static const NullEngine* engine = new NullEngine();  // immortal
  return *engine;
}

CPC_NAMESPACE_END
