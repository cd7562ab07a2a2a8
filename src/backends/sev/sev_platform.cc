#include "backends/sev/sev_platform.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cpc/policy.h>

#include "backends/sev/attestation.h"
#include "backends/sev/firmware.h"
#include "backends/sev/ghcb.h"
#include "backends/sev/snp_machine.h"
#include "backends/sev/svsm.h"
#include "backends/sev/vmsa.h"
#include "core/bytes.h"
#include "emulator/memory.h"

CPC_NAMESPACE_BEGIN

namespace {
using namespace sev;

constexpr uint32_t kAsid = 1;
constexpr uint32_t kGuestVmpl = 2;
constexpr uint32_t kMaxGvcpus = 64;
constexpr uint32_t kMaxHvcpus = 16;
constexpr uint32_t kHvApicBase = 128;  // APIC IDs of hvCPUs
// CPC region layout, in pages from cpc_base.
constexpr uint64_t kSecretsPage = 0;
constexpr uint64_t kImagePage = 2;  // the measured launch inputs
constexpr uint64_t kGvVmsaPage = 8;
constexpr uint64_t kHvVmsaPage = kGvVmsaPage + kMaxGvcpus;
constexpr uint64_t kSecureMemPage = kHvVmsaPage + kMaxHvcpus;
constexpr uint64_t kSecurePagesPerHvcpu = 16;

Vmsa ToVmsa(const emu::VcpuRegs& r, uint8_t vmpl, uint64_t features) {
  Vmsa v;
  v.vmpl = vmpl;
  for (int i = 0; i < kGprCount; ++i) v.gpr[i] = r.gpr[i];
  v.rip = r.rip;
  v.rflags = r.rflags;
  v.cr0 = r.cr0;
  v.cr3 = r.cr3;
  v.cr4 = r.cr4;
  v.efer = r.efer | kEferSvme;
  v.sev_features = features;
  return v;
}

emu::VcpuRegs FromVmsa(const Vmsa& v) {
  emu::VcpuRegs r;
  for (int i = 0; i < kGprCount; ++i) r.gpr[i] = v.gpr[i];
  r.rip = v.rip;
  r.rflags = v.rflags;
  r.cr0 = v.cr0;
  r.cr3 = v.cr3;
  r.cr4 = v.cr4;
  r.efer = v.efer & ~kEferSvme;
  return r;
}

class SevPlatform final : public emu::EmulatedPlatform {
 public:
  Status Launch(emu::GuestMemory* memory, Gpa cpc_base,
                const emu::LaunchInfo& info) override {
    if (info.gvcpus == 0 || info.gvcpus > kMaxGvcpus ||
        info.hvcpus.size() > kMaxHvcpus)
      return Status(Code::kInvalidArgument,
                    "too many vCPUs for the SNP layout");
    if ((memory->size() - cpc_base) / kPageSize <
        kSecureMemPage + kMaxHvcpus * kSecurePagesPerHvcpu)
      return Status(Code::kInvalidArgument, "CPC region too small");
    mem_ = memory;
    cpc_base_ = cpc_base;
    gvcpus_ = info.gvcpus;
    machine_ = std::make_unique<SnpMachine>(
        sev::GuestMemory{memory->base(), memory->size()}, kAsid);
    CPC_ASSIGN_OR_RETURN(
        firmware_, SnpFirmware::Create(ChipConfig::FromSeed(info.chip_seed)));
    // The host assigns every page to the guest (RMPUPDATE), as KVM does
    // for guest_memfd memory.
    for (Gpa gpa = 0; gpa < memory->size(); gpa += kPageSize)
      CPC_RETURN_IF_ERROR(
          machine_->RmpUpdate(gpa, {true, PageSize::k4K, false, gpa, kAsid}));

    sev::LaunchParams lp;
    snp_policy_ = lp.policy;
    std::memcpy(lp.image_id.data(), info.image_digest.data(), 16);
    const Digest pd = Sha256(info.policy);
    std::memcpy(lp.host_data.data(), pd.data(), 32);
    CPC_RETURN_IF_ERROR(firmware_->LaunchStart(machine_.get(), lp));
    // The measured "image": image digest, policy digest, vCPU configuration.
    uint8_t* img = memory->At(Page(kImagePage));
    std::memset(img, 0, kPageSize);
    std::vector<uint8_t> inputs;
    ByteWriter w(&inputs);
    w.Bytes(info.image_digest);
    w.Bytes(pd);
    w.Int<uint32_t>(info.gvcpus);
    w.Int<uint32_t>(static_cast<uint32_t>(info.hvcpus.size()));
    for (const auto& h : info.hvcpus) {
      w.Int<uint32_t>(h.index);
      w.Int<uint8_t>(static_cast<uint8_t>(h.isolation));
    }
    std::memcpy(img, inputs.data(), inputs.size());
    CPC_RETURN_IF_ERROR(
        firmware_->LaunchUpdate(Page(kImagePage), LaunchPageType::kNormal));
    CPC_RETURN_IF_ERROR(
        firmware_->LaunchUpdate(Page(kSecretsPage), LaunchPageType::kSecrets));
    if (info.gvcpu_regs.size() != info.gvcpus)
      return Status(Code::kInvalidArgument,
                    "one initial register set per gvCPU");
    for (uint32_t i = 0; i < info.gvcpus; ++i) {
      const Gpa gpa = Page(kGvVmsaPage + i);
      ToVmsa(info.gvcpu_regs[i], kGuestVmpl, machine_->sev_features())
          .WriteTo(std::span<uint8_t, kPageSize>(mem_->At(gpa), kPageSize));
      CPC_RETURN_IF_ERROR(firmware_->LaunchUpdate(gpa, LaunchPageType::kVmsa));
    }
    return FinishLaunch();
  }

  CvmIdentity identity() const override { return identity_; }

  Result<Isolation> CreateHvcpu(const HvcpuConfig& config, bool) override {
    // SEV-SNP adds VMPL0 vCPUs at any time through the SVSM protocol.
    if (config.index >= kMaxHvcpus)
      return Status(
          Code::kInvalidArgument,
          fmt::format("hvCPU index {} >= {}", config.index, kMaxHvcpus));
    Vmsa v;
    v.vmpl = 0;
    v.efer = 0xd01 | kEferSvme;
    v.cr0 = 0x80050033;
    v.cr4 = 0x3506f0;
    v.rip = 0xffffffff80000000ull;  // the CPC runtime's entry
    v.sev_features = machine_->sev_features();
    CPC_RETURN_IF_ERROR(svsm_->CreateVmpl0Vcpu(
        kHvApicBase + config.index, Page(kHvVmsaPage + config.index), v));
    // Each hvCPU owns a slice of CPC memory; a Secure CPC's is isolated
    // from every lower VMPL by RMPADJUST (the SVSM also refuses guest
    // requests that touch it).
    if (config.isolation == Isolation::kSecure)
      CPC_RETURN_IF_ERROR(IsolateSecureCpc(
          config.index,
          {Page(kSecureMemPage + config.index * kSecurePagesPerHvcpu),
           kSecurePagesPerHvcpu}));
    return config.isolation;
  }

  Status CheckGuestOsAccess(Gpa gpa, bool write) const override {
    return machine_->CheckAccess(kGuestVmpl, gpa,
                                 write ? Access::kWrite : Access::kRead);
  }

  Status SaveVcpu(uint32_t vcpu, const emu::VcpuRegs& regs) override {
    // #VMEXIT: the hardware writes the registers into the VMSA.
    const Gpa gpa = Page(kGvVmsaPage + vcpu);
    std::span<uint8_t, kPageSize> page(mem_->At(gpa), kPageSize);
    Vmsa v = Vmsa::Parse(page);
    const Vmsa fresh = ToVmsa(regs, kGuestVmpl, machine_->sev_features());
    v.gpr = fresh.gpr;
    v.rip = fresh.rip;
    v.rflags = fresh.rflags;
    v.cr0 = fresh.cr0;
    v.cr3 = fresh.cr3;
    v.cr4 = fresh.cr4;
    v.efer = fresh.efer;
    v.WriteTo(page);
    return machine_->VmrunEnd(vcpu, kGuestVmpl);
  }

  Result<emu::VcpuRegs> LoadVcpu(uint32_t vcpu) override {
    // VMRUN: the model checks the VMSA page (RMP, VMSA bit, SVME, VMPL).
    CPC_ASSIGN_OR_RETURN(Gpa gpa, machine_->VmrunBegin(vcpu, kGuestVmpl));
    return FromVmsa(Vmsa::Parse(
        std::span<const uint8_t, kPageSize>(mem_->At(gpa), kPageSize)));
  }

  std::vector<ProbeFact> Probe() const override { return SevProbe(); }

  // ---- GuestPlatform: what the CPC runtime at VMPL0 may do ----
  uint64_t memory_bytes() const override { return mem_->size(); }
  uint32_t vcpu_count() const override { return gvcpus_; }
  GpaRange GuestOsMemory() const override { return {0, cpc_base_ / kPageSize}; }

  Result<std::span<const uint8_t>> PrivatePageForRead(Gpa gpa) override {
    CPC_ASSIGN_OR_RETURN(uint8_t * p,
                         machine_->GuestPage(0, gpa, Access::kRead));
    return std::span<const uint8_t>(p, kPageSize);
  }
  Result<std::span<uint8_t>> PrivatePageForWrite(Gpa gpa) override {
    CPC_ASSIGN_OR_RETURN(uint8_t * p,
                         machine_->GuestPage(0, gpa, Access::kWrite));
    return std::span<uint8_t>(p, kPageSize);
  }
  Result<std::vector<uint8_t>> ExportVcpuState(uint32_t vcpu) override {
    if (vcpu >= gvcpus_) return Status(Code::kInvalidArgument, "no such gvCPU");
    return svsm_->ExportVcpuState(vcpu, kGuestVmpl);
  }
  Status ImportVcpuState(uint32_t vcpu,
                         std::span<const uint8_t> state) override {
    if (vcpu >= gvcpus_) return Status(Code::kInvalidArgument, "no such gvCPU");
    return svsm_->ImportVcpuState(vcpu, kGuestVmpl, state);
  }
  Status IsolateSecureCpc(uint32_t, GpaRange range) override {
    return svsm_->Isolate(range);
  }
  Status PageStateChange(GpaRange range, PageState state) override {
    std::lock_guard<std::mutex> lock(ghcb_mu_);
    GhcbPage ghcb(std::span<uint8_t, kPageSize>(ghcb_mem_.data(), kPageSize));
    return state == PageState::kShared
               ? ConvertToShared(*machine_, ghcb, host_, range)
               : ConvertToPrivate(*machine_, ghcb, host_, range);
  }
  Result<std::vector<uint8_t>> AttestationReport(
      std::span<const uint8_t, 64> report_data) override {
    std::lock_guard<std::mutex> lock(msg_mu_);
    return messenger_->GetReport(report_data, 0);
  }
  Result<SecretBytes> SealingKey(std::span<const uint8_t> context) override {
    std::lock_guard<std::mutex> lock(msg_mu_);
    return messenger_->SealingKey(context, 0);
  }
  Result<std::vector<uint8_t>> AttestationEvidence(
      std::span<const uint8_t, 64> report_data) override {
    Evidence e;
    CPC_ASSIGN_OR_RETURN(e.report, AttestationReport(report_data));
    // What the host would fetch from AMD's KDS for this chip.
    e.chain = firmware_->cert_chain();
    return e.Encode();
  }
  Status VerifyPeerEvidence(std::span<const uint8_t> evidence,
                            std::span<const uint8_t, 64> report_data) override {
    // A peer is this CVM on another (genuine) chip of the same vendor: the
    // same launch digest and guest policy, a VMPL0 report, our report_data.
    CPC_ASSIGN_OR_RETURN(std::vector<uint8_t> ark, DefaultArkSpki());
    ReportExpectations expect;
    expect.measurement = launch_digest_;
    expect.policy = snp_policy_;
    expect.vmpl = 0;
    ReportData rd;
    std::copy(report_data.begin(), report_data.end(), rd.begin());
    expect.report_data = rd;
    return VerifyEvidence(evidence, ark, expect);
  }

 private:
  Gpa Page(uint64_t n) const { return cpc_base_ + n * kPageSize; }

  Status FinishLaunch() {
    CPC_RETURN_IF_ERROR(firmware_->LaunchFinish());
    CPC_ASSIGN_OR_RETURN(Measurement ld, firmware_->measurement());
    launch_digest_ = ld;
    identity_.measurement = Sha256(ld);
    RAND_bytes(identity_.instance_id.data(), 16);

    // VMPL0 (the SVSM role, here the CPC runtime) accepts the rest of guest
    // memory and hands the guest OS area to VMPL2; the CPC region stays
    // VMPL0's. Launch-updated pages are already validated.
    for (Gpa gpa = 0; gpa < mem_->size(); gpa += kPageSize) {
      CPC_ASSIGN_OR_RETURN(bool changed,
                           machine_->Pvalidate(0, gpa, PageSize::k4K, true));
      (void)changed;
      if (gpa < cpc_base_)
        CPC_RETURN_IF_ERROR(machine_->Rmpadjust(
            0, gpa, PageSize::k4K,
            SnpMachine::RmpadjustRdx(kGuestVmpl, kPermAll)));
    }
    host_ = [this](GhcbPage& g) { return HostHandleVmgexit(*machine_, g); };
    std::set<uint32_t> apics;
    for (uint32_t i = 0; i < gvcpus_; ++i) apics.insert(i);
    for (uint32_t i = 0; i < kMaxHvcpus; ++i) apics.insert(kHvApicBase + i);
    svsm_ =
        std::make_unique<SvsmCore>(machine_.get(), kGuestVmpl, apics, host_);
    for (uint32_t i = 0; i < gvcpus_; ++i) {
      const Gpa vmsa = Page(kGvVmsaPage + i);
      CPC_RETURN_IF_ERROR(svsm_->RegisterLaunchVmsa(i, kGuestVmpl, vmsa, 0));
      // KVM learns launch VMSAs from SNP_LAUNCH_UPDATE.
      CPC_RETURN_IF_ERROR(machine_->HandleApCreation(
          kApCreate | (uint64_t{kGuestVmpl} << 16) | (uint64_t{i} << 32), vmsa,
          machine_->sev_features()));
    }
    CPC_ASSIGN_OR_RETURN(
        auto page, machine_->GuestPage(0, Page(kSecretsPage), Access::kRead));
    // The firmware's messages go through the host (SNP_GUEST_REQUEST); in
    // this emulation the firmware lives beside the guest, so the relay is a
    // call, but the messages are the encrypted, sequence-numbered ones.
    SnpFirmware* fw = firmware_.get();
    CPC_ASSIGN_OR_RETURN(
        GuestMessenger m,
        GuestMessenger::FromSecretsPage(
            std::span<const uint8_t, kPageSize>(page, kPageSize), 0,
            [fw](std::span<const uint8_t> req) {
              return fw->GuestRequest(req);
            }));
    messenger_.emplace(std::move(m));
    return Status::Ok();
  }

  emu::GuestMemory* mem_ = nullptr;
  Gpa cpc_base_ = 0;
  uint32_t gvcpus_ = 0;
  uint64_t snp_policy_ = 0;
  Measurement launch_digest_{};
  CvmIdentity identity_;
  std::unique_ptr<SnpMachine> machine_;
  std::unique_ptr<SnpFirmware> firmware_;
  std::unique_ptr<SvsmCore> svsm_;
  VmgexitChannel host_;
  // The GHCB: shared with the host in a real guest; the emulated host side
  // (HostHandleVmgexit) runs in-process, so a private buffer stands in.
  std::mutex ghcb_mu_;
  std::vector<uint8_t> ghcb_mem_ = std::vector<uint8_t>(kPageSize, 0);
  std::mutex msg_mu_;
  std::optional<GuestMessenger> messenger_;
};
}  // namespace

std::unique_ptr<emu::EmulatedPlatform> MakeSevPlatform() {
  return std::make_unique<SevPlatform>();
}

std::vector<ProbeFact> SevProbe() {
  std::vector<ProbeFact> facts;
  auto fw = SnpFirmware::Create(ChipConfig::FromSeed(1));
  if (!fw.ok()) {
    facts.push_back(
        {"emulated AMD-SP (SNP firmware)", false, fw.status().ToString()});
    return facts;
  }
  facts.push_back({"emulated AMD-SP (SNP firmware)", true,
                   "RMP + VMPL0-3, SVSM core protocol, VCEK-signed reports"});
  auto vendor = EmulatedVendor::Create();
  const bool pinned =
      vendor.ok() && vendor->ark_public_der() == (*fw)->ark_public_der();
  facts.push_back(
      {"VCEK chain to the pinned emulated ARK", pinned,
       pinned ? "ECDSA P-384 ARK -> ASK -> VCEK" : "root mismatch"});
  return facts;
}

CPC_NAMESPACE_END
