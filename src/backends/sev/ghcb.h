// GHCB page layout, the page-state-change (PSC) protocol and the GHCB MSR
// protocol, with both sides: the guest's request builders and ordering rules,
// and the (untrusted) host's handler as KVM implements it.
//
// Layout [COCONUT kernel/src/sev/ghcb.rs layout asserts; Linux
// arch/x86/include/asm/svm.h struct ghcb]: register save area with rax 0x1F8,
// rcx 0x308, rdx 0x310, rbx 0x318, r8 0x340; sw_exit_code 0x390,
// sw_exit_info_1 0x398, sw_exit_info_2 0x3A0, sw_scratch 0x3A8, valid_bitmap
// 0x3F0 (bit = offset/8), shared buffer 0x800 (0x7F0 bytes), protocol
// version 0xFFA (u16), usage 0xFFC (u32).
// PSC buffer [Linux sev-common.h struct psc_hdr/psc_entry]: header
// {u16 cur_entry, u16 end_entry, u32 reserved}, then up to 253 u64 entries
// {cur_page:12, gfn:40, operation:4, pagesize:1, reserved:7}.
// Ordering [COCONUT mm/page_visibility.rs]: private->shared = PVALIDATE
// (rescind) then PSC(shared); shared->private = PSC(private) then PVALIDATE.
//
// Threading: GhcbPage is a view (not synchronised; one vCPU owns a GHCB).
// The free functions are as thread-safe as SnpMachine.
#ifndef CPC_SRC_BACKENDS_SEV_GHCB_H_
#define CPC_SRC_BACKENDS_SEV_GHCB_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include <cpc/backend.h>
#include <cpc/status.h>
#include <cpc/types.h>
#include <cpc/version.h>

#include "backends/sev/snp_abi.h"
#include "backends/sev/snp_machine.h"

CPC_NAMESPACE_BEGIN
namespace sev {

namespace ghcb_off {
inline constexpr size_t kRax = 0x1F8;
inline constexpr size_t kRcx = 0x308;
inline constexpr size_t kRdx = 0x310;
inline constexpr size_t kRbx = 0x318;
inline constexpr size_t kR8 = 0x340;
inline constexpr size_t kR9 = 0x348;
inline constexpr size_t kSwExitCode = 0x390;
inline constexpr size_t kSwExitInfo1 = 0x398;
inline constexpr size_t kSwExitInfo2 = 0x3A0;
inline constexpr size_t kSwScratch = 0x3A8;
inline constexpr size_t kValidBitmap = 0x3F0;
inline constexpr size_t kSharedBuffer = 0x800;
inline constexpr size_t kSharedBufferSize = 0x7F0;
inline constexpr size_t kProtocolVersion = 0xFFA;
inline constexpr size_t kUsage = 0xFFC;
}  // namespace ghcb_off
inline constexpr uint16_t kGhcbProtocolVersion = 2;  // GHCB_PROTOCOL_MAX

// A view over one 4 KiB GHCB page (shared memory; the page is not owned).
class GhcbPage {
 public:
  explicit GhcbPage(std::span<uint8_t, kPageSize> page) : p_(page) {}

  // Zeroes the page and sets protocol version 2, usage 0.
  void Reset();
  // Register-area field at `off` (8 bytes); Set also marks it valid.
  void Set(size_t off, uint64_t v);
  uint64_t Get(size_t off) const;
  bool IsValid(size_t off) const;
  std::span<uint8_t> shared_buffer() {
    return p_.subspan(ghcb_off::kSharedBuffer, ghcb_off::kSharedBufferSize);
  }
  std::span<const uint8_t> shared_buffer() const {
    return p_.subspan(ghcb_off::kSharedBuffer, ghcb_off::kSharedBufferSize);
  }
  uint16_t protocol_version() const;
  uint32_t usage() const;
  std::span<uint8_t, kPageSize> bytes() { return p_; }

 private:
  std::span<uint8_t, kPageSize> p_;
};

struct PscEntry {
  uint16_t cur_page = 0;  // 4K pages of a 2M entry already processed
  uint64_t gfn = 0;
  PscOp op = PscOp::kPrivate;
  bool huge = false;  // 2 MiB

  uint64_t Encode() const;
  static PscEntry Decode(uint64_t raw);
};

// The host's side of a VMGEXIT: handles the GHCB in place (the emulated
// KVM), returns when it has written its response. In the emulated machine
// this crosses the process boundary; tests call the handler directly.
using VmgexitChannel = std::function<Status(GhcbPage&)>;

// ---- Guest side ----
// Fills `ghcb` with a PSC NAE request (exit code 0x80000010, header +
// entries in the shared buffer). kInvalidArgument if more than 253 entries.
Status WritePscRequest(GhcbPage& ghcb, std::span<const PscEntry> entries);
// Sends PSC requests for `entries` through `host` and checks the reply
// (SW_EXITINFO2 == 0 and every entry processed). Refuses the wrong order:
// a PSC(shared) for a page that is still validated is kFailedPrecondition
// (rescind it first), probed through the hardware check as VMPL0 would see
// it. A host error comes back as kPlatformError(subcode = SW_EXITINFO2).
Status RequestPsc(SnpMachine& m, GhcbPage& ghcb, const VmgexitChannel& host,
                  std::span<const PscEntry> entries);
// Private -> shared with the required order, 4K pages, run at VMPL0:
// PVALIDATE(rescind) each page, then PSC(shared).
Status ConvertToShared(SnpMachine& m, GhcbPage& ghcb,
                       const VmgexitChannel& host, GpaRange range);
// Shared -> private: PSC(private), then PVALIDATE(validate) each page and
// zero it (the host chose its contents). A page the host did not assign
// faults (#NPF) in PVALIDATE and the conversion stops there.
Status ConvertToPrivate(SnpMachine& m, GhcbPage& ghcb,
                        const VmgexitChannel& host, GpaRange range);

// ---- Host side (the emulated KVM; untrusted) ----
// Handles a PSC NAE on `ghcb`: for each entry from cur_entry to end_entry,
// RMPUPDATE (and NPT map for 2M) as KVM does; advances cur_entry; writes
// SW_EXITINFO2 = 0 or a VMGEXIT_PSC_ERROR_* code.
Status HostHandlePsc(SnpMachine& m, GhcbPage& ghcb);
// Dispatches any NAE event the model supports (PSC, AP creation).
Status HostHandleVmgexit(SnpMachine& m, GhcbPage& ghcb);

// ---- GHCB MSR protocol (one 4K page per request) ----
inline uint64_t MsrPscRequest(Gpa gpa, PscOp op) {
  return kMsrPscReq | (gpa & 0x000ffffffffff000ull) |
         (uint64_t{static_cast<uint8_t>(op)} << 52);
}
// Host: handles a 0x014 request; returns the 0x015 response with the error
// in bits 63:32 (0 = success).
uint64_t HostHandleMsrPsc(SnpMachine& m, uint64_t msr);

}  // namespace sev
CPC_NAMESPACE_END

#endif  // CPC_SRC_BACKENDS_SEV_GHCB_H_
