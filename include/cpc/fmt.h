// fmt formatters for libcpc's value types. Optional: include it only if your
// code uses fmt (libcpc's public headers do not depend on fmt otherwise).
#ifndef CPC_FMT_H_
#define CPC_FMT_H_

#include <fmt/format.h>

#include <cpc/status.h>

template <>
struct fmt::formatter<cpc::Status> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(const cpc::Status& s, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(s.ToString(), ctx);
  }
};

template <>
struct fmt::formatter<cpc::Code> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(cpc::Code c, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(cpc::CodeName(c), ctx);
  }
};

#endif  // CPC_FMT_H_
