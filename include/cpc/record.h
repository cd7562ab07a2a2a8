// Vocabulary of libcpc's record format (docs/FORMAT.md is the normative
// spec): what maintenance modules, transports and file sinks need to frame,
// route and describe records without decrypting them. Plain constants and
// value types; no state, no threading concerns.
#ifndef CPC_RECORD_H_
#define CPC_RECORD_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include <cpc/status.h>
#include <cpc/types.h>
#include <cpc/version.h>

CPC_NAMESPACE_BEGIN

// Format version written into every record header. Bumped on any layout or
// semantic change; a reader refuses other versions (kRecordMalformed).
inline constexpr uint16_t kRecordVersion = 1;
// "CPCR" read as a little-endian u32.
inline constexpr uint32_t kRecordMagic = 0x52435043;

// Record prefix: 64-byte header, 16-byte header tag, 48 zero bytes, so that
// the metadata and page payloads start 64-byte aligned.
inline constexpr size_t kRecordHeaderBytes = 64;
inline constexpr size_t kRecordPrefixBytes = 128;
// Every block (page or vCPU state) starts with this head: 16 bytes of
// cleartext descriptor, 16-byte tag, 32 zero bytes.
inline constexpr size_t kBlockHeadBytes = 64;
// One memory-record page-table entry (gpa u64, version u32, flags u32).
inline constexpr size_t kPageEntryBytes = 16;
// Items (pages) per record: the IV slot is 16 bits and slot 0 is the header.
inline constexpr uint32_t kMaxRecordItems = 4096;
inline constexpr uint32_t kDefaultPagesPerRecord = 128;
// Largest vCPU state blob a record carries.
inline constexpr uint32_t kMaxVcpuStateBytes = 1u << 20;
// Largest stream index (u16 on the wire) + 1.
inline constexpr uint32_t kMaxStreams = 256;
// Epochs are u32; this value is never used as an epoch.
inline constexpr uint32_t kMaxEpoch = 0xFFFFFFFEu;

enum class RecordType : uint8_t {
  kMemory = 1,      // N guest pages (MEE / MDI)
  kVcpuState = 2,   // one gvCPU's architectural state (SEE / SDI)
  kEpochToken = 3,  // closes an epoch: exact record counts of every stream
  kStartToken = 4,  // destination may run: all state sent, last epoch closed
  kAbortToken = 5,  // destination aborted and will never run (backward key)
  kEnd = 6,         // no more records on this stream
  // After a network cut: where the destination stands (its epoch and each
  // stream's record count in it), sealed with the backward key.
  kResumeAck = 7,
  // The source's answer: closes the interrupted epoch at the acknowledged
  // counts, opens a later epoch and moves each stream's counter forward
  // past everything sealed meanwhile (IVs are never reused).
  kResume = 8,
};

// Flags of a page-table entry.
inline constexpr uint32_t kPageFlagZero = 1u << 0;  // elided all-zero page
inline constexpr uint32_t kPageFlagsKnown = kPageFlagZero;

// Identifies one session (one key pair). Carried in every header.
using SessionId = std::array<uint8_t, 16>;

// The fixed-size header fields, decoded. What a transport needs to route
// (stream) and frame (record_bytes) a record; nothing here is authenticated
// until the receiver has checked the header tag.
struct RecordHeader {
  uint16_t version = kRecordVersion;
  RecordType type = RecordType::kMemory;
  uint8_t flags = 0;
  uint16_t stream = 0;
  uint32_t item_count = 0;
  uint64_t counter = 0;
  uint32_t epoch = 0;
  uint32_t meta_bytes = 0;
  uint32_t record_bytes = 0;
  SessionId session_id{};
};

// Decodes the header at the start of `bytes` without authenticating it.
// kRecordTruncated if fewer than kRecordPrefixBytes; kRecordMalformed for a
// wrong magic, version, type, nonzero reserved/padding bytes or lengths that
// cannot hold. Never reads past `bytes`.
CPC_EXPORT Result<RecordHeader> PeekRecordHeader(
    std::span<const uint8_t> bytes);

// Wire size of a memory record with `pages` pages, none elided.
constexpr size_t MemoryRecordBytes(uint32_t pages) {
  return kRecordPrefixBytes +
         ((size_t{pages} * kPageEntryBytes + 63) / 64) * 64 +
         size_t{pages} * (kBlockHeadBytes + kPageSize);
}

CPC_NAMESPACE_END

#endif  // CPC_RECORD_H_
