// CPC-LiveMigration: attested, multi-stream precopy of a running CVM to
// another VMM process over TCP.
//
// MigrateOut (source VMM) and MigrateIn (destination VMM) each drive their
// own CVM through the control plane only; the two CVMs' "migrate" modules
// run an attested key exchange (each verifies the other's report: same
// measurement and platform policy, genuine platform) with the hosts only
// relaying, then the source's hvCPUs seal pages (MEE) and, at switch-over,
// vCPU state (SEE) into host-shared rings; the hosts move the ciphertext
// over one TCP connection per stream; the destination's hvCPUs verify and
// insert it (MDI/SDI). Rounds follow the platform's own write tracking;
// each closes an epoch. The host decides when to switch over: once the
// remaining dirty set fits the downtime limit at the measured rate (with
// auto-converge throttling when the guest dirties faster than the link),
// it pauses the guest; the source CVM revokes its guest OS's right to run
// and emits the start token; the destination checks everything, commits and
// resumes.
//
// A network cut during precopy does not end the migration: the source
// reconnects, the destination CVM acknowledges (sealed) what it holds, and
// the source CVM re-sends only the pages of records that did not arrive,
// in a new epoch (MigrationStats::reconnects).
//
// Never both run: the destination runs only after accepting the start
// token; the source, once the start token left it, resumes only with the
// destination's abort token (which a destination issues only if it will
// never run). Failures before that point resume the source.
//
// Threading: each call uses its own threads (one per stream plus I/O); the
// progress callback runs on an internal thread, serialised. Errors: kIoError
// / kTimeout / kDataLoss (network), kMeasurementMismatch and kReport* (the
// peer is not the same CVM image and policy on a genuine platform),
// kAuthFailed / kRecord* / kEpochMismatch / kIncomplete (tampered,
// replayed, reordered, dropped or truncated data), kAborted (abort policy
// or deadline), token and platform errors from the CVMs. On any error
// MigrateOut leaves the source running (unless the outcome is unknown after
// the start token left: then kUnavailable and the source stays paused), and
// MigrateIn leaves no destination CVM behind.
#ifndef CPC_MIGRATE_H_
#define CPC_MIGRATE_H_

#include <functional>
#include <string>
#include <vector>

#include <cpc/backend.h>
#include <cpc/export.h>
#include <cpc/runtime.h>
#include <cpc/status.h>

CPC_NAMESPACE_BEGIN

// What QEMU's query-migrate reports, for both sides.
struct MigrationStats {
  enum class State : uint8_t {
    kSetup,       // connecting, key exchange
    kActive,      // precopy rounds
    kSwitchover,  // guest paused, final round
    kCompleted,
    kFailed,
  };
  State state = State::kSetup;
  uint32_t streams = 0;
  uint64_t total_bytes = 0;        // guest memory migrated (guest OS part)
  uint64_t remaining_bytes = 0;    // dirty bytes not yet sent (estimate)
  uint64_t transferred_bytes = 0;  // bytes on the wire (all streams)
  uint64_t pages_sent = 0;         // page versions sent (all rounds)
  uint32_t rounds = 0;             // epochs closed
  double rate_bytes_per_s = 0;     // wire rate, last round
  double dirty_pages_per_s = 0;    // guest dirty rate, last round
  double throttle = 0;             // fraction of time the gvCPUs are held
  Duration setup_time{0};          // until the first page moved
  Duration elapsed{0};
  Duration expected_downtime{0};  // at the switch-over decision
  Duration downtime{0};           // guest paused on source -> running on dst
  uint32_t reconnects = 0;
};

CPC_EXPORT const char* MigrationStateName(MigrationStats::State state);

using MigrationProgressFn = std::function<void(const MigrationStats&)>;

struct MigrateOptions {
  std::string destination = "127.0.0.1:4444";  // host:port of MigrateIn
  std::vector<uint32_t> hvcpus = {0};  // one stream (and TCP channel) each
  Duration downtime_limit = std::chrono::milliseconds(50);
  Duration deadline{0};       // give up (and resume) after; 0 = never
  uint32_t max_rounds = 64;   // then switch over whatever the estimate
  bool auto_converge = true;  // throttle the guest if it dirties too fast
  double max_throttle = 0.99;
  Duration slice = std::chrono::milliseconds(50);
  AbortPolicy abort;  // per hvCPU call
  // The launch configuration the destination uses for its CVM.
  LaunchConfig launch;
  // How long the source waits for the destination's verdict once the start
  // token is out; without one it stays paused (kUnavailable).
  Duration verdict_timeout = std::chrono::seconds(30);
  // Ring buffers per stream (fewer if the shared region is small; at least
  // 2) and their size.
  uint32_t ring_buffers = 4;
  uint64_t ring_buffer_bytes = 1 << 20;
  // A connection lost during precopy: reconnect within this long (0 = fail
  // at once) and continue in a new epoch, re-sending only what the
  // destination lacks; at most max_reconnects times. A cut after the pause
  // ends the migration, but the source reconnects (as long) to learn the
  // verdict: committed, or the abort token that lets it resume.
  Duration reconnect_timeout = std::chrono::seconds(10);
  uint32_t max_reconnects = 3;
};

CPC_EXPORT Result<MigrationStats> MigrateOut(
    Backend& backend, CvmHandle cvm, const MigrateOptions& options,
    const MigrationProgressFn& progress = {});

struct IncomingOptions {
  std::string listen = "127.0.0.1:4444";  // port 0 = any free port
  // Called once listening, with the bound "host:port".
  std::function<void(const std::string&)> on_listening;
  // Replaces the CVM image path of the source's launch configuration (the
  // image must be the same build: the attestation checks it).
  std::string image;
  // Extra launch options for the destination (e.g. chip_seed).
  std::map<std::string, std::string> launch_options;
  Duration accept_timeout = std::chrono::seconds(60);
  Duration slice = std::chrono::milliseconds(50);
  AbortPolicy abort;
  bool resume = true;  // run the guest after commit
  // Called with the fresh CVM before it is paused for the import (its agent
  // answers token requests only while it runs).
  std::function<void(CvmHandle)> before_pause;
  // How long to wait for the source to come back after a lost connection
  // (0 = fail at once), and how often.
  Duration reconnect_timeout = std::chrono::seconds(10);
  uint32_t max_reconnects = 3;
};

struct IncomingResult {
  CvmHandle cvm = 0;
  MigrationStats stats;
};

CPC_EXPORT Result<IncomingResult> MigrateIn(
    Backend& backend, const IncomingOptions& options,
    const MigrationProgressFn& progress = {});

CPC_NAMESPACE_END

#endif  // CPC_MIGRATE_H_
