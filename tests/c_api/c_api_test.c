/* Compiled as C with -Wstrict-prototypes against the shared libcpc: catches
 * C++-isms in cpc.h and checks the exported ABI. Prints "N passed, N failed".
 */
#include <stdio.h>
#include <string.h>

#include <cpc/cpc.h>

#include "c_check.h"

static int probe_calls;
static void on_fact(void* user, const char* fact, uint8_t pass,
                    const char* info) {
  (void)user;
  (void)pass;
  (void)info;
  if (fact != NULL) ++probe_calls;
}

int main(void) {
  cpc_backend_info_t info;
  size_t i, n;
  CHECK(cpc_api_version() == CPC_API_VERSION);
  CHECK(strcmp(cpc_version_string(), CPC_VERSION_STRING) == 0);
  CHECK(strcmp(cpc_status_str(CPC_OK), "ok") == 0);
  CHECK(strcmp(cpc_status_str(CPC_E_BACKEND_UNKNOWN), "backend_unknown") == 0);
  CHECK(strcmp(cpc_status_str(41), "token_forged") == 0);

  CHECK(cpc_backend_get_info(0, NULL) == CPC_E_INVALID_ARGUMENT);
  CHECK(strlen(cpc_last_error()) > 0);
  memset(&info, 0, sizeof info);
  info.struct_size = 4; /* too short */
  CHECK(cpc_backend_get_info(0, &info) == CPC_E_INVALID_ARGUMENT);
  n = cpc_backend_count();
  for (i = 0; i < n; ++i) {
    info.struct_size = sizeof info;
    CHECK(cpc_backend_get_info(i, &info) == CPC_OK);
    CHECK(strlen(info.name) > 0);
    CHECK(cpc_backend_probe(info.name, on_fact, NULL) == CPC_OK);
  }
  info.struct_size = sizeof info;
  CHECK(cpc_backend_get_info(n, &info) == CPC_E_NOT_FOUND);
  CHECK(cpc_backend_probe("no-such-backend", on_fact, NULL) ==
        CPC_E_BACKEND_UNKNOWN);
  CHECK(strstr(cpc_last_error(), "no-such-backend") != NULL);
  CHECK(cpc_backend_probe(NULL, on_fact, NULL) == CPC_E_INVALID_ARGUMENT);
  CHECK(probe_calls >= 0);
  cpc_set_log_fn(3, NULL, NULL);

  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
