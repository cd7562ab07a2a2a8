// Scans this process's readable memory for a secret without ever holding the
// secret in plain form: the needle is kept XOR-masked and compared byte by
// byte against memory XOR the mask.
#ifndef CPC_TESTS_CONFORMANCE_CANARY_H_
#define CPC_TESTS_CONFORMANCE_CANARY_H_

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/ioctl.h>
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

// Ranges of resident (present or swapped) pages in [lo, hi) of this
// process, from PAGEMAP_SCAN: sanitizers reserve terabytes of shadow memory
// that must not be walked page by page.
inline std::vector<std::pair<unsigned long, unsigned long>> ResidentRanges(
    int pagemap, unsigned long lo, unsigned long hi) {
  struct Region {
    uint64_t start, end, categories;
  };
  struct ScanArg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages,
        category_inverted, category_mask, category_anyof_mask, return_mask;
  };
  constexpr unsigned long kScan = _IOWR('f', 16, ScanArg);
  constexpr uint64_t kPresent = 1 << 3, kSwapped = 1 << 4;
  std::vector<std::pair<unsigned long, unsigned long>> out;
  std::vector<Region> vec(256);
  for (unsigned long at = lo; at < hi;) {
    ScanArg a = {};
    a.size = sizeof a;
    a.start = at;
    a.end = hi;
    a.vec = reinterpret_cast<uint64_t>(vec.data());
    a.vec_len = vec.size();
    a.category_anyof_mask = kPresent | kSwapped;
    a.return_mask = kPresent | kSwapped;
    long n = ioctl(pagemap, kScan, &a);
    if (n < 0) {  // no PAGEMAP_SCAN: fall back to the whole mapping
      out.emplace_back(at, hi);
      break;
    }
    for (long i = 0; i < n; ++i) out.emplace_back(vec[i].start, vec[i].end);
    if (a.walk_end <= at) break;
    at = a.walk_end;
  }
  return out;
}

// Number of places in readable, resident memory of this process holding the
// secret. Reads through process_vm_readv so an unreadable page is skipped
// instead of faulting.
inline int CountInProcessMemory(const MaskedSecret& s) {
  std::ifstream maps("/proc/self/maps");
  const int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
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
    for (auto [rlo, rhi] : ResidentRanges(pagemap, lo, hi)) {
      for (unsigned long at = rlo; at < rhi;) {
        // Overlap chunks by 31 bytes so a secret across a boundary is seen.
        const size_t want = std::min<unsigned long>(buf.size(), rhi - at);
        iovec local = {buf.data(), want};
        iovec remote = {reinterpret_cast<void*>(at), want};
        const ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        if (n <= 0) {
          at += 4096;  // skip an unreadable page
          continue;
        }
        for (ssize_t i = 0; i + 32 <= n; ++i)
          if (Matches(buf.data() + i, s)) ++found;
        at += (static_cast<size_t>(n) > 31 && at + n < rhi) ? n - 31 : n;
      }
    }
  }
  close(pagemap);
  std::memset(buf.data(), 0, buf.size());
  return found;
}

}  // namespace cpc_test

#endif  // CPC_TESTS_CONFORMANCE_CANARY_H_
