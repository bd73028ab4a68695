// protocol_fuzz.cc — fuzz target for the control-protocol parser.
//
// With clang -fsanitize=fuzzer, LLVMFuzzerTestOneInput is driven by libFuzzer
// (build with -DEPD_LIBFUZZER). Otherwise main() runs N inputs: valid records
// of every type, each mutated (bit flips, truncation, length and type edits,
// random bytes), and checks that decoding never crashes and returns a
// protocol-family status for malformed input; first, that the corpus covers
// the message table. Usage: epd_protocol_fuzz [N] [seed]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)epd::proto::decode_any(data, size);
  return 0;
}

#ifndef EPD_LIBFUZZER
namespace {

std::vector<std::vector<uint8_t>> corpus() {
  using namespace epd::proto;
  std::vector<std::vector<uint8_t>> c;
  c.push_back(encode(Hello{1234, "fuzz"}, 1));
  HelloReply hr;
  hr.daemon_version = "0.1.0";
  c.push_back(encode(hr, 2));
  Join j;
  j.spec.name = "g";
  j.spec.world_size = 4;
  j.spec.rank = 1;
  j.spec.num_experts = 8;
  j.spec.top_k = 2;
  j.spec.hidden = 16;
  j.spec.max_tokens_per_rank = 8;
  j.spec.placement.assign(4, epd_placement_t{0, EPD_GPU_HOST});
  for (int e = 0; e < 8; ++e) j.spec.expert_owner.push_back(7 - e < 4 ? 0 : e % 4);  // non-contiguous table
  c.push_back(encode(j, 3));
  c.push_back(encode(JoinReply{}, 4));
  c.push_back(encode(Leave{2}, 5));
  c.push_back(encode(MsgType::kLeaveReply, Reply{EPD_OK, ""}, 5));
  c.push_back(encode(MsgType::kError, Reply{EPD_ERR_PROTOCOL, "x"}, 6));
  c.push_back(encode(StatusQuery{}, 7));
  c.push_back(encode(StatusReply{0, "{}"}, 8));
  c.push_back(encode(MsgType::kShutdown, Reply{EPD_ERR_SHUTTING_DOWN, "stopping"}, 0));
  return c;
}

// Every row of the message table has a record in the corpus (a new message
// needs one here), decode_frame accepts exactly the table's types, and every
// corpus record decodes.
bool corpus_covers_table(const std::vector<std::vector<uint8_t>>& c) {
  using namespace epd::proto;
  for (const MsgInfo& m : kMessages) {
    bool found = false;
    for (const auto& rec : c) {
      auto f = decode_frame(rec.data(), rec.size());
      found = found || (f && f->header.type == m.type);
    }
    if (!found) {
      std::fprintf(stderr, "the corpus has no %s record: add one to corpus()\n", m.name);
      return false;
    }
  }
  // decode_frame accepts exactly the table's types (every 16-bit value tried).
  std::vector<uint8_t> probe = encode(MsgType::kError, Reply{EPD_ERR_PROTOCOL, "x"}, 1);
  for (uint32_t t = 0; t <= 0xffff; ++t) {
    const uint16_t v = static_cast<uint16_t>(t);
    std::memcpy(probe.data() + 8, &v, 2);
    auto f = decode_frame(probe.data(), probe.size());
    if (static_cast<bool>(f) != (find_msg(v) != nullptr)) {
      std::fprintf(stderr, "decode_frame %s type %u, which the table %s\n", f ? "accepted" : "refused",
                   static_cast<unsigned>(v), find_msg(v) ? "lists" : "does not list");
      return false;
    }
  }
  for (const auto& rec : c) {
    const epd::Status st = decode_any(rec.data(), rec.size());
    if (!st.is_ok()) {
      std::fprintf(stderr, "a valid corpus record failed to decode: %s\n", st.to_string().c_str());
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 20000;
  const unsigned seed = argc > 2 ? static_cast<unsigned>(std::atol(argv[2])) : 12345u;
  std::printf("epd_protocol_fuzz: %ld inputs, seed %u\n", n, seed);
  std::mt19937 rng(seed);
  const auto base = corpus();
  if (!corpus_covers_table(base)) return 1;
  long malformed = 0;
  for (long i = 0; i < n; ++i) {
    std::vector<uint8_t> in = base[rng() % base.size()];
    switch (rng() % 6) {
      case 0:  // bit flips
        for (int k = 0, m = 1 + static_cast<int>(rng() % 8); k < m && !in.empty(); ++k)
          in[rng() % in.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1: in.resize(rng() % (in.size() + 1)); break;  // truncation
      case 2:  // grow with random bytes
        for (int k = 0, m = static_cast<int>(rng() % 64); k < m; ++k) in.push_back(static_cast<uint8_t>(rng()));
        break;
      case 3:  // random header fields
        if (in.size() >= 24) in[8 + rng() % 16] = static_cast<uint8_t>(rng());
        break;
      case 4:  // fully random
        in.assign(rng() % 200, 0);
        for (auto& b : in) b = static_cast<uint8_t>(rng());
        break;
      default:  // overwrite a payload word with an extreme value
        if (in.size() >= 28) {
          const size_t at = 24 + rng() % (in.size() - 27);
          const uint32_t v = (rng() & 1) ? 0xffffffffu : 0x7fffffffu;
          std::memcpy(in.data() + at, &v, 4);
        }
        break;
    }
    const epd::Status st = epd::proto::decode_any(in.data(), in.size());
    if (!st.is_ok()) {
      ++malformed;
      if (st.message().empty()) {
        std::fprintf(stderr, "input %ld: error %d without a message\n", i, st.code());
        return 1;
      }
    }
    LLVMFuzzerTestOneInput(in.data(), in.size());
  }
  std::printf("ok: %ld inputs, %ld rejected with a message, none crashed\n", n, malformed);
  return 0;
}
#endif
