// sha256_test.cc — SHA-256 (FIPS 180-2 appendix B) and HMAC-SHA256 (RFC 4231)
// test vectors, plus incremental-update equivalence.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "sha256.h"

namespace epd::transport {
namespace {

std::vector<uint8_t> unhex(const std::string& h) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out.push_back(uint8_t(std::stoul(h.substr(i, 2), nullptr, 16)));
  return out;
}

TEST(Sha256, Fips180Vectors) {
  EXPECT_EQ(to_hex(sha256("abc", 3)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(to_hex(sha256(two.data(), two.size())),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(to_hex(sha256("", 0)), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  std::string million(1000000, 'a');
  EXPECT_EQ(to_hex(sha256(million.data(), million.size())),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, IncrementalEqualsOneShot) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int round = 0; round < 50; ++round) {
    std::vector<uint8_t> data(rng() % 1000);
    for (auto& b : data) b = uint8_t(rng());
    Sha256 s;
    size_t pos = 0;
    for (int pieces = 0; pos < data.size() && pieces < 1000; ++pieces) {
      size_t n = std::min<size_t>(data.size() - pos, rng() % 130);
      s.update(data.data() + pos, n);
      pos += n;
    }
    s.update(data.data() + pos, data.size() - pos);
    EXPECT_EQ(to_hex(s.finish()), to_hex(sha256(data.data(), data.size())));
  }
}

struct HmacCase {
  std::string key_hex, data_hex, mac_hex;
  size_t truncate = 32;
};

TEST(HmacSha256, Rfc4231Vectors) {
  const std::string aa131(131 * 2, 'a');
  std::string key131;
  for (int i = 0; i < 131; ++i) key131 += "aa";
  std::string data_dd;
  for (int i = 0; i < 50; ++i) data_dd += "dd";
  std::string data_cd;
  for (int i = 0; i < 50; ++i) data_cd += "cd";
  auto hex = [](const std::string& s) {
    std::string out;
    char buf[3];
    for (unsigned char c : s) {
      snprintf(buf, sizeof(buf), "%02x", c);
      out += buf;
    }
    return out;
  };
  std::string key20;
  for (int i = 0; i < 20; ++i) key20 += "aa";
  const std::vector<HmacCase> cases = {
      {"0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", hex("Hi There"),
       "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
      {hex("Jefe"), hex("what do ya want for nothing?"),
       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
      {key20, data_dd, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
      {"0102030405060708090a0b0c0d0e0f10111213141516171819", data_cd,
       "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
      {"0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c", hex("Test With Truncation"),
       "a3b6167473100ee06e0c796c2955552b", 16},
      {key131, hex("Test Using Larger Than Block-Size Key - Hash Key First"),
       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
      {key131,
       hex("This is a test using a larger than block-size key and a larger than block-size data. "
           "The key needs to be hashed before being used by the HMAC algorithm."),
       "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("RFC 4231 test case " + std::to_string(i + 1));
    auto key = unhex(cases[i].key_hex);
    auto data = unhex(cases[i].data_hex);
    Digest mac = hmac_sha256(key.data(), key.size(), data.data(), data.size());
    EXPECT_EQ(to_hex(mac).substr(0, cases[i].truncate * 2), cases[i].mac_hex);
  }
}

TEST(HmacSha256, DigestEqualDetectsEveryByte) {
  Digest a = sha256("x", 1);
  for (size_t i = 0; i < a.size(); ++i) {
    Digest b = a;
    b[i] ^= 0x01;
    EXPECT_FALSE(digest_equal(a, b)) << "byte " << i;
  }
  EXPECT_TRUE(digest_equal(a, a));
}

}  // namespace
}  // namespace epd::transport
