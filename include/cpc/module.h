// The interface for maintenance-module authors.
//
// A Module is registered with the CPC runtime inside the CVM (ModuleRegistry)
// and named by the tenant policy. When the host schedules an hvCPU with a
// valid token, the runtime calls Module::Run on that hvCPU's thread with a
// CallContext. Run may take as long as it needs but must call
// ctx.MaybeYield() between units of work (e.g. every batch of pages): that is
// where a used-up slice suspends the call until the host schedules the hvCPU
// again, and where an abort is delivered.
//
// Nothing half-applied: effects that must only happen if the call succeeds
// are registered with OnCommit (run at Yield Termination when Run returned
// OK); undo actions with OnRollback (run when it failed or was aborted).
//
// Ownership: modules are owned by the registry and outlive every call. One
// Module object may run on several hvCPUs at once (one CallContext each), so
// Run must keep per-call state on its stack or in the context.
#ifndef CPC_MODULE_H_
#define CPC_MODULE_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/export.h>
#include <cpc/status.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN

class GuestPlatform;

// Per-call services handed to Module::Run. Valid only during Run; used only
// on the hvCPU thread running the call (not thread-safe).
class CPC_EXPORT CallContext {
 public:
  virtual ~CallContext();

  virtual uint64_t call_id() const = 0;
  virtual std::string_view module() const = 0;
  virtual std::string_view procedure() const = 0;
  virtual std::span<const uint8_t> args() const = 0;
  // The budget the call's token grants (zero fields = unlimited).
  virtual const Budget& budget() const = 0;
  // Which hvCPU runs the call.
  virtual uint32_t hvcpu() const = 0;
  // The guest face of the platform (private memory, vCPU state, ...).
  virtual GuestPlatform& platform() = 0;

  // Declares the call's total work in bytes (feeds the host's abort policy).
  virtual void SetWorkSize(uint64_t bytes) = 0;
  // Accounts `bytes` of processed work. kBudgetExceeded once the token's
  // byte budget would be exceeded (the work must then not be applied).
  virtual Status Charge(uint64_t bytes) = 0;

  // The CVM the call runs in (launch measurement + instance).
  virtual const CvmIdentity& identity() const = 0;
  // The memory this CVM shares with its host (data rings). Everything
  // written here is visible to the host; everything read from it is
  // host-controlled input. Empty if the CVM shares none.
  virtual std::span<uint8_t> shared_memory() = 0;
  // The host file the host attached read-only to the shared memory
  // (Backend::AttachSharedFile), or empty. Host-controlled input like
  // shared_memory(): its bytes may change while read, and read as zeros past
  // the end of a file the host shrank. The span stays readable for the rest
  // of the call, as zeros once the host detaches the file.
  virtual std::span<const uint8_t> shared_file() { return {}; }

  // True when the slice is used up or an abort is pending.
  virtual bool ShouldYield() const = 0;
  // If ShouldYield(): suspend until the host resumes the call. Returns OK to
  // continue, kAborted if the host aborted the call (return it from Run).
  virtual Status MaybeYield() = 0;
  // Suspends the call now, whatever the slice (a ring is full, more input
  // is needed). OK to continue, kAborted if the host aborted the call.
  virtual Status Yield() = 0;

  virtual void OnCommit(std::function<void()> action) = 0;
  virtual void OnRollback(std::function<void()> action) = 0;
  // The result the host receives with a successful completion.
  virtual void SetOutput(std::vector<uint8_t> output) = 0;
};

class CPC_EXPORT Module {
 public:
  virtual ~Module();

  // Unique name, e.g. "snapshot". Matches the tenant policy.
  virtual std::string_view name() const = 0;
  // Procedures this module implements, e.g. {"extract", "insert"}.
  virtual std::vector<std::string> procedures() const = 0;
  // The isolation it requires; the runtime refuses to run a Secure module on
  // an hvCPU that is not isolated from the guest OS.
  virtual Isolation isolation() const = 0;
  // Runs `procedure` (ctx.procedure()) to completion on an hvCPU.
  virtual Status Run(CallContext& ctx) = 0;
};

CPC_NAMESPACE_END

#endif  // CPC_MODULE_H_
