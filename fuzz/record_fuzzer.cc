// libFuzzer target: the record parser and the receiver's import rules (MDI
// over a buffer of records). Whatever the bytes, the receiver must return a
// Status - no crash, no out-of-bounds access, no leak - and guest memory may
// change only through records that authenticate.
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz/record_fuzz_common.h"
#include "operators/mem_platform.h"
#include "operators/operators.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)cpc::PeekRecordHeader({data, size});
  if (size < 1) return 0;
  static const cpc::AeadEngine* engine = *cpc::FindAeadEngine();
  static const auto key = cpc_fuzz::Key();
  cpc::ReceiverOptions ro;
  ro.streams = cpc_fuzz::kStreams;
  ro.memory_bytes = uint64_t{cpc_fuzz::kPages} * cpc::kPageSize;
  ro.vcpu_count = cpc_fuzz::kVcpus;
  ro.max_pages_per_record = cpc_fuzz::kPagesPerRecord;
  auto rx = cpc::Receiver::Create(*engine, key, cpc_fuzz::kSession, ro);
  if (!rx.ok()) __builtin_trap();
  cpc_test::MemPlatform platform(ro.memory_bytes, cpc_fuzz::kVcpus, 64);
  const uint32_t stream = data[0] % cpc_fuzz::kStreams;
  cpc::ImportProgress progress;
  cpc::Status s = cpc::ImportRecords((*rx)->stream(stream), platform,
                                     {data + 1, size - 1}, nullptr, &progress);
  // Progress never runs past the input, and an OK status consumed it all.
  if (progress.bytes > size - 1 || (s.ok() && progress.bytes != size - 1))
    __builtin_trap();
  return 0;
}
