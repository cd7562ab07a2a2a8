// Shared setup for the SEV-SNP model tests: a small guest memory with a
// machine, pages assigned to ASID kAsid and validated at VMPL0.
#ifndef CPC_TESTS_SEV_SEV_FIXTURE_H_
#define CPC_TESTS_SEV_SEV_FIXTURE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "backends/sev/snp_machine.h"
#include "test_util.h"

namespace cpc_test {

inline constexpr uint32_t kAsid = 5;

struct SevMachine {
  explicit SevMachine(uint64_t pages = 1024,
                      uint64_t features = cpc::sev::kSevFeatSnpActive)
      : mem(pages * cpc::kPageSize, 0),
        m(cpc::sev::GuestMemory{mem.data(), mem.size()}, kAsid, features) {}

  // Host assigns `gpa` (identity SPA) to the guest; VMPL0 validates it.
  void Own(cpc::Gpa gpa, bool validate = true) {
    REQUIRE_OK(
        m.RmpUpdate(gpa, {true, cpc::sev::PageSize::k4K, false, gpa, kAsid}));
    if (validate) {
      auto r = m.Pvalidate(0, gpa, cpc::sev::PageSize::k4K, true);
      REQUIRE_OK(r);
      REQUIRE(*r);
    }
  }
  // Grants `vmpl` every permission on `gpa` (from VMPL0).
  void Grant(cpc::Gpa gpa, uint32_t vmpl, uint8_t perms = cpc::sev::kPermAll) {
    REQUIRE_OK(m.Rmpadjust(0, gpa, cpc::sev::PageSize::k4K,
                           cpc::sev::SnpMachine::RmpadjustRdx(vmpl, perms)));
  }

  std::vector<uint8_t> mem;
  cpc::sev::SnpMachine m;
};

// REQUIRE a Status/Result failed with `code_` and `subcode_`.
#define REQUIRE_FAULT(expr, code_, subcode_)                    \
  do {                                                          \
    const auto& cpc_rf_v_ = (expr);                             \
    INFO(::cpc_test::StatusOf(cpc_rf_v_).ToString());           \
    REQUIRE(::cpc_test::StatusOf(cpc_rf_v_).code() == (code_)); \
    REQUIRE(::cpc_test::StatusOf(cpc_rf_v_).subcode() ==        \
            static_cast<int64_t>(subcode_));                    \
  } while (0)

}  // namespace cpc_test

#endif  // CPC_TESTS_SEV_SEV_FIXTURE_H_
