// connected_transport.h — internal to the transports: what TCP and RDMA share
// on top of the Transport interface, written once. Not a public header.
//   - the peer table (established connection per node, why a node is not
//     connected, the latest refusal) and its bookkeeping when a connection is
//     established or fails;
//   - connect(): wait for the inbound connection (higher node id), or dial
//     with backoff until the deadline (lower node id), the transport starting
//     each attempt (dial_locked);
//   - the handshake's parameters (handshake.h) for a connection;
//   - address resolution, callbacks that must not throw into the progress thread.
// A kind derives from ConnectedTransport and its connection type from LinkState.
// Locking: mu_ guards the peer table, cfg_.peers and every LinkState field
// marked so; state_cv_ (with mu_) signals a connection's outcome. A derived
// transport takes mu_ before its own per-connection locks.
#pragma once

#include <sys/socket.h>

#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "handshake.h"
#include "transport.h"
#include "wire.h"

namespace epd::transport {

// "host:port" resolved for a stream socket (SOCK_STREAM, numeric port).
Status resolve(const std::string& host_port, sockaddr_storage* out, socklen_t* len);
// "127.0.0.1:4567" / "[::1]:4567".
std::string sockaddr_string(const sockaddr_storage& ss);

// A refusal: the peer is not allowed in (secret, version, protocol), as
// opposed to an unreachable or lost peer. connect() returns it at once.
bool is_refusal(const Status& s);

// The part of a connection connect() and the peer table work on.
struct LinkState {
  uint64_t key = 0;
  std::string remote;  // "host:port" of the other end
  bool dialed = false;
  NodeId expected = kUnknownNode;  // the node a dialed connection must reach
  Clock::time_point created = Clock::now();

  // --- guarded by the transport's mu_ ---
  NodeId peer = kUnknownNode;
  bool established = false;
  bool reported = false;          // the failure was recorded and reported (once)
  bool abandoned = false;         // its dialer gave up, or disconnect(): the progress thread tears it down
  bool transient = false;         // the dial failed before the connection was up: connect() retries
  std::optional<Status> outcome;  // set once: OK when established, else why not

  // --- progress thread only ---
  std::optional<Handshake> hs;
  Clock::time_point last_rx = Clock::now();
};
using LinkPtr = std::shared_ptr<LinkState>;

class ConnectedTransport : public Transport {
 public:
  ConnectedTransport(TransportConfig c, TransportCallbacks cb) : cfg_(std::move(c)), cb_(std::move(cb)) {}

  void set_peer_address(NodeId peer, const std::string& host_port) final;
  // The node with the lower id dials (with backoff, until the deadline); the
  // other waits for it (see Transport::connect).
  Status connect(NodeId peer, Deadline deadline) final;
  Status peer_status(NodeId peer) const final { return established_link(peer).status(); }

 protected:
  // Starts one dial of `peer` at `addr` (resolved: `sa`, `len`), registered
  // with the progress thread; called with mu_ held (`l`). The connection's
  // outcome is set under mu_, with state_cv_ notified, once it is established
  // or fails (transient when it failed before it was up).
  virtual Result<LinkPtr> dial_locked(NodeId peer, const std::string& addr, const sockaddr_storage& sa,
                                      socklen_t len) = 0;
  // This node's region advert; called with mu_ held.
  virtual std::vector<RegionInfo> region_advert_locked() = 0;
  // Wakes the progress thread (an abandoned dial is torn down there).
  virtual void wake() = 0;

  // The established connection to `peer`, or why there is none (shut down,
  // the last error, not connected).
  Result<LinkPtr> established_link(NodeId peer) const;
  // The handshake of `c` (its expected peer if dialed, this node's secret,
  // version, configured peers and regions).
  HandshakeParams handshake_params(const LinkState& c);
  // The node `c` is with: established, claimed in its HELLO, or dialed.
  static NodeId peer_of(const LinkState& c);

  // Under mu_: `c`'s handshake is done with `peer`: it becomes the peer's
  // connection (its error and refusal are cleared). A node that already has
  // an established connection keeps it: the new one is refused (the error,
  // EPD_ERR_PERMISSION naming both, for the caller to fail `c` with). A dead
  // link is closed by its own failure (EOF, reset, peer_timeout of silence),
  // after which the node's next connection is accepted.
  Status install_locked(const LinkPtr& c, NodeId peer);
  // Under mu_: why `peer` may not have another connection now, or OK (the
  // handshake asks this once the peer proved the secret).
  Status admit_locked(NodeId peer, const LinkState& c) const;
  // Under mu_: the first failure of `c` (false if it was recorded already):
  // sets its outcome, drops it from the table, and unless another connection
  // serves the node or the failure is transient, records the node's error
  // (and refusal, before the handshake completed) for connect() and callers.
  // *report (if given) tells whether the node's state changed, i.e. whether
  // on_peer_state should hear of it: never while another (established)
  // connection serves the node — a failed or refused stranger claiming its id
  // does not make a live node lost.
  bool record_failure_locked(const LinkPtr& c, NodeId peer, const Status& s, bool* report = nullptr);
  // Under mu_: `c` no longer serves its peer.
  void drop_locked(const LinkPtr& c);
  // Under mu_: the established connection to `peer`, or nullptr.
  LinkPtr peer_link_locked(NodeId peer) const;
  // Under mu_: `peer`'s connection is closed on purpose (disconnect()); it is
  // dropped and callers see `why`.
  void record_disconnect_locked(NodeId peer, const Status& why);
  // Under mu_: every established connection (shutdown, region adverts).
  std::vector<LinkPtr> established_links_locked() const;

  // Runs a callback on the progress thread; an exception is logged, not propagated.
  template <typename F>
  void deliver(const char* what, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      transport_log(cfg_, LogSeverity::kError, std::string(what) + " callback threw: " + e.what());
    } catch (...) {
      transport_log(cfg_, LogSeverity::kError, std::string(what) + " callback threw a non-std exception");
    }
  }

  TransportConfig cfg_;
  const TransportCallbacks cb_;
  mutable std::mutex mu_;
  std::condition_variable state_cv_;
  bool shut_down_ = false;  // guarded by mu_

 private:
  Status await_inbound(std::unique_lock<std::mutex>& l, NodeId peer, const std::string& addr, Deadline d);
  Status dial_with_backoff(std::unique_lock<std::mutex>& l, NodeId peer, const std::string& addr, Deadline d);
  Status shut_down_status() const;

  // --- guarded by mu_ ---
  std::unordered_map<NodeId, LinkPtr> by_peer_;     // established connections
  std::unordered_map<NodeId, Status> last_error_;  // why a peer is not connected
  std::unordered_map<NodeId, uint64_t> error_seq_;
  // Why the latest handshake with a node was refused; cleared when one succeeds.
  std::unordered_map<NodeId, Status> refusal_;
};

}  // namespace epd::transport
