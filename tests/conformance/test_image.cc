// A CVM image for tests: the production modules plus a dishonest one ("hog"
// spins without ever yielding). Being another executable, it also has
// another launch measurement than cpc-cvm.
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
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--cpc-cvm") != 0) return 2;
  return cpc::emu::RunCvm(
      cpc::MakeEmulatedPlatform, [](cpc::ModuleRegistry& r) -> cpc::Status {
        CPC_RETURN_IF_ERROR(cpc::InstallBuiltinModules(r));
        CPC_RETURN_IF_ERROR(r.Register(std::make_unique<SealProbe>()));
        return r.Register(std::make_unique<Hog>());
      });
}
