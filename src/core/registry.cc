#include <cstdlib>

#include <fmt/format.h>

#include <cpc/registry.h>

CPC_NAMESPACE_BEGIN

Module::~Module() = default;
CallContext::~CallContext() = default;
Operator::~Operator() = default;
BackendFactory::~BackendFactory() = default;

Status ModuleRegistry::Register(std::unique_ptr<Module> module) {
  if (!module || module->name().empty())
    return Status(Code::kInvalidArgument, "module has no name");
  if (module->procedures().empty())
    return Status(Code::kInvalidArgument,
                  fmt::format("module '{}' has no procedures", module->name()));
  std::lock_guard<std::mutex> lock(mu_);
  std::string name(module->name());
  if (modules_.count(name))
    return Status(Code::kAlreadyExists,
                  fmt::format("module '{}' already registered", name));
  modules_.emplace(std::move(name), std::move(module));
  return Status::Ok();
}

Result<Module*> ModuleRegistry::Find(std::string_view name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = modules_.find(name);
  if (it == modules_.end())
    return Status(Code::kNotFound, fmt::format("no module '{}'", name));
  return it->second.get();
}

std::vector<std::string> ModuleRegistry::Names() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [n, m] : modules_) out.push_back(n);
  return out;
}

std::string_view OperatorKindName(OperatorKind kind) {
  switch (kind) {
    case OperatorKind::kMee:
      return "MEE";
    case OperatorKind::kSee:
      return "SEE";
    case OperatorKind::kMdi:
      return "MDI";
    case OperatorKind::kSdi:
      return "SDI";
  }
  return "?";
}

Status OperatorRegistry::Register(std::shared_ptr<Operator> op) {
  if (!op || op->name().empty())
    return Status(Code::kInvalidArgument, "operator has no name");
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& o : ops_)
    if (o->name() == op->name())
      return Status(
          Code::kAlreadyExists,
          fmt::format("operator '{}' already registered", op->name()));
  ops_.push_back(std::move(op));
  return Status::Ok();
}

Result<std::shared_ptr<Operator>> OperatorRegistry::Find(
    OperatorKind kind) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& o : ops_)
    if (o->kind() == kind) return o;
  return Status(Code::kNotFound, fmt::format("no {} operator registered",
                                             OperatorKindName(kind)));
}

Result<std::shared_ptr<Operator>> OperatorRegistry::Find(
    std::string_view name) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& o : ops_)
    if (o->name() == name) return o;
  return Status(Code::kNotFound, fmt::format("no operator '{}'", name));
}

Status BackendRegistry::Register(std::unique_ptr<BackendFactory> factory) {
  if (!factory || factory->name().empty())
    return Status(Code::kInvalidArgument, "backend has no name");
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& f : factories_)
    if (f->name() == factory->name())
      return Status(Code::kAlreadyExists,
                    fmt::format("backend '{}' already registered", f->name()));
  factories_.push_back(std::move(factory));
  return Status::Ok();
}

std::vector<const BackendFactory*> BackendRegistry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<const BackendFactory*> out;
  for (const auto& f : factories_) out.push_back(f.get());
  return out;
}

Result<const BackendFactory*> BackendRegistry::Find(
    std::string_view name) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string known;
  for (const auto& f : factories_) {
    if (f->name() == name) return f.get();
    known += known.empty() ? "" : ", ";
    known += f->name();
  }
  return Status(Code::kBackendUnknown,
                fmt::format("no backend '{}' (built in: {})", name,
                            known.empty() ? "none" : known));
}

Result<std::unique_ptr<Backend>> BackendRegistry::Create(
    std::string_view name, const BackendOptions& options) const {
  std::string chosen(name);
  if (chosen.empty()) {
    if (const char* env = std::getenv("CPC_BACKEND"); env && *env) chosen = env;
  }
  const BackendFactory* factory = nullptr;
  if (chosen.empty()) {
    for (const BackendFactory* f : List())
      if (f->Available()) {
        factory = f;
        break;
      }
    if (factory == nullptr)
      return Status(Code::kBackendUnavailable,
                    "no built-in backend is available on this machine");
  } else {
    CPC_ASSIGN_OR_RETURN(factory, Find(chosen));
    if (!factory->Available()) {
      std::string failed;
      for (const auto& fact : factory->Probe())
        if (!fact.pass)
          failed += fmt::format("{}{} ({})", failed.empty() ? "" : "; ",
                                fact.name, fact.info);
      return Status(Code::kBackendUnavailable,
                    fmt::format("backend '{}' cannot run here: {}", chosen,
                                failed.empty() ? "unavailable" : failed));
    }
  }
  auto backend = factory->Create(options);
  if (!backend.ok()) {
    const Status& s = backend.status();
    if (s.code() == Code::kBackendMisconfigured) return s;
    return Status(
        Code::kBackendMisconfigured,
        fmt::format("backend '{}': {}", factory->name(), s.ToString()),
        s.subcode());
  }
  return backend;
}

// Defined by the backends layer (src/backends/builtin.cc) so the core does
// not depend on any platform's headers.
void RegisterBuiltinBackends(BackendRegistry& registry);

BackendRegistry& BackendRegistry::Builtin() {
  static BackendRegistry* registry = [] {
    auto* r = new BackendRegistry();
    RegisterBuiltinBackends(*r);
    return r;
  }();
  return *registry;
}

CPC_NAMESPACE_END
