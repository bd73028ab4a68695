// gpu_test_util.h — a group of ranks on one GPU for tests and benchmarks:
// host mirrors of every rank's workspace (poisoned, then filled with seeded
// random inputs through stage_dispatch_inputs), the device workspaces they are
// uploaded to, and byte comparison of the regions an executor writes.
// Thread-safety: test-local objects, one thread.
#pragma once

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gpu_executor.h"
#include "host_executor.h"
#include "layout.h"
#include "numeric.h"
#include "spec.h"

namespace epd::test {

enum class Routing { kUniform, kSkewed, kOneExpert, kMasked };

inline const char* routing_name(Routing r) {
  switch (r) {
    case Routing::kUniform: return "uniform";
    case Routing::kSkewed: return "skewed";
    case Routing::kOneExpert: return "all_to_one_expert";
    case Routing::kMasked: return "masked";
  }
  return "?";
}

inline GroupSpec make_spec(int32_t world, int32_t experts, int32_t top_k, int32_t hidden, int32_t max_tokens,
                           epd_dtype_t dtype, epd_quant_t quant, epd_layout_t layout, epd_mode_t mode,
                           bool shuffled_owner, uint64_t seed) {
  GroupSpec s;
  s.name = "gpu_test";
  s.world_size = world;
  s.placement.assign(static_cast<size_t>(world), epd_placement_t{0, 0});
  s.num_experts = experts;
  s.top_k = top_k;
  s.expert_owner.resize(static_cast<size_t>(experts));
  for (int32_t e = 0; e < experts; ++e) s.expert_owner[e] = GroupSpec::contiguous_owner(e, experts, world);
  if (shuffled_owner) {
    std::mt19937_64 rng(seed ^ 0x5eedull);
    std::shuffle(s.expert_owner.begin(), s.expert_owner.end(), rng);
  }
  s.hidden = hidden;
  s.dtype = dtype;
  s.dispatch_quant = quant;
  s.max_tokens_per_rank = max_tokens;
  s.mode = mode;
  s.layout = layout;
  s.slots = 2;
  s.timeout_ms = 5000;
  return s;
}

// Writes `count` random finite values in `dtype` (some zero blocks of 128 for fp8 coverage).
inline void fill_values(uint8_t* dst, int64_t count, epd_dtype_t dtype, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> val(-4.0f, 4.0f);
  std::uniform_int_distribution<int> zero_block(0, 15);
  for (int64_t b = 0; b < count; b += 128) {
    const bool zero = zero_block(rng) == 0;
    for (int64_t i = b; i < std::min<int64_t>(count, b + 128); ++i)
      store_from_float(dst, i, zero ? 0.0f : val(rng), dtype);
  }
}

// Routing of one token: top_k distinct experts or -1.
inline void make_ids(const GroupSpec& s, Routing routing, std::mt19937_64& rng, int32_t* ids) {
  const int32_t E = s.num_experts, K = s.top_k;
  std::vector<int32_t> pick;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto taken = [&](int32_t e) { return std::find(pick.begin(), pick.end(), e) != pick.end(); };
  while (static_cast<int32_t>(pick.size()) < K) {
    int32_t e;
    if (routing == Routing::kSkewed) {  // Zipf-like: expert i with weight 1 / (i + 1)^1.3
      const double x = u(rng);
      e = std::min<int32_t>(E - 1, static_cast<int32_t>(std::pow(static_cast<double>(E) + 1.0, x * x * x)) - 1);
      e = std::max(e, 0);
    } else {
      e = static_cast<int32_t>(rng() % static_cast<uint64_t>(E));
    }
    if (!taken(e)) pick.push_back(e);
  }
  for (int32_t k = 0; k < K; ++k) {
    int32_t e = pick[k];
    if (routing == Routing::kOneExpert) e = k == 0 ? 0 : -1;
    if (routing == Routing::kMasked && u(rng) < 0.7) e = -1;
    if (routing == Routing::kUniform && u(rng) < 0.05) e = -1;
    ids[k] = e;
  }
}

// Host mirrors and device workspaces of one group.
struct Group {
  GroupSpec spec;
  GroupLayout layout;
  struct Buffer {  // 4 KiB-aligned host mirror of one workspace
    uint8_t* p = nullptr;
    size_t n = 0;
    explicit Buffer(size_t bytes) : p(static_cast<uint8_t*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096))), n(bytes) {}
    Buffer(Buffer&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; }
    Buffer(const Buffer&) = delete;
    ~Buffer() { std::free(p); }
    uint8_t* data() { return p; }
    size_t size() const { return n; }
  };
  std::vector<Buffer> host;  // [rank] whole workspace
  std::vector<std::unique_ptr<GpuWorkspace>> dev;
  std::vector<int32_t> n;                  // tokens per rank of the staged call

  explicit Group(const GroupSpec& s) : spec(s), layout(GroupLayout::compute(s)) {
    for (const RankLayout& l : layout.ranks) host.emplace_back(l.bytes);
  }
  std::vector<uint8_t*> host_bases() {
    std::vector<uint8_t*> b;
    for (auto& h : host) b.push_back(h.data());
    return b;
  }
  std::vector<uint8_t*> dev_bases() const {
    std::vector<uint8_t*> b;
    for (auto& d : dev) b.push_back(d->device_ptr());
    return b;
  }
  // Random bytes everywhere (the poison unwritten rows keep), zero control blocks.
  void poison(uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (auto& h : host) {
      for (size_t i = 0; i + 8 <= h.size(); i += 8) {
        const uint64_t v = rng();
        std::memcpy(h.data() + i, &v, 8);
      }
      std::memset(h.data(), 0, kControlBytes);
    }
  }
  // Stages inputs of every rank into `slot` and fills combine_in with expert outputs.
  Status stage(int32_t slot, Routing routing, const std::vector<int32_t>& tokens, uint64_t seed) {
    std::mt19937_64 rng(seed);
    n = tokens;
    const int32_t K = spec.top_k, H = spec.hidden;
    std::uniform_real_distribution<float> wdist(0.01f, 1.0f);
    for (int32_t r = 0; r < spec.world_size; ++r) {
      const RankLayout& l = layout.ranks[r];
      const int32_t nt = tokens[r];
      std::vector<uint8_t> x(static_cast<size_t>(std::max(nt, 1)) * l.in_row_bytes);
      fill_values(x.data(), static_cast<int64_t>(nt) * H, spec.dtype, rng);
      std::vector<int32_t> ids(static_cast<size_t>(std::max(nt, 1)) * K);
      std::vector<float> w(ids.size());
      for (int32_t t = 0; t < nt; ++t) {
        make_ids(spec, routing, rng, ids.data() + static_cast<size_t>(t) * K);
        for (int32_t k = 0; k < K; ++k) w[static_cast<size_t>(t) * K + k] = wdist(rng);
      }
      DispatchInputs in;
      in.x = x.data();
      in.topk_ids = ids.data();
      in.topk_weights = w.data();
      in.n_tokens = nt;
      EPD_RETURN_IF_ERROR(stage_dispatch_inputs(spec, l, host[r].data(), slot, in));
      fill_values(host[r].data() + l.slot[slot].combine_in, l.recv_rows * H, spec.dtype, rng);
    }
    return Status::ok();
  }
};

// Byte ranges an executor writes in one slot: the receive regions (padding
// rows included) and combine_out.
inline std::vector<std::pair<uint64_t, uint64_t>> dispatch_regions(const RankLayout& l, int32_t slot) {
  return {{l.slot[slot].recv_total, l.slot[slot].combine_in}};
}
inline std::vector<std::pair<uint64_t, uint64_t>> combine_regions(const GroupSpec& s, const RankLayout& l,
                                                                  int32_t slot) {
  return {{l.slot[slot].combine_out,
           l.slot[slot].combine_out + static_cast<uint64_t>(s.max_tokens_per_rank) * l.in_row_bytes}};
}

// First differing byte of a region as text, or "" when equal.
inline std::string first_difference(const uint8_t* a, const uint8_t* b, uint64_t begin, uint64_t end,
                                    const RankLayout& l, int32_t slot) {
  for (uint64_t i = begin; i < end; ++i) {
    if (a[i] == b[i]) continue;
    const SlotOffsets& o = l.slot[slot];
    const char* region = "?";
    const std::pair<const char*, uint64_t> regions[] = {
        {"recv_total", o.recv_total},     {"recv_counts", o.recv_counts}, {"recv_x", o.recv_x},
        {"recv_scales", o.recv_scales},   {"recv_ids", o.recv_ids},       {"recv_weights", o.recv_weights},
        {"recv_src", o.recv_src},         {"combine_in", o.combine_in},   {"combine_out", o.combine_out}};
    uint64_t at = 0;
    for (auto& [name, off] : regions)
      if (off <= i && off >= at) {
        region = name;
        at = off;
      }
    return std::string(region) + " byte " + std::to_string(i - at) + ": gpu " + std::to_string(a[i]) +
           " host " + std::to_string(b[i]);
  }
  return "";
}

// Rows each destination receives from the first t tokens of a source (rank_major):
// rows[src][t][d], from the staged routing in the host mirror (meaningful for
// t up to the staged count; ids past it are poison and ignored when out of range).
inline std::vector<std::vector<std::vector<int32_t>>> rank_major_prefix_rows(Group& g, int32_t slot) {
  const int32_t W = g.spec.world_size, M = g.spec.max_tokens_per_rank, K = g.spec.top_k;
  std::vector<std::vector<std::vector<int32_t>>> rows(W, std::vector<std::vector<int32_t>>(M + 1, std::vector<int32_t>(W, 0)));
  for (int32_t src = 0; src < W; ++src) {
    const auto* ids = reinterpret_cast<const int32_t*>(g.host[src].data() + g.layout.ranks[src].slot[slot].send_ids);
    for (int32_t t = 0; t < M; ++t) {
      rows[src][t + 1] = rows[src][t];
      std::vector<bool> hit(W, false);
      for (int32_t k = 0; k < K; ++k) {
        const int32_t e = ids[t * K + k];
        if (e >= 0 && e < g.spec.num_experts) hit[g.spec.expert_owner[e]] = true;  // rows past n: poison
      }
      for (int32_t d = 0; d < W; ++d) rows[src][t + 1][d] += hit[d] ? 1 : 0;
    }
  }
  return rows;
}

}  // namespace epd::test
