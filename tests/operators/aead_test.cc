#include "operators/aead.h"

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

using cpc::AeadEngine;
using cpc::Code;

std::vector<uint8_t> Hex(std::string_view s) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < s.size(); i += 2)
    out.push_back(static_cast<uint8_t>(
        std::stoi(std::string(s.substr(i, 2)), nullptr, 16)));
  return out;
}

struct Vector {
  const char* name;
  const char* key;
  const char* iv;
  const char* aad;
  const char* pt;
  const char* ct;
  const char* tag;
};

// McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 13-16
// (the AES-256 ones; also in NIST's gcmEncryptExtIV256 set).
const Vector kVectors[] = {
    {"TC13 empty",
     "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "", "", "",
     "530f8afbc74536b9a963b4f1c4cb738b"},
    {"TC14 one block",
     "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "", "00000000000000000000000000000000",
     "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
    {"TC15 64 bytes",
     "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "cafebabefacedbaddecaf888", "",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
     "b094dac5d93471bdec1a502270e3cc6c"},
    {"TC16 AAD + 60 bytes",
     "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "cafebabefacedbaddecaf888", "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"},
};

std::vector<const AeadEngine*> Engines() {
  auto e = cpc::AvailableAeadEngines();
  REQUIRE(!e.empty());
  return e;
}

TEST_CASE("operators/aead: engines are listed and selectable by name") {
  auto engines = Engines();
#if defined(CPC_HAVE_IPSEC_MB)
  REQUIRE(engines.size() == 2);
  CHECK(engines[0]->name() == "ipsec-mb");  // best first
  CHECK(engines[0]->code_path().find("arch=") != std::string::npos);
#endif
  CHECK(engines.back()->name() == "openssl");
  for (auto* e : engines) {
    auto found = cpc::FindAeadEngine(e->name());
    REQUIRE_OK(found);
    CHECK(*found == e);
    CHECK(!e->code_path().empty());
  }
  REQUIRE_CODE(cpc::FindAeadEngine("rot13"), Code::kNotFound);
  REQUIRE_CODE(engines[0]->NewKeyed(std::vector<uint8_t>(16)),
               Code::kInvalidArgument);

  // $CPC_AEAD overrides the default.
  const char* old = std::getenv("CPC_AEAD");
  std::string saved = old ? old : "";
  setenv("CPC_AEAD", "openssl", 1);
  auto def = cpc::FindAeadEngine();
  if (old) {
    setenv("CPC_AEAD", saved.c_str(), 1);
  } else {
    unsetenv("CPC_AEAD");
  }
  REQUIRE_OK(def);
  CHECK((*def)->name() == "openssl");
}

TEST_CASE("operators/aead: McGrew-Viega AES-256-GCM vectors on every engine") {
  for (auto* engine : Engines()) {
    for (const Vector& v : kVectors) {
      INFO(engine->name() << " " << v.name);
      auto key = Hex(v.key), iv = Hex(v.iv), aad = Hex(v.aad), pt = Hex(v.pt),
           ct = Hex(v.ct), tag = Hex(v.tag);
      auto keyed = engine->NewKeyed(key);
      REQUIRE_OK(keyed);
      std::vector<uint8_t> out(pt.size());
      std::array<uint8_t, 16> t{};
      REQUIRE_OK(
          (*keyed)->Seal(cpc::AeadIv(iv.data(), 12), aad, pt, out.data(), t));
      CHECK(out == ct);
      CHECK(std::vector<uint8_t>(t.begin(), t.end()) == tag);

      std::vector<uint8_t> back(ct.size());
      REQUIRE_OK((*keyed)->Open(cpc::AeadIv(iv.data(), 12), aad, ct,
                                back.data(),
                                std::span<const uint8_t, 16>(tag.data(), 16)));
      CHECK(back == pt);

      // One flipped bit anywhere is refused.
      auto refused = [&](std::vector<uint8_t> c, std::vector<uint8_t> a,
                         std::vector<uint8_t> tg) {
        std::vector<uint8_t> sink(c.size());
        REQUIRE_CODE(
            (*keyed)->Open(cpc::AeadIv(iv.data(), 12), a, c, sink.data(),
                           std::span<const uint8_t, 16>(tg.data(), 16)),
            Code::kAuthFailed);
      };
      if (!ct.empty()) {
        auto c = ct;
        c[c.size() / 2] ^= 0x04;
        refused(c, aad, tag);
      }
      if (!aad.empty()) {
        auto a = aad;
        a[0] ^= 0x80;
        refused(ct, a, tag);
      }
      auto tg = tag;
      tg[15] ^= 0x01;
      refused(ct, aad, tg);
    }
  }
}

TEST_CASE("operators/aead: each engine opens what the other sealed") {
  std::mt19937 rng(7);
  std::vector<uint8_t> key(32), page(4096), aad(16);
  for (auto& b : key) b = static_cast<uint8_t>(rng());
  for (auto& b : page) b = static_cast<uint8_t>(rng());
  for (auto& b : aad) b = static_cast<uint8_t>(rng());
  uint8_t iv[12];
  cpc::MakeRecordIv(0x0102030405060708ull, 3, 9, iv);
  for (auto* a : Engines()) {
    for (auto* b : Engines()) {
      INFO(a->name() << " -> " << b->name());
      auto ka = a->NewKeyed(key);
      auto kb = b->NewKeyed(key);
      REQUIRE_OK(ka);
      REQUIRE_OK(kb);
      std::vector<uint8_t> ct(page.size()), back(page.size());
      std::array<uint8_t, 16> tag{};
      REQUIRE_OK((*ka)->Seal(iv, aad, page, ct.data(), tag));
      CHECK(ct != page);
      REQUIRE_OK((*kb)->Open(iv, aad, ct, back.data(), tag));
      CHECK(back == page);
      // Same keyed object, next IV: only the IV changes, and it matters.
      uint8_t iv2[12];
      cpc::MakeRecordIv(0x0102030405060708ull, 3, 10, iv2);
      REQUIRE_CODE((*kb)->Open(iv2, aad, ct, back.data(), tag),
                   Code::kAuthFailed);
    }
  }
}

}  // namespace
