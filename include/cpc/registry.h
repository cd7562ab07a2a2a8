// Registries: maintenance modules and operators (guest side, inside the CVM)
// and platform backends (host side, chosen by name).
//
// Threading: registries are filled at start-up and then read concurrently;
// Register and lookups are internally synchronised. Ownership: a registry
// owns what is registered; pointers it returns stay valid for its lifetime.
#ifndef CPC_REGISTRY_H_
#define CPC_REGISTRY_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <cpc/backend.h>
#include <cpc/export.h>
#include <cpc/module.h>
#include <cpc/status.h>

CPC_NAMESPACE_BEGIN

class CPC_EXPORT ModuleRegistry {
 public:
  // kInvalidArgument for an unnamed module or one with no procedures,
  // kAlreadyExists for a duplicate name.
  Status Register(std::unique_ptr<Module> module);
  // kNotFound if no module has that name.
  Result<Module*> Find(std::string_view name) const;
  std::vector<std::string> Names() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<Module>, std::less<>> modules_;
};

// The four generic operators of the paper.
enum class OperatorKind : uint8_t {
  kMee = 0,  // Memory Encryption Extraction
  kSee = 1,  // State Encryption Extraction
  kMdi = 2,  // Memory Decryption Insertion
  kSdi = 3,  // State Decryption Insertion
};
CPC_EXPORT std::string_view OperatorKindName(OperatorKind kind);

// Base of every operator implementation (e.g. the AEAD pipelines, or a
// platform-accelerated variant). Operators are shared by concurrent calls and
// must be thread-safe.
class CPC_EXPORT Operator {
 public:
  virtual ~Operator();
  virtual OperatorKind kind() const = 0;
  virtual std::string_view name() const = 0;
};

class CPC_EXPORT OperatorRegistry {
 public:
  // kAlreadyExists for a duplicate name. The first operator registered for a
  // kind is that kind's default.
  Status Register(std::shared_ptr<Operator> op);
  // The default operator of `kind`; kNotFound if none.
  Result<std::shared_ptr<Operator>> Find(OperatorKind kind) const;
  // By name; kNotFound if none.
  Result<std::shared_ptr<Operator>> Find(std::string_view name) const;

 private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Operator>> ops_;
};

using BackendOptions = std::map<std::string, std::string>;

// Describes and constructs one backend (Enarx's Backend trait).
class CPC_EXPORT BackendFactory {
 public:
  virtual ~BackendFactory();
  virtual std::string_view name() const = 0;
  virtual std::string_view description() const = 0;
  // Whether this machine can run the backend (cheap; no side effects).
  virtual bool Available() const = 0;
  // Self-diagnosis facts (`cpc info`): what was checked and the outcome.
  virtual std::vector<ProbeFact> Probe() const = 0;
  // Builds a backend. kBackendMisconfigured for invalid `options`.
  virtual Result<std::unique_ptr<Backend>> Create(
      const BackendOptions& options) const = 0;
};

class CPC_EXPORT BackendRegistry {
 public:
  // The registry of backends compiled into this libcpc.
  static BackendRegistry& Builtin();

  // kAlreadyExists for a duplicate name.
  Status Register(std::unique_ptr<BackendFactory> factory);
  std::vector<const BackendFactory*> List() const;
  // kBackendUnknown if none has that name.
  Result<const BackendFactory*> Find(std::string_view name) const;

  // Selects and creates a backend: `name` if non-empty, else the CPC_BACKEND
  // environment variable, else the first available one. Distinct errors:
  // kBackendUnknown (no such name; the message lists the known ones),
  // kBackendUnavailable (known, but this machine cannot run it; the message
  // names the failed probes), kBackendMisconfigured (the factory rejected the
  // options).
  Result<std::unique_ptr<Backend>> Create(std::string_view name,
                                          const BackendOptions& options) const;

 private:
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<BackendFactory>> factories_;
};

CPC_NAMESPACE_END

#endif  // CPC_REGISTRY_H_
