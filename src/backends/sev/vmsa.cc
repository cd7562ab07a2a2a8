#include "backends/sev/vmsa.h"

#include "backends/sev/snp_abi.h"
#include "core/bytes.h"

CPC_NAMESPACE_BEGIN
namespace sev {

size_t GprOffset(Gpr r) {
  switch (r) {
    case kRax:
      return vmsa_off::kRax;
    case kRcx:
      return vmsa_off::kRcx;
    case kRdx:
      return vmsa_off::kRdx;
    case kRbx:
      return vmsa_off::kRbx;
    case kRsp:
      return vmsa_off::kRsp;
    case kRbp:
      return vmsa_off::kRbp;
    case kRsi:
      return vmsa_off::kRsi;
    case kRdi:
      return vmsa_off::kRdi;
    default:
      return vmsa_off::kR8 + 8 * static_cast<size_t>(r - kR8);
  }
}

uint64_t VmsaLoad64(std::span<const uint8_t, kPageSize> page, size_t off) {
  return LoadLe<uint64_t>(page.data() + off);
}
void VmsaStore64(std::span<uint8_t, kPageSize> page, size_t off, uint64_t v) {
  StoreLe<uint64_t>(page.data() + off, v);
}

bool Vmsa::runnable() const { return (efer & kEferSvme) != 0; }

void Vmsa::WriteTo(std::span<uint8_t, kPageSize> p) const {
  uint8_t* b = p.data();
  for (size_t i = 0; i < segs.size(); ++i) {
    uint8_t* s = b + vmsa_off::kEs + 16 * i;
    StoreLe<uint16_t>(s, segs[i].selector);
    StoreLe<uint16_t>(s + 2, segs[i].attrib);
    StoreLe<uint32_t>(s + 4, segs[i].limit);
    StoreLe<uint64_t>(s + 8, segs[i].base);
  }
  b[vmsa_off::kVmpl] = vmpl;
  b[vmsa_off::kCpl] = cpl;
  struct F {
    size_t off;
    uint64_t v;
  };
  const F fields[] = {
      {vmsa_off::kEfer, efer},
      {vmsa_off::kXss, xss},
      {vmsa_off::kCr4, cr4},
      {vmsa_off::kCr3, cr3},
      {vmsa_off::kCr0, cr0},
      {vmsa_off::kDr7, dr7},
      {vmsa_off::kDr6, dr6},
      {vmsa_off::kRflags, rflags},
      {vmsa_off::kRip, rip},
      {vmsa_off::kStar, star},
      {vmsa_off::kLstar, lstar},
      {vmsa_off::kCstar, cstar},
      {vmsa_off::kSfmask, sfmask},
      {vmsa_off::kKernelGsBase, kernel_gs_base},
      {vmsa_off::kCr2, cr2},
      {vmsa_off::kGPat, g_pat},
      {vmsa_off::kGuestExitInfo1, guest_exit_info1},
      {vmsa_off::kGuestExitInfo2, guest_exit_info2},
      {vmsa_off::kSevFeatures, sev_features},
      {vmsa_off::kGuestExitCode, guest_exit_code},
      {vmsa_off::kVirtualTom, virtual_tom},
      {vmsa_off::kXcr0, xcr0},
  };
  for (const F& f : fields) StoreLe<uint64_t>(b + f.off, f.v);
  for (int r = 0; r < kGprCount; ++r)
    StoreLe<uint64_t>(b + GprOffset(static_cast<Gpr>(r)), gpr[r]);
}

std::vector<uint8_t> Vmsa::ToPage() const {
  std::vector<uint8_t> page(kPageSize, 0);
  WriteTo(std::span<uint8_t, kPageSize>(page.data(), kPageSize));
  return page;
}

Vmsa Vmsa::Parse(std::span<const uint8_t, kPageSize> p) {
  const uint8_t* b = p.data();
  Vmsa v;
  for (size_t i = 0; i < v.segs.size(); ++i) {
    const uint8_t* s = b + vmsa_off::kEs + 16 * i;
    v.segs[i] = {LoadLe<uint16_t>(s), LoadLe<uint16_t>(s + 2),
                 LoadLe<uint32_t>(s + 4), LoadLe<uint64_t>(s + 8)};
  }
  auto u64 = [b](size_t off) { return LoadLe<uint64_t>(b + off); };
  v.vmpl = b[vmsa_off::kVmpl];
  v.cpl = b[vmsa_off::kCpl];
  v.efer = u64(vmsa_off::kEfer);
  v.xss = u64(vmsa_off::kXss);
  v.cr4 = u64(vmsa_off::kCr4);
  v.cr3 = u64(vmsa_off::kCr3);
  v.cr0 = u64(vmsa_off::kCr0);
  v.dr7 = u64(vmsa_off::kDr7);
  v.dr6 = u64(vmsa_off::kDr6);
  v.rflags = u64(vmsa_off::kRflags);
  v.rip = u64(vmsa_off::kRip);
  v.star = u64(vmsa_off::kStar);
  v.lstar = u64(vmsa_off::kLstar);
  v.cstar = u64(vmsa_off::kCstar);
  v.sfmask = u64(vmsa_off::kSfmask);
  v.kernel_gs_base = u64(vmsa_off::kKernelGsBase);
  v.cr2 = u64(vmsa_off::kCr2);
  v.g_pat = u64(vmsa_off::kGPat);
  v.guest_exit_info1 = u64(vmsa_off::kGuestExitInfo1);
  v.guest_exit_info2 = u64(vmsa_off::kGuestExitInfo2);
  v.sev_features = u64(vmsa_off::kSevFeatures);
  v.guest_exit_code = u64(vmsa_off::kGuestExitCode);
  v.virtual_tom = u64(vmsa_off::kVirtualTom);
  v.xcr0 = u64(vmsa_off::kXcr0);
  for (int r = 0; r < kGprCount; ++r)
    v.gpr[r] = u64(GprOffset(static_cast<Gpr>(r)));
  return v;
}

}  // namespace sev
CPC_NAMESPACE_END
