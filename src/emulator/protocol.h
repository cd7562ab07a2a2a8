// Message types of the emulated hypervisor interface (see channel.h).
#ifndef CPC_SRC_EMULATOR_PROTOCOL_H_
#define CPC_SRC_EMULATOR_PROTOCOL_H_

#include <cstdint>

#include <cpc/version.h>

CPC_NAMESPACE_BEGIN
namespace emu {

enum MsgType : uint16_t {
  // VM channel, host -> CVM.
  kMsgLaunch = 1,       // launch parameters
  kMsgCreateHvcpu = 2,  // u32 index, u8 isolation
  kMsgPause = 3,
  kMsgResume = 4,
  kMsgShutdown = 5,
  kMsgGuestAccess = 6,  // u64 gpa, u8 write: a compromised guest OS's access
  kMsgHvcpuTid = 7,     // u32 index: the OS thread id of the hvCPU's context
  // u8 rearm, u64 first_page (multiple of 64), u64 pages: the host's dirty
  // log for those pages. Reply payload: u64 first_page, u64 pages, then
  // ceil(pages / 64) u64 words (bit i = page first_page + i).
  kMsgDirtyLog = 8,
  kMsgThrottle = 9,  // u32 per-mille of every 10 ms the gvCPUs do not run
  // fds: one regular file, mapped read-only as the shared file window.
  // Reply payload: u64 file bytes.
  kMsgAttachFile = 10,
  kMsgDetachFile = 11,
  // VM channel, CVM -> host.
  kMsgLaunched =
      20,          // identity + layout; fds: memfd, bell to guest, bell to host
  kMsgReply = 21,  // a Status (+ optional payload / fds)
  // hvCPU channel.
  kMsgEnter = 40,  // HvcpuEntry
  kMsgExit = 41,   // HvcpuExit (or kMsgReply with an error)
};

// Pages of dirty log per kMsgDirtyLog (a 512 KiB bitmap, 16 GiB of guest):
// a reply stays below Channel::kMaxMessage.
inline constexpr uint64_t kDirtyLogChunkPages = 4ull << 20;

// The fd number the VM channel has in a freshly spawned CVM process.
inline constexpr int kVmChannelFd = 3;

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_PROTOCOL_H_
