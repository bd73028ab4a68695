// property_check.cc — see property_check.h.
#include "property_check.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

namespace epd_test {

namespace {

epd::ThreadPool* pick_pool(std::mt19937_64& rng) {
  // Results must not depend on the pool: the shared one, a single thread, three threads.
  static epd::ThreadPool one(1), three(3);
  switch (rng() % 3) {
    case 0: return nullptr;
    case 1: return &one;
    default: return &three;
  }
}

uint8_t pick_pattern(std::mt19937_64& rng) {
  // Never 0x00 or 0xff: those would read as weight 0 / id -1 and hide unwritten rows.
  static const uint8_t kPatterns[] = {0xa5, 0x5a, 0xc3, 0x3c, 0x7e};
  return kPatterns[rng() % 5];
}

std::vector<int32_t> token_counts(const std::vector<RankInput>& in) {
  std::vector<int32_t> n;
  for (const auto& r : in) n.push_back(r.o.n);
  return n;
}

}  // namespace

uint64_t case_seed(uint64_t fallback, int i) {
  const char* env = std::getenv("EPD_UNIT_SEED");
  const uint64_t base = env ? std::strtoull(env, nullptr, 0) : fallback;
  return base + static_cast<uint64_t>(i);
}

int case_count(int fallback) {
  const char* env = std::getenv("EPD_UNIT_CASES");
  return env ? std::atoi(env) : fallback;
}

void run_property_case(uint64_t seed, const CaseSpec& cs, Routing routing, InputEdit edit) {
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(cs.describe() + " routing=" + routing_name(routing));
  const epd_group_spec_t c = cs.c();
  char msg[256] = {};
  ASSERT_EQ(epd_group_spec_validate(&c, msg, sizeof msg), EPD_OK) << msg;
  const epd::GroupSpec spec = cs.group_spec();
  ASSERT_EQ(spec.expert_owner, cs.o.owner) << "expert_owner table differs from the contract's placement";
  Group g(spec, pick_pool(rng));

  const int32_t force_n = edit == InputEdit::kAllEmpty ? 0 : edit == InputEdit::kAllFull ? cs.o.max_tokens : -1;
  std::vector<RankInput> in = random_inputs(rng, cs.o, routing, force_n);
  const std::vector<OracleInput> oin = oracle_inputs(in);
  const OracleDispatch od = oracle_dispatch(cs.o, oin);
  std::vector<uint64_t> hashes;
  for (const auto& r : in) hashes.push_back(r.hash());

  const int32_t slot = static_cast<int32_t>(rng() % static_cast<uint64_t>(cs.o.slots));
  const uint8_t pattern = pick_pattern(rng);
  g.poison_all(pattern);
  const ExpertFn fn = random_expert_fn(rng, cs.o.num_experts);

  for (epd_weight_mode_t mode : valid_modes(cs.o.layout)) {
    SCOPED_TRACE("weight mode " + std::to_string(static_cast<int>(mode)) + ", slot " + std::to_string(slot));
    epd::Status st = stage_all(g, slot, in);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    poison_outputs(g, cs.o, slot, pattern);
    g.snapshot();
    st = g.exec().dispatch(slot);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    ASSERT_EQ(g.changed_outside(dispatch_outputs(g, cs.o, slot)), "") << "dispatch wrote outside its outputs";
    ASSERT_EQ(check_dispatch(g, cs.o, slot, od), "");
    ASSERT_EQ(check_conservation(g, cs.o, slot, oin), "");

    fill_expert_outputs(g, cs.o, slot, od, fn, mode, rng);
    // Combine must use the routing captured at dispatch: scribble over the send slot.
    if (rng() % 2) scribble_send_slot(g, cs.o, slot, rng);
    const auto expected = oracle_combine(cs.o, oin, od, mode, combine_in_ptrs(g, slot));
    g.snapshot();
    st = g.exec().combine(slot, mode);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    ASSERT_EQ(g.changed_outside(combine_outputs(g, slot, token_counts(in))), "")
        << "combine wrote outside rows [0, n) of combine_out";
    ASSERT_EQ(check_combine(g, cs.o, slot, expected), "");
  }
  for (size_t r = 0; r < in.size(); ++r) EXPECT_EQ(in[r].hash(), hashes[r]) << "caller inputs of rank " << r << " changed";
}

void run_interleaved_case(uint64_t seed, int order) {
  std::mt19937_64 rng(seed);
  const epd_layout_t layout = rng() % 2 ? EPD_LAYOUT_RANK_MAJOR : EPD_LAYOUT_EXPERT_MAJOR;
  const CaseSpec cs = random_spec(rng, layout, 12u << 20);
  const Routing ra = static_cast<Routing>(rng() % kRoutingCount), rb = static_cast<Routing>(rng() % kRoutingCount);
  SCOPED_TRACE(cs.describe() + " routing " + routing_name(ra) + " / " + routing_name(rb) + " order " +
               std::to_string(order));
  const epd::GroupSpec spec = cs.group_spec();
  ASSERT_TRUE(spec.validate().is_ok());
  Group g(spec, pick_pool(rng));
  const int32_t a = static_cast<int32_t>(rng() % static_cast<uint64_t>(cs.o.slots));
  const int32_t b = (a + 1 + static_cast<int32_t>(rng() % static_cast<uint64_t>(cs.o.slots - 1))) % cs.o.slots;
  const int32_t slot[2] = {a, b};
  std::vector<RankInput> in[2] = {random_inputs(rng, cs.o, ra), random_inputs(rng, cs.o, rb)};
  std::vector<OracleInput> oin[2] = {oracle_inputs(in[0]), oracle_inputs(in[1])};
  const OracleDispatch od[2] = {oracle_dispatch(cs.o, oin[0]), oracle_dispatch(cs.o, oin[1])};
  const auto modes = valid_modes(layout);
  const epd_weight_mode_t mode[2] = {modes[rng() % modes.size()], modes[rng() % modes.size()]};
  const uint8_t pattern = pick_pattern(rng);
  g.poison_all(pattern);
  for (int i = 0; i < 2; ++i) {
    epd::Status st = stage_all(g, slot[i], in[i]);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  const int first_dispatch = order & 1, first_combine = (order >> 1) & 1;
  for (int step = 0; step < 2; ++step) {
    const int i = step == 0 ? first_dispatch : 1 - first_dispatch;
    SCOPED_TRACE("dispatch slot " + std::to_string(slot[i]));
    g.snapshot();
    epd::Status st = g.exec().dispatch(slot[i]);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    ASSERT_EQ(g.changed_outside(dispatch_outputs(g, cs.o, slot[i])), "");
  }
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE("after both dispatches, slot " + std::to_string(slot[i]));
    ASSERT_EQ(check_dispatch(g, cs.o, slot[i], od[i]), "");
  }
  std::vector<std::vector<uint8_t>> expected[2];
  for (int i = 0; i < 2; ++i) {
    fill_expert_outputs(g, cs.o, slot[i], od[i], random_expert_fn(rng, cs.o.num_experts), mode[i], rng);
    expected[i] = oracle_combine(cs.o, oin[i], od[i], mode[i], combine_in_ptrs(g, slot[i]));
  }
  for (int step = 0; step < 2; ++step) {
    const int i = step == 0 ? first_combine : 1 - first_combine;
    SCOPED_TRACE("combine slot " + std::to_string(slot[i]));
    g.snapshot();
    epd::Status st = g.exec().combine(slot[i], mode[i]);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    ASSERT_EQ(g.changed_outside(combine_outputs(g, slot[i], token_counts(in[i]))), "");
  }
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE("after both combines, slot " + std::to_string(slot[i]));
    ASSERT_EQ(check_combine(g, cs.o, slot[i], expected[i]), "");
  }
}

}  // namespace epd_test
