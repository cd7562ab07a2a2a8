// The in-CVM side of CPC-Snapshot (the host side is include/cpc/snapshot.h).
//
// Module "snapshot", procedures (each one call on an hvCPU):
//   begin         args {u32 streams, u64 serial}: opens an export session
//                 with a fresh random id; key = HKDF(sealing key, id).
//                 output {id[16], u64 pages, u32 vcpus, measurement[32]}
//   extract       args {id, u32 stream, ring}: MEE of the stream's share of
//                 guest-OS memory (stream 0 first seals every gvCPU's state,
//                 SEE) into the ring, publishing each buffer as it fills
//   finish        args {id}: epoch token + start token + sealed manifest
//                 (output); closes the session
//   insert_begin  args {id, u32 streams, u64 pages, u32 vcpus, measurement}
//   insert        args {id, u32 stream, ring}: MDI/SDI of what the host puts
//                 in the ring until a buffer marked end-of-stream
//   insert_finish args {id} + {final bytes}: tokens, manifest check, commit
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

// Largest ring buffer payload needed for one memory record.
uint64_t MinRingBuffer();

}  // namespace snap

std::unique_ptr<Module> MakeSnapshotModule();

CPC_NAMESPACE_END

#endif  // CPC_SRC_MODULES_SNAPSHOT_H_
