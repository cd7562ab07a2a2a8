#include "core/log.h"

#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

CPC_NAMESPACE_BEGIN

namespace {
spdlog::level::level_enum ToSpd(LogLevel l) {
  return static_cast<spdlog::level::level_enum>(static_cast<int>(l));
}

// Forwards formatted messages to the host's callback.
class CallbackSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit CallbackSink(LogSink fn) : fn_(std::move(fn)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    fn_(static_cast<LogLevel>(static_cast<int>(msg.level)),
        std::string_view(msg.payload.data(), msg.payload.size()));
  }
  void flush_() override {}

 private:
  LogSink fn_;
};

std::shared_ptr<spdlog::logger> MakeDefault() {
  auto logger = std::make_shared<spdlog::logger>(
      "cpc", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  logger->set_pattern("[%H:%M:%S.%e] [cpc] [%^%l%$] %v");
  auto level = spdlog::level::warn;
  if (const char* env = std::getenv("CPC_LOG"); env && *env)
    level = spdlog::level::from_str(env);
  logger->set_level(level);
  return logger;
}

std::mutex g_mu;
std::shared_ptr<spdlog::logger>& Current() {
  static std::shared_ptr<spdlog::logger> logger = MakeDefault();
  return logger;
}
}  // namespace

spdlog::logger& Logger() {
  std::lock_guard<std::mutex> lock(g_mu);
  return *Current();
}

void SetLogSink(LogLevel min_level, LogSink sink) {
  std::shared_ptr<spdlog::logger> logger;
  if (sink) {
    logger = std::make_shared<spdlog::logger>(
        "cpc", std::make_shared<CallbackSink>(std::move(sink)));
  } else {
    logger = MakeDefault();
  }
  logger->set_level(ToSpd(min_level));
  std::lock_guard<std::mutex> lock(g_mu);
  // The old logger stays alive for threads still holding a reference.
  static std::vector<std::shared_ptr<spdlog::logger>> retired;
  retired.push_back(Current());
  Current() = std::move(logger);
}

CPC_NAMESPACE_END
