// The four CPC operators as pipelines over a GuestPlatform:
//   MEE  Memory Encryption Export   guest pages  -> memory records
//   SEE  State Encryption Export    gvCPU state  -> vCPU-state records
//   MDI  Memory Decryption Import   records      -> guest pages (+ tokens)
//   SDI  State Decryption Import    record       -> ImportVcpuState
//
// Records go straight into / come straight from a caller-supplied buffer,
// normally the host-shared ring: MEE encrypts from the guest page directly
// into `out` (no intermediate copy). One call works on one stream; run one
// call per hvCPU on different streams to parallelise.
//
// Call context: `ctx` may be null. Otherwise, before each record the work is
// charged (ctx->Charge(bytes of guest data); kBudgetExceeded stops before
// the record is produced/applied) and between records ctx->MaybeYield() is
// called; a kAborted from it stops the pipeline and is returned.
//
// Progress: `progress` (optional) always tells what was completed, also when
// an error is returned: records before the failing one are complete and
// valid (export) / applied (import).
//
// Ownership: everything is borrowed for the duration of the call. Threading:
// as the stream objects (one thread per stream). Errors: see sender.h and
// receiver.h; platform errors pass through.
#ifndef CPC_SRC_OPERATORS_OPERATORS_H_
#define CPC_SRC_OPERATORS_OPERATORS_H_

#include <cstddef>
#include <cstdint>
#include <span>

#include <cpc/backend.h>
#include <cpc/module.h>
#include <cpc/status.h>

#include "operators/receiver.h"
#include "operators/sender.h"

CPC_NAMESPACE_BEGIN

struct ExportProgress {
  size_t pages = 0;    // MEE: pages sealed; SEE: gvCPU states sealed
  size_t bytes = 0;    // bytes written to `out`
  size_t records = 0;  // records written
};

struct ImportProgress {
  size_t bytes = 0;    // bytes consumed from `in` (whole records only)
  size_t records = 0;  // records applied
  size_t pages = 0;    // guest pages written
  size_t vcpus = 0;    // gvCPU states imported
};

// MEE. Seals `pages` in records of stream.options().pages_per_record into
// `out` until all are sealed or `out` has no room for the next record; the
// latter returns OK with progress->pages < pages.size() (flush the ring and
// call again with the rest). Page reads (PrivatePageForRead) are resolved
// for a whole record before its counter is consumed.
//
// `source` kFrozen reads the pages as they were when the platform's frozen
// view began (GuestPlatform::PinFrozenPages; each page once per view), pinned
// only while their record is sealed.
enum class PageSource { kLive, kFrozen };
Status ExportMemory(StreamSender& stream, GuestPlatform& platform,
                    std::span<const PageRef> pages, std::span<uint8_t> out,
                    CallContext* ctx, ExportProgress* progress = nullptr,
                    PageSource source = PageSource::kLive);

// SEE. One record per gvCPU in `vcpus` (ExportVcpuState: the gvCPU must be
// paused). Stops early, OK, when `out` is full, like ExportMemory.
Status ExportVcpuStates(StreamSender& stream, GuestPlatform& platform,
                        std::span<const uint32_t> vcpus, std::span<uint8_t> out,
                        CallContext* ctx, ExportProgress* progress = nullptr);

// MDI. Applies every record in `in` (memory pages, and whatever else the
// stream carries: vCPU state, tokens, End) through the receiver's rules.
// `in` must hold whole records (kRecordTruncated for a partial last one).
Status ImportRecords(ReceiverStream& stream, GuestPlatform& platform,
                     std::span<const uint8_t> in, CallContext* ctx,
                     ImportProgress* progress = nullptr);

// SDI. Applies one vCPU-state record (kRecordMalformed for another type).
Status ImportVcpuStateRecord(ReceiverStream& stream, GuestPlatform& platform,
                             std::span<const uint8_t> record, CallContext* ctx);

CPC_NAMESPACE_END

#endif  // CPC_SRC_OPERATORS_OPERATORS_H_
