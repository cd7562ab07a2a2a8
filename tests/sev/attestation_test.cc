// Launch measurement, guest messages, derived keys and report verification.
#include "backends/sev/attestation.h"

#include <cstring>

#include "backends/sev/firmware.h"
#include "core/bytes.h"
#include "sev/sev_fixture.h"

using namespace cpc;
using namespace cpc::sev;
using cpc_test::kAsid;
using cpc_test::SevMachine;

namespace {
constexpr Gpa kSecretsGpa = 0x8000;

// A launched guest: pages 0..3 image (measured), page 8 secrets.
struct Guest {
  explicit Guest(uint64_t chip_seed, uint8_t image_byte = 0x42,
                 uint64_t policy = kPolicyReservedMbo | kPolicySmt) {
    auto f = SnpFirmware::Create(ChipConfig::FromSeed(chip_seed));
    REQUIRE_OK(f);
    fw = std::move(*f);
    LaunchParams lp;
    lp.policy = policy;
    lp.host_data[0] = 0xEE;
    REQUIRE_OK(fw->LaunchStart(&s.m, lp));
    for (Gpa g = 0; g < 4 * kPageSize; g += kPageSize) {
      std::memset(s.mem.data() + g, image_byte, kPageSize);
      REQUIRE_OK(s.m.RmpUpdate(g, {true, PageSize::k4K, false, g, kAsid}));
      REQUIRE_OK(
          fw->LaunchUpdate(g, LaunchPageType::kNormal, {0, kPermAll, 0}));
    }
    REQUIRE_OK(s.m.RmpUpdate(kSecretsGpa,
                             {true, PageSize::k4K, false, kSecretsGpa, kAsid}));
    REQUIRE_OK(fw->LaunchUpdate(kSecretsGpa, LaunchPageType::kSecrets));
    REQUIRE_OK(fw->LaunchFinish());
  }
  GuestMessenger Messenger(uint8_t vmpck) {
    auto page = s.m.GuestPage(0, kSecretsGpa, Access::kRead);
    REQUIRE_OK(page);
    auto m = GuestMessenger::FromSecretsPage(
        std::span<const uint8_t, kPageSize>(*page, kPageSize), vmpck,
        [this](std::span<const uint8_t> req) { return fw->GuestRequest(req); });
    REQUIRE_OK(m);
    return std::move(*m);
  }
  SevMachine s{64};
  std::unique_ptr<SnpFirmware> fw;
};

ReportData Data(uint8_t b) {
  ReportData d;
  d.fill(b);
  return d;
}
}  // namespace

TEST_CASE("sev.attest: report layout, signature and chain", "[sev]") {
  Guest g(1);
  auto msgr = g.Messenger(0);
  ReportData rd = Data(0x5C);
  auto rep = msgr.GetReport(rd, 0);
  REQUIRE_OK(rep);
  const std::vector<uint8_t>& r = *rep;
  REQUIRE(r.size() == 0x4A0);
  auto meas = g.fw->measurement();
  REQUIRE_OK(meas);
  CHECK(std::memcmp(r.data() + 0x50, rd.data(), 64) == 0);
  CHECK(std::memcmp(r.data() + 0x90, meas->data(), 48) == 0);
  CHECK(std::memcmp(r.data() + 0x1A0, g.fw->chip_id().data(), 64) == 0);
  CHECK(LoadLe<uint32_t>(r.data() + 0x00) == 2);  // version
  CHECK(LoadLe<uint32_t>(r.data() + 0x34) == 1);  // ECDSA P-384 SHA-384
  CHECK(LoadLe<uint64_t>(r.data() + 0x08) == (kPolicyReservedMbo | kPolicySmt));
  CHECK(r[0xC0] == 0xEE);  // host_data
  auto dec = AttestationReport::Decode(r);
  REQUIRE_OK(dec);
  CHECK(dec->report_data == rd);

  auto root = EmulatedVendor::Create();
  REQUIRE_OK(root);
  auto anchor = root->ark_public_der();
  CHECK(anchor == g.fw->ark_public_der());  // deterministic vendor root
  ReportExpectations ex;
  ex.measurement = *meas;
  ex.report_data = rd;
  ex.policy = kPolicyReservedMbo | kPolicySmt;
  ex.vmpl = 0;
  ex.chip_id = g.fw->chip_id();
  REQUIRE_OK(VerifyReport(r, g.fw->cert_chain(), anchor, ex));

  SECTION("a flipped bit anywhere in the signed area fails") {
    for (size_t off = 0; off < kReportSignedSize; off += 7) {
      std::vector<uint8_t> t = r;
      t[off] ^= 0x10;
      INFO("offset " << off);
      REQUIRE_CODE(VerifyReport(t, g.fw->cert_chain(), anchor),
                   Code::kReportBadSignature);
    }
    std::vector<uint8_t> t = r;
    t[report_off::kSignatureS + 3] ^= 1;
    REQUIRE_CODE(VerifyReport(t, g.fw->cert_chain(), anchor),
                 Code::kReportBadSignature);
  }
  SECTION("expectations") {
    ReportExpectations e2 = ex;
    (*e2.measurement)[0] ^= 1;
    REQUIRE_FAULT(VerifyReport(r, g.fw->cert_chain(), anchor, e2),
                  Code::kMeasurementMismatch, 0x90);
    e2 = ex;
    e2.report_data = Data(0x5D);
    REQUIRE_CODE(VerifyReport(r, g.fw->cert_chain(), anchor, e2),
                 Code::kReportDataMismatch);
    e2 = ex;
    e2.vmpl = 2;
    REQUIRE_CODE(VerifyReport(r, g.fw->cert_chain(), anchor, e2),
                 Code::kMeasurementMismatch);
  }
  SECTION("another chip, another root") {
    Guest other(2);
    auto r2 = other.Messenger(0).GetReport(rd, 0);
    REQUIRE_OK(r2);
    // Same vendor: verifies with its own chain, but its chip_id differs.
    REQUIRE_OK(VerifyReport(*r2, other.fw->cert_chain(), anchor));
    ReportExpectations e2;
    e2.chip_id = g.fw->chip_id();
    REQUIRE_CODE(VerifyReport(*r2, other.fw->cert_chain(), anchor, e2),
                 Code::kMeasurementMismatch);
    // Presented with the first chip's VCEK it does not verify.
    REQUIRE_CODE(VerifyReport(*r2, g.fw->cert_chain(), anchor),
                 Code::kReportBadSignature);
    // A chain from another vendor root is refused.
    ChipConfig cc = ChipConfig::FromSeed(1);
    cc.vendor_seed = {1, 2, 3};
    auto rogue = SnpFirmware::Create(cc);
    REQUIRE_OK(rogue);
    REQUIRE_CODE(VerifyReport(r, (*rogue)->cert_chain(), anchor),
                 Code::kReportBadChain);
    CertChain mixed = g.fw->cert_chain();
    mixed.ask = (*rogue)->cert_chain().ask;
    REQUIRE_CODE(VerifyReport(r, mixed, anchor), Code::kReportBadChain);
  }
}

TEST_CASE("sev.attest: launch digest follows PAGE_INFO chaining", "[sev]") {
  Guest a(1), b(1), c(1, 0x43);
  CHECK(*a.fw->measurement() == *b.fw->measurement());
  CHECK(*a.fw->measurement() != *c.fw->measurement());
  // Launched pages are validated with the requested VMPL2 permissions.
  REQUIRE_OK(a.s.m.CheckAccess(2, 0x1000, Access::kWrite));
  REQUIRE_CODE(a.s.m.CheckAccess(1, 0x1000, Access::kRead),
               Code::kPermissionDenied);
  // Wrong state / policy.
  REQUIRE_FAULT(a.fw->LaunchUpdate(0x9000, LaunchPageType::kNormal),
                Code::kPlatformError, kSevInvalidGuestState);
  auto fw = SnpFirmware::Create(ChipConfig::FromSeed(3));
  REQUIRE_OK(fw);
  LaunchParams lp;
  lp.policy = kPolicySmt;  // bit 17 clear
  REQUIRE_FAULT((*fw)->LaunchStart(&a.s.m, lp), Code::kPlatformError,
                kSevPolicyFailure);
}

TEST_CASE("sev.attest: derived keys", "[sev]") {
  Guest a(1), b(1), other_image(1, 0x43), other_chip(2);
  const uint8_t ctx[] = {'s', 'n', 'a', 'p'};
  auto ka = a.Messenger(0).SealingKey(ctx, 0);
  auto kb = b.Messenger(0).SealingKey(ctx, 0);
  auto ki = other_image.Messenger(0).SealingKey(ctx, 0);
  auto kc = other_chip.Messenger(0).SealingKey(ctx, 0);
  REQUIRE_OK(ka);
  REQUIRE_OK(kb);
  REQUIRE_OK(ki);
  REQUIRE_OK(kc);
  CHECK(ConstantTimeEqual(ka->span(), kb->span()));        // same image + chip
  CHECK_FALSE(ConstantTimeEqual(ka->span(), ki->span()));  // measurement
  CHECK_FALSE(ConstantTimeEqual(ka->span(), kc->span()));  // chip
  const uint8_t ctx2[] = {'l', 'o', 'g'};
  auto kx = a.Messenger(1).SealingKey(ctx2, 1);
  REQUIRE_OK(kx);
  CHECK_FALSE(ConstantTimeEqual(ka->span(), kx->span()));
  // Measurement not selected: the key ignores the image.
  KeyRequest q;
  q.guest_field_select = field_select::kPolicy;
  auto k1 = a.fw->DerivedKey(q, 0);
  auto k2 = other_image.fw->DerivedKey(q, 0);
  REQUIRE_OK(k1);
  REQUIRE_OK(k2);
  CHECK(ConstantTimeEqual(k1->span(), k2->span()));
  // Firmware rules.
  q.vmpl = 0;
  REQUIRE_FAULT(a.fw->DerivedKey(q, 1), Code::kPlatformError, kSevInvalidParam);
  q.vmpl = 1;
  q.tcb_version = TcbVersion{9, 9, 9, 200}.Raw();
  REQUIRE_FAULT(a.fw->DerivedKey(q, 1), Code::kPlatformError, kSevInvalidParam);
  q.tcb_version = 0;
  q.root_key_select = 1;  // VMRK
  REQUIRE_FAULT(a.fw->DerivedKey(q, 1), Code::kPlatformError, kSevInvalidParam);
}

TEST_CASE("sev.attest: guest message rules", "[sev]") {
  Guest g(1);
  SECTION("a VMPCK2 caller cannot get a VMPL0 report") {
    auto m = g.Messenger(2);
    REQUIRE_FAULT(m.GetReport(Data(1), 0), Code::kPlatformError,
                  kSevInvalidParam);
    auto rep = m.GetReport(Data(1), 2);  // sequence continues after refusal
    REQUIRE_OK(rep);
    CHECK(LoadLe<uint32_t>(rep->data() + 0x30) == 2);
  }
  SECTION("replayed, tampered and forged messages are refused") {
    std::vector<uint8_t> captured;
    auto page = g.s.m.GuestPage(0, kSecretsGpa, Access::kRead);
    auto m = GuestMessenger::FromSecretsPage(
        std::span<const uint8_t, kPageSize>(*page, kPageSize), 0,
        [&](std::span<const uint8_t> req) {
          captured.assign(req.begin(), req.end());
          return g.fw->GuestRequest(req);
        });
    REQUIRE_OK(m);
    REQUIRE_OK(m->GetReport(Data(2), 0));
    REQUIRE_FAULT(g.fw->GuestRequest(captured), Code::kPlatformError,
                  kSevInvalidParam);  // replay: old sequence number
    std::vector<uint8_t> t = captured;
    StoreLe<uint64_t>(t.data() + 0x20, 3);  // next seqno, but tag now wrong
    REQUIRE_FAULT(g.fw->GuestRequest(t), Code::kPlatformError,
                  kSevInvalidParam);
    // A host answering with its own bytes is caught by the guest.
    auto forged = GuestMessenger::FromSecretsPage(
        std::span<const uint8_t, kPageSize>(*page, kPageSize), 1,
        [&](std::span<const uint8_t> req) -> Result<std::vector<uint8_t>> {
          auto rsp = g.fw->GuestRequest(req);
          if (rsp.ok()) (*rsp)[0x70] ^= 1;
          return rsp;
        });
    REQUIRE_CODE(forged->GetReport(Data(3), 1), Code::kAuthFailed);
  }
  SECTION("a wiped VMPCK cannot be used") {
    uint8_t* sp = g.s.mem.data() + kSecretsGpa;
    std::memset(sp + secrets_off::kVmpck0, 0, 32);
    auto m = GuestMessenger::FromSecretsPage(
        std::span<const uint8_t, kPageSize>(sp, kPageSize), 0,
        [&](std::span<const uint8_t> r) { return g.fw->GuestRequest(r); });
    REQUIRE_CODE(m, Code::kFailedPrecondition);
  }
}

TEST_CASE("sev.attest: peer evidence encoding and verification", "[sev]") {
  Guest a(1), b(2);  // the same guest on two chips of the same vendor
  const ReportData rd = Data(0x33);
  auto rep = a.Messenger(0).GetReport(rd, 0);
  REQUIRE_OK(rep);
  Evidence e{*rep, a.fw->cert_chain()};
  const std::vector<uint8_t> enc = e.Encode();
  REQUIRE(LoadLe<uint32_t>(enc.data()) == kEvidenceMagic);
  REQUIRE(LoadLe<uint32_t>(enc.data() + 4) == kEvidenceVersion);
  REQUIRE(std::memcmp(enc.data() + kEvidenceReportOffset, rep->data(),
                      kReportSize) == 0);
  auto dec = Evidence::Decode(enc);
  REQUIRE_OK(dec);
  REQUIRE(dec->report == *rep);
  REQUIRE(dec->chain.vcek == a.fw->cert_chain().vcek);

  auto ark = DefaultArkSpki();
  REQUIRE_OK(ark);
  auto meas = b.fw->measurement();
  REQUIRE_OK(meas);
  ReportExpectations ex;
  ex.measurement = *meas;
  ex.policy = kPolicyReservedMbo | kPolicySmt;
  ex.report_data = rd;
  ex.vmpl = 0;
  REQUIRE_OK(VerifyEvidence(enc, *ark, ex));

  // Malformed: every truncation, trailing bytes, wrong magic / version,
  // a report of the wrong size, an absurd length.
  for (size_t n = 0; n < enc.size(); n += 97)
    REQUIRE_CODE(Evidence::Decode(std::span(enc).first(n)),
                 Code::kInvalidArgument);
  auto bad = enc;
  bad.push_back(0);
  REQUIRE_CODE(VerifyEvidence(bad, *ark, ex), Code::kInvalidArgument);
  for (size_t off : {size_t{0}, size_t{4}, size_t{8}, size_t{11}}) {
    bad = enc;
    bad[off] ^= 0x01;
    INFO("offset " << off);
    REQUIRE_CODE(VerifyEvidence(bad, *ark, ex), Code::kInvalidArgument);
  }
  // Tampering with the report or the chain.
  bad = enc;
  bad[kEvidenceReportOffset + report_off::kPolicy] ^= 0x01;
  REQUIRE_CODE(VerifyEvidence(bad, *ark, ex), Code::kReportBadSignature);
  ChipConfig cc = ChipConfig::FromSeed(1);
  cc.vendor_seed = {9, 9, 9};
  auto rogue = SnpFirmware::Create(cc);
  REQUIRE_OK(rogue);
  REQUIRE_CODE(
      VerifyEvidence(Evidence{*rep, (*rogue)->cert_chain()}.Encode(), *ark, ex),
      Code::kReportBadChain);
  // Another guest (image) or another challenge.
  Guest other_image(2, 0x43);
  auto other_meas = other_image.fw->measurement();
  REQUIRE_OK(other_meas);
  ReportExpectations e2 = ex;
  e2.measurement = *other_meas;
  REQUIRE_CODE(VerifyEvidence(enc, *ark, e2), Code::kMeasurementMismatch);
  e2 = ex;
  e2.report_data = Data(0x34);
  REQUIRE_CODE(VerifyEvidence(enc, *ark, e2), Code::kReportDataMismatch);
}
