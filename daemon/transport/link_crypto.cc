// link_crypto.cc — see link_crypto.h.
#include "link_crypto.h"

#include <sodium.h>

#include <algorithm>
#include <cstring>

namespace epd::transport {

namespace {

constexpr char kTranscriptLabel[] = "epd cluster link v2 transcript";
static_assert(crypto_aead_chacha20poly1305_ietf_KEYBYTES == kKeyBytes);
static_assert(crypto_aead_chacha20poly1305_ietf_ABYTES == kTagBytes);
static_assert(crypto_aead_chacha20poly1305_ietf_NPUBBYTES == 12);

// The record number as the 96-bit nonce (little-endian, high 32 bits zero).
void record_nonce(uint64_t seq, uint8_t nonce[12]) {
  std::memset(nonce, 0, 12);
  std::memcpy(nonce, &seq, sizeof(seq));
}

using Hmac = std::array<uint8_t, crypto_auth_hmacsha256_BYTES>;

Hmac hmac(const uint8_t* key, size_t key_bytes, const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, key, key_bytes);
  crypto_auth_hmacsha256_update(&st, static_cast<const uint8_t*>(a), a_bytes);
  if (b_bytes > 0) crypto_auth_hmacsha256_update(&st, static_cast<const uint8_t*>(b), b_bytes);
  Hmac out;
  crypto_auth_hmacsha256_final(&st, out.data());
  sodium_memzero(&st, sizeof(st));
  return out;
}

}  // namespace

Status link_crypto_init() {
  if (sodium_init() < 0) return make_status(EPD_ERR_SYSTEM, "libsodium failed to initialise (sodium_init)");
  return Status::ok();
}

void link_random(void* out, size_t bytes) { randombytes_buf(out, bytes); }

bool equal_32(const uint8_t* a, const uint8_t* b) { return crypto_verify_32(a, b) == 0; }

Key hkdf_sha256(const uint8_t* salt, size_t salt_bytes, const void* ikm, size_t ikm_bytes, const std::string& info) {
  Hmac prk = hmac(salt, salt_bytes, ikm, ikm_bytes, nullptr, 0);  // Extract
  const uint8_t one = 1;                                            // Expand: T(1) = HMAC(PRK, info | 0x01)
  const Hmac t1 = hmac(prk.data(), prk.size(), info.data(), info.size(), &one, 1);
  sodium_memzero(prk.data(), prk.size());
  Key k;
  std::memcpy(k.data(), t1.data(), k.size());
  return k;
}

LinkSecrets derive_link_secrets(const std::string& secret, const uint8_t* initiator_hello,
                                const uint8_t* responder_hello, size_t hello_bytes) {
  uint8_t transcript[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_state hs;
  crypto_hash_sha256_init(&hs);
  crypto_hash_sha256_update(&hs, reinterpret_cast<const uint8_t*>(kTranscriptLabel), sizeof(kTranscriptLabel));
  crypto_hash_sha256_update(&hs, initiator_hello, hello_bytes);
  crypto_hash_sha256_update(&hs, responder_hello, hello_bytes);
  crypto_hash_sha256_final(&hs, transcript);
  auto derive = [&](const char* info) {
    return hkdf_sha256(transcript, sizeof(transcript), secret.data(), secret.size(), info);
  };
  LinkSecrets s;
  s.initiator_proof = derive("epd link proof: initiator");
  s.responder_proof = derive("epd link proof: responder");
  s.initiator_key = derive("epd link key: initiator to responder");
  s.responder_key = derive("epd link key: responder to initiator");
  return s;
}

bool sealed_frame_bytes(uint64_t payload, uint64_t* out) {
  const uint64_t tags = sealed_chunks(payload) * kTagBytes;  // <= payload / 4096 + 16: no wrap
  uint64_t sum = 0;
  if (__builtin_add_overflow(payload, tags, &sum) || __builtin_add_overflow(sum, kSealedHeaderBytes, &sum))
    return false;
  *out = sum;
  return true;
}

void FrameSealer::seal_header(const FrameHeader& h, uint64_t seq, uint8_t* out) const {
  uint8_t plain[kHeaderBytes];
  encode_header(h, plain);
  seal_chunk(plain, kHeaderBytes, seq, out);
}

void FrameSealer::seal_chunk(const uint8_t* in, size_t bytes, uint64_t seq, uint8_t* out) const {
  uint8_t nonce[12];
  record_nonce(seq, nonce);
  unsigned long long tag_len = 0;
  crypto_aead_chacha20poly1305_ietf_encrypt_detached(out, out + bytes, &tag_len, in, bytes, nullptr, 0, nullptr,
                                                     nonce, key_.data());
}

std::vector<uint8_t> FrameSealer::seal_frame(const std::vector<uint8_t>& plain) {
  // Only this module's own control frames come here (small, well-formed).
  FrameHeader h;
  const uint8_t* p = plain.data();
  std::memcpy(&h.magic, p, 4);
  h.type = static_cast<FrameType>(p[4]);
  h.flags = p[5];
  std::memcpy(&h.reserved, p + 6, 2);
  std::memcpy(&h.a, p + 8, 4);
  std::memcpy(&h.imm, p + 12, 4);
  std::memcpy(&h.offset, p + 16, 8);
  h.length = plain.size() - kHeaderBytes;
  uint64_t total = 0;
  (void)sealed_frame_bytes(h.length, &total);
  std::vector<uint8_t> out(total);
  uint64_t seq = reserve(1 + sealed_chunks(h.length));
  seal_header(h, seq++, out.data());
  size_t at = kSealedHeaderBytes;
  for (uint64_t done = 0; done < h.length; seq++) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kSealChunkBytes, h.length - done));
    seal_chunk(p + kHeaderBytes + done, n, seq, out.data() + at);
    done += n;
    at += n + kTagBytes;
  }
  return out;
}

Status FrameOpener::failed(const char* what, const std::string& peer) const {
  return make_status(EPD_ERR_PROTOCOL,
                     "%s: %s record %llu of the connection failed its integrity check (altered, replayed, "
                     "reordered or dropped on the way, or not sealed with this connection's key)",
                     peer.c_str(), what, static_cast<unsigned long long>(next_));
}

Status FrameOpener::open_header(const uint8_t* in, uint8_t* plain, const std::string& peer) {
  return open_chunk(in, kHeaderBytes, plain, peer).is_ok() ? Status::ok() : failed("header", peer);
}

Status FrameOpener::open_chunk(const uint8_t* in, size_t bytes, uint8_t* out, const std::string& peer) {
  uint8_t nonce[12];
  record_nonce(next_, nonce);
  if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(out, nullptr, in, bytes, in + bytes, nullptr, 0, nonce,
                                                         key_.data()) != 0) {
    return failed("payload", peer);
  }
  ++next_;
  return Status::ok();
}

}  // namespace epd::transport
