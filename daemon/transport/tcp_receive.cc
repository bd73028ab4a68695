// tcp_receive.cc — the TCP transport's receive side, on its progress thread:
// reading the socket (large payloads straight into their region or message
// buffer), framing, and acting on each frame (handshake, messages, region
// adverts, heartbeats, BYE / REJECT). See tcp_transport_impl.h.
#include "tcp_transport_impl.h"

namespace epd::transport::tcp_detail {

bool TcpTransport::read_some(const ConnPtr& c) {
  for (int i = 0; i < 16; ++i) {
    if (c->fd < 0) return false;
    ssize_t n;
    // Large payloads go straight to their destination (the region, or the
    // message buffer) once the staging buffer is empty: no extra copy.
    const bool rx_empty = c->rx_begin == c->rx_end && !c->closing;
    const bool direct = c->write_left > 0 && rx_empty;
    const bool direct_body = !direct && rx_empty && c->have_header && c->cur.length - c->body_got >= kDirectWriteMin;
    if (direct) {
      n = ::recv(c->fd, c->write_dst, c->write_left, MSG_DONTWAIT);
    } else if (direct_body) {
      n = ::recv(c->fd, c->body.get() + c->body_got, c->cur.length - c->body_got, MSG_DONTWAIT);
    } else {
      if (c->rx_begin == c->rx_end) {
        c->rx_begin = c->rx_end = 0;
      } else if (c->rx_end == c->rx.size()) {
        std::memmove(c->rx.data(), c->rx.data() + c->rx_begin, c->rx_end - c->rx_begin);
        c->rx_end -= c->rx_begin;
        c->rx_begin = 0;
      }
      n = ::recv(c->fd, c->rx.data() + c->rx_end, c->rx.size() - c->rx_end, MSG_DONTWAIT);
    }
    if (n > 0) {
      c->last_rx = Clock::now();
      if (c->closing) {
        c->rx_begin = c->rx_end = 0;
        continue;
      }
      if (direct) {
        c->write_dst += n;
        c->write_left -= static_cast<size_t>(n);
        if (c->write_left == 0) {
          const NodeId peer = c->peer;
          const FrameHeader h = c->cur;
          deliver("on_write", [&] { if (cb_.on_write) cb_.on_write(peer, h.imm, h.length); });
        }
        continue;
      }
      if (direct_body) {
        c->body_got += static_cast<size_t>(n);
        if (c->body_got < c->cur.length) continue;
        c->have_header = false;
        Status s = on_frame(c, c->cur, c->body.get());
        if (!s) {
          fail(c, s, true, true);
          return false;
        }
        if (c->fd < 0 || c->closing) return false;
        continue;
      }
      c->rx_end += static_cast<size_t>(n);
      Status s = parse(c);
      if (!s) {
        fail(c, s, true, true);
        return false;
      }
      if (c->fd < 0 || c->closing) return false;
      continue;
    }
    if (n == 0) {
      if (c->closing) {
        close_now(c);
      } else {
        fail(c, make_status(EPD_ERR_PEER_LOST, "%s closed the connection", label(c).c_str()), false, false);
      }
      return false;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    if (errno == EINTR) continue;
    const int e = errno;
    if (c->closing) {
      close_now(c);
    } else if (e == ETIMEDOUT) {
      fail(c, make_status(EPD_ERR_TIMEOUT, "%s: no acknowledgement within %lld ms (TCP keepalive / user timeout)",
                          label(c).c_str(), static_cast<long long>(cfg_.peer_timeout.count())),
           false, false);
    } else {
      fail(c, make_status(EPD_ERR_PEER_LOST, "%s: %s", label(c).c_str(), strerror(e)), false, false);
    }
    return false;
  }
  return true;
}

Status TcpTransport::parse(const ConnPtr& c) {
  // Each pass consumes at least one byte or returns: bounded by the buffer size.
  for (size_t guard = 0; guard <= kRxBufBytes; ++guard) {
    if (c->fd < 0 || c->closing) return Status::ok();
    const size_t avail = c->rx_end - c->rx_begin;
    uint8_t* p = c->rx.data() + c->rx_begin;
    if (avail == 0) return Status::ok();
    if (c->write_left > 0) {
      size_t take = std::min(avail, c->write_left);
      std::memcpy(c->write_dst, p, take);
      c->write_dst += take;
      c->write_left -= take;
      c->rx_begin += take;
      if (c->write_left == 0) {
        const NodeId peer = c->peer;
        const FrameHeader h = c->cur;
        deliver("on_write", [&] { if (cb_.on_write) cb_.on_write(peer, h.imm, h.length); });
      }
      continue;
    }
    if (c->have_header) {
      size_t take = std::min(avail, c->cur.length - c->body_got);
      std::memcpy(c->body.get() + c->body_got, p, take);
      c->body_got += take;
      c->rx_begin += take;
      if (c->body_got < c->cur.length) return Status::ok();
      c->have_header = false;
      EPD_RETURN_IF_ERROR(on_frame(c, c->cur, c->body.get()));
      continue;
    }
    if (avail < kHeaderBytes) return Status::ok();
    Result<FrameHeader> h = decode_header(p, limits_, label(c));
    if (!h) return h.status();
    c->rx_begin += kHeaderBytes;
    if (h->type == FrameType::kWrite) {
      EPD_RETURN_IF_ERROR(begin_write(c, *h));
      continue;
    }
    if (avail - kHeaderBytes >= h->length) {
      c->rx_begin += h->length;
      EPD_RETURN_IF_ERROR(on_frame(c, *h, p + kHeaderBytes));
      continue;
    }
    c->cur = *h;
    c->have_header = true;
    if (c->body_cap < h->length) {  // bounded by max_message_bytes (checked in decode_header)
      c->body.reset(new uint8_t[h->length]);
      c->body_cap = h->length;
    }
    c->body_got = 0;
  }
  return make_status(EPD_ERR_INTERNAL, "%s: frame parser did not make progress", label(c).c_str());
}

Status TcpTransport::begin_write(const ConnPtr& c, const FrameHeader& h) {
  if (!c->established) {
    return make_status(EPD_ERR_PROTOCOL, "%s sent a WRITE frame before the handshake completed",
                       label(c).c_str());
  }
  Region r;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = regions_.find(h.a);
    if (it == regions_.end()) {
      return make_status(EPD_ERR_PROTOCOL, "%s wrote to region %u, which node %u has not registered",
                         label(c).c_str(), h.a, cfg_.node_id);
    }
    r = it->second;
  }
  if (h.offset > r.bytes || h.length > r.bytes - h.offset) {
    return make_status(EPD_ERR_PROTOCOL, "%s wrote %llu bytes at offset %llu of region %u (%zu bytes)",
                       label(c).c_str(), static_cast<unsigned long long>(h.length),
                       static_cast<unsigned long long>(h.offset), h.a, r.bytes);
  }
  c->cur = h;
  c->write_dst = r.addr + h.offset;
  c->write_left = h.length;
  if (h.length == 0) {
    const NodeId peer = c->peer;
    deliver("on_write", [&] { if (cb_.on_write) cb_.on_write(peer, h.imm, 0); });
  }
  return Status::ok();
}

Status TcpTransport::on_frame(const ConnPtr& c, const FrameHeader& h, const uint8_t* payload) {
  if (!c->established) {
    std::vector<std::vector<uint8_t>> out;
    Status s = c->hs->on_frame(h, payload, &out);
    for (auto& f : out) push_control(c, std::move(f));
    if (!s) {
      fail(c, s, true, false);  // a REJECT, if any, is queued already
      return Status::ok();
    }
    if (c->hs->done()) promote(c);
    return Status::ok();
  }
  switch (h.type) {
    case FrameType::kMessage: {
      const NodeId peer = c->peer;
      deliver("on_message", [&] { if (cb_.on_message) cb_.on_message(peer, h.a, payload, h.length); });
      return Status::ok();
    }
    case FrameType::kRegions: {
      Result<std::vector<RegionInfo>> regions = decode_regions(payload, h.length, label(c));
      if (!regions) return regions.status();
      std::lock_guard<std::mutex> l(c->tx_mu);
      for (const RegionInfo& r : *regions) c->peer_regions[r.id] = r;
      return Status::ok();
    }
    case FrameType::kHeartbeat:
      return Status::ok();
    case FrameType::kBye:
      fail(c, make_status(EPD_ERR_PEER_LOST, "%s closed the connection (shut down or disconnected)",
                          label(c).c_str()),
           false, false);
      return Status::ok();
    case FrameType::kReject:
      fail(c, decode_reject(payload, h.length, label(c)), false, false);
      return Status::ok();
    default:
      return make_status(EPD_ERR_PROTOCOL, "%s sent a %s frame after the handshake", label(c).c_str(),
                         frame_type_name(h.type));
  }
}

}  // namespace epd::transport::tcp_detail
