// Catch2 helpers shared by libcpc tests.
#ifndef CPC_TESTS_TEST_UTIL_H_
#define CPC_TESTS_TEST_UTIL_H_

#include <catch2/catch.hpp>

#include <cpc/status.h>

namespace cpc_test {
template <typename T>
const cpc::Status& StatusOf(const cpc::Result<T>& r) { return r.status(); }
inline const cpc::Status& StatusOf(const cpc::Status& s) { return s; }
}  // namespace cpc_test

// REQUIRE that a Status/Result is OK, printing the error otherwise.
#define REQUIRE_OK(expr)                                          \
  do {                                                            \
    const auto& cpc_req_v_ = (expr);                              \
    INFO(::cpc_test::StatusOf(cpc_req_v_).ToString());            \
    REQUIRE(::cpc_test::StatusOf(cpc_req_v_).ok());               \
  } while (0)

// REQUIRE that a Status/Result failed with exactly `code`.
#define REQUIRE_CODE(expr, code_)                                 \
  do {                                                            \
    const auto& cpc_req_v_ = (expr);                              \
    INFO(::cpc_test::StatusOf(cpc_req_v_).ToString());            \
    REQUIRE(::cpc_test::StatusOf(cpc_req_v_).code() == (code_));  \
  } while (0)

#endif  // CPC_TESTS_TEST_UTIL_H_
