// tcp_transport.cc — the TCP transport's caller-facing methods (see
// tcp_transport_impl.h for the design and locking, tcp_progress.cc for the
// progress thread).
#include "tcp_transport_impl.h"

namespace epd::transport {
namespace tcp_detail {

std::string TcpTransport::label(const ConnPtr& c) const {
  NodeId p = c->peer;
  if (p == kUnknownNode && c->hs && c->hs->peer_node()) p = *c->hs->peer_node();
  if (p == kUnknownNode) return c->remote;
  return "node " + std::to_string(p) + " (" + c->remote + ")";
}

Status TcpTransport::start() {
  EPD_RETURN_IF_ERROR(validate_config(cfg_));
  if (cfg_.tcp.max_queued_bytes < cfg_.max_message_bytes) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "max_queued_bytes %zu must be >= max_message_bytes %zu (> 0)",
                       cfg_.tcp.max_queued_bytes, cfg_.max_message_bytes);
  }
  sockaddr_storage ss{};
  socklen_t len = 0;
  EPD_RETURN_IF_ERROR(resolve(cfg_.listen_address, &ss, &len));
  listen_fd_ = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return errno_status("socket", errno);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    int e = errno;
    return make_status(EPD_ERR_SYSTEM, "node %u: bind to %s: %s", cfg_.node_id,
                       cfg_.listen_address.c_str(), strerror(e));
  }
  if (::listen(listen_fd_, 128) != 0) return errno_status("listen", errno);
  sockaddr_storage bound{};
  socklen_t blen = sizeof(bound);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &blen);
  bound_address_ = sockaddr_string(bound);

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return errno_status("epoll_create1", errno);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return errno_status("eventfd", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenKey;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) != 0) return errno_status("epoll_ctl", errno);
  ev.data.u64 = kWakeKey;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) return errno_status("epoll_ctl", errno);
  thread_ = std::thread([this] { run(); });
  return Status::ok();
}

void TcpTransport::wake() {
  uint64_t one = 1;
  ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  (void)n;  // EAGAIN: the counter is already non-zero, the thread will wake
}

std::vector<RegionInfo> TcpTransport::region_advert_locked() {
  std::vector<RegionInfo> out;
  for (const auto& [id, r] : regions_) out.push_back(RegionInfo{id, 0, 0, r.bytes});
  return out;
}

Status TcpTransport::deregister_region(uint32_t region_id) {
  std::unique_lock<std::mutex> l(mu_);
  if (!regions_.erase(region_id)) return Status::ok();
  retired_regions_.insert(region_id);
  const uint64_t ticket = ++retire_asked_;
  if (tls_progress_owner == this) {  // from a callback: the progress thread itself
    l.unlock();
    retire_writes();
    return Status::ok();
  }
  if (stopping_ || !thread_.joinable()) return Status::ok();  // no progress thread: nothing writes
  l.unlock();
  wake();
  l.lock();
  // Only the progress thread writes into regions; once it has seen the
  // deregistration (retire_writes), none of its writes lands there.
  if (!retire_cv_.wait_for(l, std::chrono::seconds(10), [&] { return retire_done_ >= ticket || stopping_.load(); }))
    return make_status(EPD_ERR_TIMEOUT, "region %u: the progress thread did not confirm its deregistration in 10 s",
                       region_id);
  return Status::ok();
}

void TcpTransport::retire_writes() {
  std::lock_guard<std::mutex> l(mu_);
  if (retire_done_ == retire_asked_) return;
  for (auto& [key, c] : conns_)
    if (c->writing() && !regions_.count(c->cur.a)) {
      if (!c->discard_buf) c->discard_buf.reset(new uint8_t[kSealChunkBytes]);
      c->discard_write = true;
    }
  retire_done_ = retire_asked_;
  retire_cv_.notify_all();
}

Status TcpTransport::register_region(uint32_t region_id, void* addr, size_t bytes) {
  if (addr == nullptr || bytes == 0) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "region %u: address %p / %zu bytes is empty",
                       region_id, addr, bytes);
  }
  std::lock_guard<std::mutex> l(mu_);
  if (regions_.count(region_id)) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "region %u is already registered", region_id);
  }
  regions_[region_id] = Region{static_cast<uint8_t*>(addr), bytes};
  std::vector<uint8_t> adv = encode_regions(region_advert_locked());
  FrameHeader h;
  h.type = FrameType::kRegions;
  for (const LinkPtr& c : established_links_locked())
    push_control(std::static_pointer_cast<Conn>(c), make_frame(h, adv.data(), adv.size()));
  return Status::ok();
}

Result<ConnPtr> TcpTransport::established(NodeId peer) const {
  Result<LinkPtr> c = established_link(peer);
  if (!c) return c.status();
  return std::static_pointer_cast<Conn>(*c);
}

void TcpTransport::set_epollout(const ConnPtr& c, bool on) {
  if (c->want_out == on || c->fd < 0) return;
  c->want_out = on;
  epoll_event ev{};
  ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
  ev.data.u64 = c->key;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->fd, &ev);
}

void TcpTransport::push_control(const ConnPtr& c, std::vector<uint8_t> frame) {
  std::lock_guard<std::mutex> l(c->tx_mu);
  if (c->dead) return;
  queue_locked(c, std::move(frame));
}

void TcpTransport::queue_locked(const ConnPtr& c, std::vector<uint8_t> frame) {
  if (c->tx_seal) frame = c->tx_seal->seal_frame(frame);
  c->queued += frame.size();
  c->txq.push_back(std::move(frame));
  if (!c->connecting) set_epollout(c, true);
}

void TcpTransport::seal_payload(const FrameSealer& s, uint64_t seq, const uint8_t* data, size_t from, size_t bytes,
                                std::vector<uint8_t>* out) {
  for (size_t at = from; at < bytes; at += kSealChunkBytes, ++seq) {
    const size_t n = std::min(kSealChunkBytes, bytes - at);
    const size_t pos = out->size();
    out->resize(pos + n + kTagBytes);
    s.seal_chunk(data + at, n, seq, out->data() + pos);
  }
}

Status TcpTransport::enqueue(NodeId peer, FrameHeader h, const void* data, size_t bytes, Deadline d,
                             const uint32_t* region_id) {
  Result<ConnPtr> rc = established(peer);
  if (!rc) return rc.status();
  ConnPtr c = *rc;
  const bool on_progress = tls_progress_owner == this;
  std::unique_lock<std::mutex> l(c->tx_mu);
  if (region_id) {
    auto it = c->peer_regions.find(*region_id);
    if (it == c->peer_regions.end()) {
      return make_status(EPD_ERR_INVALID_ARGUMENT, "write to node %u: it has no region %u", peer,
                         *region_id);
    }
    if (h.offset > it->second.bytes || bytes > it->second.bytes - h.offset) {
      return make_status(EPD_ERR_INVALID_ARGUMENT,
                         "write to node %u: %zu bytes at offset %llu exceed region %u (%llu bytes)",
                         peer, bytes, static_cast<unsigned long long>(h.offset), *region_id,
                         static_cast<unsigned long long>(it->second.bytes));
    }
  }
  uint64_t wire = 0;
  if (!sealed_frame_bytes(bytes, &wire) || wire > SIZE_MAX / 2) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "send to node %u: %zu bytes do not fit a frame", peer, bytes);
  }
  const size_t total = static_cast<size_t>(wire);
  const size_t max_queued = cfg_.tcp.max_queued_bytes;
  while (!c->dead && (c->writer_active || (c->queued > 0 && c->queued + total > max_queued))) {
    if (on_progress || c->tx_cv.wait_until(l, d) == std::cv_status::timeout) {
      if (c->dead) break;
      if (!c->writer_active && c->queued > 0 && c->queued + total > max_queued) {
        return make_status(EPD_ERR_TIMEOUT,
                           "send to node %u: its queue (%zu of %zu bytes) did not drain before the deadline",
                           peer, c->queued, max_queued);
      }
      if (c->writer_active) {
        return make_status(EPD_ERR_TIMEOUT, "send to node %u: another sender held the connection past the deadline",
                           peer);
      }
    }
  }
  if (c->dead) return c->dead_status;
  if (!c->tx_seal) {
    return make_status(EPD_ERR_INTERNAL, "send to node %u: the established connection has no sealing key", peer);
  }
  h.length = bytes;
  return write_sealed(c, l, h, static_cast<const uint8_t*>(data), d, on_progress);
}

Status TcpTransport::write_sealed(const ConnPtr& c, std::unique_lock<std::mutex>& l, const FrameHeader& h,
                                  const uint8_t* data, Deadline d, bool on_progress) {
  const size_t bytes = h.length;
  SealedWrite w{c->tx_scratch, data, bytes, c->tx_seal->reserve(1 + sealed_chunks(bytes))};  // scratch: ours under tx_mu
  w.buf.resize(kSealedHeaderBytes);
  c->tx_seal->seal_header(h, w.seq++, w.buf.data());
  w.left = kSealedHeaderBytes + bytes + sealed_chunks(bytes) * kTagBytes;
  const bool direct = c->txq.empty();
  if (direct) {
    c->writer_active = true;
    Status err = write_direct(c, l, w, d, on_progress);
    c->writer_active = false;
    c->tx_cv.notify_all();
    if (!err.is_ok() && !c->dead) {
      c->dead = true;
      c->dead_status = err;
      wake();  // the progress thread sees the error on the socket and reports it
    }
    if (c->dead) return c->dead_status;
    if (w.left == 0) return Status::ok();
  }
  // The rest, in record order. Written directly, it goes before whatever was
  // queued meanwhile (those frames took later record numbers); else after
  // what was queued before it.
  std::vector<uint8_t> rest(w.buf.begin() + static_cast<ptrdiff_t>(w.off), w.buf.end());
  seal_payload(*c->tx_seal, w.seq, data, w.sealed_to, bytes, &rest);
  c->queued += rest.size();
  if (direct) {
    c->txq.push_front(std::move(rest));
  } else {
    c->txq.push_back(std::move(rest));
  }
  set_epollout(c, true);
  return Status::ok();
}

Status TcpTransport::write_direct(const ConnPtr& c, std::unique_lock<std::mutex>& l, SealedWrite& w, Deadline d,
                                  bool on_progress) {
  // Bounded: each pass sends bytes or waits <= 5 ms; the deadline ends the waiting.
  for (size_t pass = 0; w.left > 0 && pass < (size_t(1) << 30); ++pass) {
    if (w.off == w.buf.size()) {  // seal the next batch of payload records
      w.buf.clear();
      w.off = 0;
      const size_t to = std::min(w.bytes, w.sealed_to + kSealBatchChunks * kSealChunkBytes);
      seal_payload(*c->tx_seal, w.seq, w.data, w.sealed_to, to, &w.buf);
      w.seq += sealed_chunks(to - w.sealed_to);
      w.sealed_to = to;
    }
    const ssize_t n = ::send(c->fd, w.buf.data() + w.off, w.buf.size() - w.off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Small rests are cheaper to queue; the progress thread never waits.
      if (on_progress || w.left < kDirectWriteMin || Clock::now() >= d) return Status::ok();
      const int fd = c->fd;
      l.unlock();
      pollfd pfd{fd, POLLOUT, 0};
      ::poll(&pfd, 1, static_cast<int>(std::clamp<long long>(ms_until(d), 0, 5)));
      l.lock();
      if (c->dead || c->fd < 0) return Status::ok();
      continue;
    }
    if (n < 0) return make_status(EPD_ERR_PEER_LOST, "send to %s: %s", label(c).c_str(), strerror(errno));
    w.off += static_cast<size_t>(n);
    w.left -= static_cast<size_t>(n);
    c->last_tx = Clock::now();
  }
  return Status::ok();
}

Status TcpTransport::flush(NodeId peer, Deadline d) {
  Result<ConnPtr> rc = established(peer);
  if (!rc) return rc.status();
  ConnPtr c = *rc;
  std::unique_lock<std::mutex> l(c->tx_mu);
  if (!c->tx_cv.wait_until(l, d, [&] { return c->dead || (c->queued == 0 && !c->writer_active); })) {
    return make_status(EPD_ERR_TIMEOUT, "flush to node %u: %zu bytes still queued at the deadline",
                       peer, c->queued);
  }
  return c->dead ? c->dead_status : Status::ok();
}

Result<LinkPtr> TcpTransport::dial_locked(NodeId peer, const std::string& addr, const sockaddr_storage& ss,
                                          socklen_t len) {
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status("socket", errno);
  auto c = std::make_shared<Conn>();
  c->fd = fd;
  c->key = next_key_++;
  c->remote = addr;
  c->dialed = true;
  c->connecting = true;
  c->expected = peer;
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&ss), len);
  if (rc != 0 && errno != EINPROGRESS) {
    int e = errno;
    ::close(fd);
    return make_status(EPD_ERR_PEER_LOST, "connect to node %u (%s): %s", peer, addr.c_str(), strerror(e));
  }
  conns_[c->key] = c;
  epoll_event ev{};
  ev.events = EPOLLOUT | EPOLLIN;
  ev.data.u64 = c->key;
  c->want_out = true;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  return LinkPtr(c);
}

void TcpTransport::disconnect(NodeId peer) {
  ConnPtr c;
  {
    std::lock_guard<std::mutex> l(mu_);
    c = std::static_pointer_cast<Conn>(peer_link_locked(peer));
    if (!c) return;
    FrameHeader h;
    h.type = FrameType::kBye;
    push_control(c, make_frame(h, nullptr, 0));
    record_disconnect_locked(
        peer, make_status(EPD_ERR_PEER_LOST, "node %u disconnected from node %u", cfg_.node_id, peer));
    c->close_requested = true;
    c->reported = true;
  }
  {
    std::lock_guard<std::mutex> l(c->tx_mu);
    c->shut_wr_after_drain = true;
  }
  wake();
}

void TcpTransport::shutdown() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    FrameHeader h;
    h.type = FrameType::kBye;
    for (const LinkPtr& link : established_links_locked()) {
      Conn* c = static_cast<Conn*>(link.get());
      std::lock_guard<std::mutex> tl(c->tx_mu);
      if (!c->txq.empty() || c->writer_active || !c->tx_seal) continue;
      uint8_t rec[kSealedHeaderBytes];
      c->tx_seal->seal_header(h, c->tx_seal->reserve(1), rec);
      (void)::send(c->fd, rec, sizeof(rec), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
  }
  state_cv_.notify_all();
  stopping_ = true;
  if (thread_.joinable()) {
    wake();
    thread_.join();
  }
  std::lock_guard<std::mutex> l(mu_);
  for (auto& [key, c] : conns_) {
    std::lock_guard<std::mutex> tl(c->tx_mu);
    c->dead = true;
    c->dead_status = make_status(EPD_ERR_SHUTTING_DOWN, "node %u: transport is shut down", cfg_.node_id);
    c->tx_cv.notify_all();
    if (c->fd >= 0) ::close(c->fd);
    c->fd = -1;
  }
  conns_.clear();
  for (const LinkPtr& c : established_links_locked()) drop_locked(c);
  for (int* fd : {&listen_fd_, &epoll_fd_, &wake_fd_}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
}

}  // namespace tcp_detail

Result<std::unique_ptr<Transport>> create_tcp_transport(const TransportConfig& config,
                                                        TransportCallbacks callbacks) {
  auto t = std::make_unique<tcp_detail::TcpTransport>(config, std::move(callbacks));
  Status s = t->start();
  if (!s) return s;
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace epd::transport
