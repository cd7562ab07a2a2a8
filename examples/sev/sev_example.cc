// A VMM-style walk through libcpc on the emulated AMD SEV-SNP platform:
// launch a CVM running a workload, add an hvCPU (SVSM CREATE_VCPU at VMPL0),
// ask the guest's agent for a token, run the page-hash audit module on the
// hvCPU under the confidential abort protocol, and verify an attestation
// report made inside the CVM against the (emulated) AMD root.
//
//   cpc-example-sev [--memory-mib N] [--dirty-mib-s R]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <fmt/format.h>
#include <openssl/rand.h>

#include <cpc/fmt.h>
#include <cpc/policy.h>
#include <cpc/registry.h>
#include <cpc/runtime.h>

#include "backends/sev/attestation.h"
#include "backends/sev/firmware.h"
#include "emulator/host.h"
#include "modules/audit.h"

namespace {

std::string Hex(std::span<const uint8_t> b, size_t n = 16) {
  std::string s;
  for (size_t i = 0; i < std::min(n, b.size()); ++i)
    s += fmt::format("{:02x}", b[i]);
  return s + (b.size() > n ? "..." : "");
}

cpc::Status Run(uint64_t memory_mib, double dirty_mib_s) {
  using namespace std::chrono_literals;
  // 1. The backend, by name (unknown / unavailable / misconfigured differ).
  CPC_ASSIGN_OR_RETURN(auto backend,
                       cpc::BackendRegistry::Builtin().Create("sev-snp", {}));
  auto* emu = dynamic_cast<cpc::emu::EmulatedBackend*>(backend.get());

  // 2. The tenant policy: part of the launch measurement.
  cpc::TenantPolicy policy;
  cpc::ModulePolicy audit{
      "audit", {"digest"}, cpc::Isolation::kPlain, {memory_mib << 20, 60'000},
      0,       0};
  cpc::ModulePolicy attest{"attest", {"report"}, cpc::Isolation::kPlain,
                           {},       0,          0};
  policy.modules = {audit, attest};

  cpc::LaunchConfig config;
  config.memory_bytes = memory_mib << 20;
  config.gvcpus = 2;
  config.hvcpus = {{0, cpc::Isolation::kPlain}};
  config.policy = policy.Serialize();
  config.options = {
      {"workload", "dirty"},
      {"dirty_mib_s", fmt::format("{}", dirty_mib_s)},
      {"wss_mib", fmt::format("{}", std::min<uint64_t>(64, memory_mib / 4))}};
  const auto t0 = cpc::Clock::now();
  CPC_ASSIGN_OR_RETURN(cpc::CvmHandle cvm, backend->LaunchCvm(config));
  CPC_ASSIGN_OR_RETURN(auto info, emu->Info(cvm));
  fmt::print(
      "launched SNP CVM pid {}: {} MiB, 2 gvCPUs at VMPL2, measurement {} "
      "({:.0f} ms)\n",
      info.pid, memory_mib, Hex(info.identity.measurement),
      std::chrono::duration<double, std::milli>(cpc::Clock::now() - t0)
          .count());

  // 3. One more hvCPU, added to the running CVM at VMPL0 (SVSM CREATE_VCPU).
  CPC_ASSIGN_OR_RETURN(uint32_t hv,
                       backend->CreateHvcpu(cvm, {1, cpc::Isolation::kSecure}));
  fmt::print("added hvCPU {} (Secure CPC: its memory revoked from VMPL1-3)\n",
             hv);

  // 4. A token, approved by the guest's agent.
  const uint64_t pages = (info.cpc_base) / cpc::kPageSize;
  CPC_ASSIGN_OR_RETURN(
      auto token, backend->RequestToken(
                      cvm, {"audit", "digest", {memory_mib << 20, 60'000}}));
  fmt::print("guest agent issued a {}-byte token\n", token.size());

  // 5. The call, slice by slice, bounded by the abort policy.
  cpc::HvcpuEntry entry;
  entry.module = "audit";
  entry.procedure = "digest";
  entry.token = token;
  entry.args = cpc::AuditArgs(0, pages);
  entry.slice = 5ms;
  cpc::AbortPolicy abort;
  abort.base_time = 2s;
  abort.min_rate_bytes_per_s = 50e6;
  CPC_ASSIGN_OR_RETURN(cpc::CallOutcome out,
                       cpc::DriveCall(
                           [&](const cpc::HvcpuEntry& e) {
                             return backend->ScheduleHvcpu(cvm, hv, e);
                           },
                           entry, abort));
  CPC_RETURN_IF_ERROR(out.status);
  fmt::print(
      "audit.digest over {} pages on hvCPU {}: {} ({} slices, {} preempted, "
      "{:.2f} GB/s)\n",
      pages, hv, Hex(std::span(out.output).first(32), 32), out.stats.entries,
      out.stats.preemptions, out.stats.rate_bytes_per_s / 1e9);

  // 6. Replaying the token is refused by the CVM.
  auto replay = backend->ScheduleHvcpu(cvm, hv, entry);
  if (replay.ok()) fmt::print("replayed token: {}\n", replay->status);

  // 7. Attestation: report made at VMPL0, verified against the pinned root.
  CPC_ASSIGN_OR_RETURN(auto atoken,
                       backend->RequestToken(cvm, {"attest", "report", {}}));
  std::array<uint8_t, 64> nonce;
  RAND_bytes(nonce.data(), 64);
  cpc::HvcpuEntry a;
  a.module = "attest";
  a.procedure = "report";
  a.token = atoken;
  a.args.assign(nonce.begin(), nonce.end());
  CPC_ASSIGN_OR_RETURN(auto exit, backend->ScheduleHvcpu(cvm, 0, a));
  CPC_RETURN_IF_ERROR(exit.status);
  CPC_ASSIGN_OR_RETURN(auto vendor, cpc::sev::EmulatedVendor::Create());
  CPC_ASSIGN_OR_RETURN(auto chip, cpc::sev::SnpFirmware::Create(
                                      cpc::sev::ChipConfig::FromSeed(1)));
  cpc::sev::ReportExpectations expect;
  expect.report_data = nonce;
  expect.vmpl = 0;
  CPC_RETURN_IF_ERROR(cpc::sev::VerifyReport(exit.output, chip->cert_chain(),
                                             vendor.ark_public_der(), expect));
  CPC_ASSIGN_OR_RETURN(auto report,
                       cpc::sev::AttestationReport::Decode(exit.output));
  fmt::print(
      "attestation report ({} bytes) verified: ARK -> ASK -> VCEK, measurement "
      "{}\n",
      exit.output.size(), Hex(report.measurement));
  return backend->DestroyCvm(cvm);
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t memory_mib = 256;
  double dirty = 32;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--memory-mib") == 0)
      memory_mib = std::strtoull(argv[i + 1], nullptr, 10);
    else if (std::strcmp(argv[i], "--dirty-mib-s") == 0)
      dirty = std::strtod(argv[i + 1], nullptr);
  }
  cpc::Status s = Run(memory_mib, dirty);
  if (!s.ok()) {
    fmt::print(stderr, "cpc-example-sev: {}\n", s);
    return 1;
  }
  return 0;
}
