// libcpc's diagnostics. libcpc logs through its own spdlog logger ("cpc") and
// never touches spdlog's default logger, because the embedding VMM owns
// stderr. By default messages at or above CPC_LOG (trace, debug, info, warn,
// error, off; default warn) go to stderr; a VMM installs a sink instead.
// Thread-safe.
#ifndef CPC_LOG_H_
#define CPC_LOG_H_

#include <functional>
#include <string_view>

#include <cpc/export.h>
#include <cpc/version.h>

CPC_NAMESPACE_BEGIN

enum class LogLevel : int { kTrace = 0, kDebug, kInfo, kWarn, kError, kOff };

using LogSink = std::function<void(LogLevel, std::string_view)>;

// Routes libcpc's messages at or above `min_level` to `sink` (empty sink:
// back to stderr). The sink may be called from any libcpc thread.
CPC_EXPORT void SetLogSink(LogLevel min_level, LogSink sink);

CPC_NAMESPACE_END

#endif  // CPC_LOG_H_
