// The in-CVM side of CPC-Snapshot (the host side is include/cpc/snapshot.h).
//
// Module "snapshot", procedures (each one call on an hvCPU):
//   begin         args {u32 streams, u64 serial, u8 flags}: opens an export
//                 session with a fresh random id; key = HKDF(sealing key,
//                 id); drops unfinished earlier sessions. kBeginBackground:
//                 takes the gvCPU states now and begins the platform's
//                 frozen view, so the host may resume the guest at once.
//                 output {id[16], u64 pages, u32 vcpus, measurement[32]}
//   extract       args {id, u32 stream, ring}: MEE of the stream's share of
//                 guest-OS memory (stream 0 first seals every gvCPU's state,
//                 SEE) into the ring, publishing each buffer as it fills;
//                 background: the frozen pages and the states taken at begin
//   finish        args {id, u8 flags}: ends the frozen view, closes the
//                 session; output {u64 pages copied by the view} + epoch
//                 token + start token + sealed manifest. kFinishCancel:
//                 no output (the host gives up on the snapshot)
//   insert_begin  args {id, u32 streams, u64 pages, u32 vcpus, measurement}
//   insert        args {id, u32 stream, u64 offset, u64 ready_at}: MDI/SDI of
//                 the stream's chunks in the snapshot file the host attached
//                 (CallContext::shared_file), walking its chunk chain from
//                 `offset` (the first chunk) to the stream's end-of-stream
//                 chunk; the other streams' chunks are skipped. It reads no
//                 page of the file at or beyond the level (ring::WaitLevel)
//                 at `ready_at` in shared memory: how many of its pages the
//                 host has in its page cache
//   insert_finish args {id} + {final bytes}: tokens, manifest check, commit
// A chunk of the file: {u16 stream, u16 flags (kEndOfStream), u32 length}
// and `length` bytes of records; the final chunk's stream is kFinalStream.
// The file's bytes are host-controlled: every header is read once and checked.
// ring = {u64 offset, u64 buffer bytes, u32 buffer count}: a record ring of
// modules/ring.h in host-shared memory (2..16 buffers, each a 64-byte head
// and a payload); producer and consumer walk the buffers in order and ring
// the other side's doorbell (ring::Notify) at every state change, waiting
// with RingCursor's doorbell waits. The ring's bytes are host-controlled:
// every offset and length is checked.
#ifndef CPC_SRC_MODULES_SNAPSHOT_H_
#define CPC_SRC_MODULES_SNAPSHOT_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

#include <cpc/module.h>

#include "modules/ring.h"

CPC_NAMESPACE_BEGIN
namespace snap {

inline constexpr char kModule[] = "snapshot";
using SessionId = std::array<uint8_t, 16>;

// The rings are the shared record rings of modules/ring.h.
using ring::kEndOfStream;
using ring::kFree;
using ring::kFull;
using ring::kWriting;
using ring::RingHead;

inline constexpr size_t kChunkHeaderBytes = 8;
inline constexpr uint16_t kFinalStream = 0xFFFF;

inline constexpr uint8_t kBeginBackground = 1;
inline constexpr uint8_t kFinishCancel = 1;

// Largest ring buffer payload needed for one memory record.
uint64_t MinRingBuffer();

}  // namespace snap

std::unique_ptr<Module> MakeSnapshotModule();

CPC_NAMESPACE_END

#endif  // CPC_SRC_MODULES_SNAPSHOT_H_
