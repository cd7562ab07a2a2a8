#include "modules/attest.h"

#include <cpc/backend.h>

CPC_NAMESPACE_BEGIN

namespace {
class AttestModule final : public Module {
 public:
  std::string_view name() const override { return "attest"; }
  std::vector<std::string> procedures() const override { return {"report"}; }
  Isolation isolation() const override { return Isolation::kPlain; }
  Status Run(CallContext& ctx) override {
    if (ctx.args().size() != 64)
      return Status(Code::kInvalidArgument, "attest.report takes 64 bytes");
    CPC_ASSIGN_OR_RETURN(
        auto report, ctx.platform().AttestationReport(
                         std::span<const uint8_t, 64>(ctx.args().data(), 64)));
    ctx.SetOutput(std::move(report));
    return Status::Ok();
  }
};
}  // namespace

std::unique_ptr<Module> MakeAttestModule() {
  return std::make_unique<AttestModule>();
}

CPC_NAMESPACE_END
