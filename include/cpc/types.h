// Vocabulary types shared by the core, operators and backends.
#ifndef CPC_TYPES_H_
#define CPC_TYPES_H_

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <cpc/version.h>

CPC_NAMESPACE_BEGIN

// Guest physical address. Page-granular operations use 4 KiB pages.
using Gpa = uint64_t;
inline constexpr size_t kPageSize = 4096;
inline constexpr int kPageShift = 12;

using Clock = std::chrono::steady_clock;
using Duration = std::chrono::nanoseconds;

// 32-byte digest (SHA-256 / SHA-384 truncated where a platform uses 48).
using Digest = std::array<uint8_t, 32>;

// Whether a module runs as a plain CPC (trusts the guest OS) or a Secure CPC
// (isolated from the guest OS: VMPL0 on SNP, a plane on CCA, an L1 TD
// partition on TDX).
enum class Isolation : uint8_t { kPlain = 0, kSecure = 1 };

// What one call may consume. Zero means "not limited by this dimension".
struct Budget {
  uint64_t bytes = 0;    // bytes of guest memory/state the call may process
  uint64_t time_ms = 0;  // wall time the call may take in total

  friend bool operator==(const Budget&, const Budget&) = default;
};

// The identity a token is bound to: which image and policy (the launch
// measurement) and which running instance of it.
struct CvmIdentity {
  Digest measurement{};                   // SHA-256(image || policy)
  std::array<uint8_t, 16> instance_id{};  // random per launch
  // SHA-256(measurement || instance_id): what tokens carry.
  Digest Id() const;

  friend bool operator==(const CvmIdentity&, const CvmIdentity&) = default;
};

CPC_NAMESPACE_END

#endif  // CPC_TYPES_H_
