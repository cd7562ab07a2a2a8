#include "backends/sev/attestation.h"

#include <cstring>
#include <string>

#include <fmt/format.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/bytes.h"

CPC_NAMESPACE_BEGIN
namespace sev {

namespace {

Status OsslError(const char* what) {
  return Status(Code::kInternal, fmt::format("OpenSSL: {} failed", what));
}

template <typename T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using BnPtr = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_clear_free>>;
using BnCtxPtr = std::unique_ptr<BN_CTX, Deleter<BN_CTX, BN_CTX_free>>;
using GroupPtr = std::unique_ptr<EC_GROUP, Deleter<EC_GROUP, EC_GROUP_free>>;
using PointPtr = std::unique_ptr<EC_POINT, Deleter<EC_POINT, EC_POINT_free>>;
using PkeyCtxPtr =
    std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
using MdCtxPtr =
    std::unique_ptr<EVP_MD_CTX, Deleter<EVP_MD_CTX, EVP_MD_CTX_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using SigPtr = std::unique_ptr<ECDSA_SIG, Deleter<ECDSA_SIG, ECDSA_SIG_free>>;
using ParamBldPtr =
    std::unique_ptr<OSSL_PARAM_BLD,
                    Deleter<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>>;
using ParamPtr =
    std::unique_ptr<OSSL_PARAM, Deleter<OSSL_PARAM, OSSL_PARAM_free>>;

// Real AMD VCEK certificates carry the chip ID in this extension (hwID).
constexpr const char* kHwIdOid = "1.3.6.1.4.1.3704.1.4";
// Fixed validity (2024-01-01 .. 2049-01-01) so certificates are
// reproducible apart from the (randomised) ECDSA signature.
constexpr time_t kNotBefore = 1704067200;
constexpr long kValiditySeconds = 25L * 365 * 24 * 3600;

std::span<const uint8_t> Str(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

X509_NAME* MakeName(const char* cn) {
  X509_NAME* n = X509_NAME_new();
  X509_NAME_add_entry_by_txt(
      n, "OU", MBSTRING_ASC,
      reinterpret_cast<const unsigned char*>("Engineering"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(
                                 "Advanced Micro Devices (emulated by libcpc)"),
                             -1, -1, 0);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn), -1, -1,
                             0);
  return n;
}

// Builds and signs a certificate; `hwid` adds the hwID extension.
Result<std::vector<uint8_t>> MakeCert(const EcKey& subject, const char* cn,
                                      const EcKey& issuer,
                                      const char* issuer_cn, bool ca,
                                      long serial, const ChipId* hwid) {
  X509Ptr x(X509_new());
  if (!x) return OsslError("X509_new");
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial);
  ASN1_TIME_set(X509_getm_notBefore(x.get()), kNotBefore);
  ASN1_TIME_set(X509_getm_notAfter(x.get()), kNotBefore + kValiditySeconds);
  X509_NAME* sn = MakeName(cn);
  X509_NAME* in = MakeName(issuer_cn);
  X509_set_subject_name(x.get(), sn);
  X509_set_issuer_name(x.get(), in);
  X509_NAME_free(sn);
  X509_NAME_free(in);
  if (X509_set_pubkey(x.get(), subject.get()) != 1)
    return OsslError("X509_set_pubkey");
  X509_EXTENSION* bc =
      X509V3_EXT_conf_nid(nullptr, nullptr, NID_basic_constraints,
                          ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  X509_EXTENSION* ku = X509V3_EXT_conf_nid(
      nullptr, nullptr, NID_key_usage,
      ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  if (!bc || !ku) return OsslError("X509V3_EXT_conf_nid");
  X509_add_ext(x.get(), bc, -1);
  X509_add_ext(x.get(), ku, -1);
  X509_EXTENSION_free(bc);
  X509_EXTENSION_free(ku);
  if (hwid) {
    ASN1_OBJECT* obj = OBJ_txt2obj(kHwIdOid, 1);
    ASN1_OCTET_STRING* val = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(val, hwid->data(), static_cast<int>(hwid->size()));
    X509_EXTENSION* ext = X509_EXTENSION_create_by_OBJ(nullptr, obj, 0, val);
    bool ok = ext && X509_add_ext(x.get(), ext, -1) == 1;
    X509_EXTENSION_free(ext);
    ASN1_OCTET_STRING_free(val);
    ASN1_OBJECT_free(obj);
    if (!ok) return OsslError("hwID extension");
  }
  if (X509_sign(x.get(), issuer.get(), EVP_sha384()) <= 0)
    return OsslError("X509_sign");
  int n = i2d_X509(x.get(), nullptr);
  if (n <= 0) return OsslError("i2d_X509");
  std::vector<uint8_t> der(static_cast<size_t>(n));
  unsigned char* p = der.data();
  i2d_X509(x.get(), &p);
  return der;
}

X509Ptr ParseCert(const std::vector<uint8_t>& der) {
  const unsigned char* p = der.data();
  X509* x = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
  if (x && p != der.data() + der.size()) {
    X509_free(x);
    return nullptr;
  }
  return X509Ptr(x);
}

std::vector<uint8_t> SpkiDer(EVP_PKEY* k) {
  int n = i2d_PUBKEY(k, nullptr);
  if (n <= 0) return {};
  std::vector<uint8_t> der(static_cast<size_t>(n));
  unsigned char* p = der.data();
  i2d_PUBKEY(k, &p);
  return der;
}

std::optional<ChipId> HwIdOf(X509* x) {
  ASN1_OBJECT* obj = OBJ_txt2obj(kHwIdOid, 1);
  int idx = X509_get_ext_by_OBJ(x, obj, -1);
  ASN1_OBJECT_free(obj);
  if (idx < 0) return std::nullopt;
  ASN1_OCTET_STRING* v = X509_EXTENSION_get_data(X509_get_ext(x, idx));
  if (!v || ASN1_STRING_length(v) != 64) return std::nullopt;
  ChipId id;
  std::memcpy(id.data(), ASN1_STRING_get0_data(v), id.size());
  return id;
}

Status VerifySigLe(EVP_PKEY* key, std::span<const uint8_t> msg,
                   std::span<const uint8_t> r_le,
                   std::span<const uint8_t> s_le) {
  SigPtr sig(ECDSA_SIG_new());
  BIGNUM* r = BN_lebin2bn(r_le.data(), static_cast<int>(r_le.size()), nullptr);
  BIGNUM* s = BN_lebin2bn(s_le.data(), static_cast<int>(s_le.size()), nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return OsslError("ECDSA_SIG");
  }
  int n = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (n <= 0)
    return Status(Code::kReportBadSignature, "signature not encodable");
  std::vector<uint8_t> der(static_cast<size_t>(n));
  unsigned char* p = der.data();
  i2d_ECDSA_SIG(sig.get(), &p);
  MdCtxPtr md(EVP_MD_CTX_new());
  if (!md ||
      EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha384(), nullptr, key) != 1)
    return OsslError("EVP_DigestVerifyInit");
  if (EVP_DigestVerify(md.get(), der.data(), der.size(), msg.data(),
                       msg.size()) != 1)
    return Status(Code::kReportBadSignature,
                  "report signature does not verify with the VCEK");
  return Status::Ok();
}

}  // namespace

// ------------------------------------------------------------------ HKDF

Status HkdfSha384(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                  std::span<const uint8_t> info, std::span<uint8_t> out) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (!kdf) return OsslError("EVP_KDF_fetch(HKDF)");
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (!ctx) return OsslError("EVP_KDF_CTX_new");
  char digest[] = "SHA384";
  OSSL_PARAM params[5];
  size_t i = 0;
  params[i++] =
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[i++] = OSSL_PARAM_construct_octet_string(
      OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(ikm.data()), ikm.size());
  if (!salt.empty())
    params[i++] = OSSL_PARAM_construct_octet_string(
        OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()), salt.size());
  params[i++] = OSSL_PARAM_construct_octet_string(
      OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info.data()), info.size());
  params[i] = OSSL_PARAM_construct_end();
  int rc = EVP_KDF_derive(ctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(ctx);
  if (rc != 1) return OsslError("EVP_KDF_derive(HKDF)");
  return Status::Ok();
}

// ------------------------------------------------------------ TcbVersion

uint64_t TcbVersion::Raw() const {
  return uint64_t{bootloader} | (uint64_t{tee} << 8) | (uint64_t{snp} << 48) |
         (uint64_t{microcode} << 56);
}
TcbVersion TcbVersion::FromRaw(uint64_t r) {
  return {static_cast<uint8_t>(r), static_cast<uint8_t>(r >> 8),
          static_cast<uint8_t>(r >> 48), static_cast<uint8_t>(r >> 56)};
}
bool TcbVersion::NotAbove(const TcbVersion& o) const {
  return bootloader <= o.bootloader && tee <= o.tee && snp <= o.snp &&
         microcode <= o.microcode;
}

// ----------------------------------------------------- AttestationReport

std::vector<uint8_t> AttestationReport::Encode() const {
  namespace o = report_off;
  std::vector<uint8_t> b(kReportSize, 0);
  uint8_t* p = b.data();
  auto put = [p](size_t off, std::span<const uint8_t> v) {
    std::memcpy(p + off, v.data(), v.size());
  };
  StoreLe<uint32_t>(p + o::kVersion, version);
  StoreLe<uint32_t>(p + o::kGuestSvn, guest_svn);
  StoreLe<uint64_t>(p + o::kPolicy, policy);
  put(o::kFamilyId, family_id);
  put(o::kImageId, image_id);
  StoreLe<uint32_t>(p + o::kVmpl, vmpl);
  StoreLe<uint32_t>(p + o::kSignatureAlgo, signature_algo);
  StoreLe<uint64_t>(p + o::kCurrentTcb, current_tcb);
  StoreLe<uint64_t>(p + o::kPlatformInfo, platform_info);
  StoreLe<uint32_t>(p + o::kKeyInfo, key_info);
  put(o::kReportData, report_data);
  put(o::kMeasurement, measurement);
  put(o::kHostData, host_data);
  put(o::kIdKeyDigest, id_key_digest);
  put(o::kAuthorKeyDigest, author_key_digest);
  put(o::kReportId, report_id);
  put(o::kReportIdMa, report_id_ma);
  StoreLe<uint64_t>(p + o::kReportedTcb, reported_tcb);
  put(o::kChipId, chip_id);
  StoreLe<uint64_t>(p + o::kCommittedTcb, committed_tcb);
  p[o::kCurrentBuild] = current_build;
  p[o::kCurrentMinor] = current_minor;
  p[o::kCurrentMajor] = current_major;
  p[o::kCommittedBuild] = committed_build;
  p[o::kCommittedMinor] = committed_minor;
  p[o::kCommittedMajor] = committed_major;
  StoreLe<uint64_t>(p + o::kLaunchTcb, launch_tcb);
  return b;
}

Result<AttestationReport> AttestationReport::Decode(
    std::span<const uint8_t> b) {
  namespace o = report_off;
  if (b.size() != kReportSize)
    return Status(
        Code::kInvalidArgument,
        fmt::format("report is {} bytes, expected {}", b.size(), kReportSize));
  const uint8_t* p = b.data();
  auto get = [p](size_t off, std::span<uint8_t> v) {
    std::memcpy(v.data(), p + off, v.size());
  };
  AttestationReport r;
  r.version = LoadLe<uint32_t>(p + o::kVersion);
  r.guest_svn = LoadLe<uint32_t>(p + o::kGuestSvn);
  r.policy = LoadLe<uint64_t>(p + o::kPolicy);
  get(o::kFamilyId, r.family_id);
  get(o::kImageId, r.image_id);
  r.vmpl = LoadLe<uint32_t>(p + o::kVmpl);
  r.signature_algo = LoadLe<uint32_t>(p + o::kSignatureAlgo);
  r.current_tcb = LoadLe<uint64_t>(p + o::kCurrentTcb);
  r.platform_info = LoadLe<uint64_t>(p + o::kPlatformInfo);
  r.key_info = LoadLe<uint32_t>(p + o::kKeyInfo);
  get(o::kReportData, r.report_data);
  get(o::kMeasurement, r.measurement);
  get(o::kHostData, r.host_data);
  get(o::kIdKeyDigest, r.id_key_digest);
  get(o::kAuthorKeyDigest, r.author_key_digest);
  get(o::kReportId, r.report_id);
  get(o::kReportIdMa, r.report_id_ma);
  r.reported_tcb = LoadLe<uint64_t>(p + o::kReportedTcb);
  get(o::kChipId, r.chip_id);
  r.committed_tcb = LoadLe<uint64_t>(p + o::kCommittedTcb);
  r.current_build = p[o::kCurrentBuild];
  r.current_minor = p[o::kCurrentMinor];
  r.current_major = p[o::kCurrentMajor];
  r.committed_build = p[o::kCommittedBuild];
  r.committed_minor = p[o::kCommittedMinor];
  r.committed_major = p[o::kCommittedMajor];
  r.launch_tcb = LoadLe<uint64_t>(p + o::kLaunchTcb);
  return r;
}

// ------------------------------------------------------------------ EcKey

void EcKey::Free::operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
EcKey::~EcKey() = default;

Result<EcKey> EcKey::Derive(std::span<const uint8_t> seed,
                            std::string_view label) {
  SecretBytes okm(64);
  CPC_RETURN_IF_ERROR(HkdfSha384(seed, Str("libcpc-sev-ecdsa-p384"), Str(label),
                                 okm.mutable_span()));
  BnCtxPtr bctx(BN_CTX_new());
  GroupPtr group(EC_GROUP_new_by_curve_name(NID_secp384r1));
  if (!bctx || !group) return OsslError("EC group");
  BnPtr d(BN_bin2bn(okm.data(), static_cast<int>(okm.size()), nullptr));
  BnPtr nm1(BN_dup(EC_GROUP_get0_order(group.get())));
  if (!d || !nm1 || !BN_sub_word(nm1.get(), 1) ||
      !BN_mod(d.get(), d.get(), nm1.get(), bctx.get()) ||
      !BN_add_word(d.get(), 1))
    return OsslError("scalar reduction");
  PointPtr pub(EC_POINT_new(group.get()));
  if (!pub || !EC_POINT_mul(group.get(), pub.get(), d.get(), nullptr, nullptr,
                            bctx.get()))
    return OsslError("EC_POINT_mul");
  uint8_t oct[97];
  size_t oct_len =
      EC_POINT_point2oct(group.get(), pub.get(), POINT_CONVERSION_UNCOMPRESSED,
                         oct, sizeof(oct), bctx.get());
  if (oct_len != sizeof(oct)) return OsslError("EC_POINT_point2oct");
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld ||
      !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME,
                                       "P-384", 0) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, d.get()) ||
      !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, oct,
                                        oct_len))
    return OsslError("OSSL_PARAM_BLD");
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_KEYPAIR, params.get()) != 1)
    return OsslError("EVP_PKEY_fromdata");
  return EcKey(pkey);
}

std::vector<uint8_t> EcKey::PublicDer() const { return SpkiDer(key_.get()); }

Result<std::array<uint8_t, 144>> EcKey::SignLe(
    std::span<const uint8_t> msg) const {
  MdCtxPtr md(EVP_MD_CTX_new());
  if (!md || EVP_DigestSignInit(md.get(), nullptr, EVP_sha384(), nullptr,
                                key_.get()) != 1)
    return OsslError("EVP_DigestSignInit");
  size_t len = 0;
  if (EVP_DigestSign(md.get(), nullptr, &len, msg.data(), msg.size()) != 1)
    return OsslError("EVP_DigestSign");
  std::vector<uint8_t> der(len);
  if (EVP_DigestSign(md.get(), der.data(), &len, msg.data(), msg.size()) != 1)
    return OsslError("EVP_DigestSign");
  const unsigned char* p = der.data();
  SigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(len)));
  if (!sig) return OsslError("d2i_ECDSA_SIG");
  const BIGNUM *r = nullptr, *s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  std::array<uint8_t, 144> out{};
  if (BN_bn2lebinpad(r, out.data(), 72) != 72 ||
      BN_bn2lebinpad(s, out.data() + 72, 72) != 72)
    return OsslError("BN_bn2lebinpad");
  return out;
}

// --------------------------------------------------------- EmulatedVendor

Result<EmulatedVendor> EmulatedVendor::Create(
    std::span<const uint8_t> vendor_seed) {
  CPC_ASSIGN_OR_RETURN(EcKey ark, EcKey::Derive(vendor_seed, "ARK"));
  CPC_ASSIGN_OR_RETURN(EcKey ask, EcKey::Derive(vendor_seed, "ASK"));
  EmulatedVendor v(std::move(ark), std::move(ask));
  CPC_ASSIGN_OR_RETURN(v.ark_cert_, MakeCert(v.ark_, "ARK-Emulated", v.ark_,
                                             "ARK-Emulated", true, 1, nullptr));
  CPC_ASSIGN_OR_RETURN(v.ask_cert_, MakeCert(v.ask_, "SEV-Emulated", v.ark_,
                                             "ARK-Emulated", true, 2, nullptr));
  return v;
}

Result<std::vector<uint8_t>> EmulatedVendor::IssueVcek(
    const EcKey& vcek, const ChipId& chip_id, const TcbVersion& tcb) const {
  return MakeCert(vcek, "SEV-VCEK", ask_, "SEV-Emulated", false,
                  static_cast<long>(tcb.Raw() & 0x7fffffff) + 3, &chip_id);
}

// ---------------------------------------------------------- Evidence

Result<std::vector<uint8_t>> DefaultArkSpki() {
  static const Result<std::vector<uint8_t>> ark =
      []() -> Result<std::vector<uint8_t>> {
    CPC_ASSIGN_OR_RETURN(EmulatedVendor v, EmulatedVendor::Create());
    return v.ark_public_der();
  }();
  return ark;
}

std::vector<uint8_t> Evidence::Encode() const {
  std::vector<uint8_t> out;
  ByteWriter w(&out);
  w.Int<uint32_t>(kEvidenceMagic);
  w.Int<uint32_t>(kEvidenceVersion);
  for (const auto* f : {&report, &chain.ark, &chain.ask, &chain.vcek}) {
    w.Int<uint32_t>(static_cast<uint32_t>(f->size()));
    w.Bytes(*f);
  }
  return out;
}

Result<Evidence> Evidence::Decode(std::span<const uint8_t> bytes) {
  ByteReader r(bytes);
  const uint32_t magic = r.Int<uint32_t>();
  const uint32_t version = r.Int<uint32_t>();
  if (!r.ok() || magic != kEvidenceMagic)
    return Status(Code::kInvalidArgument, "not SEV-SNP evidence");
  if (version != kEvidenceVersion)
    return Status(Code::kInvalidArgument,
                  fmt::format("SEV-SNP evidence version {} (expected {})",
                              version, kEvidenceVersion));
  Evidence e;
  for (auto* f : {&e.report, &e.chain.ark, &e.chain.ask, &e.chain.vcek}) {
    const uint32_t n = r.Int<uint32_t>();
    if (n > kEvidenceMaxField)
      return Status(Code::kInvalidArgument, "oversized evidence field");
    auto b = r.Bytes(n);
    if (!r.ok())
      return Status(Code::kInvalidArgument, "truncated SEV-SNP evidence");
    f->assign(b.begin(), b.end());
  }
  if (!r.done())
    return Status(Code::kInvalidArgument, "trailing bytes after evidence");
  if (e.report.size() != kReportSize)
    return Status(Code::kInvalidArgument,
                  fmt::format("evidence report of {} bytes", e.report.size()));
  return e;
}

Status VerifyEvidence(std::span<const uint8_t> evidence,
                      std::span<const uint8_t> trusted_ark_spki,
                      const ReportExpectations& expect) {
  CPC_ASSIGN_OR_RETURN(Evidence e, Evidence::Decode(evidence));
  return VerifyReport(e.report, e.chain, trusted_ark_spki, expect);
}

// ---------------------------------------------------------- VerifyReport

Status VerifyReport(std::span<const uint8_t> report, const CertChain& chain,
                    std::span<const uint8_t> trusted_ark_spki,
                    const ReportExpectations& expect) {
  CPC_ASSIGN_OR_RETURN(AttestationReport r, AttestationReport::Decode(report));
  auto bad_chain = [](const char* why) {
    return Status(Code::kReportBadChain, why);
  };
  X509Ptr ark = ParseCert(chain.ark), ask = ParseCert(chain.ask),
          vcek = ParseCert(chain.vcek);
  if (!ark || !ask || !vcek) return bad_chain("certificate does not parse");
  EVP_PKEY* ark_key = X509_get0_pubkey(ark.get());
  EVP_PKEY* ask_key = X509_get0_pubkey(ask.get());
  EVP_PKEY* vcek_key = X509_get0_pubkey(vcek.get());
  if (!ark_key || !ask_key || !vcek_key) return bad_chain("no public key");
  std::vector<uint8_t> ark_spki = SpkiDer(ark_key);
  if (ark_spki.size() != trusted_ark_spki.size() ||
      std::memcmp(ark_spki.data(), trusted_ark_spki.data(), ark_spki.size()))
    return bad_chain("ARK is not the trusted root");
  if (X509_verify(ark.get(), ark_key) != 1)
    return bad_chain("ARK self-signature invalid");
  if (X509_check_issued(ark.get(), ask.get()) != X509_V_OK ||
      X509_verify(ask.get(), ark_key) != 1)
    return bad_chain("ASK not signed by the ARK");
  if (X509_check_issued(ask.get(), vcek.get()) != X509_V_OK ||
      X509_verify(vcek.get(), ask_key) != 1)
    return bad_chain("VCEK not signed by the ASK");
  if (X509_check_ca(ark.get()) <= 0 || X509_check_ca(ask.get()) <= 0)
    return bad_chain("ARK/ASK is not a CA");
  if (EVP_PKEY_get_base_id(vcek_key) != EVP_PKEY_EC ||
      EVP_PKEY_get_bits(vcek_key) != 384)
    return bad_chain("VCEK is not an EC P-384 key");
  if (r.signature_algo != kSigAlgoEcdsaP384Sha384 || r.version < 2)
    return Status(Code::kReportBadSignature, "unsupported report version/algo");
  CPC_RETURN_IF_ERROR(VerifySigLe(
      vcek_key, report.first(kReportSignedSize),
      report.subspan(report_off::kSignatureR, report_off::kSigComponent),
      report.subspan(report_off::kSignatureS, report_off::kSigComponent)));
  // Signed by the VCEK of the chip it claims (unless MASK_CHIP_KEY).
  bool mask_chip = (r.key_info >> 1) & 1;
  auto hwid = HwIdOf(vcek.get());
  if (!mask_chip && (!hwid || *hwid != r.chip_id))
    return bad_chain("VCEK hwID differs from the report's chip_id");
  auto mismatch = [](size_t off, const char* what) {
    return Status(
        Code::kMeasurementMismatch,
        fmt::format("report {} differs from the expected value", what),
        static_cast<int64_t>(off));
  };
  if (expect.measurement && *expect.measurement != r.measurement)
    return mismatch(report_off::kMeasurement, "measurement");
  if (expect.policy && *expect.policy != r.policy)
    return mismatch(report_off::kPolicy, "policy");
  if (expect.vmpl && *expect.vmpl != r.vmpl)
    return mismatch(report_off::kVmpl, "vmpl");
  if (expect.chip_id && *expect.chip_id != r.chip_id)
    return mismatch(report_off::kChipId, "chip_id");
  if (expect.report_data &&
      !ConstantTimeEqual(*expect.report_data, r.report_data))
    return Status(Code::kReportDataMismatch,
                  "report_data differs from the expected value",
                  static_cast<int64_t>(report_off::kReportData));
  return Status::Ok();
}

}  // namespace sev
CPC_NAMESPACE_END
