// link_crypto_test.cc — the cluster link's key schedule and sealed records
// (link_crypto.h): HKDF-SHA256 against RFC 5869, frames of several records
// round-trip, and an altered, replayed, reordered or foreign record fails.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "link_crypto.h"
#include "wire.h"

namespace epd::transport {
namespace {

std::vector<uint8_t> from_hex(const std::string& h) {
  std::vector<uint8_t> v;
  for (size_t i = 0; i + 1 < h.size(); i += 2) v.push_back(static_cast<uint8_t>(std::stoul(h.substr(i, 2), nullptr, 16)));
  return v;
}

TEST(Hkdf, MatchesRfc5869TestCase1) {
  ASSERT_TRUE(link_crypto_init().is_ok());
  const std::vector<uint8_t> ikm(22, 0x0b), salt = from_hex("000102030405060708090a0b0c");
  const std::vector<uint8_t> info = from_hex("f0f1f2f3f4f5f6f7f8f9");
  const Key k = hkdf_sha256(salt.data(), salt.size(), ikm.data(), ikm.size(), std::string(info.begin(), info.end()));
  // The first 32 of the RFC's 42 output bytes.
  const std::vector<uint8_t> want = from_hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf");
  EXPECT_EQ(std::vector<uint8_t>(k.begin(), k.end()), want);
}

TEST(Hkdf, TranscriptAndSecretBothChangeEveryValue) {
  ASSERT_TRUE(link_crypto_init().is_ok());
  uint8_t h1[kHelloBytes], h2[kHelloBytes];
  for (size_t i = 0; i < kHelloBytes; ++i) {
    h1[i] = static_cast<uint8_t>(i);
    h2[i] = static_cast<uint8_t>(i * 3 + 1);
  }
  const LinkSecrets a = derive_link_secrets("secret-0123456789", h1, h2, kHelloBytes);
  const LinkSecrets swapped = derive_link_secrets("secret-0123456789", h2, h1, kHelloBytes);
  const LinkSecrets other = derive_link_secrets("secret-0123456789x", h1, h2, kHelloBytes);
  const Key LinkSecrets::*fields[] = {&LinkSecrets::initiator_proof, &LinkSecrets::responder_proof,
                                      &LinkSecrets::initiator_key, &LinkSecrets::responder_key};
  for (auto f : fields) {
    EXPECT_NE(a.*f, swapped.*f);
    EXPECT_NE(a.*f, other.*f);
    for (auto g : fields)
      if (f != g) {
        EXPECT_NE(a.*f, a.*g);
      }
  }
  EXPECT_TRUE(equal_32(a.initiator_key.data(), derive_link_secrets("secret-0123456789", h1, h2, kHelloBytes).initiator_key.data()));
  EXPECT_FALSE(equal_32(a.initiator_key.data(), a.responder_key.data()));
}

// ---- sealed records ---------------------------------------------------------------------------
std::vector<uint8_t> sealed_test_frame(FrameSealer& s, size_t payload_bytes, std::vector<uint8_t>* payload) {
  std::mt19937_64 rng(payload_bytes);
  payload->resize(payload_bytes);
  for (uint8_t& b : *payload) b = static_cast<uint8_t>(rng());
  FrameHeader h;
  h.type = FrameType::kMessage;
  h.a = 77;
  return s.seal_frame(make_frame(h, payload->data(), payload->size()));
}

// Opens one sealed frame; the error of the first record that fails.
Status open_test_frame(FrameOpener& o, const std::vector<uint8_t>& f, std::vector<uint8_t>* payload) {
  uint8_t plain[kHeaderBytes];
  EPD_RETURN_IF_ERROR(o.open_header(f.data(), plain, "node 4"));
  WireLimits lim;
  Result<FrameHeader> h = decode_header(plain, lim, "node 4");
  if (!h) return h.status();
  payload->resize(h->length);
  size_t at = kSealedHeaderBytes;
  for (size_t done = 0; done < h->length;) {
    const size_t n = std::min<size_t>(kSealChunkBytes, h->length - done);
    EPD_RETURN_IF_ERROR(o.open_chunk(f.data() + at, n, payload->data() + done, "node 4"));
    done += n;
    at += n + kTagBytes;
  }
  return Status::ok();
}

TEST(Sealing, RoundTripOfFramesSpanningSeveralRecords) {
  ASSERT_TRUE(link_crypto_init().is_ok());
  Key k{};
  k[0] = 7;
  FrameSealer s(k);
  FrameOpener o(k);
  for (size_t n : {size_t(0), size_t(1), kSealChunkBytes, kSealChunkBytes + 1, 3 * kSealChunkBytes + 5}) {
    SCOPED_TRACE(n);
    std::vector<uint8_t> sent, got;
    const std::vector<uint8_t> f = sealed_test_frame(s, n, &sent);
    uint64_t want = 0;
    ASSERT_TRUE(sealed_frame_bytes(n, &want));
    EXPECT_EQ(f.size(), want);
    ASSERT_TRUE(open_test_frame(o, f, &got).is_ok());
    EXPECT_EQ(got, sent);
  }
  uint64_t out = 0;
  EXPECT_FALSE(sealed_frame_bytes(UINT64_MAX - 10, &out));
}

TEST(Sealing, AlteredReplayedReorderedOrForeignRecordsFail) {
  ASSERT_TRUE(link_crypto_init().is_ok());
  Key k{}, other{};
  k[0] = 1;
  other[0] = 2;
  std::vector<uint8_t> p;
  FrameSealer s(k);
  const std::vector<uint8_t> f0 = sealed_test_frame(s, 1000, &p), f1 = sealed_test_frame(s, 1000, &p);
  struct Case {
    const char* name;
    std::vector<std::vector<uint8_t>> frames;  // fed in order; the last must fail
    Key key;
  };
  std::vector<uint8_t> flipped = f0;
  flipped[kSealedHeaderBytes + 500] ^= 0x80;
  std::vector<uint8_t> flipped_header = f0;
  flipped_header[3] ^= 0x01;
  const std::vector<Case> cases = {
      {"payload bit flipped", {flipped}, k},
      {"header bit flipped", {flipped_header}, k},
      {"replayed", {f0, f0}, k},
      {"reordered", {f1}, k},
      {"sealed with another key", {f0}, other},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    FrameOpener o(c.key);
    std::vector<uint8_t> got;
    for (size_t i = 0; i + 1 < c.frames.size(); ++i) ASSERT_TRUE(open_test_frame(o, c.frames[i], &got).is_ok());
    Status st = open_test_frame(o, c.frames.back(), &got);
    EXPECT_EQ(st.code(), EPD_ERR_PROTOCOL) << st.to_string();
    EXPECT_NE(st.message().find("node 4"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("integrity check"), std::string::npos) << st.message();
  }
}

}  // namespace
}  // namespace epd::transport
