// CPC-Snapshot: sealed snapshots of a running CVM and verified restore.
//
// TakeSnapshot pauses the guest (the host's control plane), then hvCPUs run
// the in-CVM "snapshot" module: MEE over the guest's memory and SEE over
// every gvCPU, one record stream per hvCPU, into host-shared rings. The host
// appends the ciphertext to the file straight from the shared rings (no copy
// of its own) while the hvCPUs fill the ring's other buffers. The key is
// derived inside the CVM from the platform's sealing key (image measurement +
// policy on this platform) and a random per-snapshot session id: the same
// image and policy can restore it, the host never can. A sealed manifest
// binds page count, vCPU count, measurement and the snapshot serial. With
// SnapshotOptions::background the guest runs on during the copy and the
// snapshot still holds one instant (copy-on-write inside the CVM).
//
// RestoreSnapshot launches a fresh CVM from the launch configuration stored
// in the file, pauses it, lets its hvCPUs run MDI/SDI from the file, checks
// completeness and integrity (record counters, epoch token, start token,
// manifest), and resumes the guest. Any failure destroys the fresh CVM: no
// half-restored CVM ever runs. The hvCPUs read the file in place: the
// backend must implement Backend::AttachSharedFile (every built-in one
// does; kUnimplemented otherwise), and the file is detached again before
// the guest resumes.
//
// Threading: each call uses its own threads (one per stream plus a file
// writer or walker); the progress callback is called from the stream
// threads, one call at a time.
// Errors: kIoError (file), kRecordMalformed / kDataLoss (not a snapshot,
// truncated), kMeasurementMismatch (taken from another image/policy),
// kAuthFailed / kRecord* / kEpochMismatch / kIncomplete (corrupt, reordered,
// incomplete), token and platform errors from the CVM, kAborted (abort
// policy).
#ifndef CPC_SNAPSHOT_H_
#define CPC_SNAPSHOT_H_

#include <functional>
#include <string>
#include <vector>

#include <cpc/backend.h>
#include <cpc/export.h>
#include <cpc/runtime.h>
#include <cpc/status.h>

CPC_NAMESPACE_BEGIN

struct SnapshotStats {
  uint64_t pages = 0;        // guest pages in the snapshot
  uint32_t vcpus = 0;        // gvCPU states
  uint32_t streams = 0;      // hvCPUs used (one record stream each)
  uint64_t guest_bytes = 0;  // guest bytes processed so far
  uint64_t total_guest_bytes = 0;
  uint64_t file_bytes = 0;  // bytes written to the file; a restore: its size
                            // (the CVM reads it in place)
  Duration elapsed{0};      // whole operation
  Duration paused{0};       // time the guest was paused (snapshot)
  // Background snapshot: pages the guest wrote before they were saved
  // (copied aside inside the CVM first).
  uint64_t copied_pages = 0;
  Duration launch{0};           // restore: launching the fresh CVM
  double rate_bytes_per_s = 0;  // guest bytes per second
};

using SnapshotProgressFn = std::function<void(const SnapshotStats&)>;

struct SnapshotOptions {
  std::vector<uint32_t> hvcpus = {0};  // one stream per hvCPU (launched ones)
  Duration slice = std::chrono::milliseconds(50);
  AbortPolicy abort;    // default: no time limit
  uint64_t serial = 0;  // recorded in the manifest; 0 = wall-clock ns
  bool resume = true;   // resume the guest afterwards
  // Background snapshot (like QEMU's background-snapshot): the guest is
  // paused only while `begin` takes the gvCPU states and write-protects its
  // memory inside the CVM, then runs on while the hvCPUs save memory as it
  // was at that instant (the first guest write to an unsaved page copies it
  // aside inside the CVM). Needs `resume`. Costs up to one extra copy of
  // every page the guest writes meanwhile, in CVM memory; while it runs the
  // CVM's written-page record reports every page (a migration meanwhile
  // would not converge).
  bool background = false;
  // Called with the guest paused, right before `begin` takes the snapshot's
  // instant (e.g. to measure the guest at that instant; its agent cannot
  // answer token requests now, ask before). An error ends the snapshot.
  std::function<Status()> at_pause;
  // The launch configuration stored in the file for `cpc restore`.
  LaunchConfig launch;
};

CPC_EXPORT Result<SnapshotStats> TakeSnapshot(
    Backend& backend, CvmHandle cvm, const std::string& path,
    const SnapshotOptions& options, const SnapshotProgressFn& progress = {});

// The plaintext file header (authenticated later by the manifest).
struct SnapshotInfo {
  uint32_t version = 0;
  uint64_t serial = 0;
  Digest measurement{};  // of the CVM it was taken from
  uint64_t pages = 0;
  uint32_t vcpus = 0;
  uint32_t streams = 0;
  LaunchConfig launch;  // to launch a CVM that can restore it
};

CPC_EXPORT Result<SnapshotInfo> ReadSnapshotInfo(const std::string& path);

struct RestoreOptions {
  Duration slice = std::chrono::milliseconds(50);
  AbortPolicy abort;
  bool resume = true;  // resume the restored guest
  // Called with the fresh CVM before it is paused for the restore, e.g. to
  // obtain tokens from its agent (which cannot answer while it is paused).
  std::function<void(CvmHandle)> before_pause;
};

struct RestoreResult {
  CvmHandle cvm = 0;  // the restored CVM (running, unless !resume)
  SnapshotStats stats;
};

// Launches a CVM from `launch` (usually ReadSnapshotInfo(path)->launch) and
// restores the snapshot into it.
CPC_EXPORT Result<RestoreResult> RestoreSnapshot(
    Backend& backend, const LaunchConfig& launch, const std::string& path,
    const RestoreOptions& options, const SnapshotProgressFn& progress = {});

CPC_NAMESPACE_END

#endif  // CPC_SNAPSHOT_H_
