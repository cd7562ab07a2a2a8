#include "modules/audit.h"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <cpc/backend.h>

#include "core/bytes.h"

CPC_NAMESPACE_BEGIN

namespace {
constexpr uint64_t kBatchPages = 256;

class AuditModule final : public Module {
 public:
  std::string_view name() const override { return "audit"; }
  std::vector<std::string> procedures() const override { return {"digest"}; }
  Isolation isolation() const override { return Isolation::kPlain; }

  Status Run(CallContext& ctx) override {
    ByteReader r(ctx.args());
    const Gpa first = r.Int<uint64_t>();
    const uint64_t pages = r.Int<uint64_t>();
    GuestPlatform& p = ctx.platform();
    if (!r.done() || first % kPageSize != 0 || pages == 0 ||
        first + pages * kPageSize > p.memory_bytes() ||
        first + pages * kPageSize < first)
      return Status(Code::kInvalidArgument,
                    "audit.digest wants a page-aligned in-range GPA range");
    ctx.SetWorkSize(pages * kPageSize);
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(),
                                                               EVP_MD_CTX_free);
    EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr);
    for (uint64_t done = 0; done < pages;) {
      const uint64_t n = std::min(kBatchPages, pages - done);
      CPC_RETURN_IF_ERROR(ctx.Charge(n * kPageSize));
      for (uint64_t i = 0; i < n; ++i) {
        const Gpa gpa = first + (done + i) * kPageSize;
        CPC_ASSIGN_OR_RETURN(auto page, p.PrivatePageForRead(gpa));
        EVP_DigestUpdate(md.get(), page.data(), page.size());
      }
      done += n;
      CPC_RETURN_IF_ERROR(ctx.MaybeYield());
    }
    std::vector<uint8_t> out(32);
    unsigned int len = 0;
    EVP_DigestFinal_ex(md.get(), out.data(), &len);
    ByteWriter(&out).Int<uint64_t>(pages);
    ctx.SetOutput(std::move(out));
    return Status::Ok();
  }
};
}  // namespace

std::unique_ptr<Module> MakeAuditModule() {
  return std::make_unique<AuditModule>();
}

std::vector<uint8_t> AuditArgs(Gpa first, uint64_t pages) {
  std::vector<uint8_t> a;
  ByteWriter w(&a);
  w.Int<uint64_t>(first);
  w.Int<uint64_t>(pages);
  return a;
}

CPC_NAMESPACE_END
