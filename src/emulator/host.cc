#include "emulator/host.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>

#include "core/log.h"
#include "emulator/channel.h"
#include "emulator/memory.h"
#include "emulator/protocol.h"
#include "emulator/shared.h"

extern char** environ;

CPC_NAMESPACE_BEGIN
namespace emu {

namespace {
constexpr int kLaunchTimeoutMs = 180'000;
constexpr int kControlTimeoutMs = 30'000;
constexpr int kAgentTimeoutMs = 10'000;
constexpr uint64_t kDefaultSharedBytes = 8ull << 20;

// A request on the VM channel and its reply: the CVM's Status, and whatever
// payload and fds follow it (a transport failure is returned as a Status too).
Status Call(Channel& ch, uint16_t type, std::span<const uint8_t> payload,
            std::vector<uint8_t>* extra = nullptr,
            std::vector<Fd>* fds = nullptr,
            std::span<const int> send_fds = {}) {
  CPC_RETURN_IF_ERROR(ch.Send(type, payload, send_fds));
  CPC_ASSIGN_OR_RETURN(Message m, ch.Recv(kControlTimeoutMs));
  if (m.type != kMsgReply)
    return Status(Code::kIoError, "unexpected reply from the CVM");
  ByteReader r(m.payload);
  Status s = DecodeStatus(r);
  if (extra != nullptr) extra->assign(r.rest().begin(), r.rest().end());
  if (fds != nullptr) *fds = std::move(m.fds);
  return s;
}

bool Executable(const std::string& path) {
  return !path.empty() && ::access(path.c_str(), X_OK) == 0;
}
}  // namespace

struct EmulatedBackend::Cvm {
  pid_t pid = -1;
  bool reaped = false;
  std::atomic<bool> paused{false};
  std::mutex vm_mu;
  Channel vm;
  emu::SharedRegion shared;
  Doorbell to_guest, to_host;
  std::mutex mailbox_mu;
  struct Hv {
    uint32_t index;
    Isolation isolation;
    std::mutex mu;
    Channel ch;
  };
  std::mutex hv_mu;
  std::vector<std::unique_ptr<Hv>> hvcpus;
  LaunchedInfo info;

  Result<Hv*> FindHv(uint32_t index) {
    std::lock_guard<std::mutex> lock(hv_mu);
    for (auto& h : hvcpus)
      if (h->index == index) return h.get();
    return Status(Code::kNotFound, fmt::format("no hvCPU {}", index));
  }
  void Reap(bool force) {
    if (reaped || pid <= 0) return;
    for (int i = 0; i < 500; ++i) {
      int st;
      pid_t r = ::waitpid(pid, &st, WNOHANG);
      if (r == pid || (r < 0 && errno == ECHILD)) {
        reaped = true;
        return;
      }
      if (force && i == 0) ::kill(pid, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    reaped = true;
  }
};

EmulatedBackend::EmulatedBackend(std::string name, std::string image,
                                 uint64_t chip_seed)
    : name_(std::move(name)), image_(std::move(image)), chip_seed_(chip_seed) {}

EmulatedBackend::~EmulatedBackend() {
  std::vector<CvmHandle> handles;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [h, c] : cvms_) handles.push_back(h);
  }
  for (CvmHandle h : handles) (void)DestroyCvm(h);
}

Result<std::shared_ptr<EmulatedBackend::Cvm>> EmulatedBackend::Find(
    CvmHandle cvm) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cvms_.find(cvm);
  if (it == cvms_.end())
    return Status(Code::kNotFound, fmt::format("no CVM with handle {}", cvm));
  return it->second;
}

Result<CvmHandle> EmulatedBackend::LaunchCvm(const LaunchConfig& config) {
  if (config.memory_bytes < (16ull << 20) || config.memory_bytes % (2ull << 20))
    return Status(
        Code::kInvalidArgument,
        "guest memory must be a multiple of 2 MiB and at least 16 MiB");
  if (config.gvcpus == 0 || config.gvcpus > 64)
    return Status(Code::kInvalidArgument, "gvcpus must be 1..64");
  if (config.hvcpus.size() > 16)
    return Status(Code::kInvalidArgument, "at most 16 hvCPUs");
  const std::string image = config.image.empty() ? image_ : config.image;
  if (!Executable(image))
    return Status(Code::kInvalidArgument,
                  fmt::format("CVM image '{}' is not executable", image));

  auto cvm = std::make_shared<Cvm>();
  CPC_ASSIGN_OR_RETURN(auto pair, Channel::Pair());
  cvm->vm = std::move(pair.first);
  Channel child_end = std::move(pair.second);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, child_end.fd(), kVmChannelFd);
  std::string arg0 = image;
  std::string arg1 = "--cpc-cvm";
  char* argv[] = {arg0.data(), arg1.data(), nullptr};
  pid_t pid;
  int rc = ::posix_spawn(&pid, image.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0)
    return Status(Code::kIoError,
                  fmt::format("cannot start CVM image: {}", std::strerror(rc)),
                  rc);
  cvm->pid = pid;
  child_end = Channel();  // the child has its copy
  struct Cleanup {
    std::shared_ptr<Cvm>* c;
    bool armed = true;
    ~Cleanup() {
      if (armed) (*c)->Reap(true);
    }
  } cleanup{&cvm};

  LaunchParams params;
  params.platform = name_;
  params.config = config;
  params.config.image = image;
  params.shared_bytes = kDefaultSharedBytes;
  if (auto it = config.options.find("shared_mib"); it != config.options.end())
    params.shared_bytes = std::stoull(it->second) << 20;
  params.chip_seed = chip_seed_;
  CPC_RETURN_IF_ERROR(cvm->vm.Send(kMsgLaunch, params.Encode()));
  auto reply = cvm->vm.Recv(kLaunchTimeoutMs);
  if (!reply.ok())
    return reply.status().WithContext("CVM launch (process exited or hung)");
  ByteReader r(reply->payload);
  Status launched = DecodeStatus(r);
  if (!launched.ok()) return launched.WithContext("CVM launch");
  if (reply->type != kMsgLaunched ||
      reply->fds.size() != 3 + config.hvcpus.size())
    return Status(Code::kIoError, "malformed launch reply");
  CPC_ASSIGN_OR_RETURN(cvm->info, LaunchedInfo::Decode(r.rest()));
  CPC_ASSIGN_OR_RETURN(cvm->shared,
                       emu::SharedRegion::Map(std::move(reply->fds[0])));
  cvm->to_guest = Doorbell(std::move(reply->fds[1]));
  cvm->to_host = Doorbell(std::move(reply->fds[2]));
  for (size_t i = 0; i < config.hvcpus.size(); ++i) {
    auto hv = std::make_unique<Cvm::Hv>();
    hv->index = config.hvcpus[i].index;
    hv->isolation = cvm->info.hvcpu_isolation.at(i);
    hv->ch = Channel(std::move(reply->fds[3 + i]));
    cvm->hvcpus.push_back(std::move(hv));
  }
  cleanup.armed = false;
  std::lock_guard<std::mutex> lock(mu_);
  const CvmHandle h = next_++;
  cvms_[h] = std::move(cvm);
  return h;
}

Status EmulatedBackend::DestroyCvm(CvmHandle handle) {
  std::shared_ptr<Cvm> cvm;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cvms_.find(handle);
    if (it == cvms_.end())
      return Status(Code::kNotFound,
                    fmt::format("no CVM with handle {}", handle));
    cvm = std::move(it->second);
    cvms_.erase(it);
  }
  {
    std::lock_guard<std::mutex> lock(cvm->vm_mu);
    if (!cvm->reaped) (void)Call(cvm->vm, kMsgShutdown, {});
  }
  cvm->Reap(false);
  return Status::Ok();
}

Status EmulatedBackend::Kill(CvmHandle handle) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  ::kill(cvm->pid, SIGKILL);
  cvm->Reap(false);
  return Status::Ok();
}

Result<uint32_t> EmulatedBackend::CreateHvcpu(CvmHandle handle,
                                              const HvcpuConfig& config) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  std::vector<uint8_t> req;
  ByteWriter w(&req);
  w.Int<uint32_t>(config.index);
  w.Int<uint8_t>(static_cast<uint8_t>(config.isolation));
  std::vector<uint8_t> extra;
  std::vector<Fd> fds;
  Status s;
  {
    std::lock_guard<std::mutex> lock(cvm->vm_mu);
    s = Call(cvm->vm, kMsgCreateHvcpu, req, &extra, &fds);
  }
  if (!s.ok()) return s;
  if (fds.size() != 1 || extra.size() != 1)
    return Status(Code::kIoError, "malformed hvCPU creation reply");
  auto hv = std::make_unique<Cvm::Hv>();
  hv->index = config.index;
  hv->isolation = static_cast<Isolation>(extra[0] != 0);
  hv->ch = Channel(std::move(fds[0]));
  std::lock_guard<std::mutex> lock(cvm->hv_mu);
  cvm->hvcpus.push_back(std::move(hv));
  return config.index;
}

Result<HvcpuExit> EmulatedBackend::ScheduleHvcpu(CvmHandle handle,
                                                 uint32_t hvcpu,
                                                 const HvcpuEntry& entry) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  CPC_ASSIGN_OR_RETURN(Cvm::Hv * hv, cvm->FindHv(hvcpu));
  std::lock_guard<std::mutex> lock(hv->mu);
  CPC_RETURN_IF_ERROR(hv->ch.Send(kMsgEnter, EncodeEntry(entry)));
  // The hvCPU returns within its slice (+ the runtime's preemption grace);
  // an entry without a slice may run as long as the call needs.
  auto m = hv->ch.Recv(-1);
  if (!m.ok()) return m.status().WithContext(fmt::format("hvCPU {}", hvcpu));
  if (m->type == kMsgReply) {
    ByteReader r(m->payload);
    Status s = DecodeStatus(r);
    return s.ok() ? Status(Code::kIoError, "empty reply to an hvCPU entry") : s;
  }
  if (m->type != kMsgExit)
    return Status(Code::kIoError, "unexpected hvCPU message");
  return DecodeExit(m->payload);
}

Result<cpc::SharedRegion> EmulatedBackend::MapSharedRegion(CvmHandle handle) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  return cvm->shared.View();
}

Result<uint64_t> EmulatedBackend::AttachSharedFile(CvmHandle handle, int fd) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  if (fd < 0) return Status(Code::kInvalidArgument, "bad file descriptor");
  std::lock_guard<std::mutex> lock(cvm->vm_mu);
  std::vector<uint8_t> extra;
  CPC_RETURN_IF_ERROR(
      Call(cvm->vm, kMsgAttachFile, {}, &extra, nullptr, std::span(&fd, 1)));
  ByteReader r(extra);
  const uint64_t size = r.Int<uint64_t>();
  if (!r.done()) return Status(Code::kIoError, "bad attach reply");
  return size;
}

Status EmulatedBackend::DetachSharedFile(CvmHandle handle) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  std::lock_guard<std::mutex> lock(cvm->vm_mu);
  return Call(cvm->vm, kMsgDetachFile, {});
}

Status EmulatedBackend::PauseGuest(CvmHandle handle) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  std::lock_guard<std::mutex> lock(cvm->vm_mu);
  Status s = Call(cvm->vm, kMsgPause, {});
  if (s.ok()) cvm->paused = true;
  return s;
}

Status EmulatedBackend::ResumeGuest(CvmHandle handle) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  std::lock_guard<std::mutex> lock(cvm->vm_mu);
  Status s = Call(cvm->vm, kMsgResume, {});
  if (s.ok()) cvm->paused = false;
  return s;
}

Result<std::vector<Gpa>> EmulatedBackend::ReadDirtyLog(CvmHandle handle,
                                                       bool rearm) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  // The CVM owns the write-protect marks (its platform tracks written pages
  // from the same marks); the host asks for its own bitmap, chunk by chunk.
  const uint64_t pages = cvm->info.memory_bytes >> kPageShift;
  std::vector<Gpa> out;
  std::lock_guard<std::mutex> lock(cvm->vm_mu);
  for (uint64_t first = 0; first < pages; first += kDirtyLogChunkPages) {
    const uint64_t n = std::min(kDirtyLogChunkPages, pages - first);
    std::vector<uint8_t> req;
    ByteWriter w(&req);
    w.Int<uint8_t>(rearm ? 1 : 0);
    w.Int<uint64_t>(first);
    w.Int<uint64_t>(n);
    std::vector<uint8_t> extra;
    CPC_RETURN_IF_ERROR(
        Call(cvm->vm, kMsgDirtyLog, req, &extra).WithContext("dirty log"));
    ByteReader r(extra);
    const uint64_t got_first = r.Int<uint64_t>();
    const uint64_t got_pages = r.Int<uint64_t>();
    const uint64_t words = (n + 63) / 64;
    auto raw = r.Bytes(words * sizeof(uint64_t));
    if (!r.done() || got_first != first || got_pages != n)
      return Status(Code::kIoError, "malformed dirty log reply");
    std::vector<uint64_t> bits(words);
    std::memcpy(bits.data(), raw.data(), raw.size());
    AppendSetPages(bits, first, &out);
  }
  return out;
}

Result<std::vector<uint8_t>> EmulatedBackend::RequestToken(
    CvmHandle handle, const TokenRequest& request) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  if (cvm->paused)
    return Status(Code::kFailedPrecondition,
                  "the guest is paused: its agent cannot answer; request "
                  "tokens before pausing");
  std::lock_guard<std::mutex> lock(cvm->mailbox_mu);
  return RequestTokenFromAgent(cvm->shared, cvm->to_guest, cvm->to_host,
                               request, kAgentTimeoutMs, cvm->vm.fd());
}

Status EmulatedBackend::ThrottleGuest(CvmHandle handle, double fraction) {
  if (!(fraction >= 0.0 && fraction <= 0.99))
    return Status(
        Code::kInvalidArgument,
        fmt::format("throttle fraction {} is outside [0, 0.99]", fraction));
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  std::vector<uint8_t> req;
  ByteWriter(&req).Int<uint32_t>(
      static_cast<uint32_t>(std::lround(fraction * 1000.0)));
  std::lock_guard<std::mutex> lock(cvm->vm_mu);
  return Call(cvm->vm, kMsgThrottle, req);
}

Status EmulatedBackend::GuestOsAccess(CvmHandle handle, Gpa gpa, bool write) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  std::vector<uint8_t> req;
  ByteWriter w(&req);
  w.Int<uint64_t>(gpa);
  w.Int<uint8_t>(write ? 1 : 0);
  std::lock_guard<std::mutex> lock(cvm->vm_mu);
  return Call(cvm->vm, kMsgGuestAccess, req);
}

Result<LaunchedInfo> EmulatedBackend::Info(CvmHandle handle) {
  CPC_ASSIGN_OR_RETURN(auto cvm, Find(handle));
  return cvm->info;
}

std::string DefaultCvmImage() {
  if (const char* env = std::getenv("CPC_CVM_IMAGE"); env && *env) return env;
  char self[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = 0;
    std::string dir(self);
    dir.resize(dir.rfind('/') + 1);
    if (Executable(dir + "cpc-cvm")) return dir + "cpc-cvm";
  }
#ifdef CPC_BUILD_CVM_IMAGE
  if (Executable(CPC_BUILD_CVM_IMAGE)) return CPC_BUILD_CVM_IMAGE;
#endif
#ifdef CPC_INSTALL_CVM_IMAGE
  return CPC_INSTALL_CVM_IMAGE;
#else
  return "cpc-cvm";
#endif
}

EmulatedBackendFactory::EmulatedBackendFactory(
    std::string name, std::string description,
    std::vector<ProbeFact> (*platform_probe)())
    : name_(std::move(name)),
      description_(std::move(description)),
      platform_probe_(platform_probe) {}

std::vector<ProbeFact> EmulatedBackendFactory::Probe() const {
  std::vector<ProbeFact> facts;
  const std::string image = DefaultCvmImage();
  facts.push_back({"cvm image", Executable(image), image});
  Status dirty = ProbeDirtyTracking();
  facts.push_back({"dirty log (uffd-wp + PAGEMAP_SCAN)", dirty.ok(),
                   dirty.ok() ? "4 KiB granularity" : dirty.ToString()});
  utsname u;
  ::uname(&u);
  facts.push_back({"kernel", true, fmt::format("{} {}", u.sysname, u.release)});
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode;
  std::getline(thp, mode);
  facts.push_back({"transparent huge pages",
                   mode.find("[never]") == std::string::npos,
                   mode.empty() ? "unknown" : mode});
  if (platform_probe_ != nullptr)
    for (auto& f : platform_probe_()) facts.push_back(std::move(f));
  return facts;
}

bool EmulatedBackendFactory::Available() const {
  for (const auto& f : Probe())
    if (!f.pass && f.name != "transparent huge pages") return false;
  return true;
}

Result<std::unique_ptr<Backend>> EmulatedBackendFactory::Create(
    const BackendOptions& options) const {
  std::string image = DefaultCvmImage();
  uint64_t seed = 1;
  for (const auto& [k, v] : options) {
    if (k == "image") {
      image = v;
    } else if (k == "chip_seed") {
      char* end = nullptr;
      seed = std::strtoull(v.c_str(), &end, 0);
      if (end == v.c_str() || *end != 0)
        return Status(Code::kBackendMisconfigured,
                      fmt::format("chip_seed '{}' is not a number", v));
    } else {
      return Status(
          Code::kBackendMisconfigured,
          fmt::format("unknown option '{}' (known: image, chip_seed)", k));
    }
  }
  if (!Executable(image))
    return Status(Code::kBackendMisconfigured,
                  fmt::format("CVM image '{}' is not executable", image));
  return std::unique_ptr<Backend>(new EmulatedBackend(name_, image, seed));
}

}  // namespace emu
CPC_NAMESPACE_END
