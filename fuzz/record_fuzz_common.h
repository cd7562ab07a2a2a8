// Shared by the record fuzzer and its seed generator: a fixed key and
// session, so that seeds hold records that authenticate and the fuzzer gets
// past the tags into the import rules.
#ifndef CPC_FUZZ_RECORD_FUZZ_COMMON_H_
#define CPC_FUZZ_RECORD_FUZZ_COMMON_H_

#include <array>
#include <cstdint>

#include <cpc/record.h>

namespace cpc_fuzz {

inline constexpr uint32_t kStreams = 2;
inline constexpr uint32_t kVcpus = 2;
inline constexpr uint32_t kPages = 32;  // guest memory: 128 KiB
inline constexpr uint32_t kPagesPerRecord = 4;

inline std::array<uint8_t, 32> Key() {
  std::array<uint8_t, 32> k{};
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(0x42 + i);
  return k;
}
inline constexpr cpc::SessionId kSession = {'f', 'u', 'z', 'z'};

// Input layout: byte 0 selects the stream (mod kStreams); the rest is a
// buffer of records imported in order (MDI).

}  // namespace cpc_fuzz

#endif  // CPC_FUZZ_RECORD_FUZZ_COMMON_H_
