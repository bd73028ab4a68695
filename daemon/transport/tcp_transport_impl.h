// tcp_transport_impl.h — internal to the TCP transport: the connection state
// and the TcpTransport class, shared by tcp_transport.cc (the caller-facing
// methods) and tcp_progress.cc (the progress thread). Not a public header.
//
// One progress thread per transport runs epoll over the listening socket, every
// connection and an eventfd used for wake-ups. It reads and parses frames,
// drives handshakes, delivers callbacks, drains send queues, sends heartbeats
// and declares silent peers lost. Callers' send()/write() write directly to the
// socket when its queue is empty and queue the rest (bounded by
// max_queued_bytes). Bulk WRITE payloads are received straight into the
// registered region.
// Locking: mu_ guards the connection tables, regions and peer errors;
// Conn::tx_mu guards a connection's send side. Order: mu_ before tx_mu. Only
// the progress thread closes file descriptors and runs callbacks.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "handshake.h"
#include "transport.h"
#include "wire.h"

namespace epd::transport::tcp_detail {

using std::chrono::milliseconds;
constexpr size_t kRxBufBytes = 256u << 10;
// Below this many unsent bytes a sender queues the rest instead of waiting for POLLOUT.
constexpr size_t kDirectWriteMin = 64u << 10;
constexpr int kMaxPendingHandshakes = 128;
constexpr uint64_t kListenKey = 0;
constexpr uint64_t kWakeKey = 1;

inline long long ms_until(Deadline d) {
  auto ms = std::chrono::duration_cast<milliseconds>(d - Clock::now()).count();
  return ms < 0 ? 0 : ms;
}

inline std::string sockaddr_string(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
    return std::string(host) + ":" + std::to_string(port);
  }
  auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
  inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
  port = ntohs(a->sin6_port);
  return "[" + std::string(host) + "]:" + std::to_string(port);
}

inline Status resolve(const std::string& host_port, sockaddr_storage* out, socklen_t* len) {
  std::string host;
  uint16_t port = 0;
  EPD_RETURN_IF_ERROR(split_host_port(host_port, &host, &port));
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "cannot resolve '%s': %s", host_port.c_str(),
                       gai_strerror(rc));
  }
  std::memcpy(out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return Status::ok();
}

struct Region {
  uint8_t* addr = nullptr;
  size_t bytes = 0;
};

struct Conn {
  uint64_t key = 0;
  int fd = -1;  // closed only by the progress thread, under tx_mu
  std::string remote;
  bool dialed = false;
  Clock::time_point created = Clock::now();

  // --- guarded by the transport's mu_ ---
  bool established = false;
  NodeId peer = kUnknownNode;
  bool failed = false;           // to be closed by the progress thread
  bool reported = false;         // the failure was reported (once)
  bool close_requested = false;  // disconnect(): BYE queued, close after it
  std::optional<Status> outcome;  // set once: OK when established, else why not
  bool transient = false;        // the dial failed before any byte (retry)

  // --- progress thread only ---
  std::optional<Handshake> hs;
  std::vector<uint8_t> rx;
  size_t rx_begin = 0, rx_end = 0;
  bool have_header = false;
  FrameHeader cur;
  std::unique_ptr<uint8_t[]> body;  // a frame larger than what rx holds; kept for reuse
  size_t body_cap = 0, body_got = 0;
  uint8_t* write_dst = nullptr;
  size_t write_left = 0;
  Clock::time_point last_rx = Clock::now();
  NodeId expected = kUnknownNode;  // the node a dialed connection must reach
  bool connecting = false;  // dial in progress (EPOLLOUT means connected)
  bool closing = false;     // reject/bye sent: discard input until EOF
  Clock::time_point close_by;

  // --- guarded by tx_mu ---
  std::mutex tx_mu;
  std::condition_variable tx_cv;
  std::deque<std::vector<uint8_t>> txq;
  size_t tx_off = 0;  // bytes of txq.front() already sent
  size_t queued = 0;
  bool want_out = false;
  bool dead = false;
  Status dead_status;
  bool shut_wr_after_drain = false;
  // A caller is writing a frame straight to the socket (tx_mu released while it
  // waits for POLLOUT): nobody else may write or queue until it is done.
  bool writer_active = false;
  Clock::time_point last_tx = Clock::now();
  std::unordered_map<uint32_t, RegionInfo> peer_regions;
};
using ConnPtr = std::shared_ptr<Conn>;

// Set on a transport's progress thread: calls made from its callbacks never block.
inline thread_local const void* tls_progress_owner = nullptr;

class TcpTransport final : public Transport {
 public:
  TcpTransport(TransportConfig c, TransportCallbacks cb) : cfg_(std::move(c)), cb_(std::move(cb)) {
    limits_.max_message_bytes = cfg_.max_message_bytes;
  }
  ~TcpTransport() override { shutdown(); }

  Status start();
  const char* name() const override { return "tcp"; }
  std::string listen_address() const override { return bound_address_; }
  void set_peer_address(NodeId peer, const std::string& host_port) override {
    std::lock_guard<std::mutex> l(mu_);
    cfg_.peers[peer] = host_port;
  }
  Status register_region(uint32_t region_id, void* addr, size_t bytes) override;
  Status register_dmabuf_region(uint32_t region_id, int, uint64_t, size_t, uint64_t) override {
    return make_status(EPD_ERR_UNSUPPORTED,
                       "tcp transport cannot register dmabuf region %u: GPU memory is staged through "
                       "host memory with tcp",
                       region_id);
  }
  Status connect(NodeId peer, Deadline deadline) override;
  void disconnect(NodeId peer) override;
  Status peer_status(NodeId peer) const override;
  Status send(NodeId peer, uint32_t tag, const void* data, size_t bytes, Deadline d) override {
    if (bytes > cfg_.max_message_bytes) {
      return make_status(EPD_ERR_INVALID_ARGUMENT, "send to node %u: %zu bytes exceed max_message_bytes %zu",
                         peer, bytes, cfg_.max_message_bytes);
    }
    FrameHeader h;
    h.type = FrameType::kMessage;
    h.a = tag;
    return enqueue(peer, h, data, bytes, d, nullptr);
  }
  Status write(NodeId peer, uint32_t region_id, uint64_t offset, const void* data, size_t bytes,
               uint32_t imm, Deadline d) override {
    FrameHeader h;
    h.type = FrameType::kWrite;
    h.a = region_id;
    h.imm = imm;
    h.offset = offset;
    return enqueue(peer, h, data, bytes, d, &region_id);
  }
  Status flush(NodeId peer, Deadline deadline) override;
  void shutdown() override;

 private:
  Result<ConnPtr> established(NodeId peer) const;
  Status enqueue(NodeId peer, FrameHeader h, const void* data, size_t bytes, Deadline d,
                 const uint32_t* region_id);
  // Appends a control frame (unbounded, small) and arranges for it to be sent.
  void push_control(const ConnPtr& c, std::vector<uint8_t> frame);
  void set_epollout(const ConnPtr& c, bool on);  // caller holds c->tx_mu
  void wake();
  std::vector<RegionInfo> region_advert();

  // Progress thread.
  void run();
  void on_accept();
  void on_event(const ConnPtr& c, uint32_t events);
  void on_connected(const ConnPtr& c);
  void drain_tx(const ConnPtr& c);
  bool read_some(const ConnPtr& c);  // false when the connection ended
  Status parse(const ConnPtr& c);
  Status on_frame(const ConnPtr& c, const FrameHeader& h, const uint8_t* payload);
  Status begin_write(const ConnPtr& c, const FrameHeader& h);
  void start_handshake(const ConnPtr& c, std::optional<NodeId> expected);
  void promote(const ConnPtr& c);
  void set_socket_options(int fd);
  NodeId peer_of(const ConnPtr& c) const;
  template <typename F>
  void deliver(const char* what, F&& f);
  void tick();
  // Records the failure, reports it once, and closes. With `linger`, a REJECT
  // (unless the handshake queued one) or nothing is sent first and input is
  // discarded until the peer's EOF, so the peer reads the reason.
  void fail(const ConnPtr& c, const Status& s, bool linger, bool send_reject);
  void close_now(const ConnPtr& c);
  std::string label(const ConnPtr& c) const;

  TransportConfig cfg_;
  const TransportCallbacks cb_;
  WireLimits limits_;
  std::string bound_address_;
  int listen_fd_ = -1, epoll_fd_ = -1, wake_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  uint64_t next_key_ = 2;

  mutable std::mutex mu_;
  std::condition_variable state_cv_;
  std::unordered_map<uint64_t, ConnPtr> conns_;     // every open connection
  std::unordered_map<NodeId, ConnPtr> by_peer_;     // established ones
  std::unordered_map<NodeId, Status> last_error_;  // why a peer is not connected
  std::unordered_map<NodeId, uint64_t> error_seq_;
  // Why the latest handshake with a node was refused; cleared when one succeeds.
  std::unordered_map<NodeId, Status> refusal_;
  std::unordered_map<uint32_t, Region> regions_;
  bool shut_down_ = false;
};

}  // namespace epd::transport::tcp_detail
