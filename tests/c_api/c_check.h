/* The C API tests' checks (plain C): each prints the failed condition with
 * libcpc's last error and counts; the test prints "N passed, N failed". */
#ifndef CPC_TESTS_C_API_C_CHECK_H_
#define CPC_TESTS_C_API_C_CHECK_H_

#include <stdio.h>
#include <string.h>

#include <cpc/cpc.h>

static int passed, failed;
#define CHECK(cond)                                                           \
  do {                                                                        \
    if (cond) {                                                               \
      ++passed;                                                               \
    } else {                                                                  \
      ++failed;                                                               \
      fprintf(stderr, "%s:%d: CHECK(%s) failed (last error: %s)\n", __FILE__, \
              __LINE__, #cond, cpc_last_error());                             \
    }                                                                         \
  } while (0)
/* Ends the calling test function (returning 0) when `cond` fails. */
#define REQUIRE(cond)           \
  do {                          \
    int require_ok_ = !!(cond); \
    CHECK(require_ok_&& #cond); \
    if (!require_ok_) return 0; \
  } while (0)
/* A refusal: non-zero status `code` and a non-empty message. */
#define CHECK_FAILS(expr, code)                                \
  do {                                                         \
    cpc_status_t check_s_ = (expr);                            \
    CHECK(check_s_ == (code));                                 \
    CHECK(strlen(cpc_last_error()) > 0);                       \
    if (check_s_ != (code))                                    \
      fprintf(stderr, "  got %s\n", cpc_status_str(check_s_)); \
  } while (0)

#endif /* CPC_TESTS_C_API_C_CHECK_H_ */
