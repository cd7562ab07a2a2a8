// Internal access to libcpc's logger: CPC_LOG_INFO("x {}", y) etc.
#ifndef CPC_SRC_CORE_LOG_H_
#define CPC_SRC_CORE_LOG_H_

#include <spdlog/logger.h>

#include <cpc/log.h>

CPC_NAMESPACE_BEGIN
spdlog::logger& Logger();
CPC_NAMESPACE_END

#define CPC_LOG_DEBUG(...) ::cpc::Logger().debug(__VA_ARGS__)
#define CPC_LOG_INFO(...) ::cpc::Logger().info(__VA_ARGS__)
#define CPC_LOG_WARN(...) ::cpc::Logger().warn(__VA_ARGS__)
#define CPC_LOG_ERROR(...) ::cpc::Logger().error(__VA_ARGS__)

#endif  // CPC_SRC_CORE_LOG_H_
