// tcp_transport_test.cc — the TCP transport over loopback, in one process:
// 2 and 4 nodes exchanging messages and bulk writes (contents verified),
// refusals (wrong secret, version, unknown node), connect()'s retry until the
// peer listens, malformed frames, and the write bound checks. Label: multinode.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <thread>

#include "handshake.h"
#include "test_util.h"

namespace epd::transport::test {
namespace {

TEST(TcpTransport, NameAndListenAddress) {
  auto n = make_node(1);
  ASSERT_TRUE(n);
  EXPECT_STREQ(n->t->name(), "tcp");
  EXPECT_EQ(n->t->listen_address().rfind("127.0.0.1:", 0), 0u) << n->t->listen_address();
  EXPECT_NE(n->t->listen_address(), "127.0.0.1:0");
}

TEST(TcpTransport, TwoNodesMessagesAndWritesInOrder) {
  Watchdog wd(60s);
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto a = make_node(1);
  auto b = make_node(2);
  ASSERT_TRUE(a && b);
  const size_t region_bytes = 8u << 20;
  std::vector<uint8_t> region_b(region_bytes, 0xEE), expect_b(region_bytes, 0xEE);
  ASSERT_TRUE(b->t->register_region(7, region_b.data(), region_b.size()).is_ok());
  introduce({a.get(), b.get()});
  ASSERT_EQ(connect_all({a.get(), b.get()}, 5000ms), "");
  EXPECT_TRUE(a->t->peer_status(2).is_ok());
  EXPECT_TRUE(b->t->peer_status(1).is_ok());

  // Messages both ways, random sizes (0 .. 200 KiB), interleaved with writes a -> b.
  constexpr int kCount = 300;
  std::vector<std::vector<uint8_t>> sent_ab, sent_ba;
  int writes = 0;
  size_t last_write_bytes = 0;
  for (int i = 0; i < kCount; ++i) {
    size_t n = (i % 10 == 0) ? rng() % (200u << 10) : rng() % 300;
    sent_ab.push_back(random_bytes_vec(rng, n));
    ASSERT_TRUE(a->t->send(2, 1000 + i, sent_ab.back().data(), n, deadline_after(5s)).is_ok());
    sent_ba.push_back(random_bytes_vec(rng, rng() % 1000));
    ASSERT_TRUE(b->t->send(1, 2000 + i, sent_ba.back().data(), sent_ba.back().size(), deadline_after(5s)).is_ok());
    if (i % 3 == 0) {
      size_t bytes = (i % 30 == 0) ? (1u << 20) + rng() % (3u << 20) : rng() % 5000;
      uint64_t off = rng() % (region_bytes - bytes);
      auto data = random_bytes_vec(rng, bytes);
      std::memcpy(expect_b.data() + off, data.data(), bytes);
      ASSERT_TRUE(a->t->write(2, 7, off, data.data(), bytes, 0x10000 + writes, deadline_after(5s)).is_ok());
      ++writes;
      last_write_bytes = bytes;
    }
  }
  ASSERT_TRUE(a->t->flush(2, deadline_after(10s)).is_ok());
  ASSERT_TRUE(b->events.wait([&] { return b->events.messages.size() == kCount && int(b->events.writes.size()) == writes; }, 20s))
      << b->events.messages.size() << " messages, " << b->events.writes.size() << " writes";
  ASSERT_TRUE(a->events.wait([&] { return a->events.messages.size() == kCount; }, 20s));
  for (int i = 0; i < kCount; ++i) {
    EXPECT_EQ(b->events.messages[i].peer, 1u);
    EXPECT_EQ(b->events.messages[i].tag, uint32_t(1000 + i));
    EXPECT_EQ(b->events.messages[i].data, sent_ab[i]) << "message " << i;
    EXPECT_EQ(a->events.messages[i].tag, uint32_t(2000 + i));
    EXPECT_EQ(a->events.messages[i].data, sent_ba[i]) << "message " << i;
  }
  for (int w = 0; w < writes; ++w) {
    EXPECT_EQ(b->events.writes[w].imm, uint32_t(0x10000 + w));
    EXPECT_EQ(b->events.writes[w].peer, 1u);
  }
  EXPECT_EQ(b->events.writes.back().bytes, last_write_bytes);
  EXPECT_TRUE(region_b == expect_b) << "region contents differ from the writes applied in order";
}

TEST(TcpTransport, FourNodesFullMesh) {
  Watchdog wd(60s);
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  constexpr int kNodes = 4;
  constexpr size_t kSlice = 256u << 10;
  std::vector<std::unique_ptr<Node>> nodes;
  std::vector<std::vector<uint8_t>> regions(kNodes, std::vector<uint8_t>(kSlice * kNodes, 0));
  for (int i = 0; i < kNodes; ++i) {
    nodes.push_back(make_node(10 + i));
    ASSERT_TRUE(nodes.back());
    ASSERT_TRUE(nodes.back()->t->register_region(1, regions[i].data(), regions[i].size()).is_ok());
  }
  std::vector<Node*> raw;
  for (auto& n : nodes) raw.push_back(n.get());
  introduce(raw);
  ASSERT_EQ(connect_all(raw, 5000ms), "");
  // payload[src][dst]: a message and a write into dst's slice for src.
  std::map<std::pair<int, int>, std::vector<uint8_t>> msg, blk;
  for (int s = 0; s < kNodes; ++s) {
    for (int d = 0; d < kNodes; ++d) {
      if (s == d) continue;
      msg[{s, d}] = random_bytes_vec(rng, 1 + rng() % 4096);
      blk[{s, d}] = random_bytes_vec(rng, kSlice);
    }
  }
  std::vector<std::thread> senders;
  std::vector<Status> results(kNodes);
  for (int s = 0; s < kNodes; ++s) {
    senders.emplace_back([&, s] {
      for (int d = 0; d < kNodes; ++d) {
        if (s == d) continue;
        const NodeId peer = 10 + d;
        Status st = nodes[s]->t->write(peer, 1, s * kSlice, blk[{s, d}].data(), kSlice, s, deadline_after(5s));
        if (st) st = nodes[s]->t->send(peer, 77, msg[{s, d}].data(), msg[{s, d}].size(), deadline_after(5s));
        if (!st) results[s] = st;
      }
    });
  }
  for (auto& t : senders) t.join();
  for (int s = 0; s < kNodes; ++s) EXPECT_TRUE(results[s].is_ok()) << results[s].to_string();
  for (int d = 0; d < kNodes; ++d) {
    Events& ev = nodes[d]->events;
    ASSERT_TRUE(ev.wait([&] { return ev.messages.size() == kNodes - 1 && ev.writes.size() == kNodes - 1; }, 10s))
        << "node " << d;
    for (const Message& m : ev.messages) {
      const int s = int(m.peer) - 10;
      EXPECT_EQ(m.data, (msg[{s, d}])) << s << "->" << d;
      // The write from s was issued before its message: already in place.
      EXPECT_EQ(0, std::memcmp(regions[d].data() + s * kSlice, (blk[{s, d}]).data(), kSlice)) << s << "->" << d;
    }
    for (const WriteEvent& w : ev.writes) EXPECT_EQ(w.imm + 10, w.peer);
  }
}

TEST(TcpTransport, WrongSecretRefusedOnBothSides) {
  Watchdog wd(30s);
  auto a = make_node(1);
  auto b = make_node(2, [](TransportConfig& c) { c.cluster_secret = "another-secret-of-enough-length"; });
  ASSERT_TRUE(a && b);
  introduce({a.get(), b.get()});
  Status sa, sb;
  std::thread tb([&] { sb = b->t->connect(1, deadline_after(5s)); });
  sa = a->t->connect(2, deadline_after(5s));
  tb.join();
  EXPECT_EQ(sa.code(), EPD_ERR_PERMISSION) << sa.to_string();
  EXPECT_EQ(sb.code(), EPD_ERR_PERMISSION) << sb.to_string();
  EXPECT_NE(sa.message().find("node 2"), std::string::npos) << sa.message();
  EXPECT_NE(sb.message().find("node 1"), std::string::npos) << sb.message();
  for (const Status* s : {&sa, &sb}) {
    EXPECT_EQ(s->message().find(kSecret), std::string::npos) << "secret leaked into: " << s->message();
  }
  Status ea, eb;
  EXPECT_TRUE(a->events.wait_peer_error(2, 5s, &ea));
  EXPECT_TRUE(b->events.wait_peer_error(1, 5s, &eb));
  EXPECT_EQ(ea.code(), EPD_ERR_PERMISSION);
  EXPECT_EQ(eb.code(), EPD_ERR_PERMISSION);
  EXPECT_FALSE(a->t->send(2, 1, "x", 1, deadline_after(1s)).is_ok());
}

TEST(TcpTransport, VersionMismatchRefusedNamingBothVersions) {
  Watchdog wd(30s);
  auto a = make_node(1);
  auto b = make_node(2, [](TransportConfig& c) {
    c.protocol_major = kProtocolMajor + 1;
    c.protocol_minor = 3;
  });
  ASSERT_TRUE(a && b);
  introduce({a.get(), b.get()});
  Status sb;
  std::thread tb([&] { sb = b->t->connect(1, deadline_after(5s)); });
  Status sa = a->t->connect(2, deadline_after(5s));
  tb.join();
  for (const Status* s : {&sa, &sb}) {
    EXPECT_EQ(s->code(), EPD_ERR_VERSION_MISMATCH) << s->to_string();
    EXPECT_NE(s->message().find(std::to_string(kProtocolMajor) + ".0"), std::string::npos) << s->message();
    EXPECT_NE(s->message().find(std::to_string(kProtocolMajor + 1) + ".3"), std::string::npos) << s->message();
  }
}

TEST(TcpTransport, MinorVersionDifferenceAccepted) {
  auto a = make_node(1);
  auto b = make_node(2, [](TransportConfig& c) { c.protocol_minor = 9; });
  ASSERT_TRUE(a && b);
  introduce({a.get(), b.get()});
  EXPECT_EQ(connect_all({a.get(), b.get()}, 5000ms), "");
}

TEST(TcpTransport, UnknownNodeRefused) {
  Watchdog wd(30s);
  auto a = make_node(1);
  auto c = make_node(0);  // dials a, but a's peer list lacks node 0
  ASSERT_TRUE(a && c);
  c->t->set_peer_address(1, a->t->listen_address());
  Status s = c->t->connect(1, deadline_after(5s));
  EXPECT_EQ(s.code(), EPD_ERR_PERMISSION) << s.to_string();
  EXPECT_NE(s.message().find("not a configured peer"), std::string::npos) << s.message();
  Status ea;
  ASSERT_TRUE(a->events.wait_peer_error(0, 5s, &ea));
  EXPECT_EQ(ea.code(), EPD_ERR_PERMISSION);
}

TEST(TcpTransport, ConnectWithoutListenerTimesOutAtDeadline) {
  auto a = make_node(1);
  ASSERT_TRUE(a);
  // A port that was bound and closed: connection refused, retried until the deadline.
  std::string dead_addr;
  {
    auto tmp = make_node(5);
    ASSERT_TRUE(tmp);
    dead_addr = tmp->t->listen_address();
  }
  a->t->set_peer_address(2, dead_addr);
  const auto t0 = Clock::now();
  Status s = a->t->connect(2, deadline_after(400ms));
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("node 2"), std::string::npos) << s.message();
  EXPECT_GE(ms, 350);
  EXPECT_LT(ms, 2000);
}

// connect()'s backoff: a dial refused because nothing listens yet is retried
// until the peer starts listening on that address, within the deadline.
TEST(TcpTransport, DialRetriesUntilTheListenerAppears) {
  Watchdog wd(30s);
  auto a = make_node(1);
  ASSERT_TRUE(a);
  std::string addr;
  {
    auto tmp = make_node(5);
    ASSERT_TRUE(tmp);
    addr = tmp->t->listen_address();
  }
  a->t->set_peer_address(2, addr);
  Status dialed = make_status(EPD_ERR_INTERNAL, "not run");
  std::thread dialer([&] { dialed = a->t->connect(2, deadline_after(10s)); });
  std::this_thread::sleep_for(300ms);  // several refused attempts first
  auto b = make_node(2, [&](TransportConfig& c) {
    c.listen_address = addr;
    c.peers[1] = a->t->listen_address();
  });
  if (!b) {
    dialer.join();
    GTEST_SKIP() << "port of " << addr << " was taken by another process meanwhile";
  }
  dialer.join();
  EXPECT_TRUE(dialed.is_ok()) << dialed.to_string();
  EXPECT_TRUE(b->t->connect(1, deadline_after(5s)).is_ok());
}

TEST(TcpTransport, WriteBoundsCheckedAtSender) {
  auto a = make_node(1);
  auto b = make_node(2);
  ASSERT_TRUE(a && b);
  std::vector<uint8_t> r(1000);
  ASSERT_TRUE(b->t->register_region(3, r.data(), r.size()).is_ok());
  introduce({a.get(), b.get()});
  ASSERT_EQ(connect_all({a.get(), b.get()}, 5000ms), "");
  uint8_t buf[64] = {};
  Status s = a->t->write(2, 3, 990, buf, 11, 0, deadline_after(1s));
  EXPECT_EQ(s.code(), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(s.message().find("region 3"), std::string::npos) << s.message();
  s = a->t->write(2, 4, 0, buf, 1, 0, deadline_after(1s));
  EXPECT_EQ(s.code(), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(s.message().find("no region 4"), std::string::npos) << s.message();
  EXPECT_TRUE(a->t->write(2, 3, 990, buf, 10, 5, deadline_after(1s)).is_ok());
  // A region registered after connect is advertised; b's message after it orders it.
  std::vector<uint8_t> r2(64, 0);
  ASSERT_TRUE(b->t->register_region(9, r2.data(), r2.size()).is_ok());
  ASSERT_TRUE(b->t->send(1, 1, "go", 2, deadline_after(1s)).is_ok());
  ASSERT_TRUE(a->events.wait([&] { return !a->events.messages.empty(); }, 5s));
  uint8_t pattern[64];
  for (int i = 0; i < 64; ++i) pattern[i] = uint8_t(i * 7 + 1);
  ASSERT_TRUE(a->t->write(2, 9, 0, pattern, 64, 6, deadline_after(1s)).is_ok());
  ASSERT_TRUE(b->events.wait([&] { return b->events.writes.size() == 2; }, 5s));
  EXPECT_EQ(0, std::memcmp(r2.data(), pattern, 64));
  s = a->t->send(2, 1, buf, a->cfg.max_message_bytes + 1, deadline_after(1s));
  EXPECT_EQ(s.code(), EPD_ERR_INVALID_ARGUMENT);
}

// Completes the handshake by hand on a raw socket, as node 1 talking to node 2.
std::unique_ptr<RawLink> raw_authenticated(Node& b) {
  Status why;
  auto link = raw_link(b.t->listen_address(), 1, 2, kSecret, &why);
  EXPECT_TRUE(link) << why.to_string();
  return link;
}

void expect_protocol_drop(Node& b, RawLink& link, NodeId expect_peer, const char* needle) {
  // b answers with a REJECT naming the reason (sealed after the handshake), then closes.
  bool saw_reject = false;
  for (int i = 0; i < 16; ++i) {
    FrameHeader h;
    std::vector<uint8_t> payload;
    if (!link.read_frame(&h, &payload, 5s)) break;
    if (h.type == FrameType::kReject) {
      Status r = decode_reject(payload.data(), payload.size(), "b");
      EXPECT_EQ(r.code(), EPD_ERR_PROTOCOL) << r.to_string();
      saw_reject = true;
      break;
    }
  }
  EXPECT_TRUE(saw_reject);
  EXPECT_TRUE(raw_wait_eof(link.fd, 5s));
  Status e;
  ASSERT_TRUE(b.events.wait_peer_error(expect_peer, 5s, &e));
  EXPECT_EQ(e.code(), EPD_ERR_PROTOCOL) << e.to_string();
  EXPECT_NE(e.message().find(needle), std::string::npos) << e.message();
}

TEST(TcpTransport, MalformedFramesDropTheConnection) {
  Watchdog wd(60s);
  auto b = make_node(2, [](TransportConfig& c) { c.peers[1] = "127.0.0.1:1"; });
  ASSERT_TRUE(b);
  std::vector<uint8_t> region(4096);
  ASSERT_TRUE(b->t->register_region(1, region.data(), region.size()).is_ok());
  {
    SCOPED_TRACE("garbage before the handshake");
    RawLink raw;
    raw.fd = raw_connect(b->t->listen_address());
    ASSERT_GE(raw.fd, 0);
    uint8_t junk[kHeaderBytes];
    std::memset(junk, 0x41, sizeof(junk));
    ASSERT_TRUE(raw_write_all(raw.fd, junk, sizeof(junk)));
    expect_protocol_drop(*b, raw, kUnknownNode, "magic");
  }
  struct Case {
    const char* name;
    FrameHeader h;
    const char* needle;
  };
  std::vector<Case> cases;
  {
    FrameHeader h;
    h.type = FrameType::kMessage;
    h.length = b->cfg.max_message_bytes + 1;
    cases.push_back({"oversized message", h, "exceeds the limit"});
  }
  {
    FrameHeader h;
    h.type = static_cast<FrameType>(42);
    cases.push_back({"unknown type", h, "unknown frame type 42"});
  }
  {
    FrameHeader h;
    h.type = FrameType::kWrite;
    h.a = 1;
    h.offset = 4000;
    h.length = 200;
    cases.push_back({"write past the region", h, "region 1"});
  }
  {
    FrameHeader h;
    h.type = FrameType::kWrite;
    h.a = 99;
    h.length = 1;
    cases.push_back({"write to an unregistered region", h, "region 99"});
  }
  {
    FrameHeader h;
    h.type = FrameType::kHello;
    h.length = kHelloBytes;
    cases.push_back({"HELLO after the handshake", h, "after the handshake"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    {
      std::lock_guard<std::mutex> l(b->events.mu);
      b->events.peer_events.clear();
    }
    auto link = raw_authenticated(*b);
    ASSERT_TRUE(link);
    ASSERT_TRUE(b->events.wait([&] { return !b->events.peer_events.empty(); }, 5s));  // connected
    if (c.h.type == FrameType::kHello) {
      std::vector<uint8_t> body(kHelloBytes, 0x5a);
      ASSERT_TRUE(link->send_frame(c.h, body.data(), body.size()));
    } else {
      ASSERT_TRUE(link->send_header(c.h));  // sealed: b reads the header before any payload
    }
    expect_protocol_drop(*b, *link, 1, c.needle);
    link.reset();
    // Closed: the next case's connection is not a second one of node 1.
    ASSERT_TRUE(b->events.wait([&] { return b->t->peer_status(1).code() != EPD_OK; }, 5s));
  }
  // Still serving: a well-formed peer connects afterwards.
  EXPECT_TRUE(raw_authenticated(*b));
}

TEST(TcpTransport, TruncatedFrameThenCloseIsPeerLost) {
  auto b = make_node(2, [](TransportConfig& c) { c.peers[1] = "127.0.0.1:1"; });
  ASSERT_TRUE(b);
  auto link = raw_authenticated(*b);
  ASSERT_TRUE(link);
  FrameHeader h;
  h.type = FrameType::kMessage;
  h.length = 1000;
  ASSERT_TRUE(link->send_header(h));
  uint8_t part[10] = {};
  ASSERT_TRUE(raw_write_all(link->fd, part, sizeof(part)));  // 10 of the 1000 + 16 payload bytes
  link.reset();
  Status e;
  ASSERT_TRUE(b->events.wait_peer_error(1, 5s, &e));
  EXPECT_EQ(e.code(), EPD_ERR_PEER_LOST) << e.to_string();
  EXPECT_NE(e.message().find("node 1"), std::string::npos) << e.message();
  std::lock_guard<std::mutex> l(b->events.mu);
  EXPECT_TRUE(b->events.messages.empty());
}

TEST(TcpTransport, DisconnectAndShutdownAreSeenByThePeer) {
  auto a = make_node(1);
  auto b = make_node(2);
  ASSERT_TRUE(a && b);
  introduce({a.get(), b.get()});
  ASSERT_EQ(connect_all({a.get(), b.get()}, 5000ms), "");
  a->t->shutdown();
  Status e;
  ASSERT_TRUE(b->events.wait_peer_error(1, 3s, &e));
  EXPECT_EQ(e.code(), EPD_ERR_PEER_LOST) << e.to_string();
  EXPECT_EQ(a->t->send(2, 1, "x", 1, deadline_after(1s)).code(), EPD_ERR_SHUTTING_DOWN);
  EXPECT_EQ(b->t->send(1, 1, "x", 1, deadline_after(1s)).code(), EPD_ERR_PEER_LOST);
}

TEST(TcpTransport, ReconnectAfterPeerRestart) {
  Watchdog wd(30s);
  auto a = make_node(1);
  auto b = make_node(2);
  ASSERT_TRUE(a && b);
  introduce({a.get(), b.get()});
  ASSERT_EQ(connect_all({a.get(), b.get()}, 5000ms), "");
  b.reset();
  Status e;
  ASSERT_TRUE(a->events.wait_peer_error(2, 3s, &e));
  auto b2 = make_node(2);
  ASSERT_TRUE(b2);
  introduce({a.get(), b2.get()});
  ASSERT_EQ(connect_all({a.get(), b2.get()}, 5000ms), "");
  ASSERT_TRUE(a->t->send(2, 9, "hi", 2, deadline_after(1s)).is_ok());
  ASSERT_TRUE(b2->events.wait([&] { return b2->events.messages.size() == 1; }, 5s));
}

TEST(TcpTransport, ConfigValidation) {
  TransportConfig c = base_config(1);
  c.listen_address = "";
  auto r = create_tcp_transport(c, {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("listen_address"), std::string::npos);
  c = base_config(1);
  c.cluster_secret = "short";
  r = create_tcp_transport(c, {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("secret"), std::string::npos);
  c = base_config(1);
  c.peers[2] = "nohostport";
  r = create_tcp_transport(c, {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("nohostport"), std::string::npos);
}

}  // namespace
}  // namespace epd::transport::test
