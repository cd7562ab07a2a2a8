// extern "C" shims: the only place that catches C++ exceptions (e.g.
// std::bad_alloc) so none crosses into a C VMM.
#include <cstring>
#include <string>

#include <cpc/cpc.h>
#include <cpc/log.h>
#include <cpc/registry.h>
#include <cpc/status.h>

namespace {
thread_local std::string g_last_error;

cpc_status_t Report(const cpc::Status& s) {
  g_last_error = s.ok() ? std::string() : s.ToString();
  return static_cast<cpc_status_t>(s.code());
}

template <typename F>
cpc_status_t Guard(F&& f) {
  try {
    return Report(f());
  } catch (const std::exception& e) {
    return Report(cpc::Status(cpc::Code::kInternal, e.what()));
  } catch (...) {
    return Report(cpc::Status(cpc::Code::kInternal, "unknown exception"));
  }
}

void CopyString(char* dst, size_t cap, std::string_view src) {
  size_t n = src.size() < cap - 1 ? src.size() : cap - 1;
  std::memcpy(dst, src.data(), n);
  dst[n] = '\0';
}
}  // namespace

extern "C" {

const char* cpc_status_str(cpc_status_t status) {
  // CodeName returns views of string literals: NUL-terminated.
  return cpc::CodeName(static_cast<cpc::Code>(status)).data();
}

const char* cpc_last_error(void) { return g_last_error.c_str(); }

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

}  // extern "C"
