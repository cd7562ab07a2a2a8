// Byte-level encoding of record headers and metadata (docs/FORMAT.md).
// Little-endian, fixed width; pure functions, thread-safe.
#ifndef CPC_SRC_OPERATORS_RECORD_CODEC_H_
#define CPC_SRC_OPERATORS_RECORD_CODEC_H_

#include <cstdint>
#include <cstring>
#include <span>

#include <cpc/record.h>
#include <cpc/status.h>

CPC_NAMESPACE_BEGIN

inline void PutLe(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint64_t GetLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

constexpr size_t Pad64(size_t n) { return (n + 63) & ~size_t{63}; }

// Header field offsets (FORMAT.md section 2.1).
namespace hdr {
inline constexpr size_t kMagic = 0, kVersion = 4, kType = 6, kFlags = 7,
                        kStream = 8, kReserved0 = 10, kItemCount = 12,
                        kCounter = 16, kEpoch = 24, kMetaBytes = 28,
                        kRecordBytes = 32, kReserved1 = 36, kSessionId = 40,
                        kReserved2 = 56, kTag = 64, kPad = 80;
}  // namespace hdr

// Fixed metadata sizes per type.
inline constexpr size_t kVcpuMetaBytes = 16;   // vcpu u32, bytes u32, 0 u64
inline constexpr size_t kStartMetaBytes = 16;  // vcpu_count u32, streams u32, 0
inline constexpr size_t kAbortMetaBytes = 16;  // reason u32, 0 u32, 0 u64
inline constexpr size_t kEndMetaBytes = 0;
inline size_t EpochMetaBytes(uint32_t streams) {
  return 8 + 8 * size_t{streams};
}
// Resume ack: streams u32, epoch u32, records u64 per stream (as an epoch
// token's, with the epoch in the reserved word).
inline size_t ResumeAckMetaBytes(uint32_t streams) {
  return EpochMetaBytes(streams);
}
// Resume: streams u32, closed epoch u32, records u64 per stream, next
// counter u64 per stream.
inline size_t ResumeMetaBytes(uint32_t streams) {
  return 8 + 16 * size_t{streams};
}

void EncodeHeader(const RecordHeader& h, uint8_t* out64);

// Structural validation of the 128-byte prefix (no authentication): see
// PeekRecordHeader in <cpc/record.h>. `prefix` has kRecordPrefixBytes.
Result<RecordHeader> DecodePrefix(const uint8_t* prefix);

inline bool AllZero(const uint8_t* p, size_t n) {
  uint8_t acc = 0;
  for (size_t i = 0; i < n; ++i) acc |= p[i];
  return acc == 0;
}

CPC_NAMESPACE_END

#endif  // CPC_SRC_OPERATORS_RECORD_CODEC_H_
