#include "modules/host_call.h"

#include <fmt/format.h>

CPC_NAMESPACE_BEGIN

HvcpuEntry CallEntry(std::string_view module, std::string procedure,
                     std::vector<uint8_t> token, std::vector<uint8_t> args,
                     Duration slice) {
  HvcpuEntry e;
  e.module = std::string(module);
  e.procedure = std::move(procedure);
  e.token = std::move(token);
  e.args = std::move(args);
  e.slice = slice;
  return e;
}

Result<std::vector<uint8_t>> RunCall(Backend& backend, CvmHandle cvm,
                                     uint32_t hv, HvcpuEntry entry,
                                     const AbortPolicy& abort) {
  CPC_ASSIGN_OR_RETURN(CallOutcome out, DriveCall(
                                            [&](const HvcpuEntry& x) {
                                              return backend.ScheduleHvcpu(
                                                  cvm, hv, x);
                                            },
                                            entry, abort));
  CPC_RETURN_IF_ERROR(out.status.WithContext(
      fmt::format("{}.{}", entry.module, entry.procedure)));
  return out.output;
}

CPC_NAMESPACE_END
