// How many child processes of this test process are alive (not zombies):
// the CVM processes a backend still runs. Used to show that a failed
// restore or migration leaves no CVM behind.
#ifndef CPC_TESTS_CHILD_PROCESSES_H_
#define CPC_TESTS_CHILD_PROCESSES_H_

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

namespace cpc_test {
inline uint64_t LiveChildren() {
  uint64_t n = 0;
  for (auto& p : std::filesystem::directory_iterator("/proc")) {
    std::ifstream st(p.path() / "stat");
    std::string line;
    if (!std::getline(st, line)) continue;
    auto rp = line.rfind(')');
    if (rp == std::string::npos) continue;
    std::istringstream in(line.substr(rp + 2));
    std::string state;
    long ppid = 0;
    in >> state >> ppid;
    if (ppid == ::getpid() && state != "Z") ++n;
  }
  return n;
}
}  // namespace cpc_test

#endif  // CPC_TESTS_CHILD_PROCESSES_H_
