// Host side of a maintenance module's calls: building an hvCPU entry and
// running a short call to completion. Shared by the snapshot and migration
// drivers. Stateless; errors are the call's own status with
// "module.procedure" as context, or the backend's.
#ifndef CPC_SRC_MODULES_HOST_CALL_H_
#define CPC_SRC_MODULES_HOST_CALL_H_

#include <string>
#include <string_view>
#include <vector>

#include <cpc/backend.h>
#include <cpc/runtime.h>

CPC_NAMESPACE_BEGIN

HvcpuEntry CallEntry(std::string_view module, std::string procedure,
                     std::vector<uint8_t> token, std::vector<uint8_t> args,
                     Duration slice);

// Drives `entry` on hvCPU `hv` of `cvm` until it completes; its output.
Result<std::vector<uint8_t>> RunCall(Backend& backend, CvmHandle cvm,
                                     uint32_t hv, HvcpuEntry entry,
                                     const AbortPolicy& abort);

CPC_NAMESPACE_END

#endif  // CPC_SRC_MODULES_HOST_CALL_H_
