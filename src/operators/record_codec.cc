#include "operators/record_codec.h"

#include <fmt/format.h>

CPC_NAMESPACE_BEGIN
namespace {

Status Malformed(std::string msg) {
  return Status(Code::kRecordMalformed, std::move(msg));
}

}  // namespace

void EncodeHeader(const RecordHeader& h, uint8_t* out) {
  std::memset(out, 0, kRecordHeaderBytes);
  PutLe(out + hdr::kMagic, kRecordMagic, 4);
  PutLe(out + hdr::kVersion, h.version, 2);
  out[hdr::kType] = static_cast<uint8_t>(h.type);
  out[hdr::kFlags] = h.flags;
  PutLe(out + hdr::kStream, h.stream, 2);
  PutLe(out + hdr::kItemCount, h.item_count, 4);
  PutLe(out + hdr::kCounter, h.counter, 8);
  PutLe(out + hdr::kEpoch, h.epoch, 4);
  PutLe(out + hdr::kMetaBytes, h.meta_bytes, 4);
  PutLe(out + hdr::kRecordBytes, h.record_bytes, 4);
  std::memcpy(out + hdr::kSessionId, h.session_id.data(), h.session_id.size());
}

Result<RecordHeader> DecodePrefix(const uint8_t* p) {
  if (GetLe(p + hdr::kMagic, 4) != kRecordMagic)
    return Malformed("not a libcpc record (magic)");
  RecordHeader h;
  h.version = static_cast<uint16_t>(GetLe(p + hdr::kVersion, 2));
  if (h.version != kRecordVersion)
    return Malformed(fmt::format("record version {} (supported: {})", h.version,
                                 kRecordVersion));
  const uint8_t type = p[hdr::kType];
  if (type < static_cast<uint8_t>(RecordType::kMemory) ||
      type > static_cast<uint8_t>(RecordType::kResume))
    return Malformed(fmt::format("unknown record type {}", type));
  h.type = static_cast<RecordType>(type);
  h.flags = p[hdr::kFlags];
  h.stream = static_cast<uint16_t>(GetLe(p + hdr::kStream, 2));
  h.item_count = static_cast<uint32_t>(GetLe(p + hdr::kItemCount, 4));
  h.counter = GetLe(p + hdr::kCounter, 8);
  h.epoch = static_cast<uint32_t>(GetLe(p + hdr::kEpoch, 4));
  h.meta_bytes = static_cast<uint32_t>(GetLe(p + hdr::kMetaBytes, 4));
  h.record_bytes = static_cast<uint32_t>(GetLe(p + hdr::kRecordBytes, 4));
  std::memcpy(h.session_id.data(), p + hdr::kSessionId, h.session_id.size());
  if (h.flags != 0 || GetLe(p + hdr::kReserved0, 2) != 0 ||
      GetLe(p + hdr::kReserved1, 4) != 0 ||
      GetLe(p + hdr::kReserved2, 8) != 0 ||
      !AllZero(p + hdr::kPad, kRecordPrefixBytes - hdr::kPad))
    return Malformed("nonzero reserved header bytes");
  if (h.stream >= kMaxStreams)
    return Malformed(fmt::format("stream {} out of range", h.stream));
  if (h.epoch > kMaxEpoch) return Malformed("epoch out of range");

  // Per type: item count, exact metadata size, and the bounds of the body.
  const size_t base = kRecordPrefixBytes + Pad64(h.meta_bytes);
  size_t min_bytes = base, max_bytes = base;
  bool ok = true;
  switch (h.type) {
    case RecordType::kMemory:
      ok = h.item_count >= 1 && h.item_count <= kMaxRecordItems &&
           h.meta_bytes == size_t{h.item_count} * kPageEntryBytes;
      min_bytes = base + size_t{h.item_count} * kBlockHeadBytes;
      max_bytes = min_bytes + size_t{h.item_count} * kPageSize;
      break;
    case RecordType::kVcpuState:
      ok = h.item_count == 1 && h.meta_bytes == kVcpuMetaBytes;
      min_bytes = base + kBlockHeadBytes;
      max_bytes = min_bytes + Pad64(kMaxVcpuStateBytes);
      break;
    case RecordType::kEpochToken:
      ok = h.item_count == 0 && h.meta_bytes >= EpochMetaBytes(1) &&
           h.meta_bytes <= EpochMetaBytes(kMaxStreams) &&
           (h.meta_bytes - 8) % 8 == 0;
      break;
    case RecordType::kStartToken:
      ok = h.item_count == 0 && h.meta_bytes == kStartMetaBytes;
      break;
    case RecordType::kAbortToken:
      ok = h.item_count == 0 && h.meta_bytes == kAbortMetaBytes;
      break;
    case RecordType::kEnd:
      ok = h.item_count == 0 && h.meta_bytes == kEndMetaBytes;
      break;
    case RecordType::kResumeAck:
      ok = h.item_count == 0 && h.meta_bytes >= ResumeAckMetaBytes(1) &&
           h.meta_bytes <= ResumeAckMetaBytes(kMaxStreams) &&
           (h.meta_bytes - 8) % 8 == 0;
      break;
    case RecordType::kResume:
      ok = h.item_count == 0 && h.meta_bytes >= ResumeMetaBytes(1) &&
           h.meta_bytes <= ResumeMetaBytes(kMaxStreams) &&
           (h.meta_bytes - 8) % 16 == 0;
      break;
  }
  if (!ok)
    return Malformed(
        fmt::format("bad item count {} / metadata size {} for "
                    "record type {}",
                    h.item_count, h.meta_bytes, type));
  if (h.record_bytes < min_bytes || h.record_bytes > max_bytes ||
      h.record_bytes % 64 != 0)
    return Malformed(fmt::format("record length {} outside [{}, {}]",
                                 h.record_bytes, min_bytes, max_bytes));
  return h;
}

Result<RecordHeader> PeekRecordHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < kRecordPrefixBytes)
    return Status(Code::kRecordTruncated,
                  fmt::format("{} bytes, a record header needs {}",
                              bytes.size(), kRecordPrefixBytes));
  // Decode from a private copy: the input may be host-shared memory.
  uint8_t prefix[kRecordPrefixBytes];
  std::memcpy(prefix, bytes.data(), sizeof(prefix));
  return DecodePrefix(prefix);
}

CPC_NAMESPACE_END
