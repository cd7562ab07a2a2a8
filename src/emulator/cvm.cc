#include "emulator/cvm.h"

#include <bit>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cpc/policy.h>
#include <cpc/runtime.h>
#include <cpc/token.h>

#include "core/log.h"
#include "emulator/channel.h"
#include "emulator/guest_os.h"
#include "emulator/launch.h"
#include "emulator/memory.h"
#include "emulator/protocol.h"
#include "emulator/shared.h"

CPC_NAMESPACE_BEGIN
namespace emu {

namespace {

Result<Digest> HashFile(const char* path) {
  Fd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status(Code::kIoError, "cannot open the CVM image");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<uint8_t> buf(1 << 20);
  ssize_t n;
  while ((n = ::read(fd.get(), buf.data(), buf.size())) > 0)
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
  Digest d{};
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, d.data(), &len);
  EVP_MD_CTX_free(ctx);
  if (n < 0) return Status(Code::kIoError, "cannot read the CVM image");
  return d;
}

Status Reply(Channel& ch, const Status& s, std::span<const uint8_t> extra = {},
             std::span<const int> fds = {}) {
  std::vector<uint8_t> out;
  ByteWriter w(&out);
  EncodeStatus(w, s);
  w.Bytes(extra);
  return ch.Send(kMsgReply, out, fds);
}

// The guest face the CPC runtime and its modules see: the platform model,
// plus what the emulated machine itself provides for every platform - the
// written-page record (the write tracker's platform bitmap, which the host's
// dirty log cannot clear) and the gvCPUs' right to run.
class MachinePlatform final : public GuestPlatformWrapper {
 public:
  MachinePlatform(EmulatedPlatform* platform, GuestMemory* memory,
                  GuestOs* guest_os)
      : GuestPlatformWrapper(platform), memory_(memory), guest_os_(guest_os) {}

  Result<std::vector<Gpa>> TakeWrittenPages() override {
    CPC_ASSIGN_OR_RETURN(WriteTracker * t, memory_->StartTracking());
    const GpaRange os = GuestOsMemory();
    return t->TakeWritten({os.base, os.pages});
  }
  Status SetGuestOsRunnable(bool runnable) override {
    return guest_os_->SetRunnable(runnable);
  }

  // The frozen view is the machine's too: uffd write-protect stands for the
  // platform's revoked write permission, its handler for the fault path.
  Status BeginFrozenView() override {
    if (!guest_os_->paused())
      return Status(Code::kFailedPrecondition,
                    "a frozen view begins with the gvCPUs paused");
    return memory_->BeginFrozenView(GuestOsMemory());
  }
  Status PinFrozenPages(std::span<const Gpa> gpas,
                        std::span<const uint8_t*> out) override {
    // The platform's own access check still applies to every page.
    for (const Gpa gpa : gpas)
      CPC_RETURN_IF_ERROR(PrivatePageForRead(gpa).status());
    return memory_->PinFrozen(gpas, out);
  }
  void ReleaseFrozenPages(std::span<const Gpa> gpas) override {
    memory_->ReleaseFrozen(gpas);
  }
  Result<uint64_t> EndFrozenView() override { return memory_->EndFrozenView(); }

 private:
  GuestMemory* const memory_;
  GuestOs* const guest_os_;
};

// One hvCPU: its runtime and the thread serving its channel.
struct Hvcpu {
  std::unique_ptr<HvcpuRuntime> runtime;
  Channel channel;
  std::thread server;
};

class Cvm {
 public:
  Cvm(const PlatformFactory& platforms, const ModuleInstaller& installer)
      : platforms_(platforms), installer_(installer), vm_(Fd(kVmChannelFd)) {}
  ~Cvm() {
    for (auto& h : hvcpus_) {
      ::shutdown(h->channel.fd(), SHUT_RDWR);
      if (h->server.joinable()) h->server.join();
    }
    hvcpus_.clear();
    guest_os_.reset();
  }

  int Run() {
    auto launch = Launch();
    if (!launch.ok()) {
      (void)Reply(vm_, launch);
      return 1;
    }
    return Serve();
  }

 private:
  Status Launch() {
    CPC_ASSIGN_OR_RETURN(Message m, vm_.Recv());
    if (m.type != kMsgLaunch)
      return Status(Code::kInvalidArgument, "expected a launch message");
    CPC_ASSIGN_OR_RETURN(LaunchParams params, LaunchParams::Decode(m.payload));
    CPC_ASSIGN_OR_RETURN(platform_, platforms_(params.platform));
    CPC_ASSIGN_OR_RETURN(TenantPolicy policy,
                         TenantPolicy::Parse(params.config.policy));
    CPC_ASSIGN_OR_RETURN(WorkloadConfig workload,
                         WorkloadConfig::FromOptions(params.config.options));
    const bool track = params.config.options.count("dirty_tracking") == 0 ||
                       params.config.options.at("dirty_tracking") != "off";
    CPC_ASSIGN_OR_RETURN(
        memory_, GuestMemory::Create(params.config.memory_bytes, track));

    LaunchInfo info;
    CPC_ASSIGN_OR_RETURN(info.image_digest, HashFile("/proc/self/exe"));
    info.policy = params.config.policy;
    info.hvcpus = params.config.hvcpus;
    info.gvcpus = params.config.gvcpus;
    for (uint32_t i = 0; i < info.gvcpus; ++i)
      info.gvcpu_regs.push_back(GuestOs::InitialRegs(i));
    info.chip_seed = params.chip_seed;
    const Gpa cpc_base = memory_->size() - kCpcRegionBytes;
    CPC_RETURN_IF_ERROR(platform_->Launch(memory_.get(), cpc_base, info));

    guest_os_ =
        std::make_unique<GuestOs>(memory_.get(), platform_.get(), cpc_base,
                                  params.config.gvcpus, workload);
    CPC_RETURN_IF_ERROR(guest_os_->Boot());
    if (auto it = params.config.options.find("agent.deny");
        it != params.config.options.end())
      guest_os_->DenyModule(it->second);
    machine_platform_ = std::make_unique<MachinePlatform>(
        platform_.get(), memory_.get(), guest_os_.get());

    authority_ = std::make_unique<TokenAuthority>(
        platform_->identity(), std::move(policy), guest_os_.get());
    CPC_RETURN_IF_ERROR(installer_(modules_));
    CPC_ASSIGN_OR_RETURN(shared_, SharedRegion::Create(params.shared_bytes));
    CPC_ASSIGN_OR_RETURN(to_guest_, Doorbell::Create());
    CPC_ASSIGN_OR_RETURN(to_host_, Doorbell::Create());

    std::vector<int> fds = {shared_.fd(), to_guest_.fd(), to_host_.fd()};
    std::vector<Channel> host_ends;
    for (const HvcpuConfig& hc : params.config.hvcpus) {
      CPC_ASSIGN_OR_RETURN(Channel host_end, AddHvcpu(hc, false));
      host_ends.push_back(std::move(host_end));
    }
    for (auto& c : host_ends) fds.push_back(c.fd());

    LaunchedInfo li;
    li.identity = platform_->identity();
    li.pid = ::getpid();
    li.guest_base = reinterpret_cast<uint64_t>(memory_->base());
    li.memory_bytes = memory_->size();
    li.cpc_base = cpc_base;
    for (const auto& h : hvcpus_)
      li.hvcpu_isolation.push_back(h->runtime->isolation());
    auto payload = li.Encode();
    std::vector<uint8_t> msg;
    ByteWriter w(&msg);
    EncodeStatus(w, Status::Ok());
    w.Bytes(payload);
    CPC_RETURN_IF_ERROR(vm_.Send(kMsgLaunched, msg, fds));

    guest_os_->Start();
    guest_os_->StartAgent(authority_.get(), &shared_, &to_guest_, &to_host_);
    CPC_LOG_INFO("CVM up: {} MiB, {} gvCPUs, {} hvCPUs", memory_->size() >> 20,
                 params.config.gvcpus, hvcpus_.size());
    return Status::Ok();
  }

  Result<Channel> AddHvcpu(const HvcpuConfig& hc, bool after_launch) {
    for (const auto& h : hvcpus_)
      if (h->runtime->index() == hc.index)
        return Status(Code::kAlreadyExists,
                      fmt::format("hvCPU {} exists", hc.index));
    CPC_ASSIGN_OR_RETURN(Isolation iso,
                         platform_->CreateHvcpu(hc, after_launch));
    CPC_ASSIGN_OR_RETURN(auto pair, Channel::Pair());
    auto h = std::make_unique<Hvcpu>();
    h->runtime = std::make_unique<HvcpuRuntime>(
        hc.index, iso,
        RuntimeServices{
            authority_.get(), &modules_, machine_platform_.get(),
            std::span<uint8_t>(shared_.View().base, shared_.View().size),
            [this] { return shared_files_.Current(); }});
    h->channel = std::move(pair.first);
    Hvcpu* raw = h.get();
    h->server = std::thread([raw] { ServeHvcpu(raw); });
    hvcpus_.push_back(std::move(h));
    return std::move(pair.second);
  }

  static void ServeHvcpu(Hvcpu* h) {
    for (;;) {
      auto m = h->channel.Recv();
      if (!m.ok()) return;  // host closed the vCPU fd
      if (m->type != kMsgEnter) {
        (void)Reply(h->channel,
                    Status(Code::kInvalidArgument, "expected enter"));
        continue;
      }
      auto entry = DecodeEntry(m->payload);
      Result<HvcpuExit> exit = entry.ok() ? h->runtime->Enter(*entry)
                                          : Result<HvcpuExit>(entry.status());
      if (!exit.ok()) {
        (void)Reply(h->channel, exit.status());
        continue;
      }
      // An exit the channel cannot carry (output above kMaxMessage) is
      // reported as an error rather than leaving the host waiting.
      Status sent = h->channel.Send(kMsgExit, EncodeExit(*exit));
      if (!sent.ok() && !Reply(h->channel, sent.WithContext("hvCPU exit")).ok())
        return;
    }
  }

  int Serve() {
    for (;;) {
      auto m = vm_.Recv();
      if (!m.ok()) return 0;  // the host went away: the CVM stops
      ByteReader r(m->payload);
      switch (m->type) {
        case kMsgCreateHvcpu: {
          HvcpuConfig hc;
          hc.index = r.Int<uint32_t>();
          hc.isolation = static_cast<Isolation>(r.Int<uint8_t>() != 0);
          auto ch = AddHvcpu(hc, true);
          if (!ch.ok()) {
            (void)Reply(vm_, ch.status());
          } else {
            std::vector<uint8_t> extra;
            ByteWriter(&extra).Int<uint8_t>(
                static_cast<uint8_t>(hvcpus_.back()->runtime->isolation()));
            int fd = ch->fd();
            (void)Reply(vm_, Status::Ok(), extra, std::span(&fd, 1));
          }
          break;
        }
        case kMsgPause:
          (void)Reply(vm_, guest_os_->Pause());
          break;
        case kMsgResume:
          (void)Reply(vm_, guest_os_->Resume());
          break;
        case kMsgThrottle: {
          const uint32_t permille = r.Int<uint32_t>();
          (void)Reply(
              vm_, r.done() ? guest_os_->Throttle(permille)
                            : Status(Code::kInvalidArgument, "bad throttle"));
          break;
        }
        case kMsgDirtyLog:
          ServeDirtyLog(r);
          break;
        case kMsgAttachFile: {
          if (m->fds.size() != 1) {
            (void)Reply(vm_, Status(Code::kInvalidArgument,
                                    "attach needs exactly one file"));
            break;
          }
          auto size = shared_files_.Attach(std::move(m->fds[0]));
          std::vector<uint8_t> extra;
          if (size.ok()) ByteWriter(&extra).Int<uint64_t>(*size);
          (void)Reply(vm_, size.status(), extra);
          break;
        }
        case kMsgDetachFile:
          shared_files_.Detach();
          (void)Reply(vm_, Status::Ok());
          break;
        case kMsgGuestAccess: {
          const Gpa gpa = r.Int<uint64_t>();
          const bool write = r.Int<uint8_t>() != 0;
          (void)Reply(vm_, r.done()
                               ? guest_os_->Access(gpa, write)
                               : Status(Code::kInvalidArgument, "bad access"));
          break;
        }
        case kMsgShutdown:
          (void)Reply(vm_, Status::Ok());
          return 0;
        default:
          (void)Reply(vm_, Status(Code::kInvalidArgument,
                                  fmt::format("unknown message {}", m->type)));
      }
    }
  }

  // The host's dirty log: the tracker's host bitmap for one chunk of pages.
  void ServeDirtyLog(ByteReader& r) {
    const bool rearm = r.Int<uint8_t>() != 0;
    const uint64_t first = r.Int<uint64_t>();
    const uint64_t pages = r.Int<uint64_t>();
    if (!r.done() || pages > kDirtyLogChunkPages) {
      (void)Reply(vm_, Status(Code::kInvalidArgument, "bad dirty log request"));
      return;
    }
    auto t = memory_->StartTracking();
    if (!t.ok()) {
      (void)Reply(vm_, t.status());
      return;
    }
    auto bits = (*t)->ReadHostLog(first, pages, rearm);
    if (!bits.ok()) {
      (void)Reply(vm_, bits.status());
      return;
    }
    static_assert(std::endian::native == std::endian::little);
    std::vector<uint8_t> extra;
    ByteWriter w(&extra);
    w.Int<uint64_t>(first);
    w.Int<uint64_t>(pages);
    w.Bytes({reinterpret_cast<const uint8_t*>(bits->data()),
             bits->size() * sizeof(uint64_t)});
    (void)Reply(vm_, Status::Ok(), extra);
  }

  const PlatformFactory& platforms_;
  const ModuleInstaller& installer_;
  Channel vm_;
  std::unique_ptr<EmulatedPlatform> platform_;
  std::unique_ptr<GuestMemory> memory_;
  std::unique_ptr<GuestOs> guest_os_;
  std::unique_ptr<MachinePlatform> machine_platform_;
  std::unique_ptr<TokenAuthority> authority_;
  ModuleRegistry modules_;
  SharedRegion shared_;
  SharedFiles shared_files_;
  Doorbell to_guest_, to_host_;
  std::vector<std::unique_ptr<Hvcpu>> hvcpus_;
};

}  // namespace

int RunCvm(const PlatformFactory& platforms, const ModuleInstaller& modules) {
  Cvm cvm(platforms, modules);
  return cvm.Run();
}

}  // namespace emu
CPC_NAMESPACE_END
