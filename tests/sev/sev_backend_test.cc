// The SEV-SNP backend end to end: a report made inside the CVM verifies on
// the host against the pinned emulated AMD root and binds the launch
// measurement; a Secure CPC's memory is closed to the guest OS by the RMP.
#include <cstring>

#include <catch2/catch.hpp>
#include <openssl/rand.h>

#include <cpc/policy.h>
#include <cpc/registry.h>

#include "backends/sev/attestation.h"
#include "backends/sev/firmware.h"
#include "backends/sev/snp_abi.h"
#include "emulator/host.h"
#include "test_util.h"

using namespace cpc;
using namespace std::chrono_literals;

namespace {
constexpr uint64_t kMem = 64ull << 20;

struct SevCvm {
  std::unique_ptr<Backend> backend;
  emu::EmulatedBackend* emu = nullptr;
  CvmHandle cvm = 0;

  explicit SevCvm(uint64_t chip_seed = 1) {
    auto f = BackendRegistry::Builtin().Find("sev-snp");
    REQUIRE_OK(f);
    auto b = (*f)->Create({{"chip_seed", std::to_string(chip_seed)}});
    REQUIRE_OK(b);
    backend = std::move(b).value();
    emu = dynamic_cast<emu::EmulatedBackend*>(backend.get());
    TenantPolicy p;
    ModulePolicy attest;
    attest.module = "attest";
    attest.procedures = {"report"};
    p.modules = {attest};
    LaunchConfig c;
    c.memory_bytes = kMem;
    c.gvcpus = 1;
    c.hvcpus = {{0, Isolation::kPlain}, {1, Isolation::kSecure}};
    c.policy = p.Serialize();
    auto h = backend->LaunchCvm(c);
    REQUIRE_OK(h);
    cvm = *h;
  }
  ~SevCvm() { (void)backend->DestroyCvm(cvm); }

  std::vector<uint8_t> Report(const std::array<uint8_t, 64>& data) {
    auto token = backend->RequestToken(cvm, {"attest", "report", {}});
    REQUIRE_OK(token);
    HvcpuEntry e;
    e.module = "attest";
    e.procedure = "report";
    e.token = *token;
    e.args.assign(data.begin(), data.end());
    auto exit = backend->ScheduleHvcpu(cvm, 0, e);
    REQUIRE_OK(exit);
    REQUIRE_OK(exit->status);
    return exit->output;
  }
};

sev::CertChain ChainOf(uint64_t chip_seed) {
  auto fw = sev::SnpFirmware::Create(sev::ChipConfig::FromSeed(chip_seed));
  REQUIRE_OK(fw);
  return (*fw)->cert_chain();
}
}  // namespace

TEST_CASE(
    "sev backend: a report from inside the CVM verifies and binds the launch") {
  SevCvm cvm;
  std::array<uint8_t, 64> nonce;
  RAND_bytes(nonce.data(), 64);
  auto report = cvm.Report(nonce);
  REQUIRE(report.size() == sev::kReportSize);
  auto ark = sev::EmulatedVendor::Create();
  REQUIRE_OK(ark);
  const auto root = ark->ark_public_der();
  sev::ReportExpectations expect;
  expect.report_data = nonce;
  expect.vmpl = 0;  // made by the CPC runtime at VMPL0
  REQUIRE_OK(sev::VerifyReport(report, ChainOf(1), root, expect));
  // The report's measurement is the one the launch produced.
  auto decoded = sev::AttestationReport::Decode(report);
  REQUIRE_OK(decoded);
  auto info = cvm.emu->Info(cvm.cvm);
  REQUIRE_OK(info);
  REQUIRE(Sha256(decoded->measurement) == info->identity.measurement);

  // Tampering anywhere in the signed area, a wrong nonce, another chip's
  // certificate chain: all refused.
  auto bad = report;
  bad[sev::report_off::kMeasurement] ^= 1;
  REQUIRE_CODE(sev::VerifyReport(bad, ChainOf(1), root, {}),
               Code::kReportBadSignature);
  sev::ReportExpectations stale = expect;
  (*stale.report_data)[0] ^= 1;
  REQUIRE_CODE(sev::VerifyReport(report, ChainOf(1), root, stale),
               Code::kReportDataMismatch);
  REQUIRE_FALSE(sev::VerifyReport(report, ChainOf(2), root, {}).ok());
}

TEST_CASE(
    "sev backend: two chips, same image and policy: same measurement, own "
    "keys") {
  SevCvm a(1), b(2);
  std::array<uint8_t, 64> nonce{};
  auto ra = sev::AttestationReport::Decode(a.Report(nonce));
  auto rb = sev::AttestationReport::Decode(b.Report(nonce));
  REQUIRE_OK(ra);
  REQUIRE_OK(rb);
  REQUIRE(ra->measurement == rb->measurement);
  REQUIRE(ra->chip_id != rb->chip_id);
}

TEST_CASE("sev backend: Secure-CPC memory is revoked from VMPL2 by RMPADJUST") {
  SevCvm cvm;
  auto info = cvm.emu->Info(cvm.cvm);
  REQUIRE_OK(info);
  REQUIRE(info->hvcpu_isolation[1] == Isolation::kSecure);
  // hvCPU 1's private pages (see sev_platform.cc's CPC region layout).
  const Gpa secure = info->cpc_base + (8 + 64 + 16 + 1 * 16) * kPageSize;
  for (Gpa g = secure; g < secure + 16 * kPageSize; g += 4 * kPageSize) {
    auto s = cvm.emu->GuestOsAccess(cvm.cvm, g, true);
    INFO(s.ToString());
    REQUIRE(s.code() == Code::kPermissionDenied);
    REQUIRE((s.subcode() & sev::kNpfRmp) != 0);
    REQUIRE((s.subcode() & sev::kNpfVmpl) != 0);
  }
  // The guest OS's own memory is fine.
  REQUIRE_OK(cvm.emu->GuestOsAccess(cvm.cvm, info->cpc_base - kPageSize, true));
}
