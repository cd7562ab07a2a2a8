// The vocabulary of one Confidential Procedure Call as the host sees it: what
// the host passes when it enters an hvCPU and what it gets back when the hvCPU
// exits. Plain values; no synchronisation.
//
// A call runs the paper's state machine:
//   Idle -> Token Validation -> Core Tasks -> Yield Termination -> State Reset
//   -> Idle
// A long call may leave Core Tasks for Suspended (its slice is used up or the
// module yields) and is resumed by the next entry without a new token. Once a
// call reaches State Reset its id is retired and it can never be resumed.
#ifndef CPC_CALL_H_
#define CPC_CALL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/export.h>
#include <cpc/status.h>
#include <cpc/types.h>

CPC_NAMESPACE_BEGIN

enum class CallState : uint8_t {
  kIdle = 0,          // no call; waiting for a token
  kTokenValidation,   // checking the token against the authority
  kCoreTasks,         // the module runs on the hvCPU
  kSuspended,         // yielded mid-task; resumable by the next schedule
  kYieldTermination,  // finished (ok, failed or aborted); result to the host
  kStateReset,        // per-call state scrubbed; id retired
};

enum class CallEvent : uint8_t {
  kStart = 0,      // host enters the hvCPU with a token   (Idle -> TV)
  kTokenAccepted,  //                                      (TV -> CT)
  kTokenRejected,  //                                      (TV -> YT)
  kYield,          // slice used / module yields           (CT -> Suspended)
  kResume,         // host enters again, same call         (Suspended -> CT)
  kTaskFinished,   // module returned (ok or error)        (CT -> YT)
  kAbort,          // abort protocol                       (CT|Suspended -> YT)
  kResultCollected,  // host took the result                 (YT -> SR)
  kResetDone,        // scrubbed                             (SR -> Idle)
};

CPC_EXPORT std::string_view CallStateName(CallState s);
CPC_EXPORT std::string_view CallEventName(CallEvent e);

// What the host asks an hvCPU to do on entry.
struct HvcpuEntry {
  enum class Kind : uint8_t {
    kStart,   // begin a new call: `module`, `procedure`, `token`, `args`
    kResume,  // continue suspended call `call_id`
    kAbort,   // end suspended call `call_id` as kAborted, nothing applied
  };
  Kind kind = Kind::kStart;
  uint64_t call_id = 0;        // kResume / kAbort
  std::string module;          // kStart
  std::string procedure;       // kStart
  std::vector<uint8_t> token;  // kStart: wire form of a Token
  std::vector<uint8_t> args;   // kStart: module-defined arguments
  Duration slice =
      Duration(0);  // run at most this long before yielding; 0 = no limit
};

// Progress a call reports; the host's abort policy is fed from it.
struct CallProgress {
  uint64_t bytes_done = 0;   // guest bytes processed so far
  uint64_t bytes_total = 0;  // work size declared by the module (0 = unknown)
};

// What the host gets back when the hvCPU exits to it.
struct HvcpuExit {
  enum class Reason : uint8_t {
    kYielded,    // call suspended; enter again with kResume (or kAbort)
    kPreempted,  // the slice timer stopped the hvCPU mid-task (the module did
                 // not yield in time); kResume continues it where it was,
                 // kAbort discards its context
    kCompleted,  // call ended: `status` is its result; the call was reset
  };
  Reason reason = Reason::kCompleted;
  uint64_t call_id = 0;
  Status status;  // kCompleted: ok, the module's error, or kAborted
  CallProgress progress;
  std::vector<uint8_t> output;  // kCompleted + ok: module-defined result
};

CPC_NAMESPACE_END

#endif  // CPC_CALL_H_
