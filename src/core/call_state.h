// The per-call state machine of the paper (see include/cpc/call.h for the
// states and events). Pure logic, no threads: Apply() either performs a legal
// transition or refuses with kIllegalTransition and leaves the state as it
// was. Not synchronised; the hvCPU runtime guards it with its own lock.
#ifndef CPC_SRC_CORE_CALL_STATE_H_
#define CPC_SRC_CORE_CALL_STATE_H_

#include <optional>

#include <cpc/call.h>
#include <cpc/status.h>

CPC_NAMESPACE_BEGIN

class CallStateMachine {
 public:
  CallState state() const { return state_; }
  Status Apply(CallEvent event);
  // The state `event` leads to from `from`, or nullopt if illegal.
  static std::optional<CallState> Next(CallState from, CallEvent event);

 private:
  CallState state_ = CallState::kIdle;
};

CPC_NAMESPACE_END

#endif  // CPC_SRC_CORE_CALL_STATE_H_
