// The `cpc` command-line tool for operators: `cpc info` reports the library,
// the AEAD engines and every built-in backend with its probe facts.
// Errors are one line on stderr and a non-zero exit code.
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <cpc/fmt.h>
#include <cpc/registry.h>
#include <cpc/version.h>

namespace {

int Fail(const cpc::Status& s) {
  fmt::print(stderr, "cpc: {}\n", s);
  return 1;
}

int Info(const std::vector<std::string>& args) {
  if (!args.empty())
    return Fail({cpc::Code::kInvalidArgument, "info takes no arguments"});
  fmt::print("libcpc {} (C API {})\n", CPC_VERSION_STRING, CPC_API_VERSION);
  auto backends = cpc::BackendRegistry::Builtin().List();
  fmt::print("backends: {}\n", backends.size());
  for (const cpc::BackendFactory* b : backends) {
    fmt::print("  {:<10} {:<11} {}\n", b->name(),
               b->Available() ? "available" : "unavailable", b->description());
    for (const auto& fact : b->Probe())
      fmt::print("    [{}] {:<28} {}\n", fact.pass ? "ok" : "--", fact.name,
                 fact.info);
  }
  return 0;
}

struct Command {
  std::string_view name;
  std::string_view help;
  int (*run)(const std::vector<std::string>&);
};

constexpr Command kCommands[] = {
    {"info", "library, AEAD engines and backends with their probe facts", Info},
};

void Usage(std::FILE* out) {
  fmt::print(out, "usage: cpc <command> [options]\n\ncommands:\n");
  for (const auto& c : kCommands)
    fmt::print(out, "  {:<10} {}\n", c.name, c.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage(stderr);
    return 2;
  }
  std::string_view cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    Usage(stdout);
    return 0;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const auto& c : kCommands)
    if (c.name == cmd) return c.run(args);
  return Fail({cpc::Code::kInvalidArgument,
               fmt::format("unknown command '{}' (try: cpc help)", cmd)});
}
