// The guest-OS model that runs on the gvCPUs of an emulated CVM: a
// deterministic workload, a page allocator whose free list lives in guest
// memory, an event log in guest memory, and the token agent.
//
// The workload keeps its whole state in the vCPU's registers (VcpuRegs) and
// guest memory, so a paused CVM is fully described by SEE + MEE output and
// continues identically after restore or migration. Every guest-OS memory
// access is checked by the platform model at the guest OS's privilege.
//
// Pause/Resume stop and restart the gvCPUs at an instruction boundary (the
// host deschedules them); registers go to the platform's save areas on pause
// and come back from them on resume. Throttle makes the gvCPUs sleep for a
// share of every 10 ms period (host scheduling, like QEMU's cpu-throttle).
// SetRunnable(false) is the platform revoking the gvCPUs: Resume is refused
// until it is restored. Thread-safe.
#ifndef CPC_SRC_EMULATOR_GUEST_OS_H_
#define CPC_SRC_EMULATOR_GUEST_OS_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <cpc/token.h>

#include "emulator/memory.h"
#include "emulator/platform.h"
#include "emulator/shared.h"

CPC_NAMESPACE_BEGIN
namespace emu {

struct WorkloadConfig {
  enum class Kind : uint8_t { kIdle, kDirty, kCpu };
  Kind kind = Kind::kIdle;
  double dirty_mib_per_s = 0;    // kDirty: pages dirtied per second x 4 KiB
  uint64_t working_set_mib = 0;  // kDirty: pages written are drawn from this
  std::array<uint8_t, 32> canary{};  // planted in the working set if non-zero
  bool plant_canary = false;

  // From launch options: workload=idle|dirty|cpu, dirty_mib_s, wss_mib,
  // canary_seed (hex). kInvalidArgument on a bad value.
  static Result<WorkloadConfig> FromOptions(
      const std::map<std::string, std::string>& options);
};

// Guest memory layout owned by the guest OS: page 0 header, pages 1..16 the
// event log, then allocatable pages up to the CPC region.
struct GuestOsHeader {
  uint64_t magic;
  uint64_t free_head;  // GPA of the first free page (0 = none)
  uint64_t free_pages;
  uint64_t log_next;  // sequence number of the next event
  uint64_t ws_base;   // working set [ws_base, ws_base + ws_pages)
  uint64_t ws_pages;
  uint64_t boots;
};

class GuestOs : public GuestAgent {
 public:
  GuestOs(GuestMemory* memory, EmulatedPlatform* platform, Gpa cpc_base,
          uint32_t gvcpus, WorkloadConfig workload);
  ~GuestOs() override;

  // First boot (after the platform's launch): lays out allocator, log and
  // working set; plants the canary. kResourceExhausted if memory is too small.
  Status Boot();
  // The registers gvCPU `index` starts with (part of the measured launch).
  static VcpuRegs InitialRegs(uint32_t index);
  // Starts the gvCPU threads (from the registers in the save areas).
  void Start();
  Status Pause();
  // kFailedPrecondition while the guest OS is not runnable.
  Status Resume();
  bool paused() const;
  // The gvCPUs run for (1000 - permille) / 1000 of every 10 ms period;
  // 0 removes the throttle. kInvalidArgument above 990.
  Status Throttle(uint32_t permille);
  // Revokes (false; kFailedPrecondition unless the gvCPUs are paused) or
  // restores (true; does not resume) the guest OS's right to run.
  Status SetRunnable(bool runnable);

  // The token agent: serves requests from the shared mailbox until stopped.
  void StartAgent(TokenAuthority* authority, const SharedRegion* region,
                  Doorbell* from_host, Doorbell* to_host);
  // Modules the agent refuses ("agent.deny" launch option).
  void DenyModule(std::string module);
  bool Approve(const TokenRequest& request) override;

  // Page allocator (free list in guest memory). kResourceExhausted if empty.
  Result<Gpa> AllocPage();
  Status FreePage(Gpa gpa);

  // A (compromised) guest OS touching `gpa`: the platform decides.
  Status Access(Gpa gpa, bool write);
  void Log(uint32_t type, uint32_t vcpu, uint64_t a, uint64_t b);
  uint64_t faults() const { return faults_.load(); }

  enum EventType : uint32_t {
    kEvBoot = 1,
    kEvTokenApproved,
    kEvTokenDenied,
    kEvPause,
    kEvResume,
    kEvFault
  };

 private:
  void VcpuMain(uint32_t index);
  GuestOsHeader* header() const;
  void Stop();

  GuestMemory* const mem_;
  EmulatedPlatform* const platform_;
  const Gpa cpc_base_;
  const uint32_t gvcpus_;
  const WorkloadConfig workload_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool pause_requested_ = false;
  bool stop_ = false;
  bool runnable_ = true;
  uint32_t throttle_permille_ = 0;
  uint32_t parked_ = 0;
  bool agent_busy_ = false;  // the agent is serving a request
  std::vector<std::thread> vcpus_;
  std::atomic<uint64_t> faults_{0};
  std::mutex log_mu_;
  std::mutex alloc_mu_;
  std::vector<std::string> denied_;

  std::thread agent_;
  std::atomic<bool> agent_stop_{false};
  Doorbell* agent_wake_ = nullptr;
};

}  // namespace emu
CPC_NAMESPACE_END

#endif  // CPC_SRC_EMULATOR_GUEST_OS_H_
