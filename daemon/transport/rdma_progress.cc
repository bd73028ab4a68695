// rdma_progress.cc — the RDMA transport's connection management and proxy
// thread: rdma_cm events, completions, the handshake over the first messages,
// credits, heartbeats and silence (see rdma_transport_impl.h).
// NOT RUN ON HARDWARE: compiled and reviewed only (no RDMA device here).
#include "rdma_transport_impl.h"

namespace epd::transport {
namespace rdma_detail {

namespace {
// CM private data: lets the listener refuse a wrong magic / major version
// before a QP exists. The node id and secret are checked by the handshake.
struct ConnectPrivate {
  uint32_t magic;
  uint16_t major, minor;
  uint32_t node;
};
}  // namespace

Result<LinkPtr> RdmaTransport::dial_locked(NodeId peer, const std::string& addr, const sockaddr_storage& sa,
                                           socklen_t) {
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(ec_, &id, nullptr, RDMA_PS_TCP)) return rdma_err("rdma_create_id", errno, "node " + std::to_string(peer));
  RConnPtr c = new_conn(id, true, peer, addr);
  sockaddr_storage dst = sa;
  if (rdma_resolve_addr(id, nullptr, reinterpret_cast<sockaddr*>(&dst), 2000)) {
    Status s = rdma_err("rdma_resolve_addr", errno, label(c));
    conns_.erase(c->key);
    rdma_destroy_id(id);
    return s;
  }
  return LinkPtr(c);
}

void RdmaTransport::disconnect(NodeId peer) {
  Result<RConnPtr> c = established(peer);
  if (!c) return;
  FrameHeader h;
  h.type = FrameType::kBye;
  (void)post_frame(*c, h, nullptr, 0, Clock::now() + milliseconds(100), false);
  std::lock_guard<std::mutex> l(mu_);
  (*c)->abandoned = true;
  wake();
}

void RdmaTransport::wake() {
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
}

void RdmaTransport::shutdown() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    FrameHeader h;
    h.type = FrameType::kBye;
    for (const LinkPtr& c : established_links_locked())
      (void)post_frame(std::static_pointer_cast<RConn>(c), h, nullptr, 0, Clock::now(), false);
  }
  state_cv_.notify_all();
  stopping_ = true;
  if (thread_.joinable()) {
    wake();
    thread_.join();
  }
  std::vector<RConnPtr> all;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [k, c] : conns_) all.push_back(c);
  }
  for (const RConnPtr& c : all) destroy(c);
  for (auto& [id, r] : regions_) ibv_dereg_mr(r.mr);
  regions_.clear();
  if (listen_id_) rdma_destroy_id(listen_id_);
  if (ec_) rdma_destroy_event_channel(ec_);
  if (cq_) ibv_destroy_cq(cq_);
  if (cc_) ibv_destroy_comp_channel(cc_);
  if (pd_) ibv_dealloc_pd(pd_);
  if (ctx_) ibv_close_device(ctx_);
  listen_id_ = nullptr;
  ec_ = nullptr;
  cq_ = nullptr;
  cc_ = nullptr;
  pd_ = nullptr;
  ctx_ = nullptr;
  for (int* fd : {&epoll_fd_, &wake_fd_}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
}

void RdmaTransport::run() {
  tls_proxy_owner = this;
  if (cfg_.on_progress_thread_start) deliver("on_progress_thread_start", cfg_.on_progress_thread_start);
  const int tick_ms = static_cast<int>(std::clamp<long long>(cfg_.heartbeat_interval.count() / 4, 1, 250));
  epoll_event evs[8];
  while (!stopping_) {
    int n = epoll_wait(epoll_fd_, evs, 8, tick_ms);
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.u32 == 0) {
        for (int k = 0; k < 64; ++k) {
          rdma_cm_event* ev = nullptr;
          if (rdma_get_cm_event(ec_, &ev)) break;  // EAGAIN: drained
          on_cm_event(ev);
        }
      } else if (evs[i].data.u32 == 1) {
        ibv_cq* cq = nullptr;
        void* ctx = nullptr;
        if (ibv_get_cq_event(cc_, &cq, &ctx) == 0) {
          ibv_ack_cq_events(cq, 1);
          ibv_req_notify_cq(cq_, 0);
        }
      } else {
        uint64_t v;
        (void)!::read(wake_fd_, &v, sizeof(v));
      }
    }
    // Poll after re-arming so no completion is missed; bounded per wake-up.
    ibv_wc wcs[32];
    for (int round = 0; round < 64; ++round) {
      int got = ibv_poll_cq(cq_, 32, wcs);
      if (got <= 0) break;
      for (int i = 0; i < got; ++i) on_completion(wcs[i]);
    }
    tick();
  }
}

void RdmaTransport::start_handshake(const RConnPtr& c) {
  c->hs.emplace(handshake_params(*c));
  c->last_rx = Clock::now();
  send_raw(c, c->hs->hello_frame());
}

Status RdmaTransport::post_whole_frame(const RConnPtr& c, const std::vector<uint8_t>& frame, Deadline d) {
  WireLimits lim;
  lim.max_message_bytes = c->slot;
  Result<FrameHeader> hd = decode_header(frame.data(), lim, label(c));
  if (!hd) return hd.status();  // e.g. an advert larger than a message slot
  return post_frame(c, *hd, frame.data() + kHeaderBytes, frame.size() - kHeaderBytes, d, true);
}

void RdmaTransport::send_raw(const RConnPtr& c, const std::vector<uint8_t>& frame) {
  Status s = post_whole_frame(c, frame, Clock::now() + milliseconds(100));
  if (!s) fail(c, s);
}

void RdmaTransport::on_cm_event(rdma_cm_event* ev) {
  const rdma_cm_event_type type = ev->event;
  rdma_cm_id* id = ev->id;
  ConnectPrivate priv{};
  const bool have_priv = ev->param.conn.private_data_len >= sizeof(priv) && ev->param.conn.private_data;
  if (have_priv) std::memcpy(&priv, ev->param.conn.private_data, sizeof(priv));
  std::string reject_text;
  if (type == RDMA_CM_EVENT_REJECTED && ev->param.conn.private_data && ev->param.conn.private_data_len > 0) {
    const char* t = static_cast<const char*>(ev->param.conn.private_data);
    reject_text.assign(t, strnlen(t, ev->param.conn.private_data_len));
  }
  const int ev_status = ev->status;
  rdma_ack_cm_event(ev);

  if (type == RDMA_CM_EVENT_CONNECT_REQUEST) {
    char host[INET6_ADDRSTRLEN] = "?";
    sockaddr* sa = rdma_get_peer_addr(id);
    if (sa && sa->sa_family == AF_INET) inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(sa)->sin_addr, host, sizeof(host));
    const std::string remote = std::string(host) + ":" + std::to_string(ntohs(rdma_get_dst_port(id)));
    std::string why;
    if (!have_priv || priv.magic != kFrameMagic) {
      why = "not an epd transport connection (bad private data)";
    } else if (priv.major != cfg_.protocol_major) {
      why = "node " + std::to_string(priv.node) + " speaks protocol version " + std::to_string(priv.major) + "." +
            std::to_string(priv.minor) + ", node " + std::to_string(cfg_.node_id) + " speaks " +
            std::to_string(cfg_.protocol_major) + "." + std::to_string(cfg_.protocol_minor);
    }
    if (!why.empty()) {
      rdma_reject(id, why.c_str(), static_cast<uint8_t>(std::min<size_t>(why.size() + 1, 140)));
      rdma_destroy_id(id);
      transport_log(cfg_, LogSeverity::kError, "node " + std::to_string(cfg_.node_id) + ": refused " + remote + ": " + why);
      if (cb_.on_peer_state) {
        const bool bad_magic = !have_priv || priv.magic != kFrameMagic;
        Status s = make_status(bad_magic ? EPD_ERR_PROTOCOL : EPD_ERR_VERSION_MISMATCH, "%s: %s", remote.c_str(),
                               why.c_str());
        deliver("on_peer_state", [&] { cb_.on_peer_state(have_priv ? priv.node : kUnknownNode, s); });
      }
      return;
    }
    RConnPtr c;
    {
      std::lock_guard<std::mutex> l(mu_);
      c = new_conn(id, false, kUnknownNode, remote);
    }
    Status s = setup_qp(c);
    rdma_conn_param p{};
    p.responder_resources = 1;
    p.initiator_depth = 1;
    p.rnr_retry_count = 7;
    if (s && rdma_accept(id, &p)) s = rdma_err("rdma_accept", errno, remote);
    if (!s) {
      rdma_reject(id, nullptr, 0);
      fail(c, s);
    }
    return;
  }
  RConnPtr c;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = conns_.find(reinterpret_cast<uint64_t>(id->context));
    if (it != conns_.end()) c = it->second;
  }
  if (!c) return;
  switch (type) {
    case RDMA_CM_EVENT_ADDR_RESOLVED:
      if (rdma_resolve_route(id, 2000)) fail(c, rdma_err("rdma_resolve_route", errno, label(c)));
      return;
    case RDMA_CM_EVENT_ROUTE_RESOLVED: {
      Status s = setup_qp(c);
      if (!s) return fail(c, s);
      ConnectPrivate mine{kFrameMagic, cfg_.protocol_major, cfg_.protocol_minor, cfg_.node_id};
      rdma_conn_param p{};
      p.private_data = &mine;
      p.private_data_len = sizeof(mine);
      p.responder_resources = 1;
      p.initiator_depth = 1;
      p.retry_count = 7;
      p.rnr_retry_count = 7;
      if (rdma_connect(id, &p)) fail(c, rdma_err("rdma_connect", errno, label(c)));
      return;
    }
    case RDMA_CM_EVENT_ESTABLISHED:
      start_handshake(c);
      return;
    case RDMA_CM_EVENT_REJECTED:
      if (!reject_text.empty()) {
        return fail(c, make_status(reject_text.find("version") != std::string::npos ? EPD_ERR_VERSION_MISMATCH
                                                                                    : EPD_ERR_PERMISSION,
                                   "%s refused the connection: %s", label(c).c_str(), reject_text.c_str()));
      }
      [[fallthrough]];
    case RDMA_CM_EVENT_ADDR_ERROR:
    case RDMA_CM_EVENT_ROUTE_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_CONNECT_ERROR: {
      {
        std::lock_guard<std::mutex> l(mu_);
        c->transient = c->dialed && !c->established;
      }
      return fail(c, make_status(EPD_ERR_PEER_LOST, "%s: %s (status %d)", label(c).c_str(), rdma_event_str(type),
                                 ev_status));
    }
    case RDMA_CM_EVENT_DISCONNECTED:
      fail(c, make_status(EPD_ERR_PEER_LOST, "%s closed the connection", label(c).c_str()));
      return;
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
      fail(c, make_status(EPD_ERR_RDMA, "%s: RDMA device removed", label(c).c_str()));
      return;
    default:
      return;
  }
}

void RdmaTransport::on_completion(const ibv_wc& wc) {
  RConnPtr c;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = by_qpn_.find(wc.qp_num);
    if (it != by_qpn_.end()) c = it->second;
  }
  if (!c) return;
  const uint64_t kind = (wc.wr_id >> 20) & 0xf;
  const uint32_t slot = static_cast<uint32_t>(wc.wr_id & 0xfffff);
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status == IBV_WC_WR_FLUSH_ERR) return;  // QP already in error: reported once below
    const epd_status_t code = wc.status == IBV_WC_RETRY_EXC_ERR || wc.status == IBV_WC_RNR_RETRY_EXC_ERR
                                  ? EPD_ERR_PEER_LOST : EPD_ERR_RDMA;
    return fail(c, make_status(code, "%s: work completion failed: %s", label(c).c_str(), ibv_wc_status_str(wc.status)));
  }
  if (kind == kKindSend || kind == kKindWrite) {
    std::lock_guard<std::mutex> l(c->mu);
    if (kind == kKindSend) c->free_slots.push_back(slot);
    if (kind == kKindWrite && slot == 1) --c->staging_inflight;
    --c->outstanding;
    c->cv.notify_all();
    return;
  }
  c->last_rx = Clock::now();
  bool credited = true;
  if (wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
    if (!c->established) return fail(c, make_status(EPD_ERR_PROTOCOL, "%s wrote before the handshake", label(c).c_str()));
    const NodeId peer = c->peer;
    deliver("on_write", [&] { if (cb_.on_write) cb_.on_write(peer, ntohl(wc.imm_data), wc.byte_len); });
  } else {
    const uint8_t* buf = c->recv_buf.data() + size_t(slot) * c->slot;
    credited = !(wc.byte_len == kHeaderBytes && buf[4] == static_cast<uint8_t>(FrameType::kHeartbeat));
    on_frame(c, buf, wc.byte_len);
  }
  if (c->dead_flag()) return;
  Status s = post_recv(c, slot);
  if (!s) return fail(c, s);
  if (credited && ++c->to_return >= c->depth / 4) return_credits(c);
}

void RdmaTransport::return_credits(const RConnPtr& c) {
  FrameHeader h;
  h.type = FrameType::kHeartbeat;
  h.a = c->to_return;
  if (post_frame(c, h, nullptr, 0, Clock::now(), false)) c->to_return = 0;  // else retried by tick()
}

void RdmaTransport::on_frame(const RConnPtr& c, const uint8_t* buf, size_t len) {
  WireLimits lim;
  lim.max_message_bytes = c->slot;
  if (len < kHeaderBytes) return fail(c, make_status(EPD_ERR_PROTOCOL, "%s sent a %zu-byte message", label(c).c_str(), len));
  Result<FrameHeader> h = decode_header(buf, lim, label(c));
  if (!h) return fail(c, h.status());
  if (h->length != len - kHeaderBytes || h->type == FrameType::kWrite) {
    return fail(c, make_status(EPD_ERR_PROTOCOL, "%s: %s frame of %llu bytes in a %zu-byte message", label(c).c_str(),
                               frame_type_name(h->type), static_cast<unsigned long long>(h->length), len));
  }
  const uint8_t* payload = buf + kHeaderBytes;
  if (!c->established) {
    if (!c->hs) return fail(c, make_status(EPD_ERR_PROTOCOL, "%s sent data before the connection was up", label(c).c_str()));
    std::vector<HandshakeFrame> out;
    Status s = c->hs->on_frame(*h, payload, &out);
    // Over verbs the frames stay plain on both ends (no sealing yet: see docs/ARCHITECTURE.md).
    for (auto& f : out) send_raw(c, f.bytes);
    if (!s) return fail(c, s);
    if (c->hs->done()) promote(c);
    return;
  }
  switch (h->type) {
    case FrameType::kMessage: {
      const NodeId peer = c->peer;
      deliver("on_message", [&] { if (cb_.on_message) cb_.on_message(peer, h->a, payload, h->length); });
      return;
    }
    case FrameType::kRegions: {
      Result<std::vector<RegionInfo>> r = decode_regions(payload, h->length, label(c));
      if (!r) return fail(c, r.status());
      std::lock_guard<std::mutex> l(c->mu);
      for (const RegionInfo& x : *r) c->peer_regions[x.id] = x;
      return;
    }
    case FrameType::kHeartbeat: {
      std::lock_guard<std::mutex> l(c->mu);
      c->credits += h->a;
      c->cv.notify_all();
      return;
    }
    case FrameType::kBye:
      return fail(c, make_status(EPD_ERR_PEER_LOST, "%s closed the connection (shut down or disconnected)", label(c).c_str()));
    case FrameType::kReject:
      return fail(c, decode_reject(payload, h->length, label(c)));
    default:
      return fail(c, make_status(EPD_ERR_PROTOCOL, "%s sent a %s frame after the handshake", label(c).c_str(),
                                 frame_type_name(h->type)));
  }
}

void RdmaTransport::promote(const RConnPtr& c) {
  const NodeId peer = *c->hs->peer_node();
  Status advertised = Status::ok();
  {
    std::lock_guard<std::mutex> l(mu_);
    advertised = admit_locked(peer, *c);  // a node's live connection is kept, this one refused
    // Regions registered since our AUTH_OK was built (handshake.h says why).
    // Posted in the same mu_ section that makes c the peer's connection
    // (add_region reads regions_ and the peer table under mu_ too), so every region is in the
    // AUTH_OK, here, or pushed by add_region; and no caller's SEND precedes it
    // on the QP. The deadline is now: the proxy thread must not wait, and a
    // fresh connection has its slots and all but the handshake's credits.
    const std::vector<uint8_t> adv = regions_frame_after_handshake(region_advert_locked());
    if (advertised && !adv.empty()) advertised = post_whole_frame(c, adv, Clock::now());
    if (advertised) advertised = install_locked(c, peer);
    if (advertised) {
      std::lock_guard<std::mutex> cl(c->mu);
      for (const RegionInfo& r : c->hs->peer_regions()) c->peer_regions[r.id] = r;
    }
  }
  if (!advertised) return fail(c, advertised);  // not promoted: the dialer gets the error
  state_cv_.notify_all();
  transport_log(cfg_, LogSeverity::kInfo, "node " + std::to_string(cfg_.node_id) + " connected to " + label(c) + " over rdma");
  deliver("on_peer_state", [&] { if (cb_.on_peer_state) cb_.on_peer_state(peer, Status::ok()); });
}

void RdmaTransport::fail(const RConnPtr& c, const Status& s) {
  const NodeId peer = peer_of(*c);
  bool first, report = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    first = record_failure_locked(c, peer, s, &report);
    if (first) c->close_by = Clock::now() + milliseconds(2000);
  }
  state_cv_.notify_all();
  {
    std::lock_guard<std::mutex> l(c->mu);
    if (!c->dead) {
      c->dead = true;
      c->dead_status = s;
    }
    c->cv.notify_all();
  }
  if (!first) return;
  if (c->id && c->id->qp) rdma_disconnect(c->id);
  if (c->transient) return;  // the dialer retries; nothing to report yet
  transport_log(cfg_, LogSeverity::kWarn, "node " + std::to_string(cfg_.node_id) + ": " + s.to_string());
  if (report) deliver("on_peer_state", [&] { if (cb_.on_peer_state) cb_.on_peer_state(peer, s); });
}

void RdmaTransport::destroy(const RConnPtr& c) {
  {
    std::lock_guard<std::mutex> l(mu_);
    conns_.erase(c->key);
    if (c->id && c->id->qp) by_qpn_.erase(c->id->qp->qp_num);
    drop_locked(c);
  }
  std::lock_guard<std::mutex> l(c->mu);
  c->dead = true;
  if (c->id) {
    if (c->id->qp) rdma_destroy_qp(c->id);
    rdma_destroy_id(c->id);
    c->id = nullptr;
  }
  for (ibv_mr** mr : {&c->recv_mr, &c->send_mr, &c->staging_mr}) {
    if (*mr) ibv_dereg_mr(*mr);
    *mr = nullptr;
  }
  c->cv.notify_all();
}

void RdmaTransport::tick() {
  std::vector<RConnPtr> all;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [k, c] : conns_) all.push_back(c);
  }
  const auto now = Clock::now();
  for (const RConnPtr& c : all) {
    bool reported, abandoned;
    {
      std::lock_guard<std::mutex> l(mu_);
      reported = c->reported;
      abandoned = c->abandoned;
    }
    if (reported) {
      if (now >= c->close_by) destroy(c);
      continue;
    }
    if (abandoned) {
      fail(c, make_status(EPD_ERR_PEER_LOST, "%s: disconnected or abandoned by the caller", label(c).c_str()));
      continue;
    }
    if (now - c->last_rx > cfg_.peer_timeout && (c->hs || c->established)) {
      fail(c, make_status(EPD_ERR_TIMEOUT, "%s sent nothing for more than %lld ms (peer_timeout)", label(c).c_str(),
                          static_cast<long long>(cfg_.peer_timeout.count())));
      continue;
    }
    if (now - c->created > cfg_.peer_timeout && !c->hs) {
      fail(c, make_status(EPD_ERR_TIMEOUT, "%s: connection setup took longer than %lld ms", label(c).c_str(),
                          static_cast<long long>(cfg_.peer_timeout.count())));
      continue;
    }
    bool idle;
    {
      std::lock_guard<std::mutex> l(c->mu);
      idle = now - c->last_tx >= cfg_.heartbeat_interval;
    }
    if (c->established && (idle || c->to_return >= c->depth / 4)) return_credits(c);
  }
}

}  // namespace rdma_detail

Result<std::unique_ptr<Transport>> create_rdma_transport(const TransportConfig& config, TransportCallbacks callbacks) {
  auto t = std::make_unique<rdma_detail::RdmaTransport>(config, std::move(callbacks));
  Status s = t->start();
  if (!s) return s;
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace epd::transport
