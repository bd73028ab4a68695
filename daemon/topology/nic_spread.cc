// nic_spread.cc — spreading GPUs over equally close NICs (see topology.h).
//
// A capacitated bipartite matching (Kuhn's augmenting paths): first every NIC
// may serve one GPU, and each GPU looks for a free candidate, moving earlier
// GPUs to their other candidates when that frees one; GPUs still without a NIC
// then try again with a capacity of two, and so on. The first round yields the
// largest number of GPUs with a NIC of their own, and the capacity at which the
// last GPU is placed is the smallest possible load of the busiest NIC. A greedy
// pass in GPU order would not: GPU 0 with candidates {A, B} takes A, and GPU 1
// whose only candidate is A then shares it while B stays idle.
#include <algorithm>
#include <numeric>
#include <vector>

#include "topology.h"

namespace epd {
namespace {

class Spreader {
 public:
  Spreader(const std::vector<std::vector<int>>& candidates, int num_nics)
      : candidates_(candidates),
        choice_(candidates.size(), -1),
        load_(static_cast<size_t>(num_nics), 0) {}

  std::vector<int> run() {
    const int num_gpus = static_cast<int>(candidates_.size());
    for (int cap = 1; cap <= std::max(num_gpus, 1); ++cap) {
      cap_ = cap;
      bool all_placed = true;
      for (int g = 0; g < num_gpus; ++g) {
        if (choice_[g] >= 0 || candidates_[g].empty()) continue;
        visited_.assign(load_.size(), false);
        if (!place(g)) all_placed = false;
      }
      if (all_placed) break;
    }
    return choice_;
  }

 private:
  // Candidates of g, least loaded first, then lowest index (= lowest name).
  std::vector<int> ordered(int g) const {
    std::vector<int> order = candidates_[g];
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return load_[a] != load_[b] ? load_[a] < load_[b] : a < b;
    });
    return order;
  }

  void assign(int g, int nic) {
    if (choice_[g] >= 0) --load_[choice_[g]];
    choice_[g] = nic;
    ++load_[nic];
  }

  // Finds g a NIC below capacity, directly or by moving a GPU that holds one
  // of g's candidates to another of its own candidates.
  bool place(int g) {
    const std::vector<int> order = ordered(g);
    for (int nic : order) {
      if (!visited_[nic] && load_[nic] < cap_) {
        visited_[nic] = true;
        assign(g, nic);
        return true;
      }
    }
    for (int nic : order) {
      if (visited_[nic]) continue;
      visited_[nic] = true;
      for (int h = 0; h < static_cast<int>(choice_.size()); ++h) {
        if (h == g || choice_[h] != nic) continue;
        if (place(h)) {  // h moved away: nic has room now
          assign(g, nic);
          return true;
        }
      }
    }
    return false;
  }

  const std::vector<std::vector<int>>& candidates_;
  std::vector<int> choice_;
  std::vector<int> load_;
  std::vector<bool> visited_;
  int cap_ = 1;
};

}  // namespace

std::vector<int> spread_gpus_over_nics(const std::vector<std::vector<int>>& candidates, int num_nics) {
  for (const std::vector<int>& c : candidates) {
    for (int nic : c) {
      if (nic < 0 || nic >= num_nics) return std::vector<int>(candidates.size(), -1);
    }
  }
  return Spreader(candidates, num_nics).run();
}

}  // namespace epd
