// handshake.h — the authenticated daemon-to-daemon handshake as a pure state
// machine: frames in, frames out. The TCP transport runs it over the socket
// stream, the RDMA transport over its first send/recv messages.
//
// Both sides are symmetric:
//   1. each sends HELLO {major, minor, node id, 32-byte random nonce};
//   2. on the peer's HELLO: a different major version is refused
//      (EPD_ERR_VERSION_MISMATCH, naming both versions), an unknown or
//      unexpected node id is refused (EPD_ERR_PERMISSION); else send AUTH =
//      HMAC-SHA256(secret, label | sender id | receiver id | sender nonce |
//      receiver nonce | both versions);
//   3. on the peer's AUTH: verify it (EPD_ERR_PERMISSION on mismatch); send
//      AUTH_OK carrying this side's region advert;
//   4. on the peer's AUTH_OK: done.
// A failure queues a REJECT frame (with the reason) for the peer before the
// caller closes. The secret itself is never sent.
// Owned by one connection; not thread-safe (one thread drives it).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "status.h"
#include "sha256.h"
#include "wire.h"

namespace epd::transport {

struct HandshakeParams {
  uint32_t my_node = 0;
  uint16_t major = kProtocolMajor;
  uint16_t minor = kProtocolMinor;
  std::string secret;
  std::optional<uint32_t> expected_peer;          // set by the dialing side
  std::function<bool(uint32_t)> is_known_peer;   // accepting side: node id allowed?
  std::function<std::vector<RegionInfo>()> local_regions;  // advert for AUTH_OK
  std::string remote;  // "host:port" of the other end, for messages
};

class Handshake {
 public:
  explicit Handshake(HandshakeParams p);

  // The HELLO frame to send first.
  std::vector<uint8_t> hello_frame() const;

  // Feeds one received frame. Frames to send are appended to `out` (also on
  // failure: a REJECT). Returns an error when the connection must be closed.
  Status on_frame(const FrameHeader& h, const uint8_t* payload,
                  std::vector<std::vector<uint8_t>>* out);

  bool done() const { return state_ == State::kDone; }
  // Valid once the peer's HELLO arrived (claimed, authenticated only when done()).
  std::optional<uint32_t> peer_node() const { return peer_node_; }
  const std::vector<RegionInfo>& peer_regions() const { return peer_regions_; }
  // "node 3 (127.0.0.1:4567)" or "127.0.0.1:4567" before HELLO.
  std::string peer_label() const;

 private:
  enum class State { kWaitHello, kWaitAuth, kWaitAuthOk, kDone, kFailed };
  Digest proof(uint32_t sender, uint32_t receiver, const uint8_t* sender_nonce,
               const uint8_t* receiver_nonce, uint16_t sender_major, uint16_t sender_minor,
               uint16_t receiver_major, uint16_t receiver_minor) const;
  Status fail(Status s, std::vector<std::vector<uint8_t>>* out, bool send_reject);

  HandshakeParams p_;
  State state_ = State::kWaitHello;
  uint8_t my_nonce_[kNonceBytes];
  HelloPayload peer_hello_;
  std::optional<uint32_t> peer_node_;
  std::vector<RegionInfo> peer_regions_;
  bool sent_auth_ok_ = false;
};

// Fills `out` from the kernel's CSPRNG (getrandom); aborts never, returns errors.
Status random_bytes(void* out, size_t bytes);

// The REGIONS frame a transport queues on a connection when its handshake
// completes: the whole current advert (`regions`, read under the lock that
// guards the region table), or an empty vector when nothing is registered.
//
// Why: the AUTH_OK advert is built when the peer's AUTH arrives, and
// register_region() pushes a new region only to connections already
// established. A region registered between the two reaches neither, and the
// peer's write() to it then fails as "no region". Both transports therefore
// queue this frame while holding that same lock, in the step that makes the
// connection established (visible to register_region's push and to callers).
// Every region is then in the AUTH_OK, in this frame, or pushed later.
// Ordering: the frame follows our AUTH_OK, so the peer has finished its
// handshake when it reads it, and it precedes anything a caller sends on the
// connection (a caller finds the connection only after that step).
std::vector<uint8_t> regions_frame_after_handshake(const std::vector<RegionInfo>& regions);

}  // namespace epd::transport
