#include "core/call_state.h"

#include <fmt/format.h>

CPC_NAMESPACE_BEGIN

std::string_view CallStateName(CallState s) {
  switch (s) {
    case CallState::kIdle:
      return "idle";
    case CallState::kTokenValidation:
      return "token_validation";
    case CallState::kCoreTasks:
      return "core_tasks";
    case CallState::kSuspended:
      return "suspended";
    case CallState::kYieldTermination:
      return "yield_termination";
    case CallState::kStateReset:
      return "state_reset";
  }
  return "invalid_state";
}

std::string_view CallEventName(CallEvent e) {
  switch (e) {
    case CallEvent::kStart:
      return "start";
    case CallEvent::kTokenAccepted:
      return "token_accepted";
    case CallEvent::kTokenRejected:
      return "token_rejected";
    case CallEvent::kYield:
      return "yield";
    case CallEvent::kResume:
      return "resume";
    case CallEvent::kTaskFinished:
      return "task_finished";
    case CallEvent::kAbort:
      return "abort";
    case CallEvent::kResultCollected:
      return "result_collected";
    case CallEvent::kResetDone:
      return "reset_done";
  }
  return "invalid_event";
}

std::optional<CallState> CallStateMachine::Next(CallState from,
                                                CallEvent event) {
  using S = CallState;
  using E = CallEvent;
  switch (from) {
    case S::kIdle:
      if (event == E::kStart) return S::kTokenValidation;
      break;
    case S::kTokenValidation:
      if (event == E::kTokenAccepted) return S::kCoreTasks;
      if (event == E::kTokenRejected) return S::kYieldTermination;
      break;
    case S::kCoreTasks:
      if (event == E::kYield) return S::kSuspended;
      if (event == E::kTaskFinished || event == E::kAbort)
        return S::kYieldTermination;
      break;
    case S::kSuspended:
      if (event == E::kResume) return S::kCoreTasks;
      if (event == E::kAbort) return S::kYieldTermination;
      break;
    case S::kYieldTermination:
      if (event == E::kResultCollected) return S::kStateReset;
      break;
    case S::kStateReset:
      if (event == E::kResetDone) return S::kIdle;
      break;
  }
  return std::nullopt;
}

Status CallStateMachine::Apply(CallEvent event) {
  auto next = Next(state_, event);
  if (!next)
    return Status(Code::kIllegalTransition,
                  fmt::format("event '{}' is illegal in state '{}'",
                              CallEventName(event), CallStateName(state_)));
  state_ = *next;
  return Status::Ok();
}

CPC_NAMESPACE_END
