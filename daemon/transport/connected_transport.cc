// connected_transport.cc — the peer table, connect() with backoff and the
// handshake glue shared by the transports (see connected_transport.h).
#include "connected_transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

namespace epd::transport {

namespace {

using std::chrono::milliseconds;

// Pause between dials that failed before the connection was up (the peer not
// listening yet): 20 ms, growing by 10 ms per attempt to 220 ms.
milliseconds redial_pause(int attempt) { return milliseconds(20 + 10 * std::min(attempt, 20)); }

}  // namespace

Status resolve(const std::string& host_port, sockaddr_storage* out, socklen_t* len) {
  std::string host;
  uint16_t port = 0;
  EPD_RETURN_IF_ERROR(split_host_port(host_port, &host, &port));
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "cannot resolve '%s': %s", host_port.c_str(), gai_strerror(rc));
  }
  std::memcpy(out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return Status::ok();
}

std::string sockaddr_string(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return std::string(host) + ":" + std::to_string(ntohs(a->sin_port));
  }
  auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
  inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
  return "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
}

bool is_refusal(const Status& s) {
  return s.code() == EPD_ERR_PERMISSION || s.code() == EPD_ERR_VERSION_MISMATCH || s.code() == EPD_ERR_PROTOCOL;
}

void ConnectedTransport::set_peer_address(NodeId peer, const std::string& host_port) {
  std::lock_guard<std::mutex> l(mu_);
  cfg_.peers[peer] = host_port;
}

Status ConnectedTransport::shut_down_status() const {
  return make_status(EPD_ERR_SHUTTING_DOWN, "node %u: transport is shut down", cfg_.node_id);
}

Status ConnectedTransport::connect(NodeId peer, Deadline d) {
  std::unique_lock<std::mutex> l(mu_);
  if (peer == cfg_.node_id) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "node %u cannot connect to itself", peer);
  }
  auto addr_it = cfg_.peers.find(peer);
  if (addr_it == cfg_.peers.end()) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "node %u has no address for peer node %u", cfg_.node_id, peer);
  }
  const std::string addr = addr_it->second;
  return cfg_.node_id > peer ? await_inbound(l, peer, addr, d) : dial_with_backoff(l, peer, addr, d);
}

Status ConnectedTransport::await_inbound(std::unique_lock<std::mutex>& l, NodeId peer, const std::string& addr,
                                         Deadline d) {
  if (by_peer_.count(peer)) return Status::ok();
  auto refused = refusal_.find(peer);
  if (refused != refusal_.end()) return refused->second;
  const uint64_t seq0 = error_seq_[peer];
  const bool changed = state_cv_.wait_until(
      l, d, [&] { return shut_down_ || by_peer_.count(peer) || error_seq_[peer] != seq0; });
  if (shut_down_) return shut_down_status();
  if (by_peer_.count(peer)) return Status::ok();
  if (changed) return last_error_[peer];
  return make_status(EPD_ERR_TIMEOUT, "node %u (%s) did not connect to node %u before the deadline", peer,
                     addr.c_str(), cfg_.node_id);
}

Status ConnectedTransport::dial_with_backoff(std::unique_lock<std::mutex>& l, NodeId peer, const std::string& addr,
                                             Deadline d) {
  Status last = make_status(EPD_ERR_TIMEOUT, "connect to node %u (%s): deadline passed", peer, addr.c_str());
  sockaddr_storage ss{};
  socklen_t len = 0;
  l.unlock();  // name resolution may take a while; the progress thread needs mu_
  Status resolved = resolve(addr, &ss, &len);
  l.lock();
  if (!resolved) return make_status(resolved.code(), "node %u: %s", peer, resolved.message().c_str());
  for (int attempt = 0; attempt < 100000; ++attempt) {
    if (shut_down_) return shut_down_status();
    if (by_peer_.count(peer)) return Status::ok();
    if (Clock::now() >= d) return last;
    Result<LinkPtr> dialed = dial_locked(peer, addr, ss, len);
    if (!dialed) return dialed.status();
    const LinkPtr c = *dialed;
    state_cv_.wait_until(l, d, [&] { return shut_down_ || c->outcome.has_value(); });
    if (!c->outcome) {
      c->abandoned = true;  // the progress thread tears it down
      wake();
      return make_status(EPD_ERR_TIMEOUT, "connect to node %u (%s): no authenticated connection before the deadline",
                         peer, addr.c_str());
    }
    if (c->outcome->is_ok()) return Status::ok();
    last = *c->outcome;
    if (!c->transient) return last;
    // Not listening yet (or reset before a byte): retry until the deadline.
    state_cv_.wait_until(l, std::min(d, Clock::now() + redial_pause(attempt)), [&] { return shut_down_; });
  }
  return last;
}

Result<LinkPtr> ConnectedTransport::established_link(NodeId peer) const {
  std::lock_guard<std::mutex> l(mu_);
  if (shut_down_) return shut_down_status();
  auto it = by_peer_.find(peer);
  if (it != by_peer_.end()) return it->second;
  auto e = last_error_.find(peer);
  if (e != last_error_.end()) return e->second;
  return make_status(EPD_ERR_PEER_LOST, "node %u is not connected to node %u", peer, cfg_.node_id);
}

HandshakeParams ConnectedTransport::handshake_params(const LinkState& c) {
  HandshakeParams p;
  p.my_node = cfg_.node_id;
  p.major = cfg_.protocol_major;
  p.minor = cfg_.protocol_minor;
  p.secret = cfg_.cluster_secret;
  p.initiator = c.dialed;
  if (c.dialed) p.expected_peer = c.expected;
  p.is_known_peer = [this](uint32_t n) {
    std::lock_guard<std::mutex> l(mu_);
    return cfg_.peers.count(n) > 0;
  };
  p.local_regions = [this] {
    std::lock_guard<std::mutex> l(mu_);
    return region_advert_locked();
  };
  p.admit_peer = [this, &c](uint32_t n) {
    std::lock_guard<std::mutex> l(mu_);
    return admit_locked(n, c);
  };
  p.remote = c.remote;
  return p;
}

NodeId ConnectedTransport::peer_of(const LinkState& c) {
  if (c.peer != kUnknownNode) return c.peer;
  if (c.hs && c.hs->peer_node()) return *c.hs->peer_node();
  return c.dialed ? c.expected : kUnknownNode;
}

Status ConnectedTransport::admit_locked(NodeId peer, const LinkState& c) const {
  auto it = by_peer_.find(peer);
  if (it == by_peer_.end() || it->second.get() == &c) return Status::ok();
  const auto age = std::chrono::duration_cast<milliseconds>(Clock::now() - it->second->created).count();
  return make_status(EPD_ERR_PERMISSION,
                     "node %u (%s) already has an authenticated connection to node %u (%s, %lld ms old): the "
                     "new one is refused; the node may connect again once that one is closed or silent for "
                     "peer_timeout",
                     peer, c.remote.c_str(), cfg_.node_id, it->second->remote.c_str(), static_cast<long long>(age));
}

Status ConnectedTransport::install_locked(const LinkPtr& c, NodeId peer) {
  EPD_RETURN_IF_ERROR(admit_locked(peer, *c));
  c->peer = peer;
  c->established = true;
  c->outcome = Status::ok();
  by_peer_[peer] = c;
  last_error_.erase(peer);
  refusal_.erase(peer);
  return Status::ok();
}

bool ConnectedTransport::record_failure_locked(const LinkPtr& c, NodeId peer, const Status& s, bool* report) {
  if (report) *report = false;
  if (c->reported) return false;
  c->reported = true;
  if (!c->outcome) c->outcome = s;
  if (peer == kUnknownNode) {
    if (report) *report = true;
    return true;
  }
  auto it = by_peer_.find(peer);
  if (it != by_peer_.end() && it->second == c) by_peer_.erase(it);
  if (by_peer_.count(peer)) return true;
  if (report) *report = true;
  if (c->transient) return true;
  last_error_[peer] = s;
  ++error_seq_[peer];
  if (!c->established && is_refusal(s)) refusal_[peer] = s;
  return true;
}

void ConnectedTransport::drop_locked(const LinkPtr& c) {
  auto it = by_peer_.find(c->peer);
  if (it != by_peer_.end() && it->second == c) by_peer_.erase(it);
}

LinkPtr ConnectedTransport::peer_link_locked(NodeId peer) const {
  auto it = by_peer_.find(peer);
  return it == by_peer_.end() ? nullptr : it->second;
}

void ConnectedTransport::record_disconnect_locked(NodeId peer, const Status& why) {
  by_peer_.erase(peer);
  last_error_[peer] = why;
  ++error_seq_[peer];
}

std::vector<LinkPtr> ConnectedTransport::established_links_locked() const {
  std::vector<LinkPtr> out;
  out.reserve(by_peer_.size());
  for (const auto& [peer, c] : by_peer_) out.push_back(c);
  return out;
}

}  // namespace epd::transport
