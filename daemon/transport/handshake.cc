// handshake.cc — see handshake.h.
#include "handshake.h"

#include <cstring>

namespace epd::transport {

Handshake::Handshake(HandshakeParams p) : p_(std::move(p)) {
  HelloPayload hp;
  hp.major = p_.major;
  hp.minor = p_.minor;
  hp.node_id = p_.my_node;
  link_random(hp.nonce, kNonceBytes);
  encode_hello(hp, my_hello_);
}

std::string Handshake::peer_label() const {
  if (peer_node_) return "node " + std::to_string(*peer_node_) + " (" + p_.remote + ")";
  if (p_.expected_peer) return "node " + std::to_string(*p_.expected_peer) + " (" + p_.remote + ")";
  return p_.remote;
}

std::vector<uint8_t> Handshake::hello_frame() const {
  FrameHeader h;
  h.type = FrameType::kHello;
  return make_frame(h, my_hello_, sizeof(my_hello_));
}

Status Handshake::fail(Status s, std::vector<HandshakeFrame>* out, bool send_reject) {
  state_ = State::kFailed;
  if (send_reject) {
    std::vector<uint8_t> body = encode_reject(s.code(), s.message());
    FrameHeader h;
    h.type = FrameType::kReject;
    // After our AUTH the peer opens what we send (handshake.h).
    out->push_back(HandshakeFrame{make_frame(h, body.data(), body.size()), sent_auth_});
  }
  return s;
}

Status Handshake::check_hello(const HelloPayload& hp) const {
  const std::string label = "node " + std::to_string(hp.node_id) + " (" + p_.remote + ")";
  if (hp.major != p_.major) {
    return make_status(EPD_ERR_VERSION_MISMATCH,
                       "%s speaks protocol version %u.%u, node %u speaks %u.%u: major versions differ",
                       label.c_str(), hp.major, hp.minor, p_.my_node, p_.major, p_.minor);
  }
  if (hp.node_id == p_.my_node) {
    return make_status(EPD_ERR_PERMISSION, "%s claims this node's own id %u", label.c_str(), p_.my_node);
  }
  if (p_.expected_peer && *p_.expected_peer != hp.node_id) {
    return make_status(EPD_ERR_PERMISSION, "dialed node %u at %s but node %u answered", *p_.expected_peer,
                       p_.remote.c_str(), hp.node_id);
  }
  if (!p_.expected_peer && p_.is_known_peer && !p_.is_known_peer(hp.node_id)) {
    return make_status(EPD_ERR_PERMISSION, "%s is not a configured peer of node %u", label.c_str(), p_.my_node);
  }
  return Status::ok();
}

Status Handshake::on_hello(const uint8_t* payload, size_t bytes, std::vector<HandshakeFrame>* out) {
  Result<HelloPayload> hp = decode_hello(payload, bytes, peer_label());
  if (!hp) return fail(hp.status(), out, true);
  peer_node_ = hp->node_id;  // claimed; authenticated once done()
  if (Status s = check_hello(*hp); !s) return fail(s, out, true);
  const uint8_t* init = initiator() ? my_hello_ : payload;
  const uint8_t* resp = initiator() ? payload : my_hello_;
  secrets_ = derive_link_secrets(p_.secret, init, resp, kHelloBytes);
  state_ = State::kWaitAuth;
  if (initiator()) {
    FrameHeader a;
    a.type = FrameType::kAuth;
    out->push_back(HandshakeFrame{make_frame(a, secrets_.initiator_proof.data(), kKeyBytes), false});
    sent_auth_ = true;
  }
  return Status::ok();
}

HandshakeFrame Handshake::auth_ok_frame() const {
  std::vector<uint8_t> adv =
      encode_regions(p_.local_regions ? p_.local_regions() : std::vector<RegionInfo>{});
  FrameHeader ok;
  ok.type = FrameType::kAuthOk;
  return HandshakeFrame{make_frame(ok, adv.data(), adv.size()), true};
}

Status Handshake::on_auth(const uint8_t* payload, std::vector<HandshakeFrame>* out) {
  const Key& want = initiator() ? secrets_.responder_proof : secrets_.initiator_proof;
  if (!equal_32(payload, want.data())) {
    return fail(make_status(EPD_ERR_PERMISSION,
                            "%s failed authentication: its proof does not match node %u's cluster secret "
                            "and this connection's handshake",
                            peer_label().c_str(), p_.my_node),
                out, true);
  }
  if (p_.admit_peer) {
    if (Status s = p_.admit_peer(*peer_node_); !s) return fail(s, out, true);
  }
  if (!initiator()) {
    FrameHeader a;
    a.type = FrameType::kAuth;
    out->push_back(HandshakeFrame{make_frame(a, secrets_.responder_proof.data(), kKeyBytes), false});
    sent_auth_ = true;
  }
  out->push_back(auth_ok_frame());
  rx_sealed_ = true;
  state_ = State::kWaitAuthOk;
  return Status::ok();
}

Status Handshake::on_frame(const FrameHeader& h, const uint8_t* payload, std::vector<HandshakeFrame>* out) {
  const std::string who = peer_label();
  if (state_ == State::kFailed) {
    return make_status(EPD_ERR_INTERNAL, "%s: handshake already failed", who.c_str());
  }
  if (h.type == FrameType::kReject) {
    return fail(decode_reject(payload, h.length, who), out, false);
  }
  if (state_ == State::kWaitHello && h.type == FrameType::kHello) return on_hello(payload, h.length, out);
  if (state_ == State::kWaitAuth && h.type == FrameType::kAuth && h.length == kKeyBytes) {
    return on_auth(payload, out);
  }
  if (state_ == State::kWaitAuthOk && h.type == FrameType::kAuthOk) {
    Result<std::vector<RegionInfo>> regions = decode_regions(payload, h.length, who);
    if (!regions) return fail(regions.status(), out, true);
    peer_regions_ = std::move(*regions);
    state_ = State::kDone;
    return Status::ok();
  }
  return fail(make_status(EPD_ERR_PROTOCOL, "%s sent a %s frame during the handshake", who.c_str(),
                          frame_type_name(h.type)),
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
