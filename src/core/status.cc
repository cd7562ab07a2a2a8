#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include <cpc/status.h>

CPC_NAMESPACE_BEGIN

std::string_view CodeName(Code code) {
  switch (code) {
#define CPC_CODE_NAME(c, s) \
  case Code::c:             \
    return s;
    CPC_CODE_NAME(kOk, "ok")
    CPC_CODE_NAME(kInvalidArgument, "invalid_argument")
    CPC_CODE_NAME(kNotFound, "not_found")
    CPC_CODE_NAME(kAlreadyExists, "already_exists")
    CPC_CODE_NAME(kFailedPrecondition, "failed_precondition")
    CPC_CODE_NAME(kPermissionDenied, "permission_denied")
    CPC_CODE_NAME(kResourceExhausted, "resource_exhausted")
    CPC_CODE_NAME(kUnimplemented, "unimplemented")
    CPC_CODE_NAME(kInternal, "internal")
    CPC_CODE_NAME(kIoError, "io_error")
    CPC_CODE_NAME(kCancelled, "cancelled")
    CPC_CODE_NAME(kAborted, "aborted")
    CPC_CODE_NAME(kTimeout, "timeout")
    CPC_CODE_NAME(kDataLoss, "data_loss")
    CPC_CODE_NAME(kUnavailable, "unavailable")
    CPC_CODE_NAME(kIllegalTransition, "illegal_transition")
    CPC_CODE_NAME(kBudgetExceeded, "budget_exceeded")
    CPC_CODE_NAME(kBackendUnknown, "backend_unknown")
    CPC_CODE_NAME(kBackendUnavailable, "backend_unavailable")
    CPC_CODE_NAME(kBackendMisconfigured, "backend_misconfigured")
    CPC_CODE_NAME(kPlatformError, "platform_error")
    CPC_CODE_NAME(kTokenMalformed, "token_malformed")
    CPC_CODE_NAME(kTokenForged, "token_forged")
    CPC_CODE_NAME(kTokenReplayed, "token_replayed")
    CPC_CODE_NAME(kTokenReused, "token_reused")
    CPC_CODE_NAME(kTokenOverBudget, "token_over_budget")
    CPC_CODE_NAME(kTokenWrongCvm, "token_wrong_cvm")
    CPC_CODE_NAME(kTokenMismatch, "token_mismatch")
    CPC_CODE_NAME(kNotApproved, "not_approved")
    CPC_CODE_NAME(kAuthFailed, "auth_failed")
    CPC_CODE_NAME(kRecordReplayed, "record_replayed")
    CPC_CODE_NAME(kRecordOutOfOrder, "record_out_of_order")
    CPC_CODE_NAME(kRecordTruncated, "record_truncated")
    CPC_CODE_NAME(kRecordMalformed, "record_malformed")
    CPC_CODE_NAME(kDuplicatePage, "duplicate_page")
    CPC_CODE_NAME(kGpaMismatch, "gpa_mismatch")
    CPC_CODE_NAME(kEpochMismatch, "epoch_mismatch")
    CPC_CODE_NAME(kStaleEpoch, "stale_epoch")
    CPC_CODE_NAME(kIncomplete, "incomplete")
    CPC_CODE_NAME(kReportBadSignature, "report_bad_signature")
    CPC_CODE_NAME(kReportBadChain, "report_bad_chain")
    CPC_CODE_NAME(kMeasurementMismatch, "measurement_mismatch")
    CPC_CODE_NAME(kReportDataMismatch, "report_data_mismatch")
#undef CPC_CODE_NAME
  }
  return "unknown_code";
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, fmt::format("{}: {}", context, message_), subcode_);
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s = fmt::format("{}: {}", CodeName(code_), message_);
  if (subcode_ != 0) s += fmt::format(" [subcode {:#x}]", subcode_);
  return s;
}

void AbortWithStatus(const Status& s, const char* what) {
  std::fprintf(stderr, "libcpc fatal: %s: %s\n", what, s.ToString().c_str());
  std::abort();
}

CPC_NAMESPACE_END
