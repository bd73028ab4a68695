// tcp_transport_impl.h — internal to the TCP transport: the connection state
// and the TcpTransport class, shared by tcp_transport.cc (the caller-facing
// methods), tcp_progress.cc (the progress thread: events, connections, the
// send side) and tcp_receive.cc (its reading and framing). Not a public header.
//
// One progress thread per transport runs epoll over the listening socket, every
// connection and an eventfd used for wake-ups. It reads and parses frames,
// drives handshakes, delivers callbacks, drains send queues, sends heartbeats
// and declares silent peers lost. Callers' send()/write() write directly to the
// socket when its queue is empty and queue the rest (bounded by
// max_queued_bytes). Bulk WRITE payloads are received straight into the
// registered region.
// Connecting, the peer table and the handshake glue are ConnectedTransport's.
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

#include "connected_transport.h"

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

struct Region {
  uint8_t* addr = nullptr;
  size_t bytes = 0;
};

struct Conn : LinkState {
  int fd = -1;  // closed only by the progress thread, under tx_mu

  // --- guarded by the transport's mu_ ---
  bool close_requested = false;  // disconnect(): BYE queued, close after it

  // --- progress thread only ---
  std::vector<uint8_t> rx;
  size_t rx_begin = 0, rx_end = 0;
  bool have_header = false;
  FrameHeader cur;
  std::unique_ptr<uint8_t[]> body;  // a frame larger than what rx holds; kept for reuse
  size_t body_cap = 0, body_got = 0;
  uint8_t* write_dst = nullptr;
  size_t write_left = 0;
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

class TcpTransport final : public ConnectedTransport {
 public:
  TcpTransport(TransportConfig c, TransportCallbacks cb) : ConnectedTransport(std::move(c), std::move(cb)) {
    limits_.max_message_bytes = cfg_.max_message_bytes;
  }
  ~TcpTransport() override { shutdown(); }

  Status start();
  const char* name() const override { return "tcp"; }
  std::string listen_address() const override { return bound_address_; }
  Status register_region(uint32_t region_id, void* addr, size_t bytes) override;
  void disconnect(NodeId peer) override;
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
  // ConnectedTransport.
  Result<LinkPtr> dial_locked(NodeId peer, const std::string& addr, const sockaddr_storage& sa,
                              socklen_t len) override;
  std::vector<RegionInfo> region_advert_locked() override;
  void wake() override;

  Result<ConnPtr> established(NodeId peer) const;
  Status enqueue(NodeId peer, FrameHeader h, const void* data, size_t bytes, Deadline d,
                 const uint32_t* region_id);
  // Appends a control frame (unbounded, small) and arranges for it to be sent.
  void push_control(const ConnPtr& c, std::vector<uint8_t> frame);
  void set_epollout(const ConnPtr& c, bool on);  // caller holds c->tx_mu

  // Progress thread (tcp_progress.cc: events, connections, the send side;
  // tcp_receive.cc: reading and framing).
  void run();
  void on_accept();
  void on_event(const ConnPtr& c, uint32_t events);
  void on_connected(const ConnPtr& c);
  void drain_tx(const ConnPtr& c);
  bool read_some(const ConnPtr& c);  // false when the connection ended
  Status parse(const ConnPtr& c);
  Status on_frame(const ConnPtr& c, const FrameHeader& h, const uint8_t* payload);
  Status begin_write(const ConnPtr& c, const FrameHeader& h);
  void start_handshake(const ConnPtr& c);
  void promote(const ConnPtr& c);
  void set_socket_options(int fd);
  void tick();
  // Records the failure, reports it once, and closes. With `linger`, a REJECT
  // (unless the handshake queued one) or nothing is sent first and input is
  // discarded until the peer's EOF, so the peer reads the reason.
  void fail(const ConnPtr& c, const Status& s, bool linger, bool send_reject);
  void close_now(const ConnPtr& c);
  std::string label(const ConnPtr& c) const;

  WireLimits limits_;
  std::string bound_address_;
  int listen_fd_ = -1, epoll_fd_ = -1, wake_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stopping_{false};

  // --- guarded by mu_ ---
  uint64_t next_key_ = 2;
  std::unordered_map<uint64_t, ConnPtr> conns_;  // every open connection
  std::unordered_map<uint32_t, Region> regions_;
};

}  // namespace epd::transport::tcp_detail
