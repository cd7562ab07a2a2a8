// Page state change, VMSA layout and the SVSM core protocol.
#include <cstring>

#include "backends/sev/ghcb.h"
#include "backends/sev/svsm.h"
#include "backends/sev/vmsa.h"
#include "core/bytes.h"
#include "sev/sev_fixture.h"

using namespace cpc;
using namespace cpc::sev;
using cpc_test::kAsid;
using cpc_test::SevMachine;

namespace {
constexpr uint32_t kGuestVmpl = 2;

struct Psc {
  SevMachine s;
  std::vector<uint8_t> ghcb_mem = std::vector<uint8_t>(kPageSize, 0);
  GhcbPage ghcb{std::span<uint8_t, kPageSize>(ghcb_mem.data(), kPageSize)};
  VmgexitChannel host = [this](GhcbPage& g) {
    return HostHandleVmgexit(s.m, g);
  };
};

Vmsa GuestVmsa(uint64_t features = kSevFeatSnpActive) {
  Vmsa v;
  v.vmpl = kGuestVmpl;
  v.efer = 0x1000 | 0xd01;
  v.rip = 0xfff0;
  v.sev_features = features;
  return v;
}

void WriteVmsa(SevMachine& s, Gpa gpa, const Vmsa& v) {
  v.WriteTo(std::span<uint8_t, kPageSize>(s.mem.data() + gpa, kPageSize));
}
}  // namespace

TEST_CASE("sev.psc: conversions follow the required order", "[sev]") {
  Psc p;
  for (Gpa g = 0x10000; g < 0x14000; g += kPageSize) p.s.Own(g);
  GpaRange range{0x10000, 4};
  SECTION("PSC(shared) before rescinding validation is refused") {
    PscEntry e{0, 0x10, PscOp::kShared, false};
    REQUIRE_CODE(RequestPsc(p.s.m, p.ghcb, p.host, {&e, 1}),
                 Code::kFailedPrecondition);
    REQUIRE_OK(p.s.m.CheckAccess(0, 0x10000, Access::kRead));  // untouched
  }
  SECTION("PVALIDATE before PSC(private) faults") {
    REQUIRE_OK(ConvertToShared(p.s.m, p.ghcb, p.host, range));
    REQUIRE_CODE(p.s.m.Pvalidate(0, 0x10000, PageSize::k4K, true),
                 Code::kPermissionDenied);
  }
  SECTION("round trip") {
    std::memset(p.s.mem.data() + 0x10000, 0xAB, kPageSize);
    REQUIRE_OK(ConvertToShared(p.s.m, p.ghcb, p.host, range));
    for (Gpa g = 0x10000; g < 0x14000; g += kPageSize) {
      REQUIRE_OK(p.s.m.CheckAccess(2, g, Access::kWrite, /*c_bit=*/false));
      REQUIRE_OK(p.s.m.HostWriteCheck(g));
      REQUIRE_CODE(p.s.m.CheckAccess(0, g, Access::kRead),
                   Code::kPermissionDenied);
    }
    REQUIRE_OK(ConvertToPrivate(p.s.m, p.ghcb, p.host, range));
    REQUIRE_OK(p.s.m.CheckAccess(0, 0x13000, Access::kWrite));
    CHECK(p.s.mem[0x10000] == 0);  // zeroed after validation
    CHECK(p.ghcb.protocol_version() == kGhcbProtocolVersion);
  }
  SECTION("host refusal is reported") {
    VmgexitChannel bad = [](GhcbPage& g) {
      g.Set(ghcb_off::kSwExitInfo2, kPscErrorGeneric);
      return Status::Ok();
    };
    REQUIRE_FAULT(ConvertToPrivate(p.s.m, p.ghcb, bad, {0x20000, 1}),
                  Code::kPlatformError, kPscErrorGeneric);
  }
  SECTION("host handler checks the header") {
    PscEntry e{0, 0x20, PscOp::kPrivate, false};
    REQUIRE_OK(WritePscRequest(p.ghcb, {&e, 1}));
    p.ghcb.shared_buffer()[2] = 0xff;  // end_entry 255 > 252
    REQUIRE_OK(HostHandlePsc(p.s.m, p.ghcb));
    CHECK(p.ghcb.Get(ghcb_off::kSwExitInfo2) == kPscErrorInvalidHdr);
  }
  SECTION("MSR protocol") {
    uint64_t resp =
        HostHandleMsrPsc(p.s.m, MsrPscRequest(0x30000, PscOp::kPrivate));
    CHECK(resp == kMsrPscResp);
    REQUIRE_OK(p.s.m.Pvalidate(0, 0x30000, PageSize::k4K, true));
    CHECK(PscEntry::Decode(PscEntry{7, 0x123, PscOp::kShared, true}.Encode())
              .gfn == 0x123);
  }
}

TEST_CASE("sev.vmsa: offsets and round trip", "[sev]") {
  Vmsa v = GuestVmsa();
  v.segs[1] = {0x10, 0x29b, 0xffffffff, 0};
  v.cr0 = 0x80050033;
  v.cr3 = 0x1234000;
  v.cr4 = 0x3506f0;
  v.rflags = 0x246;
  for (int r = 0; r < kGprCount; ++r) v.gpr[r] = 0x1111 * (r + 1);
  auto page = v.ToPage();
  REQUIRE(page.size() == kPageSize);
  std::span<const uint8_t, kPageSize> p(page.data(), kPageSize);
  CHECK(VmsaLoad64(p, 0x178) == 0xfff0);       // RIP
  CHECK(VmsaLoad64(p, 0x1D8) == v.gpr[kRsp]);  // RSP
  CHECK(VmsaLoad64(p, 0x1F8) == v.gpr[kRax]);  // RAX
  CHECK(VmsaLoad64(p, 0x308) == v.gpr[kRcx]);  // RCX
  CHECK(VmsaLoad64(p, 0x378) == v.gpr[kR15]);  // R15
  CHECK(VmsaLoad64(p, 0x158) == v.cr0);
  CHECK(VmsaLoad64(p, 0x150) == v.cr3);
  CHECK(VmsaLoad64(p, 0x148) == v.cr4);
  CHECK(VmsaLoad64(p, 0x0D0) == v.efer);
  CHECK(VmsaLoad64(p, 0x170) == 0x246);
  CHECK(VmsaLoad64(p, 0x3B0) == kSevFeatSnpActive);
  CHECK(p[0x0CA] == kGuestVmpl);
  CHECK(p[0x010] == 0x10);  // CS selector
  CHECK(Vmsa::Parse(p) == v);
  // Unmodelled bytes (x87/SSE area) survive WriteTo.
  page[0x500] = 0x77;
  Vmsa w = Vmsa::Parse(p);
  w.rip = 1;
  w.WriteTo(std::span<uint8_t, kPageSize>(page.data(), kPageSize));
  CHECK(page[0x500] == 0x77);
}

TEST_CASE("sev.svsm: CREATE_VCPU / DELETE_VCPU", "[sev]") {
  Psc p;
  SvsmCore svsm(&p.s.m, kGuestVmpl, {0, 1, 2}, p.host);
  for (Gpa g = 0x40000; g < 0x48000; g += kPageSize) {
    p.s.Own(g);
    p.s.Grant(g, kGuestVmpl);
  }
  const Gpa vmsa = 0x40000, caa = 0x41000;
  WriteVmsa(p.s, vmsa, GuestVmsa());
  auto call = [&](uint32_t id, uint64_t rcx, uint64_t rdx = 0,
                  uint64_t r8 = 0) {
    SvsmRegs r{SvsmCall(kSvsmCoreProtocol, id), rcx, rdx, r8, 0};
    svsm.HandleCall(0, r);
    return r;
  };
  SECTION("success, then the host can run it, then delete") {
    CHECK(call(kSvsmCoreCreateVcpu, vmsa, caa, 1).rax == kSvsmSuccess);
    auto q = p.s.m.Rmpquery(0, vmsa, kGuestVmpl);
    REQUIRE_OK(q);
    CHECK(q->vmsa);
    CHECK(q->perms == kPermRead);  // the guest can no longer write it
    REQUIRE_CODE(p.s.m.CheckAccess(kGuestVmpl, vmsa, Access::kWrite),
                 Code::kPermissionDenied);
    // Guest's AP creation request to the host, then VMRUN.
    REQUIRE_OK(p.s.m.HandleApCreation(
        kApCreate | (uint64_t{kGuestVmpl} << 16) | (1ull << 32), vmsa,
        kSevFeatSnpActive));
    REQUIRE_OK(p.s.m.VmrunBegin(1, kGuestVmpl));
    REQUIRE_FAULT(p.s.m.RmpUpdate(vmsa, {false, PageSize::k4K, false, 0, 0}),
                  Code::kPlatformError, kFailInUse);
    REQUIRE_OK(p.s.m.VmrunEnd(1, kGuestVmpl));
    CHECK(call(kSvsmCoreDeleteVcpu, vmsa).rax == kSvsmSuccess);
    CHECK_FALSE(p.s.m.Rmpquery(0, vmsa, kGuestVmpl)->vmsa);
    REQUIRE_FAULT(p.s.m.VmrunBegin(1, kGuestVmpl), Code::kPlatformError,
                  kVmexitInvalid);
    CHECK(call(kSvsmCoreDeleteVcpu, vmsa).rax == kSvsmErrInvalidParameter);
  }
  SECTION("error codes") {
    CHECK(call(kSvsmCoreCreateVcpu, vmsa + 8, caa, 1).rax ==
          kSvsmErrInvalidAddress);
    CHECK(call(kSvsmCoreCreateVcpu, vmsa, vmsa, 1).rax ==
          kSvsmErrInvalidAddress);
    CHECK(call(kSvsmCoreCreateVcpu, vmsa, caa, 99).rax ==
          kSvsmErrInvalidParameter);  // unknown APIC ID
    CHECK(call(kSvsmCoreCreateVcpu, 0x900000, caa, 1).rax ==
          kSvsmErrInvalidAddress);  // not guest RAM
    Vmsa wrong = GuestVmsa();
    wrong.vmpl = 0;  // the guest may not create a VMPL0 vCPU
    WriteVmsa(p.s, 0x42000, wrong);
    CHECK(call(kSvsmCoreCreateVcpu, 0x42000, caa, 1).rax ==
          kSvsmErrInvalidParameter);
    CHECK(p.s.m.CheckAccess(kGuestVmpl, 0x42000, Access::kWrite).ok());
    Vmsa off = GuestVmsa();
    off.efer = 0xd01;  // SVME clear
    WriteVmsa(p.s, 0x43000, off);
    CHECK(call(kSvsmCoreCreateVcpu, 0x43000, caa, 1).rax ==
          kSvsmErrInvalidParameter);
    WriteVmsa(p.s, 0x44000, GuestVmsa(kSevFeatSnpActive | kSevFeatReflectVc));
    CHECK(call(kSvsmCoreCreateVcpu, 0x44000, caa, 1).rax ==
          kSvsmErrInvalidParameter);
    CHECK(call(kSvsmCoreCreateVcpu, vmsa, caa, 1).rax == kSvsmSuccess);
    CHECK(call(kSvsmCoreCreateVcpu, vmsa, 0x45000, 2).rax ==
          kSvsmErrInvalidParameter);  // already registered as a VMSA
    CHECK(call(9, 0).rax == kSvsmErrUnsupportedCall);
    SvsmRegs r{SvsmCall(1, 0), 0, 0, 0, 0};
    svsm.HandleCall(0, r);
    CHECK(r.rax == kSvsmErrUnsupportedProtocol);
    auto q = call(kSvsmCoreQueryProtocol, (0ull << 32) | 1);
    CHECK(q.rax == kSvsmSuccess);
    CHECK(q.rcx == (1ull | (1ull << 32)));
  }
}

TEST_CASE("sev.svsm: a guest call through CAA and VMSA", "[sev]") {
  Psc p;
  SvsmCore svsm(&p.s.m, kGuestVmpl, {0, 1}, p.host);
  for (Gpa g = 0x40000; g < 0x44000; g += kPageSize) {
    p.s.Own(g);
    p.s.Grant(g, kGuestVmpl);
  }
  const Gpa boot_vmsa = 0x40000, caa = 0x41000, new_vmsa = 0x42000;
  Vmsa boot = GuestVmsa();
  boot.gpr[kRax] = SvsmCall(kSvsmCoreProtocol, kSvsmCoreCreateVcpu);
  boot.gpr[kRcx] = new_vmsa;
  boot.gpr[kRdx] = 0x43000;
  boot.gpr[kR8] = 1;
  WriteVmsa(p.s, boot_vmsa, boot);
  WriteVmsa(p.s, new_vmsa, GuestVmsa());
  REQUIRE_OK(svsm.RegisterLaunchVmsa(0, kGuestVmpl, boot_vmsa, caa));
  REQUIRE_CODE(svsm.ServiceVcpu(0), Code::kFailedPrecondition);  // no call
  p.s.mem[caa + kCaaCallPending] = 1;
  REQUIRE_OK(svsm.ServiceVcpu(0));
  CHECK(p.s.mem[caa + kCaaCallPending] == 0);
  Vmsa after = Vmsa::Parse(std::span<const uint8_t, kPageSize>(
      p.s.mem.data() + boot_vmsa, kPageSize));
  CHECK(after.gpr[kRax] == kSvsmSuccess);
  CHECK(p.s.m.Rmpquery(0, new_vmsa, kGuestVmpl)->vmsa);
}

TEST_CASE("sev.svsm: SVSM_CORE_PVALIDATE", "[sev]") {
  Psc p;
  SvsmCore svsm(&p.s.m, kGuestVmpl, {0}, p.host);
  p.s.Own(0x40000);
  p.s.Grant(0x40000, kGuestVmpl);
  p.s.Own(0x50000, false);
  std::memset(p.s.mem.data() + 0x50000, 0xCC, kPageSize);
  uint8_t* list = p.s.mem.data() + 0x40000;
  StoreLe<uint16_t>(list, 1);
  StoreLe<uint64_t>(list + 8, (0x50ull << 12) | (1 << 2));  // 4K, validate
  SvsmRegs r{SvsmCall(0, kSvsmCorePvalidate), 0x40000, 0, 0, 0};
  svsm.HandleCall(0, r);
  CHECK(r.rax == kSvsmSuccess);
  REQUIRE_OK(p.s.m.CheckAccess(kGuestVmpl, 0x50000, Access::kWrite));
  CHECK(p.s.mem[0x50000] == 0);  // zeroed before granting
  StoreLe<uint16_t>(list + 2, 0);
  r = {SvsmCall(0, kSvsmCorePvalidate), 0x40000, 0, 0, 0};
  svsm.HandleCall(0, r);  // validating twice: FAIL_UNCHANGED
  CHECK(r.rax == kSvsmPvalidateFailUnchanged);
  CHECK(LoadLe<uint16_t>(list + 2) == 0);  // resumable index
}

TEST_CASE("sev.svsm: hvCPU at VMPL0, isolation, state export/import", "[sev]") {
  Psc p;
  SvsmCore svsm(&p.s.m, kGuestVmpl, {0}, p.host);
  for (Gpa g = 0x60000; g < 0x68000; g += kPageSize) {
    p.s.Own(g);
    p.s.Grant(g, kGuestVmpl);
  }
  Vmsa hv;
  hv.rip = 0x600000;
  hv.gpr[kRsp] = 0x7000;
  REQUIRE_OK(svsm.CreateVmpl0Vcpu(8, 0x60000, hv));
  // The host registered it (AP Create with vmpl 0) and can run it.
  auto gpa = p.s.m.RegisteredVmsa(8, 0);
  REQUIRE_OK(gpa);
  CHECK(*gpa == 0x60000);
  REQUIRE_CODE(p.s.m.CheckAccess(kGuestVmpl, 0x60000, Access::kRead),
               Code::kPermissionDenied);
  REQUIRE_OK(p.s.m.VmrunBegin(8, 0));
  REQUIRE_CODE(svsm.ExportVcpuState(8, 0), Code::kFailedPrecondition);
  REQUIRE_OK(p.s.m.VmrunEnd(8, 0));
  auto state = svsm.ExportVcpuState(8, 0);
  REQUIRE_OK(state);
  Vmsa got = Vmsa::Parse(
      std::span<const uint8_t, kPageSize>(state->data(), kPageSize));
  CHECK(got.rip == 0x600000);
  CHECK(got.vmpl == 0);
  CHECK(got.runnable());
  got.rip = 0x601000;
  auto page = got.ToPage();
  REQUIRE_OK(svsm.ImportVcpuState(8, 0, page));
  CHECK(Vmsa::Parse(std::span<const uint8_t, kPageSize>(
                        p.s.mem.data() + 0x60000, kPageSize))
            .rip == 0x601000);
  got.vmpl = 2;  // an import may not change the privilege level
  REQUIRE_CODE(svsm.ImportVcpuState(8, 0, got.ToPage()),
               Code::kPermissionDenied);
  REQUIRE_CODE(svsm.ImportVcpuState(8, 0, std::vector<uint8_t>(100)),
               Code::kInvalidArgument);

  // Secure-CPC isolation.
  std::memset(p.s.mem.data() + 0x61000, 0x5A, kPageSize);
  REQUIRE_OK(svsm.Isolate({0x61000, 2}));
  REQUIRE_FAULT(p.s.m.CheckAccess(kGuestVmpl, 0x61000, Access::kRead),
                Code::kPermissionDenied,
                kNpfPresent | kNpfRmp | kNpfEnc | kNpfVmpl);
  REQUIRE_OK(p.s.m.CheckAccess(0, 0x62000, Access::kWrite));
  uint8_t* list = p.s.mem.data() + 0x63000;
  StoreLe<uint16_t>(list, 1);
  StoreLe<uint64_t>(list + 8, 0x61ull << 12);  // rescind an isolated page
  SvsmRegs r{SvsmCall(0, kSvsmCorePvalidate), 0x63000, 0, 0, 0};
  svsm.HandleCall(0, r);
  CHECK(r.rax == kSvsmErrInvalidAddress);
  REQUIRE_OK(svsm.Release({0x61000, 2}));
  REQUIRE_OK(p.s.m.CheckAccess(kGuestVmpl, 0x61000, Access::kRead));
  CHECK(p.s.mem[0x61000] == 0);

  REQUIRE_OK(svsm.DeleteVmpl0Vcpu(8));
  REQUIRE_CODE(p.s.m.RegisteredVmsa(8, 0), Code::kNotFound);
  REQUIRE_OK(p.s.m.CheckAccess(kGuestVmpl, 0x60000, Access::kWrite));
}
