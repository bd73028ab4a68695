// Tests of spread_gpus_over_nics(): hand-picked cases plus random instances
// checked against a brute-force search over every assignment.
#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "topology.h"

namespace epd {
namespace {

TEST(NicSpreadTest, GreedyTrapIsAvoided) {
  // GPU 0 could use NIC 0 or 1; GPU 1 only NIC 0. A greedy pass gives both NIC 0.
  EXPECT_EQ(spread_gpus_over_nics({{0, 1}, {0}}, 2), (std::vector<int>{1, 0}));
}

TEST(NicSpreadTest, FullTieGivesBijectionInNameOrder) {
  std::vector<std::vector<int>> all(8, std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
  EXPECT_EQ(spread_gpus_over_nics(all, 8), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST(NicSpreadTest, MoreGpusThanNicsBalancesThenLowestName) {
  std::vector<std::vector<int>> all(5, std::vector<int>{0, 1});
  EXPECT_EQ(spread_gpus_over_nics(all, 2), (std::vector<int>{0, 1, 0, 1, 0}));
}

TEST(NicSpreadTest, EmptyCandidatesAndBadIndexesGiveMinusOne) {
  EXPECT_EQ(spread_gpus_over_nics({{}, {0}}, 1), (std::vector<int>{-1, 0}));
  EXPECT_EQ(spread_gpus_over_nics({{0}, {3}}, 2), (std::vector<int>{-1, -1}));
  EXPECT_TRUE(spread_gpus_over_nics({}, 4).empty());
}

struct Best {
  int distinct = 0;
  int min_max_load = 0;
};

Best brute_force(const std::vector<std::vector<int>>& cand, int num_nics) {
  Best best{0, 1 << 30};
  std::vector<size_t> pick(cand.size(), 0);
  for (;;) {
    std::vector<int> load(static_cast<size_t>(num_nics), 0);
    for (size_t g = 0; g < cand.size(); ++g) ++load[static_cast<size_t>(cand[g][pick[g]])];
    best.distinct = std::max(best.distinct, static_cast<int>(std::count_if(load.begin(), load.end(), [](int l) { return l > 0; })));
    best.min_max_load = std::min(best.min_max_load, *std::max_element(load.begin(), load.end()));
    size_t g = 0;
    while (g < cand.size() && ++pick[g] == cand[g].size()) pick[g++] = 0;
    if (g == cand.size()) break;
  }
  return best;
}

TEST(NicSpreadTest, RandomInstancesMatchBruteForce) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (int iter = 0; iter < 400; ++iter) {
    const int num_gpus = std::uniform_int_distribution<int>(1, 6)(rng);
    const int num_nics = std::uniform_int_distribution<int>(1, 4)(rng);
    std::vector<std::vector<int>> cand(static_cast<size_t>(num_gpus));
    for (auto& c : cand) {
      for (int n = 0; n < num_nics; ++n) {
        if (std::uniform_int_distribution<int>(0, 2)(rng) == 0) c.push_back(n);
      }
      if (c.empty()) c.push_back(std::uniform_int_distribution<int>(0, num_nics - 1)(rng));
    }
    const std::vector<int> got = spread_gpus_over_nics(cand, num_nics);
    ASSERT_EQ(got.size(), cand.size());
    std::vector<int> load(static_cast<size_t>(num_nics), 0);
    for (size_t g = 0; g < cand.size(); ++g) {
      ASSERT_NE(std::find(cand[g].begin(), cand[g].end(), got[g]), cand[g].end()) << "iteration " << iter << " gpu " << g;
      ++load[static_cast<size_t>(got[g])];
    }
    const Best best = brute_force(cand, num_nics);
    EXPECT_EQ(std::count_if(load.begin(), load.end(), [](int l) { return l > 0; }), best.distinct) << "iteration " << iter;
    EXPECT_EQ(*std::max_element(load.begin(), load.end()), best.min_max_load) << "iteration " << iter;
  }
}

TEST(NicNameTest, DigitRunsCompareAsNumbers) {
  EXPECT_TRUE(nic_name_less("mlx5_2", "mlx5_10"));
  EXPECT_FALSE(nic_name_less("mlx5_10", "mlx5_2"));
  EXPECT_TRUE(nic_name_less("mlx5_0", "mlx5_1"));
  EXPECT_TRUE(nic_name_less("bnxt_re0", "mlx5_0"));
  EXPECT_TRUE(nic_name_less("mlx5_1", "mlx5_1a"));
  EXPECT_FALSE(nic_name_less("mlx5_1", "mlx5_1"));
}

TEST(PciBusIdTest, Normalizes) {
  EXPECT_EQ(normalize_pci_busid("0000:18:00.0").value(), "0000:18:00.0");
  EXPECT_EQ(normalize_pci_busid("00000000:9A:00.0").value(), "0000:9a:00.0");
  EXPECT_EQ(normalize_pci_busid("db:00.1").value(), "0000:db:00.1");
  EXPECT_EQ(normalize_pci_busid("10000:01:1f.7").value(), "10000:01:1f.7");
  for (const char* bad : {"", "18:00", "0000:18:00.8", "0000:18:20.0", "0000:118:00.0", "xx:00.0", "0000:18:00.0.1"}) {
    Result<std::string> r = normalize_pci_busid(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.status().code(), EPD_ERR_INVALID_ARGUMENT) << bad;
    EXPECT_NE(r.status().message().find(std::string("'") + bad + "'"), std::string::npos) << r.status().message();
  }
}

TEST(CpuListTest, Formats) {
  EXPECT_EQ(format_cpu_list({}), "");
  EXPECT_EQ(format_cpu_list({3}), "3");
  EXPECT_EQ(format_cpu_list({0, 1, 2, 3, 8, 9, 10, 11}), "0-3,8-11");
  EXPECT_EQ(format_cpu_list({5, 1, 0, 2, 7}), "0-2,5,7");
}

}  // namespace
}  // namespace epd
