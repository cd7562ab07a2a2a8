// Little-endian fixed-width encoding helpers for the wire formats (tokens,
// policy). ByteWriter appends to a vector; ByteReader reads from a span and
// turns every overrun into a sticky failure, so a parser checks once at end.
#ifndef CPC_SRC_CORE_BYTES_H_
#define CPC_SRC_CORE_BYTES_H_

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/version.h>

CPC_NAMESPACE_BEGIN

template <typename T>
inline void StoreLe(uint8_t* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i)
    p[i] = static_cast<uint8_t>(v >> (8 * i));
}
template <typename T>
inline T LoadLe(const uint8_t* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(p[i]) << (8 * i);
  return v;
}

class ByteWriter {
 public:
  explicit ByteWriter(std::vector<uint8_t>* out) : out_(out) {}
  template <typename T>
  void Int(T v) {
    size_t at = out_->size();
    out_->resize(at + sizeof(T));
    StoreLe<T>(out_->data() + at, v);
  }
  void Bytes(std::span<const uint8_t> b) {
    out_->insert(out_->end(), b.begin(), b.end());
  }
  // u16 length + bytes.
  void String(std::string_view s) {
    Int<uint16_t>(static_cast<uint16_t>(s.size()));
    out_->insert(out_->end(), s.begin(), s.end());
  }
  // Exactly `width` bytes, NUL-padded (caller checks s.size() < width).
  void Fixed(std::string_view s, size_t width) {
    size_t at = out_->size();
    out_->resize(at + width, 0);
    std::memcpy(out_->data() + at, s.data(),
                s.size() < width ? s.size() : width);
  }

 private:
  std::vector<uint8_t>* out_;
};

class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> in) : in_(in) {}
  template <typename T>
  T Int() {
    if (!Need(sizeof(T))) return 0;
    T v = LoadLe<T>(in_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }
  std::span<const uint8_t> Bytes(size_t n) {
    if (!Need(n)) return {};
    auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::string String() {
    uint16_t n = Int<uint16_t>();
    auto b = Bytes(n);
    return std::string(b.begin(), b.end());
  }
  // A NUL-padded field; fails if it has no NUL or bytes after the first NUL.
  std::string Fixed(size_t width) {
    auto b = Bytes(width);
    if (b.empty()) return {};
    size_t n = 0;
    while (n < width && b[n] != 0) ++n;
    if (n == width) ok_ = false;
    for (size_t i = n; i < width; ++i)
      if (b[i] != 0) ok_ = false;
    return std::string(b.begin(), b.begin() + n);
  }
  bool ok() const { return ok_; }
  bool done() const { return ok_ && pos_ == in_.size(); }
  // What has not been read yet.
  std::span<const uint8_t> rest() const {
    return ok_ ? in_.subspan(pos_) : std::span<const uint8_t>();
  }

 private:
  bool Need(size_t n) {
    if (!ok_ || in_.size() - pos_ < n) {
      ok_ = false;
      return false;
    }
    return true;
  }
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

CPC_NAMESPACE_END

#endif  // CPC_SRC_CORE_BYTES_H_
