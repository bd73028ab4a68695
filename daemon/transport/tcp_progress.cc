// tcp_progress.cc — the TCP transport's progress thread: accept, connect
// completion, starting and completing handshakes, send-queue draining,
// failures, heartbeats and silence detection (see tcp_transport_impl.h;
// tcp_receive.cc has the receive side).
#include "tcp_transport_impl.h"

namespace epd::transport::tcp_detail {

void TcpTransport::set_socket_options(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  const long long timeout_ms = cfg_.peer_timeout.count();
  int idle = static_cast<int>(std::max<long long>(1, timeout_ms / 2000));
  int intvl = 1;
  int cnt = static_cast<int>(std::max<long long>(1, timeout_ms / 2000));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
  // Unacknowledged data older than peer_timeout (a link gone down) aborts the connection.
  unsigned user_timeout = static_cast<unsigned>(timeout_ms);
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
}

void TcpTransport::run() {
  tls_progress_owner = this;
  if (cfg_.on_progress_thread_start) deliver("on_progress_thread_start", cfg_.on_progress_thread_start);
  const int tick_ms = static_cast<int>(std::clamp<long long>(cfg_.heartbeat_interval.count() / 4, 1, 250));
  epoll_event evs[64];
  while (!stopping_) {
    int n = epoll_wait(epoll_fd_, evs, 64, tick_ms);
    if (n < 0 && errno != EINTR) {
      transport_log(cfg_, LogSeverity::kError, errno_status("epoll_wait", errno).to_string());
      break;
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t key = evs[i].data.u64;
      if (key == kListenKey) {
        on_accept();
      } else if (key == kWakeKey) {
        uint64_t v;
        ssize_t r = ::read(wake_fd_, &v, sizeof(v));
        (void)r;
      } else {
        ConnPtr c;
        {
          std::lock_guard<std::mutex> l(mu_);
          auto it = conns_.find(key);
          if (it != conns_.end()) c = it->second;
        }
        if (c) on_event(c, evs[i].events);
      }
    }
    tick();
    retire_writes();
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    retire_done_ = retire_asked_;  // stopped: nothing writes any more
  }
  retire_cv_.notify_all();
  tls_progress_owner = nullptr;
}

void TcpTransport::on_accept() {
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        transport_log(cfg_, LogSeverity::kWarn, errno_status("accept4", errno).to_string());
      }
      return;
    }
    auto c = std::make_shared<Conn>();
    c->fd = fd;
    c->remote = sockaddr_string(ss);
    c->remote_host = c->remote.substr(0, c->remote.rfind(':'));
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!admit_address(c)) {
        ::close(fd);
        continue;
      }
      c->key = next_key_++;
      conns_[c->key] = c;
    }
    set_socket_options(fd);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = c->key;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    start_handshake(c);
  }
}

bool TcpTransport::admit_address(const ConnPtr& c) {
  int pending = 0, from_host = 0;
  for (auto& [k, other] : conns_) {
    if (other->established) continue;
    ++pending;
    from_host += other->remote_host == c->remote_host ? 1 : 0;
  }
  std::string why;
  if (pending >= kMaxPendingHandshakes) {
    why = std::to_string(pending) + " handshakes already pending";
  } else if (static_cast<uint32_t>(from_host) >= cfg_.max_pending_per_address) {
    why = std::to_string(from_host) + " handshakes from " + c->remote_host +
          " already pending (max_pending_per_address " + std::to_string(cfg_.max_pending_per_address) + ")";
  } else {
    return true;
  }
  // A flood of connections must not flood the log: one line a second at most.
  ++refusals_unlogged_;
  const auto now = Clock::now();
  if (now - refusal_logged_ >= std::chrono::seconds(1)) {
    transport_log(cfg_, LogSeverity::kWarn,
                  "node " + std::to_string(cfg_.node_id) + ": refused connection from " + c->remote + ": " + why +
                      " (" + std::to_string(refusals_unlogged_) + " refused since the last such line)");
    refusal_logged_ = now;
    refusals_unlogged_ = 0;
  }
  return false;
}

void TcpTransport::start_handshake(const ConnPtr& c) {
  c->hs.emplace(handshake_params(*c));
  c->rx.resize(kRxBufBytes);
  c->last_rx = Clock::now();
  push_control(c, c->hs->hello_frame());
}

void TcpTransport::on_connected(const ConnPtr& c) {
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    {
      std::lock_guard<std::mutex> l(mu_);
      c->transient = true;
      c->reported = true;
      c->outcome = make_status(EPD_ERR_PEER_LOST, "connect to node %u (%s): %s", c->expected,
                               c->remote.c_str(), strerror(err));
    }
    state_cv_.notify_all();
    close_now(c);
    return;
  }
  set_socket_options(c->fd);
  {
    std::lock_guard<std::mutex> l(c->tx_mu);
    c->connecting = false;
  }
  start_handshake(c);
}

void TcpTransport::on_event(const ConnPtr& c, uint32_t events) {
  if (c->fd < 0) return;
  if (c->connecting) {
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
    return;
  }
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
    if (!read_some(c)) return;
  }
  if (events & EPOLLOUT) drain_tx(c);
}

void TcpTransport::drain_tx(const ConnPtr& c) {
  Status err;
  {
    std::lock_guard<std::mutex> l(c->tx_mu);
    if (c->writer_active) return;  // a caller is mid-frame; it queues what it leaves
    for (int round = 0; round < 64 && !c->txq.empty() && c->fd >= 0; ++round) {
      iovec iov[64];
      int cnt = 0;
      size_t off = c->tx_off;
      for (auto it = c->txq.begin(); it != c->txq.end() && cnt < 64; ++it, ++cnt) {
        iov[cnt].iov_base = it->data() + off;
        iov[cnt].iov_len = it->size() - off;
        off = 0;
      }
      msghdr mh{};
      mh.msg_iov = iov;
      mh.msg_iovlen = static_cast<size_t>(cnt);
      ssize_t n = ::sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          err = make_status(errno == ETIMEDOUT ? EPD_ERR_TIMEOUT : EPD_ERR_PEER_LOST,
                            "send to %s: %s", label(c).c_str(), strerror(errno));
        }
        break;
      }
      c->last_tx = Clock::now();
      size_t left = static_cast<size_t>(n);
      c->queued -= left;
      while (left > 0) {
        size_t in_front = c->txq.front().size() - c->tx_off;
        if (left >= in_front) {
          left -= in_front;
          c->txq.pop_front();
          c->tx_off = 0;
        } else {
          c->tx_off += left;
          left = 0;
        }
      }
    }
    if (c->txq.empty()) {
      set_epollout(c, false);
      if (c->shut_wr_after_drain && c->fd >= 0) ::shutdown(c->fd, SHUT_WR);
    }
    c->tx_cv.notify_all();
  }
  if (!err.is_ok()) fail(c, err, false, false);
}

void TcpTransport::promote(const ConnPtr& c) {
  const NodeId peer = *c->hs->peer_node();
  Status installed;
  {
    std::lock_guard<std::mutex> l(mu_);
    installed = install_locked(c, peer);
    if (installed) {
      {
        std::lock_guard<std::mutex> tl(c->tx_mu);
        for (const RegionInfo& r : c->hs->peer_regions()) c->peer_regions[r.id] = r;
      }
      // Regions registered since our AUTH_OK was built (handshake.h says why).
      std::vector<uint8_t> adv = regions_frame_after_handshake(region_advert_locked());
      if (!adv.empty()) push_control(c, std::move(adv));
    }
  }
  if (!installed) {  // the node's live link stays; this one goes
    fail(c, installed, true, true);
    return;
  }
  state_cv_.notify_all();
  transport_log(cfg_, LogSeverity::kInfo,
                "node " + std::to_string(cfg_.node_id) + " connected to " + label(c) + " (authenticated)");
  deliver("on_peer_state", [&] { if (cb_.on_peer_state) cb_.on_peer_state(peer, Status::ok()); });
}

void TcpTransport::fail(const ConnPtr& c, const Status& s, bool linger, bool send_reject) {
  const NodeId peer = peer_of(*c);
  bool first = false, report = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    first = record_failure_locked(c, peer, s, &report);
  }
  state_cv_.notify_all();
  if (linger && send_reject) {
    std::vector<uint8_t> body = encode_reject(s.code(), s.message());
    FrameHeader h;
    h.type = FrameType::kReject;
    push_control(c, make_frame(h, body.data(), body.size()));
  }
  {
    std::lock_guard<std::mutex> l(c->tx_mu);
    if (!c->dead) {
      c->dead = true;
      c->dead_status = s;
    }
    if (linger) {
      c->shut_wr_after_drain = true;
      set_epollout(c, true);
    }
    c->tx_cv.notify_all();
  }
  if (linger) {
    c->closing = true;
    c->close_by = Clock::now() + std::min<milliseconds>(cfg_.peer_timeout, milliseconds(2000));
  } else {
    close_now(c);
  }
  if (first) {
    transport_log(cfg_, is_refusal(s) ? LogSeverity::kError : LogSeverity::kWarn,
                  "node " + std::to_string(cfg_.node_id) + ": " + s.to_string());
    if (report) deliver("on_peer_state", [&] { if (cb_.on_peer_state) cb_.on_peer_state(peer, s); });
  }
}

void TcpTransport::close_now(const ConnPtr& c) {
  {
    std::lock_guard<std::mutex> l(mu_);
    conns_.erase(c->key);
    drop_locked(c);
  }
  std::lock_guard<std::mutex> l(c->tx_mu);
  if (c->fd >= 0) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
    ::close(c->fd);
    c->fd = -1;
  }
  if (!c->dead) {
    c->dead = true;
    c->dead_status = make_status(EPD_ERR_PEER_LOST, "%s: connection closed", c->remote.c_str());
  }
  c->txq.clear();
  c->queued = 0;
  c->tx_cv.notify_all();
}

void TcpTransport::tick() {
  std::vector<ConnPtr> all;
  {
    std::lock_guard<std::mutex> l(mu_);
    all.reserve(conns_.size());
    for (auto& [k, c] : conns_) all.push_back(c);
  }
  const auto now = Clock::now();
  for (const ConnPtr& c : all) {
    if (c->fd < 0) continue;
    bool close_requested, abandoned, reported;
    {
      std::lock_guard<std::mutex> l(mu_);
      close_requested = c->close_requested;
      abandoned = c->abandoned;
      reported = c->reported;
    }
    if (c->closing) {
      if (now >= c->close_by) close_now(c);
      continue;
    }
    if (close_requested) {  // disconnect(): BYE queued; linger until the peer's EOF
      c->closing = true;
      c->close_by = now + std::min<milliseconds>(cfg_.peer_timeout, milliseconds(2000));
      std::lock_guard<std::mutex> l(c->tx_mu);
      set_epollout(c, true);
      continue;
    }
    if (abandoned && !reported) {  // a dial given up by its caller
      fail(c, make_status(EPD_ERR_TIMEOUT, "%s: connection attempt abandoned at the caller's deadline",
                          label(c).c_str()),
           false, false);
      continue;
    }
    if (c->connecting) {
      if (now - c->created > cfg_.peer_timeout) {
        fail(c, make_status(EPD_ERR_TIMEOUT, "connect to %s: no answer within %lld ms", label(c).c_str(),
                            static_cast<long long>(cfg_.peer_timeout.count())),
             false, false);
      }
      continue;
    }
    if (!c->established && now - c->created > cfg_.handshake_timeout) {
      fail(c, make_status(EPD_ERR_TIMEOUT, "%s did not complete the handshake within %lld ms (handshake_timeout)",
                          label(c).c_str(), static_cast<long long>(cfg_.handshake_timeout.count())),
           false, false);
      continue;
    }
    if (now - c->last_rx > cfg_.peer_timeout) {
      const long long silent = std::chrono::duration_cast<milliseconds>(now - c->last_rx).count();
      fail(c, make_status(EPD_ERR_TIMEOUT, "%s sent nothing for %lld ms (peer_timeout %lld ms)%s",
                          label(c).c_str(), silent, static_cast<long long>(cfg_.peer_timeout.count()),
                          c->established ? "" : " during the handshake"),
           false, false);
      continue;
    }
    if (c->established) {
      std::lock_guard<std::mutex> l(c->tx_mu);
      if (c->txq.empty() && !c->writer_active && now - c->last_tx >= cfg_.heartbeat_interval && !c->dead) {
        FrameHeader h;
        h.type = FrameType::kHeartbeat;
        queue_locked(c, make_frame(h, nullptr, 0));
      }
    }
  }
}

}  // namespace epd::transport::tcp_detail
