// The in-CVM side of CPC-Snapshot (the host side is include/cpc/snapshot.h).
//
// Module "snapshot", procedures (each one call on an hvCPU):
//   begin         args {u32 streams, u64 serial}: opens an export session
//                 with a fresh random id; key = HKDF(sealing key, id).
//                 output {id[16], u64 pages, u32 vcpus, measurement[32]}
//   extract       args {id, u32 stream, ring}: MEE of the stream's share of
//                 guest-OS memory (stream 0 first seals every gvCPU's state,
//                 SEE) into the ring; yields whenever a ring buffer is full
//   finish        args {id}: epoch token + start token + sealed manifest
//                 (output); closes the session
//   insert_begin  args {id, u32 streams, u64 pages, u32 vcpus, measurement}
//   insert        args {id, u32 stream, ring}: MDI/SDI of what the host puts
//                 in the ring until a buffer marked end-of-stream
//   insert_finish args {id} + {final bytes}: tokens, manifest check, commit
// A ring is two buffers in host-shared memory, each a 64-byte head and a
// payload; producer and consumer alternate buffers 0, 1, 0, ... The ring's
// bytes are host-controlled: every offset and length is checked.
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

// The rings are the shared record rings of modules/ring.h (two buffers).
using ring::kEndOfStream;
using ring::kFree;
using ring::kFull;
using ring::kWriting;
using ring::RingHead;

struct Ring {
  uint64_t offset = 0;     // in the shared memory
  uint64_t buf_bytes = 0;  // per buffer, head included
};

// Largest ring buffer payload needed for one memory record.
uint64_t MinRingBuffer();

}  // namespace snap

std::unique_ptr<Module> MakeSnapshotModule();

CPC_NAMESPACE_END

#endif  // CPC_SRC_MODULES_SNAPSHOT_H_
