// executor_error_test.cc — every invalid input to staging, dispatch and combine
// gets its specific status, a message naming the value, and writes nothing
// (workspaces are poisoned and compared byte for byte); the executor keeps
// working after an error.
#include <gtest/gtest.h>

#include <climits>
#include <cstring>
#include <string>

#include "harness.h"

namespace epd_test {
namespace {

constexpr int32_t kW = 4, kE = 16, kK = 4, kH = 128, kM = 8;

class ExecutorErrors : public ::testing::TestWithParam<epd_layout_t> {
 protected:
  void SetUp() override {
    cs_ = make_case_spec(kW, kE, kK, kH, EPD_DTYPE_BF16, true, kM, GetParam(), 3);
    g_ = std::make_unique<Group>(cs_.group_spec());
    std::mt19937_64 rng(42 + static_cast<int>(GetParam()));
    in_ = random_inputs(rng, cs_.o, Routing::kUniform, kM);
    g_->poison_all(0xa5);
  }

  // Stages every rank into `slot`; all must succeed.
  void stage(int32_t slot) {
    const epd::Status st = stage_all(*g_, slot, in_);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }

  void expect_error(const epd::Status& st, epd_status_t code, const std::string& needle) {
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_NE(st.message().find(needle), std::string::npos) << "'" << st.message() << "' lacks '" << needle << "'";
  }

  int32_t* send_ids(int32_t r, int32_t slot) {
    return reinterpret_cast<int32_t*>(g_->base(r) + g_->layout(r).slot[slot].send_ids);
  }

  CaseSpec cs_;
  std::unique_ptr<Group> g_;
  std::vector<RankInput> in_;
};

TEST_P(ExecutorErrors, StagingRejectsIdsOutOfRangeAndWritesNothing) {
  struct Bad {
    epd_id_dtype_t dtype;
    int64_t value;
  };
  const Bad bads[] = {{EPD_ID_INT32, kE},          {EPD_ID_INT32, 300},          {EPD_ID_INT32, -2},
                      {EPD_ID_INT32, INT32_MIN},   {EPD_ID_INT64, kE},           {EPD_ID_INT64, -2},
                      {EPD_ID_INT64, (1LL << 32) + 1}, {EPD_ID_INT64, -(1LL << 32) - 1}, {EPD_ID_INT64, INT64_MAX}};
  for (const Bad& b : bads) {
    SCOPED_TRACE("id " + std::to_string(b.value) + (b.dtype == EPD_ID_INT32 ? " int32" : " int64"));
    RankInput r = in_[1];
    r.id_dtype = b.dtype;
    r.o.ids[3 * kK + 2] = b.value;
    sync_ids(r);
    g_->snapshot();
    const epd::Status st = epd::stage_dispatch_inputs(g_->spec(), g_->layout(1), g_->base(1), 0, r.view());
    expect_error(st, EPD_ERR_EXPERT_ID_OUT_OF_RANGE, "topk_ids[3][2] = " + std::to_string(b.value));
    EXPECT_EQ(g_->changed_anywhere(), "") << "staging wrote on error";
  }
}

TEST_P(ExecutorErrors, StagingRejectsAnExpertTwiceInOneToken) {
  RankInput r = in_[0];
  r.o.ids[2 * kK + 0] = 5;
  r.o.ids[2 * kK + 1] = -1;
  r.o.ids[2 * kK + 2] = -1;  // several masked k are fine
  r.o.ids[2 * kK + 3] = 5;
  sync_ids(r);
  g_->snapshot();
  const epd::Status st = epd::stage_dispatch_inputs(g_->spec(), g_->layout(0), g_->base(0), 0, r.view());
  expect_error(st, EPD_ERR_INVALID_ARGUMENT, "topk_ids[2] lists expert 5 twice");
  EXPECT_EQ(g_->changed_anywhere(), "");
  r.o.ids[2 * kK + 3] = 6;
  sync_ids(r);
  EXPECT_TRUE(epd::stage_dispatch_inputs(g_->spec(), g_->layout(0), g_->base(0), 0, r.view()).is_ok());
}

TEST_P(ExecutorErrors, StagingRejectsCapacitySlotPointersAndIdDtype) {
  const auto stage_one = [&](const epd::DispatchInputs& v, int32_t slot) {
    return epd::stage_dispatch_inputs(g_->spec(), g_->layout(2), g_->base(2), slot, v);
  };
  g_->snapshot();
  // A larger call is an error, never a truncation (inputs sized for it).
  RankInput big = in_[2];
  big.o.n = kM + 1;
  big.o.x.resize(static_cast<size_t>(kM + 1) * kH * 2, 0);
  big.o.ids.resize(static_cast<size_t>(kM + 1) * kK, -1);
  big.o.weights.resize(static_cast<size_t>(kM + 1) * kK, 0.5f);
  sync_ids(big);
  expect_error(stage_one(big.view(), 0), EPD_ERR_CAPACITY_EXCEEDED, "n_tokens = 9");
  epd::DispatchInputs v = in_[2].view();
  v.n_tokens = -1;
  expect_error(stage_one(v, 0), EPD_ERR_INVALID_ARGUMENT, "n_tokens = -1 is negative");
  expect_error(stage_one(in_[2].view(), -1), EPD_ERR_BAD_SLOT, "slot = -1");
  expect_error(stage_one(in_[2].view(), 3), EPD_ERR_BAD_SLOT, "slot = 3");
  v = in_[2].view();
  v.x = nullptr;
  expect_error(stage_one(v, 0), EPD_ERR_INVALID_ARGUMENT, "x is NULL");
  v = in_[2].view();
  v.topk_ids = nullptr;
  expect_error(stage_one(v, 0), EPD_ERR_INVALID_ARGUMENT, "topk_ids is NULL");
  v = in_[2].view();
  v.id_dtype = static_cast<epd_id_dtype_t>(2);
  expect_error(stage_one(v, 0), EPD_ERR_INVALID_ARGUMENT, "id_dtype = 2");
  EXPECT_EQ(g_->changed_anywhere(), "") << "staging wrote on error";
  // n_tokens 0 with NULL pointers is a valid (empty) call.
  epd::DispatchInputs empty;
  EXPECT_TRUE(stage_one(empty, 0).is_ok());
}

TEST_P(ExecutorErrors, DispatchRejectsIdsCorruptedInTheSendSlotNamingTheRank) {
  const int64_t token1[kK] = {4, 9, -1, 12};
  std::copy(token1, token1 + kK, in_[2].o.ids.begin() + kK);
  sync_ids(in_[2]);
  stage(1);
  ASSERT_TRUE(g_->exec().dispatch(1).is_ok());
  struct Corrupt {
    int32_t value;
    epd_status_t code;
    std::string needle;
  };
  const int32_t dup = 4;
  const Corrupt corrupt[] = {
      {kE + 5, EPD_ERR_EXPERT_ID_OUT_OF_RANGE, "rank 2: topk_ids[1][3] = 21"},
      {-7, EPD_ERR_EXPERT_ID_OUT_OF_RANGE, "rank 2: topk_ids[1][3] = -7"},
      {INT32_MAX, EPD_ERR_EXPERT_ID_OUT_OF_RANGE, "rank 2: topk_ids[1][3] = 2147483647"},
      {dup, EPD_ERR_INVALID_ARGUMENT, "rank 2: topk_ids[1] lists expert " + std::to_string(dup) + " twice"},
  };
  for (const Corrupt& c : corrupt) {
    SCOPED_TRACE(c.needle);
    stage(1);
    ASSERT_TRUE(g_->exec().dispatch(1).is_ok());
    send_ids(2, 1)[1 * kK + 3] = c.value;
    poison_outputs(*g_, cs_.o, 1, 0x3c);
    g_->snapshot();
    expect_error(g_->exec().dispatch(1), c.code, c.needle);
    EXPECT_EQ(g_->changed_anywhere(), "") << "a failed dispatch wrote";
    // The failed dispatch leaves nothing to combine (no stale routing).
    expect_error(g_->exec().combine(1, EPD_WEIGHTS_ONES), EPD_ERR_NO_DISPATCH, "slot 1");
    EXPECT_EQ(g_->changed_anywhere(), "");
  }
}

TEST_P(ExecutorErrors, DispatchRejectsATokenCountCorruptedInTheSendSlot) {
  for (uint32_t n : {static_cast<uint32_t>(kM + 1), 0xffffffffu, 0x80000000u}) {
    SCOPED_TRACE(n);
    stage(0);
    std::memcpy(g_->base(3) + g_->layout(3).slot[0].send_hdr, &n, 4);
    poison_outputs(*g_, cs_.o, 0, 0x3c);
    g_->snapshot();
    expect_error(g_->exec().dispatch(0), EPD_ERR_CAPACITY_EXCEEDED, "rank 3: n_tokens = ");
    EXPECT_EQ(g_->changed_anywhere(), "");
  }
}

TEST_P(ExecutorErrors, BadSlotsNoDispatchAndWeightModes) {
  g_->snapshot();
  for (int32_t slot : {-1, 3, 100, INT32_MIN}) {
    expect_error(g_->exec().dispatch(slot), EPD_ERR_BAD_SLOT, "slot = " + std::to_string(slot));
    expect_error(g_->exec().combine(slot, EPD_WEIGHTS_ONES), EPD_ERR_BAD_SLOT, "slot = " + std::to_string(slot));
  }
  expect_error(g_->exec().combine(0, EPD_WEIGHTS_ONES), EPD_ERR_NO_DISPATCH, "slot 0");
  expect_error(g_->exec().combine(2, EPD_WEIGHTS_ALREADY_APPLIED), EPD_ERR_NO_DISPATCH, "slot 2");
  EXPECT_EQ(g_->changed_anywhere(), "");

  stage(2);
  ASSERT_TRUE(g_->exec().dispatch(2).is_ok());
  g_->snapshot();
  expect_error(g_->exec().combine(2, static_cast<epd_weight_mode_t>(7)), EPD_ERR_BAD_WEIGHT_MODE, "7");
  if (GetParam() == EPD_LAYOUT_RANK_MAJOR)
    expect_error(g_->exec().combine(2, EPD_WEIGHTS_APPLY), EPD_ERR_BAD_WEIGHT_MODE, "apply");
  EXPECT_EQ(g_->changed_anywhere(), "") << "a refused combine wrote";
  // A refused combine leaves the dispatch in place.
  EXPECT_TRUE(g_->exec().combine(2, valid_modes(GetParam()).front()).is_ok());
  // A dispatch on one slot is no dispatch for another.
  expect_error(g_->exec().combine(1, EPD_WEIGHTS_ONES), EPD_ERR_NO_DISPATCH, "slot 1");
}

TEST_P(ExecutorErrors, ExecutorWorksAfterErrors) {
  stage(0);
  send_ids(0, 0)[0] = kE;
  ASSERT_EQ(g_->exec().dispatch(0).code(), EPD_ERR_EXPERT_ID_OUT_OF_RANGE);
  stage(0);
  poison_outputs(*g_, cs_.o, 0, 0xc3);
  ASSERT_TRUE(g_->exec().dispatch(0).is_ok());
  const auto oin = oracle_inputs(in_);
  const OracleDispatch od = oracle_dispatch(cs_.o, oin);
  EXPECT_EQ(check_dispatch(*g_, cs_.o, 0, od), "");
  std::mt19937_64 rng(7);
  const epd_weight_mode_t mode = valid_modes(GetParam()).back();
  fill_expert_outputs(*g_, cs_.o, 0, od, random_expert_fn(rng, kE), mode, rng);
  const auto want = oracle_combine(cs_.o, oin, od, mode, combine_in_ptrs(*g_, 0));
  ASSERT_TRUE(g_->exec().combine(0, mode).is_ok());
  EXPECT_EQ(check_combine(*g_, cs_.o, 0, want), "");
}

INSTANTIATE_TEST_SUITE_P(Layouts, ExecutorErrors,
                         ::testing::Values(EPD_LAYOUT_RANK_MAJOR, EPD_LAYOUT_EXPERT_MAJOR),
                         [](const ::testing::TestParamInfo<epd_layout_t>& p) {
                           return std::string(p.param == EPD_LAYOUT_RANK_MAJOR ? "rank_major" : "expert_major");
                         });

}  // namespace
}  // namespace epd_test
