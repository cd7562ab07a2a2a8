// SnpFirmware: the emulated AMD Secure Processor of one chip, serving one
// guest: launch (SNP_LAUNCH_START/UPDATE/FINISH with the real launch digest),
// the secrets page with the VMPCKs, and SNP guest messages (MSG_REPORT_REQ,
// MSG_KEY_REQ) encrypted with a VMPCK. GuestMessenger is the guest's side of
// those messages (what Linux's sev-guest driver does).
//
// Chip identity: every secret comes from ChipConfig::chip_seed (the chip's
// "fuses"): chip secret = HKDF-SHA384(chip_seed), chip_id = HKDF(chip
// secret, "CHIP_ID"), VCEK = P-384 key derived from (chip secret, reported
// TCB), its certificate issued by the EmulatedVendor of vendor_seed. Two
// processes given the same seeds emulate the same machine.
//
// Launch digest [SNP ABI 8.17.2 PAGE_INFO; virtee/sev-snp-measure gctx.py]:
// LD' = SHA-384(LD || contents(48) || u16 0x70 || u8 page_type || u8 imi ||
// u8 vmpl3_perms || u8 vmpl2_perms || u8 vmpl1_perms || u8 0 || u64 gpa),
// contents = SHA-384(page) for NORMAL and VMSA pages, zeros otherwise.
//
// Guest messages [Linux sev.h struct snp_guest_msg_hdr; sev-guest driver]:
// 0x60-byte header {authtag[32] @0, msg_seqno u64 @0x20, algo u8 @0x30 (1 =
// AES-256-GCM), hdr_version u8 @0x31 (1), hdr_sz u16 @0x32 (0x60), msg_type
// u8 @0x34, msg_version u8 @0x35, msg_sz u16 @0x36, msg_vmpck u8 @0x3C},
// AAD = header bytes 0x30..0x5F, IV = seqno (LE, 12 bytes), tag =
// authtag[0..16). The firmware requires seqno == last + 1 per VMPCK and answers
// with seqno + 1. VMPCKn belongs to VMPLn: a request under VMPCKn may ask only
// for VMPL >= n.
// MSG_REPORT_REQ {report_data[64], vmpl u32, key_sel u32, rsvd[24]};
// MSG_REPORT_RSP {status u32, report_size u32, rsvd[24], report[0x4A0]};
// MSG_KEY_REQ {root_key_select u32, rsvd u32, guest_field_select u64, vmpl
// u32, guest_svn u32, tcb_version u64}; MSG_KEY_RSP {status u32, rsvd[28],
// key[32]}. Response status 0 or 0x16 (INVALID_PARAM).
//
// Derived key (MSG_KEY_REQ): HKDF-SHA384(IKM = VCEK seed at tcb_version,
// info = "SNP-MSG-KEY" || vmpl || field_select || each selected field
// (policy, image_id, family_id, measurement, guest_svn, tcb), zeros when not
// selected) -> 32 bytes. Same chip + image + policy -> same key.
//
// Threading: all methods are thread-safe (one mutex). Errors: firmware
// refusals are kPlatformError with the SEV status code (snp_abi.h) in the
// subcode; guest-message failures seen by the guest are kPlatformError too
// (subcode = response status), a forged response is kAuthFailed.
#ifndef CPC_SRC_BACKENDS_SEV_FIRMWARE_H_
#define CPC_SRC_BACKENDS_SEV_FIRMWARE_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include <cpc/secret.h>
#include <cpc/status.h>
#include <cpc/types.h>
#include <cpc/version.h>

#include "backends/sev/attestation.h"
#include "backends/sev/snp_abi.h"
#include "backends/sev/snp_machine.h"

CPC_NAMESPACE_BEGIN
namespace sev {

struct ChipConfig {
  std::vector<uint8_t> chip_seed;  // the chip's identity; same seed = same chip
  std::vector<uint8_t> vendor_seed{EmulatedVendor::DefaultSeed().begin(),
                                   EmulatedVendor::DefaultSeed().end()};
  TcbVersion tcb{3, 0, 8, 115};  // current = committed = reported

  static ChipConfig FromSeed(uint64_t seed);
};

struct LaunchParams {
  uint64_t policy = kPolicyReservedMbo | kPolicySmt;
  std::array<uint8_t, 16> family_id{}, image_id{};
  uint32_t guest_svn = 0;
  std::array<uint8_t, 32> host_data{};
};

namespace field_select {
inline constexpr uint64_t kPolicy = 1 << 0;
inline constexpr uint64_t kImageId = 1 << 1;
inline constexpr uint64_t kFamilyId = 1 << 2;
inline constexpr uint64_t kMeasurement = 1 << 3;
inline constexpr uint64_t kGuestSvn = 1 << 4;
inline constexpr uint64_t kTcbVersion = 1 << 5;
}  // namespace field_select

// MSG_KEY_REQ payload.
struct KeyRequest {
  uint32_t root_key_select = 0;  // bit 0: 0 = VCEK (1 = VMRK, unsupported)
  uint64_t guest_field_select = 0;
  uint32_t vmpl = 0;
  uint32_t guest_svn = 0;
  uint64_t tcb_version = 0;

  std::array<uint8_t, 32> Encode() const;
  static KeyRequest Decode(std::span<const uint8_t, 32> b);
};

// Secrets page offsets [Linux struct snp_secrets_page].
namespace secrets_off {
inline constexpr size_t kVersion = 0x00;
inline constexpr size_t kImiEn = 0x04;
inline constexpr size_t kFms = 0x08;
inline constexpr size_t kVmpck0 = 0x20;  // VMPCKn at 0x20 + 0x20 * n
inline constexpr size_t kVmpckSize = 32;
inline constexpr size_t kOsArea = 0xA0;
inline constexpr size_t kSvsmBase = 0x140;
inline constexpr size_t kSvsmSize = 0x148;
inline constexpr size_t kSvsmCaa = 0x150;
inline constexpr size_t kSvsmMaxVersion = 0x158;
inline constexpr size_t kSvsmGuestVmpl = 0x15C;
}  // namespace secrets_off

inline constexpr size_t kGuestMsgHeaderSize = 0x60;

class SnpFirmware {
 public:
  static Result<std::unique_ptr<SnpFirmware>> Create(const ChipConfig& chip);
  SnpFirmware(const SnpFirmware&) = delete;
  SnpFirmware& operator=(const SnpFirmware&) = delete;
  ~SnpFirmware();

  const ChipId& chip_id() const { return chip_id_; }
  // ARK, ASK, VCEK certificates (what the host fetches from the KDS).
  const CertChain& cert_chain() const { return chain_; }
  // The trust anchor a verifier pins.
  std::vector<uint8_t> ark_public_der() const;
  const TcbVersion& tcb() const { return tcb_; }

  // ---- Launch (host-driven commands; state INIT -> LAUNCHING -> RUNNING).
  // Wrong state: kPlatformError(kSevInvalidGuestState).
  // Policy without the must-be-one bit 17, or asking for a migration agent:
  // kPlatformError(kSevPolicyFailure). The machine must outlive the firmware.
  Status LaunchStart(SnpMachine* machine, const LaunchParams& params);
  // Measures (per type), validates and sets the VMPL1..3 masks of one page;
  // SECRETS fills the secrets page (VMPCK0..3), ZERO zeroes the page.
  Status LaunchUpdate(Gpa gpa, LaunchPageType type,
                      std::array<uint8_t, 3> vmpl123_perms = {0, 0, 0});
  Status LaunchFinish();
  Result<Measurement> measurement() const;

  // ---- SNP_GUEST_REQUEST: one encrypted request message -> response
  // message (the host relays both and cannot read or forge them). Refused
  // (kPlatformError kSevInvalidParam) for a bad header, a wrong sequence
  // number or a message that does not authenticate.
  Result<std::vector<uint8_t>> GuestRequest(std::span<const uint8_t> request);

  // ---- The operations behind the messages (for tests / direct use) ----
  // A signed report for a caller at `caller_vmpl` asking for `vmpl`.
  Result<std::vector<uint8_t>> SignedReport(
      std::span<const uint8_t, 64> report_data, uint32_t vmpl,
      uint32_t caller_vmpl);
  Result<SecretBytes> DerivedKey(const KeyRequest& req, uint32_t caller_vmpl);

 private:
  SnpFirmware(EmulatedVendor vendor, EcKey vcek);
  Status CheckRunning() const;

  mutable std::mutex mu_;
  EmulatedVendor vendor_;
  EcKey vcek_;
  SecretBytes chip_secret_;
  ChipId chip_id_{};
  TcbVersion tcb_;
  CertChain chain_;

  enum class State { kInit, kLaunching, kRunning } state_ = State::kInit;
  SnpMachine* machine_ = nullptr;
  LaunchParams params_;
  Measurement ld_{};
  std::array<uint8_t, 32> report_id_{};
  std::array<SecretBytes, 4> vmpck_;
  std::array<uint64_t, 4> last_seqno_{};
};

// The guest's side of SNP guest messages over one VMPCK.
class GuestMessenger {
 public:
  // Relays a request message to the firmware and returns its response (the
  // untrusted host's SNP_GUEST_REQUEST path).
  using Transport =
      std::function<Result<std::vector<uint8_t>>(std::span<const uint8_t>)>;

  GuestMessenger(SecretBytes vmpck, uint8_t vmpck_id, Transport transport);
  // VMPCK `vmpck_id` read from a secrets page (kFailedPrecondition if that
  // key was wiped, e.g. VMPCK0 after VMPL0 handed the page to the OS).
  static Result<GuestMessenger> FromSecretsPage(
      std::span<const uint8_t, kPageSize> secrets, uint8_t vmpck_id,
      Transport transport);

  // MSG_REPORT_REQ: the 0x4A0-byte signed report.
  Result<std::vector<uint8_t>> GetReport(
      std::span<const uint8_t, 64> report_data, uint32_t vmpl);
  // MSG_KEY_REQ: the 32-byte derived key.
  Result<SecretBytes> GetDerivedKey(const KeyRequest& req);
  // A sealing key: MSG_KEY_REQ with policy + measurement selected at
  // `vmpl`, then HKDF-SHA384(key, info = "libcpc-seal" || context).
  Result<SecretBytes> SealingKey(std::span<const uint8_t> context,
                                 uint32_t vmpl);

 private:
  Result<std::vector<uint8_t>> Exchange(MsgType type,
                                        std::span<const uint8_t> payload);
  SecretBytes vmpck_;
  uint8_t id_;
  uint64_t seqno_ = 0;
  Transport transport_;
};

}  // namespace sev
CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_SEV_FIRMWARE_H_
