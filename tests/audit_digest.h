// The in-CVM memory-equality proof the snapshot and migration tests share:
// audit.digest (modules/audit.h) of guest pages, measured inside the CVM.
#ifndef CPC_TESTS_AUDIT_DIGEST_H_
#define CPC_TESTS_AUDIT_DIGEST_H_

#include <cstdint>
#include <utility>
#include <vector>

#include <cpc/backend.h>
#include <cpc/runtime.h>

#include "modules/audit.h"
#include "test_util.h"

namespace cpc_test {

// SHA-256 (+ page count) of guest pages [0, pages) of `cvm`, run on hvCPU 0
// with an audit.digest `token` (requested before the guest was paused).
inline std::vector<uint8_t> AuditDigest(cpc::Backend& b, cpc::CvmHandle cvm,
                                        std::vector<uint8_t> token,
                                        uint64_t pages) {
  cpc::HvcpuEntry e;
  e.module = "audit";
  e.procedure = "digest";
  e.token = std::move(token);
  e.args = cpc::AuditArgs(0, pages);
  auto out = cpc::DriveCall(
      [&](const cpc::HvcpuEntry& x) { return b.ScheduleHvcpu(cvm, 0, x); }, e,
      cpc::AbortPolicy{});
  REQUIRE_OK(out);
  REQUIRE_OK(out->status);
  return out->output;
}

}  // namespace cpc_test

#endif  // CPC_TESTS_AUDIT_DIGEST_H_
