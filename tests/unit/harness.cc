// harness.cc — see harness.h.
#include "harness.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>

namespace epd_test {

uint64_t fnv1a(const void* p, size_t n, uint64_t h) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}

const char* routing_name(Routing r) {
  switch (r) {
    case Routing::kUniform: return "uniform";
    case Routing::kZipf: return "zipf";
    case Routing::kOneExpert: return "all-to-one-expert";
    case Routing::kOneRank: return "all-to-one-rank";
    case Routing::kMasked: return "heavily-masked";
  }
  return "?";
}

// ---- specs --------------------------------------------------------------------------

epd_group_spec_t CaseSpec::c() const {
  epd_group_spec_t s = base;
  s.expert_owner = owner.empty() ? nullptr : owner.data();
  return s;
}

epd::GroupSpec CaseSpec::group_spec() const {
  auto r = epd::GroupSpec::from_c(c());
  if (!r) {
    std::fprintf(stderr, "from_c failed: %s\n", r.status().to_string().c_str());
    std::abort();
  }
  return r.value();
}

std::string CaseSpec::describe() const {
  std::ostringstream os;
  os << "W=" << o.world_size << " E=" << o.num_experts << " K=" << o.top_k << " H=" << o.hidden
     << " dtype=" << static_cast<int>(o.dtype) << " fp8=" << o.fp8 << " M=" << o.max_tokens
     << " layout=" << (o.layout == EPD_LAYOUT_RANK_MAJOR ? "rank_major" : "expert_major")
     << " slots=" << o.slots << " owner=" << (owner.empty() ? "default" : "custom");
  return os.str();
}

CaseSpec make_case_spec(int32_t world_size, int32_t num_experts, int32_t top_k, int32_t hidden,
                        epd_dtype_t dtype, bool fp8, int32_t max_tokens, epd_layout_t layout,
                        int32_t slots, std::vector<int32_t> owner) {
  CaseSpec cs;
  epd_group_spec_init(&cs.base);
  std::snprintf(cs.base.name, sizeof cs.base.name, "unit-test.group_%d", world_size);
  cs.base.generation = 1;
  cs.base.world_size = world_size;
  cs.base.rank = 0;
  cs.base.num_experts = num_experts;
  cs.base.top_k = top_k;
  cs.base.hidden = hidden;
  cs.base.dtype = dtype;
  cs.base.dispatch_quant = fp8 ? EPD_QUANT_FP8_E4M3_BLOCK128 : EPD_QUANT_NONE;
  cs.base.max_tokens_per_rank = max_tokens;
  cs.base.layout = layout;
  cs.base.slots = slots;
  cs.owner = std::move(owner);
  cs.o.world_size = world_size;
  cs.o.num_experts = num_experts;
  cs.o.top_k = top_k;
  cs.o.hidden = hidden;
  cs.o.max_tokens = max_tokens;
  cs.o.slots = slots;
  cs.o.dtype = dtype;
  cs.o.fp8 = fp8;
  cs.o.layout = layout;
  if (cs.owner.empty()) {
    cs.o.owner.resize(static_cast<size_t>(num_experts));
    for (int32_t e = 0; e < num_experts; ++e)
      cs.o.owner[e] = oracle_contiguous_owner(e, num_experts, world_size);
  } else {
    cs.o.owner = cs.owner;
  }
  return cs;
}

namespace {

template <typename T>
T pick(std::mt19937_64& rng, std::initializer_list<T> v) {
  std::uniform_int_distribution<size_t> d(0, v.size() - 1);
  return *(v.begin() + d(rng));
}

int32_t uniform(std::mt19937_64& rng, int32_t lo, int32_t hi) {
  return std::uniform_int_distribution<int32_t>(lo, hi)(rng);
}

bool coin(std::mt19937_64& rng, double p) { return std::bernoulli_distribution(p)(rng); }

uint64_t group_bytes(const OracleSpec& o) {
  uint64_t sum = 0;
  for (int32_t r = 0; r < o.world_size; ++r) sum += oracle_workspace_bytes(o, r);
  return sum;
}

}  // namespace

CaseSpec random_spec(std::mt19937_64& rng, epd_layout_t layout, uint64_t max_group_bytes) {
  const int32_t W = coin(rng, 0.3) ? pick(rng, {1, 2, 8, 16}) : uniform(rng, 1, 16);
  int32_t E;
  switch (uniform(rng, 0, 4)) {
    case 0: E = W; break;
    case 1: E = 256; break;
    case 2: E = W * uniform(rng, 1, 256 / W); break;  // a multiple of W
    default: E = uniform(rng, W, 256); break;         // often not a multiple
  }
  std::vector<int32_t> owner;
  switch (uniform(rng, 0, 3)) {
    case 0:
    case 1: break;  // default contiguous
    case 2:         // round-robin: non-contiguous
      owner.resize(static_cast<size_t>(E));
      for (int32_t e = 0; e < E; ++e) owner[e] = e % W;
      break;
    default: {  // random, every rank at least one expert, uneven counts (redundant copies)
      owner.resize(static_cast<size_t>(E));
      std::vector<int32_t> perm(static_cast<size_t>(E));
      for (int32_t e = 0; e < E; ++e) perm[e] = e;
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int32_t e = 0; e < E; ++e) owner[perm[e]] = e < W ? e : uniform(rng, 0, W - 1);
      break;
    }
  }
  const int32_t K = uniform(rng, 1, std::min(9, E));
  const bool fp8 = coin(rng, 0.3);
  const epd_dtype_t dtype = pick(rng, {EPD_DTYPE_BF16, EPD_DTYPE_FP16, EPD_DTYPE_FP32});
  int32_t H = fp8 ? 128 * uniform(rng, 1, 3) : pick(rng, {1, 2, 3, 7, 31, 64, 100, 127, 128, 129, 255, 300});
  int32_t M = coin(rng, 0.2) ? uniform(rng, 1, 3) : uniform(rng, 1, 40);
  const int32_t slots = uniform(rng, 2, EPD_MAX_SLOTS);
  CaseSpec cs = make_case_spec(W, E, K, H, dtype, fp8, M, layout, slots, owner);
  // Shrink capacity, then width, then slots until the group fits the budget.
  while (group_bytes(cs.o) > max_group_bytes) {
    if (M > 1)
      M = (M + 1) / 2;
    else if (!fp8 && H > 1)
      H = (H + 1) / 2;
    else if (cs.o.slots > 2)
      cs.o.slots = 2;
    else
      break;
    cs = make_case_spec(W, E, K, H, dtype, fp8, M, layout, cs.o.slots, owner);
  }
  std::snprintf(cs.base.name, sizeof cs.base.name, "prop-%u", static_cast<unsigned>(rng() % 100000));
  return cs;
}

// ---- inputs ---------------------------------------------------------------------------

epd::DispatchInputs RankInput::view() const {
  epd::DispatchInputs v;
  v.x = o.x.empty() ? nullptr : o.x.data();
  v.id_dtype = id_dtype;
  v.topk_ids = id_dtype == EPD_ID_INT32 ? static_cast<const void*>(ids32.empty() ? nullptr : ids32.data())
                                        : static_cast<const void*>(ids64.empty() ? nullptr : ids64.data());
  v.topk_weights = o.weights.empty() ? nullptr : o.weights.data();
  v.n_tokens = o.n;
  return v;
}

uint64_t RankInput::hash() const {
  uint64_t h = fnv1a(o.x.data(), o.x.size());
  h = fnv1a(ids32.data(), ids32.size() * 4, h);
  h = fnv1a(ids64.data(), ids64.size() * 8, h);
  return fnv1a(o.weights.data(), o.weights.size() * 4, h);
}

void sync_ids(RankInput& in) {
  in.ids32.clear();
  in.ids64.clear();
  for (int64_t v : in.o.ids) {
    if (in.id_dtype == EPD_ID_INT32)
      in.ids32.push_back(static_cast<int32_t>(v));
    else
      in.ids64.push_back(v);
  }
}

std::vector<OracleInput> oracle_inputs(const std::vector<RankInput>& in) {
  std::vector<OracleInput> o;
  for (const auto& r : in) o.push_back(r.o);
  return o;
}

namespace {

float random_value(std::mt19937_64& rng) {
  if (coin(rng, 0.03)) return coin(rng, 0.5) ? 0.0f : -0.0f;
  const float m = std::uniform_real_distribution<float>(1.0f, 2.0f)(rng);
  const float v = std::ldexp(m, uniform(rng, -12, 2));
  return coin(rng, 0.5) ? -v : v;
}

// K distinct experts from `draw`, then each position masked with probability p_mask.
template <typename Draw>
void distinct_row(std::mt19937_64& rng, int32_t K, double p_mask, Draw draw, int64_t* out) {
  for (int32_t k = 0; k < K; ++k) {
    int64_t e = -1;
    for (int tries = 0; tries < 64 && e < 0; ++tries) {
      const int64_t c = draw();
      if (std::find(out, out + k, c) == out + k) e = c;
    }
    out[k] = e;  // -1 when the distribution could not give a new expert
  }
  for (int32_t k = 0; k < K; ++k)
    if (coin(rng, p_mask)) out[k] = -1;
}

}  // namespace

std::vector<RankInput> random_inputs(std::mt19937_64& rng, const OracleSpec& s, Routing routing,
                                     int32_t force_n) {
  const int32_t W = s.world_size, K = s.top_k, E = s.num_experts, H = s.hidden, M = s.max_tokens;
  const size_t row_bytes = static_cast<size_t>(H) * oracle_dtype_bytes(s.dtype);
  // Shared per call: the hot expert / rank and the Zipf popularity order.
  const int32_t hot_expert = uniform(rng, 0, E - 1);
  const int32_t hot_rank = uniform(rng, 0, W - 1);
  std::vector<int32_t> hot_rank_experts;
  for (int32_t e = 0; e < E; ++e)
    if (s.owner[e] == hot_rank) hot_rank_experts.push_back(e);
  std::vector<int32_t> popularity(static_cast<size_t>(E));
  for (int32_t e = 0; e < E; ++e) popularity[e] = e;
  std::shuffle(popularity.begin(), popularity.end(), rng);
  std::vector<double> zipf_w(static_cast<size_t>(E));
  for (int32_t i = 0; i < E; ++i) zipf_w[i] = 1.0 / std::pow(i + 1.0, 1.3);
  std::discrete_distribution<int32_t> zipf(zipf_w.begin(), zipf_w.end());
  std::uniform_int_distribution<int32_t> any_expert(0, E - 1);

  std::vector<RankInput> in(static_cast<size_t>(W));
  for (int32_t r = 0; r < W; ++r) {
    RankInput& ri = in[r];
    const int choice = uniform(rng, 0, 9);
    ri.o.n = force_n >= 0 ? force_n : choice == 0 ? 0 : choice <= 2 ? M : uniform(rng, 0, M);
    const int32_t n = ri.o.n;
    ri.id_dtype = coin(rng, 0.5) ? EPD_ID_INT32 : EPD_ID_INT64;
    ri.o.x.resize(static_cast<size_t>(n) * row_bytes);
    for (int32_t t = 0; t < n; ++t) {
      const bool zero_block = s.fp8 && coin(rng, 0.1);
      const int32_t zb = s.fp8 ? uniform(rng, 0, H / 128 - 1) : -1;
      for (int32_t i = 0; i < H; ++i) {
        const float v = zero_block && i / 128 == zb ? 0.0f : random_value(rng);
        oracle_store(ri.o.x.data() + t * row_bytes, i, v, s.dtype);
      }
    }
    ri.o.ids.assign(static_cast<size_t>(n) * K, -1);
    for (int32_t t = 0; t < n; ++t) {
      int64_t* row = ri.o.ids.data() + static_cast<size_t>(t) * K;
      switch (routing) {
        case Routing::kUniform:
          distinct_row(rng, K, 0.1, [&] { return any_expert(rng); }, row);
          break;
        case Routing::kZipf:
          distinct_row(rng, K, 0.05, [&] { return popularity[zipf(rng)]; }, row);
          break;
        case Routing::kMasked:
          distinct_row(rng, K, 0.8, [&] { return any_expert(rng); }, row);
          break;
        case Routing::kOneExpert:
          row[uniform(rng, 0, K - 1)] = hot_expert;
          break;
        case Routing::kOneRank: {
          std::vector<int32_t> pool = hot_rank_experts;
          std::shuffle(pool.begin(), pool.end(), rng);
          std::vector<int32_t> pos(static_cast<size_t>(K));
          for (int32_t k = 0; k < K; ++k) pos[k] = k;
          std::shuffle(pos.begin(), pos.end(), rng);
          for (int32_t k = 0; k < K && k < static_cast<int32_t>(pool.size()); ++k) row[pos[k]] = pool[k];
          break;
        }
      }
    }
    if (!coin(rng, 0.2)) {
      ri.o.weights.resize(static_cast<size_t>(n) * K);
      for (auto& w : ri.o.weights)
        w = coin(rng, 0.1) ? -std::uniform_real_distribution<float>(0.0f, 1.0f)(rng)
                           : std::uniform_real_distribution<float>(0.0f, 1.5f)(rng);
    }
    sync_ids(ri);
  }
  return in;
}

ExpertFn random_expert_fn(std::mt19937_64& rng, int32_t num_experts) {
  ExpertFn f;
  for (int32_t e = 0; e < num_experts; ++e) {
    f.a.push_back(std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng));
    f.b.push_back(std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng));
  }
  return f;
}

// ---- workspaces -----------------------------------------------------------------------

Group::Group(const epd::GroupSpec& spec, epd::ThreadPool* pool) : spec_(spec) {
  for (int32_t r = 0; r < spec.world_size; ++r) {
    layouts_.push_back(epd::compute_rank_layout(spec, r));
    const uint64_t bytes = (layouts_.back().bytes + kGuardBytes + 4095) / 4096 * 4096;
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(4096, bytes));
    if (!p) std::abort();
    bases_.push_back(p);
    alloc_.push_back(bytes);
  }
  exec_ = std::make_unique<epd::HostExecutor>(spec, bases_, pool);
}

Group::~Group() {
  for (auto* p : bases_) std::free(p);
}

void Group::poison_all(uint8_t pattern) {
  for (size_t r = 0; r < bases_.size(); ++r) std::memset(bases_[r], pattern, alloc_[r]);
}

void Group::fill(int32_t r, uint64_t off, uint64_t bytes, uint8_t pattern) {
  std::memset(bases_[r] + off, pattern, bytes);
}

void Group::snapshot() {
  snap_.resize(bases_.size());
  for (size_t r = 0; r < bases_.size(); ++r) snap_[r].assign(bases_[r], bases_[r] + alloc_[r]);
}

std::string Group::changed_outside(const std::vector<Ranges>& allowed) const {
  const auto& snap = snap_;
  for (size_t r = 0; r < bases_.size(); ++r) {
    Ranges ok = r < allowed.size() ? allowed[r] : Ranges{};
    std::sort(ok.begin(), ok.end());
    uint64_t at = 0;  // compare the gaps between allowed ranges
    ok.push_back({alloc_[r], 0});
    for (const auto& [off, len] : ok) {
      if (off > at && std::memcmp(bases_[r] + at, snap[r].data() + at, off - at) != 0) {
        uint64_t i = at;
        while (bases_[r][i] == snap[r][i]) ++i;
        char buf[160];
        std::snprintf(buf, sizeof buf,
                      "rank %zu: byte at offset %llu changed from 0x%02x to 0x%02x (workspace bytes %llu)", r,
                      static_cast<unsigned long long>(i), snap[r][i], bases_[r][i],
                      static_cast<unsigned long long>(layouts_[r].bytes));
        return buf;
      }
      at = std::max(at, off + len);
    }
  }
  return "";
}

std::string Group::changed_anywhere() const {
  return changed_outside({});
}

epd::Status stage_all(Group& g, int32_t slot, const std::vector<RankInput>& in) {
  for (int32_t r = 0; r < g.world_size(); ++r) {
    epd::Status st = epd::stage_dispatch_inputs(g.spec(), g.layout(r), g.base(r), slot, in[r].view());
    if (!st) return st;
  }
  return epd::Status::ok();
}

namespace {

// Region sizes come from the oracle's reading of the layout header; offsets from the layout under test.
uint64_t region_bytes(const OracleSpec& s, int32_t r, const char* name) {
  for (const auto& reg : oracle_slot_regions(s, r))
    if (std::strcmp(reg.name, name) == 0) return reg.bytes;
  std::abort();
}

std::string describe_row(int32_t r, int64_t row) {
  return "rank " + std::to_string(r) + " row " + std::to_string(row) + ": ";
}

}  // namespace

std::vector<Ranges> dispatch_outputs(const Group& g, const OracleSpec& s, int32_t slot) {
  std::vector<Ranges> out;
  for (int32_t r = 0; r < g.world_size(); ++r) {
    const epd::SlotOffsets& o = g.layout(r).slot[slot];
    out.push_back({{o.recv_total, region_bytes(s, r, "recv_total")},
                   {o.recv_counts, region_bytes(s, r, "recv_counts")},
                   {o.recv_x, region_bytes(s, r, "recv_x")},
                   {o.recv_scales, region_bytes(s, r, "recv_scales")},
                   {o.recv_ids, region_bytes(s, r, "recv_ids")},
                   {o.recv_weights, region_bytes(s, r, "recv_weights")},
                   {o.recv_src, region_bytes(s, r, "recv_src")},
                   {o.route_rank, region_bytes(s, r, "route_rank")},
                   {o.route_row, region_bytes(s, r, "route_row")}});
  }
  return out;
}

std::vector<Ranges> combine_outputs(const Group& g, int32_t slot, const std::vector<int32_t>& n) {
  std::vector<Ranges> out;
  for (int32_t r = 0; r < g.world_size(); ++r)
    out.push_back({{g.layout(r).slot[slot].combine_out,
                    static_cast<uint64_t>(n[r]) * g.layout(r).in_row_bytes}});
  return out;
}

void poison_outputs(Group& g, const OracleSpec& s, int32_t slot, uint8_t pattern) {
  const auto d = dispatch_outputs(g, s, slot);
  for (int32_t r = 0; r < g.world_size(); ++r) {
    for (const auto& [off, len] : d[r]) g.fill(r, off, len, pattern);
    g.fill(r, g.layout(r).slot[slot].combine_out, region_bytes(s, r, "combine_out"), pattern);
  }
}

std::string check_dispatch(const Group& g, const OracleSpec& s, int32_t slot, const OracleDispatch& d) {
  for (int32_t r = 0; r < g.world_size(); ++r) {
    const epd::RankLayout& l = g.layout(r);
    const epd::SlotOffsets& o = l.slot[slot];
    const OracleRank& want = d.ranks[r];
    const uint8_t* b = g.base(r);
    if (l.in_row_bytes != static_cast<uint64_t>(s.hidden) * oracle_dtype_bytes(s.dtype) ||
        l.scale_blocks != (s.fp8 ? s.hidden / 128 : 0))
      return "rank " + std::to_string(r) + ": layout in_row_bytes / scale_blocks disagree with the contract";
    if (l.recv_rows != want.recv_rows || l.ids_per_row != want.ids_per_row ||
        l.local_experts != want.local_experts)
      return "rank " + std::to_string(r) + ": layout rows/ids/local experts " + std::to_string(l.recv_rows) + "/" +
             std::to_string(l.ids_per_row) + "/" + std::to_string(l.local_experts) + ", contract says " +
             std::to_string(want.recv_rows) + "/" + std::to_string(want.ids_per_row) + "/" +
             std::to_string(want.local_experts);
    int32_t total;
    std::memcpy(&total, b + o.recv_total, 4);
    if (total != want.total)
      return "rank " + std::to_string(r) + ": recv_total " + std::to_string(total) + ", expected " +
             std::to_string(want.total);
    for (int32_t e = 0; e < want.local_experts; ++e) {
      int32_t c;
      std::memcpy(&c, b + o.recv_counts + 4 * static_cast<uint64_t>(e), 4);
      if (c != want.counts[e])
        return "rank " + std::to_string(r) + ": recv_counts[" + std::to_string(e) + "] = " + std::to_string(c) +
               ", expected " + std::to_string(want.counts[e]);
    }
    const int32_t I = want.ids_per_row;
    size_t next = 0;
    std::vector<int32_t> ids(static_cast<size_t>(I));
    std::vector<float> w(static_cast<size_t>(I));
    for (int64_t row = 0; row < want.recv_rows; ++row) {
      int32_t src[2];
      std::memcpy(src, b + o.recv_src + 8 * static_cast<uint64_t>(row), 8);
      std::memcpy(ids.data(), b + o.recv_ids + 4 * static_cast<uint64_t>(row * I), 4 * static_cast<size_t>(I));
      std::memcpy(w.data(), b + o.recv_weights + 4 * static_cast<uint64_t>(row * I), 4 * static_cast<size_t>(I));
      const bool valid = next < want.rows.size() && want.rows[next].row == row;
      if (!valid) {  // padding hygiene
        if (src[0] != -1 || src[1] != -1)
          return describe_row(r, row) + "padding row has src {" + std::to_string(src[0]) + ", " +
                 std::to_string(src[1]) + "}, expected {-1, -1}";
        for (int32_t j = 0; j < I; ++j) {
          if (ids[j] != -1)
            return describe_row(r, row) + "padding row has id[" + std::to_string(j) + "] = " + std::to_string(ids[j]);
          if (!(w[j] == 0.0f))
            return describe_row(r, row) + "padding row has weight[" + std::to_string(j) + "] = " + std::to_string(w[j]);
        }
        continue;
      }
      const OracleRow& wr = want.rows[next++];
      if (src[0] != wr.src_rank || src[1] != wr.src_token)
        return describe_row(r, row) + "src {" + std::to_string(src[0]) + ", " + std::to_string(src[1]) +
               "}, expected {" + std::to_string(wr.src_rank) + ", " + std::to_string(wr.src_token) + "}";
      for (int32_t j = 0; j < I; ++j) {
        if (ids[j] != wr.ids[j])
          return describe_row(r, row) + "id[" + std::to_string(j) + "] = " + std::to_string(ids[j]) + ", expected " +
                 std::to_string(wr.ids[j]);
        if (std::memcmp(&w[j], &wr.weights[j], 4) != 0 && !(wr.ids[j] == -1 && w[j] == 0.0f))
          return describe_row(r, row) + "weight[" + std::to_string(j) + "] = " + std::to_string(w[j]) +
                 ", expected " + std::to_string(wr.weights[j]);
      }
      const uint8_t* px = b + o.recv_x + static_cast<uint64_t>(row) * d.recv_row_bytes;
      const uint8_t* ex = d.payload[wr.src_rank].data() + static_cast<uint64_t>(wr.src_token) * d.recv_row_bytes;
      if (l.recv_row_bytes != d.recv_row_bytes)
        return "rank " + std::to_string(r) + ": recv_row_bytes " + std::to_string(l.recv_row_bytes) + ", expected " +
               std::to_string(d.recv_row_bytes);
      if (std::memcmp(px, ex, d.recv_row_bytes) != 0) {
        size_t i = 0;
        while (px[i] == ex[i]) ++i;
        return describe_row(r, row) + "payload byte " + std::to_string(i) + " = " + std::to_string(px[i]) +
               ", expected " + std::to_string(ex[i]) + " (src " + std::to_string(wr.src_rank) + ", token " +
               std::to_string(wr.src_token) + ")";
      }
      if (d.scale_blocks > 0) {
        const uint8_t* ps = b + o.recv_scales + 4 * static_cast<uint64_t>(row) * d.scale_blocks;
        const float* es = d.scales[wr.src_rank].data() + static_cast<size_t>(wr.src_token) * d.scale_blocks;
        for (int32_t j = 0; j < d.scale_blocks; ++j) {
          float v;
          std::memcpy(&v, ps + 4 * j, 4);
          if (std::memcmp(&v, &es[j], 4) != 0)
            return describe_row(r, row) + "scale[" + std::to_string(j) + "] = " + std::to_string(v) +
                   ", expected " + std::to_string(es[j]);
        }
      }
    }
    if (next != want.rows.size())
      return "rank " + std::to_string(r) + ": internal: oracle row beyond recv_rows";
  }
  return "";
}

std::string check_conservation(const Group& g, const OracleSpec& s, int32_t slot,
                               const std::vector<OracleInput>& in) {
  const int32_t W = s.world_size, K = s.top_k;
  // seen[src][t * K + k]: deliveries of that pair
  std::vector<std::vector<int32_t>> seen(static_cast<size_t>(W));
  for (int32_t src = 0; src < W; ++src) seen[src].assign(static_cast<size_t>(in[src].n) * K, 0);
  for (int32_t r = 0; r < W; ++r) {
    const epd::RankLayout& l = g.layout(r);
    const epd::SlotOffsets& o = l.slot[slot];
    const uint8_t* b = g.base(r);
    const int32_t I = l.ids_per_row;
    int64_t pairs_here = 0, rows_here = 0;
    std::vector<int32_t> ids(static_cast<size_t>(I));
    for (int64_t row = 0; row < l.recv_rows; ++row) {
      int32_t src[2];
      std::memcpy(src, b + o.recv_src + 8 * static_cast<uint64_t>(row), 8);
      std::memcpy(ids.data(), b + o.recv_ids + 4 * static_cast<uint64_t>(row * I), 4 * static_cast<size_t>(I));
      if (src[0] == -1 && src[1] == -1) continue;
      ++rows_here;
      if (src[0] < 0 || src[0] >= W || src[1] < 0 || src[1] >= in[src[0]].n)
        return describe_row(r, row) + "src {" + std::to_string(src[0]) + ", " + std::to_string(src[1]) +
               "} names no token";
      for (int32_t j = 0; j < I; ++j) {
        const int32_t e = ids[j];
        if (e == -1) continue;
        if (e < 0 || e >= s.num_experts || s.owner[e] != r)
          return describe_row(r, row) + "id " + std::to_string(e) + " is not an expert of this rank";
        int32_t k = -1;
        for (int32_t kk = 0; kk < K; ++kk)
          if (in[src[0]].ids[static_cast<size_t>(src[1]) * K + kk] == e) k = kk;
        if (k < 0)
          return describe_row(r, row) + "id " + std::to_string(e) + " was not routed by its source token";
        ++seen[src[0]][static_cast<size_t>(src[1]) * K + k];
        ++pairs_here;
      }
    }
    int64_t counted = 0;
    for (int32_t e = 0; e < l.local_experts; ++e) {
      int32_t c;
      std::memcpy(&c, b + o.recv_counts + 4 * static_cast<uint64_t>(e), 4);
      counted += c;
    }
    int32_t total;
    std::memcpy(&total, b + o.recv_total, 4);
    if (counted != pairs_here)
      return "rank " + std::to_string(r) + ": recv_counts sum to " + std::to_string(counted) + ", rows carry " +
             std::to_string(pairs_here) + " (token, expert) pairs";
    if (total != rows_here)
      return "rank " + std::to_string(r) + ": recv_total " + std::to_string(total) + ", non-padding rows " +
             std::to_string(rows_here);
  }
  for (int32_t src = 0; src < W; ++src)
    for (size_t tk = 0; tk < seen[src].size(); ++tk) {
      const bool masked = in[src].ids[tk] < 0;
      if (seen[src][tk] != (masked ? 0 : 1))
        return "source rank " + std::to_string(src) + " token " + std::to_string(tk / static_cast<size_t>(K)) +
               " k " + std::to_string(tk % static_cast<size_t>(K)) + " (expert " + std::to_string(in[src].ids[tk]) +
               ") delivered " + std::to_string(seen[src][tk]) + " times";
    }
  return "";
}

void fill_expert_outputs(Group& g, const OracleSpec& s, int32_t slot, const OracleDispatch& d,
                         const ExpertFn& fn, epd_weight_mode_t mode, std::mt19937_64& rng) {
  const int32_t H = s.hidden;
  const size_t db = oracle_dtype_bytes(s.dtype), row_bytes = static_cast<size_t>(H) * db;
  std::vector<float> x(static_cast<size_t>(H)), y(static_cast<size_t>(H));
  for (int32_t r = 0; r < g.world_size(); ++r) {
    uint8_t* ci = g.base(r) + g.layout(r).slot[slot].combine_in;
    const uint64_t bytes = region_bytes(s, r, "combine_in");
    // Garbage on every row; valid rows are overwritten below. Finite garbage
    // (exponent bits capped) keeps a wrong read from hiding behind NaN.
    random_bytes(rng, ci, bytes);
    for (uint64_t i = 0; i + db <= bytes; i += db) ci[i + db - 1] &= 0xbf;  // little endian: top byte
    for (const OracleRow& row : d.ranks[r].rows) {
      const uint8_t* p = d.payload[row.src_rank].data() + static_cast<size_t>(row.src_token) * d.recv_row_bytes;
      for (int32_t i = 0; i < H; ++i) {
        if (s.fp8)
          x[i] = oracle_fp8_to_float(p[i]) *
                 d.scales[row.src_rank][static_cast<size_t>(row.src_token) * d.scale_blocks + i / 128];
        else
          x[i] = oracle_load(p, i, s.dtype);
      }
      std::fill(y.begin(), y.end(), 0.0f);
      for (size_t j = 0; j < row.ids.size(); ++j) {
        const int32_t e = row.ids[j];
        if (e < 0) continue;
        const bool weigh = mode == EPD_WEIGHTS_ALREADY_APPLIED;
        for (int32_t i = 0; i < H; ++i) {
          const float ax = fn.a[e] * x[i];
          const float v = ax + fn.b[e];
          const float term = weigh ? row.weights[j] * v : v;
          y[i] = y[i] + term;
        }
      }
      for (int32_t i = 0; i < H; ++i) oracle_store(ci + static_cast<size_t>(row.row) * row_bytes, i, y[i], s.dtype);
    }
  }
}

void random_bytes(std::mt19937_64& rng, uint8_t* p, uint64_t n) {
  uint64_t x = rng();
  for (uint64_t i = 0; i < n; i += 8) {
    // splitmix64
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(p + i, &z, std::min<uint64_t>(8, n - i));
  }
}

void scribble_send_slot(Group& g, const OracleSpec& s, int32_t slot, std::mt19937_64& rng) {
  for (int32_t r = 0; r < g.world_size(); ++r) {
    const epd::SlotOffsets& o = g.layout(r).slot[slot];
    random_bytes(rng, g.base(r) + o.send_ids, region_bytes(s, r, "send_ids"));
    random_bytes(rng, g.base(r) + o.send_weights, region_bytes(s, r, "send_weights"));
    const uint32_t n = static_cast<uint32_t>(rng() % (2u * static_cast<uint32_t>(s.max_tokens) + 2u));
    std::memcpy(g.base(r) + o.send_hdr, &n, 4);
  }
}

std::vector<const uint8_t*> combine_in_ptrs(const Group& g, int32_t slot) {
  std::vector<const uint8_t*> p;
  for (int32_t r = 0; r < g.world_size(); ++r) p.push_back(g.base(r) + g.layout(r).slot[slot].combine_in);
  return p;
}

std::string check_combine(const Group& g, const OracleSpec& s, int32_t slot,
                          const std::vector<std::vector<uint8_t>>& expected) {
  const size_t db = oracle_dtype_bytes(s.dtype), row_bytes = static_cast<size_t>(s.hidden) * db;
  for (int32_t r = 0; r < g.world_size(); ++r) {
    const uint8_t* out = g.base(r) + g.layout(r).slot[slot].combine_out;
    const std::vector<uint8_t>& want = expected[r];
    if (std::memcmp(out, want.data(), want.size()) == 0) continue;
    size_t i = 0;
    while (out[i] == want[i]) ++i;
    const size_t t = i / row_bytes, e = (i % row_bytes) / db;
    char buf[200];
    std::snprintf(buf, sizeof buf, "rank %d: combine_out[%zu][%zu] = %.9g, expected %.9g (bitwise)", r, t, e,
                  static_cast<double>(oracle_load(out + t * row_bytes, static_cast<int64_t>(e), s.dtype)),
                  static_cast<double>(oracle_load(want.data() + t * row_bytes, static_cast<int64_t>(e), s.dtype)));
    return buf;
  }
  return "";
}

std::vector<epd_weight_mode_t> valid_modes(epd_layout_t layout) {
  if (layout == EPD_LAYOUT_RANK_MAJOR) return {EPD_WEIGHTS_ALREADY_APPLIED, EPD_WEIGHTS_ONES};
  return {EPD_WEIGHTS_APPLY, EPD_WEIGHTS_ALREADY_APPLIED, EPD_WEIGHTS_ONES};
}

}  // namespace epd_test
