#include <map>
#include <vector>

#include <catch2/catch.hpp>

#include "core/call_state.h"
#include "test_util.h"

using cpc::CallEvent;
using cpc::CallState;
using cpc::CallStateMachine;

namespace {
constexpr CallState kStates[] = {CallState::kIdle,
                                 CallState::kTokenValidation,
                                 CallState::kCoreTasks,
                                 CallState::kSuspended,
                                 CallState::kYieldTermination,
                                 CallState::kStateReset};
constexpr CallEvent kEvents[] = {
    CallEvent::kStart, CallEvent::kTokenAccepted,   CallEvent::kTokenRejected,
    CallEvent::kYield, CallEvent::kResume,          CallEvent::kTaskFinished,
    CallEvent::kAbort, CallEvent::kResultCollected, CallEvent::kResetDone};

// The paper's machine plus the Suspended state for yielding long calls.
const std::map<std::pair<CallState, CallEvent>, CallState> kLegal = {
    {{CallState::kIdle, CallEvent::kStart}, CallState::kTokenValidation},
    {{CallState::kTokenValidation, CallEvent::kTokenAccepted},
     CallState::kCoreTasks},
    {{CallState::kTokenValidation, CallEvent::kTokenRejected},
     CallState::kYieldTermination},
    {{CallState::kCoreTasks, CallEvent::kYield}, CallState::kSuspended},
    {{CallState::kCoreTasks, CallEvent::kTaskFinished},
     CallState::kYieldTermination},
    {{CallState::kCoreTasks, CallEvent::kAbort}, CallState::kYieldTermination},
    {{CallState::kSuspended, CallEvent::kResume}, CallState::kCoreTasks},
    {{CallState::kSuspended, CallEvent::kAbort}, CallState::kYieldTermination},
    {{CallState::kYieldTermination, CallEvent::kResultCollected},
     CallState::kStateReset},
    {{CallState::kStateReset, CallEvent::kResetDone}, CallState::kIdle},
};

// Drives a fresh machine into `target` along legal transitions.
CallStateMachine Reach(CallState target) {
  CallStateMachine m;
  const std::vector<CallEvent> path = {
      CallEvent::kStart, CallEvent::kTokenAccepted, CallEvent::kYield};
  if (target == CallState::kIdle) return m;
  REQUIRE_OK(m.Apply(CallEvent::kStart));
  if (target == CallState::kTokenValidation) return m;
  REQUIRE_OK(m.Apply(CallEvent::kTokenAccepted));
  if (target == CallState::kCoreTasks) return m;
  if (target == CallState::kSuspended) {
    REQUIRE_OK(m.Apply(CallEvent::kYield));
    return m;
  }
  REQUIRE_OK(m.Apply(CallEvent::kTaskFinished));
  if (target == CallState::kYieldTermination) return m;
  REQUIRE_OK(m.Apply(CallEvent::kResultCollected));
  return m;
}
}  // namespace

TEST_CASE(
    "Every (state, event) pair is legal exactly as the paper's machine says") {
  int legal = 0, illegal = 0;
  for (CallState s : kStates) {
    for (CallEvent e : kEvents) {
      CallStateMachine m = Reach(s);
      REQUIRE(m.state() == s);
      auto it = kLegal.find({s, e});
      auto st = m.Apply(e);
      INFO(std::string(cpc::CallStateName(s)) + " + " +
           std::string(cpc::CallEventName(e)));
      if (it != kLegal.end()) {
        REQUIRE_OK(st);
        REQUIRE(m.state() == it->second);
        ++legal;
      } else {
        REQUIRE_CODE(st, cpc::Code::kIllegalTransition);
        REQUIRE(m.state() == s);  // refused events change nothing
        REQUIRE(st.message().find(cpc::CallStateName(s)) != std::string::npos);
        ++illegal;
      }
    }
  }
  REQUIRE(legal == 10);
  REQUIRE(illegal == 6 * 9 - 10);
}

TEST_CASE("A full call cycle returns to Idle and can run again") {
  CallStateMachine m;
  for (int round = 0; round < 2; ++round) {
    for (CallEvent e :
         {CallEvent::kStart, CallEvent::kTokenAccepted, CallEvent::kYield,
          CallEvent::kResume, CallEvent::kTaskFinished,
          CallEvent::kResultCollected, CallEvent::kResetDone})
      REQUIRE_OK(m.Apply(e));
    REQUIRE(m.state() == CallState::kIdle);
  }
  // After reset there is nothing to resume.
  REQUIRE_CODE(m.Apply(CallEvent::kResume), cpc::Code::kIllegalTransition);
}
