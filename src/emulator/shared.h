// The region a CVM shares with its host (a memfd the guest creates and hands
// over) and the agent mailbox in it: the emulated host<->guest-OS channel
// through which the VMM asks the guest's agent for a token. Everything in the
// region is visible to the host, so only ciphertext, tokens and GPAs go here.
//
// Layout: page 0 header, page 1 agent mailbox, then the data area (rings of
// later modules). Doorbells are two eventfds: host->guest and guest->host.
// The mailbox carries one request at a time (the host serialises callers).
#ifndef CPC_SRC_EMULATOR_SHARED_H_
#define CPC_SRC_EMULATOR_SHARED_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include <cpc/backend.h>
#include <cpc/status.h>
#include <cpc/token.h>

#include "emulator/channel.h"

CPC_NAMESPACE_BEGIN
namespace emu {

struct SharedHeader {
  uint64_t magic;  // kSharedMagic
  uint64_t size;
  uint64_t data_offset;
  uint64_t data_size;
};
inline constexpr uint64_t kSharedMagic = 0x4e52524148534350;  // "PCSHARRN"

struct AgentMailbox {
  std::atomic<uint32_t> request_seq;   // host bumps after writing a request
  std::atomic<uint32_t> response_seq;  // guest sets to request_seq when done
  char module[32];
  char procedure[32];
  uint64_t budget_bytes;
  uint64_t budget_time_ms;
  int32_t code;  // cpc::Code of the answer
  char message[220];
  uint8_t token[Token::kWireSize];
};
static_assert(sizeof(AgentMailbox) <= kPageSize);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

class SharedRegion {
 public:
  // Guest side: creates the memfd of `bytes` (>= 2 pages, page multiple).
  static Result<SharedRegion> Create(uint64_t bytes);
  // Host side: maps a memfd received from the guest; validates the header.
  static Result<SharedRegion> Map(Fd memfd);
  SharedRegion() = default;
  ~SharedRegion();
  SharedRegion(SharedRegion&& o) noexcept;
  SharedRegion& operator=(SharedRegion&& o) noexcept;

  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }
  int fd() const { return fd_.get(); }
  AgentMailbox* mailbox() const {
    return reinterpret_cast<AgentMailbox*>(base_ + kPageSize);
  }
  cpc::SharedRegion View() const {
    return {base_ + 2 * kPageSize, size_ - 2 * kPageSize};
  }

 private:
  Fd fd_;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
};

// An eventfd doorbell.
class Doorbell {
 public:
  static Result<Doorbell> Create();
  explicit Doorbell(Fd fd = Fd()) : fd_(std::move(fd)) {}
  Status Ring();
  // Waits for a ring; kTimeout after timeout_ms (< 0: forever). If
  // `hangup_fd` >= 0 and its peer goes away, kIoError.
  Status Wait(int timeout_ms, int hangup_fd = -1);
  int fd() const { return fd_.get(); }

 private:
  Fd fd_;
};

// CVM side of Backend::AttachSharedFile: host files mapped read-only into
// the CVM's shared memory, an emulated read-only memslot backed by a host
// file (as virtio-pmem / DAX back guest memory with one). The CVM process
// maps the file itself, 2 MiB aligned, so page-cache folios of that size map
// as huge pages: a module reads the host's bytes in place, with no copy into
// a ring and next to no mapping cost.
//
// The file stays host-controlled: its bytes may change while read, and if
// the host shrinks it, a read past the new end would raise SIGBUS. A process
// handler then maps zeros from that page to the end of the window, so the
// module reads zeros (and refuses them as it refuses any bad input) instead
// of the CVM dying. Detach replaces the mapping by zeros and keeps the
// address range until the process ends, so a call still holding the span
// reads zeros, never unmapped memory.
//
// Thread-safe. At most kMaxWindows attaches per process (kResourceExhausted
// after that; a CVM is restored into once).
class SharedFiles {
 public:
  static constexpr size_t kMaxWindows = 64;
  SharedFiles() = default;
  ~SharedFiles();
  SharedFiles(const SharedFiles&) = delete;
  SharedFiles& operator=(const SharedFiles&) = delete;

  // Maps `file` (a regular file, from offset 0) as the current window,
  // detaching any earlier one; returns its size. kInvalidArgument for a file
  // that is not regular or is empty; kIoError if it cannot be mapped.
  Result<uint64_t> Attach(Fd file);
  // Ends the current window (OK if there is none).
  void Detach();
  // The current window, empty if none. Valid for the life of the process;
  // reads zeros once detached.
  std::span<const uint8_t> Current() const;

 private:
  mutable std::mutex mu_;
  std::span<const uint8_t> current_;
  std::vector<std::span<uint8_t>> reserved_;  // every range ever mapped
};

// Host side of the mailbox: asks the guest agent for a token.
Result<std::vector<uint8_t>> RequestTokenFromAgent(
    const SharedRegion& region, Doorbell& to_guest, Doorbell& from_guest,
    const TokenRequest& request, int timeout_ms, int hangup_fd = -1);

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_SHARED_H_
