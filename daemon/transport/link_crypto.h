// link_crypto.h — the cluster link's cryptography, on libsodium: the key
// schedule of the handshake (transcript hash, HKDF-SHA256) and the sealed
// frames every message after the handshake travels in.
//
// A sealed frame is a sequence of records, each ChaCha20-Poly1305 (IETF) under
// the direction's key with the record's number as its nonce:
//   header record:  the 32-byte frame header, encrypted, + 16-byte tag;
//   payload records: the payload in pieces of kSealChunkBytes (the last may be
//                    shorter), each encrypted + 16-byte tag.
// Record numbers count from 0 per direction and never repeat (a key lives for
// one connection), so a replayed, reordered, dropped or altered record fails
// its tag. The header is opened before any of its fields is used; a payload
// piece is opened before it reaches its destination.
// FrameSealer / FrameOpener are owned by one connection's one direction and
// not thread-safe (the caller's lock orders the records).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "status.h"
#include "wire.h"

namespace epd::transport {

constexpr size_t kKeyBytes = 32;
constexpr size_t kTagBytes = 16;
constexpr size_t kSealedHeaderBytes = kHeaderBytes + kTagBytes;
constexpr size_t kSealChunkBytes = 64u << 10;

using Key = std::array<uint8_t, kKeyBytes>;

// sodium_init() once per process; EPD_ERR_SYSTEM when libsodium cannot start.
Status link_crypto_init();

// Fills `out` from libsodium's CSPRNG.
void link_random(void* out, size_t bytes);

// Constant-time equality of two 32-byte values.
bool equal_32(const uint8_t* a, const uint8_t* b);

// HKDF-SHA256 (RFC 5869): Extract(salt, ikm), then the first 32-byte block
// of Expand with `info`.
Key hkdf_sha256(const uint8_t* salt, size_t salt_bytes, const void* ikm, size_t ikm_bytes, const std::string& info);

// What the handshake derives from the shared secret and its transcript.
struct LinkSecrets {
  Key initiator_proof{};  // the dialing side proves with this
  Key responder_proof{};
  Key initiator_key{};    // dialer → acceptor records
  Key responder_key{};    // acceptor → dialer records
};

// SHA-256 over a label, the dialer's HELLO payload and the acceptor's HELLO
// payload (both node ids, both nonces, both versions), then HKDF-SHA256
// (salt: that hash, input: the secret) expanded into the four values above.
LinkSecrets derive_link_secrets(const std::string& secret, const uint8_t* initiator_hello,
                                const uint8_t* responder_hello, size_t hello_bytes);

// Bytes a sealed frame with `payload` bytes takes on the wire; false when it
// does not fit in 64 bits.
bool sealed_frame_bytes(uint64_t payload, uint64_t* out);
// Payload records of a frame with `payload` bytes.
inline uint64_t sealed_chunks(uint64_t payload) { return (payload + kSealChunkBytes - 1) / kSealChunkBytes; }

class FrameSealer {
 public:
  explicit FrameSealer(const Key& key) : key_(key) {}
  // Reserves `records` consecutive record numbers and returns the first: a
  // frame sent in pieces takes its numbers before anything else is sealed.
  uint64_t reserve(uint64_t records) {
    const uint64_t first = next_;
    next_ += records;
    return first;
  }
  // The header record (kSealedHeaderBytes into `out`), record number `seq`.
  void seal_header(const FrameHeader& h, uint64_t seq, uint8_t* out) const;
  // One payload record: `bytes` (<= kSealChunkBytes) from `in`, bytes +
  // kTagBytes into `out` (which may be `in`).
  void seal_chunk(const uint8_t* in, size_t bytes, uint64_t seq, uint8_t* out) const;
  // A whole frame (header + payload bytes, as make_frame builds it) sealed.
  std::vector<uint8_t> seal_frame(const std::vector<uint8_t>& plain);

 private:
  Key key_;
  uint64_t next_ = 0;
};

class FrameOpener {
 public:
  explicit FrameOpener(const Key& key) : key_(key) {}
  // Opens the next header record into `plain` (kHeaderBytes). An altered,
  // replayed, reordered or foreign record: EPD_ERR_PROTOCOL naming `peer`.
  Status open_header(const uint8_t* in, uint8_t* plain, const std::string& peer);
  // Opens the next payload record (`bytes` + kTagBytes at `in`) into `out`.
  Status open_chunk(const uint8_t* in, size_t bytes, uint8_t* out, const std::string& peer);
  uint64_t records() const { return next_; }

 private:
  Status failed(const char* what, const std::string& peer) const;
  Key key_;
  uint64_t next_ = 0;
};

}  // namespace epd::transport
