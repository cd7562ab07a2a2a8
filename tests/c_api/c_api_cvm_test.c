/* The C ABI's CVM operations, compiled as C99 against the shared libcpc: a
 * small emulated SEV-SNP CVM launched, paused and resumed, snapshotted to a
 * file (stop-and-copy and background) and restored, migrated live to a
 * second backend in this process (cpc_migrate_in on a pthread), and the
 * error paths (NULL arguments, short structs, unknown names, missing and
 * corrupt snapshot files). Prints "N passed, N failed". */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cpc/cpc.h>

#include "c_check.h"

#define MIB (1024ull * 1024ull)
#define GUEST_MEM (64 * MIB)
/* The guest OS's pages: the top 2 MiB are the emulated firmware's. */
#define GUEST_PAGES ((GUEST_MEM - 2 * MIB) / 4096)
#define SENTINEL_CVM ((cpc_cvm_t)0xdeadbeefu)

static void sleep_ms(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0) {
  }
}

/* ------------------------------------------------------------ fixtures */

static const char* const kSnapshotProcs[] = {
    "begin", "extract", "finish", "insert_begin", "insert", "insert_finish"};
static const char* const kMigrateProcs[] = {"hello",  "accept", "send",
                                            "resume", "recv",   "commit",
                                            "abort",  "ack",    "rejoin"};
static cpc_module_policy_t g_modules[2];
static cpc_hvcpu_config_t g_hvcpus[2];
static cpc_option_t g_launch_options[4];
static cpc_launch_config_t g_config;

static void make_config(void) {
  memset(g_modules, 0, sizeof g_modules);
  g_modules[0].struct_size = sizeof g_modules[0];
  g_modules[0].module = "snapshot";
  g_modules[0].procedures = kSnapshotProcs;
  g_modules[0].procedure_count = sizeof kSnapshotProcs / sizeof *kSnapshotProcs;
  g_modules[0].per_call_bytes = 1ull << 30;
  g_modules[1].struct_size = sizeof g_modules[1];
  g_modules[1].module = "migrate";
  g_modules[1].procedures = kMigrateProcs;
  g_modules[1].procedure_count = sizeof kMigrateProcs / sizeof *kMigrateProcs;
  g_launch_options[0].key = "workload";
  g_launch_options[0].value = "dirty";
  g_launch_options[1].key = "dirty_mib_s";
  g_launch_options[1].value = "64";
  g_launch_options[2].key = "wss_mib";
  g_launch_options[2].value = "8";
  g_launch_options[3].key = "shared_mib"; /* rings of 2 streams, both sides */
  g_launch_options[3].value = "16";
  memset(g_hvcpus, 0, sizeof g_hvcpus);
  g_hvcpus[0].struct_size = sizeof g_hvcpus[0];
  g_hvcpus[0].index = 0;
  g_hvcpus[1].struct_size = sizeof g_hvcpus[1];
  g_hvcpus[1].index = 1;
  memset(&g_config, 0, sizeof g_config);
  g_config.struct_size = sizeof g_config;
  g_config.memory_bytes = GUEST_MEM;
  g_config.gvcpus = 2;
  g_config.hvcpus = g_hvcpus;
  g_config.hvcpu_count = 2;
  g_config.policy_modules = g_modules;
  g_config.policy_module_count = 2;
  g_config.options = g_launch_options;
  g_config.option_count = 4;
}

static cpc_backend_t* open_backend(const char* chip_seed) {
  cpc_option_t opt;
  cpc_backend_t* b = NULL;
  opt.key = "chip_seed";
  opt.value = chip_seed;
  if (cpc_backend_open("sev-snp", &opt, 1, &b) != CPC_OK) return NULL;
  return b;
}

/* Dirty pages since the previous call (rearms), or -1 on error. */
static long dirty_pages(cpc_backend_t* b, cpc_cvm_t cvm) {
  size_t n = 0;
  if (cpc_cvm_read_dirty_log(b, cvm, 1, NULL, 0, &n) != CPC_OK) return -1;
  return (long)n;
}

/* Whether the guest OS runs: its workload dirties pages within 50 ms. */
static int guest_runs(cpc_backend_t* b, cpc_cvm_t cvm) {
  if (dirty_pages(b, cvm) < 0) return 0;
  sleep_ms(50);
  return dirty_pages(b, cvm) > 0;
}

static int copy_file(const char* from, const char* to, long flip_at) {
  char buf[65536];
  size_t n;
  long off = 0;
  FILE* in = fopen(from, "rb");
  FILE* out = fopen(to, "wb");
  int ok = in != NULL && out != NULL;
  while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) {
    if (flip_at >= off && flip_at < off + (long)n) buf[flip_at - off] ^= 0x5a;
    off += (long)n;
    ok = fwrite(buf, 1, n, out) == n;
  }
  if (in != NULL) fclose(in);
  if (out != NULL && fclose(out) != 0) ok = 0;
  return ok;
}

static long file_size(const char* path) {
  long n;
  FILE* f = fopen(path, "rb");
  if (f == NULL) return -1;
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fclose(f);
  return n;
}

/* --------------------------------------------------------- error paths */

static int test_errors(void) {
  cpc_backend_t* b = (cpc_backend_t*)&passed; /* must stay untouched */
  cpc_backend_t* real;
  cpc_option_t opt;
  cpc_cvm_t cvm = SENTINEL_CVM;
  cpc_launch_config_t config;
  cpc_module_policy_t bad_module;
  cpc_snapshot_info_t info;
  cpc_snapshot_stats_t st;
  cpc_migration_stats_t mst;
  cpc_snapshot_options_t so;
  cpc_migrate_options_t mo;
  size_t n = 77;

  CHECK_FAILS(cpc_backend_open("no-such-backend", NULL, 0, &b),
              CPC_E_BACKEND_UNKNOWN);
  CHECK(strstr(cpc_last_error(), "no-such-backend") != NULL);
  CHECK(b == (cpc_backend_t*)&passed);
  CHECK_FAILS(cpc_backend_open("sev-snp", NULL, 0, NULL),
              CPC_E_INVALID_ARGUMENT);
  CHECK_FAILS(cpc_backend_open("sev-snp", NULL, 1, &b), CPC_E_INVALID_ARGUMENT);
  opt.key = NULL;
  opt.value = "1";
  CHECK_FAILS(cpc_backend_open("sev-snp", &opt, 1, &b), CPC_E_INVALID_ARGUMENT);
  opt.key = "no_such_option";
  CHECK_FAILS(cpc_backend_open("sev-snp", &opt, 1, &b),
              CPC_E_BACKEND_MISCONFIGURED);
  CHECK(b == (cpc_backend_t*)&passed);
  cpc_backend_close(NULL);
  CHECK(strcmp(cpc_backend_name(NULL), "") == 0);

  real = open_backend("7");
  REQUIRE(real != NULL);
  CHECK(strcmp(cpc_backend_name(real), "sev-snp") == 0);

  /* Launch: NULLs, short structs, inconsistent policies, bad values. */
  config = g_config;
  CHECK_FAILS(cpc_cvm_launch(NULL, &config, &cvm), CPC_E_INVALID_ARGUMENT);
  CHECK(strstr(cpc_last_error(), "backend") != NULL);
  CHECK_FAILS(cpc_cvm_launch(real, NULL, &cvm), CPC_E_INVALID_ARGUMENT);
  CHECK_FAILS(cpc_cvm_launch(real, &config, NULL), CPC_E_INVALID_ARGUMENT);
  config.struct_size = 8;
  CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
  CHECK(strstr(cpc_last_error(), "struct_size") != NULL);
  config = g_config;
  config.policy = (const uint8_t*)"x";
  config.policy_size = 1;
  CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
  config.policy_module_count = 0;
  CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
  config = g_config;
  bad_module = g_modules[0];
  bad_module.struct_size = 4;
  config.policy_modules = &bad_module;
  config.policy_module_count = 1;
  CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
  bad_module = g_modules[0];
  bad_module.module = NULL;
  CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
  bad_module = g_modules[0];
  bad_module.isolation = 9;
  CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
  config = g_config;
  {
    cpc_hvcpu_config_t hv[2];
    memcpy(hv, g_hvcpus, sizeof hv);
    config.hvcpus = hv;
    hv[1].struct_size = sizeof hv[1] + 4; /* elements of different sizes */
    CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
    hv[1].struct_size = sizeof hv[1];
    hv[1].isolation = 7;
    CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
    CHECK(strstr(cpc_last_error(), "isolation") != NULL);
  }
  config = g_config;
  config.options = NULL;
  CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
  config = g_config;
  config.memory_bytes = 3 * MIB; /* the backend's own check */
  CHECK_FAILS(cpc_cvm_launch(real, &config, &cvm), CPC_E_INVALID_ARGUMENT);
  CHECK(cvm == SENTINEL_CVM);

  /* Unknown CVMs. */
  CHECK_FAILS(cpc_cvm_destroy(real, 12345), CPC_E_NOT_FOUND);
  CHECK_FAILS(cpc_cvm_pause(real, 12345), CPC_E_NOT_FOUND);
  CHECK_FAILS(cpc_cvm_read_dirty_log(real, 12345, 1, NULL, 0, &n),
              CPC_E_NOT_FOUND);
  CHECK_FAILS(cpc_cvm_read_dirty_log(real, 12345, 1, NULL, 4, &n),
              CPC_E_INVALID_ARGUMENT);
  CHECK(n == 77);
  CHECK_FAILS(
      cpc_snapshot_take(real, 12345, "/nonexistent/x", NULL, NULL, NULL, NULL),
      CPC_E_NOT_FOUND);
  CHECK_FAILS(cpc_migrate_out(real, 12345, NULL, NULL, NULL, NULL),
              CPC_E_NOT_FOUND);

  /* Short structs and NULLs are refused before anything happens. */
  memset(&so, 0, sizeof so);
  so.struct_size = sizeof so - 1;
  CHECK_FAILS(cpc_snapshot_take(real, 1, "/tmp/x", &so, NULL, NULL, NULL),
              CPC_E_INVALID_ARGUMENT);
  memset(&st, 0, sizeof st);
  st.struct_size = 4;
  CHECK_FAILS(cpc_snapshot_take(real, 1, "/tmp/x", NULL, NULL, NULL, &st),
              CPC_E_INVALID_ARGUMENT);
  CHECK_FAILS(cpc_snapshot_take(real, 1, NULL, NULL, NULL, NULL, NULL),
              CPC_E_INVALID_ARGUMENT);
  CHECK_FAILS(
      cpc_snapshot_restore(real, "/tmp/x", NULL, NULL, NULL, NULL, NULL),
      CPC_E_INVALID_ARGUMENT);
  memset(&mo, 0, sizeof mo);
  mo.struct_size = 16;
  CHECK_FAILS(cpc_migrate_out(real, 1, &mo, NULL, NULL, NULL),
              CPC_E_INVALID_ARGUMENT);
  memset(&mst, 0, sizeof mst);
  mst.struct_size = sizeof mst / 2;
  CHECK_FAILS(cpc_migrate_in(real, NULL, NULL, NULL, &cvm, &mst),
              CPC_E_INVALID_ARGUMENT);
  CHECK_FAILS(cpc_migrate_in(real, NULL, NULL, NULL, NULL, NULL),
              CPC_E_INVALID_ARGUMENT);
  CHECK(cvm == SENTINEL_CVM);

  /* Snapshot files: missing, not a snapshot. */
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  info.pages = 4242;
  CHECK_FAILS(cpc_snapshot_read_info(NULL, &info), CPC_E_INVALID_ARGUMENT);
  CHECK_FAILS(cpc_snapshot_read_info("/tmp/x", NULL), CPC_E_INVALID_ARGUMENT);
  CHECK(cpc_snapshot_read_info("/nonexistent/cpc.snap", &info) != CPC_OK);
  CHECK(strlen(cpc_last_error()) > 0);
  CHECK(info.pages == 4242);
  CHECK(cpc_snapshot_restore(real, "/nonexistent/cpc.snap", NULL, NULL, NULL,
                             &cvm, NULL) != CPC_OK);
  CHECK(strlen(cpc_last_error()) > 0);
  CHECK(cvm == SENTINEL_CVM);
  info.struct_size = 4;
  CHECK_FAILS(cpc_snapshot_read_info("/tmp/x", &info), CPC_E_INVALID_ARGUMENT);

  CHECK(strcmp(cpc_migration_state_str(CPC_MIGRATION_COMPLETED), "completed") ==
        0);
  CHECK(strcmp(cpc_migration_state_str(99), "unknown_state") == 0);
  CHECK(strcmp(cpc_status_str(CPC_E_DATA_LOSS), "data_loss") == 0);
  CHECK(strcmp(cpc_status_str(CPC_E_MEASUREMENT_MISMATCH),
               "measurement_mismatch") == 0);
  CHECK(cpc_backend_open("sev-snp", NULL, 0, &b) == CPC_OK);
  CHECK(strlen(cpc_last_error()) == 0); /* success clears it */
  CHECK(cpc_last_error_subcode() == 0);
  cpc_backend_close(b);
  cpc_backend_close(real);
  return 1;
}

/* ---------------------------------------------- lifecycle and snapshots */

static int snapshot_progress_calls, restore_progress_calls, at_pause_calls,
    before_pause_calls;
static cpc_snapshot_stats_t last_snapshot_progress;
static cpc_cvm_t before_pause_cvm;

static void on_snapshot_progress(void* user, const cpc_snapshot_stats_t* st) {
  ++*(int*)user;
  last_snapshot_progress = *st;
}

static cpc_status_t on_at_pause(void* user) {
  ++at_pause_calls;
  return user == NULL ? CPC_OK : CPC_E_ABORTED;
}

static void on_before_pause(void* user, cpc_cvm_t cvm) {
  (void)user;
  ++before_pause_calls;
  before_pause_cvm = cvm;
}

static int test_lifecycle(cpc_backend_t* b, cpc_cvm_t cvm) {
  uint64_t gpas[8];
  size_t n = 0;
  CHECK(guest_runs(b, cvm));
  CHECK(cpc_cvm_read_dirty_log(b, cvm, 0, gpas, 8, &n) == CPC_OK);
  CHECK(cpc_cvm_pause(b, cvm) == CPC_OK);
  CHECK(dirty_pages(b, cvm) >= 0);
  sleep_ms(50);
  CHECK(dirty_pages(b, cvm) == 0); /* paused: nothing written */
  CHECK(cpc_cvm_resume(b, cvm) == CPC_OK);
  CHECK(guest_runs(b, cvm));
  CHECK(cpc_cvm_throttle(b, cvm, 0.5) == CPC_OK);
  CHECK(cpc_cvm_throttle(b, cvm, 0) == CPC_OK);
  CHECK_FAILS(cpc_cvm_throttle(b, cvm, 2.0), CPC_E_INVALID_ARGUMENT);
  return 1;
}

static int test_snapshot(cpc_backend_t* b, cpc_cvm_t cvm, const char* dir) {
  char path[512], corrupt[512], garbage[512], partial[600];
  cpc_snapshot_options_t so;
  cpc_restore_options_t ro;
  cpc_snapshot_stats_t st, rst;
  cpc_snapshot_info_t info;
  cpc_cvm_t restored = SENTINEL_CVM;
  FILE* f;
  long size;
  int i, nonzero = 0;

  snprintf(path, sizeof path, "%s/cvm.snap", dir);
  snprintf(corrupt, sizeof corrupt, "%s/corrupt.snap", dir);
  snprintf(garbage, sizeof garbage, "%s/garbage.snap", dir);
  snprintf(partial, sizeof partial, "%s.partial", path);

  /* Stop-and-copy over both hvCPUs; the guest stays paused after it. */
  memset(&so, 0, sizeof so);
  so.struct_size = sizeof so;
  so.hvcpu_count = 2;
  so.keep_paused = 1;
  so.serial = 42;
  so.at_pause = on_at_pause;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  REQUIRE(cpc_snapshot_take(b, cvm, path, &so, on_snapshot_progress,
                            &snapshot_progress_calls, &st) == CPC_OK);
  CHECK(st.struct_size == sizeof st);
  CHECK(st.pages == GUEST_PAGES);
  CHECK(st.vcpus == 2);
  CHECK(st.streams == 2);
  CHECK(st.guest_bytes == st.total_guest_bytes && st.guest_bytes > 0);
  CHECK(st.file_bytes > st.guest_bytes); /* sealed: tags and headers */
  CHECK(st.elapsed_ns > 0 && st.paused_ns > 0);
  CHECK((long)st.file_bytes <= (size = file_size(path)) && size > 0);
  CHECK(snapshot_progress_calls >= 1);
  CHECK(last_snapshot_progress.struct_size == sizeof(cpc_snapshot_stats_t));
  CHECK(at_pause_calls == 1);
  printf(
      "snapshot: %llu pages, %u streams, %llu file bytes, %.1f ms (paused "
      "%.1f ms), %d progress calls\n",
      (unsigned long long)st.pages, st.streams,
      (unsigned long long)st.file_bytes, st.elapsed_ns / 1e6,
      st.paused_ns / 1e6, snapshot_progress_calls);
  CHECK(!guest_runs(b, cvm)); /* keep_paused */
  CHECK(cpc_cvm_resume(b, cvm) == CPC_OK);
  CHECK(guest_runs(b, cvm));

  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  REQUIRE(cpc_snapshot_read_info(path, &info) == CPC_OK);
  CHECK(info.version > 0);
  CHECK(info.serial == 42);
  CHECK(info.pages == st.pages);
  CHECK(info.vcpus == 2);
  CHECK(info.streams == 2);
  CHECK(info.memory_bytes == GUEST_MEM);
  CHECK(info.gvcpus == 2);
  CHECK(info.hvcpu_count == 2);
  for (i = 0; i < 32; ++i) nonzero |= info.measurement[i];
  CHECK(nonzero != 0);

  /* An at_pause refusal ends the snapshot: no file, the guest runs on. */
  so.keep_paused = 0;
  so.at_pause_user = &at_pause_calls;
  st.pages = 4242;
  CHECK_FAILS(cpc_snapshot_take(b, cvm, corrupt, &so, NULL, NULL, &st),
              CPC_E_ABORTED);
  CHECK(strstr(cpc_last_error(), "at_pause") != NULL);
  CHECK(st.pages == 4242);
  CHECK(file_size(corrupt) < 0 && file_size(partial) < 0);
  CHECK(guest_runs(b, cvm));

  /* Background: the guest runs on during the copy. */
  memset(&so, 0, sizeof so);
  so.struct_size = sizeof so;
  so.background = 1;
  {
    char bg[512];
    snprintf(bg, sizeof bg, "%s/background.snap", dir);
    CHECK(cpc_snapshot_take(b, cvm, bg, &so, NULL, NULL, &st) == CPC_OK);
    CHECK(st.pages == GUEST_PAGES && st.streams == 1);
    CHECK(guest_runs(b, cvm));
    remove(bg);
  }

  /* Restore from the file's own launch configuration. */
  memset(&ro, 0, sizeof ro);
  ro.struct_size = sizeof ro;
  ro.before_pause = on_before_pause;
  memset(&rst, 0, sizeof rst);
  rst.struct_size = sizeof rst;
  REQUIRE(cpc_snapshot_restore(b, path, &ro, on_snapshot_progress,
                               &restore_progress_calls, &restored,
                               &rst) == CPC_OK);
  CHECK(restored != SENTINEL_CVM && restored != cvm && restored != 0);
  CHECK(before_pause_calls == 1 && before_pause_cvm == restored);
  CHECK(restore_progress_calls >= 1);
  printf("restore: %llu pages, %.1f ms (launch %.1f ms), %d progress calls\n",
         (unsigned long long)rst.pages, rst.elapsed_ns / 1e6,
         rst.launch_ns / 1e6, restore_progress_calls);
  CHECK(rst.pages == info.pages);
  CHECK(rst.vcpus == 2);
  CHECK(rst.streams == 2);
  CHECK(rst.guest_bytes == st.guest_bytes);
  CHECK(rst.file_bytes > 0);
  CHECK(rst.launch_ns > 0 && rst.elapsed_ns > rst.launch_ns);
  CHECK(guest_runs(b, restored)); /* resumed */
  /* The restored CVM's launch configuration was remembered: it can be
   * snapshotted without one. */
  CHECK(cpc_snapshot_take(b, restored, corrupt, NULL, NULL, NULL, NULL) ==
        CPC_OK);
  remove(corrupt);
  CHECK(cpc_cvm_destroy(b, restored) == CPC_OK);
  CHECK_FAILS(cpc_cvm_destroy(b, restored), CPC_E_NOT_FOUND);

  /* The image of the stored launch configuration can be replaced. */
  ro.image = "/nonexistent/cpc-cvm";
  restored = SENTINEL_CVM;
  CHECK_FAILS(cpc_snapshot_restore(b, path, &ro, NULL, NULL, &restored, &rst),
              CPC_E_INVALID_ARGUMENT);
  CHECK(strstr(cpc_last_error(), "/nonexistent/cpc-cvm") != NULL);
  CHECK(restored == SENTINEL_CVM);

  /* A corrupt snapshot (one byte flipped mid-file) and a file that is no
   * snapshot at all are refused, and no CVM is returned. */
  restored = SENTINEL_CVM;
  rst.pages = 4242;
  REQUIRE(copy_file(path, corrupt, size / 2));
  CHECK(cpc_snapshot_restore(b, corrupt, NULL, NULL, NULL, &restored, &rst) !=
        CPC_OK);
  CHECK(strlen(cpc_last_error()) > 0);
  CHECK(restored == SENTINEL_CVM && rst.pages == 4242);
  f = fopen(garbage, "wb");
  REQUIRE(f != NULL);
  fputs("this is not a cpc snapshot, just some text of a decent length\n", f);
  fclose(f);
  CHECK(cpc_snapshot_read_info(garbage, &info) != CPC_OK);
  CHECK(strlen(cpc_last_error()) > 0);
  CHECK(cpc_snapshot_restore(b, garbage, NULL, NULL, NULL, &restored, NULL) !=
        CPC_OK);
  CHECK(strlen(cpc_last_error()) > 0);
  CHECK(restored == SENTINEL_CVM);
  remove(corrupt);
  remove(garbage);
  remove(path);
  return 1;
}

/* ------------------------------------------------------ live migration */

struct incoming {
  cpc_backend_t* backend;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  char address[128];
  int listening;
  int done;
  int progress_calls;
  cpc_status_t status;
  char error[512];
  cpc_cvm_t cvm;
  cpc_migration_stats_t stats;
};

static void on_listening(void* user, const char* address) {
  struct incoming* in = (struct incoming*)user;
  pthread_mutex_lock(&in->mu);
  snprintf(in->address, sizeof in->address, "%s", address);
  in->listening = 1;
  pthread_cond_broadcast(&in->cv);
  pthread_mutex_unlock(&in->mu);
}

static void on_incoming_progress(void* user, const cpc_migration_stats_t* st) {
  struct incoming* in = (struct incoming*)user;
  (void)st;
  ++in->progress_calls; /* serialised by libcpc */
}

static void* incoming_main(void* arg) {
  struct incoming* in = (struct incoming*)arg;
  cpc_incoming_options_t io;
  cpc_cvm_t cvm = SENTINEL_CVM;
  cpc_migration_stats_t st;
  cpc_status_t s;
  memset(&io, 0, sizeof io);
  io.struct_size = sizeof io;
  io.listen = "127.0.0.1:0";
  io.on_listening = on_listening;
  io.on_listening_user = in;
  io.accept_timeout_ms = 20000;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  s = cpc_migrate_in(in->backend, &io, on_incoming_progress, in, &cvm, &st);
  pthread_mutex_lock(&in->mu);
  in->status = s;
  snprintf(in->error, sizeof in->error, "%s", cpc_last_error());
  in->cvm = cvm;
  in->stats = st;
  in->done = 1;
  pthread_cond_broadcast(&in->cv);
  pthread_mutex_unlock(&in->mu);
  return NULL;
}

static int out_progress_calls;
static int32_t out_last_state = -1;
static void on_out_progress(void* user, const cpc_migration_stats_t* st) {
  (void)user;
  ++out_progress_calls;
  out_last_state = st->state;
}

static int test_migration(cpc_backend_t* src, cpc_backend_t* dst, cpc_cvm_t cvm,
                          const char* dir) {
  struct incoming in;
  pthread_t thread;
  cpc_migrate_options_t mo;
  cpc_migration_stats_t st;
  int listening;

  /* Nobody listening: refused, the source runs on. */
  memset(&mo, 0, sizeof mo);
  mo.struct_size = sizeof mo;
  mo.destination = "127.0.0.1:1";
  mo.no_reconnect = 1;
  mo.hvcpu_count = 2;
  CHECK(cpc_migrate_out(src, cvm, &mo, NULL, NULL, NULL) != CPC_OK);
  CHECK(strlen(cpc_last_error()) > 0);
  CHECK(guest_runs(src, cvm));

  memset(&in, 0, sizeof in);
  in.backend = dst;
  in.cvm = SENTINEL_CVM;
  pthread_mutex_init(&in.mu, NULL);
  pthread_cond_init(&in.cv, NULL);
  REQUIRE(pthread_create(&thread, NULL, incoming_main, &in) == 0);
  pthread_mutex_lock(&in.mu);
  while (!in.listening && !in.done) pthread_cond_wait(&in.cv, &in.mu);
  listening = in.listening;
  pthread_mutex_unlock(&in.mu);
  if (!listening) {
    pthread_join(thread, NULL);
    fprintf(stderr, "cpc_migrate_in: %s\n", in.error);
    CHECK(listening);
    return 0;
  }
  CHECK(strncmp(in.address, "127.0.0.1:", 10) == 0);

  memset(&mo, 0, sizeof mo);
  mo.struct_size = sizeof mo;
  mo.destination = in.address;
  mo.hvcpu_count = 2;
  mo.verdict_timeout_ms = 5000;
  mo.deadline_ms = 30000;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK(cpc_migrate_out(src, cvm, &mo, on_out_progress, NULL, &st) == CPC_OK);
  pthread_join(thread, NULL);
  if (in.status != CPC_OK) fprintf(stderr, "cpc_migrate_in: %s\n", in.error);
  CHECK(in.status == CPC_OK);

  printf(
      "migration: %s, %u streams, %u rounds, %llu pages sent, %llu bytes "
      "transferred, setup %.1f ms, downtime %.2f ms, %d/%d progress calls "
      "(out/in)\n",
      cpc_migration_state_str(st.state), st.streams, st.rounds,
      (unsigned long long)st.pages_sent,
      (unsigned long long)st.transferred_bytes, st.setup_time_ns / 1e6,
      st.downtime_ns / 1e6, out_progress_calls, in.progress_calls);
  CHECK(st.state == CPC_MIGRATION_COMPLETED);
  CHECK(st.streams == 2);
  CHECK(st.rounds >= 2); /* the full pass, then at least the final round */
  CHECK(st.total_bytes > 0);
  CHECK(st.pages_sent >= GUEST_PAGES);
  CHECK(st.transferred_bytes > GUEST_PAGES * 4096);
  CHECK(st.downtime_ns > 0 && st.setup_time_ns > 0);
  CHECK(st.elapsed_ns >= st.setup_time_ns);
  CHECK(out_progress_calls >= 1);
  CHECK(out_last_state >= CPC_MIGRATION_SETUP &&
        out_last_state <= CPC_MIGRATION_COMPLETED);
  CHECK(in.progress_calls >= 1);
  CHECK(in.stats.struct_size == sizeof in.stats);
  CHECK(in.stats.state == CPC_MIGRATION_COMPLETED);
  CHECK(in.stats.streams == 2);
  CHECK(in.stats.transferred_bytes > 0);

  /* Never both run: the source refuses to resume, the destination runs. */
  CHECK_FAILS(cpc_cvm_resume(src, cvm), CPC_E_FAILED_PRECONDITION);
  CHECK(!guest_runs(src, cvm));
  if (in.status == CPC_OK) {
    CHECK(in.cvm != SENTINEL_CVM);
    CHECK(guest_runs(dst, in.cvm));
    /* The destination backend remembered the launch configuration the
     * source sent: the migrated CVM can be snapshotted without one. */
    {
      char path[512];
      cpc_snapshot_info_t info;
      snprintf(path, sizeof path, "%s/migrated.snap", dir);
      memset(&info, 0, sizeof info);
      info.struct_size = sizeof info;
      CHECK(cpc_snapshot_take(dst, in.cvm, path, NULL, NULL, NULL, NULL) ==
            CPC_OK);
      CHECK(cpc_snapshot_read_info(path, &info) == CPC_OK);
      CHECK(info.memory_bytes == GUEST_MEM && info.hvcpu_count == 2);
      CHECK(info.pages == GUEST_PAGES);
      remove(path);
    }
    CHECK(cpc_cvm_destroy(dst, in.cvm) == CPC_OK);
  }
  pthread_mutex_destroy(&in.mu);
  pthread_cond_destroy(&in.cv);
  return 1;
}

/* Removes what a failed test may have left in `dir`, and `dir`. */
static void remove_dir(const char* dir) {
  static const char* const kFiles[] = {"cvm.snap",
                                       "corrupt.snap",
                                       "garbage.snap",
                                       "migrated.snap",
                                       "background.snap",
                                       "cvm.snap.partial",
                                       "corrupt.snap.partial",
                                       "migrated.snap.partial",
                                       "background.snap.partial"};
  char path[512];
  size_t i;
  for (i = 0; i < sizeof kFiles / sizeof *kFiles; ++i) {
    snprintf(path, sizeof path, "%s/%s", dir, kFiles[i]);
    remove(path);
  }
  CHECK(rmdir(dir) == 0);
}

int main(void) {
  char dir[] = "/tmp/cpc-c-api-XXXXXX";
  cpc_backend_t* src;
  cpc_backend_t* dst;
  cpc_cvm_t cvm = SENTINEL_CVM;

  cpc_set_log_fn(4, NULL, NULL); /* errors only */
  make_config();
  test_errors();

  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  src = open_backend("1");
  dst = open_backend("2");
  CHECK(src != NULL && dst != NULL);
  if (src != NULL && dst != NULL &&
      cpc_cvm_launch(src, &g_config, &cvm) == CPC_OK) {
    CHECK(cvm != SENTINEL_CVM && cvm != 0);
    test_lifecycle(src, cvm);
    test_snapshot(src, cvm, dir);
    test_migration(src, dst, cvm, dir);
    CHECK(cpc_cvm_destroy(src, cvm) == CPC_OK);
  } else {
    CHECK(!"cpc_cvm_launch");
  }
  /* Closing destroys whatever is left. */
  cpc_backend_close(src);
  cpc_backend_close(dst);
  remove_dir(dir);

  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
