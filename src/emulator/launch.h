// Launch messages between the VMM and a CVM process.
#ifndef CPC_SRC_EMULATOR_LAUNCH_H_
#define CPC_SRC_EMULATOR_LAUNCH_H_

#include <string>
#include <vector>

#include <cpc/backend.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN
namespace emu {

// The top of guest memory belongs to the CPC runtime: vCPU save areas
// (VMSAs) and Secure-CPC memory. The guest OS never allocates from it.
inline constexpr uint64_t kCpcRegionBytes = 2ull << 20;

struct LaunchParams {
  std::string platform;
  LaunchConfig config;
  uint64_t shared_bytes = 0;
  uint64_t chip_seed = 0;

  std::vector<uint8_t> Encode() const;
  static Result<LaunchParams> Decode(std::span<const uint8_t> b);
};

struct LaunchedInfo {
  CvmIdentity identity;
  int32_t pid = 0;
  uint64_t guest_base = 0;  // address of guest memory in the CVM process
  uint64_t memory_bytes = 0;
  uint64_t cpc_base = 0;
  std::vector<Isolation> hvcpu_isolation;

  std::vector<uint8_t> Encode() const;
  static Result<LaunchedInfo> Decode(std::span<const uint8_t> b);
};

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_LAUNCH_H_
