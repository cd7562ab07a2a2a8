// extern "C" shims: the only place that catches C++ exceptions (e.g.
// std::bad_alloc) so none crosses into a C VMM.
//
// Every shim validates all of its arguments (NULL pointers, struct_size,
// arrays) before it acts, so that a refused call has done nothing, and writes
// its outputs only once the operation succeeded.
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <cpc/backend.h>
#include <cpc/cpc.h>
#include <cpc/log.h>
#include <cpc/migrate.h>
#include <cpc/policy.h>
#include <cpc/registry.h>
#include <cpc/snapshot.h>
#include <cpc/status.h>

namespace {

using cpc::Code;
using cpc::Status;

// The C status codes are cpc::Code's: keep them in step.
#define CPC_C_SAME(c_name, code) \
  static_assert(c_name == static_cast<int32_t>(Code::code), #c_name)
CPC_C_SAME(CPC_OK, kOk);
CPC_C_SAME(CPC_E_INVALID_ARGUMENT, kInvalidArgument);
CPC_C_SAME(CPC_E_NOT_FOUND, kNotFound);
CPC_C_SAME(CPC_E_ALREADY_EXISTS, kAlreadyExists);
CPC_C_SAME(CPC_E_FAILED_PRECONDITION, kFailedPrecondition);
CPC_C_SAME(CPC_E_PERMISSION_DENIED, kPermissionDenied);
CPC_C_SAME(CPC_E_RESOURCE_EXHAUSTED, kResourceExhausted);
CPC_C_SAME(CPC_E_UNIMPLEMENTED, kUnimplemented);
CPC_C_SAME(CPC_E_INTERNAL, kInternal);
CPC_C_SAME(CPC_E_IO, kIoError);
CPC_C_SAME(CPC_E_CANCELLED, kCancelled);
CPC_C_SAME(CPC_E_ABORTED, kAborted);
CPC_C_SAME(CPC_E_TIMEOUT, kTimeout);
CPC_C_SAME(CPC_E_DATA_LOSS, kDataLoss);
CPC_C_SAME(CPC_E_UNAVAILABLE, kUnavailable);
CPC_C_SAME(CPC_E_ILLEGAL_TRANSITION, kIllegalTransition);
CPC_C_SAME(CPC_E_BUDGET_EXCEEDED, kBudgetExceeded);
CPC_C_SAME(CPC_E_BACKEND_UNKNOWN, kBackendUnknown);
CPC_C_SAME(CPC_E_BACKEND_UNAVAILABLE, kBackendUnavailable);
CPC_C_SAME(CPC_E_BACKEND_MISCONFIGURED, kBackendMisconfigured);
CPC_C_SAME(CPC_E_PLATFORM_ERROR, kPlatformError);
CPC_C_SAME(CPC_E_TOKEN_MALFORMED, kTokenMalformed);
CPC_C_SAME(CPC_E_TOKEN_FORGED, kTokenForged);
CPC_C_SAME(CPC_E_TOKEN_REPLAYED, kTokenReplayed);
CPC_C_SAME(CPC_E_TOKEN_REUSED, kTokenReused);
CPC_C_SAME(CPC_E_TOKEN_OVER_BUDGET, kTokenOverBudget);
CPC_C_SAME(CPC_E_TOKEN_WRONG_CVM, kTokenWrongCvm);
CPC_C_SAME(CPC_E_TOKEN_MISMATCH, kTokenMismatch);
CPC_C_SAME(CPC_E_NOT_APPROVED, kNotApproved);
CPC_C_SAME(CPC_E_AUTH_FAILED, kAuthFailed);
CPC_C_SAME(CPC_E_RECORD_REPLAYED, kRecordReplayed);
CPC_C_SAME(CPC_E_RECORD_OUT_OF_ORDER, kRecordOutOfOrder);
CPC_C_SAME(CPC_E_RECORD_TRUNCATED, kRecordTruncated);
CPC_C_SAME(CPC_E_RECORD_MALFORMED, kRecordMalformed);
CPC_C_SAME(CPC_E_DUPLICATE_PAGE, kDuplicatePage);
CPC_C_SAME(CPC_E_GPA_MISMATCH, kGpaMismatch);
CPC_C_SAME(CPC_E_EPOCH_MISMATCH, kEpochMismatch);
CPC_C_SAME(CPC_E_STALE_EPOCH, kStaleEpoch);
CPC_C_SAME(CPC_E_INCOMPLETE, kIncomplete);
CPC_C_SAME(CPC_E_REPORT_BAD_SIGNATURE, kReportBadSignature);
CPC_C_SAME(CPC_E_REPORT_BAD_CHAIN, kReportBadChain);
CPC_C_SAME(CPC_E_MEASUREMENT_MISMATCH, kMeasurementMismatch);
CPC_C_SAME(CPC_E_REPORT_DATA_MISMATCH, kReportDataMismatch);
#undef CPC_C_SAME

using MState = cpc::MigrationStats::State;
static_assert(CPC_MIGRATION_SETUP == static_cast<int>(MState::kSetup));
static_assert(CPC_MIGRATION_ACTIVE == static_cast<int>(MState::kActive));
static_assert(CPC_MIGRATION_SWITCHOVER ==
              static_cast<int>(MState::kSwitchover));
static_assert(CPC_MIGRATION_COMPLETED == static_cast<int>(MState::kCompleted));
static_assert(CPC_MIGRATION_FAILED == static_cast<int>(MState::kFailed));
static_assert(CPC_ISOLATION_PLAIN == static_cast<int>(cpc::Isolation::kPlain));
static_assert(CPC_ISOLATION_SECURE ==
              static_cast<int>(cpc::Isolation::kSecure));

thread_local std::string g_last_error;
thread_local int64_t g_last_subcode = 0;

cpc_status_t Report(const Status& s) {
  g_last_error = s.ok() ? std::string() : s.ToString();
  g_last_subcode = s.ok() ? 0 : s.subcode();
  return static_cast<cpc_status_t>(s.code());
}

// Runs `f` (returning a Status) and turns anything it throws into a status.
template <typename F>
cpc_status_t Guard(F&& f) {
  try {
    return Report(f());
  } catch (const std::bad_alloc&) {
    try {
      return Report(Status(Code::kResourceExhausted, "out of memory"));
    } catch (...) {
      g_last_subcode = 0;
      return CPC_E_RESOURCE_EXHAUSTED;
    }
  } catch (const std::exception& e) {
    try {
      return Report(Status(Code::kInternal, e.what()));
    } catch (...) {
      return CPC_E_INTERNAL;
    }
  } catch (...) {
    try {
      return Report(Status(Code::kInternal, "unknown exception"));
    } catch (...) {
      return CPC_E_INTERNAL;
    }
  }
}

void CopyString(char* dst, size_t cap, std::string_view src) {
  size_t n = src.size() < cap - 1 ? src.size() : cap - 1;
  std::memcpy(dst, src.data(), n);
  dst[n] = '\0';
}

Status Invalid(const std::string& message) {
  return Status(Code::kInvalidArgument, message);
}

Status NullArg(const char* fn, const char* arg) {
  return Invalid(std::string(fn) + ": " + arg + " is NULL");
}

// A struct_size-prefixed struct: NULL (when not `optional`) or smaller than
// this library's layout is refused.
template <typename T>
Status CheckStruct(const T* p, const char* fn, const char* arg,
                   bool optional = false) {
  if (p == nullptr) return optional ? Status::Ok() : NullArg(fn, arg);
  if (p->struct_size < sizeof(T))
    return Invalid(std::string(fn) + ": " + arg + "->struct_size " +
                   std::to_string(p->struct_size) +
                   " is smaller than this libcpc's sizeof " +
                   std::to_string(sizeof(T)) +
                   " (set it to sizeof; a header newer than the library?)");
  return Status::Ok();
}

// The elements of an array of struct_size-prefixed structs, walked with the
// stride of the caller's struct_size (every element's must be the same).
template <typename T>
cpc::Result<std::vector<const T*>> Elements(const T* array, size_t n,
                                            const char* fn, const char* arg) {
  std::vector<const T*> out;
  if (n == 0) return out;
  if (array == nullptr)
    return Invalid(std::string(fn) + ": " + arg + " is NULL but its count is " +
                   std::to_string(n));
  CPC_RETURN_IF_ERROR(CheckStruct(array, fn, arg));
  const size_t stride = array->struct_size;
  if (stride % alignof(T) != 0)
    return Invalid(std::string(fn) + ": " + arg + "[0].struct_size " +
                   std::to_string(stride) + " is not a struct's size");
  const auto* bytes = reinterpret_cast<const unsigned char*>(array);
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const T* e = reinterpret_cast<const T*>(bytes + i * stride);
    if (e->struct_size != stride)
      return Invalid(std::string(fn) + ": " + arg + "[" + std::to_string(i) +
                     "].struct_size differs from " + arg + "[0]'s");
    out.push_back(e);
  }
  return out;
}

cpc::Result<std::map<std::string, std::string>> ToOptionMap(
    const cpc_option_t* options, size_t n, const char* fn, const char* arg) {
  std::map<std::string, std::string> out;
  if (n > 0 && options == nullptr)
    return Invalid(std::string(fn) + ": " + arg + " is NULL but its count is " +
                   std::to_string(n));
  for (size_t i = 0; i < n; ++i) {
    const std::string where =
        std::string(fn) + ": " + arg + "[" + std::to_string(i) + "]";
    if (options[i].key == nullptr || options[i].value == nullptr)
      return Invalid(where + " has a NULL key or value");
    if (options[i].key[0] == '\0') return Invalid(where + " has an empty key");
    if (!out.emplace(options[i].key, options[i].value).second)
      return Invalid(where + ": duplicate key '" + options[i].key + "'");
  }
  return out;
}

// Milliseconds from C; 0 means `def`. Bounded so that no deadline
// arithmetic overflows (about 31 years).
constexpr uint64_t kMaxMs = 1'000'000'000'000ull;
cpc::Result<cpc::Duration> Ms(uint64_t ms, cpc::Duration def, const char* fn,
                              const char* field) {
  if (ms == 0) return def;
  if (ms > kMaxMs)
    return Invalid(std::string(fn) + ": " + field + " " + std::to_string(ms) +
                   " is too large (at most " + std::to_string(kMaxMs) + ")");
  return cpc::Duration(std::chrono::milliseconds(ms));
}

uint64_t Ns(cpc::Duration d) {
  return d.count() < 0 ? 0 : static_cast<uint64_t>(d.count());
}

cpc::Result<cpc::AbortPolicy> ToAbortPolicy(const cpc_abort_policy_t& a,
                                            const char* fn) {
  cpc::AbortPolicy p;
  CPC_ASSIGN_OR_RETURN(
      p.base_time, Ms(a.base_time_ms, p.base_time, fn, "abort.base_time_ms"));
  CPC_ASSIGN_OR_RETURN(p.window,
                       Ms(a.window_ms, p.window, fn, "abort.window_ms"));
  if (!(a.min_rate_bytes_per_s >= 0) || !(a.throughput_floor_bytes_per_s >= 0))
    return Invalid(std::string(fn) + ": abort rates must be >= 0");
  p.min_rate_bytes_per_s = a.min_rate_bytes_per_s;
  p.throughput_floor_bytes_per_s = a.throughput_floor_bytes_per_s;
  return p;
}

cpc::Result<cpc::Isolation> ToIsolation(uint32_t v, const std::string& where) {
  if (v == CPC_ISOLATION_PLAIN) return cpc::Isolation::kPlain;
  if (v == CPC_ISOLATION_SECURE) return cpc::Isolation::kSecure;
  return Invalid(where + ": isolation " + std::to_string(v) +
                 " is not a CPC_ISOLATION_* value");
}

// hvCPU indices of snapshot/migration streams: none = the C++ default.
constexpr uint32_t kMaxHvcpus = 1024;
cpc::Result<std::vector<uint32_t>> ToHvcpuList(uint32_t count,
                                               const uint32_t* hvcpus,
                                               std::vector<uint32_t> def,
                                               const char* fn) {
  if (count == 0) {
    if (hvcpus != nullptr)
      return Invalid(std::string(fn) + ": hvcpus given with hvcpu_count 0");
    return def;
  }
  if (count > kMaxHvcpus)
    return Invalid(std::string(fn) + ": hvcpu_count " + std::to_string(count) +
                   " is too large");
  std::vector<uint32_t> out(count);
  for (uint32_t i = 0; i < count; ++i)
    out[i] = hvcpus == nullptr ? i : hvcpus[i];
  return out;
}

cpc::Result<cpc::LaunchConfig> ToLaunchConfig(const cpc_launch_config_t* c,
                                              const char* fn, const char* arg) {
  CPC_RETURN_IF_ERROR(CheckStruct(c, fn, arg));
  const std::string where = std::string(fn) + ": " + arg;
  cpc::LaunchConfig l;
  if (c->image != nullptr) l.image = c->image;
  l.memory_bytes = c->memory_bytes;
  l.gvcpus = c->gvcpus == 0 ? 1 : c->gvcpus;
  if (c->hvcpu_count > kMaxHvcpus)
    return Invalid(where + "->hvcpu_count " + std::to_string(c->hvcpu_count) +
                   " is too large");
  if (c->hvcpus == nullptr) {
    for (uint32_t i = 0; i < c->hvcpu_count; ++i)
      l.hvcpus.push_back({i, cpc::Isolation::kPlain});
  } else {
    CPC_ASSIGN_OR_RETURN(
        auto hv, Elements(c->hvcpus, c->hvcpu_count, fn, "config->hvcpus"));
    for (size_t i = 0; i < hv.size(); ++i) {
      CPC_ASSIGN_OR_RETURN(
          cpc::Isolation iso,
          ToIsolation(hv[i]->isolation,
                      where + "->hvcpus[" + std::to_string(i) + "]"));
      l.hvcpus.push_back({hv[i]->index, iso});
    }
  }
  const bool has_modules = c->policy_module_count > 0;
  const bool has_bytes = c->policy_size > 0;
  if (has_modules && has_bytes)
    return Invalid(where + " gives both policy_modules and policy bytes");
  if (has_bytes) {
    if (c->policy == nullptr)
      return Invalid(where + "->policy is NULL but policy_size is " +
                     std::to_string(c->policy_size));
    auto parsed = cpc::TenantPolicy::Parse({c->policy, c->policy_size});
    if (!parsed.ok()) return parsed.status().WithContext(where + "->policy");
    l.policy.assign(c->policy, c->policy + c->policy_size);
  } else {
    // Without modules: an empty policy (no maintenance module may run).
    CPC_ASSIGN_OR_RETURN(auto mods,
                         Elements(c->policy_modules, c->policy_module_count, fn,
                                  "config->policy_modules"));
    cpc::TenantPolicy policy;
    for (size_t i = 0; i < mods.size(); ++i) {
      const cpc_module_policy_t& m = *mods[i];
      const std::string mw =
          where + "->policy_modules[" + std::to_string(i) + "]";
      if (m.module == nullptr) return Invalid(mw + ".module is NULL");
      if (m.procedure_count > 0 && m.procedures == nullptr)
        return Invalid(mw + ".procedures is NULL but procedure_count is " +
                       std::to_string(m.procedure_count));
      cpc::ModulePolicy mp;
      mp.module = m.module;
      for (size_t j = 0; j < m.procedure_count; ++j) {
        if (m.procedures[j] == nullptr)
          return Invalid(mw + ".procedures[" + std::to_string(j) + "] is NULL");
        mp.procedures.emplace_back(m.procedures[j]);
      }
      CPC_ASSIGN_OR_RETURN(mp.isolation, ToIsolation(m.isolation, mw));
      mp.per_call = {m.per_call_bytes, m.per_call_time_ms};
      mp.max_calls = m.max_calls;
      mp.total_bytes = m.total_bytes;
      policy.modules.push_back(std::move(mp));
    }
    if (Status v = policy.Validate(); !v.ok())
      return v.WithContext(where + "->policy_modules");
    l.policy = policy.Serialize();
  }
  CPC_ASSIGN_OR_RETURN(l.options, ToOptionMap(c->options, c->option_count, fn,
                                              "config->options"));
  return l;
}

// Copies `v` into the caller's struct, keeping the caller's struct_size.
template <typename T>
void WriteOut(T* out, T v) {
  if (out == nullptr) return;
  v.struct_size = out->struct_size;
  *out = v;
}

cpc_snapshot_stats_t ToC(const cpc::SnapshotStats& s) {
  cpc_snapshot_stats_t c;
  std::memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.vcpus = s.vcpus;
  c.pages = s.pages;
  c.streams = s.streams;
  c.guest_bytes = s.guest_bytes;
  c.total_guest_bytes = s.total_guest_bytes;
  c.file_bytes = s.file_bytes;
  c.elapsed_ns = Ns(s.elapsed);
  c.paused_ns = Ns(s.paused);
  c.copied_pages = s.copied_pages;
  c.launch_ns = Ns(s.launch);
  c.rate_bytes_per_s = s.rate_bytes_per_s;
  return c;
}

cpc_migration_stats_t ToC(const cpc::MigrationStats& s) {
  cpc_migration_stats_t c;
  std::memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.state = static_cast<int32_t>(s.state);
  c.streams = s.streams;
  c.rounds = s.rounds;
  c.total_bytes = s.total_bytes;
  c.remaining_bytes = s.remaining_bytes;
  c.transferred_bytes = s.transferred_bytes;
  c.pages_sent = s.pages_sent;
  c.rate_bytes_per_s = s.rate_bytes_per_s;
  c.dirty_pages_per_s = s.dirty_pages_per_s;
  c.throttle = s.throttle;
  c.setup_time_ns = Ns(s.setup_time);
  c.elapsed_ns = Ns(s.elapsed);
  c.expected_downtime_ns = Ns(s.expected_downtime);
  c.downtime_ns = Ns(s.downtime);
  c.reconnects = s.reconnects;
  return c;
}

cpc::SnapshotProgressFn SnapshotProgress(cpc_snapshot_progress_fn fn,
                                         void* user) {
  if (fn == nullptr) return {};
  return [fn, user](const cpc::SnapshotStats& s) {
    const cpc_snapshot_stats_t c = ToC(s);
    fn(user, &c);
  };
}

cpc::MigrationProgressFn MigrationProgress(cpc_migration_progress_fn fn,
                                           void* user) {
  if (fn == nullptr) return {};
  return [fn, user](const cpc::MigrationStats& s) {
    const cpc_migration_stats_t c = ToC(s);
    fn(user, &c);
  };
}

std::function<void(cpc::CvmHandle)> CvmCallback(cpc_cvm_fn fn, void* user) {
  if (fn == nullptr) return {};
  return [fn, user](cpc::CvmHandle h) { fn(user, h); };
}

// The backend behind a cpc_backend_t: forwards everything and remembers the
// launch configuration of every CVM it launches (directly, or inside a
// restore or an incoming migration) so that a C caller need not repeat it
// for a snapshot or a migration.
class RememberingBackend : public cpc::BackendWrapper {
 public:
  using BackendWrapper::BackendWrapper;

  // Never throws: the C++ operations that launch through it (restore,
  // incoming migration) do not expect exceptions.
  cpc::Result<cpc::CvmHandle> LaunchCvm(
      const cpc::LaunchConfig& config) override {
    std::unique_ptr<cpc::LaunchConfig> copy;
    try {
      copy = std::make_unique<cpc::LaunchConfig>(config);
    } catch (...) {
      return Status(Code::kResourceExhausted, "out of memory");
    }
    CPC_ASSIGN_OR_RETURN(cpc::CvmHandle h, BackendWrapper::LaunchCvm(config));
    try {
      std::lock_guard<std::mutex> lock(mu_);
      configs_[h] = std::move(copy);
    } catch (...) {
      (void)BackendWrapper::DestroyCvm(h);
      return Status(Code::kResourceExhausted, "out of memory");
    }
    return h;
  }

  Status DestroyCvm(cpc::CvmHandle cvm) override {
    Status s = BackendWrapper::DestroyCvm(cvm);
    if (s.ok() || s.code() == Code::kNotFound) {
      std::lock_guard<std::mutex> lock(mu_);
      configs_.erase(cvm);
    }
    return s;
  }

  // The launch configuration a snapshot or migration of `cvm` carries: the
  // caller's `given` (options->launch of `fn`), else the remembered one.
  cpc::Result<cpc::LaunchConfig> Config(cpc::CvmHandle cvm,
                                        const cpc_launch_config_t* given,
                                        const char* fn) {
    if (given != nullptr) return ToLaunchConfig(given, fn, "options->launch");
    std::lock_guard<std::mutex> lock(mu_);
    auto it = configs_.find(cvm);
    if (it == configs_.end())
      return Status(
          Code::kNotFound,
          "no CVM with handle " + std::to_string(cvm) + " on this backend");
    return *it->second;
  }

 private:
  std::mutex mu_;
  std::map<cpc::CvmHandle, std::unique_ptr<cpc::LaunchConfig>> configs_;
};

}  // namespace

// Declared (opaque) in cpc.h. `inner` outlives `outer`, which forwards to it.
struct cpc_backend_s {
  std::unique_ptr<cpc::Backend> inner;
  std::unique_ptr<RememberingBackend> outer;
  std::string name;
};

namespace {
Status CheckBackend(const cpc_backend_t* b, const char* fn) {
  return b == nullptr ? NullArg(fn, "backend") : Status::Ok();
}
}  // namespace

extern "C" {

const char* cpc_status_str(cpc_status_t status) {
  // CodeName returns views of string literals: NUL-terminated.
  return cpc::CodeName(static_cast<cpc::Code>(status)).data();
}

const char* cpc_last_error(void) { return g_last_error.c_str(); }

int64_t cpc_last_error_subcode(void) { return g_last_subcode; }

uint32_t cpc_api_version(void) { return CPC_API_VERSION; }

const char* cpc_version_string(void) { return CPC_VERSION_STRING; }

size_t cpc_backend_count(void) {
  try {
    return cpc::BackendRegistry::Builtin().List().size();
  } catch (...) {
    return 0;
  }
}

cpc_status_t cpc_backend_get_info(size_t index, cpc_backend_info_t* out) {
  return Guard([&]() -> cpc::Status {
    if (out == nullptr || out->struct_size < sizeof(cpc_backend_info_t))
      return cpc::Status(cpc::Code::kInvalidArgument,
                         "cpc_backend_info: NULL or short struct");
    auto list = cpc::BackendRegistry::Builtin().List();
    if (index >= list.size())
      return cpc::Status(cpc::Code::kNotFound, "backend index out of range");
    CopyString(out->name, sizeof out->name, list[index]->name());
    CopyString(out->description, sizeof out->description,
               list[index]->description());
    out->available = list[index]->Available() ? 1 : 0;
    return cpc::Status::Ok();
  });
}

cpc_status_t cpc_backend_probe(const char* name, cpc_probe_fn fn, void* user) {
  return Guard([&]() -> cpc::Status {
    if (name == nullptr || fn == nullptr)
      return cpc::Status(cpc::Code::kInvalidArgument,
                         "cpc_backend_probe: NULL argument");
    CPC_ASSIGN_OR_RETURN(const cpc::BackendFactory* f,
                         cpc::BackendRegistry::Builtin().Find(name));
    for (const auto& fact : f->Probe())
      fn(user, fact.name.c_str(), fact.pass ? 1 : 0, fact.info.c_str());
    return cpc::Status::Ok();
  });
}

void cpc_set_log_fn(int32_t min_level, cpc_log_fn fn, void* user) {
  try {
    if (min_level < 0) min_level = 0;
    if (min_level > 5) min_level = 5;
    cpc::LogSink sink;
    if (fn != nullptr) {
      sink = [fn, user](cpc::LogLevel l, std::string_view msg) {
        std::string s(msg);
        fn(user, static_cast<int32_t>(l), s.c_str());
      };
    }
    cpc::SetLogSink(static_cast<cpc::LogLevel>(min_level), std::move(sink));
  } catch (...) {
  }
}

// ------------------------------------------------- backends and their CVMs

cpc_status_t cpc_backend_open(const char* name, const cpc_option_t* options,
                              size_t option_count, cpc_backend_t** out) {
  return Guard([&]() -> Status {
    constexpr const char* fn = "cpc_backend_open";
    if (out == nullptr) return NullArg(fn, "out");
    CPC_ASSIGN_OR_RETURN(auto opts,
                         ToOptionMap(options, option_count, fn, "options"));
    auto b = std::make_unique<cpc_backend_s>();
    CPC_ASSIGN_OR_RETURN(b->inner, cpc::BackendRegistry::Builtin().Create(
                                       name == nullptr ? "" : name, opts));
    b->outer = std::make_unique<RememberingBackend>(b->inner.get());
    b->name = std::string(b->inner->name());
    *out = b.release();
    return Status::Ok();
  });
}

void cpc_backend_close(cpc_backend_t* backend) {
  try {
    delete backend;
  } catch (...) {
  }
}

const char* cpc_backend_name(const cpc_backend_t* backend) {
  return backend == nullptr ? "" : backend->name.c_str();
}

cpc_status_t cpc_cvm_launch(cpc_backend_t* backend,
                            const cpc_launch_config_t* config, cpc_cvm_t* out) {
  return Guard([&]() -> Status {
    constexpr const char* fn = "cpc_cvm_launch";
    CPC_RETURN_IF_ERROR(CheckBackend(backend, fn));
    if (out == nullptr) return NullArg(fn, "out");
    CPC_ASSIGN_OR_RETURN(cpc::LaunchConfig c,
                         ToLaunchConfig(config, fn, "config"));
    CPC_ASSIGN_OR_RETURN(cpc::CvmHandle h, backend->outer->LaunchCvm(c));
    *out = h;
    return Status::Ok();
  });
}

cpc_status_t cpc_cvm_destroy(cpc_backend_t* backend, cpc_cvm_t cvm) {
  return Guard([&]() -> Status {
    CPC_RETURN_IF_ERROR(CheckBackend(backend, "cpc_cvm_destroy"));
    return backend->outer->DestroyCvm(cvm);
  });
}

cpc_status_t cpc_cvm_pause(cpc_backend_t* backend, cpc_cvm_t cvm) {
  return Guard([&]() -> Status {
    CPC_RETURN_IF_ERROR(CheckBackend(backend, "cpc_cvm_pause"));
    return backend->outer->PauseGuest(cvm);
  });
}

cpc_status_t cpc_cvm_resume(cpc_backend_t* backend, cpc_cvm_t cvm) {
  return Guard([&]() -> Status {
    CPC_RETURN_IF_ERROR(CheckBackend(backend, "cpc_cvm_resume"));
    return backend->outer->ResumeGuest(cvm);
  });
}

cpc_status_t cpc_cvm_throttle(cpc_backend_t* backend, cpc_cvm_t cvm,
                              double fraction) {
  return Guard([&]() -> Status {
    CPC_RETURN_IF_ERROR(CheckBackend(backend, "cpc_cvm_throttle"));
    return backend->outer->ThrottleGuest(cvm, fraction);
  });
}

cpc_status_t cpc_cvm_read_dirty_log(cpc_backend_t* backend, cpc_cvm_t cvm,
                                    uint8_t rearm, uint64_t* gpas,
                                    size_t capacity, size_t* count) {
  return Guard([&]() -> Status {
    constexpr const char* fn = "cpc_cvm_read_dirty_log";
    CPC_RETURN_IF_ERROR(CheckBackend(backend, fn));
    if (count == nullptr) return NullArg(fn, "count");
    if (capacity > 0 && gpas == nullptr)
      return Invalid(std::string(fn) + ": gpas is NULL but capacity is " +
                     std::to_string(capacity));
    CPC_ASSIGN_OR_RETURN(auto log,
                         backend->outer->ReadDirtyLog(cvm, rearm != 0));
    const size_t n = log.size() < capacity ? log.size() : capacity;
    if (n > 0) std::memcpy(gpas, log.data(), n * sizeof(uint64_t));
    *count = log.size();
    return Status::Ok();
  });
}

// ------------------------------------------------------------- snapshots

cpc_status_t cpc_snapshot_take(cpc_backend_t* backend, cpc_cvm_t cvm,
                               const char* path,
                               const cpc_snapshot_options_t* options,
                               cpc_snapshot_progress_fn progress, void* user,
                               cpc_snapshot_stats_t* stats) {
  return Guard([&]() -> Status {
    constexpr const char* fn = "cpc_snapshot_take";
    CPC_RETURN_IF_ERROR(CheckBackend(backend, fn));
    if (path == nullptr) return NullArg(fn, "path");
    CPC_RETURN_IF_ERROR(CheckStruct(options, fn, "options", true));
    CPC_RETURN_IF_ERROR(CheckStruct(stats, fn, "stats", true));
    cpc::SnapshotOptions so;
    const cpc_launch_config_t* launch = nullptr;
    if (options != nullptr) {
      const cpc_snapshot_options_t& o = *options;
      CPC_ASSIGN_OR_RETURN(so.hvcpus,
                           ToHvcpuList(o.hvcpu_count, o.hvcpus, so.hvcpus, fn));
      CPC_ASSIGN_OR_RETURN(so.slice,
                           Ms(o.slice_ms, so.slice, fn, "options->slice_ms"));
      so.serial = o.serial;
      so.resume = o.keep_paused == 0;
      so.background = o.background != 0;
      CPC_ASSIGN_OR_RETURN(so.abort, ToAbortPolicy(o.abort, fn));
      if (o.at_pause != nullptr) {
        cpc_at_pause_fn at_pause = o.at_pause;
        void* at_pause_user = o.at_pause_user;
        so.at_pause = [at_pause, at_pause_user]() -> Status {
          const cpc_status_t r = at_pause(at_pause_user);
          if (r == CPC_OK) return Status::Ok();
          try {  // no exception into TakeSnapshot
            return Status(static_cast<Code>(r),
                          std::string("the at_pause callback returned ") +
                              cpc_status_str(r));
          } catch (...) {
            return Status(static_cast<Code>(r), std::string());
          }
        };
      }
      launch = o.launch;
    }
    CPC_ASSIGN_OR_RETURN(so.launch, backend->outer->Config(cvm, launch, fn));
    CPC_ASSIGN_OR_RETURN(cpc::SnapshotStats st,
                         cpc::TakeSnapshot(*backend->outer, cvm, path, so,
                                           SnapshotProgress(progress, user)));
    WriteOut(stats, ToC(st));
    return Status::Ok();
  });
}

cpc_status_t cpc_snapshot_read_info(const char* path,
                                    cpc_snapshot_info_t* out) {
  return Guard([&]() -> Status {
    constexpr const char* fn = "cpc_snapshot_read_info";
    if (path == nullptr) return NullArg(fn, "path");
    CPC_RETURN_IF_ERROR(CheckStruct(out, fn, "out"));
    CPC_ASSIGN_OR_RETURN(cpc::SnapshotInfo info, cpc::ReadSnapshotInfo(path));
    cpc_snapshot_info_t c;
    std::memset(&c, 0, sizeof c);
    c.version = info.version;
    c.serial = info.serial;
    static_assert(sizeof c.measurement == sizeof info.measurement);
    std::memcpy(c.measurement, info.measurement.data(), sizeof c.measurement);
    c.pages = info.pages;
    c.vcpus = info.vcpus;
    c.streams = info.streams;
    c.memory_bytes = info.launch.memory_bytes;
    c.gvcpus = info.launch.gvcpus;
    c.hvcpu_count = static_cast<uint32_t>(info.launch.hvcpus.size());
    WriteOut(out, c);
    return Status::Ok();
  });
}

cpc_status_t cpc_snapshot_restore(cpc_backend_t* backend, const char* path,
                                  const cpc_restore_options_t* options,
                                  cpc_snapshot_progress_fn progress, void* user,
                                  cpc_cvm_t* cvm, cpc_snapshot_stats_t* stats) {
  return Guard([&]() -> Status {
    constexpr const char* fn = "cpc_snapshot_restore";
    CPC_RETURN_IF_ERROR(CheckBackend(backend, fn));
    if (path == nullptr) return NullArg(fn, "path");
    if (cvm == nullptr) return NullArg(fn, "cvm");
    CPC_RETURN_IF_ERROR(CheckStruct(options, fn, "options", true));
    CPC_RETURN_IF_ERROR(CheckStruct(stats, fn, "stats", true));
    cpc::RestoreOptions ro;
    std::optional<cpc::LaunchConfig> launch;
    std::map<std::string, std::string> launch_options;
    const char* image = nullptr;
    if (options != nullptr) {
      const cpc_restore_options_t& o = *options;
      CPC_ASSIGN_OR_RETURN(ro.slice,
                           Ms(o.slice_ms, ro.slice, fn, "options->slice_ms"));
      ro.resume = o.keep_paused == 0;
      CPC_ASSIGN_OR_RETURN(ro.abort, ToAbortPolicy(o.abort, fn));
      ro.before_pause = CvmCallback(o.before_pause, o.before_pause_user);
      if (o.launch != nullptr) {
        CPC_ASSIGN_OR_RETURN(launch,
                             ToLaunchConfig(o.launch, fn, "options->launch"));
      }
      CPC_ASSIGN_OR_RETURN(launch_options,
                           ToOptionMap(o.launch_options, o.launch_option_count,
                                       fn, "options->launch_options"));
      image = o.image;
    }
    if (!launch) {
      CPC_ASSIGN_OR_RETURN(cpc::SnapshotInfo info, cpc::ReadSnapshotInfo(path));
      launch = std::move(info.launch);
    }
    if (image != nullptr) launch->image = image;
    for (auto& [k, v] : launch_options) launch->options[k] = v;
    CPC_ASSIGN_OR_RETURN(
        cpc::RestoreResult r,
        cpc::RestoreSnapshot(*backend->outer, *launch, path, ro,
                             SnapshotProgress(progress, user)));
    *cvm = r.cvm;
    WriteOut(stats, ToC(r.stats));
    return Status::Ok();
  });
}

// -------------------------------------------------------- live migration

const char* cpc_migration_state_str(int32_t state) {
  if (state < CPC_MIGRATION_SETUP || state > CPC_MIGRATION_FAILED)
    return "unknown_state";
  return cpc::MigrationStateName(static_cast<MState>(state));
}

cpc_status_t cpc_migrate_out(cpc_backend_t* backend, cpc_cvm_t cvm,
                             const cpc_migrate_options_t* options,
                             cpc_migration_progress_fn progress, void* user,
                             cpc_migration_stats_t* stats) {
  return Guard([&]() -> Status {
    constexpr const char* fn = "cpc_migrate_out";
    CPC_RETURN_IF_ERROR(CheckBackend(backend, fn));
    CPC_RETURN_IF_ERROR(CheckStruct(options, fn, "options", true));
    CPC_RETURN_IF_ERROR(CheckStruct(stats, fn, "stats", true));
    cpc::MigrateOptions mo;
    const cpc_launch_config_t* launch = nullptr;
    if (options != nullptr) {
      const cpc_migrate_options_t& o = *options;
      CPC_ASSIGN_OR_RETURN(mo.hvcpus,
                           ToHvcpuList(o.hvcpu_count, o.hvcpus, mo.hvcpus, fn));
      if (o.destination != nullptr) mo.destination = o.destination;
      CPC_ASSIGN_OR_RETURN(mo.downtime_limit,
                           Ms(o.downtime_limit_ms, mo.downtime_limit, fn,
                              "options->downtime_limit_ms"));
      CPC_ASSIGN_OR_RETURN(mo.deadline, Ms(o.deadline_ms, mo.deadline, fn,
                                           "options->deadline_ms"));
      if (o.max_rounds != 0) mo.max_rounds = o.max_rounds;
      mo.auto_converge = o.no_auto_converge == 0;
      if (o.max_throttle != 0) {
        if (!(o.max_throttle > 0 && o.max_throttle <= 0.99))
          return Invalid(std::string(fn) +
                         ": options->max_throttle must be in (0, 0.99]");
        mo.max_throttle = o.max_throttle;
      }
      CPC_ASSIGN_OR_RETURN(mo.slice,
                           Ms(o.slice_ms, mo.slice, fn, "options->slice_ms"));
      CPC_ASSIGN_OR_RETURN(mo.abort, ToAbortPolicy(o.abort, fn));
      CPC_ASSIGN_OR_RETURN(mo.verdict_timeout,
                           Ms(o.verdict_timeout_ms, mo.verdict_timeout, fn,
                              "options->verdict_timeout_ms"));
      if (o.ring_buffers != 0) mo.ring_buffers = o.ring_buffers;
      if (o.ring_buffer_bytes != 0) mo.ring_buffer_bytes = o.ring_buffer_bytes;
      if (o.no_reconnect != 0 && o.reconnect_timeout_ms != 0)
        return Invalid(std::string(fn) +
                       ": options->no_reconnect with a reconnect_timeout_ms");
      CPC_ASSIGN_OR_RETURN(mo.reconnect_timeout,
                           Ms(o.reconnect_timeout_ms, mo.reconnect_timeout, fn,
                              "options->reconnect_timeout_ms"));
      if (o.no_reconnect != 0) mo.reconnect_timeout = cpc::Duration::zero();
      if (o.max_reconnects != 0) mo.max_reconnects = o.max_reconnects;
      launch = o.launch;
    }
    CPC_ASSIGN_OR_RETURN(mo.launch, backend->outer->Config(cvm, launch, fn));
    CPC_ASSIGN_OR_RETURN(cpc::MigrationStats st,
                         cpc::MigrateOut(*backend->outer, cvm, mo,
                                         MigrationProgress(progress, user)));
    WriteOut(stats, ToC(st));
    return Status::Ok();
  });
}

cpc_status_t cpc_migrate_in(cpc_backend_t* backend,
                            const cpc_incoming_options_t* options,
                            cpc_migration_progress_fn progress, void* user,
                            cpc_cvm_t* cvm, cpc_migration_stats_t* stats) {
  return Guard([&]() -> Status {
    constexpr const char* fn = "cpc_migrate_in";
    CPC_RETURN_IF_ERROR(CheckBackend(backend, fn));
    if (cvm == nullptr) return NullArg(fn, "cvm");
    CPC_RETURN_IF_ERROR(CheckStruct(options, fn, "options", true));
    CPC_RETURN_IF_ERROR(CheckStruct(stats, fn, "stats", true));
    cpc::IncomingOptions io;
    if (options != nullptr) {
      const cpc_incoming_options_t& o = *options;
      if (o.listen != nullptr) io.listen = o.listen;
      if (o.on_listening != nullptr) {
        cpc_listening_fn on_listening = o.on_listening;
        void* on_listening_user = o.on_listening_user;
        io.on_listening = [on_listening,
                           on_listening_user](const std::string& where) {
          on_listening(on_listening_user, where.c_str());
        };
      }
      if (o.image != nullptr) io.image = o.image;
      CPC_ASSIGN_OR_RETURN(io.launch_options,
                           ToOptionMap(o.launch_options, o.launch_option_count,
                                       fn, "options->launch_options"));
      CPC_ASSIGN_OR_RETURN(io.accept_timeout,
                           Ms(o.accept_timeout_ms, io.accept_timeout, fn,
                              "options->accept_timeout_ms"));
      CPC_ASSIGN_OR_RETURN(io.slice,
                           Ms(o.slice_ms, io.slice, fn, "options->slice_ms"));
      CPC_ASSIGN_OR_RETURN(io.abort, ToAbortPolicy(o.abort, fn));
      io.resume = o.keep_paused == 0;
      io.before_pause = CvmCallback(o.before_pause, o.before_pause_user);
      if (o.no_reconnect != 0 && o.reconnect_timeout_ms != 0)
        return Invalid(std::string(fn) +
                       ": options->no_reconnect with a reconnect_timeout_ms");
      CPC_ASSIGN_OR_RETURN(io.reconnect_timeout,
                           Ms(o.reconnect_timeout_ms, io.reconnect_timeout, fn,
                              "options->reconnect_timeout_ms"));
      if (o.no_reconnect != 0) io.reconnect_timeout = cpc::Duration::zero();
      if (o.max_reconnects != 0) io.max_reconnects = o.max_reconnects;
    }
    CPC_ASSIGN_OR_RETURN(
        cpc::IncomingResult r,
        cpc::MigrateIn(*backend->outer, io, MigrationProgress(progress, user)));
    *cvm = r.cvm;
    WriteOut(stats, ToC(r.stats));
    return Status::Ok();
  });
}

}  // extern "C"
