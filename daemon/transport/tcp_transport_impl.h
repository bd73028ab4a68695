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
// max_queued_bytes).
// Sealing (link_crypto.h): after the handshake every frame in each direction
// is sealed. A frame takes its record numbers (FrameSealer::reserve) under
// tx_mu when it is committed to the stream's order: a caller writing directly
// reserves the whole frame first, and what it leaves unsent goes to the FRONT
// of the queue (anything queued meanwhile came later). Received records are
// opened from the staging buffer into their destination (the region, or the
// message buffer), so nothing unverified reaches a region.
// Before authentication: frames of at most kMaxPreAuthPayload bytes, a
// handshake deadline, and a cap of pending handshakes per source address.
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
#include <unordered_set>

#include "connected_transport.h"
#include "link_crypto.h"

namespace epd::transport::tcp_detail {

using std::chrono::milliseconds;
constexpr size_t kRxBufBytes = 256u << 10;
// Below this many unsent bytes a sender queues the rest instead of waiting for POLLOUT.
constexpr size_t kDirectWriteMin = 64u << 10;
constexpr int kMaxPendingHandshakes = 128;
// Payload records a direct writer seals per send call.
constexpr size_t kSealBatchChunks = 8;
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
  std::string remote_host;  // remote without the port (the per-address cap)
  std::vector<uint8_t> rx;
  size_t rx_begin = 0, rx_end = 0;
  std::optional<FrameOpener> rx_open;  // set once the peer's AUTH was accepted
  bool have_header = false;  // sealed: cur's payload records are being read
  FrameHeader cur;
  std::unique_ptr<uint8_t[]> body;  // a message payload; kept for reuse
  size_t body_cap = 0, body_got = 0;
  uint8_t* write_dst = nullptr;  // WRITE: where cur's payload goes
  // The write's region was deregistered: its records are still opened (the
  // nonce counter and the integrity check go on) into discard_buf and dropped.
  bool discard_write = false;
  std::unique_ptr<uint8_t[]> discard_buf;  // kSealChunkBytes, allocated on first use
  bool writing() const { return have_header && cur.type == FrameType::kWrite && body_got < cur.length; }
  bool connecting = false;  // dial in progress (EPOLLOUT means connected)
  bool closing = false;     // reject/bye sent: discard input until EOF
  Clock::time_point close_by;

  // --- guarded by tx_mu ---
  std::mutex tx_mu;
  std::condition_variable tx_cv;
  std::deque<std::vector<uint8_t>> txq;  // sealed once tx_seal is set
  std::optional<FrameSealer> tx_seal;    // set when the handshake's first sealed frame is queued
  std::vector<uint8_t> tx_scratch;       // a direct writer's sealed records
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
  Status deregister_region(uint32_t region_id) override;
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
  // Appends a control frame (unbounded, small; sealed once the connection
  // seals) and arranges for it to be sent. queue_locked: caller holds tx_mu.
  void push_control(const ConnPtr& c, std::vector<uint8_t> frame);
  void queue_locked(const ConnPtr& c, std::vector<uint8_t> frame);
  // enqueue()'s sealed frame (caller holds `l` on c->tx_mu): written directly
  // while the socket takes it if nothing is queued, the rest queued.
  struct SealedWrite {
    std::vector<uint8_t>& buf;  // sealed records not yet sent start at off
    const uint8_t* data;
    size_t bytes;       // payload bytes
    uint64_t seq;       // the next payload record's number
    size_t sealed_to = 0;  // payload bytes sealed into buf (or sent)
    size_t off = 0;
    size_t left = 0;    // wire bytes not yet sent
  };
  Status write_sealed(const ConnPtr& c, std::unique_lock<std::mutex>& l, const FrameHeader& h, const uint8_t* data,
                      Deadline d, bool on_progress);
  // Sends w's records while the socket takes them (writer_active set); OK
  // with w.left > 0 when the rest must be queued.
  Status write_direct(const ConnPtr& c, std::unique_lock<std::mutex>& l, SealedWrite& w, Deadline d,
                      bool on_progress);
  // The payload records [from, bytes) of a frame, sealed from record `seq`, appended to *out.
  static void seal_payload(const FrameSealer& s, uint64_t seq, const uint8_t* data, size_t from, size_t bytes,
                           std::vector<uint8_t>* out);
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
  // One step of parse(): consumes *used bytes of p[0, avail) (0: needs more).
  Status parse_plain(const ConnPtr& c, const uint8_t* p, size_t avail, size_t* used);
  Status parse_sealed(const ConnPtr& c, const uint8_t* p, size_t avail, size_t* used);
  Status on_payload_done(const ConnPtr& c);
  Status on_handshake_frame(const ConnPtr& c, const FrameHeader& h, const uint8_t* payload);
  bool admit_address(const ConnPtr& c);  // under mu_: the per-address cap
  Status on_frame(const ConnPtr& c, const FrameHeader& h, const uint8_t* payload);
  Status begin_write(const ConnPtr& c, const FrameHeader& h);
  void start_handshake(const ConnPtr& c);
  void promote(const ConnPtr& c);
  void set_socket_options(int fd);
  void tick();
  // Progress thread, every loop pass: writes in progress into a deregistered
  // region switch to discarding, then deregister_region() may return.
  void retire_writes();
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
  std::unordered_set<uint32_t> retired_regions_;  // deregistered: late writes to them are discarded
  uint64_t retire_asked_ = 0, retire_done_ = 0;   // deregistrations asked / seen by the progress thread
  std::condition_variable retire_cv_;

  // --- progress thread only: the per-address refusals' log line, at most one a second ---
  Clock::time_point refusal_logged_{};
  uint64_t refusals_unlogged_ = 0;
};

}  // namespace epd::transport::tcp_detail
