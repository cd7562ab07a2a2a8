// SNP attestation: the ATTESTATION_REPORT layout, the emulated AMD key
// hierarchy (ARK -> ASK -> VCEK, real X.509 certificates, ECDSA P-384), and
// a verifier.
//
// Report layout: SEV-SNP Firmware ABI (#56860) Table "ATTESTATION_REPORT",
// as mirrored by Linux/virtee `struct attestation_report` (0x4A0 bytes):
// version 0x00, guest_svn 0x04, policy 0x08, family_id 0x10, image_id 0x20,
// vmpl 0x30, signature_algo 0x34 (1 = ECDSA P-384 with SHA-384),
// current_tcb 0x38, platform_info 0x40, key info 0x48 (bit 0 author_key_en,
// bit 1 mask_chip_key, bits 4:2 signing_key: 0 = VCEK), report_data 0x50,
// measurement 0x90, host_data 0xC0, id_key_digest 0xE0, author_key_digest
// 0x110, report_id 0x140, report_id_ma 0x160, reported_tcb 0x180, chip_id
// 0x1A0, committed_tcb 0x1E0, current build/minor/major 0x1E8, committed
// 0x1EC, launch_tcb 0x1F0, signature 0x2A0 (r: 72 B LE, s: 72 B LE at
// 0x2E8). The signature covers bytes 0x000..0x29F (SHA-384).
//
// Emulated vendor: the ARK and ASK keys are derived deterministically from
// a vendor seed (default kEmulatedVendorSeed, a public constant), so any
// process emulating "the same vendor" obtains the same root public key: a
// destination CVM in another process verifies a source report against
// EmulatedVendor::Create()->ark_public_der(). Deviation from real AMD: ARK
// and ASK are ECDSA P-384 here (AMD's are RSA-4096/PSS), which keeps key
// derivation deterministic and fast. Since the default seed is public, a
// report proves "made by a libcpc emulated chip of this vendor", never real
// hardware; tenants wanting more choose a private vendor seed.
//
// Ownership: plain values and RAII wrappers around EVP_PKEY. Threading:
// const methods are thread-safe. Errors: kInvalidArgument (malformed input),
// kInternal (OpenSSL failure), and for VerifyReport: kReportBadChain,
// kReportBadSignature, kMeasurementMismatch (subcode = report offset of the
// differing field), kReportDataMismatch.
#ifndef CPC_SRC_BACKENDS_SEV_ATTESTATION_H_
#define CPC_SRC_BACKENDS_SEV_ATTESTATION_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include <cpc/secret.h>
#include <cpc/status.h>
#include <cpc/version.h>

typedef struct evp_pkey_st EVP_PKEY;

CPC_NAMESPACE_BEGIN
namespace sev {

inline constexpr size_t kReportSize = 0x4A0;
inline constexpr size_t kReportSignedSize = 0x2A0;
inline constexpr uint32_t kReportVersion = 2;
inline constexpr uint32_t kSigAlgoEcdsaP384Sha384 = 1;
inline constexpr std::string_view kEmulatedVendorSeed =
    "libcpc emulated AMD SEV-SNP vendor root, v1";

namespace report_off {
inline constexpr size_t kVersion = 0x00;
inline constexpr size_t kGuestSvn = 0x04;
inline constexpr size_t kPolicy = 0x08;
inline constexpr size_t kFamilyId = 0x10;
inline constexpr size_t kImageId = 0x20;
inline constexpr size_t kVmpl = 0x30;
inline constexpr size_t kSignatureAlgo = 0x34;
inline constexpr size_t kCurrentTcb = 0x38;
inline constexpr size_t kPlatformInfo = 0x40;
inline constexpr size_t kKeyInfo = 0x48;
inline constexpr size_t kReportData = 0x50;
inline constexpr size_t kMeasurement = 0x90;
inline constexpr size_t kHostData = 0xC0;
inline constexpr size_t kIdKeyDigest = 0xE0;
inline constexpr size_t kAuthorKeyDigest = 0x110;
inline constexpr size_t kReportId = 0x140;
inline constexpr size_t kReportIdMa = 0x160;
inline constexpr size_t kReportedTcb = 0x180;
inline constexpr size_t kChipId = 0x1A0;
inline constexpr size_t kCommittedTcb = 0x1E0;
inline constexpr size_t kCurrentBuild = 0x1E8;
inline constexpr size_t kCurrentMinor = 0x1E9;
inline constexpr size_t kCurrentMajor = 0x1EA;
inline constexpr size_t kCommittedBuild = 0x1EC;
inline constexpr size_t kCommittedMinor = 0x1ED;
inline constexpr size_t kCommittedMajor = 0x1EE;
inline constexpr size_t kLaunchTcb = 0x1F0;
inline constexpr size_t kSignatureR = 0x2A0;
inline constexpr size_t kSignatureS = 0x2E8;
inline constexpr size_t kSigComponent = 72;
}  // namespace report_off

using Measurement = std::array<uint8_t, 48>;
using ChipId = std::array<uint8_t, 64>;
using ReportData = std::array<uint8_t, 64>;

// TCB_VERSION (Milan/Genoa layout): byte 0 bootloader, 1 TEE, 6 SNP,
// 7 microcode.
struct TcbVersion {
  uint8_t bootloader = 0, tee = 0, snp = 0, microcode = 0;
  uint64_t Raw() const;
  static TcbVersion FromRaw(uint64_t raw);
  // Every component <= other's (the firmware's "must not exceed" rule).
  bool NotAbove(const TcbVersion& other) const;
};

// The decoded fields of a report (signature excluded).
struct AttestationReport {
  uint32_t version = kReportVersion;
  uint32_t guest_svn = 0;
  uint64_t policy = 0;
  std::array<uint8_t, 16> family_id{}, image_id{};
  uint32_t vmpl = 0;
  uint32_t signature_algo = kSigAlgoEcdsaP384Sha384;
  uint64_t current_tcb = 0;
  uint64_t platform_info = 0;
  uint32_t key_info = 0;  // signing_key = 0 (VCEK)
  ReportData report_data{};
  Measurement measurement{};
  std::array<uint8_t, 32> host_data{};
  std::array<uint8_t, 48> id_key_digest{}, author_key_digest{};
  std::array<uint8_t, 32> report_id{}, report_id_ma{};
  uint64_t reported_tcb = 0;
  ChipId chip_id{};
  uint64_t committed_tcb = 0;
  uint8_t current_build = 0, current_minor = 0, current_major = 0;
  uint8_t committed_build = 0, committed_minor = 0, committed_major = 0;
  uint64_t launch_tcb = 0;

  // 0x4A0 bytes with a zero signature area.
  std::vector<uint8_t> Encode() const;
  // kInvalidArgument if `bytes` is not 0x4A0 long.
  static Result<AttestationReport> Decode(std::span<const uint8_t> bytes);
};

// An ECDSA P-384 key pair (owns an EVP_PKEY). Move-only.
class EcKey {
 public:
  // Deterministic: d = HKDF-SHA384(ikm = seed, info = label) mod (n-1) + 1.
  static Result<EcKey> Derive(std::span<const uint8_t> seed,
                              std::string_view label);
  EcKey(EcKey&&) noexcept = default;
  EcKey& operator=(EcKey&&) noexcept = default;
  ~EcKey();

  EVP_PKEY* get() const { return key_.get(); }
  // SubjectPublicKeyInfo DER.
  std::vector<uint8_t> PublicDer() const;
  // ECDSA-SHA384 over `msg`, as the report's r || s (2 x 72 B little-endian).
  Result<std::array<uint8_t, 144>> SignLe(std::span<const uint8_t> msg) const;

 private:
  struct Free {
    void operator()(EVP_PKEY* p) const;
  };
  explicit EcKey(EVP_PKEY* k) : key_(k) {}
  std::unique_ptr<EVP_PKEY, Free> key_;
};

// DER certificates of the chain that signs a report.
struct CertChain {
  std::vector<uint8_t> ark;   // self-signed root
  std::vector<uint8_t> ask;   // signed by ARK
  std::vector<uint8_t> vcek;  // signed by ASK; hwID extension = chip_id
};

// The emulated AMD key-distribution side: ARK + ASK, issues VCEK certs.
class EmulatedVendor {
 public:
  static Result<EmulatedVendor> Create(
      std::span<const uint8_t> vendor_seed = DefaultSeed());
  static std::span<const uint8_t> DefaultSeed() {
    return {reinterpret_cast<const uint8_t*>(kEmulatedVendorSeed.data()),
            kEmulatedVendorSeed.size()};
  }
  // The trust anchor verifiers pin (SubjectPublicKeyInfo DER of the ARK).
  std::vector<uint8_t> ark_public_der() const { return ark_.PublicDer(); }
  const std::vector<uint8_t>& ark_cert() const { return ark_cert_; }
  const std::vector<uint8_t>& ask_cert() const { return ask_cert_; }
  // A VCEK certificate for `vcek` on chip `chip_id` at `tcb`.
  Result<std::vector<uint8_t>> IssueVcek(const EcKey& vcek,
                                         const ChipId& chip_id,
                                         const TcbVersion& tcb) const;

 private:
  EmulatedVendor(EcKey ark, EcKey ask)
      : ark_(std::move(ark)), ask_(std::move(ask)) {}
  EcKey ark_, ask_;
  std::vector<uint8_t> ark_cert_, ask_cert_;
};

// What a verifier may additionally require. Unset fields are not checked.
struct ReportExpectations {
  std::optional<Measurement> measurement;
  std::optional<uint64_t> policy;
  std::optional<ReportData> report_data;
  std::optional<uint32_t> vmpl;
  std::optional<ChipId> chip_id;
};

// Verifies `report` (0x4A0 bytes): ARK == `trusted_ark_spki`, ARK self-signed,
// ASK signed by ARK, VCEK signed by ASK (all CA flags checked), VCEK hwID ==
// report chip_id, signature algo 1 and the ECDSA-P384 signature over
// 0x0..0x29F with the VCEK key; then the expectations.
Status VerifyReport(std::span<const uint8_t> report, const CertChain& chain,
                    std::span<const uint8_t> trusted_ark_spki,
                    const ReportExpectations& expect = {});

// The pinned root of the default emulated vendor
// (EmulatedVendor::Create()->ark_public_der()), derived once per process.
Result<std::vector<uint8_t>> DefaultArkSpki();

// Attestation evidence for a peer CVM (GuestPlatform::AttestationEvidence):
// a report and the certificate chain that signs it. Encoding, version 1:
// u32 magic kEvidenceMagic, u32 version, then four fields, each a u32 length
// and its bytes: report (0x4A0 bytes), ARK, ASK, VCEK (DER). All integers
// little-endian. The report starts at kEvidenceReportOffset.
inline constexpr uint32_t kEvidenceMagic = 0x45504e53;  // "SNPE"
inline constexpr uint32_t kEvidenceVersion = 1;
inline constexpr size_t kEvidenceReportOffset = 12;
inline constexpr size_t kEvidenceMaxField = 64 * 1024;

struct Evidence {
  std::vector<uint8_t> report;
  CertChain chain;

  std::vector<uint8_t> Encode() const;
  // kInvalidArgument: wrong magic or version, a truncated or oversized
  // field, trailing bytes, a report that is not 0x4A0 bytes.
  static Result<Evidence> Decode(std::span<const uint8_t> bytes);
};

// Decodes `evidence` and verifies its report (VerifyReport) against
// `trusted_ark_spki` and `expect`.
Status VerifyEvidence(std::span<const uint8_t> evidence,
                      std::span<const uint8_t> trusted_ark_spki,
                      const ReportExpectations& expect);

// HKDF-SHA384 (RFC 5869) of `ikm` into `out`.
Status HkdfSha384(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                  std::span<const uint8_t> info, std::span<uint8_t> out);

}  // namespace sev
CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_SEV_ATTESTATION_H_
