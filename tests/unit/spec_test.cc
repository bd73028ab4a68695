// spec_test.cc — the group spec contract: every invalid field gets its own
// status and a message naming the value, through the C entry point and
// GroupSpec; comparison names the field and both values; every row of the
// field list survives the C struct and the JOIN wire codec; status strings.
// Also checks epd_group_workspace_bytes, deprecated (epd_group_spec_workspace_bytes
// replaces it) but exported until 0.3.
#define EPD_NO_DEPRECATION_WARNINGS
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "epd/types.h"
#include "protocol.h"
#include "spec.h"

namespace {

epd_group_spec_t valid_spec() {
  epd_group_spec_t s;
  epd_group_spec_init(&s);
  std::strcpy(s.name, "deepseek-v3.ep_8");
  s.generation = 3;
  s.world_size = 4;
  s.rank = 1;
  s.num_experts = 16;
  s.top_k = 4;
  s.hidden = 256;
  s.dtype = EPD_DTYPE_BF16;
  s.max_tokens_per_rank = 64;
  return s;
}

struct Validated {
  epd_status_t code;
  std::string message;
};

Validated validate(const epd_group_spec_t& s) {
  char msg[512];
  std::memset(msg, 'x', sizeof msg);
  Validated v;
  v.code = epd_group_spec_validate(&s, msg, sizeof msg);
  EXPECT_NE(std::memchr(msg, 0, sizeof msg), nullptr) << "message not NUL-terminated";
  v.message = msg;
  return v;
}

TEST(SpecValidate, DefaultsAndAValidSpecPass) {
  epd_group_spec_t s;
  std::memset(&s, 0x5a, sizeof s);
  epd_group_spec_init(&s);
  EXPECT_EQ(s.struct_size, sizeof(epd_group_spec_t));
  EXPECT_EQ(s.slots, 2);
  EXPECT_EQ(s.dtype, EPD_DTYPE_BF16);
  EXPECT_EQ(s.layout, EPD_LAYOUT_RANK_MAJOR);
  EXPECT_EQ(s.mode, EPD_MODE_HIGH_THROUGHPUT);
  EXPECT_EQ(s.timeout_ms, 30000u);
  EXPECT_EQ(s.placement, nullptr);
  EXPECT_EQ(s.expert_owner, nullptr);
  EXPECT_EQ(s.world_size, 0);

  const Validated v = validate(valid_spec());
  EXPECT_EQ(v.code, EPD_OK) << v.message;
  EXPECT_EQ(v.message, "");
  EXPECT_EQ(s.executor, EPD_EXECUTOR_DAEMON);

  // The inline executor with every rank on one GPU.
  static const epd_placement_t one_gpu[4] = {{0, 1}, {0, 1}, {0, 1}, {0, 1}};
  epd_group_spec_t in_line = valid_spec();
  in_line.placement = one_gpu;
  in_line.executor = EPD_EXECUTOR_INLINE;
  const Validated vi = validate(in_line);
  EXPECT_EQ(vi.code, EPD_OK) << vi.message;
}

struct BadField {
  const char* what;
  std::function<void(epd_group_spec_t&)> edit;
  epd_status_t code;
  const char* needle;  // the message must contain this (names the field and value)
};

TEST(SpecValidate, EveryInvalidFieldHasItsStatusAndNamesTheValue) {
  static const int32_t owner_out_of_range[16] = {0, 0, 4, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
  static const int32_t owner_negative[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1, 2, 3, 3, 3, 3};
  static const epd_placement_t placement_bad_node[4] = {{0, 0}, {0, 1}, {-2, 0}, {0, 3}};
  static const epd_placement_t placement_bad_gpu[4] = {{0, 0}, {0, -3}, {0, 2}, {0, 3}};
  static const epd_placement_t placement_two_gpus[4] = {{0, 0}, {0, 0}, {0, 1}, {0, 1}};
  static const epd_placement_t placement_two_nodes[4] = {{0, 0}, {0, 0}, {0, 0}, {1, 0}};
  const BadField cases[] = {
      {"world_size 0", [](auto& s) { s.world_size = 0; }, EPD_ERR_INVALID_SPEC, "world_size = 0"},
      {"world_size negative", [](auto& s) { s.world_size = -4; }, EPD_ERR_INVALID_SPEC, "world_size = -4"},
      {"world_size too large", [](auto& s) { s.world_size = EPD_MAX_WORLD_SIZE + 1; s.num_experts = 4096; },
       EPD_ERR_INVALID_SPEC, "world_size = 1025"},
      {"rank = world_size", [](auto& s) { s.rank = 4; }, EPD_ERR_INVALID_SPEC, "rank = 4"},
      {"rank negative", [](auto& s) { s.rank = -1; }, EPD_ERR_INVALID_SPEC, "rank = -1"},
      {"num_experts < world_size", [](auto& s) { s.num_experts = 3; s.top_k = 2; }, EPD_ERR_INVALID_SPEC,
       "num_experts = 3"},
      {"num_experts 0", [](auto& s) { s.num_experts = 0; }, EPD_ERR_INVALID_SPEC, "num_experts = 0"},
      {"num_experts too large", [](auto& s) { s.num_experts = EPD_MAX_EXPERTS + 1; }, EPD_ERR_INVALID_SPEC,
       "num_experts = 65537"},
      {"top_k 0", [](auto& s) { s.top_k = 0; }, EPD_ERR_INVALID_SPEC, "top_k = 0"},
      {"top_k > num_experts", [](auto& s) { s.top_k = 17; }, EPD_ERR_INVALID_SPEC, "top_k = 17"},
      {"top_k > EPD_MAX_TOP_K", [](auto& s) { s.num_experts = 128; s.top_k = 65; }, EPD_ERR_INVALID_SPEC,
       "top_k = 65"},
      {"hidden 0", [](auto& s) { s.hidden = 0; }, EPD_ERR_INVALID_SPEC, "hidden = 0"},
      {"hidden negative", [](auto& s) { s.hidden = -128; }, EPD_ERR_INVALID_SPEC, "hidden = -128"},
      {"fp8 with hidden 100", [](auto& s) { s.hidden = 100; s.dispatch_quant = EPD_QUANT_FP8_E4M3_BLOCK128; },
       EPD_ERR_FP8_ALIGNMENT, "hidden = 100"},
      {"fp8 with hidden 7000", [](auto& s) { s.hidden = 7000; s.dispatch_quant = EPD_QUANT_FP8_E4M3_BLOCK128; },
       EPD_ERR_FP8_ALIGNMENT, "hidden = 7000"},
      {"bad dtype", [](auto& s) { s.dtype = static_cast<epd_dtype_t>(7); }, EPD_ERR_INVALID_SPEC, "dtype = 7"},
      {"bad dispatch_quant", [](auto& s) { s.dispatch_quant = static_cast<epd_quant_t>(9); },
       EPD_ERR_INVALID_SPEC, "dispatch_quant = 9"},
      {"bad mode", [](auto& s) { s.mode = static_cast<epd_mode_t>(5); }, EPD_ERR_INVALID_SPEC, "mode = 5"},
      {"bad layout", [](auto& s) { s.layout = static_cast<epd_layout_t>(3); }, EPD_ERR_INVALID_SPEC,
       "layout = 3"},
      {"slots 1", [](auto& s) { s.slots = 1; }, EPD_ERR_INVALID_SPEC, "slots = 1"},
      {"slots 0", [](auto& s) { s.slots = 0; }, EPD_ERR_INVALID_SPEC, "slots = 0"},
      {"slots 9", [](auto& s) { s.slots = EPD_MAX_SLOTS + 1; }, EPD_ERR_INVALID_SPEC, "slots = 9"},
      {"max_tokens 0", [](auto& s) { s.max_tokens_per_rank = 0; }, EPD_ERR_INVALID_SPEC,
       "max_tokens_per_rank = 0"},
      {"sm_budget negative", [](auto& s) { s.sm_budget = -2; }, EPD_ERR_INVALID_SPEC, "sm_budget = -2"},
      {"bad executor", [](auto& s) { s.executor = static_cast<epd_executor_t>(7); }, EPD_ERR_INVALID_SPEC,
       "executor = 7"},
      {"inline on the host", [](auto& s) { s.executor = EPD_EXECUTOR_INLINE; }, EPD_ERR_INVALID_SPEC,
       "executor = inline needs every rank on one GPU of one node; placement[0] is node 0 gpu -1"},
      {"inline over two GPUs", [](auto& s) { s.executor = EPD_EXECUTOR_INLINE; s.placement = placement_two_gpus; },
       EPD_ERR_INVALID_SPEC, "placement[2] is node 0 gpu 1"},
      {"inline over two nodes", [](auto& s) { s.executor = EPD_EXECUTOR_INLINE; s.placement = placement_two_nodes; },
       EPD_ERR_INVALID_SPEC, "placement[3] is node 1 gpu 0"},
      {"expert_owner out of range", [](auto& s) { s.expert_owner = owner_out_of_range; }, EPD_ERR_INVALID_SPEC,
       "expert_owner[2] = 4"},
      {"expert_owner negative", [](auto& s) { s.expert_owner = owner_negative; }, EPD_ERR_INVALID_SPEC,
       "expert_owner[10] = -1"},
      {"placement node negative", [](auto& s) { s.placement = placement_bad_node; }, EPD_ERR_INVALID_SPEC,
       "placement[2].node = -2"},
      {"placement gpu below host", [](auto& s) { s.placement = placement_bad_gpu; }, EPD_ERR_INVALID_SPEC,
       "placement[1].gpu = -3"},
      {"name with a space", [](auto& s) { std::strcpy(s.name, "my group"); }, EPD_ERR_INVALID_SPEC,
       "name 'my group'"},
      {"name with a slash", [](auto& s) { std::strcpy(s.name, "a/b"); }, EPD_ERR_INVALID_SPEC, "'/'"},
      {"empty name", [](auto& s) { s.name[0] = 0; }, EPD_ERR_INVALID_SPEC, "name ''"},
      {"name without NUL", [](auto& s) { std::memset(s.name, 'a', EPD_NAME_MAX); }, EPD_ERR_INVALID_SPEC,
       "not NUL-terminated"},
      // The struct's size is an ABI argument, not a spec field.
      {"struct_size too small", [](auto& s) { s.struct_size = 8; }, EPD_ERR_INVALID_ARGUMENT,
       "struct_size = 8"},
  };
  for (const BadField& c : cases) {
    SCOPED_TRACE(c.what);
    epd_group_spec_t s = valid_spec();
    c.edit(s);
    const Validated v = validate(s);
    EXPECT_EQ(v.code, c.code) << epd_status_string(v.code) << ": " << v.message;
    EXPECT_NE(v.message.find(c.needle), std::string::npos) << "message '" << v.message << "' lacks '" << c.needle << "'";
    // The same through GroupSpec, when the C struct converts at all.
    auto g = epd::GroupSpec::from_c(s);
    const epd::Status st = g ? g->validate() : g.status();
    EXPECT_EQ(st.code(), c.code);
    EXPECT_EQ(st.message(), v.message);
    // And workspace sizing refuses the spec with the same status.
    uint64_t bytes = 12345;
    EXPECT_EQ(epd_group_workspace_bytes(&s, 0, &bytes), c.code);
    EXPECT_EQ(bytes, 12345u) << "output written on error";
  }
}

TEST(SpecValidate, NameCharacters) {
  for (const char* ok : {"a", "A.b_c-9", "0123456789", "x.y.z"}) {
    epd_group_spec_t s = valid_spec();
    std::strcpy(s.name, ok);
    EXPECT_EQ(validate(s).code, EPD_OK) << ok;
  }
  epd_group_spec_t s = valid_spec();
  std::memset(s.name, 'n', EPD_NAME_MAX - 1);
  s.name[EPD_NAME_MAX - 1] = 0;
  EXPECT_EQ(validate(s).code, EPD_OK) << "63 characters is the maximum";
  for (char bad : {' ', '/', ':', '*', '\t', '\x7f', '\xc3'}) {
    s = valid_spec();
    s.name[2] = bad;
    EXPECT_EQ(validate(s).code, EPD_ERR_INVALID_SPEC) << "character code " << static_cast<int>(bad);
  }
}

TEST(SpecValidate, NullArgumentsAndTruncatedMessages) {
  char msg[64];
  EXPECT_EQ(epd_group_spec_validate(nullptr, msg, sizeof msg), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(msg).find("NULL"), std::string::npos) << msg;
  epd_group_spec_t s = valid_spec();
  s.top_k = 0;
  EXPECT_EQ(epd_group_spec_validate(&s, nullptr, 0), EPD_ERR_INVALID_SPEC) << "msg may be NULL";
  char small[8];
  std::memset(small, 'x', sizeof small);
  EXPECT_EQ(epd_group_spec_validate(&s, small, sizeof small), EPD_ERR_INVALID_SPEC);
  EXPECT_EQ(small[7], '\0') << "a truncated message is still NUL-terminated";
  EXPECT_EQ(std::string(small), "top_k =");
  uint64_t bytes = 0;
  EXPECT_EQ(epd_group_workspace_bytes(nullptr, 0, &bytes), EPD_ERR_INVALID_ARGUMENT);
  s = valid_spec();
  EXPECT_EQ(epd_group_workspace_bytes(&s, 0, nullptr), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(epd_group_workspace_bytes(&s, 4, &bytes), EPD_ERR_INVALID_ARGUMENT) << "rank past world_size";
  EXPECT_EQ(epd_group_workspace_bytes(&s, -1, &bytes), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(epd_group_workspace_bytes(&s, 3, &bytes), EPD_OK);
  EXPECT_GT(bytes, 0u);
}

TEST(SpecFromC, FillsDefaultsAndCopiesArrays) {
  epd_group_spec_t s = valid_spec();
  s.timeout_ms = 0;
  auto g = epd::GroupSpec::from_c(s);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ(g->name, "deepseek-v3.ep_8");
  EXPECT_EQ(g->timeout_ms, 0u) << "0 (the daemon's default) is carried, not replaced";
  EXPECT_EQ(g->effective_timeout_ms(), epd::kDefaultTimeoutMs) << "a client's own waits";
  EXPECT_TRUE(g->validate().is_ok());
  ASSERT_EQ(g->placement.size(), 4u);
  for (const auto& p : g->placement) {
    EXPECT_EQ(p.node, 0);
    EXPECT_EQ(p.gpu, EPD_GPU_HOST);
  }
  ASSERT_EQ(g->expert_owner.size(), 16u);
  for (int32_t e = 0; e < 16; ++e) EXPECT_EQ(g->expert_owner[e], e / 4) << "contiguous: e / (E / W)";

  int32_t owner[16];
  for (int32_t e = 0; e < 16; ++e) owner[e] = (e * 7) % 4;
  s.expert_owner = owner;
  g = epd::GroupSpec::from_c(s);
  ASSERT_TRUE(g.is_ok());
  owner[0] = 3;  // the GroupSpec owns its copy
  EXPECT_EQ(g->expert_owner[0], 0);
  EXPECT_TRUE(g->validate().is_ok());
  // Local experts ascending, local index their position.
  const auto idx = g->local_index();
  for (int32_t r = 0; r < 4; ++r) {
    const auto local = g->local_experts(r);
    int32_t want = 0;
    for (int32_t e = 0; e < 16; ++e)
      if ((e * 7) % 4 == r) {
        ASSERT_LT(static_cast<size_t>(want), local.size());
        EXPECT_EQ(local[want], e);
        EXPECT_EQ(idx[e], want);
        ++want;
      }
    EXPECT_EQ(local.size(), static_cast<size_t>(want));
  }
  // Round trip through the C view.
  const epd_group_spec_t c = g->to_c();
  auto back = epd::GroupSpec::from_c(c);
  ASSERT_TRUE(back.is_ok());
  EXPECT_TRUE(back->compare(*g).is_ok()) << back->compare(*g).to_string();
  EXPECT_EQ(back->rank, g->rank);
  EXPECT_EQ(back->generation, g->generation);
}

TEST(SpecFromC, ContiguousDefaultWithUnevenCounts) {
  for (int32_t W = 1; W <= 16; ++W) {
    for (int32_t E = W; E <= 70; ++E) {
      std::vector<int32_t> count(static_cast<size_t>(W), 0);
      int32_t prev = 0;
      for (int32_t e = 0; e < E; ++e) {
        const int32_t r = epd::GroupSpec::contiguous_owner(e, E, W);
        ASSERT_TRUE(r == prev || r == prev + 1) << "not contiguous: E=" << E << " W=" << W << " e=" << e;
        prev = r;
        count[r]++;
      }
      for (int32_t r = 0; r < W; ++r) {
        // balanced: floor or ceil, the larger shares first
        const int32_t want = E / W + (r < E % W ? 1 : 0);
        ASSERT_EQ(count[r], want) << "E=" << E << " W=" << W << " r=" << r;
      }
      if (E % W == 0) {
        for (int32_t e = 0; e < E; ++e) ASSERT_EQ(epd::GroupSpec::contiguous_owner(e, E, W), e / (E / W));
      }
    }
  }
}

TEST(SpecCompare, NamesFieldAndBothValues) {
  auto base = epd::GroupSpec::from_c(valid_spec());
  ASSERT_TRUE(base.is_ok());
  struct Diff {
    std::function<void(epd::GroupSpec&)> edit;
    const char* needle;
  };
  const Diff diffs[] = {
      {[](auto& g) { g.name = "other"; }, "name: group has 'deepseek-v3.ep_8', join has 'other'"},
      {[](auto& g) { g.world_size = 8; }, "world_size: group has 4, join has 8"},
      {[](auto& g) { g.num_experts = 32; }, "num_experts: group has 16, join has 32"},
      {[](auto& g) { g.top_k = 2; }, "top_k: group has 4, join has 2"},
      {[](auto& g) { g.hidden = 7168; }, "hidden: group has 256, join has 7168"},
      {[](auto& g) { g.dtype = EPD_DTYPE_FP16; }, "dtype: group has bf16, join has fp16"},
      {[](auto& g) { g.dispatch_quant = EPD_QUANT_FP8_E4M3_BLOCK128; }, "dispatch_quant: group has none, join has fp8_e4m3"},
      {[](auto& g) { g.max_tokens_per_rank = 4096; }, "max_tokens_per_rank: group has 64, join has 4096"},
      {[](auto& g) { g.mode = EPD_MODE_LOW_LATENCY; }, "mode: group has high_throughput, join has low_latency"},
      {[](auto& g) { g.layout = EPD_LAYOUT_EXPERT_MAJOR; }, "layout: group has rank_major, join has expert_major"},
      {[](auto& g) { g.slots = 3; }, "slots: group has 2, join has 3"},
      {[](auto& g) { g.timeout_ms = 5000; }, "timeout_ms: group has 30000, join has 5000"},
      {[](auto& g) { g.sm_budget = 20; }, "sm_budget: group has 0, join has 20"},
      {[](auto& g) { g.executor = EPD_EXECUTOR_INLINE; }, "executor: group has daemon, join has inline"},
      {[](auto& g) { g.placement[2] = {1, 5}; }, "placement[2]: group has node 0 gpu -1, join has node 1 gpu 5"},
      {[](auto& g) { g.expert_owner[5] = 3; }, "expert_owner[5]: group has 1, join has 3"},
  };
  for (const Diff& d : diffs) {
    epd::GroupSpec other = base.value();
    d.edit(other);
    const epd::Status st = base->compare(other);
    EXPECT_EQ(st.code(), EPD_ERR_SPEC_MISMATCH) << d.needle;
    EXPECT_NE(st.message().find(d.needle), std::string::npos) << "'" << st.message() << "' lacks '" << d.needle << "'";
  }
  epd::GroupSpec other = base.value();
  other.rank = 3;
  other.generation = 99;
  EXPECT_TRUE(base->compare(other).is_ok()) << "rank and generation are not compared";
}

// ---- the field list (core/spec_fields.h), row by row ---------------------------------
// Each test walks the list itself, so a new row is covered without editing
// them; one that a site does not carry fails here.

// A value of the field other than `v` that keeps the spec valid: an integer
// one larger, an enum the next name in its table.
template <typename T>
T other_value(T v) {
  if constexpr (std::is_enum_v<T>) {
    const auto& names = epd::EnumNames<T>::kNames;
    const size_t n = sizeof names / sizeof names[0];
    for (size_t i = 0; i < n; ++i)
      if (names[i].value == v) return names[(i + 1) % n].value;
    return names[0].value;
  } else {
    return static_cast<T>(v + 1);
  }
}

// The arrays sized for world_size / num_experts again, after one of them changed.
void fit_arrays(epd::GroupSpec& g) {
  // The inline executor needs every rank on one GPU.
  const int32_t gpu = g.executor == EPD_EXECUTOR_INLINE ? 0 : EPD_GPU_HOST;
  g.placement.assign(static_cast<size_t>(g.world_size), epd_placement_t{0, gpu});
  g.expert_owner.resize(static_cast<size_t>(g.num_experts));
  for (int32_t e = 0; e < g.num_experts; ++e)
    g.expert_owner[e] = epd::GroupSpec::contiguous_owner(e, g.num_experts, g.world_size);
}

// Every scalar row of `a` and `b` equal (compare() skips rank and generation).
void expect_same_fields(const epd::GroupSpec& a, const epd::GroupSpec& b, const std::string& how) {
  epd::for_each_spec_field([&](const auto& f) {
    if constexpr (!epd::kIsSpecHand<decltype(f)>) {
      EXPECT_EQ(epd::spec_value_text(a.*f.member), epd::spec_value_text(b.*f.member)) << f.name << " after " << how;
    }
  });
  EXPECT_TRUE(a.compare(b).is_ok()) << how << ": " << a.compare(b).message();
}

// Calls test(spec, field name) once per scalar row, with that row changed.
template <typename Test>
void for_each_changed_row(const epd::GroupSpec& base, Test&& test) {
  epd::for_each_spec_field([&](const auto& f) {
    if constexpr (!epd::kIsSpecHand<decltype(f)>) {
      epd::GroupSpec g = base;
      g.*f.member = other_value(g.*f.member);
      fit_arrays(g);
      SCOPED_TRACE(f.name);
      ASSERT_TRUE(g.validate().is_ok()) << g.validate().message();
      test(g, f.name);
    }
  });
}

TEST(SpecFields, InitWritesEveryRowsDefault) {
  epd_group_spec_t c;
  std::memset(&c, 0x5a, sizeof c);
  epd_group_spec_init(&c);
  const epd::GroupSpec cpp;
  int rows = 0;
  epd::for_each_spec_field([&](const auto& f) {
    if constexpr (!epd::kIsSpecHand<decltype(f)>) {
      ++rows;
      EXPECT_EQ(c.*f.c_member, f.c_default) << f.name;
      EXPECT_EQ(cpp.*f.member, f.c_default) << f.name << ": GroupSpec starts at the C default";
    }
  });
  EXPECT_EQ(rows, 15);
  EXPECT_EQ(c.timeout_ms, epd::kDefaultTimeoutMs);
}

TEST(SpecFields, EveryRowRoundTripsThroughTheCStructAndTheWire) {
  auto base = epd::GroupSpec::from_c(valid_spec());
  ASSERT_TRUE(base.is_ok());
  for_each_changed_row(*base, [](const epd::GroupSpec& g, const char* field) {
    const epd_group_spec_t c = g.to_c();
    auto back = epd::GroupSpec::from_c(c);
    ASSERT_TRUE(back.is_ok()) << back.status().message();
    expect_same_fields(g, *back, std::string("to_c / from_c of ") + field);

    const std::vector<uint8_t> record = epd::proto::encode(epd::proto::Join{g}, 7);
    auto frame = epd::proto::decode_frame(record.data(), record.size());
    ASSERT_TRUE(frame.is_ok()) << frame.status().message();
    auto join = epd::proto::decode_join(*frame);
    ASSERT_TRUE(join.is_ok()) << join.status().message();
    expect_same_fields(g, join->spec, std::string("JOIN encode / decode of ") + field);
  });
}

// A client of protocol 1.2 sends no executor (the field came with 1.3): its
// JOIN decodes with the default, and the rest of the spec is intact.
TEST(SpecWire, JoinOfMinorTwoHasNoExecutorAndGetsTheDefault) {
  auto base = epd::GroupSpec::from_c(valid_spec());
  ASSERT_TRUE(base.is_ok());
  epd::GroupSpec g = *base;
  g.executor = EPD_EXECUTOR_DAEMON;
  std::vector<uint8_t> record = epd::proto::encode(epd::proto::Join{g}, 7);
  // The executor is the u32 before the placement count (world_size), the
  // placement entries and the owner kind (contiguous: one byte).
  const size_t tail = 4 + 8 * static_cast<size_t>(g.world_size) + 1;
  ASSERT_GT(record.size(), epd::proto::kHeaderBytes + tail + 4);
  const size_t at = record.size() - tail - 4;
  uint32_t executor = 99, count = 0;
  std::memcpy(&executor, record.data() + at, 4);
  std::memcpy(&count, record.data() + at + 4, 4);
  ASSERT_EQ(executor, 0u);
  ASSERT_EQ(count, static_cast<uint32_t>(g.world_size));
  record.erase(record.begin() + static_cast<std::ptrdiff_t>(at), record.begin() + static_cast<std::ptrdiff_t>(at) + 4);
  const uint16_t minor = 2;
  std::memcpy(record.data() + 6, &minor, 2);
  const uint32_t length = static_cast<uint32_t>(record.size() - epd::proto::kHeaderBytes);
  std::memcpy(record.data() + 12, &length, 4);
  auto frame = epd::proto::decode_frame(record.data(), record.size());
  ASSERT_TRUE(frame.is_ok()) << frame.status().message();
  auto join = epd::proto::decode_join(*frame);
  ASSERT_TRUE(join.is_ok()) << join.status().message();
  EXPECT_EQ(join->spec.executor, EPD_EXECUTOR_DAEMON);
  expect_same_fields(g, join->spec, "JOIN of minor 2");
  // The same bytes read as minor 3 are one field short: refused, not misread.
  const uint16_t three = 3;
  std::memcpy(record.data() + 6, &three, 2);
  auto frame3 = epd::proto::decode_frame(record.data(), record.size());
  ASSERT_TRUE(frame3.is_ok());
  EXPECT_FALSE(epd::proto::decode_join(*frame3).is_ok());
}

// An enum field on the wire that names no value is refused by the decoder,
// naming field and value (it never becomes an enum value nobody named).
TEST(SpecWire, JoinWithAnUnknownEnumValueIsRefusedNamingIt) {
  auto base = epd::GroupSpec::from_c(valid_spec());
  ASSERT_TRUE(base.is_ok());
  std::vector<uint8_t> record = epd::proto::encode(epd::proto::Join{*base}, 7);
  // name (u32 length + bytes), generation (u64), world_size, rank, num_experts, top_k, hidden (i32), dtype (u32).
  const size_t at = epd::proto::kHeaderBytes + 4 + base->name.size() + 8 + 5 * 4;
  ASSERT_LT(at + 4, record.size());
  uint32_t dtype = 99;
  std::memcpy(&dtype, record.data() + at, 4);
  ASSERT_EQ(dtype, static_cast<uint32_t>(base->dtype)) << "the dtype is not where the test expects it";
  const uint32_t bad = 8388608;
  std::memcpy(record.data() + at, &bad, 4);
  auto frame = epd::proto::decode_frame(record.data(), record.size());
  ASSERT_TRUE(frame.is_ok()) << frame.status().message();
  auto join = epd::proto::decode_join(*frame);
  ASSERT_FALSE(join.is_ok());
  EXPECT_EQ(join.status().code(), EPD_ERR_PROTOCOL);
  EXPECT_NE(join.status().message().find("dtype = 8388608 is not a known epd_dtype_t"), std::string::npos)
      << join.status().message();
}

TEST(SpecFields, EveryComparedRowIsComparedAndNamed) {
  auto base = epd::GroupSpec::from_c(valid_spec());
  ASSERT_TRUE(base.is_ok());
  std::set<std::string> not_compared;
  epd::for_each_spec_field([&](const auto& f) {
    if constexpr (!epd::kIsSpecHand<decltype(f)>) {
      if (!f.has(epd::kSpecCompared)) {
        not_compared.insert(f.name);
        return;
      }
      epd::GroupSpec other = *base;
      other.*f.member = other_value(other.*f.member);
      fit_arrays(other);
      const epd::Status st = base->compare(other);
      EXPECT_EQ(st.code(), EPD_ERR_SPEC_MISMATCH) << f.name;
      const std::string want = std::string(f.name) + ": group has " + epd::spec_value_text(base.value().*f.member) +
                               ", join has " + epd::spec_value_text(other.*f.member);
      EXPECT_EQ(st.message(), want);
    }
  });
  EXPECT_EQ(not_compared, (std::set<std::string>{"generation", "rank"})) << "a join may differ only in these";
}

TEST(SpecFields, EveryCheckedRowNamesItsFieldAndValue) {
  int checked = 0;
  epd::for_each_spec_field([&](const auto& f) {
    if constexpr (!epd::kIsSpecHand<decltype(f)>) {
      using T = typename std::decay_t<decltype(f)>::Type;
      std::vector<std::pair<T, std::string>> bad;  // value, the message's end
      if constexpr (std::is_enum_v<T>) {
        if (f.check == epd::SpecCheck::kEnum) bad.push_back({static_cast<T>(99), " is not a known "});
      } else {
        if (f.check == epd::SpecCheck::kRange) {
          const std::string bounds = " is outside [" + std::to_string(f.lo) + ", " + std::to_string(f.hi) + "]";
          bad.push_back({static_cast<T>(f.lo - 1), bounds});
          bad.push_back({static_cast<T>(f.hi + 1), bounds});
        }
        if (f.check == epd::SpecCheck::kNonNegative) bad.push_back({static_cast<T>(-1), " is negative"});
      }
      for (const auto& [value, why] : bad) {
        ++checked;
        epd_group_spec_t c = valid_spec();
        c.*f.c_member = value;
        const Validated v = validate(c);
        EXPECT_EQ(v.code, EPD_ERR_INVALID_SPEC) << f.name;
        const std::string want =
            std::string(f.name) + " = " + std::to_string(static_cast<long long>(value)) + why;
        EXPECT_EQ(v.message.rfind(want, 0), 0u) << "'" << v.message << "' does not start with '" << want << "'";
      }
    }
  });
  EXPECT_GE(checked, 13);
}

// A C caller may store any int in an enum field: from_c names it before the
// bits are ever read as the C++ enum type.
TEST(SpecFromC, EnumFieldBitsNamingNoValueAreRefusedNamingThem) {
  epd_group_spec_t c = valid_spec();
  const int32_t bits = 0x7fffffff;
  std::memcpy(&c.mode, &bits, sizeof bits);
  auto g = epd::GroupSpec::from_c(c);
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().code(), EPD_ERR_INVALID_SPEC);
  EXPECT_EQ(g.status().message(), "mode = 2147483647 is not a known epd_mode_t");
  c = valid_spec();
  const int32_t negative = -3;
  std::memcpy(&c.layout, &negative, sizeof negative);
  g = epd::GroupSpec::from_c(c);
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().message(), "layout = -3 is not a known epd_layout_t");
}

TEST(SpecTimeout, ZeroIsTheDaemonsDefault) {
  auto g = epd::GroupSpec::from_c(valid_spec());
  ASSERT_TRUE(g.is_ok());
  g->timeout_ms = 0;
  // 0 crosses the wire unchanged; the daemon then resolves it.
  const std::vector<uint8_t> record = epd::proto::encode(epd::proto::Join{*g}, 1);
  auto join = epd::proto::decode_join(*epd::proto::decode_frame(record.data(), record.size()));
  ASSERT_TRUE(join.is_ok()) << join.status().message();
  EXPECT_EQ(join->spec.timeout_ms, 0u);
  EXPECT_EQ(join->spec.effective_timeout_ms(), epd::kDefaultTimeoutMs);
  join->spec.resolve_timeout(45000);
  EXPECT_EQ(join->spec.timeout_ms, 45000u);
  EXPECT_EQ(join->spec.effective_timeout_ms(), 45000u);
  join->spec.resolve_timeout(1000);
  EXPECT_EQ(join->spec.timeout_ms, 45000u) << "a timeout the spec gives is kept";
  // Two ranks that both said 0 join the same group once each is resolved.
  epd::GroupSpec other = *g;
  other.rank = 2;
  other.resolve_timeout(45000);
  EXPECT_TRUE(join->spec.compare(other).is_ok());
}

TEST(SpecNames, ParseAndPrintRoundTrip) {
  for (epd_dtype_t d : {EPD_DTYPE_BF16, EPD_DTYPE_FP16, EPD_DTYPE_FP32}) {
    auto p = epd::parse_dtype(epd::dtype_name(d));
    ASSERT_TRUE(p.is_ok());
    EXPECT_EQ(p.value(), d);
  }
  for (epd_layout_t l : {EPD_LAYOUT_RANK_MAJOR, EPD_LAYOUT_EXPERT_MAJOR}) {
    auto p = epd::parse_layout(epd::layout_name(l));
    ASSERT_TRUE(p.is_ok());
    EXPECT_EQ(p.value(), l);
  }
  for (epd_weight_mode_t w : {EPD_WEIGHTS_APPLY, EPD_WEIGHTS_ALREADY_APPLIED, EPD_WEIGHTS_ONES}) {
    auto p = epd::parse_weight_mode(epd::weight_mode_name(w));
    ASSERT_TRUE(p.is_ok());
    EXPECT_EQ(p.value(), w);
  }
  EXPECT_EQ(epd::parse_mode("low_latency").value(), EPD_MODE_LOW_LATENCY);
  EXPECT_EQ(epd::parse_quant("fp8_e4m3").value(), EPD_QUANT_FP8_E4M3_BLOCK128);
  auto bad = epd::parse_layout("column_major");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(bad.status().message().find("'column_major'"), std::string::npos) << bad.status().message();
  EXPECT_NE(bad.status().message().find("rank_major"), std::string::npos) << "lists the options";
  EXPECT_EQ(epd::dtype_bytes(EPD_DTYPE_BF16), 2u);
  EXPECT_EQ(epd::dtype_bytes(EPD_DTYPE_FP16), 2u);
  EXPECT_EQ(epd::dtype_bytes(EPD_DTYPE_FP32), 4u);
}

TEST(StatusString, DistinctNamedAndNeverNull) {
#define EPD_STATUS_CASE(x) {x, #x}
  const struct {
    epd_status_t code;
    const char* name;
  } all[] = {
      EPD_STATUS_CASE(EPD_OK), EPD_STATUS_CASE(EPD_ERR_INVALID_ARGUMENT), EPD_STATUS_CASE(EPD_ERR_INVALID_SPEC),
      EPD_STATUS_CASE(EPD_ERR_EXPERT_ID_OUT_OF_RANGE), EPD_STATUS_CASE(EPD_ERR_CAPACITY_EXCEEDED),
      EPD_STATUS_CASE(EPD_ERR_FP8_ALIGNMENT), EPD_STATUS_CASE(EPD_ERR_UNSUPPORTED), EPD_STATUS_CASE(EPD_ERR_BAD_SLOT),
      EPD_STATUS_CASE(EPD_ERR_NO_DISPATCH), EPD_STATUS_CASE(EPD_ERR_SPEC_MISMATCH),
      EPD_STATUS_CASE(EPD_ERR_DUPLICATE_RANK), EPD_STATUS_CASE(EPD_ERR_STALE_GENERATION),
      EPD_STATUS_CASE(EPD_ERR_UNKNOWN_GROUP), EPD_STATUS_CASE(EPD_ERR_VERSION_MISMATCH),
      EPD_STATUS_CASE(EPD_ERR_PROTOCOL), EPD_STATUS_CASE(EPD_ERR_TIMEOUT), EPD_STATUS_CASE(EPD_ERR_PEER_LOST),
      EPD_STATUS_CASE(EPD_ERR_DAEMON_LOST), EPD_STATUS_CASE(EPD_ERR_PERMISSION), EPD_STATUS_CASE(EPD_ERR_NO_MEMORY),
      EPD_STATUS_CASE(EPD_ERR_SYSTEM), EPD_STATUS_CASE(EPD_ERR_CUDA), EPD_STATUS_CASE(EPD_ERR_GPU_UNAVAILABLE),
      EPD_STATUS_CASE(EPD_ERR_SLOT_BUSY), EPD_STATUS_CASE(EPD_ERR_SHUTTING_DOWN), EPD_STATUS_CASE(EPD_ERR_NOT_JOINED),
      EPD_STATUS_CASE(EPD_ERR_BAD_WEIGHT_MODE), EPD_STATUS_CASE(EPD_ERR_RDMA), EPD_STATUS_CASE(EPD_ERR_INTERNAL),
      EPD_STATUS_CASE(EPD_ERR_DEVICE_FAULT), EPD_STATUS_CASE(EPD_ERR_GROUP_CLOSED), EPD_STATUS_CASE(EPD_ERR_NOT_OWNER),
      EPD_STATUS_CASE(EPD_ERR_QUOTA_EXCEEDED),
  };
#undef EPD_STATUS_CASE
  std::set<std::string> seen;
  for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) {
    EXPECT_EQ(all[i].code, -static_cast<int>(i)) << "codes are stable: OK = 0, then -1, -2, ...";
    const char* s = epd_status_string(all[i].code);
    ASSERT_NE(s, nullptr) << all[i].name;
    const std::string str(s);
    EXPECT_EQ(str.rfind(std::string(all[i].name) + ":", 0), 0u) << "'" << str << "' does not start with its name";
    EXPECT_TRUE(seen.insert(str).second) << "duplicate string " << str;
  }
  for (int unknown : {1, -33, 33}) {
    const char* s = epd_status_string(static_cast<epd_status_t>(unknown));
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(seen.count(s), 0u) << "unknown code " << unknown << " reuses a known string";
  }
  const epd::Status st(EPD_ERR_TIMEOUT, "waited 30000 ms");
  EXPECT_EQ(st.to_string(), std::string(epd_status_string(EPD_ERR_TIMEOUT)) + " (waited 30000 ms)");
  const epd::Status made = epd::make_status(EPD_ERR_BAD_SLOT, "slot = %d", 9);
  EXPECT_EQ(made.code(), EPD_ERR_BAD_SLOT);
  EXPECT_EQ(made.message(), "slot = 9");
  EXPECT_TRUE(epd::Status::ok().is_ok());
}

}  // namespace
