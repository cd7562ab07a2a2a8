// The emulated hypervisor interface between the VMM process and a CVM process:
// one AF_UNIX SOCK_SEQPACKET socket per VM and per hvCPU (like KVM's VM and
// vCPU fds). A message is a u16 type plus a payload, optionally carrying file
// descriptors (SCM_RIGHTS). Message boundaries are preserved by the socket.
//
// A Channel is used by one thread at a time per direction (Send and Recv may
// run concurrently). Errors: kIoError with errno in the subcode; a closed peer
// is kIoError with the message "peer closed"; a Recv past its deadline is
// kTimeout.
#ifndef CPC_SRC_EMULATOR_CHANNEL_H_
#define CPC_SRC_EMULATOR_CHANNEL_H_

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <cpc/call.h>
#include <cpc/status.h>

#include "core/bytes.h"

CPC_NAMESPACE_BEGIN
namespace emu {

// Owns a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  bool valid() const { return fd_ >= 0; }
  void Reset();

 private:
  int fd_ = -1;
};

struct Message {
  uint16_t type = 0;
  std::vector<uint8_t> payload;
  std::vector<Fd> fds;
};

class Channel {
 public:
  Channel() = default;
  explicit Channel(Fd fd) : fd_(std::move(fd)) {}
  // A connected pair (socketpair, close-on-exec).
  static Result<std::pair<Channel, Channel>> Pair();

  Status Send(uint16_t type, std::span<const uint8_t> payload,
              std::span<const int> fds = {});
  // timeout_ms < 0: wait forever.
  Result<Message> Recv(int timeout_ms = -1);

  int fd() const { return fd_.get(); }
  bool valid() const { return fd_.valid(); }
  Fd TakeFd() { return std::move(fd_); }

  static constexpr size_t kMaxMessage = 1 << 20;

 private:
  Fd fd_;
};

// Wire forms of the call vocabulary and of Status.
void EncodeStatus(ByteWriter& w, const Status& s);
Status DecodeStatus(ByteReader& r);
std::vector<uint8_t> EncodeEntry(const HvcpuEntry& e);
Result<HvcpuEntry> DecodeEntry(std::span<const uint8_t> b);
std::vector<uint8_t> EncodeExit(const HvcpuExit& e);
Result<HvcpuExit> DecodeExit(std::span<const uint8_t> b);
// Bytes: u32 length + data.
void PutBlob(ByteWriter& w, std::span<const uint8_t> b);
std::vector<uint8_t> GetBlob(ByteReader& r);

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_CHANNEL_H_
