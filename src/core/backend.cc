#include <cpc/backend.h>

CPC_NAMESPACE_BEGIN

Backend::~Backend() = default;
GuestPlatform::~GuestPlatform() = default;

Result<uint64_t> Backend::AttachSharedFile(CvmHandle, int) {
  return Status(Code::kUnimplemented,
                "this backend cannot attach host files to a CVM");
}
Status Backend::DetachSharedFile(CvmHandle) { return Status::Ok(); }

namespace {
Status NoFrozenView() {
  return Status(Code::kUnimplemented,
                "this platform has no frozen view (background snapshot)");
}
}  // namespace

Status GuestPlatform::BeginFrozenView() { return NoFrozenView(); }
Status GuestPlatform::PinFrozenPages(std::span<const Gpa>,
                                     std::span<const uint8_t*>) {
  return NoFrozenView();
}
void GuestPlatform::ReleaseFrozenPages(std::span<const Gpa>) {}
Result<uint64_t> GuestPlatform::EndFrozenView() { return NoFrozenView(); }

std::string_view BackendWrapper::name() const { return target_->name(); }
Result<CvmHandle> BackendWrapper::LaunchCvm(const LaunchConfig& config) {
  return target_->LaunchCvm(config);
}
Status BackendWrapper::DestroyCvm(CvmHandle cvm) {
  return target_->DestroyCvm(cvm);
}
Result<uint32_t> BackendWrapper::CreateHvcpu(CvmHandle cvm,
                                             const HvcpuConfig& config) {
  return target_->CreateHvcpu(cvm, config);
}
Result<HvcpuExit> BackendWrapper::ScheduleHvcpu(CvmHandle cvm, uint32_t hvcpu,
                                                const HvcpuEntry& entry) {
  return target_->ScheduleHvcpu(cvm, hvcpu, entry);
}
Result<SharedRegion> BackendWrapper::MapSharedRegion(CvmHandle cvm) {
  return target_->MapSharedRegion(cvm);
}
Result<uint64_t> BackendWrapper::AttachSharedFile(CvmHandle cvm, int fd) {
  return target_->AttachSharedFile(cvm, fd);
}
Status BackendWrapper::DetachSharedFile(CvmHandle cvm) {
  return target_->DetachSharedFile(cvm);
}
Status BackendWrapper::PauseGuest(CvmHandle cvm) {
  return target_->PauseGuest(cvm);
}
Status BackendWrapper::ResumeGuest(CvmHandle cvm) {
  return target_->ResumeGuest(cvm);
}
Result<std::vector<Gpa>> BackendWrapper::ReadDirtyLog(CvmHandle cvm,
                                                      bool rearm) {
  return target_->ReadDirtyLog(cvm, rearm);
}

Result<std::vector<uint8_t>> BackendWrapper::RequestToken(
    CvmHandle cvm, const TokenRequest& request) {
  return target_->RequestToken(cvm, request);
}
Status BackendWrapper::ThrottleGuest(CvmHandle cvm, double fraction) {
  return target_->ThrottleGuest(cvm, fraction);
}

uint64_t GuestPlatformWrapper::memory_bytes() const {
  return target_->memory_bytes();
}
uint32_t GuestPlatformWrapper::vcpu_count() const {
  return target_->vcpu_count();
}
GpaRange GuestPlatformWrapper::GuestOsMemory() const {
  return target_->GuestOsMemory();
}
Result<std::span<const uint8_t>> GuestPlatformWrapper::PrivatePageForRead(
    Gpa gpa) {
  return target_->PrivatePageForRead(gpa);
}
Result<std::span<uint8_t>> GuestPlatformWrapper::PrivatePageForWrite(Gpa gpa) {
  return target_->PrivatePageForWrite(gpa);
}
Result<std::vector<uint8_t>> GuestPlatformWrapper::ExportVcpuState(
    uint32_t vcpu) {
  return target_->ExportVcpuState(vcpu);
}
Status GuestPlatformWrapper::ImportVcpuState(uint32_t vcpu,
                                             std::span<const uint8_t> state) {
  return target_->ImportVcpuState(vcpu, state);
}
Status GuestPlatformWrapper::IsolateSecureCpc(uint32_t hvcpu, GpaRange range) {
  return target_->IsolateSecureCpc(hvcpu, range);
}
Status GuestPlatformWrapper::PageStateChange(GpaRange range, PageState state) {
  return target_->PageStateChange(range, state);
}
Result<std::vector<uint8_t>> GuestPlatformWrapper::AttestationReport(
    std::span<const uint8_t, 64> report_data) {
  return target_->AttestationReport(report_data);
}
Result<SecretBytes> GuestPlatformWrapper::SealingKey(
    std::span<const uint8_t> context) {
  return target_->SealingKey(context);
}
Result<std::vector<uint8_t>> GuestPlatformWrapper::AttestationEvidence(
    std::span<const uint8_t, 64> report_data) {
  return target_->AttestationEvidence(report_data);
}
Status GuestPlatformWrapper::VerifyPeerEvidence(
    std::span<const uint8_t> evidence,
    std::span<const uint8_t, 64> report_data) {
  return target_->VerifyPeerEvidence(evidence, report_data);
}
Result<std::vector<Gpa>> GuestPlatformWrapper::TakeWrittenPages() {
  return target_->TakeWrittenPages();
}
Status GuestPlatformWrapper::SetGuestOsRunnable(bool runnable) {
  return target_->SetGuestOsRunnable(runnable);
}
Status GuestPlatformWrapper::BeginFrozenView() {
  return target_->BeginFrozenView();
}
Status GuestPlatformWrapper::PinFrozenPages(std::span<const Gpa> gpas,
                                            std::span<const uint8_t*> out) {
  return target_->PinFrozenPages(gpas, out);
}
void GuestPlatformWrapper::ReleaseFrozenPages(std::span<const Gpa> gpas) {
  target_->ReleaseFrozenPages(gpas);
}
Result<uint64_t> GuestPlatformWrapper::EndFrozenView() {
  return target_->EndFrozenView();
}

CPC_NAMESPACE_END
