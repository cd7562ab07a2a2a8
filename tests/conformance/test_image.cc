// A CVM image for tests: the production modules plus a dishonest one ("hog"
// spins without ever yielding) and probes of the guest face ("sealprobe",
// "probe"). Being another executable, it also has another launch
// measurement than cpc-cvm.
#include <atomic>
#include <cstring>

#include <cpc/policy.h>

#include "backends/builtin.h"
#include "emulator/cvm.h"
#include "modules/builtin.h"

namespace {
class Hog final : public cpc::Module {
 public:
  std::string_view name() const override { return "hog"; }
  std::vector<std::string> procedures() const override { return {"spin"}; }
  cpc::Isolation isolation() const override { return cpc::Isolation::kPlain; }
  cpc::Status Run(cpc::CallContext& ctx) override {
    ctx.SetWorkSize(1 << 20);
    std::atomic<uint64_t> n{0};
    for (;;) n.fetch_add(1, std::memory_order_relaxed);
  }
};
// Reveals a commitment to the sealing key (tests only: SHA-256 of the key
// derived for the argument as context).
class SealProbe final : public cpc::Module {
 public:
  std::string_view name() const override { return "sealprobe"; }
  std::vector<std::string> procedures() const override { return {"probe"}; }
  cpc::Isolation isolation() const override { return cpc::Isolation::kPlain; }
  cpc::Status Run(cpc::CallContext& ctx) override {
    CPC_ASSIGN_OR_RETURN(auto key, ctx.platform().SealingKey(ctx.args()));
    const cpc::Digest d = cpc::Sha256(key.span());
    ctx.SetOutput(std::vector<uint8_t>(d.begin(), d.end()));
    return cpc::Status::Ok();
  }
};
// Calls the migration-support methods of the guest face and returns what
// they return (tests only):
//   written           -> TakeWrittenPages(), as u64 LE GPAs
//   runnable  u8      -> SetGuestOsRunnable(arg != 0)
//   evidence  rd[64]  -> AttestationEvidence(rd)
//   verify    rd[64] || evidence -> VerifyPeerEvidence(evidence, rd)
//   file      u64 off, u64 len  -> u64 size of CallContext::shared_file(),
//                                  then its bytes [off, off + len)
class PlatformProbe final : public cpc::Module {
 public:
  std::string_view name() const override { return "probe"; }
  std::vector<std::string> procedures() const override {
    return {"written", "runnable", "evidence", "verify", "file"};
  }
  cpc::Isolation isolation() const override { return cpc::Isolation::kPlain; }
  cpc::Status Run(cpc::CallContext& ctx) override {
    cpc::GuestPlatform& p = ctx.platform();
    const auto args = ctx.args();
    const std::string_view proc = ctx.procedure();
    if (proc == "written") {
      CPC_ASSIGN_OR_RETURN(auto pages, p.TakeWrittenPages());
      std::vector<uint8_t> out(pages.size() * 8);
      for (size_t i = 0; i < pages.size(); ++i)
        for (int b = 0; b < 8; ++b)
          out[i * 8 + b] = static_cast<uint8_t>(pages[i] >> (8 * b));
      ctx.SetOutput(std::move(out));
      return cpc::Status::Ok();
    }
    if (proc == "file") {
      if (args.size() != 16)
        return cpc::Status(cpc::Code::kInvalidArgument, "u64 off, u64 len");
      uint64_t off = 0, len = 0;
      std::memcpy(&off, args.data(), 8);
      std::memcpy(&len, args.data() + 8, 8);
      const auto file = ctx.shared_file();
      if (off > file.size() || len > file.size() - off)
        return cpc::Status(cpc::Code::kInvalidArgument,
                           "beyond the shared file");
      std::vector<uint8_t> out(8 + len);
      const uint64_t size = file.size();
      std::memcpy(out.data(), &size, 8);
      if (len > 0) std::memcpy(out.data() + 8, file.data() + off, len);
      ctx.SetOutput(std::move(out));
      return cpc::Status::Ok();
    }
    if (proc == "runnable") {
      if (args.size() != 1)
        return cpc::Status(cpc::Code::kInvalidArgument, "one byte");
      return p.SetGuestOsRunnable(args[0] != 0);
    }
    if (args.size() < 64)
      return cpc::Status(cpc::Code::kInvalidArgument, "report_data[64] first");
    std::span<const uint8_t, 64> rd(args.data(), 64);
    if (proc == "evidence") {
      CPC_ASSIGN_OR_RETURN(auto evidence, p.AttestationEvidence(rd));
      ctx.SetOutput(std::move(evidence));
      return cpc::Status::Ok();
    }
    return p.VerifyPeerEvidence(args.subspan(64), rd);
  }
};
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--cpc-cvm") != 0) return 2;
  return cpc::emu::RunCvm(
      cpc::MakeEmulatedPlatform, [](cpc::ModuleRegistry& r) -> cpc::Status {
        CPC_RETURN_IF_ERROR(cpc::InstallBuiltinModules(r));
        CPC_RETURN_IF_ERROR(r.Register(std::make_unique<SealProbe>()));
        CPC_RETURN_IF_ERROR(r.Register(std::make_unique<PlatformProbe>()));
        return r.Register(std::make_unique<Hog>());
      });
}
