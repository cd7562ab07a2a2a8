// RMP instructions and access checks of the SEV-SNP machine model.
#include "backends/sev/rmp.h"

#include "backends/sev/snp_machine.h"
#include "sev/sev_fixture.h"

using namespace cpc;
using namespace cpc::sev;
using cpc_test::kAsid;
using cpc_test::SevMachine;

namespace {
constexpr Gpa k2M = 2 * 1024 * 1024;
constexpr uint64_t kNpfOwner = kNpfPresent | kNpfRmp | kNpfEnc;
}  // namespace

TEST_CASE("sev.rmp: entry packs into the raw Linux layout", "[sev]") {
  RmpEntry e;
  e.assigned = true;
  e.page_size = PageSize::k2M;
  e.gpa = 0x12345000;
  e.asid = 0x3ff;
  e.validated = true;
  e.vmsa = true;
  e.perms = {kPermAll, kPermRead, 0, kPermExecUser};
  uint64_t lo = e.PackLo();
  CHECK((lo & 1) == 1);
  CHECK(((lo >> 1) & 1) == 1);
  CHECK(((lo >> 12) & ((1ull << 39) - 1)) == 0x12345);
  CHECK(((lo >> 51) & 0x3ff) == 0x3ff);
  CHECK(((lo >> 61) & 1) == 1);
  CHECK(((lo >> 62) & 1) == 1);
  CHECK(RmpEntry::Unpack(lo, e.PackHi()) == e);
}

TEST_CASE("sev.rmp: validation states and #VC", "[sev]") {
  SevMachine s;
  // Hypervisor-owned page: a private access fails the RMP check.
  REQUIRE_FAULT(s.m.CheckAccess(0, 0x1000, Access::kRead),
                Code::kPermissionDenied, kNpfOwner);
  s.Own(0x1000, /*validate=*/false);
  REQUIRE_FAULT(s.m.CheckAccess(0, 0x1000, Access::kRead), Code::kPlatformError,
                kVcPageNotValidated);
  auto v = s.m.Pvalidate(0, 0x1000, PageSize::k4K, true);
  REQUIRE_OK(v);
  CHECK(*v);  // changed
  REQUIRE_OK(s.m.CheckAccess(0, 0x1000, Access::kWrite));
  // Validating twice: success with CF=1 ("no update").
  v = s.m.Pvalidate(0, 0x1000, PageSize::k4K, true);
  REQUIRE_OK(v);
  CHECK_FALSE(*v);
  // Rescind, then it is #VC again.
  REQUIRE_OK(s.m.Pvalidate(0, 0x1000, PageSize::k4K, false));
  REQUIRE_FAULT(s.m.CheckAccess(0, 0x1000, Access::kRead), Code::kPlatformError,
                kVcPageNotValidated);
}

TEST_CASE("sev.rmp: PVALIDATE rules", "[sev]") {
  SevMachine s;
  s.Own(0x2000, false);
  SECTION("only VMPL0") {
    REQUIRE_FAULT(s.m.Pvalidate(1, 0x2000, PageSize::k4K, true),
                  Code::kPermissionDenied, kGpFault);
  }
  SECTION("misaligned 2M is FAIL_INPUT") {
    REQUIRE_FAULT(s.m.Pvalidate(0, 0x2000, PageSize::k2M, true),
                  Code::kPlatformError, kFailInput);
  }
  SECTION("2M on 4K entries is FAIL_SIZEMISMATCH") {
    s.Own(0, false);
    REQUIRE_FAULT(s.m.Pvalidate(0, 0, PageSize::k2M, true),
                  Code::kPlatformError, kFailSizeMismatch);
  }
  SECTION("page not owned faults") {
    REQUIRE_FAULT(s.m.Pvalidate(0, 0x3000, PageSize::k4K, true),
                  Code::kPermissionDenied, kNpfOwner);
  }
  SECTION("2M page: 4K PVALIDATE faults with SIZEM until PSMASH") {
    REQUIRE_OK(s.m.RmpUpdate(k2M, {true, PageSize::k2M, false, k2M, kAsid}));
    REQUIRE_FAULT(s.m.Pvalidate(0, k2M + 0x1000, PageSize::k4K, true),
                  Code::kPermissionDenied, kNpfOwner | kNpfSizeM);
    auto v = s.m.Pvalidate(0, k2M, PageSize::k2M, true);
    REQUIRE_OK(v);
    CHECK(*v);
    // 4K NPT mapping of a 2M RMP page fails the page-size check.
    REQUIRE_FAULT(s.m.CheckAccess(0, k2M + 0x5000, Access::kRead),
                  Code::kPermissionDenied, kNpfOwner);
    REQUIRE_OK(s.m.NptMap(k2M, k2M, PageSize::k2M));
    REQUIRE_OK(s.m.CheckAccess(0, k2M + 0x5000, Access::kRead));
    // PSMASH keeps Validated; then 4K operations work.
    REQUIRE_FAULT(s.m.Psmash(k2M + 0x1000), Code::kPlatformError, kFailInput);
    REQUIRE_OK(s.m.Psmash(k2M));
    // With a 4K entry under a 2M NPT mapping the page-size check faults.
    REQUIRE_FAULT(s.m.CheckAccess(0, k2M + 0x5000, Access::kRead),
                  Code::kPermissionDenied, kNpfOwner);
    for (Gpa g = k2M; g < 2 * k2M; g += kPageSize)
      REQUIRE_OK(s.m.NptMap(g, g, PageSize::k4K));
    REQUIRE_OK(s.m.CheckAccess(0, k2M + 0x5000, Access::kRead));
    v = s.m.Pvalidate(0, k2M + 0x1000, PageSize::k4K, true);
    REQUIRE_OK(v);
    CHECK_FALSE(*v);  // still validated from the 2M PVALIDATE
  }
}

TEST_CASE("sev.rmp: RMPADJUST rules", "[sev]") {
  SevMachine s;
  s.Own(0x4000);
  auto rdx = [](uint32_t t, uint8_t p, bool v = false) {
    return SnpMachine::RmpadjustRdx(t, p, v);
  };
  SECTION("target VMPL must be numerically greater than the caller's") {
    REQUIRE_FAULT(s.m.Rmpadjust(0, 0x4000, PageSize::k4K, rdx(0, kPermAll)),
                  Code::kPlatformError, kFailPermission);
    s.Grant(0x4000, 1);
    REQUIRE_FAULT(s.m.Rmpadjust(1, 0x4000, PageSize::k4K, rdx(1, kPermRead)),
                  Code::kPlatformError, kFailPermission);
    REQUIRE_FAULT(s.m.Rmpadjust(2, 0x4000, PageSize::k4K, rdx(1, 0)),
                  Code::kPlatformError, kFailPermission);
  }
  SECTION("cannot grant more than the caller holds") {
    s.Grant(0x4000, 1, kPermRead | kPermWrite);
    REQUIRE_FAULT(
        s.m.Rmpadjust(1, 0x4000, PageSize::k4K, rdx(2, kPermExecSuper)),
        Code::kPlatformError, kFailPermission);
    REQUIRE_OK(s.m.Rmpadjust(1, 0x4000, PageSize::k4K, rdx(2, kPermRead)));
    auto q = s.m.Rmpquery(1, 0x4000, 2);
    REQUIRE_OK(q);
    CHECK(q->perms == kPermRead);
  }
  SECTION("reserved bits and bad target are FAIL_INPUT") {
    REQUIRE_FAULT(s.m.Rmpadjust(0, 0x4000, PageSize::k4K, rdx(4, 0)),
                  Code::kPlatformError, kFailInput);
    REQUIRE_FAULT(
        s.m.Rmpadjust(0, 0x4000, PageSize::k4K, rdx(1, 0) | 1ull << 20),
        Code::kPlatformError, kFailInput);
  }
  SECTION("size mismatch") {
    s.Own(0);
    REQUIRE_FAULT(s.m.Rmpadjust(0, 0, PageSize::k2M, rdx(1, kPermRead)),
                  Code::kPlatformError, kFailSizeMismatch);
  }
  SECTION("VMSA bit only from VMPL0") {
    s.Grant(0x4000, 1);
    REQUIRE_OK(s.m.Rmpadjust(1, 0x4000, PageSize::k4K,
                             rdx(2, kPermRead, /*vmsa=*/true)));
    CHECK_FALSE(s.m.Rmpquery(1, 0x4000, 2)->vmsa);  // ignored at VMPL1
    REQUIRE_OK(s.m.Rmpadjust(0, 0x4000, PageSize::k4K,
                             rdx(1, kPermAll, /*vmsa=*/true)));
    CHECK(s.m.Rmpquery(0, 0x4000, 1)->vmsa);
    // ... and only VMPL0 can clear it again.
    REQUIRE_OK(s.m.Rmpadjust(1, 0x4000, PageSize::k4K, rdx(2, 0, false)));
    CHECK(s.m.Rmpquery(0, 0x4000, 1)->vmsa);
  }
}

TEST_CASE("sev.rmp: VMPL permission checks on guest accesses", "[sev]") {
  SevMachine s;
  s.Own(0x5000);
  // RMPUPDATE gave VMPL1-3 nothing.
  REQUIRE_FAULT(s.m.CheckAccess(1, 0x5000, Access::kRead),
                Code::kPermissionDenied, kNpfOwner | kNpfVmpl);
  s.Grant(0x5000, 2);
  REQUIRE_OK(s.m.CheckAccess(2, 0x5000, Access::kWrite));
  REQUIRE_OK(s.m.CheckAccess(2, 0x5000, Access::kExecSuper));
  // VMPL0 revokes VMPL2's access (Secure-CPC isolation): the guest OS faults.
  s.Grant(0x5000, 2, 0);
  REQUIRE_FAULT(s.m.CheckAccess(2, 0x5000, Access::kRead),
                Code::kPermissionDenied, kNpfOwner | kNpfVmpl);
  REQUIRE_FAULT(s.m.CheckAccess(2, 0x5000, Access::kWrite),
                Code::kPermissionDenied, kNpfOwner | kNpfVmpl | kNpfWrite);
  REQUIRE_OK(s.m.CheckAccess(0, 0x5000, Access::kWrite));
  // Read-only and write-without-read.
  s.Grant(0x5000, 2, kPermRead);
  REQUIRE_OK(s.m.CheckAccess(2, 0x5000, Access::kRead));
  REQUIRE_CODE(s.m.CheckAccess(2, 0x5000, Access::kWrite),
               Code::kPermissionDenied);
  s.Grant(0x5000, 2, kPermWrite);
  REQUIRE_CODE(s.m.CheckAccess(2, 0x5000, Access::kWrite),
               Code::kPermissionDenied);
  REQUIRE_CODE(s.m.CheckAccess(2, 0x5000, Access::kExecUser),
               Code::kPermissionDenied);
  auto page = s.m.GuestPage(0, 0x5000, Access::kRead);
  REQUIRE_OK(page);
  CHECK(*page == s.mem.data() + 0x5000);
}

TEST_CASE("sev.rmp: host RMPUPDATE, remap and host-write rules", "[sev]") {
  SevMachine s;
  s.Own(0x6000);
  s.Grant(0x6000, 1);
  SECTION("RMPUPDATE of a validated page clears Validated and VMPL masks") {
    REQUIRE_OK(
        s.m.RmpUpdate(0x6000, {true, PageSize::k4K, false, 0x6000, kAsid}));
    REQUIRE_FAULT(s.m.CheckAccess(0, 0x6000, Access::kRead),
                  Code::kPlatformError, kVcPageNotValidated);
    auto e = s.m.RmpRead(0x6000);
    REQUIRE_OK(e);
    CHECK(e->perms[1] == 0);
    CHECK_FALSE(e->validated);
  }
  SECTION("host remaps the GPA to another page: reverse-map check faults") {
    s.Own(0x7000);
    // Host binds SPA 0x7000 to GPA 0x6000... RMP still says GPA 0x7000.
    REQUIRE_OK(s.m.NptMap(0x6000, 0x7000));
    REQUIRE_FAULT(s.m.CheckAccess(0, 0x6000, Access::kRead),
                  Code::kPermissionDenied, kNpfOwner);
    // Re-binding it with RMPUPDATE leaves it unvalidated (#VC), so the guest
    // notices instead of reading a swapped page.
    REQUIRE_OK(
        s.m.RmpUpdate(0x7000, {true, PageSize::k4K, false, 0x6000, kAsid}));
    REQUIRE_FAULT(s.m.CheckAccess(0, 0x6000, Access::kRead),
                  Code::kPlatformError, kVcPageNotValidated);
  }
  SECTION("another ASID's page faults") {
    REQUIRE_OK(
        s.m.RmpUpdate(0x8000, {true, PageSize::k4K, false, 0x8000, kAsid + 1}));
    REQUIRE_FAULT(s.m.CheckAccess(0, 0x8000, Access::kRead),
                  Code::kPermissionDenied, kNpfOwner);
  }
  SECTION("host writes and shared accesses") {
    REQUIRE_FAULT(s.m.HostWriteCheck(0x6000), Code::kPermissionDenied,
                  kHostPfRmp);
    REQUIRE_OK(s.m.HostWriteCheck(0x9000));
    // C=0 write to a guest page faults; C=0 to a hypervisor page is fine.
    REQUIRE_CODE(s.m.CheckAccess(0, 0x6000, Access::kWrite, false),
                 Code::kPermissionDenied);
    REQUIRE_OK(s.m.CheckAccess(2, 0x9000, Access::kWrite, false));
  }
  SECTION("immutable, overlap, input") {
    REQUIRE_OK(s.m.RmpUpdate(0xA000, {true, PageSize::k4K, true, 0, 0}));
    REQUIRE_FAULT(s.m.RmpUpdate(0xA000, {false, PageSize::k4K, false, 0, 0}),
                  Code::kPlatformError, kFailPermission);
    REQUIRE_FAULT(
        s.m.RmpUpdate(0xB000, {true, PageSize::k4K, false, 0xB000, 0}),
        Code::kPlatformError, kFailInput);
    REQUIRE_OK(s.m.RmpUpdate(k2M, {true, PageSize::k2M, false, k2M, kAsid}));
    REQUIRE_FAULT(
        s.m.RmpUpdate(k2M + 0x3000, {false, PageSize::k4K, false, 0, 0}),
        Code::kPlatformError, kFailOverlap);
    REQUIRE_FAULT(s.m.RmpUpdate(0, {true, PageSize::k2M, false, 0, kAsid}),
                  Code::kPlatformError, kFailOverlap);  // 0x6000 is 4K-assigned
    REQUIRE_FAULT(s.m.RmpUpdate(0x1001, {false, PageSize::k4K, false, 0, 0}),
                  Code::kPlatformError, kFailInput);
  }
}
