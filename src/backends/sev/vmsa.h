// The SEV-ES/SNP VM save area (VMSA): one 4 KiB page per (vCPU, VMPL).
//
// Offsets follow Linux arch/x86/include/asm/svm.h `struct sev_es_save_area`
// (static_asserts there; COCONUT cpuarch/src/vmsa.rs agrees; the TLB_ID 0x3D0
// and PCPU_ID 0x3D8 offsets are also in APM vol. 2 sec. 15.36.15). Fields
// libcpc does not model (x87/SSE/AVX state at 0x400+, LBRs, ...) are kept
// verbatim when a page is parsed and re-serialised through VmsaPage, so an
// export/import round trip preserves the whole page.
//
// Plain value types; not synchronised. Parse never fails on content (a VMSA
// is just bytes); callers check vmpl / sev_features / EFER.SVME themselves.
#ifndef CPC_SRC_BACKENDS_SEV_VMSA_H_
#define CPC_SRC_BACKENDS_SEV_VMSA_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include <cpc/types.h>
#include <cpc/version.h>

CPC_NAMESPACE_BEGIN
namespace sev {

namespace vmsa_off {
inline constexpr size_t kEs = 0x000;     // 10 segments x 16 B: es cs ss ds fs
inline constexpr size_t kSegCount = 10;  // gs gdtr ldtr idtr tr
inline constexpr size_t kVmpl = 0x0CA;
inline constexpr size_t kCpl = 0x0CB;
inline constexpr size_t kEfer = 0x0D0;
inline constexpr size_t kXss = 0x140;
inline constexpr size_t kCr4 = 0x148;
inline constexpr size_t kCr3 = 0x150;
inline constexpr size_t kCr0 = 0x158;
inline constexpr size_t kDr7 = 0x160;
inline constexpr size_t kDr6 = 0x168;
inline constexpr size_t kRflags = 0x170;
inline constexpr size_t kRip = 0x178;
inline constexpr size_t kRsp = 0x1D8;
inline constexpr size_t kRax = 0x1F8;
inline constexpr size_t kStar = 0x200;
inline constexpr size_t kLstar = 0x208;
inline constexpr size_t kCstar = 0x210;
inline constexpr size_t kSfmask = 0x218;
inline constexpr size_t kKernelGsBase = 0x220;
inline constexpr size_t kCr2 = 0x240;
inline constexpr size_t kGPat = 0x268;
inline constexpr size_t kRcx = 0x308;
inline constexpr size_t kRdx = 0x310;
inline constexpr size_t kRbx = 0x318;
inline constexpr size_t kRbp = 0x328;
inline constexpr size_t kRsi = 0x330;
inline constexpr size_t kRdi = 0x338;
inline constexpr size_t kR8 = 0x340;  // r8..r15 consecutive u64 up to 0x378
inline constexpr size_t kGuestExitInfo1 = 0x390;
inline constexpr size_t kGuestExitInfo2 = 0x398;
inline constexpr size_t kGuestExitIntInfo = 0x3A0;
inline constexpr size_t kGuestNrip = 0x3A8;
inline constexpr size_t kSevFeatures = 0x3B0;
inline constexpr size_t kVintrCtrl = 0x3B8;
inline constexpr size_t kGuestExitCode = 0x3C0;
inline constexpr size_t kVirtualTom = 0x3C8;
inline constexpr size_t kTlbId = 0x3D0;
inline constexpr size_t kPcpuId = 0x3D8;
inline constexpr size_t kEventInj = 0x3E0;
inline constexpr size_t kXcr0 = 0x3E8;
}  // namespace vmsa_off

// struct vmcb_seg: selector u16, attrib u16, limit u32, base u64.
struct VmcbSeg {
  uint16_t selector = 0;
  uint16_t attrib = 0;
  uint32_t limit = 0;
  uint64_t base = 0;
  friend bool operator==(const VmcbSeg&, const VmcbSeg&) = default;
};

// General-purpose registers in x86 encoding order.
enum Gpr : int {
  kRax = 0,
  kRcx,
  kRdx,
  kRbx,
  kRsp,
  kRbp,
  kRsi,
  kRdi,
  kR8,
  kR9,
  kR10,
  kR11,
  kR12,
  kR13,
  kR14,
  kR15,
  kGprCount
};
// VMSA offset of general-purpose register `r`.
size_t GprOffset(Gpr r);

// The modelled architectural fields of a VMSA.
struct Vmsa {
  std::array<VmcbSeg, vmsa_off::kSegCount>
      segs{};  // es cs ss ds fs gs gdtr ldtr idtr tr
  uint8_t vmpl = 0;
  uint8_t cpl = 0;
  uint64_t efer = 0;
  uint64_t xss = 0, cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, dr6 = 0, dr7 = 0;
  uint64_t rflags = 0x2, rip = 0;
  std::array<uint64_t, kGprCount> gpr{};
  uint64_t star = 0, lstar = 0, cstar = 0, sfmask = 0, kernel_gs_base = 0;
  uint64_t g_pat = 0;
  uint64_t guest_exit_info1 = 0, guest_exit_info2 = 0, guest_exit_code = 0;
  uint64_t sev_features = 0;
  uint64_t virtual_tom = 0;
  uint64_t xcr0 = 1;

  bool runnable() const;  // EFER.SVME (COCONUT VMSAControl::enable)
  // Writes the modelled fields into `page`, leaving every other byte as is.
  void WriteTo(std::span<uint8_t, kPageSize> page) const;
  // A fresh page: modelled fields set, everything else zero.
  std::vector<uint8_t> ToPage() const;
  static Vmsa Parse(std::span<const uint8_t, kPageSize> page);

  friend bool operator==(const Vmsa&, const Vmsa&) = default;
};

// Raw field access on a VMSA page (little-endian).
uint64_t VmsaLoad64(std::span<const uint8_t, kPageSize> page, size_t off);
void VmsaStore64(std::span<uint8_t, kPageSize> page, size_t off, uint64_t v);

}  // namespace sev
CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_SEV_VMSA_H_
