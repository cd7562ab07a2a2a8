// Guest memory and the dirty log of the emulated machine.
//
// GuestMemory (CVM process) is private anonymous memory, backed by THP where
// the kernel allows and pre-faulted, so the VMM process can never map it.
// With dirty tracking on, it is registered with userfaultfd write-protect in
// async mode: the kernel marks written pages without any fault handler.
//
// DirtyLog (VMM process) reads and re-arms those marks with PAGEMAP_SCAN on
// /proc/<pid>/pagemap of the CVM process - the emulated hypervisor's dirty
// bitmap. Only GPAs reach the host, never contents. Not thread-safe.
#ifndef CPC_SRC_EMULATOR_MEMORY_H_
#define CPC_SRC_EMULATOR_MEMORY_H_

#include <cstdint>
#include <memory>
#include <sys/types.h>
#include <vector>

#include <cpc/status.h>
#include <cpc/types.h>

#include "emulator/channel.h"

CPC_NAMESPACE_BEGIN
namespace emu {

class GuestMemory {
 public:
  // kInvalidArgument unless `bytes` is a non-zero multiple of 2 MiB;
  // kResourceExhausted if the mapping fails; kUnimplemented if dirty tracking
  // is asked for and the kernel lacks uffd-wp async.
  static Result<std::unique_ptr<GuestMemory>> Create(uint64_t bytes,
                                                     bool track_dirty);
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }
  uint64_t pages() const { return size_ >> kPageShift; }
  bool Contains(Gpa gpa) const { return gpa < size_; }
  uint8_t* At(Gpa gpa) const { return base_ + gpa; }

 private:
  GuestMemory() = default;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  Fd uffd_;
};

class DirtyLog {
 public:
  // `base` is the guest memory's address in process `pid`.
  static Result<DirtyLog> Open(pid_t pid, uint64_t base, uint64_t size);
  // GPAs written since the last rearm, sorted; `rearm` write-protects them
  // again in the same scan (no write is lost between read and rearm).
  Result<std::vector<Gpa>> Read(bool rearm);

 private:
  Fd pagemap_;
  uint64_t base_ = 0;
  uint64_t size_ = 0;
};

// Whether this kernel offers uffd-wp async + PAGEMAP_SCAN (probe for `cpc
// info`): creates and scans a small region in this process.
Status ProbeDirtyTracking();

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_MEMORY_H_
