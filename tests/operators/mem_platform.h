// Test doubles for the operator tests: an in-memory GuestPlatform and a
// scripted CallContext. Header-only; test code only.
#ifndef CPC_TESTS_OPERATORS_MEM_PLATFORM_H_
#define CPC_TESTS_OPERATORS_MEM_PLATFORM_H_

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/backend.h>
#include <cpc/module.h>

namespace cpc_test {

// Guest memory in one aligned heap block, `vcpus` fake gvCPUs whose state is
// a blob. Export/import of vCPU state is only allowed while paused, like the
// real platforms. Page access is thread-safe; pages listed in fail_write_ are
// refused to model a platform refusal. Written pages: every page counts as
// written at first (as after a launch), then each PrivatePageForWrite (or
// MarkWritten, for writes through mem()) records its page. Evidence is
// kEvidencePrefix || report_data, verified byte for byte.
class MemPlatform final : public cpc::GuestPlatform {
 public:
  MemPlatform(uint64_t bytes, uint32_t vcpus, size_t state_bytes = 700)
      : bytes_(bytes),
        mem_(static_cast<uint8_t*>(std::aligned_alloc(4096, bytes))),
        states_(vcpus, std::vector<uint8_t>(state_bytes)) {
    std::memset(mem_.get(), 0, bytes);
  }

  // Deterministic incompressible content; vCPU states too.
  void Randomize(uint32_t seed) {
    std::mt19937_64 rng(seed);
    for (uint64_t i = 0; i < bytes_; i += 8) {
      uint64_t v = rng();
      std::memcpy(mem_.get() + i, &v, 8);
    }
    for (auto& s : states_)
      for (auto& b : s) b = static_cast<uint8_t>(rng());
  }

  uint8_t* mem() { return mem_.get(); }
  std::vector<uint8_t> Snapshot() const {
    return std::vector<uint8_t>(mem_.get(), mem_.get() + bytes_);
  }
  std::vector<uint8_t> state(uint32_t v) {
    std::lock_guard lock(mu_);
    return states_.at(v);
  }
  void set_paused(bool p) {
    std::lock_guard lock(mu_);
    paused_ = p;
  }
  void FailWritesTo(cpc::Gpa gpa) { fail_write_.insert(gpa); }
  void MarkWritten(cpc::Gpa gpa) {
    std::lock_guard lock(mu_);
    written_.insert(gpa & ~(cpc::kPageSize - 1));
  }
  bool runnable() {
    std::lock_guard lock(mu_);
    return runnable_;
  }

  static constexpr std::string_view kEvidencePrefix = "mem-platform-evidence";

  uint64_t memory_bytes() const override { return bytes_; }
  cpc::GpaRange GuestOsMemory() const override {
    return {0, memory_bytes() / cpc::kPageSize};
  }
  uint32_t vcpu_count() const override {
    return static_cast<uint32_t>(states_.size());
  }
  cpc::Result<std::span<const uint8_t>> PrivatePageForRead(
      cpc::Gpa gpa) override {
    CPC_RETURN_IF_ERROR(Check(gpa));
    return std::span<const uint8_t>(mem_.get() + gpa, cpc::kPageSize);
  }
  cpc::Result<std::span<uint8_t>> PrivatePageForWrite(cpc::Gpa gpa) override {
    CPC_RETURN_IF_ERROR(Check(gpa));
    if (fail_write_.count(gpa) != 0)
      return cpc::Status(cpc::Code::kPermissionDenied, "injected refusal");
    MarkWritten(gpa);
    return std::span<uint8_t>(mem_.get() + gpa, cpc::kPageSize);
  }
  cpc::Result<std::vector<uint8_t>> ExportVcpuState(uint32_t vcpu) override {
    std::lock_guard lock(mu_);
    if (vcpu >= states_.size())
      return cpc::Status(cpc::Code::kInvalidArgument, "no such vCPU");
    if (!paused_)
      return cpc::Status(cpc::Code::kFailedPrecondition, "vCPU running");
    return states_[vcpu];
  }
  cpc::Status ImportVcpuState(uint32_t vcpu,
                              std::span<const uint8_t> state) override {
    std::lock_guard lock(mu_);
    if (vcpu >= states_.size())
      return cpc::Status(cpc::Code::kInvalidArgument, "no such vCPU");
    if (!paused_)
      return cpc::Status(cpc::Code::kFailedPrecondition, "vCPU running");
    states_[vcpu].assign(state.begin(), state.end());
    return cpc::Status::Ok();
  }
  cpc::Status IsolateSecureCpc(uint32_t, cpc::GpaRange) override {
    return Unimplemented();
  }
  cpc::Status PageStateChange(cpc::GpaRange, cpc::PageState) override {
    return Unimplemented();
  }
  cpc::Result<std::vector<uint8_t>> AttestationReport(
      std::span<const uint8_t, 64>) override {
    return Unimplemented();
  }
  cpc::Result<cpc::SecretBytes> SealingKey(std::span<const uint8_t>) override {
    return Unimplemented();
  }
  cpc::Result<std::vector<uint8_t>> AttestationEvidence(
      std::span<const uint8_t, 64> report_data) override {
    std::vector<uint8_t> e(kEvidencePrefix.begin(), kEvidencePrefix.end());
    e.insert(e.end(), report_data.begin(), report_data.end());
    return e;
  }
  cpc::Status VerifyPeerEvidence(
      std::span<const uint8_t> evidence,
      std::span<const uint8_t, 64> report_data) override {
    if (evidence.size() != kEvidencePrefix.size() + 64 ||
        std::memcmp(evidence.data(), kEvidencePrefix.data(),
                    kEvidencePrefix.size()) != 0)
      return cpc::Status(cpc::Code::kInvalidArgument,
                         "not MemPlatform evidence");
    if (std::memcmp(evidence.data() + kEvidencePrefix.size(),
                    report_data.data(), 64) != 0)
      return cpc::Status(cpc::Code::kReportDataMismatch, "report_data differs");
    return cpc::Status::Ok();
  }
  cpc::Result<std::vector<cpc::Gpa>> TakeWrittenPages() override {
    std::lock_guard lock(mu_);
    std::vector<cpc::Gpa> out;
    if (all_written_) {
      for (cpc::Gpa g = 0; g < bytes_; g += cpc::kPageSize) out.push_back(g);
      all_written_ = false;
    } else {
      out.assign(written_.begin(), written_.end());
    }
    written_.clear();
    return out;
  }
  cpc::Status SetGuestOsRunnable(bool runnable) override {
    std::lock_guard lock(mu_);
    if (!runnable && !paused_)
      return cpc::Status(cpc::Code::kFailedPrecondition, "vCPUs running");
    runnable_ = runnable;
    return cpc::Status::Ok();
  }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  static cpc::Status Unimplemented() {
    return cpc::Status(cpc::Code::kUnimplemented, "MemPlatform");
  }
  cpc::Status Check(cpc::Gpa gpa) const {
    if (gpa % cpc::kPageSize != 0 || gpa >= bytes_)
      return cpc::Status(cpc::Code::kInvalidArgument, "gpa out of range");
    return cpc::Status::Ok();
  }

  const uint64_t bytes_;
  std::unique_ptr<uint8_t, Free> mem_;
  std::mutex mu_;
  std::vector<std::vector<uint8_t>> states_;
  bool paused_ = true;
  bool runnable_ = true;
  bool all_written_ = true;
  std::set<cpc::Gpa> written_;
  std::set<cpc::Gpa> fail_write_;
};

// A CallContext that counts charges and yields, enforces a byte budget and
// returns kAborted from the `abort_at_yield`-th MaybeYield (1-based; 0 =
// never).
class FakeCallContext final : public cpc::CallContext {
 public:
  explicit FakeCallContext(cpc::GuestPlatform* platform, uint64_t budget = 0,
                           int abort_at_yield = 0)
      : platform_(platform), abort_at_(abort_at_yield) {
    budget_.bytes = budget;
  }
  uint64_t charged = 0;
  int yields = 0;

  uint64_t call_id() const override { return 1; }
  std::string_view module() const override { return "test"; }
  std::string_view procedure() const override { return "test"; }
  std::span<const uint8_t> args() const override { return {}; }
  const cpc::Budget& budget() const override { return budget_; }
  uint32_t hvcpu() const override { return 0; }
  cpc::GuestPlatform& platform() override { return *platform_; }
  void SetWorkSize(uint64_t) override {}
  cpc::Status Charge(uint64_t bytes) override {
    if (budget_.bytes != 0 && charged + bytes > budget_.bytes)
      return cpc::Status(cpc::Code::kBudgetExceeded, "over budget");
    charged += bytes;
    return cpc::Status::Ok();
  }
  bool ShouldYield() const override { return true; }
  cpc::Status MaybeYield() override {
    ++yields;
    if (abort_at_ != 0 && yields >= abort_at_)
      return cpc::Status(cpc::Code::kAborted, "host aborted the call");
    return cpc::Status::Ok();
  }
  cpc::Status Yield() override { return MaybeYield(); }
  const cpc::CvmIdentity& identity() const override { return identity_; }
  std::span<uint8_t> shared_memory() override { return {}; }
  void OnCommit(std::function<void()>) override {}
  void OnRollback(std::function<void()>) override {}
  void SetOutput(std::vector<uint8_t>) override {}

 private:
  cpc::CvmIdentity identity_;
  cpc::GuestPlatform* platform_;
  cpc::Budget budget_;
  int abort_at_;
};

}  // namespace cpc_test

#endif  // CPC_TESTS_OPERATORS_MEM_PLATFORM_H_
