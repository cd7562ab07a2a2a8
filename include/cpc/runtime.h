// Running calls: the guest-side hvCPU runtime and the host-side call driver
// with the confidential abort protocol.
//
// HvcpuRuntime (inside the CVM) executes calls on one hvCPU. Enter() is the
// emulated VMENTER: it hands the hvCPU an entry (start / resume / abort) and
// blocks until the hvCPU exits (yield or completion). Calls run on the
// runtime's own thread - the hvCPU - so a module's stack survives a yield.
// An hvCPU does not run unless scheduled: when a module overruns its slice
// (plus kPreemptGrace) without yielding, the emulated slice timer parks the
// hvCPU thread with a signal (the VMEXIT) and Enter returns kPreempted. A
// resume unparks it; an abort lets a cooperative module unwind within
// kAbortGrace and otherwise discards the parked context for good (State
// Reset of the vCPU) and gives the hvCPU a fresh thread.
//
// DriveCall (host side) schedules one call to completion through any Enter
// function (an in-process runtime, or Backend::ScheduleHvcpu) and applies the
// AbortPolicy between slices: when the call exceeds its time limit (derived
// from the declared work size) or falls under the throughput floor, the host
// stops scheduling it and enters once more with kAbort; the call then ends
// kAborted with its OnRollback actions run and nothing committed.
#ifndef CPC_RUNTIME_H_
#define CPC_RUNTIME_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <cpc/backend.h>
#include <cpc/call.h>
#include <cpc/export.h>
#include <cpc/registry.h>
#include <cpc/status.h>
#include <cpc/token.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN

// What the runtime needs from the CVM; none owned, all must outlive it.
struct RuntimeServices {
  TokenAuthority* authority = nullptr;
  ModuleRegistry* modules = nullptr;
  GuestPlatform* platform = nullptr;
  std::span<uint8_t> shared;  // memory shared with the host (may be empty)
  // The host file currently attached read-only to the shared memory
  // (Backend::AttachSharedFile), empty if none; may be null.
  std::function<std::span<const uint8_t>()> shared_file;
};

class CPC_EXPORT HvcpuRuntime {
 public:
  // `isolation` is what the platform established for this hvCPU: a Secure
  // module runs only on a kSecure hvCPU.
  HvcpuRuntime(uint32_t index, Isolation isolation, RuntimeServices services);
  // Aborts a suspended call (rollback), waits for a running one, joins.
  ~HvcpuRuntime();
  HvcpuRuntime(const HvcpuRuntime&) = delete;
  HvcpuRuntime& operator=(const HvcpuRuntime&) = delete;

  // Enters the hvCPU. Errors returned here are refusals of the entry itself
  // (kIllegalTransition: e.g. resuming a call that was reset, starting while
  // a call is suspended); the outcome of a call - including a rejected token -
  // is an HvcpuExit with Reason::kCompleted and its status. One Enter at a
  // time per runtime (a concurrent one gets kIllegalTransition).
  Result<HvcpuExit> Enter(const HvcpuEntry& entry);

  CallState state() const;
  // Times the slice timer parked this hvCPU, and contexts discarded.
  uint64_t preemptions() const;
  uint64_t discarded_contexts() const;
  uint32_t index() const { return index_; }

  static constexpr Duration kPreemptGrace = std::chrono::milliseconds(5);
  static constexpr Duration kAbortGrace = std::chrono::milliseconds(50);
  Isolation isolation() const { return isolation_; }

 private:
  struct Call;
  class Context;
  struct Vcpu;
  void ThreadMain(Vcpu* vcpu);
  void StartThread();
  void Park();
  void Unpark();
  Result<HvcpuExit> Start(std::unique_lock<std::mutex>& lock,
                          const HvcpuEntry& entry);
  Result<HvcpuExit> RunUntilExit(std::unique_lock<std::mutex>& lock);
  Result<HvcpuExit> AbortCall(std::unique_lock<std::mutex>& lock);
  HvcpuExit FinishAndReset(std::unique_lock<std::mutex>& lock,
                           bool discard = false);

  const uint32_t index_;
  const Isolation isolation_;
  const RuntimeServices services_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  struct Machine;
  std::unique_ptr<Machine> machine_;
  std::unique_ptr<Call> call_;
  bool entered_ = false;  // an Enter is in progress
  bool run_ = false;      // hvCPU thread may run the current call
  bool exited_ = false;   // hvCPU thread posted an exit
  bool shutdown_ = false;
  uint64_t preemptions_ = 0;
  uint64_t discarded_ = 0;
  std::unique_ptr<Vcpu> vcpu_;  // the live hvCPU thread
};

struct CPC_EXPORT AbortPolicy {
  Duration base_time = std::chrono::seconds(1);  // allowance for any call
  // Time limit = base_time + work_bytes / min_rate. 0 disables the limit.
  double min_rate_bytes_per_s = 0;
  // Abort when the rate over the last `window` falls below this. 0 = off.
  double throughput_floor_bytes_per_s = 0;
  Duration window = std::chrono::seconds(1);

  // Duration::max() when the policy sets no time limit.
  Duration TimeLimit(uint64_t work_bytes) const;
};

// Applies an AbortPolicy to the progress of one call. Not synchronised.
class CPC_EXPORT AbortMonitor {
 public:
  AbortMonitor(const AbortPolicy& policy, Clock::time_point start);
  // OK while within bounds; kAborted with the reason once exceeded.
  Status Observe(const CallProgress& progress, Clock::time_point now);

 private:
  AbortPolicy policy_;
  Clock::time_point start_;
  std::deque<std::pair<Clock::time_point, uint64_t>> samples_;
};

struct CallStats {
  uint32_t entries = 0;  // times the hvCPU was entered
  uint32_t yields = 0;
  uint32_t preemptions = 0;  // slices that ended by the timer, not a yield
  uint64_t bytes = 0;
  Duration elapsed{0};
  double rate_bytes_per_s = 0;
};

struct CallOutcome {
  uint64_t call_id = 0;
  Status status;  // the call's result (kAborted if the policy stopped it)
  std::vector<uint8_t> output;
  CallStats stats;
};

using EnterFn = std::function<Result<HvcpuExit>(const HvcpuEntry&)>;
using ProgressFn = std::function<void(const CallProgress&, const CallStats&)>;
// Runs at every exit that leaves the call suspended (yield or preemption),
// before the hvCPU is entered again; a non-OK Status aborts the call.
using YieldFn = std::function<Status(const HvcpuExit&, const CallStats&)>;

// Host side: drives `start` (Kind::kStart, its slice set) to completion.
// Returns an error only if entering the hvCPU failed; the call's own result
// is CallOutcome::status.
CPC_EXPORT Result<CallOutcome> DriveCall(const EnterFn& enter, HvcpuEntry start,
                                         const AbortPolicy& policy,
                                         const ProgressFn& on_progress = {});
// DriveCall with a host-side step between slices (e.g. draining a ring). If
// `on_yield` fails, the call is aborted and the outcome's status is that
// failure.
CPC_EXPORT Result<CallOutcome> DriveCallWith(const EnterFn& enter,
                                             HvcpuEntry start,
                                             const AbortPolicy& policy,
                                             const YieldFn& on_yield);

CPC_NAMESPACE_END

#endif  // CPC_RUNTIME_H_
