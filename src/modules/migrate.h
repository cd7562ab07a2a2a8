// The in-CVM side of CPC-LiveMigration (the host side is
// include/cpc/migrate.h, src/modules/migrate_host.cc).
//
// Module "migrate". Each procedure is one call on an hvCPU:
//   hello   args {u8 role, u32 streams}: a fresh X25519 key pair; output
//           {public key[32], u32 n, evidence[n]} where the evidence's
//           report_data binds role, public key and stream count.
//   accept  args {own public key[32], peer public key[32], u32 n,
//           peer evidence[n]}: verifies the peer (same measurement and
//           platform policy, genuine platform, binding), derives the session
//           keys (operators/keys.h) and opens the session. A destination
//           revokes its guest OS's right to run here (it must be paused).
//           output {session id[16]}
//   send    (source) args {id, u32 stream, ring, u64 control offset}: runs
//           the whole precopy for one stream; see below.
//   resume  (source) args {id, abort token bytes (may be empty)}: ends the
//           session and gives the guest OS its right to run back. Once the
//           start token left the CVM this needs the destination's abort
//           token (kFailedPrecondition otherwise): the two never both run.
//   recv    (destination) args {id, u32 stream, ring, u64 control offset}:
//           imports the stream until its end.
//   commit  (destination) args {id}: start token accepted, every page and
//           vCPU state present -> the guest OS may run. output {u64 pages,
//           u32 epochs}
//   abort   (destination) args {id, u32 reason}: this CVM will never run;
//           output the abort token (backward key) for the source.
//   ack     (destination) args {id}: after a network cut, once every recv
//           call ended: output a resume ack (backward key) saying where the
//           destination stands; only the source's resume record answering
//           it is accepted next. The streams may run again (new recv calls).
//   rejoin  (source) args {id, resume ack}: once every send call ended and
//           before the final round: verifies the ack, closes the
//           interrupted epoch there (a resume record, sent first by the
//           next stream 0 call), and puts every page whose record did not
//           arrive - and the rest of the interrupted round - into the next
//           round. Output {u32 next round}: the host continues there.
//
// Rounds. The host controls when: it raises Control::go_round to let round
// r start, and sets Control::final_round = r + 1 (after pausing the guest)
// to make round r the last. The leader (stream 0) plans a round from the
// platform's own write tracking (GuestPlatform::TakeWrittenPages; round 0
// sends every page), every stream seals its share into its ring and ends
// it with a kEndOfRound buffer, then the leader seals the epoch token (and,
// in the final round, after SEE and the revocation of the guest OS, the
// start token) into a kTokens buffer. The destination imports a round's
// tokens only after every stream delivered the round, and starts the next
// round only after the epoch token (docs/FORMAT.md section 6).
//
// Resumption (docs/FORMAT.md section 6.2). The source remembers each
// round's plan (which pages each stream sealed, in order) until the host
// reports, via Control::peer_epoch, that the destination is past it; a lie
// there can only make a later rejoin fail (kFailedPrecondition), never
// lose a page. The acknowledged record counts tell exactly which pages
// arrived: each stream seals its share of a round in order, and the source
// journals how many pages each MEE call put in how many records.
//
// Everything the host writes (control block, rings) is untrusted input: it
// can delay or stop a migration, never make either side accept less than a
// complete, authentic, current state.
#ifndef CPC_SRC_MODULES_MIGRATE_H_
#define CPC_SRC_MODULES_MIGRATE_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include <cpc/module.h>

CPC_NAMESPACE_BEGIN
namespace mig {

inline constexpr char kModule[] = "migrate";
inline constexpr uint8_t kRoleSource = 0;
inline constexpr uint8_t kRoleDestination = 1;
inline constexpr uint32_t kMaxStreams = 64;

// The host's control block in shared memory (64 bytes, 64-byte aligned).
struct Control {
  std::atomic<uint32_t> go_round;     // host: rounds [0, go_round) may run
  std::atomic<uint32_t> final_round;  // host: r + 1 makes round r the last
  std::atomic<uint32_t> stop;         // host: end the calls (kCancelled)
  std::atomic<uint32_t> rounds_done;  // module: epochs closed / imported
  std::atomic<uint64_t> round_pages;  // module: pages planned this round
  std::atomic<uint64_t> round_bytes;  // module: guest bytes sealed so far
  // Source, host: the destination's epoch (a hint; see Resumption).
  std::atomic<uint32_t> peer_epoch;
  // Destination, module: its current epoch (for the host to relay).
  std::atomic<uint32_t> epoch;
  uint8_t pad[24];
};
static_assert(sizeof(Control) == 64);

}  // namespace mig

std::unique_ptr<Module> MakeMigrateModule();

CPC_NAMESPACE_END

#endif  // CPC_SRC_MODULES_MIGRATE_H_
