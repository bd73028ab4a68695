// handshake.h — the mutual, connection-bound daemon-to-daemon handshake as a
// pure state machine: frames in, frames out. The TCP transport runs it over
// the socket stream, the RDMA transport over its first send/recv messages.
//
// The dialing side is the initiator (I), the accepting side the responder (R):
//   1. each sends HELLO {major, minor, node id, 32-byte random nonce} at once;
//   2. on the peer's HELLO: a different major version is refused
//      (EPD_ERR_VERSION_MISMATCH, naming both versions), an unknown or
//      unexpected node id is refused (EPD_ERR_PERMISSION). Both sides now
//      hold the transcript (I's HELLO, R's HELLO: both ids, nonces, versions)
//      and derive from it and the shared secret (link_crypto.h) two proofs
//      and two record keys. I sends AUTH = its proof;
//   3. R, on I's AUTH: checks it in constant time (EPD_ERR_PERMISSION, nothing
//      of its own proof sent); then sends AUTH = its proof, and AUTH_OK
//      sealed with the responder key, carrying its region advert;
//   4. I, on R's AUTH: checks it, then sends AUTH_OK sealed with its key;
//   5. on the peer's sealed AUTH_OK (which only a holder of the secret that
//      saw this very transcript can produce): done.
// Only I sends a proof before checking the peer's — to the address it chose
// to dial; an inbound stranger never gets a proof. A relay that forwards the
// bytes unchanged lets both sides finish but gains nothing: the keys never
// cross the wire and every later frame is sealed. A relay that changes a HELLO
// (its own nonce, a reflected one, another id) breaks the transcript, so the
// proofs fail. Rule for the transport: a side seals every frame it sends after
// its own AUTH (the `sealed` flag below), and opens every frame it receives
// after it accepted the peer's AUTH (rx_sealed()).
// A failure queues a REJECT frame (with the reason) for the peer before the
// caller closes. The secret itself is never sent.
// Owned by one connection; not thread-safe (one thread drives it).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "link_crypto.h"
#include "status.h"
#include "wire.h"

namespace epd::transport {

struct HandshakeParams {
  uint32_t my_node = 0;
  uint16_t major = kProtocolMajor;
  uint16_t minor = kProtocolMinor;
  std::string secret;
  bool initiator = false;                         // this side dialed
  std::optional<uint32_t> expected_peer;          // set by the dialing side
  std::function<bool(uint32_t)> is_known_peer;   // accepting side: node id allowed?
  std::function<std::vector<RegionInfo>()> local_regions;  // advert for AUTH_OK
  // Once the peer proved the secret: may it have this connection (OK), or why
  // not (a node with a live link is refused before anything else is sent).
  std::function<Status(uint32_t)> admit_peer;
  std::string remote;  // "host:port" of the other end, for messages
};

// A frame the handshake wants sent; `sealed`: the transport seals it (and
// every later frame) with tx_key().
struct HandshakeFrame {
  std::vector<uint8_t> bytes;  // header + payload, plain
  bool sealed = false;
};

class Handshake {
 public:
  explicit Handshake(HandshakeParams p);

  // The HELLO frame to send first.
  std::vector<uint8_t> hello_frame() const;

  // Feeds one received frame (opened by the transport once rx_sealed()).
  // Frames to send are appended to `out` (also on failure: a REJECT).
  // Returns an error when the connection must be closed.
  Status on_frame(const FrameHeader& h, const uint8_t* payload, std::vector<HandshakeFrame>* out);

  bool done() const { return state_ == State::kDone; }
  // The peer's AUTH was accepted: every later frame from it is sealed.
  bool rx_sealed() const { return rx_sealed_; }
  // Valid once the peer's HELLO arrived.
  const Key& tx_key() const { return initiator() ? secrets_.initiator_key : secrets_.responder_key; }
  const Key& rx_key() const { return initiator() ? secrets_.responder_key : secrets_.initiator_key; }
  // Valid once the peer's HELLO arrived (claimed, authenticated only when done()).
  std::optional<uint32_t> peer_node() const { return peer_node_; }
  const std::vector<RegionInfo>& peer_regions() const { return peer_regions_; }
  // "node 3 (127.0.0.1:4567)" or "127.0.0.1:4567" before HELLO.
  std::string peer_label() const;

 private:
  enum class State { kWaitHello, kWaitAuth, kWaitAuthOk, kDone, kFailed };
  bool initiator() const { return p_.initiator; }
  Status on_hello(const uint8_t* payload, size_t bytes, std::vector<HandshakeFrame>* out);
  Status check_hello(const HelloPayload& hp) const;
  Status on_auth(const uint8_t* payload, std::vector<HandshakeFrame>* out);
  HandshakeFrame auth_ok_frame() const;
  Status fail(Status s, std::vector<HandshakeFrame>* out, bool send_reject);

  HandshakeParams p_;
  State state_ = State::kWaitHello;
  uint8_t my_hello_[kHelloBytes];
  std::optional<uint32_t> peer_node_;
  std::vector<RegionInfo> peer_regions_;
  LinkSecrets secrets_;
  bool sent_auth_ = false;
  bool rx_sealed_ = false;
};

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
