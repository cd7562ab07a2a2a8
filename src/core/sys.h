// Status from the calling thread's errno: kIoError, "<what>: <strerror>",
// errno in the subcode. Call right after the failing system call.
#ifndef CPC_SRC_CORE_SYS_H_
#define CPC_SRC_CORE_SYS_H_

#include <cerrno>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include <cpc/status.h>

CPC_NAMESPACE_BEGIN

inline Status ErrnoStatus(std::string_view what) {
  const int e = errno;
  return Status(Code::kIoError, fmt::format("{}: {}", what, std::strerror(e)),
                e);
}

CPC_NAMESPACE_END

#endif  // CPC_SRC_CORE_SYS_H_
