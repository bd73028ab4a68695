// sha256.h — SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), small and
// dependency-free, for the daemon-to-daemon challenge-response handshake.
//
// Not a general crypto library: no secrets are ever sent, only HMACs of fresh
// nonces. Sha256 is a value type owned by its caller; no shared state, so any
// number of threads may use their own instances concurrently.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace epd::transport {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256() { reset(); }
  void reset();
  void update(const void* data, size_t bytes);
  void update(std::string_view s) { update(s.data(), s.size()); }
  Digest finish();  // the object must be reset() before reuse

 private:
  void compress(const uint8_t* block);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_bytes_ = 0;
};

Digest sha256(const void* data, size_t bytes);

// Incremental HMAC-SHA256: key, then any number of update() calls, then finish().
class HmacSha256 {
 public:
  HmacSha256(const void* key, size_t key_bytes);
  void update(const void* data, size_t bytes) { inner_.update(data, bytes); }
  Digest finish();

 private:
  Sha256 inner_;
  uint8_t opad_key_[64];
};

Digest hmac_sha256(const void* key, size_t key_bytes, const void* data, size_t bytes);

// Compares in time independent of where the first difference is.
bool digest_equal(const Digest& a, const Digest& b);

std::string to_hex(const Digest& d);

}  // namespace epd::transport
