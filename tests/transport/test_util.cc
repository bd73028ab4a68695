// test_util.cc — see test_util.h.
#include "test_util.h"

#include "handshake.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace epd::transport::test {

TransportCallbacks Events::callbacks() {
  TransportCallbacks cb;
  cb.on_message = [this](NodeId peer, uint32_t tag, const void* data, size_t bytes) {
    std::lock_guard<std::mutex> l(mu);
    const uint8_t* p = static_cast<const uint8_t*>(data);
    messages.push_back(Message{peer, tag, std::vector<uint8_t>(p, p + bytes)});
    cv.notify_all();
  };
  cb.on_write = [this](NodeId peer, uint32_t imm, size_t bytes) {
    std::lock_guard<std::mutex> l(mu);
    writes.push_back(WriteEvent{peer, imm, bytes});
    cv.notify_all();
  };
  cb.on_peer_state = [this](NodeId peer, const Status& s) {
    std::lock_guard<std::mutex> l(mu);
    peer_events.push_back(PeerEvent{peer, s});
    cv.notify_all();
  };
  return cb;
}

bool Events::wait_peer_error(NodeId peer, std::chrono::milliseconds timeout, Status* out) {
  std::unique_lock<std::mutex> l(mu);
  auto find = [&]() -> const PeerEvent* {
    for (const PeerEvent& e : peer_events) {
      if (e.peer == peer && !e.status.is_ok()) return &e;
    }
    return nullptr;
  };
  if (!cv.wait_for(l, timeout, [&] { return find() != nullptr; })) return false;
  *out = find()->status;
  return true;
}

TransportConfig base_config(NodeId id) {
  TransportConfig c;
  c.node_id = id;
  c.listen_address = "127.0.0.1:0";
  c.cluster_secret = kSecret;
  c.heartbeat_interval = 100ms;
  c.peer_timeout = 1500ms;
  return c;
}

std::unique_ptr<Node> make_node(NodeId id, const std::function<void(TransportConfig&)>& tweak) {
  auto n = std::make_unique<Node>();
  n->cfg = base_config(id);
  Node* raw = n.get();
  n->cfg.log = [raw](LogSeverity, const std::string& msg) {
    std::lock_guard<std::mutex> l(raw->log_mu);
    raw->logs.push_back(msg);
  };
  if (tweak) tweak(n->cfg);
  Result<std::unique_ptr<Transport>> t = create_tcp_transport(n->cfg, n->events.callbacks());
  if (!t) {
    std::fprintf(stderr, "create_tcp_transport(node %u): %s\n", id, t.status().to_string().c_str());
    return nullptr;
  }
  n->t = std::move(*t);
  return n;
}

void introduce(const std::vector<Node*>& nodes) {
  for (Node* a : nodes) {
    for (Node* b : nodes) {
      if (a != b) a->t->set_peer_address(b->cfg.node_id, b->t->listen_address());
    }
  }
}

std::string connect_all(const std::vector<Node*>& nodes, std::chrono::milliseconds timeout) {
  std::mutex mu;
  std::string failures;
  std::vector<std::thread> threads;
  const Deadline d = deadline_after(timeout);
  for (Node* a : nodes) {
    for (Node* b : nodes) {
      if (a == b) continue;
      threads.emplace_back([&, a, b] {
        Status s = a->t->connect(b->cfg.node_id, d);
        if (!s) {
          std::lock_guard<std::mutex> l(mu);
          failures += std::to_string(a->cfg.node_id) + "->" + std::to_string(b->cfg.node_id) + ": " +
                      s.to_string() + "\n";
        }
      });
    }
  }
  for (auto& th : threads) th.join();
  return failures;
}

std::vector<uint8_t> random_bytes_vec(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> v(n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t x = rng();
    std::memcpy(v.data() + i, &x, 8);
  }
  for (; i < n; ++i) v[i] = uint8_t(rng());
  return v;
}

uint64_t test_seed() { return std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32); }

int raw_connect(const std::string& host_port) {
  std::string host;
  uint16_t port = 0;
  if (!split_host_port(host_port, &host, &port)) return -1;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

static bool read_exact(int fd, uint8_t* p, size_t n, Deadline d) {
  size_t got = 0;
  while (got < n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(d - Clock::now()).count();
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(left)) <= 0) return false;
    ssize_t r = ::recv(fd, p + got, n - got, 0);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

bool raw_read_frame(int fd, FrameHeader* h, std::vector<uint8_t>* payload, std::chrono::milliseconds timeout) {
  const Deadline d = deadline_after(timeout);
  uint8_t hdr[kHeaderBytes];
  if (!read_exact(fd, hdr, sizeof(hdr), d)) return false;
  WireLimits limits;
  Result<FrameHeader> r = decode_header(hdr, limits, "raw");
  if (!r) return false;
  *h = *r;
  payload->resize(h->length);
  return h->length == 0 || read_exact(fd, payload->data(), h->length, d);
}

bool raw_write_all(int fd, const void* data, size_t bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  size_t sent = 0;
  while (sent < bytes) {
    ssize_t n = ::send(fd, p + sent, bytes - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

bool raw_wait_eof(int fd, std::chrono::milliseconds timeout) {
  const Deadline d = deadline_after(timeout);
  uint8_t buf[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(d - Clock::now()).count();
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(left)) <= 0) return false;
    ssize_t r = ::recv(fd, buf, sizeof(buf), 0);
    if (r <= 0) return true;
  }
}

RawLink::~RawLink() {
  if (fd >= 0) ::close(fd);
}

bool RawLink::send_frame(const FrameHeader& h, const void* payload, size_t bytes) {
  std::vector<uint8_t> f = make_frame(h, payload, bytes);
  if (tx) f = tx->seal_frame(f);
  return raw_write_all(fd, f.data(), f.size());
}

bool RawLink::send_header(const FrameHeader& h) {
  if (!tx) {
    uint8_t hdr[kHeaderBytes];
    encode_header(h, hdr);
    return raw_write_all(fd, hdr, sizeof(hdr));
  }
  uint8_t rec[kSealedHeaderBytes];
  tx->seal_header(h, tx->reserve(1), rec);
  return raw_write_all(fd, rec, sizeof(rec));
}

bool RawLink::read_frame(FrameHeader* h, std::vector<uint8_t>* payload, std::chrono::milliseconds timeout) {
  if (!rx) return raw_read_frame(fd, h, payload, timeout);
  const Deadline d = deadline_after(timeout);
  uint8_t rec[kSealedHeaderBytes], plain[kHeaderBytes];
  if (!read_exact(fd, rec, sizeof(rec), d) || !rx->open_header(rec, plain, "raw")) return false;
  WireLimits limits;
  Result<FrameHeader> r = decode_header(plain, limits, "raw");
  if (!r) return false;
  *h = *r;
  payload->resize(h->length);
  std::vector<uint8_t> chunk;
  for (size_t at = 0; at < h->length; at += kSealChunkBytes) {
    const size_t n = std::min<size_t>(kSealChunkBytes, h->length - at);
    chunk.resize(n + kTagBytes);
    if (!read_exact(fd, chunk.data(), chunk.size(), d) || !rx->open_chunk(chunk.data(), n, payload->data() + at, "raw"))
      return false;
  }
  return true;
}

std::unique_ptr<RawLink> raw_link(const std::string& host_port, NodeId me, NodeId peer, const std::string& secret,
                                  Status* why) {
  auto link = std::make_unique<RawLink>();
  link->fd = raw_connect(host_port);
  if (link->fd < 0) return nullptr;
  HandshakeParams p;
  p.my_node = me;
  p.secret = secret;
  p.initiator = true;
  p.expected_peer = peer;
  p.remote = host_port;
  Handshake hs(p);
  const std::vector<uint8_t> hello = hs.hello_frame();
  if (!raw_write_all(link->fd, hello.data(), hello.size())) return nullptr;
  Status st = make_status(EPD_ERR_TIMEOUT, "%s: the handshake did not complete", host_port.c_str());
  for (int i = 0; i < 8 && !hs.done(); ++i) {
    FrameHeader h;
    std::vector<uint8_t> payload;
    if (!link->read_frame(&h, &payload, 5s)) break;
    std::vector<HandshakeFrame> out;
    st = hs.on_frame(h, payload.data(), &out);
    for (HandshakeFrame& f : out) {
      if (f.sealed && !link->tx) link->tx.emplace(hs.tx_key());
      std::vector<uint8_t> bytes = link->tx ? link->tx->seal_frame(f.bytes) : f.bytes;
      (void)raw_write_all(link->fd, bytes.data(), bytes.size());
    }
    if (!st) break;
    if (hs.rx_sealed() && !link->rx) link->rx.emplace(hs.rx_key());
  }
  if (!hs.done()) {
    if (why) *why = st;
    return nullptr;
  }
  return link;
}

Watchdog::Watchdog(std::chrono::seconds timeout) {
  th_ = std::thread([this, timeout] {
    std::unique_lock<std::mutex> l(mu_);
    if (!cv_.wait_for(l, timeout, [&] { return done_; })) {
      std::fprintf(stderr, "WATCHDOG: test did not finish within %lld s; aborting\n",
                   static_cast<long long>(timeout.count()));
      std::abort();
    }
  });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> l(mu_);
    done_ = true;
  }
  cv_.notify_all();
  th_.join();
}

}  // namespace epd::transport::test
