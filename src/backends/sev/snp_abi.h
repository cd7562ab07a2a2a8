// SEV-SNP architectural constants used by the platform model: instruction
// return codes, fault encodings, GHCB/MSR-protocol numbers, SVSM protocol
// numbers, firmware status codes and guest-message types.
//
// Sources (see shared/research/sev-snp.md for the full list):
//  [APM]  AMD64 APM vol. 2 sec. 15.36 (RMP checks, Tables 15-39/15-40/15-41,
//         NPF EXITINFO1 bits 31/34/35/36, #VC PAGE_NOT_VALIDATED 0x404).
//  [LNX]  Linux arch/x86/include/asm/sev.h, sev-common.h, uapi/asm/svm.h,
//         include/uapi/linux/psp-sev.h (sev_ret_code), include/linux/psp-sev.h.
//  [MSDOC] MSVC __pvalidate/__rmpadjust/__rmpupdate intrinsic docs.
//  [COCO] coconut-svsm kernel/src/protocols/{core,errors}.rs, sev/ghcb.rs.
//
// Header-only; no state. Everything is in namespace cpc::sev.
#ifndef CPC_SRC_BACKENDS_SEV_SNP_ABI_H_
#define CPC_SRC_BACKENDS_SEV_SNP_ABI_H_

#include <cstdint>

#include <cpc/version.h>

CPC_NAMESPACE_BEGIN
namespace sev {

inline constexpr uint64_t k2MPages = 512;  // 4 KiB entries per 2 MiB page
inline constexpr uint32_t kMaxVmpl = 3;    // VMPL0..3

enum class PageSize : uint8_t { k4K = 0, k2M = 1 };  // RCX of PVALIDATE etc.

// ---- Instruction return codes (EAX) [MSDOC; LNX sev.h] ----
inline constexpr int64_t kRetSuccess = 0;
inline constexpr int64_t kFailInput = 1;  // PVALIDATE/RMPADJUST/RMPUPDATE
inline constexpr int64_t kFailPermission =
    2;                                      // RMPADJUST; RMPUPDATE (immutable)
inline constexpr int64_t kFailInUse = 3;    // RMPUPDATE/PSMASH
inline constexpr int64_t kFailOverlap = 4;  // RMPUPDATE 4K/2M overlap
inline constexpr int64_t kFailSizeMismatch = 6;  // PVALIDATE/RMPADJUST 2M on 4K

// ---- Faults, as Status subcodes ----
// #VMEXIT(NPF): Status code kPermissionDenied, subcode = EXITINFO1 [APM]:
inline constexpr uint64_t kNpfPresent = 1ull << 0;  // NPT mapping present
inline constexpr uint64_t kNpfWrite = 1ull << 1;
inline constexpr uint64_t kNpfFetch = 1ull << 4;
inline constexpr uint64_t kNpfRmp = 1ull << 31;  // RMP or VMPL check failed
inline constexpr uint64_t kNpfEnc = 1ull << 34;  // effective C-bit was 1
inline constexpr uint64_t kNpfSizeM = 1ull
                                      << 35;  // PVALIDATE/RMPADJUST 4K on 2M
inline constexpr uint64_t kNpfVmpl = 1ull << 36;  // VMPL permission check
// #VC PAGE_NOT_VALIDATED: Status code kPlatformError, subcode 0x404 [APM].
inline constexpr int64_t kVcPageNotValidated = 0x404;
// #GP(0) (e.g. PVALIDATE at VMPL>0, which the APM allows only at VMPL0):
// Status code kPermissionDenied, subcode kGpFault. Bit 40 is outside the
// EXITINFO1 bits above, so it cannot collide with an NPF subcode.
inline constexpr int64_t kGpFault = (1ll << 40) | 13;
// Host #PF with the RMP bit (host write to a guest-owned page): Status code
// kPermissionDenied, subcode kHostPfRmp (= PF error code: P|W|RMP).
inline constexpr int64_t kHostPfRmp = (1ll << 31) | 0x3;
// VMRUN refused: Status code kPlatformError, subcode VMEXIT_INVALID (-1).
inline constexpr int64_t kVmexitInvalid = -1;

// ---- RMPADJUST RDX [COCO RMPFlags; LNX sev.h] ----
inline constexpr uint64_t kRmpAdjTargetVmplMask = 0xff;
inline constexpr uint64_t kRmpAdjPermShift = 8;
inline constexpr uint64_t kRmpAdjVmsa = 1ull << 16;
// VMPL permission mask bits (Table 15-36).
inline constexpr uint8_t kPermRead = 1 << 0;
inline constexpr uint8_t kPermWrite = 1 << 1;
inline constexpr uint8_t kPermExecUser = 1 << 2;
inline constexpr uint8_t kPermExecSuper = 1 << 3;
inline constexpr uint8_t kPermAll = 0x0f;  // SSS (bit 4) is not modelled

// ---- GHCB [LNX sev-common.h, uapi svm.h; COCO ghcb.rs] ----
inline constexpr uint64_t kExitNpf = 0x400;
inline constexpr uint64_t kExitVmgexit = 0x403;
inline constexpr uint64_t kExitPsc = 0x80000010;
inline constexpr uint64_t kExitGuestRequest = 0x80000011;
inline constexpr uint64_t kExitApCreation = 0x80000013;
inline constexpr uint64_t kExitRunVmpl = 0x80000018;
inline constexpr uint64_t kApCreateOnInit = 0;
inline constexpr uint64_t kApCreate = 1;
inline constexpr uint64_t kApDestroy = 2;
// PSC NAE error returns in SW_EXITINFO2 (KVM; LNX sev-common.h).
inline constexpr uint64_t kPscErrorGeneric = 0x100ull << 32;
inline constexpr uint64_t kPscErrorInvalidHdr = (1ull << 32) | 1;
inline constexpr uint64_t kPscErrorInvalidEntry = (1ull << 32) | 2;
inline constexpr uint16_t kPscMaxEntries = 253;  // VMGEXIT_PSC_MAX_ENTRY
enum class PscOp : uint8_t {
  kPrivate = 1,
  kShared = 2,
  kPsmash = 3,
  kUnsmash = 4
};
// GHCB MSR protocol (GHCBInfo = bits 11:0).
inline constexpr uint64_t kMsrPscReq = 0x014;
inline constexpr uint64_t kMsrPscResp = 0x015;
inline constexpr uint64_t kMsrVmplReq = 0x016;
inline constexpr uint64_t kMsrVmplResp = 0x017;

// ---- SVSM core protocol [COCO protocols/core.rs, errors.rs; LNX sev.h] ----
inline constexpr uint32_t kSvsmCoreProtocol = 0;
inline constexpr uint32_t kSvsmCoreRemapCa = 0;
inline constexpr uint32_t kSvsmCorePvalidate = 1;
inline constexpr uint32_t kSvsmCoreCreateVcpu = 2;
inline constexpr uint32_t kSvsmCoreDeleteVcpu = 3;
inline constexpr uint32_t kSvsmCoreDepositMem = 4;
inline constexpr uint32_t kSvsmCoreWithdrawMem = 5;
inline constexpr uint32_t kSvsmCoreQueryProtocol = 6;
inline constexpr uint64_t SvsmCall(uint32_t protocol, uint32_t call) {
  return (uint64_t{protocol} << 32) | call;
}
inline constexpr uint64_t kSvsmSuccess = 0;
inline constexpr uint64_t kSvsmErrIncomplete = 0x80000000;
inline constexpr uint64_t kSvsmErrUnsupportedProtocol = 0x80000001;
inline constexpr uint64_t kSvsmErrUnsupportedCall = 0x80000002;
inline constexpr uint64_t kSvsmErrInvalidAddress = 0x80000003;
inline constexpr uint64_t kSvsmErrInvalidFormat = 0x80000004;
inline constexpr uint64_t kSvsmErrInvalidParameter = 0x80000005;
inline constexpr uint64_t kSvsmErrInvalidRequest = 0x80000006;
inline constexpr uint64_t kSvsmErrBusy = 0x80000007;

// ---- SEV firmware status codes [LNX uapi psp-sev.h enum sev_ret_code] ----
inline constexpr int64_t kSevSuccess = 0x00;
inline constexpr int64_t kSevInvalidPlatformState = 0x01;
inline constexpr int64_t kSevInvalidGuestState = 0x02;
inline constexpr int64_t kSevInvalidConfig = 0x03;
inline constexpr int64_t kSevInvalidLen = 0x04;
inline constexpr int64_t kSevPolicyFailure = 0x07;
inline constexpr int64_t kSevInvalidAddress = 0x09;
inline constexpr int64_t kSevInvalidParam = 0x16;
inline constexpr int64_t kSevInvalidPageSize = 0x19;
inline constexpr int64_t kSevInvalidPageState = 0x1A;
inline constexpr int64_t kSevInvalidPageOwner = 0x1C;
inline constexpr int64_t kSevAeadOflow = 0x1D;

// SNP_LAUNCH_UPDATE page types [LNX include/linux/psp-sev.h].
enum class LaunchPageType : uint8_t {
  kNormal = 1,
  kVmsa = 2,
  kZero = 3,
  kUnmeasured = 4,
  kSecrets = 5,
  kCpuid = 6,
};

// Guest message types [LNX sev.h enum msg_type].
enum class MsgType : uint8_t {
  kKeyReq = 3,
  kKeyRsp = 4,
  kReportReq = 5,
  kReportRsp = 6,
};

// SNP guest policy bits (SNP ABI, GUEST_POLICY).
inline constexpr uint64_t kPolicySmt = 1ull << 16;
inline constexpr uint64_t kPolicyReservedMbo = 1ull << 17;  // must be one
inline constexpr uint64_t kPolicyMigrateMa = 1ull << 18;
inline constexpr uint64_t kPolicyDebug = 1ull << 19;

// SEV_FEATURES (VMSA 0x3B0) bits [APM 15.36].
inline constexpr uint64_t kSevFeatSnpActive = 1ull << 0;
inline constexpr uint64_t kSevFeatVtom = 1ull << 1;
inline constexpr uint64_t kSevFeatReflectVc = 1ull << 2;
inline constexpr uint64_t kSevFeatRestrictedInj = 1ull << 3;
inline constexpr uint64_t kEferSvme = 1ull << 12;  // VMSA "runnable" bit

}  // namespace sev
CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_SEV_SNP_ABI_H_
