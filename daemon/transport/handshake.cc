// handshake.cc — see handshake.h.
#include "handshake.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace epd::transport {

namespace {
constexpr char kAuthLabel[] = "epd-transport-auth-v1";
}

Status random_bytes(void* out, size_t bytes) {
  uint8_t* p = static_cast<uint8_t*>(out);
  size_t got = 0;
  for (int tries = 0; got < bytes && tries < 64; ++tries) {
    ssize_t n = ::getrandom(p + got, bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("getrandom", errno);
    }
    got += static_cast<size_t>(n);
  }
  if (got < bytes) return make_status(EPD_ERR_SYSTEM, "getrandom returned %zu of %zu bytes", got, bytes);
  return Status::ok();
}

Handshake::Handshake(HandshakeParams p) : p_(std::move(p)) {
  if (!random_bytes(my_nonce_, sizeof(my_nonce_)).is_ok()) {
    // getrandom on Linux >= 3.17 does not fail for 32 bytes; if it ever does,
    // a nonce from SHA-256 of the address of this object and the time is still
    // unique per connection, which is what challenge-response needs.
    uint64_t seed[2] = {reinterpret_cast<uint64_t>(this), static_cast<uint64_t>(time(nullptr))};
    Digest d = sha256(seed, sizeof(seed));
    std::memcpy(my_nonce_, d.data(), sizeof(my_nonce_));
  }
}

std::string Handshake::peer_label() const {
  if (peer_node_) return "node " + std::to_string(*peer_node_) + " (" + p_.remote + ")";
  if (p_.expected_peer) return "node " + std::to_string(*p_.expected_peer) + " (" + p_.remote + ")";
  return p_.remote;
}

std::vector<uint8_t> Handshake::hello_frame() const {
  HelloPayload hp;
  hp.major = p_.major;
  hp.minor = p_.minor;
  hp.node_id = p_.my_node;
  std::memcpy(hp.nonce, my_nonce_, kNonceBytes);
  uint8_t buf[kHelloBytes];
  encode_hello(hp, buf);
  FrameHeader h;
  h.type = FrameType::kHello;
  return make_frame(h, buf, sizeof(buf));
}

Digest Handshake::proof(uint32_t sender, uint32_t receiver, const uint8_t* sender_nonce,
                        const uint8_t* receiver_nonce, uint16_t sender_major,
                        uint16_t sender_minor, uint16_t receiver_major,
                        uint16_t receiver_minor) const {
  HmacSha256 mac(p_.secret.data(), p_.secret.size());
  mac.update(kAuthLabel, sizeof(kAuthLabel));
  mac.update(&sender, sizeof(sender));
  mac.update(&receiver, sizeof(receiver));
  mac.update(sender_nonce, kNonceBytes);
  mac.update(receiver_nonce, kNonceBytes);
  uint16_t versions[4] = {sender_major, sender_minor, receiver_major, receiver_minor};
  mac.update(versions, sizeof(versions));
  return mac.finish();
}

Status Handshake::fail(Status s, std::vector<std::vector<uint8_t>>* out, bool send_reject) {
  state_ = State::kFailed;
  if (send_reject) {
    std::vector<uint8_t> body = encode_reject(s.code(), s.message());
    FrameHeader h;
    h.type = FrameType::kReject;
    out->push_back(make_frame(h, body.data(), body.size()));
  }
  return s;
}

Status Handshake::on_frame(const FrameHeader& h, const uint8_t* payload,
                           std::vector<std::vector<uint8_t>>* out) {
  const std::string who = peer_label();
  if (state_ == State::kFailed) {
    return make_status(EPD_ERR_INTERNAL, "%s: handshake already failed", who.c_str());
  }
  if (h.type == FrameType::kReject) {
    return fail(decode_reject(payload, h.length, who), out, false);
  }
  switch (state_) {
    case State::kWaitHello: {
      if (h.type != FrameType::kHello) break;
      Result<HelloPayload> hp = decode_hello(payload, h.length, who);
      if (!hp) return fail(hp.status(), out, true);
      peer_hello_ = *hp;
      peer_node_ = hp->node_id;  // claimed; authenticated once done()
      const std::string label = "node " + std::to_string(hp->node_id) + " (" + p_.remote + ")";
      if (hp->major != p_.major) {
        return fail(make_status(EPD_ERR_VERSION_MISMATCH,
                                "%s speaks protocol version %u.%u, node %u speaks %u.%u: "
                                "major versions differ",
                                label.c_str(), hp->major, hp->minor, p_.my_node, p_.major, p_.minor),
                    out, true);
      }
      if (hp->node_id == p_.my_node) {
        return fail(make_status(EPD_ERR_PERMISSION, "%s claims this node's own id %u",
                                label.c_str(), p_.my_node),
                    out, true);
      }
      if (p_.expected_peer && *p_.expected_peer != hp->node_id) {
        return fail(make_status(EPD_ERR_PERMISSION, "dialed node %u at %s but node %u answered",
                                *p_.expected_peer, p_.remote.c_str(), hp->node_id),
                    out, true);
      }
      if (!p_.expected_peer && p_.is_known_peer && !p_.is_known_peer(hp->node_id)) {
        return fail(make_status(EPD_ERR_PERMISSION, "%s is not a configured peer of node %u",
                                label.c_str(), p_.my_node),
                    out, true);
      }
      Digest mine = proof(p_.my_node, hp->node_id, my_nonce_, hp->nonce, p_.major, p_.minor,
                          hp->major, hp->minor);
      FrameHeader a;
      a.type = FrameType::kAuth;
      out->push_back(make_frame(a, mine.data(), mine.size()));
      state_ = State::kWaitAuth;
      return Status::ok();
    }
    case State::kWaitAuth: {
      if (h.type != FrameType::kAuth) break;
      Digest got;
      std::memcpy(got.data(), payload, got.size());
      Digest want = proof(peer_hello_.node_id, p_.my_node, peer_hello_.nonce, my_nonce_,
                          peer_hello_.major, peer_hello_.minor, p_.major, p_.minor);
      if (!digest_equal(got, want)) {
        return fail(make_status(EPD_ERR_PERMISSION,
                                "%s failed authentication: its proof does not match node %u's "
                                "cluster secret",
                                who.c_str(), p_.my_node),
                    out, true);
      }
      std::vector<uint8_t> adv = encode_regions(p_.local_regions ? p_.local_regions()
                                                                 : std::vector<RegionInfo>{});
      FrameHeader ok;
      ok.type = FrameType::kAuthOk;
      out->push_back(make_frame(ok, adv.data(), adv.size()));
      sent_auth_ok_ = true;
      state_ = State::kWaitAuthOk;
      return Status::ok();
    }
    case State::kWaitAuthOk: {
      if (h.type != FrameType::kAuthOk) break;
      Result<std::vector<RegionInfo>> regions = decode_regions(payload, h.length, who);
      if (!regions) return fail(regions.status(), out, true);
      peer_regions_ = std::move(*regions);
      state_ = State::kDone;
      return Status::ok();
    }
    case State::kDone:
    case State::kFailed:
      break;
  }
  return fail(make_status(EPD_ERR_PROTOCOL, "%s sent a %s frame during the handshake",
                          who.c_str(), frame_type_name(h.type)),
              out, true);
}

std::vector<uint8_t> regions_frame_after_handshake(const std::vector<RegionInfo>& regions) {
  if (regions.empty()) return {};
  const std::vector<uint8_t> adv = encode_regions(regions);
  FrameHeader h;
  h.type = FrameType::kRegions;
  return make_frame(h, adv.data(), adv.size());
}

}  // namespace epd::transport
