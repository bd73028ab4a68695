// rdma_transport_impl.h — internal to the RDMA verbs implementation of Transport (built when
// EPD_HAVE_RDMA). rdma_cm sets up one reliable-connected QP per peer; the
// authenticated handshake (handshake.h) runs over the first send/recv
// messages; small messages are SEND/RECV of wire.h frames from registered slot
// buffers; write() is RDMA WRITE with immediate into the peer's advertised
// region (rkey/addr from AUTH_OK / REGIONS), seen by the peer as a
// RECV_RDMA_WITH_IMM completion.
//
// Connecting (dial_locked starts each attempt), the peer table and the
// handshake glue are ConnectedTransport's.
// Flow control: each side posts rdma.queue_depth receives; a sender holds
// (depth - kReserve) credits, spends one per SEND/WRITE_WITH_IMM, and gets them
// back in credit frames (HEARTBEAT with a = count) that themselves use the
// reserve and are not credited.
// Threads: one proxy thread handles CM events, completions (one CQ, one PD,
// one device per transport), heartbeats and silence; on_progress_thread_start
// lets the daemon pin it. Locking: mu_ (tables) before RConn::mu (send side).
// NOT RUN ON HARDWARE: only the no-device path has been executed (see tests).
#pragma once
#include <arpa/inet.h>
#include <infiniband/verbs.h>
#include <netdb.h>
#include <rdma/rdma_cma.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "connected_transport.h"

namespace epd::transport {
namespace rdma_detail {

using std::chrono::milliseconds;
constexpr uint32_t kReserve = 16;
constexpr uint64_t kKindRecv = 1, kKindSend = 2, kKindWrite = 3;
constexpr size_t kMaxWriteWr = size_t(1) << 30;

inline uint64_t make_wr_id(uint64_t key, uint64_t kind, uint64_t slot) { return (key << 24) | (kind << 20) | slot; }

inline Status rdma_err(const char* call, int err, const std::string& ctx) {
  return make_status(EPD_ERR_RDMA, "%s: %s failed: %s", ctx.c_str(), call, strerror(err));
}

struct LocalRegion {
  uint8_t* addr = nullptr;  // host address
  size_t bytes = 0;
  ibv_mr* mr = nullptr;
};

struct RConn : LinkState {
  rdma_cm_id* id = nullptr;
  // mu_ of the transport:
  Clock::time_point close_by;
  // proxy thread only:
  uint32_t to_return = 0;
  // buffers (registered once, owned here):
  uint32_t depth = 0, slot = 0;
  std::vector<uint8_t> recv_buf, send_buf, staging;
  ibv_mr *recv_mr = nullptr, *send_mr = nullptr, *staging_mr = nullptr;
  // guarded by mu:
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint32_t> free_slots;
  uint32_t credits = 0, outstanding = 0, staging_inflight = 0;
  bool dead = false;
  Status dead_status;
  bool dead_flag() {
    std::lock_guard<std::mutex> l(mu);
    return dead;
  }
  Clock::time_point last_tx = Clock::now();
  std::unordered_map<uint32_t, RegionInfo> peer_regions;
};
using RConnPtr = std::shared_ptr<RConn>;

// Set on a transport's proxy thread: send()/write() from callbacks never wait.
inline thread_local const void* tls_proxy_owner = nullptr;

class RdmaTransport final : public ConnectedTransport {
 public:
  RdmaTransport(TransportConfig c, TransportCallbacks cb) : ConnectedTransport(std::move(c), std::move(cb)) {}
  ~RdmaTransport() override { shutdown(); }
  Status start();
  const char* name() const override { return "rdma"; }
  std::string listen_address() const override { return bound_; }
  Status deregister_region(uint32_t id) override {
    ibv_mr* mr = nullptr;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = regions_.find(id);
      if (it == regions_.end()) return Status::ok();
      mr = it->second.mr;
      regions_.erase(it);
    }
    if (mr) ibv_dereg_mr(mr);  // the NIC refuses later writes to it (see transport.h)
    return Status::ok();
  }
  Status register_region(uint32_t id, void* addr, size_t bytes) override {
    if (!addr || !bytes) return make_status(EPD_ERR_INVALID_ARGUMENT, "region %u is empty", id);
    ibv_mr* mr = ibv_reg_mr(pd_, addr, bytes, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (!mr) return rdma_err("ibv_reg_mr", errno, "region " + std::to_string(id));
    return add_region(id, static_cast<uint8_t*>(addr), bytes, mr);
  }
  void disconnect(NodeId peer) override;
  Status send(NodeId peer, uint32_t tag, const void* data, size_t bytes, Deadline d) override {
    FrameHeader h;
    h.type = FrameType::kMessage;
    h.a = tag;
    Result<RConnPtr> c = established(peer);
    if (!c) return c.status();
    if (tls_proxy_owner == this) d = std::min(d, Clock::now());
    return post_frame(*c, h, data, bytes, d, true);
  }
  Status write(NodeId peer, uint32_t region_id, uint64_t offset, const void* data, size_t bytes,
               uint32_t imm, Deadline d) override;
  Status flush(NodeId peer, Deadline d) override;
  void shutdown() override;

 private:
  // ConnectedTransport.
  Result<LinkPtr> dial_locked(NodeId peer, const std::string& addr, const sockaddr_storage& sa,
                              socklen_t len) override;
  std::vector<RegionInfo> region_advert_locked() override;
  void wake() override;

  Status add_region(uint32_t id, uint8_t* addr, size_t bytes, ibv_mr* mr);
  Result<RConnPtr> established(NodeId peer) const {
    Result<LinkPtr> c = established_link(peer);
    if (!c) return c.status();
    return std::static_pointer_cast<RConn>(*c);
  }
  Status setup_qp(const RConnPtr& c);
  // Sends a frame from a slot; `credited` frames spend a peer receive credit.
  Status post_frame(const RConnPtr& c, FrameHeader h, const void* data, size_t bytes, Deadline d, bool credited);
  Status post_recv(const RConnPtr& c, uint32_t slot);
  // post_frame() of a complete wire frame (header + payload), credited.
  Status post_whole_frame(const RConnPtr& c, const std::vector<uint8_t>& frame, Deadline d);
  void send_raw(const RConnPtr& c, const std::vector<uint8_t>& frame);
  void start_handshake(const RConnPtr& c);
  void return_credits(const RConnPtr& c);
  Status post_write(const RConnPtr& c, std::unique_lock<std::mutex>& l, const RegionInfo& r, uint64_t off,
                    const uint8_t* src, uint32_t lkey, size_t n, bool with_imm, uint32_t imm, bool staged);
  void run();
  void on_cm_event(rdma_cm_event* ev);
  void on_completion(const ibv_wc& wc);
  void on_frame(const RConnPtr& c, const uint8_t* buf, size_t len);
  void promote(const RConnPtr& c);
  void fail(const RConnPtr& c, const Status& s);
  void destroy(const RConnPtr& c);
  void tick();
  RConnPtr new_conn(rdma_cm_id* id, bool dialed, NodeId expected, const std::string& remote);
  std::string label(const RConnPtr& c) const {
    const NodeId p = peer_of(*c);
    return p == kUnknownNode ? c->remote : "node " + std::to_string(p) + " (" + c->remote + ")";
  }

  std::string bound_;
  rdma_event_channel* ec_ = nullptr;
  rdma_cm_id* listen_id_ = nullptr;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_comp_channel* cc_ = nullptr;
  ibv_cq* cq_ = nullptr;
  int epoll_fd_ = -1, wake_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  // --- guarded by mu_ ---
  uint64_t next_key_ = 1;
  std::unordered_map<uint64_t, RConnPtr> conns_;
  std::unordered_map<uint32_t, RConnPtr> by_qpn_;
  std::unordered_map<uint32_t, LocalRegion> regions_;
};

}  // namespace rdma_detail
}  // namespace epd::transport
