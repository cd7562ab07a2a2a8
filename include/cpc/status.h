// cpc::Status and cpc::Result<T>: how every libcpc operation reports failure.
//
// No exception crosses the public API. A Status is a closed Code, an optional
// backend-specific subcode (e.g. the SNP firmware's return code, the RMM's
// RMI status or a TDX module status) and a human-readable message. Status and
// Result are plain values: copyable, movable, not synchronised (one thread per
// object, like std::string).
#ifndef CPC_STATUS_H_
#define CPC_STATUS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include <cpc/export.h>
#include <cpc/version.h>

CPC_NAMESPACE_BEGIN

// Closed set of error codes. The numeric values are part of the C ABI
// (cpc_status_t): append new codes, never renumber.
enum class Code : int32_t {
  kOk = 0,
  // Generic.
  kInvalidArgument = 1,     // malformed input from the caller
  kNotFound = 2,            // named object does not exist
  kAlreadyExists = 3,       // name or id taken
  kFailedPrecondition = 4,  // object is not in a state that allows the call
  kPermissionDenied = 5,    // the caller is not allowed (policy, isolation)
  kResourceExhausted = 6,   // out of memory, slots, ring space, budget
  kUnimplemented = 7,       // the platform or backend cannot do this
  kInternal = 8,            // a libcpc bug or broken invariant
  kIoError = 9,             // OS call failed (errno in the subcode)
  kCancelled = 10,          // the caller withdrew the operation
  kAborted = 11,            // stopped by the confidential abort protocol
  kTimeout = 12,            // a deadline passed
  kDataLoss = 13,           // unrecoverable loss or corruption of stored data
  kUnavailable = 14,        // outcome unknown until the peer can be reached
  // Call state machine.
  kIllegalTransition = 20,  // event not allowed in the call's current state
  kBudgetExceeded = 21,     // a running call used more than its token allows
  // Backend selection.
  kBackendUnknown = 30,        // no backend of that name is built in
  kBackendUnavailable = 31,    // built in, but this machine cannot run it
  kBackendMisconfigured = 32,  // runnable, but the configuration is invalid
  kPlatformError = 33,         // firmware model refused; subcode = its code
  // Authorization tokens.
  kTokenMalformed = 40,   // not a token of this format/version
  kTokenForged = 41,      // MAC does not verify
  kTokenReplayed = 42,    // its call already ran to the end (serial consumed)
  kTokenReused = 43,      // its call is still in progress
  kTokenOverBudget = 44,  // asks more than the tenant policy still allows
  kTokenWrongCvm = 45,    // issued for another CVM
  kTokenMismatch = 46,    // issued for another module or procedure
  kNotApproved = 47,      // the guest-OS agent refused to approve a token
  // Records and import rules (operators).
  kAuthFailed = 50,        // AEAD tag mismatch: tampered record or wrong key
  kRecordReplayed = 51,    // counter older than expected
  kRecordOutOfOrder = 52,  // counter ahead of expected: reordered or dropped
  kRecordTruncated = 53,   // shorter than its header says
  kRecordMalformed = 54,   // unknown version/type, bad lengths
  kDuplicatePage = 55,     // page already imported in this epoch
  kGpaMismatch = 56,       // page bound to another GPA (swap)
  kEpochMismatch = 57,     // epoch token counts disagree (drop detected)
  kStaleEpoch = 58,        // record from an older epoch
  kIncomplete = 59,        // start token before all state arrived
  // Attestation (report verification).
  kReportBadSignature = 60,   // report signature does not verify (tampered)
  kReportBadChain = 61,       // signing key does not chain to the trusted root
  kMeasurementMismatch = 62,  // identity field differs (subcode = offset)
  kReportDataMismatch = 63,   // report_data differs (freshness / key binding)
};

// Stable lower-case name of a code, e.g. "token_forged".
CPC_EXPORT std::string_view CodeName(Code code);

class [[nodiscard, gnu::visibility("default")]] Status {
 public:
  Status() = default;  // OK
  Status(Code code, std::string message, int64_t subcode = 0)
      : code_(code), subcode_(subcode), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  // Backend-specific detail (firmware status code, errno); 0 if none.
  int64_t subcode() const { return subcode_; }
  const std::string& message() const { return message_; }

  // Returns a copy with `context` prepended to the message ("context: msg").
  Status WithContext(std::string_view context) const;
  // "ok" or "<code_name>: <message> [subcode 0x..]".
  std::string ToString() const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.subcode_ == b.subcode_ &&
           a.message_ == b.message_;
  }

 private:
  Code code_ = Code::kOk;
  int64_t subcode_ = 0;
  std::string message_;
};

// A value or an error (modeled on absl::StatusOr). Never holds an OK Status:
// constructing one from an OK Status yields kInternal. value() on an error is a
// programming bug and aborts (no exceptions cross the API).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).ok())
      v_ = Status(Code::kInternal, "Result constructed from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return Get(); }
  const T& value() const& { return const_cast<Result*>(this)->Get(); }
  T&& value() && { return std::move(Get()); }
  T* operator->() { return &Get(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return Get(); }
  const T& operator*() const& { return value(); }

 private:
  T& Get() {
    if (!ok()) AbortOnBadAccess(std::get<Status>(v_));
    return std::get<T>(v_);
  }
  [[noreturn]] static void AbortOnBadAccess(const Status& s);
  std::variant<T, Status> v_;
};

[[noreturn]] CPC_EXPORT void AbortWithStatus(const Status& s, const char* what);

template <typename T>
void Result<T>::AbortOnBadAccess(const Status& s) {
  AbortWithStatus(s, "Result::value() on an error");
}

CPC_NAMESPACE_END

// Propagate a non-OK Status / Result to the caller.
#define CPC_RETURN_IF_ERROR(expr)                      \
  do {                                                 \
    ::cpc::Status cpc_status_tmp_ = (expr);            \
    if (!cpc_status_tmp_.ok()) return cpc_status_tmp_; \
  } while (0)

#define CPC_CONCAT_INNER_(a, b) a##b
#define CPC_CONCAT_(a, b) CPC_CONCAT_INNER_(a, b)
// CPC_ASSIGN_OR_RETURN(auto x, MakeX()); declares x from a Result or returns.
#define CPC_ASSIGN_OR_RETURN(lhs, expr) \
  CPC_ASSIGN_OR_RETURN_IMPL_(CPC_CONCAT_(cpc_result_, __LINE__), lhs, expr)
#define CPC_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

#endif  // CPC_STATUS_H_
