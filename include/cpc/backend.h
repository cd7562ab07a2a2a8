// The platform interface every backend implements (SEV-SNP, CCA, TDX), split
// into its two faces because they live in different protection domains:
//
//  * Backend        - the host face, used by the VMM process. Launches CVMs
//                     and drives them through the control plane only: create
//                     and schedule hvCPUs, map the shared region, pause/resume
//                     gvCPUs, read the dirty log. It never sees private memory.
//  * GuestPlatform  - the guest face, used by the CPC runtime and modules
//                     inside the CVM (on hvCPUs): private page access checked
//                     by the platform model, vCPU state export/import,
//                     Secure-CPC isolation, page state change, attestation,
//                     sealing keys.
//
// BackendWrapper / GuestPlatformWrapper forward every call to a target so a
// test can inject a fault by overriding one method (LevelDB's EnvWrapper).
//
// Threading: unless a method says otherwise, implementations are safe to call
// from several threads at once. Errors: every method returns a Status/Result;
// platform refusals are Code::kPlatformError with the firmware's own status in
// the subcode. No method throws.
#ifndef CPC_BACKEND_H_
#define CPC_BACKEND_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/call.h>
#include <cpc/export.h>
#include <cpc/secret.h>
#include <cpc/status.h>
#include <cpc/token.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN

// One hvCPU of the launch configuration. hvCPUs are part of the measured
// launch configuration because CCA can create RECs only before the realm is
// activated; SEV-SNP can add more later (SVSM CREATE_VCPU), which
// Backend::CreateHvcpu reports per platform.
struct HvcpuConfig {
  uint32_t index = 0;
  Isolation isolation = Isolation::kPlain;
};

struct LaunchConfig {
  std::string image;          // path of the CVM image (an executable)
  uint64_t memory_bytes = 0;  // guest memory, multiple of kPageSize
  uint32_t gvcpus = 1;        // vCPUs of the guest OS
  std::vector<HvcpuConfig> hvcpus;
  std::vector<uint8_t> policy;  // serialized TenantPolicy (measured)
  std::map<std::string, std::string> options;  // backend/workload specific
};

using CvmHandle = uint64_t;

// The host-visible shared region of a CVM (mailboxes and data rings). The
// mapping belongs to the backend and stays valid until DestroyCvm.
struct SharedRegion {
  uint8_t* base = nullptr;
  size_t size = 0;
};

struct GpaRange {
  Gpa base = 0;
  uint64_t pages = 0;
};

enum class PageState : uint8_t { kPrivate = 0, kShared = 1 };

// One line of a backend's self-diagnosis (`cpc info`).
struct ProbeFact {
  std::string name;
  bool pass = false;
  std::string info;
};

class CPC_EXPORT Backend {
 public:
  Backend() = default;
  virtual ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  // Registry name, e.g. "sev-snp". Never fails.
  virtual std::string_view name() const = 0;

  // Launches a CVM from `config` (its image + policy + hvCPU set are the launch
  // measurement). The returned handle is owned by this backend until
  // DestroyCvm. kInvalidArgument for a bad config; kIoError if the process
  // could not be started; kPlatformError if the firmware model refused.
  virtual Result<CvmHandle> LaunchCvm(const LaunchConfig& config) = 0;
  // Stops the CVM and frees its resources. kNotFound for an unknown handle.
  virtual Status DestroyCvm(CvmHandle cvm) = 0;

  // Adds an hvCPU after launch. kFailedPrecondition where the platform allows
  // no new vCPUs once running (CCA after activation); the new vCPU is then
  // absent from the measurement and the CVM's attestation says so.
  virtual Result<uint32_t> CreateHvcpu(CvmHandle cvm,
                                       const HvcpuConfig& config) = 0;
  // Enters hvCPU `hvcpu` and blocks until it exits (yield or completion) -
  // the emulated KVM_RUN. Calls on different hvCPUs may run concurrently;
  // calls on the same hvCPU are serialised by the caller.
  virtual Result<HvcpuExit> ScheduleHvcpu(CvmHandle cvm, uint32_t hvcpu,
                                          const HvcpuEntry& entry) = 0;
  // The region the guest shares with the host. Valid until DestroyCvm.
  virtual Result<SharedRegion> MapSharedRegion(CvmHandle cvm) = 0;
  // Maps the host file `fd` (regular, non-empty, read from offset 0)
  // read-only into the CVM's shared memory, replacing any file attached
  // before; returns its size. An emulated read-only memslot backed by a host
  // file (virtio-pmem / DAX style): a module reads it in place
  // (CallContext::shared_file) instead of through a ring the host fills by
  // copying. The CVM holds its own reference; the caller keeps `fd`. Bytes
  // stay host-controlled; a page past the end of a file shrunk meanwhile
  // reads as zeros. kInvalidArgument for another kind of file; kUnimplemented
  // where the platform has no such window (the default).
  virtual Result<uint64_t> AttachSharedFile(CvmHandle cvm, int fd);
  // Ends the attached file's mapping (the CVM then reads zeros there). OK if
  // none is attached.
  virtual Status DetachSharedFile(CvmHandle cvm);
  // Stop / restart scheduling the guest OS's vCPUs (control plane only).
  virtual Status PauseGuest(CvmHandle cvm) = 0;
  virtual Status ResumeGuest(CvmHandle cvm) = 0;
  // GPAs written since the last call with `rearm`, sorted. Tracking starts at
  // the first call (this or the platform's TakeWrittenPages), which returns
  // every page.
  // Only GPAs cross to the host, never contents.
  virtual Result<std::vector<Gpa>> ReadDirtyLog(CvmHandle cvm, bool rearm) = 0;
  // Asks the guest OS's agent (over the host<->guest channel) for a token.
  // The agent may refuse (kNotApproved), the tenant policy too (see
  // TokenAuthority::Mint); kTimeout if the guest does not answer.
  virtual Result<std::vector<uint8_t>> RequestToken(
      CvmHandle cvm, const TokenRequest& request) = 0;
  // Throttles the guest OS's vCPUs (host scheduling only, like QEMU's
  // cpu-throttle): they run for (1 - fraction) of every 10 ms period.
  // `fraction` in [0, 0.99]; 0 removes the throttle. kInvalidArgument
  // outside that range.
  virtual Status ThrottleGuest(CvmHandle cvm, double fraction) = 0;
};

class CPC_EXPORT GuestPlatform {
 public:
  GuestPlatform() = default;
  virtual ~GuestPlatform();
  GuestPlatform(const GuestPlatform&) = delete;
  GuestPlatform& operator=(const GuestPlatform&) = delete;

  // Size of guest memory in bytes (GPAs are [0, size)).
  virtual uint64_t memory_bytes() const = 0;
  // Number of gvCPUs whose state SEE/SDI export and import.
  virtual uint32_t vcpu_count() const = 0;
  // The guest-OS memory maintenance works on: all of guest memory but the
  // CPC runtime's own region (save areas, Secure-CPC memory).
  virtual GpaRange GuestOsMemory() const = 0;

  // Access to one private page by the CPC runtime. The span is valid until the
  // page changes state or the CVM ends. kOutOfRange is reported as
  // kInvalidArgument; an RMP/granule/SEPT refusal as kPlatformError or
  // kPermissionDenied. Thread-safe; the caller serialises writes to one page.
  virtual Result<std::span<const uint8_t>> PrivatePageForRead(Gpa gpa) = 0;
  virtual Result<std::span<uint8_t>> PrivatePageForWrite(Gpa gpa) = 0;

  // Architectural state of gvCPU `vcpu` in the platform's own layout (VMSA,
  // REC, TDVPS). Export requires the gvCPU to be paused (kFailedPrecondition
  // otherwise); import replaces it and is checked by the platform model.
  virtual Result<std::vector<uint8_t>> ExportVcpuState(uint32_t vcpu) = 0;
  virtual Status ImportVcpuState(uint32_t vcpu,
                                 std::span<const uint8_t> state) = 0;

  // Makes `range` accessible to hvCPU `hvcpu` only (Secure CPC): the guest OS
  // loses access (RMPADJUST, plane S2 tables, TD partition).
  virtual Status IsolateSecureCpc(uint32_t hvcpu, GpaRange range) = 0;
  // Converts pages between private and shared (PSC, RSI_IPA_STATE_SET,
  // TDG.MEM.PAGE.ACCEPT + MapGPA) with the platform's ordering rules.
  virtual Status PageStateChange(GpaRange range, PageState state) = 0;

  // A signed attestation report in the platform's native layout with
  // `report_data` (64 bytes) embedded.
  virtual Result<std::vector<uint8_t>> AttestationReport(
      std::span<const uint8_t, 64> report_data) = 0;
  // A key derived by the platform from the CVM's measurement and `context`:
  // the same image+policy gets the same key on the same platform.
  virtual Result<SecretBytes> SealingKey(std::span<const uint8_t> context) = 0;

  // Attestation evidence for a peer CVM: the report with `report_data` plus
  // what a verifier needs (the certificate chain), platform-encoded.
  virtual Result<std::vector<uint8_t>> AttestationEvidence(
      std::span<const uint8_t, 64> report_data) = 0;
  // Verifies a peer CVM's evidence: a genuine platform of this vendor (chain
  // to the pinned root, valid signature), the same launch measurement and
  // platform policy as this CVM, and `report_data` embedded. Errors:
  // kInvalidArgument (malformed), kReportBadChain, kReportBadSignature,
  // kMeasurementMismatch, kReportDataMismatch.
  virtual Status VerifyPeerEvidence(
      std::span<const uint8_t> evidence,
      std::span<const uint8_t, 64> report_data) = 0;

  // Guest-OS pages written since the previous call, as the platform itself
  // tracks them (SEV-SNP: VMPL0 revokes the guest's write permission and a
  // write comes back through it; CCA: plane-1 stage-2 permissions; TDX: SEPT
  // BLOCKEDW / EXPORTED_DIRTY). Sorted GPAs inside GuestOsMemory(). Tracking
  // may start at the first call, which returns every page. The host reads
  // its own dirty log but can neither clear nor hide these marks. One caller
  // at a time (a migration's leader).
  virtual Result<std::vector<Gpa>> TakeWrittenPages() = 0;
  // Revokes (false) or restores (true) the guest OS's right to run: while
  // revoked the platform refuses to resume the gvCPUs whatever the host asks
  // (SEV-SNP: VMPL0 clears the VMSA attribute of the gvCPU save areas).
  // Revoking requires the gvCPUs paused (kFailedPrecondition otherwise). A
  // migration source is revoked before its start token exists.
  virtual Status SetGuestOsRunnable(bool runnable) = 0;

  // A point-in-time view of GuestOsMemory() while the guest OS keeps running
  // (background snapshot). BeginFrozenView revokes the guest OS's write
  // permission to all of it; the first guest write to a page not yet read
  // through the view copies the page aside first, then the write goes on.
  // (SEV-SNP: VMPL0 revokes VMPL1 write access with RMPADJUST and the fault
  // comes back to it; CCA: plane-1 stage-2 permissions; TDX: the L1 VMM's L2
  // EPT.) The gvCPUs must be paused to begin (kFailedPrecondition), and one
  // view exists at a time (kFailedPrecondition). While it exists the written
  // page record reports every page (it cannot tell which were written).
  // Platforms without it return kUnimplemented.
  virtual Status BeginFrozenView();
  // Pins `gpas` (page-aligned, inside GuestOsMemory(), each at most once per
  // view: kInvalidArgument / kFailedPrecondition, nothing pinned then) and
  // stores a pointer to each page's contents at BeginFrozenView in `out`
  // (out.size() >= gpas.size()), valid until ReleaseFrozenPages(gpas). A
  // guest write to a pinned page waits for its release: release promptly.
  virtual Status PinFrozenPages(std::span<const Gpa> gpas,
                                std::span<const uint8_t*> out);
  virtual void ReleaseFrozenPages(std::span<const Gpa> gpas);
  // Ends the view (nothing may be pinned), frees the copies and returns how
  // many pages the guest wrote before they were read (copied).
  // kFailedPrecondition if there is no view.
  virtual Result<uint64_t> EndFrozenView();
};

// Forwards every call to `target` (not owned; must outlive the wrapper).
class CPC_EXPORT BackendWrapper : public Backend {
 public:
  explicit BackendWrapper(Backend* target) : target_(target) {}
  Backend* target() const { return target_; }

  std::string_view name() const override;
  Result<CvmHandle> LaunchCvm(const LaunchConfig& config) override;
  Status DestroyCvm(CvmHandle cvm) override;
  Result<uint32_t> CreateHvcpu(CvmHandle cvm,
                               const HvcpuConfig& config) override;
  Result<HvcpuExit> ScheduleHvcpu(CvmHandle cvm, uint32_t hvcpu,
                                  const HvcpuEntry& entry) override;
  Result<SharedRegion> MapSharedRegion(CvmHandle cvm) override;
  Result<uint64_t> AttachSharedFile(CvmHandle cvm, int fd) override;
  Status DetachSharedFile(CvmHandle cvm) override;
  Status PauseGuest(CvmHandle cvm) override;
  Status ResumeGuest(CvmHandle cvm) override;
  Result<std::vector<Gpa>> ReadDirtyLog(CvmHandle cvm, bool rearm) override;
  Result<std::vector<uint8_t>> RequestToken(
      CvmHandle cvm, const TokenRequest& request) override;
  Status ThrottleGuest(CvmHandle cvm, double fraction) override;

 private:
  Backend* target_;
};

class CPC_EXPORT GuestPlatformWrapper : public GuestPlatform {
 public:
  explicit GuestPlatformWrapper(GuestPlatform* target) : target_(target) {}
  GuestPlatform* target() const { return target_; }

  uint64_t memory_bytes() const override;
  uint32_t vcpu_count() const override;
  GpaRange GuestOsMemory() const override;
  Result<std::span<const uint8_t>> PrivatePageForRead(Gpa gpa) override;
  Result<std::span<uint8_t>> PrivatePageForWrite(Gpa gpa) override;
  Result<std::vector<uint8_t>> ExportVcpuState(uint32_t vcpu) override;
  Status ImportVcpuState(uint32_t vcpu,
                         std::span<const uint8_t> state) override;
  Status IsolateSecureCpc(uint32_t hvcpu, GpaRange range) override;
  Status PageStateChange(GpaRange range, PageState state) override;
  Result<std::vector<uint8_t>> AttestationReport(
      std::span<const uint8_t, 64> report_data) override;
  Result<SecretBytes> SealingKey(std::span<const uint8_t> context) override;
  Result<std::vector<uint8_t>> AttestationEvidence(
      std::span<const uint8_t, 64> report_data) override;
  Status VerifyPeerEvidence(std::span<const uint8_t> evidence,
                            std::span<const uint8_t, 64> report_data) override;
  Result<std::vector<Gpa>> TakeWrittenPages() override;
  Status SetGuestOsRunnable(bool runnable) override;
  Status BeginFrozenView() override;
  Status PinFrozenPages(std::span<const Gpa> gpas,
                        std::span<const uint8_t*> out) override;
  void ReleaseFrozenPages(std::span<const Gpa> gpas) override;
  Result<uint64_t> EndFrozenView() override;

 private:
  GuestPlatform* target_;
};

CPC_NAMESPACE_END

#endif  // CPC_BACKEND_H_
