// tcp_receive.cc — the TCP transport's receive side, on its progress thread:
// reading the socket into the staging buffer, framing (plain handshake
// frames, then sealed records opened into their region or message buffer),
// and acting on each frame (handshake, messages, region adverts, heartbeats,
// BYE / REJECT). See tcp_transport_impl.h.
#include "tcp_transport_impl.h"

namespace epd::transport::tcp_detail {

bool TcpTransport::read_some(const ConnPtr& c) {
  for (int i = 0; i < 16; ++i) {
    if (c->fd < 0) return false;
    if (c->rx_begin == c->rx_end) {
      c->rx_begin = c->rx_end = 0;
    } else if (c->rx_end == c->rx.size()) {  // a partial record at the end: move it to the front
      std::memmove(c->rx.data(), c->rx.data() + c->rx_begin, c->rx_end - c->rx_begin);
      c->rx_end -= c->rx_begin;
      c->rx_begin = 0;
    }
    const ssize_t n = ::recv(c->fd, c->rx.data() + c->rx_end, c->rx.size() - c->rx_end, MSG_DONTWAIT);
    if (n > 0) {
      c->last_rx = Clock::now();
      if (c->closing) {
        c->rx_begin = c->rx_end = 0;
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
  // Each pass consumes a whole frame or record, or returns: bounded by the buffer size.
  for (size_t guard = 0; guard <= kRxBufBytes; ++guard) {
    if (c->fd < 0 || c->closing) return Status::ok();
    const size_t avail = c->rx_end - c->rx_begin;
    const uint8_t* p = c->rx.data() + c->rx_begin;
    size_t used = 0;
    // The staging buffer holds any whole record (kRxBufBytes > kSealChunkBytes + kTagBytes).
    Status s = c->rx_open ? parse_sealed(c, p, avail, &used) : parse_plain(c, p, avail, &used);
    c->rx_begin += used;
    EPD_RETURN_IF_ERROR(s);
    if (used == 0) return Status::ok();
  }
  return make_status(EPD_ERR_INTERNAL, "%s: frame parser did not make progress", label(c).c_str());
}

Status TcpTransport::parse_plain(const ConnPtr& c, const uint8_t* p, size_t avail, size_t* used) {
  if (avail < kHeaderBytes) return Status::ok();
  Result<FrameHeader> h = decode_header(p, limits_, label(c));
  if (!h) return h.status();
  // Only the handshake travels in the clear (a TCP connection seals from its AUTH on).
  EPD_RETURN_IF_ERROR(check_pre_auth_header(*h, label(c)));
  if (avail - kHeaderBytes < h->length) return Status::ok();
  *used = kHeaderBytes + h->length;
  return on_frame(c, *h, p + kHeaderBytes);
}

Status TcpTransport::parse_sealed(const ConnPtr& c, const uint8_t* p, size_t avail, size_t* used) {
  if (!c->have_header) {
    if (avail < kSealedHeaderBytes) return Status::ok();
    uint8_t plain[kHeaderBytes];
    EPD_RETURN_IF_ERROR(c->rx_open->open_header(p, plain, label(c)));
    *used = kSealedHeaderBytes;
    Result<FrameHeader> h = decode_header(plain, limits_, label(c));
    if (!h) return h.status();
    c->cur = *h;
    c->body_got = 0;
    if (h->type == FrameType::kWrite) {
      EPD_RETURN_IF_ERROR(begin_write(c, *h));
    } else if (c->body_cap < h->length) {  // bounded by max_message_bytes (checked in decode_header)
      c->body.reset(new uint8_t[h->length]);
      c->body_cap = h->length;
    }
    if (h->length == 0) return on_payload_done(c);
    c->have_header = true;
    return Status::ok();
  }
  const size_t chunk = static_cast<size_t>(std::min<uint64_t>(kSealChunkBytes, c->cur.length - c->body_got));
  if (avail < chunk + kTagBytes) return Status::ok();
  uint8_t* dst = c->cur.type != FrameType::kWrite ? c->body.get() + c->body_got
                 : c->discard_write                ? c->discard_buf.get()
                                                   : c->write_dst + c->body_got;
  EPD_RETURN_IF_ERROR(c->rx_open->open_chunk(p, chunk, dst, label(c)));
  *used = chunk + kTagBytes;
  c->body_got += chunk;
  if (c->body_got < c->cur.length) return Status::ok();
  c->have_header = false;
  return on_payload_done(c);
}

Status TcpTransport::on_payload_done(const ConnPtr& c) {
  if (c->cur.type != FrameType::kWrite) return on_frame(c, c->cur, c->body.get());
  if (c->discard_write) {  // its region is gone: dropped whole, nobody is told
    c->discard_write = false;
    return Status::ok();
  }
  const NodeId peer = c->peer;
  const FrameHeader h = c->cur;
  deliver("on_write", [&] { if (cb_.on_write) cb_.on_write(peer, h.imm, h.length); });
  return Status::ok();
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
    if (it == regions_.end() && retired_regions_.count(h.a)) {
      // Deregistered since the peer wrote: its records are opened and dropped.
      if (!c->discard_buf) c->discard_buf.reset(new uint8_t[kSealChunkBytes]);
      c->discard_write = true;
      c->write_dst = nullptr;
      return Status::ok();
    }
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
  c->write_dst = r.addr + h.offset;
  return Status::ok();
}

Status TcpTransport::on_handshake_frame(const ConnPtr& c, const FrameHeader& h, const uint8_t* payload) {
  std::vector<HandshakeFrame> out;
  Status s = c->hs->on_frame(h, payload, &out);
  for (HandshakeFrame& f : out) {
    if (f.sealed) {
      std::lock_guard<std::mutex> l(c->tx_mu);
      if (!c->tx_seal) c->tx_seal.emplace(c->hs->tx_key());
    }
    push_control(c, std::move(f.bytes));
  }
  if (!s) {
    fail(c, s, true, false);  // a REJECT, if any, is queued already
    return Status::ok();
  }
  if (c->hs->rx_sealed() && !c->rx_open) c->rx_open.emplace(c->hs->rx_key());
  if (c->hs->done()) promote(c);
  return Status::ok();
}

Status TcpTransport::on_frame(const ConnPtr& c, const FrameHeader& h, const uint8_t* payload) {
  if (!c->established) return on_handshake_frame(c, h, payload);
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
