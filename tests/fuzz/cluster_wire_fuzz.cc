// cluster_wire_fuzz.cc — fuzz target for the cluster link: the frame decoder
// (wire.h), the handshake state machine (handshake.h) and sealed records
// (link_crypto.h). Issue 14, finding 9 (the cluster part).
//
// The first input byte picks the mode:
//   even — stranger: the rest is what an unauthenticated peer sends to an
//     accepting node: framed (decode_header, check_pre_auth_header) and fed
//     to a responder's handshake. Never crashes; every refusal is a
//     protocol-family status; the handshake never accepts its proof.
//   odd — man in the middle: an honest dialer and an honest acceptor (same
//     secret) exchange frames through a channel the input drives: per frame,
//     pass, flip a byte, drop, duplicate, or inject input bytes. Checked
//     (abort on violation): a side that completes shares its keys with the
//     other side (no edit of the channel completes a handshake under keys the
//     peer lacks), and with no edit both sides complete.
// With clang -fsanitize=fuzzer (-DEPD_LIBFUZZER) libFuzzer drives it;
// otherwise main() runs N generated inputs from a seed:
//   epd_cluster_wire_fuzz [N] [seed]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <random>
#include <vector>

#include "handshake.h"
#include "link_crypto.h"
#include "wire.h"

namespace {

using namespace epd;
using namespace epd::transport;

constexpr char kSecret[] = "fuzz-cluster-secret-0123456789";

// The input, consumed from the front; zeros once it runs out.
struct Input {
  const uint8_t* p;
  size_t n;
  uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
};

void check_refusal(const Status& s) {
  const epd_status_t c = s.code();
  if (c != EPD_ERR_PROTOCOL && c != EPD_ERR_PERMISSION && c != EPD_ERR_VERSION_MISMATCH && c != EPD_ERR_SHUTTING_DOWN &&
      c != EPD_ERR_INTERNAL) {
    std::fprintf(stderr, "unexpected status %s\n", s.to_string().c_str());
    std::abort();
  }
}

HandshakeParams params(uint32_t me, bool initiator) {
  HandshakeParams p;
  p.my_node = me;
  p.secret = kSecret;
  p.initiator = initiator;
  if (initiator) p.expected_peer = 2;
  p.is_known_peer = [](uint32_t n) { return n == 1; };
  p.local_regions = [me] { return std::vector<RegionInfo>{{me, 0, 0, 4096}}; };
  p.admit_peer = [](uint32_t) { return Status::ok(); };
  p.remote = "fuzz";
  return p;
}

// ---- stranger --------------------------------------------------------------------------------
void stranger(Input in) {
  Handshake hs(params(2, false));
  WireLimits limits;
  std::vector<HandshakeFrame> out;
  for (int frames = 0; frames < 64 && in.n >= kHeaderBytes; ++frames) {
    Result<FrameHeader> h = decode_header(in.p, limits, "fuzz");
    if (!h) return check_refusal(h.status());
    if (Status s = check_pre_auth_header(*h, "fuzz"); !s) return check_refusal(s);
    if (in.n - kHeaderBytes < h->length) return;
    const uint8_t* payload = in.p + kHeaderBytes;
    in.p += kHeaderBytes + h->length;
    in.n -= kHeaderBytes + h->length;
    Status s = hs.on_frame(*h, payload, &out);
    if (!s) return check_refusal(s);
    if (hs.rx_sealed()) {  // it accepted a proof from someone without the secret
      std::fprintf(stderr, "a stranger passed the proof check\n");
      std::abort();
    }
  }
}

// ---- man in the middle -----------------------------------------------------------------------
struct Side {
  explicit Side(HandshakeParams p) : hs(std::move(p)) {}
  Handshake hs;
  std::optional<FrameSealer> tx;
  std::optional<FrameOpener> rx;
  bool failed = false;
};

void emit(Side& s, std::vector<HandshakeFrame>& frames, std::deque<std::vector<uint8_t>>* to) {
  for (HandshakeFrame& f : frames) {
    if (f.sealed && !s.tx) s.tx.emplace(s.hs.tx_key());
    to->push_back(s.tx ? s.tx->seal_frame(f.bytes) : std::move(f.bytes));
  }
  frames.clear();
}

// One frame as the transport would read it: plain, or sealed records.
Status open_frame(Side& s, const std::vector<uint8_t>& f, FrameHeader* h, std::vector<uint8_t>* payload) {
  WireLimits limits;
  if (!s.rx) {
    if (f.size() < kHeaderBytes) return make_status(EPD_ERR_PROTOCOL, "short");
    Result<FrameHeader> r = decode_header(f.data(), limits, "fuzz");
    if (!r) return r.status();
    EPD_RETURN_IF_ERROR(check_pre_auth_header(*r, "fuzz"));
    if (f.size() - kHeaderBytes != r->length) return make_status(EPD_ERR_PROTOCOL, "length");
    *h = *r;
    payload->assign(f.begin() + kHeaderBytes, f.end());
    return Status::ok();
  }
  if (f.size() < kSealedHeaderBytes) return make_status(EPD_ERR_PROTOCOL, "short");
  uint8_t plain[kHeaderBytes];
  EPD_RETURN_IF_ERROR(s.rx->open_header(f.data(), plain, "fuzz"));
  Result<FrameHeader> r = decode_header(plain, limits, "fuzz");
  if (!r) return r.status();
  uint64_t want = 0;
  if (!sealed_frame_bytes(r->length, &want) || want != f.size()) return make_status(EPD_ERR_PROTOCOL, "length");
  *h = *r;
  payload->resize(r->length);
  size_t at = kSealedHeaderBytes;
  for (size_t done = 0; done < r->length;) {
    const size_t n = std::min<size_t>(kSealChunkBytes, r->length - done);
    EPD_RETURN_IF_ERROR(s.rx->open_chunk(f.data() + at, n, payload->data() + done, "fuzz"));
    done += n;
    at += n + kTagBytes;
  }
  return Status::ok();
}

void deliver(Side& s, const std::vector<uint8_t>& f, std::deque<std::vector<uint8_t>>* back) {
  if (s.failed) return;
  FrameHeader h;
  std::vector<uint8_t> payload;
  Status st = open_frame(s, f, &h, &payload);
  std::vector<HandshakeFrame> out;
  if (st) st = s.hs.on_frame(h, payload.data(), &out);
  emit(s, out, back);
  if (!st) {
    check_refusal(st);
    s.failed = true;
    return;
  }
  if (s.hs.rx_sealed() && !s.rx) s.rx.emplace(s.hs.rx_key());
}

void middle(Input in) {
  Side side[2] = {Side(params(1, true)), Side(params(2, false))};
  std::deque<std::vector<uint8_t>> to[2];  // frames on their way to side i
  to[1].push_back(side[0].hs.hello_frame());
  to[0].push_back(side[1].hs.hello_frame());
  bool edited = false;
  for (int step = 0; step < 64 && (!to[0].empty() || !to[1].empty()); ++step) {
    const uint8_t op = in.byte();
    int dst = (op >> 4) & 1;
    if (to[dst].empty()) dst ^= 1;
    std::vector<uint8_t> f = std::move(to[dst].front());
    to[dst].pop_front();
    switch (op & 0x0f) {
      case 8:  // flip one bit
        if (!f.empty()) f[in.byte() % f.size()] ^= static_cast<uint8_t>(1u << (in.byte() % 8));
        edited = true;
        break;
      case 9:  // drop
        edited = true;
        continue;
      case 10:  // duplicate
        to[dst].push_front(f);
        edited = true;
        break;
      case 11: {  // inject input bytes instead
        const size_t len = in.byte();
        f.assign(in.p, in.p + std::min(in.n, len));
        edited = true;
        break;
      }
      default:
        break;
    }
    deliver(side[dst], f, &to[dst ^ 1]);
  }
  const bool done0 = side[0].hs.done(), done1 = side[1].hs.done();
  if ((done0 || done1) && (side[0].hs.tx_key() != side[1].hs.rx_key() || side[0].hs.rx_key() != side[1].hs.tx_key())) {
    std::fprintf(stderr, "a handshake completed under keys the other side does not hold\n");
    std::abort();
  }
  if (!edited && !(done0 && done1)) {
    std::fprintf(stderr, "an unedited handshake did not complete\n");
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool ready = link_crypto_init().is_ok();
  if (!ready || size == 0) return 0;
  Input in{data + 1, size - 1};
  if (data[0] & 1) {
    middle(in);
  } else {
    stranger(in);
  }
  return 0;
}

#ifndef EPD_LIBFUZZER
namespace {

// A valid HELLO from node 1, then random frames and bytes.
std::vector<uint8_t> stranger_input(std::mt19937_64& rng) {
  std::vector<uint8_t> v{0};
  HelloPayload hp;
  hp.node_id = static_cast<uint32_t>(rng() % 4);
  hp.major = static_cast<uint16_t>(rng() % 8 == 0 ? rng() % 4 : kProtocolMajor);
  uint8_t body[kHelloBytes];
  encode_hello(hp, body);
  FrameHeader h;
  h.type = FrameType::kHello;
  std::vector<uint8_t> f = make_frame(h, body, sizeof(body));
  v.insert(v.end(), f.begin(), f.end());
  const size_t junk = rng() % 200;
  for (size_t i = 0; i < junk; ++i) v.push_back(static_cast<uint8_t>(rng()));
  for (int flips = static_cast<int>(rng() % 4); flips > 0; --flips) v[1 + rng() % (v.size() - 1)] ^= 1u << (rng() % 8);
  return v;
}

// A channel script: mostly passes, a few edits.
std::vector<uint8_t> middle_input(std::mt19937_64& rng) {
  std::vector<uint8_t> v{1};
  const size_t n = 4 + rng() % 40;
  for (size_t i = 0; i < n; ++i) v.push_back(static_cast<uint8_t>(rng() % 6 == 0 ? rng() : (rng() & 0x17)));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 20000;
  const unsigned long long seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 12345u;
  std::printf("epd_cluster_wire_fuzz: %ld inputs, seed %llu\n", n, seed);
  std::mt19937_64 rng(seed);
  for (long i = 0; i < n; ++i) {
    std::vector<uint8_t> in;
    switch (rng() % 3) {
      case 0: in = stranger_input(rng); break;
      case 1: in = middle_input(rng); break;
      default:
        in.resize(rng() % 300);
        for (uint8_t& b : in) b = static_cast<uint8_t>(rng());
    }
    LLVMFuzzerTestOneInput(in.data(), in.size());
  }
  std::printf("epd_cluster_wire_fuzz: %ld inputs ran, no invariant broke\n", n);
  return 0;
}
#endif
