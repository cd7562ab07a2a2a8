#include "backends/sev/firmware.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "backends/sev/vmsa.h"
#include "core/bytes.h"

CPC_NAMESPACE_BEGIN
namespace sev {

namespace {

constexpr uint8_t kAlgoAes256Gcm = 1;
constexpr uint8_t kHdrVersion = 1;
constexpr size_t kAadOff = 0x30;
constexpr size_t kReportReqSize = 0x60;
constexpr size_t kReportRspHeader = 0x20;
constexpr size_t kKeyReqSize = 0x20;
constexpr size_t kKeyRspSize = 0x40;
constexpr uint32_t kSecretsPageVersion = 2;

std::span<const uint8_t> Str(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

Status FwError(int64_t code, std::string msg) {
  return Status(Code::kPlatformError, std::move(msg), code);
}

Measurement Sha384(std::span<const uint8_t> in) {
  Measurement out{};
  unsigned int n = 0;
  EVP_Digest(in.data(), in.size(), out.data(), &n, EVP_sha384(), nullptr);
  return out;
}

// AES-256-GCM of a guest message body in place; tag in/out 16 bytes.
bool MsgCrypt(bool enc, std::span<const uint8_t> key, uint64_t seqno,
              std::span<const uint8_t> aad, std::span<uint8_t> body,
              uint8_t* tag) {
  uint8_t iv[12] = {};
  StoreLe<uint64_t>(iv, seqno);
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  if (!c) return false;
  bool ok = false;
  int n = 0;
  do {
    if (EVP_CipherInit_ex(c, EVP_aes_256_gcm(), nullptr, nullptr, nullptr,
                          enc ? 1 : 0) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, sizeof(iv), nullptr) !=
            1 ||
        EVP_CipherInit_ex(c, nullptr, nullptr, key.data(), iv, -1) != 1)
      break;
    if (EVP_CipherUpdate(c, nullptr, &n, aad.data(),
                         static_cast<int>(aad.size())) != 1)
      break;
    if (!body.empty() && EVP_CipherUpdate(c, body.data(), &n, body.data(),
                                          static_cast<int>(body.size())) != 1)
      break;
    if (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1)
      break;
    uint8_t fin[16];
    if (EVP_CipherFinal_ex(c, fin, &n) != 1) break;
    if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1)
      break;
    ok = true;
  } while (false);
  EVP_CIPHER_CTX_free(c);
  return ok;
}

std::vector<uint8_t> SealMsg(std::span<const uint8_t> key, uint8_t vmpck_id,
                             uint64_t seqno, MsgType type,
                             std::span<const uint8_t> payload) {
  std::vector<uint8_t> m(kGuestMsgHeaderSize + payload.size(), 0);
  uint8_t* h = m.data();
  StoreLe<uint64_t>(h + 0x20, seqno);
  h[0x30] = kAlgoAes256Gcm;
  h[0x31] = kHdrVersion;
  StoreLe<uint16_t>(h + 0x32, kGuestMsgHeaderSize);
  h[0x34] = static_cast<uint8_t>(type);
  h[0x35] = 1;  // msg_version
  StoreLe<uint16_t>(h + 0x36, static_cast<uint16_t>(payload.size()));
  h[0x3C] = vmpck_id;
  std::copy(payload.begin(), payload.end(), m.begin() + kGuestMsgHeaderSize);
  MsgCrypt(true, key, seqno,
           std::span<const uint8_t>(h + kAadOff, kGuestMsgHeaderSize - kAadOff),
           std::span<uint8_t>(m.data() + kGuestMsgHeaderSize, payload.size()),
           h);
  return m;
}

struct OpenedMsg {
  uint64_t seqno;
  MsgType type;
  uint8_t vmpck;
  std::vector<uint8_t> payload;
};

// Parses the header; decrypts with `key_for(vmpck)` (nullptr: unknown key).
template <typename KeyFor>
Result<OpenedMsg> OpenMsg(std::span<const uint8_t> m, KeyFor key_for) {
  if (m.size() < kGuestMsgHeaderSize)
    return Status(Code::kInvalidArgument, "guest message shorter than header");
  const uint8_t* h = m.data();
  OpenedMsg o;
  o.seqno = LoadLe<uint64_t>(h + 0x20);
  uint16_t msg_sz = LoadLe<uint16_t>(h + 0x36);
  o.type = static_cast<MsgType>(h[0x34]);
  o.vmpck = h[0x3C];
  if (h[0x30] != kAlgoAes256Gcm || h[0x31] != kHdrVersion ||
      LoadLe<uint16_t>(h + 0x32) != kGuestMsgHeaderSize ||
      m.size() != kGuestMsgHeaderSize + msg_sz || o.vmpck > 3)
    return Status(Code::kInvalidArgument, "malformed guest message header");
  const SecretBytes* key = key_for(o.vmpck);
  if (!key || key->empty())
    return Status(Code::kInvalidArgument, "no such VMPCK");
  o.payload.assign(m.begin() + kGuestMsgHeaderSize, m.end());
  uint8_t tag[16];
  std::memcpy(tag, h, 16);
  if (!MsgCrypt(false, key->span(), o.seqno,
                m.subspan(kAadOff, kGuestMsgHeaderSize - kAadOff), o.payload,
                tag))
    return Status(Code::kAuthFailed, "guest message does not authenticate");
  return o;
}

}  // namespace

ChipConfig ChipConfig::FromSeed(uint64_t seed) {
  ChipConfig c;
  c.chip_seed.resize(8);
  StoreLe<uint64_t>(c.chip_seed.data(), seed);
  return c;
}

std::array<uint8_t, 32> KeyRequest::Encode() const {
  std::array<uint8_t, 32> b{};
  StoreLe<uint32_t>(b.data(), root_key_select);
  StoreLe<uint64_t>(b.data() + 8, guest_field_select);
  StoreLe<uint32_t>(b.data() + 16, vmpl);
  StoreLe<uint32_t>(b.data() + 20, guest_svn);
  StoreLe<uint64_t>(b.data() + 24, tcb_version);
  return b;
}

KeyRequest KeyRequest::Decode(std::span<const uint8_t, 32> b) {
  KeyRequest r;
  r.root_key_select = LoadLe<uint32_t>(b.data());
  r.guest_field_select = LoadLe<uint64_t>(b.data() + 8);
  r.vmpl = LoadLe<uint32_t>(b.data() + 16);
  r.guest_svn = LoadLe<uint32_t>(b.data() + 20);
  r.tcb_version = LoadLe<uint64_t>(b.data() + 24);
  return r;
}

// ------------------------------------------------------------ SnpFirmware

SnpFirmware::SnpFirmware(EmulatedVendor vendor, EcKey vcek)
    : vendor_(std::move(vendor)), vcek_(std::move(vcek)) {}
SnpFirmware::~SnpFirmware() = default;

Result<std::unique_ptr<SnpFirmware>> SnpFirmware::Create(
    const ChipConfig& chip) {
  if (chip.chip_seed.empty())
    return Status(Code::kInvalidArgument, "empty chip seed");
  SecretBytes secret(48);
  CPC_RETURN_IF_ERROR(HkdfSha384(chip.chip_seed, Str("libcpc-sev-chip"),
                                 Str("chip secret"), secret.mutable_span()));
  ChipId id{};
  CPC_RETURN_IF_ERROR(HkdfSha384(secret.span(), {}, Str("CHIP_ID"), id));
  // VCEK: derived from the chip secret and the reported TCB.
  uint8_t info[12] = {'V', 'C', 'E', 'K'};
  StoreLe<uint64_t>(info + 4, chip.tcb.Raw());
  SecretBytes vcek_seed(48);
  CPC_RETURN_IF_ERROR(
      HkdfSha384(secret.span(), {}, info, vcek_seed.mutable_span()));
  CPC_ASSIGN_OR_RETURN(EcKey vcek, EcKey::Derive(vcek_seed.span(), "VCEK"));
  CPC_ASSIGN_OR_RETURN(EmulatedVendor vendor,
                       EmulatedVendor::Create(chip.vendor_seed));
  CPC_ASSIGN_OR_RETURN(std::vector<uint8_t> vcek_cert,
                       vendor.IssueVcek(vcek, id, chip.tcb));
  std::unique_ptr<SnpFirmware> fw(
      new SnpFirmware(std::move(vendor), std::move(vcek)));
  fw->chip_secret_ = std::move(secret);
  fw->chip_id_ = id;
  fw->tcb_ = chip.tcb;
  fw->chain_ = {fw->vendor_.ark_cert(), fw->vendor_.ask_cert(),
                std::move(vcek_cert)};
  return fw;
}

std::vector<uint8_t> SnpFirmware::ark_public_der() const {
  return vendor_.ark_public_der();
}

Status SnpFirmware::LaunchStart(SnpMachine* machine, const LaunchParams& p) {
  std::lock_guard<std::mutex> l(mu_);
  if (state_ != State::kInit)
    return FwError(kSevInvalidGuestState, "LAUNCH_START: guest exists");
  if (!machine) return FwError(kSevInvalidParam, "LAUNCH_START: no machine");
  if (!(p.policy & kPolicyReservedMbo))
    return FwError(kSevPolicyFailure, "LAUNCH_START: policy bit 17 must be 1");
  if (p.policy & kPolicyMigrateMa)
    return FwError(kSevPolicyFailure,
                   "LAUNCH_START: migration agents are not supported");
  machine_ = machine;
  params_ = p;
  ld_.fill(0);
  last_seqno_.fill(0);
  if (RAND_bytes(report_id_.data(), report_id_.size()) != 1)
    return Status(Code::kInternal, "RAND_bytes failed");
  // VMPCKs: from the chip secret, this launch's report_id (random) and
  // the launch parameters, so no two launches share message keys.
  for (int i = 0; i < 4; ++i) {
    std::vector<uint8_t> info = {'V', 'M', 'P',
                                 'C', 'K', static_cast<uint8_t>('0' + i)};
    info.insert(info.end(), report_id_.begin(), report_id_.end());
    uint8_t pol[8];
    StoreLe<uint64_t>(pol, p.policy);
    info.insert(info.end(), pol, pol + 8);
    vmpck_[i] = SecretBytes(32);
    CPC_RETURN_IF_ERROR(
        HkdfSha384(chip_secret_.span(), {}, info, vmpck_[i].mutable_span()));
  }
  state_ = State::kLaunching;
  return Status::Ok();
}

Status SnpFirmware::LaunchUpdate(Gpa gpa, LaunchPageType type,
                                 std::array<uint8_t, 3> perms) {
  std::lock_guard<std::mutex> l(mu_);
  if (state_ != State::kLaunching)
    return FwError(kSevInvalidGuestState, "LAUNCH_UPDATE: not launching");
  if (type < LaunchPageType::kNormal || type > LaunchPageType::kCpuid)
    return FwError(kSevInvalidParam, "LAUNCH_UPDATE: bad page type");
  CPC_ASSIGN_OR_RETURN(
      uint8_t * page,
      machine_->FirmwareLaunchPage(gpa, perms, type == LaunchPageType::kVmsa));
  Measurement contents{};
  switch (type) {
    case LaunchPageType::kNormal:
    case LaunchPageType::kVmsa:
      contents = Sha384({page, kPageSize});
      break;
    case LaunchPageType::kZero:
      std::memset(page, 0, kPageSize);
      break;
    case LaunchPageType::kSecrets:
      std::memset(page, 0, kPageSize);
      StoreLe<uint32_t>(page + secrets_off::kVersion, kSecretsPageVersion);
      for (int i = 0; i < 4; ++i)
        std::memcpy(page + secrets_off::kVmpck0 + secrets_off::kVmpckSize * i,
                    vmpck_[i].data(), secrets_off::kVmpckSize);
      break;
    default:
      break;
  }
  uint8_t info[0x70] = {};
  std::memcpy(info, ld_.data(), 48);
  std::memcpy(info + 0x30, contents.data(), 48);
  StoreLe<uint16_t>(info + 0x60, 0x70);
  info[0x62] = static_cast<uint8_t>(type);
  info[0x63] = 0;  // imi_page
  info[0x64] = perms[2];
  info[0x65] = perms[1];
  info[0x66] = perms[0];
  StoreLe<uint64_t>(info + 0x68, gpa);
  ld_ = Sha384(info);
  return Status::Ok();
}

Status SnpFirmware::LaunchFinish() {
  std::lock_guard<std::mutex> l(mu_);
  if (state_ != State::kLaunching)
    return FwError(kSevInvalidGuestState, "LAUNCH_FINISH: not launching");
  state_ = State::kRunning;
  return Status::Ok();
}

Result<Measurement> SnpFirmware::measurement() const {
  std::lock_guard<std::mutex> l(mu_);
  if (state_ != State::kRunning)
    return FwError(kSevInvalidGuestState, "guest not launched");
  return ld_;
}

Status SnpFirmware::CheckRunning() const {
  if (state_ != State::kRunning)
    return FwError(kSevInvalidGuestState, "guest not running");
  return Status::Ok();
}

Result<std::vector<uint8_t>> SnpFirmware::SignedReport(
    std::span<const uint8_t, 64> report_data, uint32_t vmpl,
    uint32_t caller_vmpl) {
  std::lock_guard<std::mutex> l(mu_);
  CPC_RETURN_IF_ERROR(CheckRunning());
  if (vmpl > kMaxVmpl || vmpl < caller_vmpl)
    return FwError(kSevInvalidParam, "MSG_REPORT_REQ: VMPL below the caller's");
  AttestationReport r;
  r.guest_svn = params_.guest_svn;
  r.policy = params_.policy;
  r.family_id = params_.family_id;
  r.image_id = params_.image_id;
  r.vmpl = vmpl;
  r.current_tcb = r.reported_tcb = r.committed_tcb = r.launch_tcb = tcb_.Raw();
  r.platform_info = (params_.policy & kPolicySmt) ? 1 : 0;  // SMT_EN
  std::copy(report_data.begin(), report_data.end(), r.report_data.begin());
  r.measurement = ld_;
  r.host_data = params_.host_data;
  r.report_id = report_id_;
  r.report_id_ma.fill(0xff);  // no migration agent
  r.chip_id = chip_id_;
  r.current_major = r.committed_major = 1;
  r.current_minor = r.committed_minor = 55;
  r.current_build = r.committed_build = 21;
  std::vector<uint8_t> bytes = r.Encode();
  CPC_ASSIGN_OR_RETURN(
      auto sig,
      vcek_.SignLe(std::span<const uint8_t>(bytes).first(kReportSignedSize)));
  std::copy(sig.begin(), sig.end(), bytes.begin() + report_off::kSignatureR);
  return bytes;
}

Result<SecretBytes> SnpFirmware::DerivedKey(const KeyRequest& q,
                                            uint32_t caller_vmpl) {
  std::lock_guard<std::mutex> l(mu_);
  CPC_RETURN_IF_ERROR(CheckRunning());
  if (q.root_key_select & 1)
    return FwError(kSevInvalidParam, "MSG_KEY_REQ: no VMRK (no MA)");
  if (((q.root_key_select >> 1) & 3) >= 2 || (q.root_key_select & ~7u))
    return FwError(kSevInvalidParam, "MSG_KEY_REQ: bad key select");
  if (q.guest_field_select & ~uint64_t{0x3f})
    return FwError(kSevInvalidParam, "MSG_KEY_REQ: reserved field bits");
  if (q.vmpl > kMaxVmpl || q.vmpl < caller_vmpl)
    return FwError(kSevInvalidParam, "MSG_KEY_REQ: VMPL below the caller's");
  if (q.guest_svn > params_.guest_svn)
    return FwError(kSevInvalidParam, "MSG_KEY_REQ: guest SVN above launch");
  TcbVersion tcb = TcbVersion::FromRaw(q.tcb_version);
  if (!tcb.NotAbove(tcb_) ||
      TcbVersion::FromRaw(tcb.Raw()).Raw() != q.tcb_version)
    return FwError(kSevInvalidParam, "MSG_KEY_REQ: TCB above committed");
  namespace fs = field_select;
  uint64_t sel = q.guest_field_select;
  uint8_t vinfo[12] = {'V', 'C', 'E', 'K'};
  StoreLe<uint64_t>(vinfo + 4, q.tcb_version);
  SecretBytes root(48);
  CPC_RETURN_IF_ERROR(
      HkdfSha384(chip_secret_.span(), {}, vinfo, root.mutable_span()));
  auto label = Str("SNP-MSG-KEY");
  std::vector<uint8_t> info(label.begin(), label.end());
  ByteWriter w(&info);
  w.Int<uint32_t>(q.vmpl);
  w.Int<uint64_t>(sel);
  w.Int<uint64_t>((sel & fs::kPolicy) ? params_.policy : 0);
  std::array<uint8_t, 16> zero16{};
  w.Bytes((sel & fs::kImageId) ? params_.image_id : zero16);
  w.Bytes((sel & fs::kFamilyId) ? params_.family_id : zero16);
  Measurement zero48{};
  w.Bytes((sel & fs::kMeasurement) ? ld_ : zero48);
  w.Int<uint32_t>((sel & fs::kGuestSvn) ? q.guest_svn : 0);
  w.Int<uint64_t>((sel & fs::kTcbVersion) ? q.tcb_version : 0);
  SecretBytes key(32);
  CPC_RETURN_IF_ERROR(HkdfSha384(root.span(), {}, info, key.mutable_span()));
  return key;
}

Result<std::vector<uint8_t>> SnpFirmware::GuestRequest(
    std::span<const uint8_t> request) {
  Result<OpenedMsg> opened = [&]() -> Result<OpenedMsg> {
    std::lock_guard<std::mutex> l(mu_);
    CPC_RETURN_IF_ERROR(CheckRunning());
    auto o = OpenMsg(request, [this](uint8_t i) { return &vmpck_[i]; });
    if (!o.ok())
      return FwError(kSevInvalidParam,
                     "SNP_GUEST_REQUEST: " + o.status().message());
    if (o->seqno != last_seqno_[o->vmpck] + 1)
      return FwError(kSevInvalidParam,
                     "SNP_GUEST_REQUEST: unexpected sequence number");
    last_seqno_[o->vmpck] = o->seqno + 1;  // the response's number
    return o;
  }();
  if (!opened.ok()) return opened.status();
  OpenedMsg& o = *opened;
  uint32_t caller_vmpl = o.vmpck;  // VMPCKn belongs to VMPLn
  std::vector<uint8_t> rsp;
  MsgType rsp_type;
  if (o.type == MsgType::kReportReq && o.payload.size() == kReportReqSize) {
    rsp_type = MsgType::kReportRsp;
    uint32_t vmpl = LoadLe<uint32_t>(o.payload.data() + 0x40);
    uint32_t key_sel = LoadLe<uint32_t>(o.payload.data() + 0x44);
    auto rep =
        key_sel > 1
            ? Result<std::vector<uint8_t>>(
                  FwError(kSevInvalidParam, "VLEK not provisioned"))
            : SignedReport(std::span<const uint8_t, 64>(o.payload.data(), 64),
                           vmpl, caller_vmpl);
    rsp.assign(kReportRspHeader, 0);
    if (rep.ok()) {
      StoreLe<uint32_t>(rsp.data() + 4, kReportSize);
      rsp.insert(rsp.end(), rep->begin(), rep->end());
    } else {
      StoreLe<uint32_t>(
          rsp.data(),
          static_cast<uint32_t>(rep.status().code() == Code::kPlatformError
                                    ? rep.status().subcode()
                                    : kSevInvalidParam));
    }
  } else if (o.type == MsgType::kKeyReq && o.payload.size() == kKeyReqSize) {
    rsp_type = MsgType::kKeyRsp;
    auto key = DerivedKey(
        KeyRequest::Decode(std::span<const uint8_t, 32>(o.payload.data(), 32)),
        caller_vmpl);
    rsp.assign(kKeyRspSize, 0);
    if (key.ok())
      std::memcpy(rsp.data() + 0x20, key->data(), 32);
    else
      StoreLe<uint32_t>(rsp.data(), static_cast<uint32_t>(kSevInvalidParam));
  } else {
    return FwError(kSevInvalidParam, "SNP_GUEST_REQUEST: unknown message");
  }
  std::lock_guard<std::mutex> l(mu_);
  auto sealed =
      SealMsg(vmpck_[o.vmpck].span(), o.vmpck, o.seqno + 1, rsp_type, rsp);
  OPENSSL_cleanse(rsp.data(), rsp.size());
  return sealed;
}

// --------------------------------------------------------- GuestMessenger

GuestMessenger::GuestMessenger(SecretBytes vmpck, uint8_t id, Transport t)
    : vmpck_(std::move(vmpck)), id_(id), transport_(std::move(t)) {}

Result<GuestMessenger> GuestMessenger::FromSecretsPage(
    std::span<const uint8_t, kPageSize> secrets, uint8_t id, Transport t) {
  if (id > 3) return Status(Code::kInvalidArgument, "VMPCK id is 0..3");
  auto key =
      secrets.subspan(secrets_off::kVmpck0 + secrets_off::kVmpckSize * id,
                      secrets_off::kVmpckSize);
  if (std::all_of(key.begin(), key.end(), [](uint8_t b) { return b == 0; }))
    return Status(Code::kFailedPrecondition,
                  fmt::format("VMPCK{} is not available to this VMPL", id));
  return GuestMessenger(SecretBytes(key), id, std::move(t));
}

Result<std::vector<uint8_t>> GuestMessenger::Exchange(
    MsgType type, std::span<const uint8_t> payload) {
  uint64_t seq = seqno_ + 1;
  std::vector<uint8_t> req = SealMsg(vmpck_.span(), id_, seq, type, payload);
  seqno_ = seq + 1;  // consumed whether or not the host answers
  CPC_ASSIGN_OR_RETURN(std::vector<uint8_t> rsp, transport_(req));
  auto o = OpenMsg(rsp, [this](uint8_t i) {
    return i == id_ ? &vmpck_ : static_cast<const SecretBytes*>(nullptr);
  });
  if (!o.ok())
    return Status(Code::kAuthFailed,
                  "firmware response rejected: " + o.status().message());
  if (o->seqno != seq + 1 ||
      static_cast<uint8_t>(o->type) != static_cast<uint8_t>(type) + 1)
    return Status(Code::kAuthFailed, "firmware response out of sequence");
  return std::move(o->payload);
}

Result<std::vector<uint8_t>> GuestMessenger::GetReport(
    std::span<const uint8_t, 64> report_data, uint32_t vmpl) {
  std::vector<uint8_t> req(kReportReqSize, 0);
  std::copy(report_data.begin(), report_data.end(), req.begin());
  StoreLe<uint32_t>(req.data() + 0x40, vmpl);
  CPC_ASSIGN_OR_RETURN(std::vector<uint8_t> rsp,
                       Exchange(MsgType::kReportReq, req));
  if (rsp.size() < kReportRspHeader)
    return Status(Code::kAuthFailed, "short MSG_REPORT_RSP");
  uint32_t status = LoadLe<uint32_t>(rsp.data());
  if (status != 0)
    return Status(Code::kPlatformError, "MSG_REPORT_REQ refused", status);
  if (LoadLe<uint32_t>(rsp.data() + 4) != kReportSize ||
      rsp.size() != kReportRspHeader + kReportSize)
    return Status(Code::kAuthFailed, "bad MSG_REPORT_RSP size");
  return std::vector<uint8_t>(rsp.begin() + kReportRspHeader, rsp.end());
}

Result<SecretBytes> GuestMessenger::GetDerivedKey(const KeyRequest& q) {
  auto enc = q.Encode();
  CPC_ASSIGN_OR_RETURN(std::vector<uint8_t> rsp,
                       Exchange(MsgType::kKeyReq, enc));
  if (rsp.size() != kKeyRspSize)
    return Status(Code::kAuthFailed, "bad MSG_KEY_RSP size");
  uint32_t status = LoadLe<uint32_t>(rsp.data());
  SecretBytes key(std::span<const uint8_t>(rsp.data() + 0x20, 32));
  OPENSSL_cleanse(rsp.data(), rsp.size());
  if (status != 0)
    return Status(Code::kPlatformError, "MSG_KEY_REQ refused", status);
  return key;
}

Result<SecretBytes> GuestMessenger::SealingKey(std::span<const uint8_t> context,
                                               uint32_t vmpl) {
  KeyRequest q;
  q.guest_field_select = field_select::kPolicy | field_select::kMeasurement;
  q.vmpl = vmpl;
  CPC_ASSIGN_OR_RETURN(SecretBytes base, GetDerivedKey(q));
  auto label = Str("libcpc-seal");
  std::vector<uint8_t> info(label.begin(), label.end());
  info.insert(info.end(), context.begin(), context.end());
  SecretBytes key(32);
  CPC_RETURN_IF_ERROR(HkdfSha384(base.span(), {}, info, key.mutable_span()));
  return key;
}

}  // namespace sev
CPC_NAMESPACE_END
