#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>
#include <openssl/crypto.h>

#include <cpc/runtime.h>

#include "core/call_state.h"

CPC_NAMESPACE_BEGIN

namespace {
constexpr auto kNever = Clock::time_point::max();

Clock::time_point After(Clock::time_point from, Duration d) {
  return d.count() <= 0 ? kNever : from + d;
}

void Wipe(std::vector<uint8_t>& v) {
  if (!v.empty()) OPENSSL_cleanse(v.data(), v.size());
  v.clear();
}

// The emulated slice timer: the host side parks an overrunning hvCPU thread
// by signalling it; the handler blocks on a futex until released. Only
// async-signal-safe operations (atomics, raw futex syscalls) run in it.
struct ParkCell {
  std::atomic<int> hold{0};    // 1: stay parked
  std::atomic<int> parked{0};  // 1: the thread is inside the handler
  std::atomic<int> ready{0};   // 1: the thread has set t_park
};
static_assert(sizeof(std::atomic<int>) == sizeof(int) &&
              std::atomic<int>::is_always_lock_free);

void FutexWait(std::atomic<int>* word, int expected) {
  syscall(SYS_futex, reinterpret_cast<int*>(word), FUTEX_WAIT_PRIVATE, expected,
          nullptr, nullptr, 0);
}
void FutexWake(std::atomic<int>* word) {
  syscall(SYS_futex, reinterpret_cast<int*>(word), FUTEX_WAKE_PRIVATE, INT_MAX,
          nullptr, nullptr, 0);
}

thread_local ParkCell* t_park = nullptr;

void OnPreemptSignal(int) {
  const int saved_errno = errno;
  if (ParkCell* c = t_park) {
    c->parked.store(1);
    FutexWake(&c->parked);
    while (c->hold.load() == 1) FutexWait(&c->hold, 1);
    c->parked.store(0);
    FutexWake(&c->parked);
  }
  errno = saved_errno;
}

// Takes the runtime's mutex on an hvCPU thread. A host parking this thread
// holds that mutex until the park handler answers, and ThreadSanitizer
// delivers signals only inside calls it knows to block (not in a mutex wait),
// so a plain lock() deadlocked there. Uncontended, this is one try_lock.
void LockOnHvcpu(std::unique_lock<std::mutex>& lock) {
  while (!lock.try_lock())
    std::this_thread::sleep_for(std::chrono::microseconds(5));
}

int PreemptSignal() {
  static const int sig = [] {
    const int s = SIGRTMIN + 3;
    struct sigaction sa = {};
    sa.sa_handler = OnPreemptSignal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(s, &sa, nullptr);
    return s;
  }();
  return sig;
}
}  // namespace

// One hvCPU thread with its park cell and wake-up condition. A discarded
// (zombie) context keeps its Vcpu for the life of the process.
struct HvcpuRuntime::Vcpu {
  std::thread thread;
  ParkCell cell;
  std::condition_variable wake;  // hvCPU-thread-side waits
};

namespace {
// Parked contexts discarded by aborts: never resumed and never freed, not
// even at exit (their threads still sit in the park handler), hence a
// heap object that is never destroyed.
std::mutex g_zombie_mu;
std::vector<std::shared_ptr<void>>& Zombies() {
  static auto* z = new std::vector<std::shared_ptr<void>>();
  return *z;
}
}  // namespace

struct HvcpuRuntime::Machine {
  CallStateMachine sm;
  // Transitions the runtime performs are legal by construction; a refusal
  // here is a runtime bug, not an input error.
  void Must(CallEvent e) {
    Status s = sm.Apply(e);
    if (!s.ok()) AbortWithStatus(s, "HvcpuRuntime state machine");
  }
};

struct HvcpuRuntime::Call {
  Token token;
  Module* module = nullptr;
  std::vector<uint8_t> args;
  std::atomic<Clock::time_point> slice_end{kNever};
  Clock::time_point budget_end = kNever;
  std::atomic<uint64_t> bytes_done{0};
  std::atomic<uint64_t> bytes_total{0};
  std::vector<std::function<void()>> commits;
  std::vector<std::function<void()>> rollbacks;
  std::vector<uint8_t> output;
  Status result;
  bool picked = false;       // the hvCPU thread started Run
  bool abort = false;        // host aborted the call
  bool finished = false;     // Run returned and commit/rollback ran
  bool preempted = false;    // the hvCPU thread is parked mid-task
  bool terminating = false;  // Run returned; commit/rollback running

  CallProgress progress() const {
    return {bytes_done.load(), bytes_total.load()};
  }
};

class HvcpuRuntime::Context final : public CallContext {
 private:
  Status CheckBudgetTime() const {
    if (Clock::now() >= call_->budget_end)
      return Status(Code::kBudgetExceeded,
                    fmt::format("call {} ran past its token's {} ms", call_id(),
                                call_->token.budget.time_ms));
    return Status::Ok();
  }
  // Core Tasks -> Suspended until the host resumes or aborts the call.
  Status Suspend() {
    std::unique_lock<std::mutex> lock(rt_->mu_, std::defer_lock);
    LockOnHvcpu(lock);
    // A module that ignores kAborted and yields again stays aborted.
    if (call_->abort)
      return Status(Code::kAborted,
                    fmt::format("call {} aborted by the host", call_id()));
    rt_->machine_->Must(CallEvent::kYield);
    rt_->run_ = false;
    rt_->exited_ = true;
    rt_->cv_.notify_all();
    vcpu_->wake.wait(lock, [this] { return rt_->run_; });
    if (call_->abort)
      return Status(Code::kAborted,
                    fmt::format("call {} aborted by the host", call_id()));
    return Status::Ok();
  }

 public:
  Context(HvcpuRuntime* rt, Vcpu* vcpu, Call* call)
      : rt_(rt), vcpu_(vcpu), call_(call) {}

  uint64_t call_id() const override { return call_->token.serial; }
  std::string_view module() const override { return call_->token.module; }
  std::string_view procedure() const override { return call_->token.procedure; }
  std::span<const uint8_t> args() const override { return call_->args; }
  const Budget& budget() const override { return call_->token.budget; }
  uint32_t hvcpu() const override { return rt_->index_; }
  GuestPlatform& platform() override {
    if (rt_->services_.platform == nullptr)
      AbortWithStatus(Status(Code::kFailedPrecondition, "no guest platform"),
                      "CallContext::platform");
    return *rt_->services_.platform;
  }
  void SetWorkSize(uint64_t bytes) override { call_->bytes_total = bytes; }
  Status Charge(uint64_t bytes) override {
    const uint64_t limit = call_->token.budget.bytes;
    const uint64_t done = call_->bytes_done.load(std::memory_order_relaxed);
    if (limit != 0 && bytes > limit - std::min(limit, done))
      return Status(Code::kBudgetExceeded,
                    fmt::format("call {} would process {} bytes; its token "
                                "allows {}",
                                call_id(), done + bytes, limit));
    call_->bytes_done.store(done + bytes, std::memory_order_relaxed);
    return Status::Ok();
  }
  bool ShouldYield() const override {
    auto now = Clock::now();
    return now >= call_->slice_end.load(std::memory_order_relaxed) ||
           now >= call_->budget_end;
  }
  const CvmIdentity& identity() const override {
    return rt_->services_.authority->identity();
  }
  std::span<uint8_t> shared_memory() override { return rt_->services_.shared; }
  std::span<const uint8_t> shared_file() override {
    const auto& f = rt_->services_.shared_file;
    return f ? f() : std::span<const uint8_t>();
  }
  Status MaybeYield() override {
    CPC_RETURN_IF_ERROR(CheckBudgetTime());
    if (Clock::now() < call_->slice_end.load(std::memory_order_relaxed))
      return Status::Ok();
    return Suspend();
  }
  Status Yield() override {
    CPC_RETURN_IF_ERROR(CheckBudgetTime());
    return Suspend();
  }
  void OnCommit(std::function<void()> action) override {
    call_->commits.push_back(std::move(action));
  }
  void OnRollback(std::function<void()> action) override {
    call_->rollbacks.push_back(std::move(action));
  }
  void SetOutput(std::vector<uint8_t> output) override {
    Wipe(call_->output);
    call_->output = std::move(output);
  }

 private:
  HvcpuRuntime* rt_;
  Vcpu* vcpu_;
  Call* call_;
};

HvcpuRuntime::HvcpuRuntime(uint32_t index, Isolation isolation,
                           RuntimeServices services)
    : index_(index),
      isolation_(isolation),
      services_(services),
      machine_(std::make_unique<Machine>()) {
  if (services_.authority == nullptr || services_.modules == nullptr)
    AbortWithStatus(Status(Code::kInvalidArgument,
                           "HvcpuRuntime needs an authority and modules"),
                    "HvcpuRuntime");
  PreemptSignal();  // install the handler before any thread can be parked
  StartThread();
}

HvcpuRuntime::~HvcpuRuntime() {
  std::unique_ptr<Vcpu> vcpu;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !entered_; });
    if (machine_->sm.state() == CallState::kSuspended) {
      entered_ = true;
      (void)AbortCall(lock);
      entered_ = false;
    }
    shutdown_ = true;
    vcpu_->wake.notify_all();
    vcpu = std::move(vcpu_);
  }
  vcpu->thread.join();
}

void HvcpuRuntime::StartThread() {
  vcpu_ = std::make_unique<Vcpu>();
  Vcpu* v = vcpu_.get();
  v->thread = std::thread([this, v] { ThreadMain(v); });
  // Park() signals the thread: a signal before it knows its park cell would
  // be lost (and Park wait forever), so wait until it does.
  while (v->cell.ready.load() == 0) FutexWait(&v->cell.ready, 0);
}

CallState HvcpuRuntime::state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return machine_->sm.state();
}

uint64_t HvcpuRuntime::preemptions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return preemptions_;
}

uint64_t HvcpuRuntime::discarded_contexts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return discarded_;
}

void HvcpuRuntime::Park() {
  ParkCell& c = vcpu_->cell;
  c.hold.store(1);
  pthread_kill(vcpu_->thread.native_handle(), PreemptSignal());
  while (c.parked.load() == 0) FutexWait(&c.parked, 0);
}

void HvcpuRuntime::Unpark() {
  ParkCell& c = vcpu_->cell;
  c.hold.store(0);
  FutexWake(&c.hold);
  while (c.parked.load() == 1) FutexWait(&c.parked, 1);
}

void HvcpuRuntime::ThreadMain(Vcpu* vcpu) {
  t_park = &vcpu->cell;
  vcpu->cell.ready.store(1);
  FutexWake(&vcpu->cell.ready);
  std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
  LockOnHvcpu(lock);
  for (;;) {
    vcpu->wake.wait(lock, [this] {
      return shutdown_ || (run_ && call_ && !call_->picked);
    });
    if (!(run_ && call_ && !call_->picked)) return;  // shutdown
    Call* call = call_.get();
    call->picked = true;
    lock.unlock();

    Context ctx(this, vcpu, call);
    Status result = call->module->Run(ctx);
    LockOnHvcpu(lock);
    if (call->abort && result.code() != Code::kAborted)
      result = Status(Code::kAborted,
                      fmt::format("call {} aborted by the host (module "
                                  "returned: {})",
                                  call->token.serial, result.ToString()));
    call->terminating = true;
    lock.unlock();
    // Yield Termination: apply or undo, never half.
    if (result.ok()) {
      for (auto& f : call->commits) f();
    } else {
      for (auto it = call->rollbacks.rbegin(); it != call->rollbacks.rend();
           ++it)
        (*it)();
      Wipe(call->output);
    }
    call->commits.clear();
    call->rollbacks.clear();
    LockOnHvcpu(lock);
    call->result = std::move(result);
    call->finished = true;
    if (machine_->sm.state() == CallState::kCoreTasks)
      machine_->Must(CallEvent::kTaskFinished);
    run_ = false;
    exited_ = true;
    cv_.notify_all();
  }
}

Result<HvcpuExit> HvcpuRuntime::Enter(const HvcpuEntry& entry) {
  std::unique_lock<std::mutex> lock(mu_);
  if (entered_)
    return Status(Code::kIllegalTransition,
                  fmt::format("hvCPU {} is already entered", index_));
  entered_ = true;
  struct Leave {
    HvcpuRuntime* rt;
    ~Leave() {
      rt->entered_ = false;
      rt->cv_.notify_all();
    }
  } leave{this};

  if (entry.kind == HvcpuEntry::Kind::kStart) return Start(lock, entry);

  const CallState st = machine_->sm.state();
  if (st != CallState::kSuspended || call_->token.serial != entry.call_id) {
    if (st == CallState::kSuspended)
      return Status(Code::kIllegalTransition,
                    fmt::format("call {} is not suspended on hvCPU {} (call "
                                "{} is); a reset call can never be resumed",
                                entry.call_id, index_, call_->token.serial));
    return Status(Code::kIllegalTransition,
                  fmt::format("cannot {} call {}: hvCPU {} is '{}'; a reset "
                              "call can never be resumed",
                              entry.kind == HvcpuEntry::Kind::kResume ? "resume"
                                                                      : "abort",
                              entry.call_id, index_, CallStateName(st)));
  }
  if (entry.kind == HvcpuEntry::Kind::kAbort) return AbortCall(lock);

  machine_->Must(CallEvent::kResume);
  call_->slice_end = After(Clock::now(), entry.slice);
  exited_ = false;
  if (call_->preempted) {
    call_->preempted = false;
    Unpark();  // continues mid-task, exactly where the timer stopped it
  } else {
    run_ = true;
    vcpu_->wake.notify_all();
  }
  return RunUntilExit(lock);
}

Result<HvcpuExit> HvcpuRuntime::AbortCall(std::unique_lock<std::mutex>& lock) {
  machine_->Must(CallEvent::kAbort);
  call_->abort = true;
  exited_ = false;
  // Wake the context: a module that checks MaybeYield unwinds cleanly.
  if (call_->preempted) {
    call_->preempted = false;
    Unpark();
  } else {
    run_ = true;
    vcpu_->wake.notify_all();
  }
  if (cv_.wait_for(lock, kAbortGrace, [this] { return exited_; }) ||
      call_->terminating) {
    // Its own commit/rollback is under way: let it finish, never race it.
    cv_.wait(lock, [this] { return exited_; });
    return FinishAndReset(lock);
  }
  // A hog: discard its context for good (the vCPU's registers are reset) and
  // undo on its behalf; the parked thread never runs again.
  Park();
  ++discarded_;
  Call* call = call_.get();
  for (auto it = call->rollbacks.rbegin(); it != call->rollbacks.rend(); ++it)
    (*it)();
  call->result = Status(Code::kAborted,
                        fmt::format("call {} aborted by the host; its hvCPU "
                                    "context was discarded",
                                    call->token.serial));
  call->finished = true;
  HvcpuExit exit = FinishAndReset(lock, /*discard=*/true);
  StartThread();
  return exit;
}

Result<HvcpuExit> HvcpuRuntime::Start(std::unique_lock<std::mutex>& lock,
                                      const HvcpuEntry& entry) {
  const CallState st = machine_->sm.state();
  if (st != CallState::kIdle)
    return Status(Code::kIllegalTransition,
                  fmt::format("cannot start a call: hvCPU {} is '{}' with "
                              "call {}",
                              index_, CallStateName(st),
                              call_ ? call_->token.serial : 0));
  machine_->Must(CallEvent::kStart);  // Token Validation

  auto reject = [this](Status s) -> HvcpuExit {
    machine_->Must(CallEvent::kTokenRejected);
    machine_->Must(CallEvent::kResultCollected);
    machine_->Must(CallEvent::kResetDone);
    HvcpuExit exit;
    exit.reason = HvcpuExit::Reason::kCompleted;
    exit.status = std::move(s);
    return exit;
  };

  auto module = services_.modules->Find(entry.module);
  if (!module.ok()) return reject(module.status());
  const ModulePolicy* mp = services_.authority->policy().Find(entry.module);
  const bool secure = (*module)->isolation() == Isolation::kSecure ||
                      (mp != nullptr && mp->isolation == Isolation::kSecure);
  if (secure && isolation_ != Isolation::kSecure)
    return reject(Status(Code::kPermissionDenied,
                         fmt::format("module '{}' needs a Secure-CPC hvCPU; "
                                     "hvCPU {} is not isolated",
                                     entry.module, index_)));
  auto token =
      services_.authority->Validate(entry.token, entry.module, entry.procedure);
  if (!token.ok()) return reject(token.status());

  machine_->Must(CallEvent::kTokenAccepted);  // Core Tasks
  auto call = std::make_unique<Call>();
  const auto now = Clock::now();
  call->token = std::move(token).value();
  call->module = *module;
  call->args = entry.args;
  call->slice_end = After(now, entry.slice);
  call->budget_end =
      After(now, std::chrono::milliseconds(call->token.budget.time_ms));
  call_ = std::move(call);
  run_ = true;
  exited_ = false;
  vcpu_->wake.notify_all();
  return RunUntilExit(lock);
}

Result<HvcpuExit> HvcpuRuntime::RunUntilExit(
    std::unique_lock<std::mutex>& lock) {
  const auto slice_end = call_->slice_end.load();
  const bool exited = slice_end == kNever
                          ? (cv_.wait(lock, [this] { return exited_; }), true)
                          : cv_.wait_until(lock, slice_end + kPreemptGrace,
                                           [this] { return exited_; });
  if (!exited) {
    // The slice timer fires: VMEXIT whether the module likes it or not.
    Park();
    ++preemptions_;
    call_->preempted = true;
    machine_->Must(CallEvent::kYield);
    HvcpuExit exit;
    exit.reason = HvcpuExit::Reason::kPreempted;
    exit.call_id = call_->token.serial;
    exit.progress = call_->progress();
    return exit;
  }
  if (call_->finished) return FinishAndReset(lock);
  HvcpuExit exit;
  exit.reason = HvcpuExit::Reason::kYielded;
  exit.call_id = call_->token.serial;
  exit.progress = call_->progress();
  return exit;
}

HvcpuExit HvcpuRuntime::FinishAndReset(std::unique_lock<std::mutex>& lock,
                                       bool discard) {
  (void)lock;
  HvcpuExit exit;
  exit.reason = HvcpuExit::Reason::kCompleted;
  exit.call_id = call_->token.serial;
  exit.status = call_->result;
  exit.progress = call_->progress();
  if (exit.status.ok()) exit.output = std::move(call_->output);
  machine_->Must(CallEvent::kResultCollected);  // State Reset
  services_.authority->Retire(call_->token.serial, exit.progress.bytes_done);
  Wipe(call_->args);
  Wipe(call_->output);
  if (discard) {
    // The parked thread's stack still refers to its Vcpu and Call.
    vcpu_->thread.detach();
    std::lock_guard<std::mutex> zl(g_zombie_mu);
    Zombies().emplace_back(std::shared_ptr<Vcpu>(std::move(vcpu_)));
    Zombies().emplace_back(std::shared_ptr<Call>(std::move(call_)));
  }
  call_.reset();
  exited_ = false;
  run_ = false;
  machine_->Must(CallEvent::kResetDone);  // Idle
  return exit;
}

Duration AbortPolicy::TimeLimit(uint64_t work_bytes) const {
  if (min_rate_bytes_per_s <= 0) return Duration::max();
  return base_time +
         std::chrono::duration_cast<Duration>(std::chrono::duration<double>(
             static_cast<double>(work_bytes) / min_rate_bytes_per_s));
}

AbortMonitor::AbortMonitor(const AbortPolicy& policy, Clock::time_point start)
    : policy_(policy), start_(start) {
  samples_.emplace_back(start, 0);
}

Status AbortMonitor::Observe(const CallProgress& progress,
                             Clock::time_point now) {
  const Duration elapsed = now - start_;
  const Duration limit = policy_.TimeLimit(progress.bytes_total);
  auto ms = [](Duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
  };
  if (elapsed > limit)
    return Status(Code::kAborted,
                  fmt::format("time limit {:.0f} ms for {} bytes exceeded "
                              "({:.0f} ms elapsed, {} bytes done)",
                              ms(limit), progress.bytes_total, ms(elapsed),
                              progress.bytes_done));
  samples_.emplace_back(now, progress.bytes_done);
  if (policy_.throughput_floor_bytes_per_s <= 0 || elapsed < policy_.window)
    return Status::Ok();
  // Keep the newest sample at least `window` old as the rate's start.
  while (samples_.size() > 2 && samples_[1].first <= now - policy_.window)
    samples_.pop_front();
  const auto& [t0, b0] = samples_.front();
  const double secs = std::chrono::duration<double>(now - t0).count();
  const double rate =
      secs > 0 ? static_cast<double>(progress.bytes_done - b0) / secs : 0;
  if (rate < policy_.throughput_floor_bytes_per_s)
    return Status(
        Code::kAborted,
        fmt::format("throughput {:.0f} B/s over the last {:.0f} ms "
                    "is under the floor of {:.0f} B/s",
                    rate, secs * 1e3, policy_.throughput_floor_bytes_per_s));
  return Status::Ok();
}

Result<CallOutcome> DriveCall(const EnterFn& enter, HvcpuEntry start,
                              const AbortPolicy& policy,
                              const ProgressFn& on_progress) {
  return DriveCallWith(enter, std::move(start), policy,
                       [&](const HvcpuExit& exit, const CallStats& stats) {
                         if (on_progress) on_progress(exit.progress, stats);
                         return Status::Ok();
                       });
}

Result<CallOutcome> DriveCallWith(const EnterFn& enter, HvcpuEntry start,
                                  const AbortPolicy& policy,
                                  const YieldFn& on_yield) {
  if (start.kind != HvcpuEntry::Kind::kStart)
    return Status(Code::kInvalidArgument, "DriveCall needs a kStart entry");
  const auto t0 = Clock::now();
  AbortMonitor monitor(policy, t0);
  CallOutcome out;
  auto update = [&](const HvcpuExit& exit) {
    out.stats.bytes = exit.progress.bytes_done;
    out.stats.elapsed = Clock::now() - t0;
    const double secs =
        std::chrono::duration<double>(out.stats.elapsed).count();
    out.stats.rate_bytes_per_s = secs > 0 ? out.stats.bytes / secs : 0;
  };

  ++out.stats.entries;
  CPC_ASSIGN_OR_RETURN(HvcpuExit exit, enter(start));
  Status verdict;
  while (exit.reason != HvcpuExit::Reason::kCompleted) {
    if (exit.reason == HvcpuExit::Reason::kPreempted) {
      ++out.stats.preemptions;
    } else {
      ++out.stats.yields;
    }
    update(exit);
    verdict = on_yield ? on_yield(exit, out.stats) : Status::Ok();
    if (verdict.ok()) verdict = monitor.Observe(exit.progress, Clock::now());
    HvcpuEntry next;
    next.kind =
        verdict.ok() ? HvcpuEntry::Kind::kResume : HvcpuEntry::Kind::kAbort;
    next.call_id = exit.call_id;
    next.slice = start.slice;
    ++out.stats.entries;
    CPC_ASSIGN_OR_RETURN(exit, enter(next));
    if (!verdict.ok()) {
      if (exit.reason != HvcpuExit::Reason::kCompleted)
        return Status(Code::kInternal, "hvCPU yielded after an abort entry");
      break;
    }
  }
  update(exit);
  out.call_id = exit.call_id;
  out.status = verdict.ok() ? std::move(exit.status) : verdict;
  if (!verdict.ok() && verdict.code() == Code::kAborted)
    out.status = verdict.WithContext("abort protocol");
  out.output = std::move(exit.output);
  return out;
}

CPC_NAMESPACE_END
