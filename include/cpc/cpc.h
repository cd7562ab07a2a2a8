/* libcpc C ABI: for C VMMs (QEMU, kvmtool). Compiles as C89/C99 and C++.
 *
 * Conventions: every function that can fail returns a cpc_status_t (0 = OK;
 * the values are cpc::Code's, append-only). The message of the last failure on
 * the calling thread is cpc_last_error(). Structs passed in or out start with
 * `struct_size` (set it to sizeof) so fields can be added without an ABI
 * break; a size smaller than the library's is CPC_E_INVALID_ARGUMENT. In an
 * array of such structs every element's struct_size must be the same. A NULL
 * pointer where one is not allowed is CPC_E_INVALID_ARGUMENT. Outputs are
 * written only on success. Strings returned are owned by libcpc and static
 * unless stated; strings and arrays passed in are copied during the call. No
 * C++ exception crosses this boundary (out of memory is
 * CPC_E_RESOURCE_EXHAUSTED). All functions are thread-safe, except that
 * cpc_backend_close must not race with other calls on the same backend.
 * Callbacks must return normally (no longjmp, no exception). */
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
/* The other cpc::Code values (cpc/status.h says what each means). */
#define CPC_E_ALREADY_EXISTS 3
#define CPC_E_RESOURCE_EXHAUSTED 6
#define CPC_E_CANCELLED 10
#define CPC_E_TIMEOUT 12
#define CPC_E_DATA_LOSS 13
#define CPC_E_UNAVAILABLE 14
#define CPC_E_ILLEGAL_TRANSITION 20
#define CPC_E_BUDGET_EXCEEDED 21
#define CPC_E_PLATFORM_ERROR 33
#define CPC_E_TOKEN_MALFORMED 40
#define CPC_E_TOKEN_FORGED 41
#define CPC_E_TOKEN_REPLAYED 42
#define CPC_E_TOKEN_REUSED 43
#define CPC_E_TOKEN_OVER_BUDGET 44
#define CPC_E_TOKEN_WRONG_CVM 45
#define CPC_E_TOKEN_MISMATCH 46
#define CPC_E_NOT_APPROVED 47
#define CPC_E_AUTH_FAILED 50
#define CPC_E_RECORD_REPLAYED 51
#define CPC_E_RECORD_OUT_OF_ORDER 52
#define CPC_E_RECORD_TRUNCATED 53
#define CPC_E_RECORD_MALFORMED 54
#define CPC_E_DUPLICATE_PAGE 55
#define CPC_E_GPA_MISMATCH 56
#define CPC_E_EPOCH_MISMATCH 57
#define CPC_E_STALE_EPOCH 58
#define CPC_E_INCOMPLETE 59
#define CPC_E_REPORT_BAD_SIGNATURE 60
#define CPC_E_REPORT_BAD_CHAIN 61
#define CPC_E_MEASUREMENT_MISMATCH 62
#define CPC_E_REPORT_DATA_MISMATCH 63

/* Stable lower-case name of a status ("ok", "token_forged", ...). Never NULL.
 */
CPC_C_EXPORT const char* cpc_status_str(cpc_status_t status);
/* The message of the last failed cpc_* call on this thread ("" if none).
 * Valid until the next cpc_* call on this thread. */
CPC_C_EXPORT const char* cpc_last_error(void);
/* The backend-specific detail of that failure (a firmware status code, an
 * errno), 0 if none or if the last call succeeded. */
CPC_C_EXPORT int64_t cpc_last_error_subcode(void);

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

/* ------------------------------------------------ backends and their CVMs
 *
 * A backend (cpc_backend_t) is one VMM's connection to a platform: it owns
 * every CVM launched, restored or migrated in through it, and closing it
 * destroys them. A CVM is named by a cpc_cvm_t of its backend (never 0).
 * Durations are in milliseconds (_ms) in options and nanoseconds (_ns) in
 * statistics. In every options struct, a zero field means the C++ API's
 * default (given in its comment), so a zeroed struct with struct_size set
 * behaves like the C++ defaults; passing NULL for the whole options struct
 * is the same. */

/* A key/value option. Fixed layout (no struct_size): it never grows. */
typedef struct cpc_option_s {
  const char* key;
  const char* value;
} cpc_option_t;

typedef struct cpc_backend_s cpc_backend_t;
typedef uint64_t cpc_cvm_t;

/* Opens backend `name` (NULL or "": $CPC_BACKEND, else the first available
 * one) with `options` (the emulated backends take "image" and "chip_seed",
 * the emulated chip). CPC_E_BACKEND_UNKNOWN, CPC_E_BACKEND_UNAVAILABLE,
 * CPC_E_BACKEND_MISCONFIGURED as the C++ BackendRegistry::Create. `*out` is
 * the caller's until cpc_backend_close. */
CPC_C_EXPORT cpc_status_t cpc_backend_open(const char* name,
                                           const cpc_option_t* options,
                                           size_t option_count,
                                           cpc_backend_t** out);
/* Destroys every CVM of `backend` still alive and frees it. NULL is a no-op.
 * No other call on `backend` may run or follow. */
CPC_C_EXPORT void cpc_backend_close(cpc_backend_t* backend);
/* The registry name ("sev-snp"); "" for NULL. Valid until close. */
CPC_C_EXPORT const char* cpc_backend_name(const cpc_backend_t* backend);

#define CPC_ISOLATION_PLAIN 0  /* a plain CPC: trusts the guest OS */
#define CPC_ISOLATION_SECURE 1 /* a Secure CPC: isolated from the guest OS */

typedef struct cpc_hvcpu_config_s {
  uint32_t struct_size; /* sizeof(cpc_hvcpu_config_t) */
  uint32_t index;
  uint32_t isolation; /* CPC_ISOLATION_* */
} cpc_hvcpu_config_t;

/* One module the tenant policy allows (cpc::ModulePolicy). */
typedef struct cpc_module_policy_s {
  uint32_t struct_size; /* sizeof(cpc_module_policy_t) */
  uint32_t isolation;   /* CPC_ISOLATION_* */
  const char* module;   /* "snapshot", "migrate", "audit", ... */
  const char* const* procedures;
  size_t procedure_count;
  uint64_t per_call_bytes;   /* most one token may grant; 0 = no limit */
  uint64_t per_call_time_ms; /* 0 = no limit */
  uint64_t max_calls;        /* over the CVM's life; 0 = no limit */
  uint64_t total_bytes;      /* over the CVM's life; 0 = no limit */
} cpc_module_policy_t;

/* cpc::LaunchConfig. The policy is measured: cpc_snapshot_take needs the
 * "snapshot" module with begin, extract, finish, and a restore insert_begin,
 * insert, insert_finish; a migration needs "migrate" with hello, accept,
 * send, resume, recv, commit, abort, ack, rejoin. */
typedef struct cpc_launch_config_s {
  uint32_t struct_size; /* sizeof(cpc_launch_config_t) */
  uint32_t gvcpus;      /* guest vCPUs; 0 = 1 */
  uint64_t memory_bytes;
  const char* image; /* CVM image path; NULL or "" = the backend's */
  /* hvCPUs: `hvcpus` NULL means indices 0..hvcpu_count-1, plain. */
  const cpc_hvcpu_config_t* hvcpus;
  uint32_t hvcpu_count;
  /* The tenant policy: modules, or a serialized cpc::TenantPolicy in
   * `policy`/`policy_size`; not both. */
  const cpc_module_policy_t* policy_modules;
  size_t policy_module_count;
  const uint8_t* policy;
  size_t policy_size;
  /* Backend/workload options, e.g. "workload" (idle | dirty | cpu),
   * "dirty_mib_s", "wss_mib", "shared_mib". Keys are unique. */
  const cpc_option_t* options;
  size_t option_count;
} cpc_launch_config_t;

/* Launches a CVM. The backend remembers `config` with the handle: snapshots
 * and migrations of the CVM use it unless their options give another. */
CPC_C_EXPORT cpc_status_t cpc_cvm_launch(cpc_backend_t* backend,
                                         const cpc_launch_config_t* config,
                                         cpc_cvm_t* out);
/* Stops the CVM and frees it. CPC_E_NOT_FOUND for an unknown handle. */
CPC_C_EXPORT cpc_status_t cpc_cvm_destroy(cpc_backend_t* backend,
                                          cpc_cvm_t cvm);
/* Stop / restart scheduling the guest OS's vCPUs. A migrated-out source
 * refuses to resume (CPC_E_FAILED_PRECONDITION). */
CPC_C_EXPORT cpc_status_t cpc_cvm_pause(cpc_backend_t* backend, cpc_cvm_t cvm);
CPC_C_EXPORT cpc_status_t cpc_cvm_resume(cpc_backend_t* backend, cpc_cvm_t cvm);
/* Throttles the guest's vCPUs to (1 - fraction) of the time, fraction in
 * [0, 0.99]; 0 removes the throttle. */
CPC_C_EXPORT cpc_status_t cpc_cvm_throttle(cpc_backend_t* backend,
                                           cpc_cvm_t cvm, double fraction);
/* The GPAs written since the last call with `rearm` (the first call starts
 * tracking and returns every page), sorted: stores the first `capacity` in
 * `gpas` (NULL if 0) and the total in `*count`. With `rearm` the GPAs past
 * `capacity` are gone. */
CPC_C_EXPORT cpc_status_t cpc_cvm_read_dirty_log(cpc_backend_t* backend,
                                                 cpc_cvm_t cvm, uint8_t rearm,
                                                 uint64_t* gpas,
                                                 size_t capacity,
                                                 size_t* count);

/* The confidential abort policy of each hvCPU call (cpc::AbortPolicy).
 * Fixed layout, part of the options structs that embed it. */
typedef struct cpc_abort_policy_s {
  uint64_t base_time_ms;               /* 0 = 1000 */
  uint64_t window_ms;                  /* 0 = 1000 */
  double min_rate_bytes_per_s;         /* 0 = no time limit */
  double throughput_floor_bytes_per_s; /* 0 = off */
} cpc_abort_policy_t;

/* Called with the fresh CVM of a restore or incoming migration before it is
 * paused (its guest agent can still answer). May run on another thread. */
typedef void (*cpc_cvm_fn)(void* user, cpc_cvm_t cvm);

/* ------------------------------------------------------------- snapshots */

/* cpc::SnapshotStats. Progress callbacks get the library's struct (read
 * struct_size before a field appended later). */
typedef struct cpc_snapshot_stats_s {
  uint32_t struct_size; /* sizeof(cpc_snapshot_stats_t) */
  uint32_t vcpus;       /* gvCPU states */
  uint64_t pages;       /* guest pages in the snapshot */
  uint32_t streams;     /* hvCPUs used, one record stream each */
  uint32_t reserved;
  uint64_t guest_bytes; /* processed so far */
  uint64_t total_guest_bytes;
  uint64_t file_bytes;     /* written to / read from the file */
  uint64_t elapsed_ns;     /* whole operation */
  uint64_t paused_ns;      /* snapshot: time the guest was paused */
  uint64_t copied_pages;   /* background: written by the guest before saved */
  uint64_t launch_ns;      /* restore: launching the fresh CVM */
  double rate_bytes_per_s; /* guest bytes per second */
} cpc_snapshot_stats_t;

/* Called on the calling thread of cpc_snapshot_take / _restore. */
typedef void (*cpc_snapshot_progress_fn)(void* user,
                                         const cpc_snapshot_stats_t* stats);
/* Called with the guest paused right before the snapshot's instant; a
 * non-zero status ends the snapshot with it. */
typedef cpc_status_t (*cpc_at_pause_fn)(void* user);

typedef struct cpc_snapshot_options_s {
  uint32_t struct_size; /* sizeof(cpc_snapshot_options_t) */
  /* Streams: `hvcpus` NULL means 0..hvcpu_count-1; 0 hvCPUs = hvCPU 0. */
  uint32_t hvcpu_count;
  const uint32_t* hvcpus;
  uint64_t slice_ms;   /* hvCPU slice; 0 = 50 */
  uint64_t serial;     /* recorded in the manifest; 0 = wall-clock ns */
  uint8_t keep_paused; /* leave the guest paused afterwards (not background) */
  uint8_t background;  /* the guest runs on during the copy (copy-on-write) */
  cpc_abort_policy_t abort;
  /* Stored in the file for the restore; NULL = the CVM's own. */
  const cpc_launch_config_t* launch;
  cpc_at_pause_fn at_pause; /* optional */
  void* at_pause_user;
} cpc_snapshot_options_t;

/* Takes a sealed snapshot of `cvm` into the file `path` (cpc::TakeSnapshot).
 * It is written as `path`.partial and renamed at the end: on error no file
 * is left. The guest runs on afterwards unless keep_paused (on error too).
 * `options`, `progress` and `stats` may be NULL. */
CPC_C_EXPORT cpc_status_t cpc_snapshot_take(
    cpc_backend_t* backend, cpc_cvm_t cvm, const char* path,
    const cpc_snapshot_options_t* options, cpc_snapshot_progress_fn progress,
    void* user, cpc_snapshot_stats_t* stats);

/* The plaintext header of a snapshot file (authenticated by the restore). */
typedef struct cpc_snapshot_info_s {
  uint32_t struct_size; /* sizeof(cpc_snapshot_info_t) */
  uint32_t version;
  uint64_t serial;
  uint8_t measurement[32]; /* of the CVM it was taken from */
  uint64_t pages;
  uint32_t vcpus;
  uint32_t streams;
  /* The stored launch configuration. */
  uint64_t memory_bytes;
  uint32_t gvcpus;
  uint32_t hvcpu_count;
} cpc_snapshot_info_t;

/* CPC_E_IO (missing, unreadable), CPC_E_RECORD_MALFORMED / CPC_E_DATA_LOSS
 * (not a snapshot, truncated). */
CPC_C_EXPORT cpc_status_t cpc_snapshot_read_info(const char* path,
                                                 cpc_snapshot_info_t* out);

typedef struct cpc_restore_options_s {
  uint32_t struct_size; /* sizeof(cpc_restore_options_t) */
  uint8_t keep_paused;  /* leave the restored guest paused */
  uint64_t slice_ms;    /* 0 = 50 */
  cpc_abort_policy_t abort;
  /* The CVM to launch; NULL = the configuration stored in the file. */
  const cpc_launch_config_t* launch;
  /* Replaces the image of that configuration (NULL = keep), and sets these
   * launch options in it. */
  const char* image;
  const cpc_option_t* launch_options;
  size_t launch_option_count;
  cpc_cvm_fn before_pause; /* optional */
  void* before_pause_user;
} cpc_restore_options_t;

/* Launches a fresh CVM and restores the snapshot `path` into it
 * (cpc::RestoreSnapshot); `*cvm` is the restored CVM, running unless
 * keep_paused. On any error no CVM is left. `options`, `progress`, `stats`
 * may be NULL; `cvm` may not. */
CPC_C_EXPORT cpc_status_t cpc_snapshot_restore(
    cpc_backend_t* backend, const char* path,
    const cpc_restore_options_t* options, cpc_snapshot_progress_fn progress,
    void* user, cpc_cvm_t* cvm, cpc_snapshot_stats_t* stats);

/* -------------------------------------------------------- live migration */

#define CPC_MIGRATION_SETUP 0      /* connecting, key exchange */
#define CPC_MIGRATION_ACTIVE 1     /* precopy rounds */
#define CPC_MIGRATION_SWITCHOVER 2 /* guest paused, final round */
#define CPC_MIGRATION_COMPLETED 3
#define CPC_MIGRATION_FAILED 4

/* cpc::MigrationStats: what QEMU's query-migrate reports, both sides. */
typedef struct cpc_migration_stats_s {
  uint32_t struct_size; /* sizeof(cpc_migration_stats_t) */
  int32_t state;        /* CPC_MIGRATION_* */
  uint32_t streams;
  uint32_t rounds;            /* epochs closed */
  uint64_t total_bytes;       /* guest memory migrated */
  uint64_t remaining_bytes;   /* dirty bytes not yet sent (estimate) */
  uint64_t transferred_bytes; /* on the wire, all streams */
  uint64_t pages_sent;        /* page versions sent, all rounds */
  double rate_bytes_per_s;    /* wire rate, last round */
  double dirty_pages_per_s;   /* guest dirty rate, last round */
  double throttle;            /* fraction of time the gvCPUs are held */
  uint64_t setup_time_ns;     /* until the first page moved */
  uint64_t elapsed_ns;
  uint64_t expected_downtime_ns; /* at the switch-over decision */
  uint64_t downtime_ns;          /* guest paused on source -> running on dst */
  uint32_t reconnects;
  uint32_t reserved;
} cpc_migration_stats_t;

/* "setup", "active", "switchover", "completed", "failed"; never NULL. */
CPC_C_EXPORT const char* cpc_migration_state_str(int32_t state);

/* Called on an internal thread, serialised. */
typedef void (*cpc_migration_progress_fn)(void* user,
                                          const cpc_migration_stats_t* stats);

typedef struct cpc_migrate_options_s {
  uint32_t struct_size; /* sizeof(cpc_migrate_options_t) */
  /* Streams (one TCP connection each): `hvcpus` NULL means
   * 0..hvcpu_count-1; 0 hvCPUs = hvCPU 0. */
  uint32_t hvcpu_count;
  const uint32_t* hvcpus;
  const char* destination;    /* "host:port"; NULL = "127.0.0.1:4444" */
  uint64_t downtime_limit_ms; /* 0 = 50 */
  uint64_t deadline_ms;       /* give up and resume after; 0 = never */
  uint32_t max_rounds;        /* then switch over anyway; 0 = 64 */
  uint8_t no_auto_converge;   /* do not throttle a guest that dirties fast */
  uint8_t no_reconnect;       /* a lost connection ends the migration */
  double max_throttle;        /* 0 = 0.99 */
  uint64_t slice_ms;          /* 0 = 50 */
  cpc_abort_policy_t abort;
  /* For the destination's CVM; NULL = the CVM's own. */
  const cpc_launch_config_t* launch;
  uint64_t verdict_timeout_ms;   /* wait for the destination's; 0 = 30000 */
  uint32_t ring_buffers;         /* per stream; 0 = 4 */
  uint32_t max_reconnects;       /* 0 = 3 */
  uint64_t ring_buffer_bytes;    /* 0 = 1 MiB */
  uint64_t reconnect_timeout_ms; /* 0 = 10000 */
} cpc_migrate_options_t;

/* Migrates `cvm` live to the cpc_migrate_in listening at
 * options->destination (cpc::MigrateOut). On success the source is paused
 * and can never run again: destroy it. On error it runs on, except
 * CPC_E_UNAVAILABLE (outcome unknown: it stays paused). `options`,
 * `progress`, `stats` may be NULL. */
CPC_C_EXPORT cpc_status_t cpc_migrate_out(cpc_backend_t* backend, cpc_cvm_t cvm,
                                          const cpc_migrate_options_t* options,
                                          cpc_migration_progress_fn progress,
                                          void* user,
                                          cpc_migration_stats_t* stats);

/* Called once listening, with the bound "host:port" (port 0 resolved),
 * possibly on another thread. */
typedef void (*cpc_listening_fn)(void* user, const char* address);

typedef struct cpc_incoming_options_s {
  uint32_t struct_size;    /* sizeof(cpc_incoming_options_t) */
  uint8_t keep_paused;     /* leave the guest paused after the commit */
  uint8_t no_reconnect;    /* a lost connection ends the migration */
  uint32_t max_reconnects; /* 0 = 3 */
  const char* listen; /* "host:port", port 0 = any; NULL = "127.0.0.1:4444" */
  cpc_listening_fn on_listening; /* optional */
  void* on_listening_user;
  /* Replaces the image of the source's launch configuration (NULL = keep;
   * the same build), and sets these launch options in it. */
  const char* image;
  const cpc_option_t* launch_options;
  size_t launch_option_count;
  uint64_t accept_timeout_ms; /* 0 = 60000 */
  uint64_t slice_ms;          /* 0 = 50 */
  cpc_abort_policy_t abort;
  cpc_cvm_fn before_pause; /* optional */
  void* before_pause_user;
  uint64_t reconnect_timeout_ms; /* 0 = 10000 */
} cpc_incoming_options_t;

/* Accepts one incoming migration (cpc::MigrateIn): blocks until it
 * completes or fails; run it on its own thread when the same process also
 * migrates out. `*cvm` is the migrated CVM (running unless keep_paused); on
 * error no CVM is left. `options`, `progress`, `stats` may be NULL; `cvm`
 * may not. */
CPC_C_EXPORT cpc_status_t cpc_migrate_in(cpc_backend_t* backend,
                                         const cpc_incoming_options_t* options,
                                         cpc_migration_progress_fn progress,
                                         void* user, cpc_cvm_t* cvm,
                                         cpc_migration_stats_t* stats);

#ifdef __cplusplus
}
#endif

#endif /* CPC_CPC_H_ */
