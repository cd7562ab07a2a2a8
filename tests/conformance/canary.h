// Scans this process's readable memory for a secret without ever holding the
// secret in plain form: the needle is kept XOR-masked and compared byte by
// byte against memory XOR the mask.
#ifndef CPC_TESTS_CONFORMANCE_CANARY_H_
#define CPC_TESTS_CONFORMANCE_CANARY_H_

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/uio.h>
#include <unistd.h>
#include <vector>

#include <openssl/evp.h>
#include <openssl/rand.h>

namespace cpc_test {

struct MaskedSecret {
  std::array<uint8_t, 32> masked{};
  std::array<uint8_t, 32> mask{};
};

// The guest derives its canary as SHA-256("cpc-canary" || seed); the test
// computes the same value and keeps only its masked form.
inline MaskedSecret MaskedCanary(const std::array<uint8_t, 8>& seed) {
  MaskedSecret m;
  RAND_bytes(m.mask.data(), 32);
  uint8_t buf[64];
  std::memcpy(buf, "cpc-canary", 10);
  std::memcpy(buf + 10, seed.data(), seed.size());
  uint8_t d[32];
  unsigned int len = 0;
  EVP_Digest(buf, 10 + seed.size(), d, &len, EVP_sha256(), nullptr);
  for (int i = 0; i < 32; ++i) m.masked[i] = d[i] ^ m.mask[i];
  std::memset(d, 0, sizeof d);  // (the digest temporaries are not the needle)
  return m;
}

inline bool Matches(const uint8_t* p, const MaskedSecret& s) {
  for (int i = 0; i < 32; ++i)
    if ((p[i] ^ s.mask[i]) != s.masked[i]) return false;
  return true;
}

// Number of places in readable mappings of this process holding the secret.
// Reads through process_vm_readv so an unreadable page (a file mapping past
// its end, a guard page) is skipped instead of faulting.
inline int CountInProcessMemory(const MaskedSecret& s) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int found = 0;
  static std::vector<uint8_t> buf(1 << 20);
  while (std::getline(maps, line)) {
    unsigned long lo, hi;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s", &lo, &hi, perms) != 3)
      continue;
    if (perms[0] != 'r' || line.find("[vvar") != std::string::npos ||
        line.find("[vsyscall]") != std::string::npos)
      continue;
    for (unsigned long at = lo; at < hi;) {
      // Overlap chunks by 31 bytes so a secret across a boundary is seen.
      const size_t want = std::min<unsigned long>(buf.size(), hi - at);
      iovec local = {buf.data(), want};
      iovec remote = {reinterpret_cast<void*>(at), want};
      const ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
      if (n <= 0) {
        at += 4096;  // skip an unreadable page
        continue;
      }
      if (buf.data() != reinterpret_cast<uint8_t*>(at))  // not our own buffer
        for (ssize_t i = 0; i + 32 <= n; ++i)
          if (Matches(buf.data() + i, s)) ++found;
      at += (static_cast<size_t>(n) > 31 && at + n < hi) ? n - 31 : n;
    }
  }
  std::memset(buf.data(), 0, buf.size());
  return found;
}

}  // namespace cpc_test

#endif  // CPC_TESTS_CONFORMANCE_CANARY_H_
