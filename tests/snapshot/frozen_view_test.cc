// The emulated machine's frozen view (background snapshot): a point-in-time
// view of guest memory while writers keep going, copy-on-write on their first
// write, writers held while a page is pinned, and exact dirty tracking back
// after the view; dirty tracking starting at its first use.
#include <atomic>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <sys/resource.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <catch2/catch.hpp>

#include "emulator/memory.h"
#include "test_util.h"

using cpc::Gpa;
using cpc::kPageSize;
using cpc::emu::GuestMemory;
using namespace std::chrono_literals;

namespace {
constexpr uint64_t kBytes = 8ull << 20;
constexpr uint64_t kPages = kBytes / kPageSize;

uint8_t Tag(uint64_t page, int gen) {
  return static_cast<uint8_t>(page * 7 + gen * 31 + 1);
}

void Fill(GuestMemory& m, uint64_t page, int gen) {
  std::memset(m.At(page * kPageSize), Tag(page, gen), kPageSize);
}

bool Holds(const uint8_t* p, uint8_t v) {
  for (uint64_t i = 0; i < kPageSize; ++i)
    if (p[i] != v) return false;
  return true;
}

std::unique_ptr<GuestMemory> NewMemory(bool tracked) {
  auto mem = GuestMemory::Create(kBytes, tracked);
  REQUIRE_OK(mem);
  return std::move(*mem);
}

std::vector<Gpa> HostLog(GuestMemory& m) {
  auto t = m.StartTracking();
  REQUIRE_OK(t);
  auto bits = (*t)->ReadHostLog(0, kPages, true);
  REQUIRE_OK(bits);
  std::vector<Gpa> out;
  cpc::emu::AppendSetPages(*bits, 0, &out);
  return out;
}
}  // namespace

TEST_CASE(
    "frozen view: pages read as at begin while a writer rewrites them, "
    "copied on first write") {
  auto mem = NewMemory(true);
  GuestMemory& m = *mem;
  for (uint64_t p = 0; p < kPages; ++p) Fill(m, p, 0);
  (void)HostLog(m);

  // The view covers all but the last MiB (like guest-OS memory).
  const cpc::GpaRange range{0, kPages - 256};
  REQUIRE_OK(m.BeginFrozenView(range));
  REQUIRE(m.BeginFrozenView(range).code() == cpc::Code::kFailedPrecondition);

  // A writer rewrites the first half while the view is open.
  std::thread writer([&] {
    for (uint64_t p = 0; p < range.pages / 2; ++p) Fill(m, p, 1);
  });
  writer.join();
  for (uint64_t p = 0; p < range.pages / 2; ++p)
    REQUIRE(m.At(p * kPageSize)[5] == Tag(p, 1));  // the writes went on

  // Every page reads as at begin, written or not, in record-sized batches.
  std::vector<Gpa> gpas;
  std::vector<const uint8_t*> ptrs(128);
  for (uint64_t p = 0; p < range.pages; p += 128) {
    gpas.clear();
    for (uint64_t i = p; i < p + 128; ++i) gpas.push_back(i * kPageSize);
    REQUIRE_OK(m.PinFrozen(gpas, ptrs));
    for (uint64_t i = 0; i < 128; ++i) REQUIRE(Holds(ptrs[i], Tag(p + i, 0)));
    m.ReleaseFrozen(gpas);
  }
  // Each page once per view; nothing outside it.
  const Gpa again[] = {0};
  REQUIRE(m.PinFrozen(again, ptrs).code() == cpc::Code::kFailedPrecondition);
  const Gpa outside[] = {range.pages * kPageSize};
  REQUIRE(m.PinFrozen(outside, ptrs).code() == cpc::Code::kInvalidArgument);

  // Pages read before their first write are not copied.
  for (uint64_t p = range.pages / 2; p < range.pages; ++p) Fill(m, p, 2);
  auto copied = m.EndFrozenView();
  REQUIRE_OK(copied);
  REQUIRE(*copied == range.pages / 2);
  REQUIRE(m.EndFrozenView().status().code() == cpc::Code::kFailedPrecondition);

  // Nothing tracked writes while the view stood: every page is reported
  // once, then tracking is exact again.
  REQUIRE(HostLog(m).size() == kPages);
  REQUIRE(*(*m.StartTracking())->TakeWritten({0, kPages}) == [] {
    std::vector<Gpa> all;
    for (uint64_t p = 0; p < kPages; ++p) all.push_back(p * kPageSize);
    return all;
  }());
  REQUIRE(HostLog(m).empty());
  Fill(m, 9, 3);
  REQUIRE(HostLog(m) == std::vector<Gpa>{9 * kPageSize});
}

TEST_CASE(
    "frozen view: a write to a pinned page waits for its release, and ending "
    "the view frees a writer whose reader never comes back") {
  for (bool tracked : {true, false}) {
    INFO("dirty tracking " << tracked);
    auto mem = NewMemory(tracked);
    GuestMemory& m = *mem;
    for (uint64_t p = 0; p < kPages; ++p) Fill(m, p, 0);
    REQUIRE_OK(m.BeginFrozenView({0, kPages}));

    const Gpa pinned[] = {3 * kPageSize, 4 * kPageSize};
    std::vector<const uint8_t*> ptrs(2);
    REQUIRE_OK(m.PinFrozen(pinned, ptrs));
    std::atomic<bool> wrote{false};
    std::thread writer([&] {
      Fill(m, 3, 1);
      wrote = true;
    });
    std::this_thread::sleep_for(100ms);
    // Held in its write fault: the pinned page is still the frozen one.
    REQUIRE_FALSE(wrote.load());
    REQUIRE(Holds(ptrs[0], Tag(3, 0)));
    m.ReleaseFrozen(pinned);
    writer.join();
    REQUIRE(m.At(3 * kPageSize)[0] == Tag(3, 1));
    auto copied = m.EndFrozenView();
    REQUIRE_OK(copied);
    REQUIRE(*copied == 0);  // read first, so nothing to copy

    // A reader that pins and never releases (an hvCPU context discarded by
    // an abort) cannot block the guest past the end of the view.
    REQUIRE_OK(m.BeginFrozenView({0, kPages}));
    REQUIRE_OK(m.PinFrozen(pinned, ptrs));
    wrote = false;
    std::thread stuck([&] {
      Fill(m, 4, 1);
      wrote = true;
    });
    std::this_thread::sleep_for(50ms);
    REQUIRE_FALSE(wrote.load());
    REQUIRE_OK(m.EndFrozenView());
    stuck.join();
    REQUIRE(m.At(4 * kPageSize)[0] == Tag(4, 1));
    // The view object is reused: a new view starts from scratch.
    REQUIRE_OK(m.BeginFrozenView({0, kPages}));
    REQUIRE_OK(m.PinFrozen(pinned, ptrs));
    REQUIRE(Holds(ptrs[1], Tag(4, 1)));
    m.ReleaseFrozen(pinned);
    REQUIRE_OK(m.EndFrozenView());
    // After the view: plain memory again, no fault handler needed.
    Fill(m, 3, 2);
    REQUIRE(m.At(3 * kPageSize)[0] == Tag(3, 2));
  }
}

namespace {
// Page faults this thread took while running `f`.
template <typename F>
long FaultsDuring(F&& f) {
  rusage before{}, after{};
  ::getrusage(RUSAGE_THREAD, &before);
  f();
  ::getrusage(RUSAGE_THREAD, &after);
  return after.ru_minflt - before.ru_minflt + after.ru_majflt -
         before.ru_majflt;
}

// Whether page `page`'s PTE is uffd write-protected (pagemap bit 57).
bool WriteProtected(GuestMemory& m, uint64_t page) {
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  uint64_t entry = 0;
  const off_t off = static_cast<off_t>(
      reinterpret_cast<uintptr_t>(m.At(page * kPageSize)) / kPageSize * 8);
  const ssize_t n = ::pread(fd, &entry, sizeof entry, off);
  ::close(fd);
  REQUIRE(n == sizeof entry);
  return (entry >> 57) & 1;
}
}  // namespace

TEST_CASE(
    "guest memory: dirty tracking starts at its first use, so an untracked "
    "guest writes without faults, and a frozen view defers the start") {
  auto mem = NewMemory(true);
  GuestMemory& m = *mem;
  // Not yet tracked: no page is write-protected and rewriting all of
  // (pre-faulted) memory takes no fault per page. (ASan's shadow of these
  // pages faults in on first use: 1 fault per 8 pages.)
  REQUIRE_FALSE(WriteProtected(m, 0));
  REQUIRE_FALSE(WriteProtected(m, kPages - 1));
  REQUIRE(FaultsDuring([&] {
            for (uint64_t p = 0; p < kPages; ++p) Fill(m, p, 0);
          }) < static_cast<long>(kPages / 4));
  // A background snapshot's view on an untracked guest leaves it untracked.
  REQUIRE_OK(m.BeginFrozenView({0, kPages}));
  REQUIRE_OK(m.EndFrozenView());
  REQUIRE_FALSE(WriteProtected(m, 7));

  // The first use arms it and reports every page once (nothing was tracked
  // before); from then on each first write to a page faults and is logged.
  REQUIRE(HostLog(m).size() == kPages);
  REQUIRE(WriteProtected(m, 0));
  REQUIRE(WriteProtected(m, kPages - 1));
  REQUIRE(HostLog(m).empty());
  const long faults = FaultsDuring([&] {
    for (uint64_t p = 0; p < 64; ++p) Fill(m, p, 1);
  });
  REQUIRE(faults >= 64);
  REQUIRE(HostLog(m).size() == 64);

  // Started while a view stands: armed when the view ends.
  auto fresh = NewMemory(true);
  GuestMemory& f = *fresh;
  REQUIRE_OK(f.BeginFrozenView({0, kPages}));
  REQUIRE(HostLog(f).size() == kPages);  // nothing tracks writes in the view
  REQUIRE_OK(f.EndFrozenView());
  REQUIRE(WriteProtected(f, 3));
  REQUIRE(HostLog(f).size() == kPages);  // the view's end reports all once
  REQUIRE(HostLog(f).empty());
  Fill(f, 3, 2);
  REQUIRE(HostLog(f) == std::vector<Gpa>{3 * kPageSize});

  // Untracked memory says so.
  REQUIRE_CODE(NewMemory(false)->StartTracking(),
               cpc::Code::kFailedPrecondition);
}
