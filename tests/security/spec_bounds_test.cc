// spec_bounds_test.cc — issue 14, finding 2: workspace sizes never wrap.
// The spec that wrapped GroupLayout::total_bytes past 2^64 (world 1024,
// expert_major, 65536 experts, hidden 262144, capacity 32767, 8 slots) is
// refused with EPD_ERR_INVALID_SPEC naming the fields and the bytes by
// GroupSpec::validate, epd_group_spec_validate and
// epd_group_spec_workspace_bytes; a spec just above the 1 TiB cap is refused
// with its exact bytes, one just below is accepted; and random large specs
// are checked against an independent 128-bit computation of the layout.
// Label: security.
#include <gtest/gtest.h>

#include <cinttypes>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "epd/epd.h"
#include "layout.h"
#include "spec.h"

namespace {

using u128 = unsigned __int128;

epd_group_spec_t issue_spec() {
  epd_group_spec_t s;
  epd_group_spec_init(&s);
  std::strcpy(s.name, "huge");
  s.world_size = 1024;
  s.rank = 0;
  s.layout = EPD_LAYOUT_EXPERT_MAJOR;
  s.num_experts = 65536;
  s.top_k = 8;
  s.hidden = 262144;
  s.max_tokens_per_rank = 32767;
  s.slots = 8;
  return s;
}

// The fields and the "more than 2^64 - 1" wording every refusal must carry.
void expect_names_the_size(const std::string& msg) {
  for (const char* part : {"group workspace needs more than 18446744073709551615", "1099511627776",
                           "world_size = 1024", "slots = 8", "max_tokens_per_rank = 32767", "hidden = 262144",
                           "dtype = bf16", "layout = expert_major", "64 local experts"})
    EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
}

TEST(SpecBounds, IssueSpecRefusedByValidate) {
  auto s = epd::GroupSpec::from_c(issue_spec());
  ASSERT_TRUE(s.is_ok()) << s.status().message();
  const epd::Status st = s->validate();
  EXPECT_EQ(st.code(), EPD_ERR_INVALID_SPEC) << st.message();
  expect_names_the_size(st.message());
  // And the layout itself says it overflowed instead of wrapping to a small size.
  const epd::GroupLayout g = epd::GroupLayout::compute(s.value());
  EXPECT_TRUE(g.overflowed);
  EXPECT_EQ(g.total_bytes, UINT64_MAX);
}

TEST(SpecBounds, IssueSpecRefusedByTheCEntryPoints) {
  const epd_group_spec_t c = issue_spec();
  char msg[512] = {};
  EXPECT_EQ(epd_group_spec_validate(&c, msg, sizeof msg), EPD_ERR_INVALID_SPEC);
  expect_names_the_size(msg);

  uint64_t bytes = 12345;
  EXPECT_EQ(epd_group_spec_workspace_bytes(&c, 0, EPD_GPU_HOST, &bytes), EPD_ERR_INVALID_SPEC);
  EXPECT_EQ(bytes, 12345u) << "written on failure";
  expect_names_the_size(epd_client_last_error(nullptr));
}

// An independent computation of one rank's workspace in 128 bits (the
// layout of core/layout.h written out again: 256-byte aligned regions).
u128 oracle_rank_bytes(const epd_group_spec_t& s, int64_t local_experts) {
  const u128 M = static_cast<u128>(s.max_tokens_per_rank), K = static_cast<u128>(s.top_k);
  const u128 H = static_cast<u128>(s.hidden), W = static_cast<u128>(s.world_size);
  const bool fp8 = s.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128;
  const bool rank_major = s.layout == EPD_LAYOUT_RANK_MAJOR;
  const u128 dt = s.dtype == EPD_DTYPE_FP32 ? 4 : 2;
  const u128 R = rank_major ? W * M : static_cast<u128>(local_experts) * W * M;
  const u128 I = rank_major ? K : 1, in_row = H * dt, recv_row = fp8 ? H : in_row;
  const u128 B = fp8 ? H / 128 : 0;
  const u128 regions[] = {64,     M * in_row, M * K * 4,  M * K * 4, M * K * 4,  M * K * 4,  4,         static_cast<u128>(local_experts) * 4,
                          R * recv_row, R * B * 4, R * I * 4, R * I * 4, R * 8, R * in_row, M * in_row};
  auto align = [](u128 v) { return (v + 255) / 256 * 256; };
  u128 next = 0;
  for (u128 r : regions) next = align(next) + r;
  return 4096 + static_cast<u128>(s.slots) * align(next);
}

u128 oracle_group_bytes(const epd_group_spec_t& s) {
  // Contiguous default owners: the first E % W ranks own one more.
  const int64_t base = s.num_experts / s.world_size, extra = s.num_experts % s.world_size;
  u128 total = 0;
  for (int64_t r = 0; r < s.world_size; ++r) total += oracle_rank_bytes(s, base + (r < extra ? 1 : 0));
  return total;
}

std::string u128_text(u128 v) {
  std::string o;
  do {
    o.insert(o.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  } while (v);
  return o;
}

TEST(SpecBounds, TheCapIsExactAndTheMessageNamesTheBytes) {
  // rank_major, 8 ranks, fp32: raise max_tokens until the group crosses 1 TiB.
  epd_group_spec_t c;
  epd_group_spec_init(&c);
  std::strcpy(c.name, "cap");
  c.world_size = 8;
  c.num_experts = 8;
  c.top_k = 1;
  c.hidden = 1 << 20;
  c.dtype = EPD_DTYPE_FP32;
  c.slots = 2;
  int32_t lo = 1, hi = EPD_MAX_TOKENS_PER_RANK;  // invariant: lo fits, hi does not
  c.max_tokens_per_rank = hi;
  ASSERT_GT(oracle_group_bytes(c), static_cast<u128>(EPD_MAX_GROUP_WORKSPACE_BYTES));
  while (hi - lo > 1) {
    c.max_tokens_per_rank = lo + (hi - lo) / 2;
    (oracle_group_bytes(c) <= EPD_MAX_GROUP_WORKSPACE_BYTES ? lo : hi) = c.max_tokens_per_rank;
  }
  c.max_tokens_per_rank = lo;
  char msg[512] = {};
  ASSERT_EQ(epd_group_spec_validate(&c, msg, sizeof msg), EPD_OK) << msg;
  uint64_t bytes = 0;
  ASSERT_EQ(epd_group_spec_workspace_bytes(&c, 0, EPD_GPU_HOST, &bytes), EPD_OK);
  EXPECT_EQ(static_cast<u128>(bytes), oracle_group_bytes(c));

  c.max_tokens_per_rank = hi;
  EXPECT_EQ(epd_group_spec_validate(&c, msg, sizeof msg), EPD_ERR_INVALID_SPEC);
  const std::string m = msg;
  EXPECT_NE(m.find("group workspace needs " + u128_text(oracle_group_bytes(c)) + " bytes"), std::string::npos) << m;
  EXPECT_NE(m.find("max_tokens_per_rank = " + std::to_string(hi)), std::string::npos) << m;
  EXPECT_NE(m.find("hidden = 1048576"), std::string::npos) << m;
  EXPECT_NE(m.find("dtype = fp32"), std::string::npos) << m;
}

TEST(SpecBounds, EveryFieldMaximumIsEnforced) {
  struct Case {
    const char* what;
    void (*edit)(epd_group_spec_t&);
    const char* expect;
  };
  const Case cases[] = {
      {"hidden", [](epd_group_spec_t& s) { s.hidden = EPD_MAX_HIDDEN + 1; }, "hidden = 1048577 is outside [1, 1048576]"},
      {"max_tokens", [](epd_group_spec_t& s) { s.max_tokens_per_rank = EPD_MAX_TOKENS_PER_RANK + 1; },
       "max_tokens_per_rank = 1048577 is outside [1, 1048576]"},
      {"sm_budget", [](epd_group_spec_t& s) { s.sm_budget = EPD_MAX_SM_BUDGET + 1; }, "sm_budget = 4097 is outside [0, 4096]"},
      {"slots", [](epd_group_spec_t& s) { s.slots = EPD_MAX_SLOTS + 1; }, "slots = 9 is outside [2, 8]"},
      {"world_size", [](epd_group_spec_t& s) { s.world_size = EPD_MAX_WORLD_SIZE + 1; }, "world_size = 1025"},
      {"num_experts", [](epd_group_spec_t& s) { s.num_experts = EPD_MAX_EXPERTS + 1; }, "num_experts = 65537"},
      {"top_k", [](epd_group_spec_t& s) { s.top_k = EPD_MAX_TOP_K + 1; }, "top_k = 65"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    epd_group_spec_t s;
    epd_group_spec_init(&s);
    std::strcpy(s.name, "max");
    s.world_size = 2;
    s.num_experts = 128;
    s.top_k = 2;
    s.hidden = 128;
    s.max_tokens_per_rank = 4;
    char msg[512] = {};
    ASSERT_EQ(epd_group_spec_validate(&s, msg, sizeof msg), EPD_OK) << msg;
    k.edit(s);
    EXPECT_EQ(epd_group_spec_validate(&s, msg, sizeof msg), EPD_ERR_INVALID_SPEC);
    EXPECT_NE(std::string(msg).find(k.expect), std::string::npos) << msg;
  }
}

// Random specs with every field in range, skewed towards the maxima: the
// checked sizes agree with the 128-bit oracle whenever they are accepted,
// the refusal is exactly the oracle's total above the cap, and the checked
// total is at least every partial (every rank, every slot's last region).
TEST(SpecBounds, RandomLargeSpecsNeverWrap) {
  const char* env = std::getenv("EPD_SECURITY_SEED");
  const uint64_t seed = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
  std::printf("seed %" PRIu64 " (EPD_SECURITY_SEED reruns it)\n", seed);
  std::mt19937_64 rng(seed);
  auto pick = [&](int64_t lo, int64_t hi) {
    // Half the draws log-uniform (small to huge), half near the top.
    std::uniform_real_distribution<double> u(0, 1);
    if (u(rng) < 0.5) return hi - static_cast<int64_t>(u(rng) * std::min<int64_t>(hi - lo, 16));
    const double v = std::exp(std::log(static_cast<double>(lo)) +
                              u(rng) * (std::log(static_cast<double>(hi)) - std::log(static_cast<double>(lo))));
    return std::clamp(static_cast<int64_t>(v), lo, hi);
  };
  int accepted = 0, refused_size = 0, refused_rows = 0;
  for (int i = 0; i < 400; ++i) {
    epd_group_spec_t c;
    epd_group_spec_init(&c);
    std::strcpy(c.name, "rand");
    c.world_size = static_cast<int32_t>(pick(1, EPD_MAX_WORLD_SIZE));
    c.num_experts = static_cast<int32_t>(pick(c.world_size, EPD_MAX_EXPERTS));
    c.top_k = static_cast<int32_t>(pick(1, std::min(EPD_MAX_TOP_K, c.num_experts)));
    c.dispatch_quant = rng() % 2 ? EPD_QUANT_FP8_E4M3_BLOCK128 : EPD_QUANT_NONE;
    c.hidden = static_cast<int32_t>(pick(1, EPD_MAX_HIDDEN));
    if (c.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128) c.hidden = std::max(128, c.hidden / 128 * 128);
    c.dtype = static_cast<epd_dtype_t>(rng() % 3);
    c.max_tokens_per_rank = static_cast<int32_t>(pick(1, EPD_MAX_TOKENS_PER_RANK));
    c.layout = rng() % 2 ? EPD_LAYOUT_EXPERT_MAJOR : EPD_LAYOUT_RANK_MAJOR;
    c.slots = static_cast<int32_t>(pick(2, EPD_MAX_SLOTS));
    const std::string trace = "case " + std::to_string(i) + ": W " + std::to_string(c.world_size) + " E " +
                              std::to_string(c.num_experts) + " K " + std::to_string(c.top_k) + " H " +
                              std::to_string(c.hidden) + " M " + std::to_string(c.max_tokens_per_rank) + " slots " +
                              std::to_string(c.slots) + " layout " + std::to_string(c.layout);
    SCOPED_TRACE(trace);
    auto s = epd::GroupSpec::from_c(c);
    ASSERT_TRUE(s.is_ok());
    const epd::Status st = s->validate();
    const u128 exact = oracle_group_bytes(c);
    if (!st) {
      ASSERT_EQ(st.code(), EPD_ERR_INVALID_SPEC) << st.message();
      if (st.message().find("receive rows") != std::string::npos) {
        ++refused_rows;
        continue;
      }
      ASSERT_NE(st.message().find("group workspace needs"), std::string::npos) << st.message();
      EXPECT_GT(exact, static_cast<u128>(EPD_MAX_GROUP_WORKSPACE_BYTES)) << st.message();
      if (exact <= UINT64_MAX) {
        EXPECT_NE(st.message().find(u128_text(exact)), std::string::npos) << st.message();
      } else {
        EXPECT_NE(st.message().find("more than"), std::string::npos) << st.message();
      }
      ++refused_size;
      continue;
    }
    ++accepted;
    ASSERT_LE(exact, static_cast<u128>(EPD_MAX_GROUP_WORKSPACE_BYTES));
    const epd::GroupLayout g = epd::GroupLayout::compute(s.value());
    ASSERT_FALSE(g.overflowed);
    EXPECT_EQ(static_cast<u128>(g.total_bytes), exact);
    uint64_t prefix = 0;
    for (const epd::RankLayout& r : g.ranks) {
      ASSERT_FALSE(r.overflowed);
      ASSERT_GE(g.total_bytes, r.bytes);
      ASSERT_GE(g.total_bytes - r.bytes, prefix);  // the rank's offset plus its bytes stays inside
      prefix += r.bytes;
      const epd::SlotOffsets& last = r.slot[c.slots - 1];
      ASSERT_LE(last.combine_out + static_cast<uint64_t>(c.max_tokens_per_rank) * r.in_row_bytes, r.bytes);
      ASSERT_GE(r.bytes, r.slot_bytes * static_cast<uint64_t>(c.slots));
    }
    EXPECT_EQ(prefix, g.total_bytes);
  }
  std::printf("accepted %d, refused for size %d, refused for receive rows %d\n", accepted, refused_size,
              refused_rows);
  EXPECT_GT(accepted, 0);
  EXPECT_GT(refused_size, 0);
}

}  // namespace
