#include "emulator/guest_os.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <openssl/evp.h>

#include "core/bytes.h"
#include "core/log.h"

CPC_NAMESPACE_BEGIN
namespace emu {

namespace {
constexpr uint64_t kOsMagic = 0x534f4c4544434d45;  // "EMCDELOS"
constexpr uint64_t kLogFirstPage = 1;
constexpr uint64_t kLogPages = 16;
constexpr uint64_t kFirstFreePage = kLogFirstPage + kLogPages;
constexpr uint64_t kLogRecord = 32;
constexpr uint64_t kCanaryPages = 8;

uint64_t XorShift(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

std::string Bounded(const char* p, size_t cap) {
  return std::string(p, strnlen(p, cap));
}

Result<std::vector<uint8_t>> Hex(const std::string& s) {
  if (s.size() % 2 != 0)
    return Status(Code::kInvalidArgument, "odd hex length");
  std::vector<uint8_t> out;
  for (size_t i = 0; i < s.size(); i += 2) {
    unsigned v;
    if (std::sscanf(s.c_str() + i, "%2x", &v) != 1)
      return Status(Code::kInvalidArgument, "bad hex");
    out.push_back(static_cast<uint8_t>(v));
  }
  return out;
}
}  // namespace

Result<WorkloadConfig> WorkloadConfig::FromOptions(
    const std::map<std::string, std::string>& options) {
  WorkloadConfig w;
  auto get = [&](const char* k) -> const std::string* {
    auto it = options.find(k);
    return it == options.end() ? nullptr : &it->second;
  };
  if (auto* k = get("workload")) {
    if (*k == "idle")
      w.kind = Kind::kIdle;
    else if (*k == "dirty")
      w.kind = Kind::kDirty;
    else if (*k == "cpu")
      w.kind = Kind::kCpu;
    else
      return Status(Code::kInvalidArgument,
                    fmt::format("unknown workload '{}'", *k));
  }
  try {
    if (auto* v = get("dirty_mib_s")) w.dirty_mib_per_s = std::stod(*v);
    if (auto* v = get("wss_mib")) w.working_set_mib = std::stoull(*v);
  } catch (...) {
    return Status(Code::kInvalidArgument, "bad workload number");
  }
  if (w.kind == Kind::kDirty &&
      (w.dirty_mib_per_s <= 0 || w.working_set_mib == 0))
    return Status(Code::kInvalidArgument,
                  "workload=dirty needs dirty_mib_s > 0 and wss_mib > 0");
  if (auto* v = get("canary_seed")) {
    CPC_ASSIGN_OR_RETURN(auto seed, Hex(*v));
    static constexpr std::string_view kLabel = "cpc-canary";
    std::vector<uint8_t> in(kLabel.begin(), kLabel.end());
    in.insert(in.end(), seed.begin(), seed.end());
    unsigned int len = 0;
    EVP_Digest(in.data(), in.size(), w.canary.data(), &len, EVP_sha256(),
               nullptr);
    w.plant_canary = true;
  }
  return w;
}

GuestOs::GuestOs(GuestMemory* memory, EmulatedPlatform* platform, Gpa cpc_base,
                 uint32_t gvcpus, WorkloadConfig workload)
    : mem_(memory),
      platform_(platform),
      cpc_base_(cpc_base),
      gvcpus_(gvcpus),
      workload_(workload) {}

GuestOs::~GuestOs() {
  Stop();
  if (agent_.joinable()) {
    agent_stop_ = true;
    if (agent_wake_ != nullptr) (void)agent_wake_->Ring();
    agent_.join();
  }
}

GuestOsHeader* GuestOs::header() const {
  return reinterpret_cast<GuestOsHeader*>(mem_->At(0));
}

Status GuestOs::Access(Gpa gpa, bool write) {
  Status s = platform_->CheckGuestOsAccess(gpa, write);
  if (!s.ok()) {
    faults_.fetch_add(1);
    Log(kEvFault, 0, gpa, write);
  }
  return s;
}

void GuestOs::Log(uint32_t type, uint32_t vcpu, uint64_t a, uint64_t b) {
  std::lock_guard<std::mutex> lock(log_mu_);
  GuestOsHeader* h = header();
  const uint64_t seq = h->log_next++;
  const uint64_t slot = seq % (kLogPages * kPageSize / kLogRecord);
  uint8_t* rec = mem_->At(kLogFirstPage * kPageSize) + slot * kLogRecord;
  StoreLe<uint64_t>(rec, seq);
  StoreLe<uint32_t>(rec + 8, type);
  StoreLe<uint32_t>(rec + 12, vcpu);
  StoreLe<uint64_t>(rec + 16, a);
  StoreLe<uint64_t>(rec + 24, b);
}

Status GuestOs::Boot() {
  const uint64_t os_pages = cpc_base_ >> kPageShift;
  const uint64_t ws_pages = workload_.kind == WorkloadConfig::Kind::kDirty
                                ? workload_.working_set_mib << (20 - kPageShift)
                                : 0;
  if (kFirstFreePage + ws_pages + kCanaryPages + 16 > os_pages)
    return Status(Code::kResourceExhausted,
                  fmt::format("guest OS area of {} pages cannot hold a {} page "
                              "working set",
                              os_pages, ws_pages));
  for (Gpa gpa = 0; gpa < kFirstFreePage * kPageSize; gpa += kPageSize) {
    CPC_RETURN_IF_ERROR(Access(gpa, true));
    std::memset(mem_->At(gpa), 0, kPageSize);
  }
  GuestOsHeader* h = header();
  h->magic = kOsMagic;
  h->ws_base = kFirstFreePage * kPageSize;
  h->ws_pages = ws_pages;
  h->boots = 1;
  // Free list through the first word of each free page, ascending.
  const Gpa first_free = h->ws_base + ws_pages * kPageSize;
  h->free_head = 0;
  h->free_pages = 0;
  for (Gpa gpa = cpc_base_ - kPageSize; gpa >= first_free; gpa -= kPageSize) {
    CPC_RETURN_IF_ERROR(Access(gpa, true));
    StoreLe<uint64_t>(mem_->At(gpa), h->free_head);
    h->free_head = gpa;
    ++h->free_pages;
  }
  if (workload_.plant_canary) {
    // Secrets the host must never see in plaintext: in allocated pages and
    // spread over the working set.
    for (uint64_t i = 0; i < kCanaryPages; ++i) {
      CPC_ASSIGN_OR_RETURN(Gpa gpa, AllocPage());
      std::memcpy(mem_->At(gpa) + 64, workload_.canary.data(), 32);
    }
    for (uint64_t p = 0; p < ws_pages; p += 64)
      std::memcpy(mem_->At(h->ws_base + p * kPageSize) + 128,
                  workload_.canary.data(), 32);
  }
  Log(kEvBoot, 0, gvcpus_, ws_pages);
  return Status::Ok();
}

VcpuRegs GuestOs::InitialRegs(uint32_t index) {
  VcpuRegs regs;
  regs.rip = 0x100000;
  regs.gpr[0] = 0x9E3779B97F4A7C15ull ^ (uint64_t{index + 1} << 32);  // PRNG
  regs.gpr[4] = 0x7000 + index * 0x1000;                              // rsp
  return regs;
}

Result<Gpa> GuestOs::AllocPage() {
  std::lock_guard<std::mutex> lock(alloc_mu_);
  GuestOsHeader* h = header();
  if (h->free_head == 0)
    return Status(Code::kResourceExhausted, "guest page allocator is empty");
  const Gpa gpa = h->free_head;
  CPC_RETURN_IF_ERROR(Access(gpa, true));
  h->free_head = LoadLe<uint64_t>(mem_->At(gpa));
  --h->free_pages;
  std::memset(mem_->At(gpa), 0, kPageSize);
  return gpa;
}

Status GuestOs::FreePage(Gpa gpa) {
  if (gpa % kPageSize != 0 || gpa < kFirstFreePage * kPageSize ||
      gpa >= cpc_base_)
    return Status(Code::kInvalidArgument,
                  fmt::format("cannot free {:#x}", gpa));
  std::lock_guard<std::mutex> lock(alloc_mu_);
  CPC_RETURN_IF_ERROR(Access(gpa, true));
  GuestOsHeader* h = header();
  StoreLe<uint64_t>(mem_->At(gpa), h->free_head);
  h->free_head = gpa;
  ++h->free_pages;
  return Status::Ok();
}

void GuestOs::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  for (uint32_t i = 0; i < gvcpus_; ++i)
    vcpus_.emplace_back([this, i] { VcpuMain(i); });
}

void GuestOs::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  for (auto& t : vcpus_)
    if (t.joinable()) t.join();
}

Status GuestOs::Pause() {
  std::unique_lock<std::mutex> lock(mu_);
  if (pause_requested_) return Status::Ok();
  pause_requested_ = true;
  cv_.notify_all();
  cv_.wait(lock, [this] {
    return (parked_ == vcpus_.size() && !agent_busy_) || stop_;
  });
  Log(kEvPause, 0, 0, 0);
  return Status::Ok();
}

Status GuestOs::Resume() {
  std::unique_lock<std::mutex> lock(mu_);
  if (!runnable_)
    return Status(Code::kFailedPrecondition,
                  "the guest OS may not run: its state was handed to a "
                  "migration destination (the platform revoked its vCPUs)");
  if (!pause_requested_) return Status::Ok();
  pause_requested_ = false;
  cv_.notify_all();
  cv_.wait(lock, [this] { return parked_ == 0 || stop_; });
  Log(kEvResume, 0, 0, 0);
  return Status::Ok();
}

bool GuestOs::paused() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pause_requested_;
}

Status GuestOs::Throttle(uint32_t permille) {
  if (permille > 990)
    return Status(
        Code::kInvalidArgument,
        fmt::format("throttle of {} per mille is above 990", permille));
  std::lock_guard<std::mutex> lock(mu_);
  throttle_permille_ = permille;
  cv_.notify_all();
  return Status::Ok();
}

Status GuestOs::SetRunnable(bool runnable) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!runnable &&
      !(pause_requested_ && parked_ == vcpus_.size() && !agent_busy_))
    return Status(Code::kFailedPrecondition,
                  "the guest OS's vCPUs must be paused before its right to "
                  "run is revoked");
  runnable_ = runnable;
  return Status::Ok();
}

void GuestOs::VcpuMain(uint32_t index) {
  auto regs_or = platform_->LoadVcpu(index);  // VMENTER
  if (!regs_or.ok()) {
    CPC_LOG_ERROR("gvCPU {} cannot enter: {}", index,
                  regs_or.status().ToString());
    return;
  }
  VcpuRegs regs = *regs_or;
  const GuestOsHeader* h = header();
  const double pages_per_ms = workload_.dirty_mib_per_s * 256.0 / 1000.0;
  double owed = 0;
  auto next = Clock::now();
  auto period_start = next;  // of the current throttle period
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (pause_requested_ || stop_) {
        // VMEXIT at an instruction boundary: registers to the save area.
        Status s = platform_->SaveVcpu(index, regs);
        if (!s.ok()) CPC_LOG_ERROR("gvCPU {} save: {}", index, s.ToString());
        ++parked_;
        cv_.notify_all();
        cv_.wait(lock, [this] { return !pause_requested_ || stop_; });
        if (stop_) return;
        --parked_;
        cv_.notify_all();
        auto reloaded = platform_->LoadVcpu(index);  // VMENTER
        if (!reloaded.ok()) {
          CPC_LOG_ERROR("gvCPU {} re-entry: {}", index,
                        reloaded.status().ToString());
          return;
        }
        regs = *reloaded;
        next = Clock::now();
        period_start = next;
      }
      if (throttle_permille_ != 0) {
        // Host throttling: run the first (1000 - permille) / 1000 of each
        // period, be descheduled for the rest.
        constexpr auto kPeriod = std::chrono::microseconds(10'000);
        const auto run = kPeriod * (1000 - throttle_permille_) / 1000;
        const auto now = Clock::now();
        if (now - period_start >= kPeriod) {
          period_start = now;
        } else if (now - period_start >= run) {
          cv_.wait_until(lock, period_start + kPeriod, [this] {
            return pause_requested_ || stop_ || throttle_permille_ == 0;
          });
          // Descheduled time is not owed work: the workload's pacing
          // restarts with the new period.
          period_start = Clock::now();
          next = period_start;
          continue;
        }
      }
    }
    switch (workload_.kind) {
      case WorkloadConfig::Kind::kIdle: {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, std::chrono::milliseconds(2),
                     [this] { return pause_requested_ || stop_; });
        break;
      }
      case WorkloadConfig::Kind::kCpu:
        for (int i = 0; i < 4096; ++i) XorShift(regs.gpr[0]);
        regs.gpr[1] += 4096;
        regs.rip += 1;
        break;
      case WorkloadConfig::Kind::kDirty: {
        owed += pages_per_ms;
        const auto n = static_cast<uint64_t>(owed);
        owed -= static_cast<double>(n);
        for (uint64_t i = 0; i < n; ++i) {
          const uint64_t r = XorShift(regs.gpr[0]);
          const Gpa gpa = h->ws_base + (r % h->ws_pages) * kPageSize;
          if (!Access(gpa, true).ok()) continue;
          StoreLe<uint64_t>(mem_->At(gpa) + ((r >> 40) % 512) * 8, r);
          ++regs.gpr[1];
        }
        regs.rip += 1;
        next += std::chrono::milliseconds(1);
        std::this_thread::sleep_until(next);
        break;
      }
    }
  }
}

void GuestOs::DenyModule(std::string module) {
  std::lock_guard<std::mutex> lock(mu_);
  denied_.push_back(std::move(module));
}

bool GuestOs::Approve(const TokenRequest& request) {
  bool ok;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ok = std::find(denied_.begin(), denied_.end(), request.module) ==
         denied_.end();
  }
  Log(ok ? kEvTokenApproved : kEvTokenDenied, 0, request.budget.bytes,
      request.budget.time_ms);
  return ok;
}

void GuestOs::StartAgent(TokenAuthority* authority, const SharedRegion* region,
                         Doorbell* from_host, Doorbell* to_host) {
  agent_wake_ = from_host;
  agent_ = std::thread([=, this] {
    AgentMailbox* mb = region->mailbox();
    while (!agent_stop_) {
      Status w = from_host->Wait(-1);
      if (agent_stop_) return;
      if (!w.ok()) continue;
      {
        // The agent is guest-OS code: it runs only while the gvCPUs do.
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !pause_requested_ || stop_; });
        if (stop_) return;
        agent_busy_ = true;
      }
      struct Idle {
        GuestOs* os;
        ~Idle() {
          std::lock_guard<std::mutex> lock(os->mu_);
          os->agent_busy_ = false;
          os->cv_.notify_all();
        }
      } idle{this};
      const uint32_t seq = mb->request_seq.load(std::memory_order_acquire);
      if (seq == mb->response_seq.load()) continue;
      // The host wrote these bytes: treat them as untrusted input.
      TokenRequest req;
      req.module = Bounded(mb->module, sizeof mb->module);
      req.procedure = Bounded(mb->procedure, sizeof mb->procedure);
      req.budget = {mb->budget_bytes, mb->budget_time_ms};
      auto token = authority->Mint(req);
      if (token.ok()) {
        std::memcpy(mb->token, token->data(), Token::kWireSize);
        mb->code = 0;
        mb->message[0] = 0;
      } else {
        mb->code = static_cast<int32_t>(token.status().code());
        const std::string& m = token.status().message();
        const size_t n = std::min(m.size(), sizeof mb->message - 1);
        std::memcpy(mb->message, m.data(), n);
        mb->message[n] = 0;
      }
      mb->response_seq.store(seq, std::memory_order_release);
      (void)to_host->Ring();
    }
  });
}

}  // namespace emu
CPC_NAMESPACE_END
