#include "emulator/launch.h"

#include <cstring>

#include "core/bytes.h"
#include "emulator/channel.h"

CPC_NAMESPACE_BEGIN
namespace emu {

std::vector<uint8_t> LaunchParams::Encode() const {
  std::vector<uint8_t> out;
  ByteWriter w(&out);
  w.String(platform);
  w.String(config.image);
  w.Int<uint64_t>(config.memory_bytes);
  w.Int<uint32_t>(config.gvcpus);
  w.Int<uint32_t>(static_cast<uint32_t>(config.hvcpus.size()));
  for (const auto& h : config.hvcpus) {
    w.Int<uint32_t>(h.index);
    w.Int<uint8_t>(static_cast<uint8_t>(h.isolation));
  }
  PutBlob(w, config.policy);
  w.Int<uint32_t>(static_cast<uint32_t>(config.options.size()));
  for (const auto& [k, v] : config.options) {
    w.String(k);
    w.String(v);
  }
  w.Int<uint64_t>(shared_bytes);
  w.Int<uint64_t>(chip_seed);
  return out;
}

Result<LaunchParams> LaunchParams::Decode(std::span<const uint8_t> b) {
  ByteReader r(b);
  LaunchParams p;
  p.platform = r.String();
  p.config.image = r.String();
  p.config.memory_bytes = r.Int<uint64_t>();
  p.config.gvcpus = r.Int<uint32_t>();
  const uint32_t nh = r.Int<uint32_t>();
  for (uint32_t i = 0; i < nh && r.ok() && i < 256; ++i) {
    HvcpuConfig h;
    h.index = r.Int<uint32_t>();
    h.isolation = static_cast<Isolation>(r.Int<uint8_t>() != 0);
    p.config.hvcpus.push_back(h);
  }
  p.config.policy = GetBlob(r);
  const uint32_t no = r.Int<uint32_t>();
  for (uint32_t i = 0; i < no && r.ok(); ++i) {
    std::string k = r.String();
    p.config.options[k] = r.String();
  }
  p.shared_bytes = r.Int<uint64_t>();
  p.chip_seed = r.Int<uint64_t>();
  if (!r.done())
    return Status(Code::kInvalidArgument, "malformed launch message");
  return p;
}

std::vector<uint8_t> LaunchedInfo::Encode() const {
  std::vector<uint8_t> out;
  ByteWriter w(&out);
  w.Bytes(identity.measurement);
  w.Bytes(identity.instance_id);
  w.Int<int32_t>(pid);
  w.Int<uint64_t>(guest_base);
  w.Int<uint64_t>(memory_bytes);
  w.Int<uint64_t>(cpc_base);
  w.Int<uint32_t>(static_cast<uint32_t>(hvcpu_isolation.size()));
  for (Isolation i : hvcpu_isolation) w.Int<uint8_t>(static_cast<uint8_t>(i));
  return out;
}

Result<LaunchedInfo> LaunchedInfo::Decode(std::span<const uint8_t> b) {
  ByteReader r(b);
  LaunchedInfo li;
  auto m = r.Bytes(32);
  auto id = r.Bytes(16);
  if (r.ok()) {
    std::memcpy(li.identity.measurement.data(), m.data(), 32);
    std::memcpy(li.identity.instance_id.data(), id.data(), 16);
  }
  li.pid = r.Int<int32_t>();
  li.guest_base = r.Int<uint64_t>();
  li.memory_bytes = r.Int<uint64_t>();
  li.cpc_base = r.Int<uint64_t>();
  const uint32_t n = r.Int<uint32_t>();
  for (uint32_t i = 0; i < n && r.ok(); ++i)
    li.hvcpu_isolation.push_back(static_cast<Isolation>(r.Int<uint8_t>() != 0));
  if (!r.done())
    return Status(Code::kInvalidArgument, "malformed launched message");
  return li;
}

}  // namespace emu
CPC_NAMESPACE_END
