// rdma_transport.cc — the RDMA transport's set-up, memory registration and
// posting paths (see rdma_transport_impl.h; rdma_progress.cc has the rest).
// NOT RUN ON HARDWARE: only the no-device path of start() has executed.
#include "rdma_transport_impl.h"

namespace epd::transport {
namespace rdma_detail {

Status RdmaTransport::start() {
  EPD_RETURN_IF_ERROR(validate_config(cfg_));
  if (cfg_.rdma.queue_depth < 4 * kReserve || cfg_.rdma.message_slot_bytes < 4096) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "rdma queue_depth %u must be >= %u and slot bytes %u >= 4096",
                       cfg_.rdma.queue_depth, 4 * kReserve, cfg_.rdma.message_slot_bytes);
  }
  int num = 0;
  ibv_device** devs = ibv_get_device_list(&num);
  if (!devs || num == 0) {
    if (devs) ibv_free_device_list(devs);
    return make_status(EPD_ERR_RDMA, "node %u: no RDMA device found (ibv_get_device_list returned 0 devices)",
                       cfg_.node_id);
  }
  ibv_device* dev = nullptr;
  for (int i = 0; i < num && !dev; ++i) {
    if (cfg_.rdma.device.empty() || cfg_.rdma.device == ibv_get_device_name(devs[i])) dev = devs[i];
  }
  if (!dev) {
    ibv_free_device_list(devs);
    return make_status(EPD_ERR_RDMA, "node %u: RDMA device '%s' not found among %d devices", cfg_.node_id,
                       cfg_.rdma.device.c_str(), num);
  }
  ctx_ = ibv_open_device(dev);
  const std::string dev_name = ibv_get_device_name(dev);
  ibv_free_device_list(devs);
  if (!ctx_) return rdma_err("ibv_open_device", errno, dev_name);
  if (!(pd_ = ibv_alloc_pd(ctx_))) return rdma_err("ibv_alloc_pd", errno, dev_name);
  if (!(cc_ = ibv_create_comp_channel(ctx_))) return rdma_err("ibv_create_comp_channel", errno, dev_name);
  if (!(cq_ = ibv_create_cq(ctx_, 4096, nullptr, cc_, 0))) return rdma_err("ibv_create_cq", errno, dev_name);
  if (ibv_req_notify_cq(cq_, 0)) return rdma_err("ibv_req_notify_cq", errno, dev_name);
  if (!(ec_ = rdma_create_event_channel())) return rdma_err("rdma_create_event_channel", errno, dev_name);
  if (rdma_create_id(ec_, &listen_id_, nullptr, RDMA_PS_TCP)) return rdma_err("rdma_create_id", errno, dev_name);
  std::string host;
  uint16_t port = 0;
  EPD_RETURN_IF_ERROR(split_host_port(cfg_.listen_address, &host, &port));
  addrinfo hints{}, *res = nullptr;
  hints.ai_flags = AI_NUMERICSERV;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) || !res) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "cannot resolve listen address '%s'", cfg_.listen_address.c_str());
  }
  int rc = rdma_bind_addr(listen_id_, res->ai_addr);
  freeaddrinfo(res);
  if (rc) return rdma_err("rdma_bind_addr", errno, cfg_.listen_address);
  if (listen_id_->verbs && listen_id_->verbs->device != ctx_->device) {
    return make_status(EPD_ERR_RDMA, "listen address %s belongs to RDMA device %s, not %s",
                       cfg_.listen_address.c_str(), ibv_get_device_name(listen_id_->verbs->device), dev_name.c_str());
  }
  if (rdma_listen(listen_id_, 128)) return rdma_err("rdma_listen", errno, cfg_.listen_address);
  bound_ = host + ":" + std::to_string(ntohs(rdma_get_src_port(listen_id_)));
  fcntl(ec_->fd, F_SETFL, fcntl(ec_->fd, F_GETFL) | O_NONBLOCK);
  fcntl(cc_->fd, F_SETFL, fcntl(cc_->fd, F_GETFL) | O_NONBLOCK);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) return errno_status("epoll_create1/eventfd", errno);
  int fds[3] = {ec_->fd, cc_->fd, wake_fd_};
  for (int i = 0; i < 3; ++i) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<uint32_t>(i);
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fds[i], &ev)) return errno_status("epoll_ctl", errno);
  }
  thread_ = std::thread([this] { run(); });
  return Status::ok();
}

Status RdmaTransport::add_region(uint32_t id, uint8_t* addr, size_t bytes, ibv_mr* mr) {
  std::vector<uint8_t> adv;
  std::vector<RConnPtr> peers;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (regions_.count(id)) {
      ibv_dereg_mr(mr);
      return make_status(EPD_ERR_INVALID_ARGUMENT, "region %u is already registered", id);
    }
    regions_[id] = LocalRegion{addr, bytes, mr};
    adv = encode_regions(region_advert_locked());
    for (const LinkPtr& c : established_links_locked()) peers.push_back(std::static_pointer_cast<RConn>(c));
  }
  // Posted outside mu_: the proxy thread needs it to return the credits we may wait for.
  FrameHeader h;
  h.type = FrameType::kRegions;
  for (const RConnPtr& c : peers) {
    Status s = post_frame(c, h, adv.data(), adv.size(), Clock::now() + milliseconds(1000), true);
    if (!s) transport_log(cfg_, LogSeverity::kWarn, "region advert to " + label(c) + ": " + s.to_string());
  }
  return Status::ok();
}

std::vector<RegionInfo> RdmaTransport::region_advert_locked() {
  std::vector<RegionInfo> out;
  for (auto& [id, r] : regions_) out.push_back(RegionInfo{id, r.mr->rkey, reinterpret_cast<uint64_t>(r.addr), r.bytes});
  return out;
}

RConnPtr RdmaTransport::new_conn(rdma_cm_id* id, bool dialed, NodeId expected, const std::string& remote) {
  auto c = std::make_shared<RConn>();
  c->key = next_key_++;
  c->id = id;
  c->dialed = dialed;
  c->expected = expected;
  c->remote = remote;
  id->context = reinterpret_cast<void*>(c->key);
  conns_[c->key] = c;
  return c;
}

Status RdmaTransport::setup_qp(const RConnPtr& c) {
  if (c->id->verbs != ctx_) {
    return make_status(EPD_ERR_RDMA, "%s: route uses RDMA device %s; this transport opened %s",
                       label(c).c_str(), ibv_get_device_name(c->id->verbs->device), ibv_get_device_name(ctx_->device));
  }
  c->depth = cfg_.rdma.queue_depth;
  c->slot = cfg_.rdma.message_slot_bytes;
  ibv_qp_init_attr qa{};
  qa.send_cq = cq_;
  qa.recv_cq = cq_;
  qa.qp_type = IBV_QPT_RC;
  qa.cap.max_send_wr = c->depth;
  qa.cap.max_recv_wr = c->depth;
  qa.cap.max_send_sge = 1;
  qa.cap.max_recv_sge = 1;
  if (rdma_create_qp(c->id, pd_, &qa)) return rdma_err("rdma_create_qp", errno, label(c));
  c->recv_buf.resize(size_t(c->depth) * c->slot);
  c->send_buf.resize(size_t(c->depth) * c->slot);
  c->staging.resize(cfg_.rdma.staging_bytes);
  // An int, not the enum: the ibv_reg_mr macro ANDs it with an enumerator of another enum type.
  c->recv_mr = ibv_reg_mr(pd_, c->recv_buf.data(), c->recv_buf.size(), static_cast<int>(IBV_ACCESS_LOCAL_WRITE));
  c->send_mr = ibv_reg_mr(pd_, c->send_buf.data(), c->send_buf.size(), 0);
  c->staging_mr = ibv_reg_mr(pd_, c->staging.data(), c->staging.size(), 0);
  if (!c->recv_mr || !c->send_mr || !c->staging_mr) return rdma_err("ibv_reg_mr", errno, label(c) + " buffers");
  {
    std::lock_guard<std::mutex> l(c->mu);
    for (uint32_t i = 0; i < c->depth; ++i) c->free_slots.push_back(i);
    c->credits = c->depth - kReserve;
  }
  std::lock_guard<std::mutex> l(mu_);
  by_qpn_[c->id->qp->qp_num] = c;
  for (uint32_t i = 0; i < c->depth; ++i) EPD_RETURN_IF_ERROR(post_recv(c, i));
  return Status::ok();
}

Status RdmaTransport::post_recv(const RConnPtr& c, uint32_t slot) {
  ibv_sge sge{reinterpret_cast<uint64_t>(c->recv_buf.data() + size_t(slot) * c->slot), c->slot, c->recv_mr->lkey};
  ibv_recv_wr wr{};
  ibv_recv_wr* bad = nullptr;
  wr.wr_id = make_wr_id(c->key, kKindRecv, slot);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  int rc = ibv_post_recv(c->id->qp, &wr, &bad);
  return rc ? rdma_err("ibv_post_recv", rc, label(c)) : Status::ok();
}

Status RdmaTransport::post_frame(const RConnPtr& c, FrameHeader h, const void* data, size_t bytes, Deadline d,
                                 bool credited) {
  if (kHeaderBytes + bytes > c->slot) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "send to %s: %zu bytes exceed the %u-byte rdma message slot",
                       label(c).c_str(), bytes, c->slot - unsigned(kHeaderBytes));
  }
  std::unique_lock<std::mutex> l(c->mu);
  if (!c->cv.wait_until(l, d, [&] {
        return c->dead || (!c->free_slots.empty() && c->outstanding < c->depth && (!credited || c->credits > 0));
      })) {
    return make_status(EPD_ERR_TIMEOUT, "send to %s: no send slot or receive credit before the deadline",
                       label(c).c_str());
  }
  if (c->dead) return c->dead_status;
  const uint32_t slot = c->free_slots.back();
  c->free_slots.pop_back();
  uint8_t* p = c->send_buf.data() + size_t(slot) * c->slot;
  h.length = bytes;
  encode_header(h, p);
  if (bytes) std::memcpy(p + kHeaderBytes, data, bytes);
  ibv_sge sge{reinterpret_cast<uint64_t>(p), uint32_t(kHeaderBytes + bytes), c->send_mr->lkey};
  ibv_send_wr wr{};
  ibv_send_wr* bad = nullptr;
  wr.wr_id = make_wr_id(c->key, kKindSend, slot);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  int rc = ibv_post_send(c->id->qp, &wr, &bad);
  if (rc) {
    c->free_slots.push_back(slot);
    return rdma_err("ibv_post_send", rc, label(c));
  }
  if (credited) --c->credits;
  ++c->outstanding;
  c->last_tx = Clock::now();
  return Status::ok();
}

Status RdmaTransport::post_write(const RConnPtr& c, std::unique_lock<std::mutex>& l, const RegionInfo& r,
                                 uint64_t off, const uint8_t* src, uint32_t lkey, size_t n, bool with_imm,
                                 uint32_t imm, bool staged) {
  ibv_sge sge{reinterpret_cast<uint64_t>(src), uint32_t(n), lkey};
  ibv_send_wr wr{};
  ibv_send_wr* bad = nullptr;
  wr.wr_id = make_wr_id(c->key, kKindWrite, staged ? 1 : 0);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = with_imm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
  wr.imm_data = htonl(imm);
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = r.addr + off;
  wr.wr.rdma.rkey = r.rkey;
  int rc = ibv_post_send(c->id->qp, &wr, &bad);
  if (rc) return rdma_err("ibv_post_send(RDMA_WRITE)", rc, label(c));
  (void)l;
  if (with_imm) --c->credits;
  ++c->outstanding;
  if (staged) ++c->staging_inflight;
  c->last_tx = Clock::now();
  return Status::ok();
}

Status RdmaTransport::write(NodeId peer, uint32_t region_id, uint64_t offset, const void* data, size_t bytes,
                            uint32_t imm, Deadline d) {
  Result<RConnPtr> rc = established(peer);
  if (!rc) return rc.status();
  RConnPtr c = *rc;
  if (tls_proxy_owner == this) d = std::min(d, Clock::now());
  const uint8_t* src = static_cast<const uint8_t*>(data);
  uint32_t lkey = 0;
  bool zero_copy = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, r] : regions_) {
      const uintptr_t s0 = reinterpret_cast<uintptr_t>(src), r0 = reinterpret_cast<uintptr_t>(r.addr);
      if (s0 >= r0 && bytes <= r.bytes && s0 - r0 <= r.bytes - bytes) {
        lkey = r.mr->lkey;
        zero_copy = true;
        break;
      }
    }
  }
  std::unique_lock<std::mutex> l(c->mu);
  auto it = c->peer_regions.find(region_id);
  if (it == c->peer_regions.end()) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "write to node %u: it has no region %u", peer, region_id);
  }
  const RegionInfo r = it->second;
  if (offset > r.bytes || bytes > r.bytes - offset) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "write to node %u: %zu bytes at offset %llu exceed region %u (%llu bytes)",
                       peer, bytes, static_cast<unsigned long long>(offset), region_id,
                       static_cast<unsigned long long>(r.bytes));
  }
  const size_t piece = zero_copy ? kMaxWriteWr : c->staging.size();
  size_t done = 0;
  for (size_t iter = 0; iter <= bytes / std::max<size_t>(piece, 1) + 1; ++iter) {
    const size_t n = std::min(piece, bytes - done);
    const bool last = done + n == bytes;
    auto ready = [&] {
      return c->dead || (c->outstanding < c->depth && (!last || c->credits > 0) && (zero_copy || c->staging_inflight == 0));
    };
    if (!c->cv.wait_until(l, d, ready)) {
      return make_status(EPD_ERR_TIMEOUT, "write to node %u region %u: no work request slot/credit before the deadline",
                         peer, region_id);
    }
    if (c->dead) return c->dead_status;
    const uint8_t* from = src + done;
    uint32_t key = lkey;
    if (!zero_copy) {
      std::memcpy(c->staging.data(), from, n);
      from = c->staging.data();
      key = c->staging_mr->lkey;
    }
    EPD_RETURN_IF_ERROR(post_write(c, l, r, offset + done, from, key, n, last, imm, !zero_copy));
    done += n;
    if (last) return Status::ok();
  }
  return make_status(EPD_ERR_INTERNAL, "write to node %u: split loop overran", peer);
}

Status RdmaTransport::flush(NodeId peer, Deadline d) {
  Result<RConnPtr> rc = established(peer);
  if (!rc) return rc.status();
  RConnPtr c = *rc;
  std::unique_lock<std::mutex> l(c->mu);
  if (!c->cv.wait_until(l, d, [&] { return c->dead || c->outstanding == 0; })) {
    return make_status(EPD_ERR_TIMEOUT, "flush to node %u: %u work requests still outstanding", peer, c->outstanding);
  }
  return c->dead ? c->dead_status : Status::ok();
}

}  // namespace rdma_detail
}  // namespace epd::transport
