/* libcpc C ABI: for C VMMs (QEMU, kvmtool). Compiles as C89/C99 and C++.
 *
 * Conventions: every function that can fail returns a cpc_status_t (0 = OK;
 * the values are cpc::Code's, append-only). The message of the last failure on
 * the calling thread is cpc_last_error(). Structs passed in or out start with
 * `struct_size` (set it to sizeof) so fields can be added without an ABI
 * break. Strings returned are owned by libcpc and static unless stated. No C++
 * exception crosses this boundary. All functions are thread-safe. */
#ifndef CPC_CPC_H_
#define CPC_CPC_H_

#include <stddef.h>
#include <stdint.h>

#include <cpc/version.h>

#if defined(__GNUC__) && !defined(CPC_STATIC)
#define CPC_C_EXPORT __attribute__((visibility("default")))
#else
#define CPC_C_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t cpc_status_t;

#define CPC_OK 0
#define CPC_E_INVALID_ARGUMENT 1
#define CPC_E_NOT_FOUND 2
#define CPC_E_FAILED_PRECONDITION 4
#define CPC_E_PERMISSION_DENIED 5
#define CPC_E_UNIMPLEMENTED 7
#define CPC_E_INTERNAL 8
#define CPC_E_IO 9
#define CPC_E_ABORTED 11
#define CPC_E_BACKEND_UNKNOWN 30
#define CPC_E_BACKEND_UNAVAILABLE 31
#define CPC_E_BACKEND_MISCONFIGURED 32

/* Stable lower-case name of a status ("ok", "token_forged", ...). Never NULL.
 */
CPC_C_EXPORT const char* cpc_status_str(cpc_status_t status);
/* The message of the last failed cpc_* call on this thread ("" if none).
 * Valid until the next cpc_* call on this thread. */
CPC_C_EXPORT const char* cpc_last_error(void);

/* CPC_API_VERSION of the library actually loaded, and its version string. */
CPC_C_EXPORT uint32_t cpc_api_version(void);
CPC_C_EXPORT const char* cpc_version_string(void);

/* Backends compiled into this libcpc. */
typedef struct cpc_backend_info_s {
  uint32_t struct_size; /* in: sizeof(cpc_backend_info_t) */
  char name[32];
  char description[128];
  uint8_t available; /* this machine can run it */
} cpc_backend_info_t;

CPC_C_EXPORT size_t cpc_backend_count(void);
/* CPC_E_NOT_FOUND past the end; CPC_E_INVALID_ARGUMENT for a NULL or short
 * struct. */
CPC_C_EXPORT cpc_status_t cpc_backend_get_info(size_t index,
                                               cpc_backend_info_t* out);

/* Calls `fn` once per probe fact of backend `name`. */
typedef void (*cpc_probe_fn)(void* user, const char* fact, uint8_t pass,
                             const char* info);
CPC_C_EXPORT cpc_status_t cpc_backend_probe(const char* name, cpc_probe_fn fn,
                                            void* user);

/* Log levels: 0 trace, 1 debug, 2 info, 3 warn, 4 error, 5 off. `fn` NULL
 * restores the default stderr output. `fn` may be called from any thread. */
typedef void (*cpc_log_fn)(void* user, int32_t level, const char* message);
CPC_C_EXPORT void cpc_set_log_fn(int32_t min_level, cpc_log_fn fn, void* user);

#ifdef __cplusplus
}
#endif

#endif /* CPC_CPC_H_ */
