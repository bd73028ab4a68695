// wire_test.cc — frame encoding/validation and the handshake state machine,
// run in memory (no sockets). Label: unit.
#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <random>

#include "handshake.h"
#include "wire.h"

namespace epd::transport {
namespace {

const std::string kSecretA = "0123456789abcdef-secret-A";

TEST(Wire, HeaderRoundTrip) {
  FrameHeader h;
  h.type = FrameType::kWrite;
  h.a = 0xdeadbeef;
  h.imm = 77;
  h.offset = 0x123456789abcull;
  h.length = 4096;
  uint8_t buf[kHeaderBytes];
  encode_header(h, buf);
  WireLimits lim;
  Result<FrameHeader> r = decode_header(buf, lim, "node 9");
  ASSERT_TRUE(r) << r.status().to_string();
  EXPECT_EQ(r->type, FrameType::kWrite);
  EXPECT_EQ(r->a, 0xdeadbeefu);
  EXPECT_EQ(r->imm, 77u);
  EXPECT_EQ(r->offset, 0x123456789abcull);
  EXPECT_EQ(r->length, 4096u);
}

Status decode_bytes(const uint8_t* buf) {
  WireLimits lim;
  lim.max_message_bytes = 1000;
  return decode_header(buf, lim, "node 9").status();
}

TEST(Wire, MalformedHeadersAreProtocolErrorsNamingThePeer) {
  FrameHeader good;
  good.type = FrameType::kMessage;
  good.length = 1000;
  uint8_t buf[kHeaderBytes];
  encode_header(good, buf);
  EXPECT_TRUE(decode_bytes(buf).is_ok());

  struct Mutation {
    const char* what;
    std::function<void(uint8_t*)> apply;
    const char* needle;
  };
  const std::vector<Mutation> muts = {
      {"magic", [](uint8_t* b) { b[0] ^= 1; }, "magic"},
      {"type 0", [](uint8_t* b) { b[4] = 0; }, "unknown frame type 0"},
      {"type 200", [](uint8_t* b) { b[4] = 200; }, "unknown frame type 200"},
      {"flags", [](uint8_t* b) { b[5] = 1; }, "flags"},
      {"reserved", [](uint8_t* b) { b[7] = 1; }, "reserved"},
      {"length", [](uint8_t* b) { b[24] = 0xe9; b[25] = 0x03; }, "exceeds the limit 1000"},  // 1001
      {"huge length", [](uint8_t* b) { b[31] = 0x80; }, "exceeds the limit"},
      {"imm on a message", [](uint8_t* b) { b[12] = 1; }, "write fields"},
  };
  for (const Mutation& m : muts) {
    uint8_t bad[kHeaderBytes];
    std::memcpy(bad, buf, sizeof(bad));
    m.apply(bad);
    Status s = decode_bytes(bad);
    EXPECT_EQ(s.code(), EPD_ERR_PROTOCOL) << m.what;
    EXPECT_NE(s.message().find("node 9"), std::string::npos) << m.what << ": " << s.message();
    EXPECT_NE(s.message().find(m.needle), std::string::npos) << m.what << ": " << s.message();
  }
  FrameHeader hello;
  hello.type = FrameType::kHello;
  hello.length = kHelloBytes - 1;
  encode_header(hello, buf);
  EXPECT_EQ(decode_bytes(buf).code(), EPD_ERR_PROTOCOL);
  FrameHeader hb;
  hb.type = FrameType::kHeartbeat;
  hb.length = 1;
  encode_header(hb, buf);
  EXPECT_EQ(decode_bytes(buf).code(), EPD_ERR_PROTOCOL);
}

TEST(Wire, RandomHeadersNeverCrashAndRespectLimits) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  WireLimits lim;
  lim.max_message_bytes = 1 << 20;
  for (int i = 0; i < 20000; ++i) {
    uint8_t buf[kHeaderBytes];
    for (auto& b : buf) b = uint8_t(rng());
    if (i % 2) {  // plausible headers: valid magic and type, random rest
      uint32_t magic = kFrameMagic;
      std::memcpy(buf, &magic, 4);
      buf[4] = uint8_t(1 + rng() % 9);
      buf[5] = buf[6] = buf[7] = 0;
    }
    Result<FrameHeader> r = decode_header(buf, lim, "x");
    if (r && r->type != FrameType::kWrite) {
      EXPECT_LE(r->length, lim.max_message_bytes);
    }
  }
}

TEST(Wire, RegionsAndRejectPayloads) {
  std::vector<RegionInfo> in = {{1, 2, 3, 4}, {0xffffffff, 7, 0x1122334455667788ull, 1ull << 40}};
  auto bytes = encode_regions(in);
  auto out = decode_regions(bytes.data(), bytes.size(), "p");
  ASSERT_TRUE(out);
  ASSERT_EQ(out->size(), 2u);
  EXPECT_EQ((*out)[1].addr, 0x1122334455667788ull);
  EXPECT_EQ((*out)[1].bytes, 1ull << 40);
  EXPECT_EQ(decode_regions(bytes.data(), bytes.size() - 1, "p").status().code(), EPD_ERR_PROTOCOL);
  uint32_t lie = 1000;
  std::memcpy(bytes.data(), &lie, 4);
  EXPECT_EQ(decode_regions(bytes.data(), bytes.size(), "p").status().code(), EPD_ERR_PROTOCOL);

  auto rej = encode_reject(EPD_ERR_VERSION_MISMATCH, "too new\x01");
  Status s = decode_reject(rej.data(), rej.size(), "node 4");
  EXPECT_EQ(s.code(), EPD_ERR_VERSION_MISMATCH);
  EXPECT_NE(s.message().find("node 4 refused the connection: too new?"), std::string::npos) << s.message();
  EXPECT_EQ(decode_reject(rej.data(), 3, "n").code(), EPD_ERR_PROTOCOL);
}

// Runs two handshakes against each other in memory, frame by frame.
struct Pair {
  Handshake a, b;
  Status sa, sb;
  bool run() {
    std::deque<std::vector<uint8_t>> to_a, to_b;
    to_b.push_back(a.hello_frame());
    to_a.push_back(b.hello_frame());
    WireLimits lim;
    for (int i = 0; i < 32 && (!to_a.empty() || !to_b.empty()); ++i) {
      auto step = [&](Handshake& h, Status& st, std::deque<std::vector<uint8_t>>& in,
                      std::deque<std::vector<uint8_t>>& out) {
        if (in.empty() || !st.is_ok()) {
          in.clear();
          return;
        }
        auto f = in.front();
        in.pop_front();
        Result<FrameHeader> hdr = decode_header(f.data(), lim, "mem");
        ASSERT_TRUE(hdr);
        std::vector<HandshakeFrame> o;
        st = h.on_frame(*hdr, f.data() + kHeaderBytes, &o);
        for (auto& x : o) out.push_back(std::move(x.bytes));
      };
      step(a, sa, to_a, to_b);
      step(b, sb, to_b, to_a);
    }
    return a.done() && b.done();
  }
};

HandshakeParams params(uint32_t me, std::optional<uint32_t> expect, std::string secret,
                       uint16_t major = kProtocolMajor) {
  HandshakeParams p;
  p.my_node = me;
  p.initiator = expect.has_value();
  p.expected_peer = expect;
  p.secret = std::move(secret);
  p.major = major;
  p.is_known_peer = [](uint32_t n) { return n < 100; };
  p.local_regions = [me] { return std::vector<RegionInfo>{{me, 0, 0, 4096}}; };
  p.remote = "mem";
  return p;
}

TEST(Handshake, SucceedsAndExchangesRegions) {
  Pair p{Handshake(params(1, 2, kSecretA)), Handshake(params(2, std::nullopt, kSecretA)), {}, {}};
  ASSERT_TRUE(p.run()) << p.sa.to_string() << " / " << p.sb.to_string();
  EXPECT_EQ(*p.a.peer_node(), 2u);
  EXPECT_EQ(*p.b.peer_node(), 1u);
  ASSERT_EQ(p.a.peer_regions().size(), 1u);
  EXPECT_EQ(p.a.peer_regions()[0].id, 2u);
}

TEST(Handshake, WrongSecretFailsOnBothSides) {
  Pair p{Handshake(params(1, 2, kSecretA)), Handshake(params(2, std::nullopt, kSecretA + "x")), {}, {}};
  EXPECT_FALSE(p.run());
  EXPECT_EQ(p.sa.code(), EPD_ERR_PERMISSION) << p.sa.to_string();
  EXPECT_EQ(p.sb.code(), EPD_ERR_PERMISSION) << p.sb.to_string();
}

TEST(Handshake, MajorVersionMismatchNamesBothVersions) {
  Pair p{Handshake(params(1, 2, kSecretA, 1)), Handshake(params(2, std::nullopt, kSecretA, 3)), {}, {}};
  EXPECT_FALSE(p.run());
  EXPECT_EQ(p.sa.code(), EPD_ERR_VERSION_MISMATCH);
  EXPECT_NE(p.sa.message().find("3.0"), std::string::npos) << p.sa.message();
  EXPECT_NE(p.sa.message().find("1.0"), std::string::npos) << p.sa.message();
}

TEST(Handshake, WrongNodeAnsweringIsRefused) {
  Pair p{Handshake(params(1, 5, kSecretA)), Handshake(params(2, std::nullopt, kSecretA)), {}, {}};
  EXPECT_FALSE(p.run());
  EXPECT_EQ(p.sa.code(), EPD_ERR_PERMISSION);
  EXPECT_NE(p.sa.message().find("dialed node 5"), std::string::npos) << p.sa.message();
}

TEST(Handshake, ReflectedProofIsRejected) {
  // An attacker without the secret echoes our own HELLO nonce and AUTH back.
  Handshake a(params(1, 2, kSecretA));
  WireLimits lim;
  auto hello = a.hello_frame();
  // Forge a HELLO from "node 2" that reuses a's nonce.
  Result<FrameHeader> hh = decode_header(hello.data(), lim, "m");
  ASSERT_TRUE(hh);
  Result<HelloPayload> hp = decode_hello(hello.data() + kHeaderBytes, kHelloBytes, "m");
  ASSERT_TRUE(hp);
  hp->node_id = 2;
  uint8_t body[kHelloBytes];
  encode_hello(*hp, body);
  std::vector<HandshakeFrame> out;
  ASSERT_TRUE(a.on_frame(*hh, body, &out).is_ok());
  ASSERT_EQ(out.size(), 1u);  // a's AUTH
  Result<FrameHeader> ah = decode_header(out[0].bytes.data(), lim, "m");
  ASSERT_TRUE(ah);
  std::vector<HandshakeFrame> out2;
  Status s = a.on_frame(*ah, out[0].bytes.data() + kHeaderBytes, &out2);  // reflect it
  EXPECT_EQ(s.code(), EPD_ERR_PERMISSION) << s.to_string();
  ASSERT_EQ(out2.size(), 1u);
  EXPECT_EQ(out2[0].bytes[4], static_cast<uint8_t>(FrameType::kReject));
}


TEST(Handshake, BothSidesDeriveTheSameKeysAndOnlyTheDialerProvesFirst) {
  Handshake a(params(1, 2, kSecretA)), b(params(2, std::nullopt, kSecretA));
  WireLimits lim;
  auto feed = [&](Handshake& h, const std::vector<uint8_t>& f, std::vector<HandshakeFrame>* out) {
    Result<FrameHeader> hdr = decode_header(f.data(), lim, "mem");
    EXPECT_TRUE(hdr);
    return h.on_frame(*hdr, f.data() + kHeaderBytes, out);
  };
  std::vector<HandshakeFrame> from_a, from_b;
  ASSERT_TRUE(feed(b, a.hello_frame(), &from_b).is_ok());
  EXPECT_TRUE(from_b.empty()) << "the acceptor answered a HELLO with something before any proof";
  ASSERT_TRUE(feed(a, b.hello_frame(), &from_a).is_ok());
  ASSERT_EQ(from_a.size(), 1u);
  EXPECT_EQ(from_a[0].bytes[4], static_cast<uint8_t>(FrameType::kAuth));
  EXPECT_FALSE(from_a[0].sealed);
  // A wrong proof gets a REJECT and nothing of b's proof.
  {
    Handshake b2(params(2, std::nullopt, kSecretA));
    std::vector<HandshakeFrame> o;
    ASSERT_TRUE(feed(b2, a.hello_frame(), &o).is_ok());
    std::vector<uint8_t> forged = from_a[0].bytes;
    forged[kHeaderBytes] ^= 1;
    EXPECT_EQ(feed(b2, forged, &o).code(), EPD_ERR_PERMISSION);
    ASSERT_EQ(o.size(), 1u);
    EXPECT_EQ(o[0].bytes[4], static_cast<uint8_t>(FrameType::kReject));
  }
  ASSERT_TRUE(feed(b, from_a[0].bytes, &from_b).is_ok());
  ASSERT_EQ(from_b.size(), 2u);  // AUTH (plain), AUTH_OK (sealed)
  EXPECT_FALSE(from_b[0].sealed);
  EXPECT_TRUE(from_b[1].sealed);
  EXPECT_TRUE(b.rx_sealed());
  EXPECT_EQ(a.tx_key(), b.rx_key());
  EXPECT_EQ(a.rx_key(), b.tx_key());
  EXPECT_NE(a.tx_key(), a.rx_key());
  // The same secret over other nonces gives other keys.
  Handshake c(params(1, 2, kSecretA)), d(params(2, std::nullopt, kSecretA));
  std::vector<HandshakeFrame> o;
  ASSERT_TRUE(feed(d, c.hello_frame(), &o).is_ok());
  ASSERT_TRUE(feed(c, d.hello_frame(), &o).is_ok());
  EXPECT_NE(c.tx_key(), a.tx_key());
}

TEST(Handshake, SecondConnectionOfALinkedNodeIsRefusedAfterItsProof) {
  HandshakeParams pb = params(2, std::nullopt, kSecretA);
  pb.admit_peer = [](uint32_t n) { return make_status(EPD_ERR_PERMISSION, "node %u already has a link", n); };
  Pair p{Handshake(params(1, 2, kSecretA)), Handshake(pb), {}, {}};
  EXPECT_FALSE(p.run());
  EXPECT_EQ(p.sb.code(), EPD_ERR_PERMISSION) << p.sb.to_string();
  EXPECT_NE(p.sa.message().find("already has a link"), std::string::npos) << p.sa.to_string();
}

TEST(Wire, OnlySmallHandshakeFramesBeforeAuthentication) {
  FrameHeader h;
  for (FrameType t : {FrameType::kHello, FrameType::kAuth, FrameType::kReject}) {
    h.type = t;
    h.length = 40;
    EXPECT_TRUE(check_pre_auth_header(h, "p").is_ok()) << frame_type_name(t);
  }
  h.length = kMaxPreAuthPayload + 1;
  EXPECT_EQ(check_pre_auth_header(h, "p").code(), EPD_ERR_PROTOCOL);
  for (FrameType t : {FrameType::kAuthOk, FrameType::kMessage, FrameType::kWrite, FrameType::kRegions,
                      FrameType::kHeartbeat, FrameType::kBye}) {
    h.type = t;
    h.length = 0;
    Status s = check_pre_auth_header(h, "peer 9");
    EXPECT_EQ(s.code(), EPD_ERR_PROTOCOL) << frame_type_name(t);
    EXPECT_NE(s.message().find("peer 9"), std::string::npos) << s.message();
  }
}

}  // namespace
}  // namespace epd::transport
