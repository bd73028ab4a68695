// oracle.cc — the independent reference (see oracle.h). Conversions search the
// target format's codes instead of manipulating exponents, so they share no
// technique with numeric.h.
#include "oracle.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace epd_test {

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Magnitude of a positive code of a format, with the all-ones exponent read as
// an ordinary binade (so the infinity code stands for the first value past the
// largest finite one, which is what round-to-nearest compares against).
double bf16_magnitude(uint32_t c) {
  const int exp = static_cast<int>(c >> 7), man = static_cast<int>(c & 0x7f);
  return exp == 0 ? std::ldexp(static_cast<double>(man), -133)
                  : std::ldexp(static_cast<double>(128 + man), exp - 134);
}
double fp16_magnitude(uint32_t c) {
  const int exp = static_cast<int>(c >> 10), man = static_cast<int>(c & 0x3ff);
  return exp == 0 ? std::ldexp(static_cast<double>(man), -24)
                  : std::ldexp(static_cast<double>(1024 + man), exp - 25);
}
double fp8_magnitude(uint32_t c) {
  const int exp = static_cast<int>(c >> 3), man = static_cast<int>(c & 0x7);
  return exp == 0 ? std::ldexp(static_cast<double>(man), -9)
                  : std::ldexp(static_cast<double>(8 + man), exp - 10);
}

// Magnitudes of the codes [0, top] of a format, ascending (codes are monotone
// in magnitude), built once.
template <typename Mag>
std::vector<double> magnitude_table(uint32_t top, Mag magnitude) {
  std::vector<double> t(top + 1);
  for (uint32_t c = 0; c <= top; ++c) t[c] = magnitude(c);
  return t;
}

const std::vector<double>& bf16_table() {
  static const std::vector<double> t = magnitude_table(0x7f80u, bf16_magnitude);
  return t;
}
const std::vector<double>& fp16_table() {
  static const std::vector<double> t = magnitude_table(0x7c00u, fp16_magnitude);
  return t;
}
const std::vector<double>& fp8_table() {
  static const std::vector<double> t = magnitude_table(0x7eu, fp8_magnitude);
  return t;
}

// Nearest code to mag among the table's codes, ties to the even code; mag at or
// past the last entry gives the last code.
uint32_t nearest_code(double mag, const std::vector<double>& table) {
  const uint32_t top = static_cast<uint32_t>(table.size() - 1);
  if (mag >= table[top]) return top;
  // first code whose magnitude exceeds mag; the one below it is <= mag
  const uint32_t hi = static_cast<uint32_t>(std::upper_bound(table.begin(), table.end(), mag) - table.begin());
  const uint32_t lo = hi - 1;
  const double dlo = mag - table[lo], dhi = table[hi] - mag;
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo % 2 == 0) ? lo : hi;
}

}  // namespace

uint16_t oracle_float_to_bf16(float f) {
  const uint16_t sign = static_cast<uint16_t>((bits_of(f) >> 16) & 0x8000u);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7fc0u);
  if (std::isinf(f)) return static_cast<uint16_t>(sign | 0x7f80u);
  return static_cast<uint16_t>(
      sign | nearest_code(std::fabs(static_cast<double>(f)), bf16_table()));
}

float oracle_bf16_to_float(uint16_t h) {
  const bool neg = h & 0x8000u;
  const uint32_t c = h & 0x7fffu;
  float v;
  if (c > 0x7f80u)
    v = std::nanf("");
  else if (c == 0x7f80u)
    v = INFINITY;
  else
    v = static_cast<float>(bf16_table()[c]);
  return neg ? -v : v;
}

uint16_t oracle_float_to_fp16(float f) {
  const uint16_t sign = static_cast<uint16_t>((bits_of(f) >> 16) & 0x8000u);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7e00u);
  if (std::isinf(f)) return static_cast<uint16_t>(sign | 0x7c00u);
  return static_cast<uint16_t>(
      sign | nearest_code(std::fabs(static_cast<double>(f)), fp16_table()));
}

float oracle_fp16_to_float(uint16_t h) {
  const bool neg = h & 0x8000u;
  const uint32_t c = h & 0x7fffu;
  float v;
  if (c > 0x7c00u)
    v = std::nanf("");
  else if (c == 0x7c00u)
    v = INFINITY;
  else
    v = static_cast<float>(fp16_table()[c]);
  return neg ? -v : v;
}

uint8_t oracle_float_to_fp8(float f) {
  const uint8_t sign = static_cast<uint8_t>((bits_of(f) >> 24) & 0x80u);
  if (std::isnan(f)) return static_cast<uint8_t>(sign | 0x7fu);
  // Saturating: everything at or past 448 (infinities included) is 0x7e.
  return static_cast<uint8_t>(
      sign | nearest_code(std::fabs(static_cast<double>(f)), fp8_table()));
}

float oracle_fp8_to_float(uint8_t v) {
  const bool neg = v & 0x80u;
  const uint32_t c = v & 0x7fu;
  const float m = c == 0x7fu ? std::nanf("") : static_cast<float>(fp8_table()[c]);
  return neg ? -m : m;
}

size_t oracle_dtype_bytes(epd_dtype_t d) { return d == EPD_DTYPE_FP32 ? 4 : 2; }

float oracle_load(const void* row, int64_t i, epd_dtype_t d) {
  const auto* p = static_cast<const uint8_t*>(row);
  if (d == EPD_DTYPE_FP32) {
    float v;
    std::memcpy(&v, p + i * 4, 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, p + i * 2, 2);
  return d == EPD_DTYPE_BF16 ? oracle_bf16_to_float(h) : oracle_fp16_to_float(h);
}

void oracle_store(void* row, int64_t i, float v, epd_dtype_t d) {
  auto* p = static_cast<uint8_t*>(row);
  if (d == EPD_DTYPE_FP32) {
    std::memcpy(p + i * 4, &v, 4);
    return;
  }
  const uint16_t h = d == EPD_DTYPE_BF16 ? oracle_float_to_bf16(v) : oracle_float_to_fp16(v);
  std::memcpy(p + i * 2, &h, 2);
}

void oracle_quantize_row(const void* row, int32_t hidden, epd_dtype_t d, uint8_t* q,
                         float* scales) {
  for (int32_t b = 0; b * 128 < hidden; ++b) {
    float amax = 0.0f;
    for (int32_t i = 0; i < 128; ++i) {
      const float a = std::fabs(oracle_load(row, b * 128 + i, d));
      if (a > amax) amax = a;
    }
    const float scale = amax / 448.0f;
    scales[b] = scale;
    for (int32_t i = 0; i < 128; ++i) {
      const float x = oracle_load(row, b * 128 + i, d);
      q[b * 128 + i] = scale == 0.0f ? uint8_t{0} : oracle_float_to_fp8(x / scale);
    }
  }
}

int32_t oracle_contiguous_owner(int32_t e, int32_t num_experts, int32_t world_size) {
  const int32_t base = num_experts / world_size, extra = num_experts % world_size;
  int32_t start = 0;
  for (int32_t r = 0; r < world_size; ++r) {
    const int32_t count = base + (r < extra ? 1 : 0);
    if (e < start + count) return r;
    start += count;
  }
  return -1;
}

namespace {

int32_t local_count(const OracleLayoutSpec& s, int32_t rank) {
  return static_cast<int32_t>(std::count(s.owner.begin(), s.owner.end(), rank));
}

}  // namespace

std::vector<OracleRegion> oracle_slot_regions(const OracleLayoutSpec& s, int32_t rank) {
  const uint64_t M = static_cast<uint64_t>(s.max_tokens), K = static_cast<uint64_t>(s.top_k),
                 H = static_cast<uint64_t>(s.hidden), W = static_cast<uint64_t>(s.world_size),
                 L = static_cast<uint64_t>(local_count(s, rank)), db = oracle_dtype_bytes(s.dtype);
  const bool rank_major = s.layout == EPD_LAYOUT_RANK_MAJOR;
  const uint64_t R = rank_major ? W * M : L * W * M, I = rank_major ? K : 1;
  const uint64_t row = s.fp8 ? H : H * db, blocks = s.fp8 ? H / 128 : 0;
  return {{"send_hdr", 64},          {"send_x", M * H * db},       {"send_ids", M * K * 4},
          {"send_weights", M * K * 4}, {"route_rank", M * K * 4},  {"route_row", M * K * 4},
          {"recv_total", 4},         {"recv_counts", L * 4},       {"recv_x", R * row},
          {"recv_scales", R * blocks * 4}, {"recv_ids", R * I * 4}, {"recv_weights", R * I * 4},
          {"recv_src", R * 8},       {"combine_in", R * H * db},   {"combine_out", M * H * db}};
}

uint64_t oracle_workspace_bytes(const OracleLayoutSpec& s, int32_t rank) {
  uint64_t slot = 0;
  for (const auto& r : oracle_slot_regions(s, rank)) slot += (r.bytes + 255) / 256 * 256;
  return 4096 + static_cast<uint64_t>(s.slots) * slot;
}

OracleDispatch oracle_dispatch(const OracleSpec& s, const std::vector<OracleInput>& in) {
  const int32_t W = s.world_size, K = s.top_k, H = s.hidden, E = s.num_experts;
  const int64_t WM = static_cast<int64_t>(W) * s.max_tokens;
  const bool rank_major = s.layout == EPD_LAYOUT_RANK_MAJOR;
  const uint64_t in_row = static_cast<uint64_t>(H) * oracle_dtype_bytes(s.dtype);

  // Local index of every expert: its position among its owner's experts, ascending.
  std::vector<int32_t> lidx(static_cast<size_t>(E));
  std::vector<int32_t> seen(static_cast<size_t>(W), 0);
  for (int32_t e = 0; e < E; ++e) lidx[e] = seen[s.owner[e]]++;

  OracleDispatch d;
  d.recv_row_bytes = s.fp8 ? static_cast<uint64_t>(H) : in_row;
  d.scale_blocks = s.fp8 ? H / 128 : 0;
  d.ranks.resize(static_cast<size_t>(W));
  for (int32_t r = 0; r < W; ++r) {
    OracleRank& o = d.ranks[r];
    o.local_experts = seen[r];
    o.recv_rows = rank_major ? WM : seen[r] * WM;
    o.ids_per_row = rank_major ? K : 1;
    o.counts.assign(static_cast<size_t>(seen[r]), 0);
  }

  d.payload.resize(static_cast<size_t>(W));
  d.scales.resize(static_cast<size_t>(W));
  for (int32_t src = 0; src < W; ++src) {
    const OracleInput& x = in[src];
    if (s.fp8) {
      d.payload[src].resize(static_cast<size_t>(x.n) * H);
      d.scales[src].resize(static_cast<size_t>(x.n) * (H / 128));
      for (int32_t t = 0; t < x.n; ++t)
        oracle_quantize_row(x.x.data() + t * in_row, H, s.dtype, d.payload[src].data() + t * H,
                            d.scales[src].data() + t * (H / 128));
    } else {
      d.payload[src] = x.x;
    }
  }

  std::vector<int64_t> next_row(static_cast<size_t>(W), 0);
  std::vector<int64_t> next_in_expert(static_cast<size_t>(E), 0);
  d.route.resize(static_cast<size_t>(W));
  for (int32_t src = 0; src < W; ++src) {
    const OracleInput& x = in[src];
    auto& route = d.route[src];
    route.assign(static_cast<size_t>(x.n) * K, {-1, -1});
    const auto weight = [&](int32_t t, int32_t k) {
      return x.weights.empty() ? 1.0f : x.weights[static_cast<size_t>(t) * K + k];
    };
    for (int32_t t = 0; t < x.n; ++t) {
      for (int32_t k = 0; k < K; ++k) {
        const int64_t e = x.ids[static_cast<size_t>(t) * K + k];
        if (e < 0) continue;
        const int32_t r = s.owner[e];
        OracleRank& dst = d.ranks[r];
        dst.counts[lidx[e]]++;
        OracleRow row;
        row.src_rank = src;
        row.src_token = t;
        if (rank_major) {
          int64_t existing = -1;
          for (int32_t j = 0; j < k; ++j)
            if (route[static_cast<size_t>(t) * K + j].first == r) {
              existing = route[static_cast<size_t>(t) * K + j].second;
              break;
            }
          if (existing >= 0) {
            route[static_cast<size_t>(t) * K + k] = {r, existing};
            continue;
          }
          row.row = next_row[r]++;
          for (int32_t j = 0; j < K; ++j) {
            const int64_t ej = x.ids[static_cast<size_t>(t) * K + j];
            const bool local = ej >= 0 && s.owner[ej] == r;
            row.ids.push_back(local ? static_cast<int32_t>(ej) : -1);
            row.weights.push_back(local ? weight(t, j) : 0.0f);
          }
        } else {
          row.row = lidx[e] * WM + next_in_expert[e]++;
          row.ids.push_back(static_cast<int32_t>(e));
          row.weights.push_back(weight(t, k));
        }
        route[static_cast<size_t>(t) * K + k] = {r, row.row};
        dst.total++;
        dst.rows.push_back(std::move(row));
      }
    }
  }
  for (auto& r : d.ranks)
    std::sort(r.rows.begin(), r.rows.end(),
              [](const OracleRow& a, const OracleRow& b) { return a.row < b.row; });
  return d;
}

std::vector<std::vector<uint8_t>> oracle_combine(const OracleSpec& s,
                                                 const std::vector<OracleInput>& in,
                                                 const OracleDispatch& d, epd_weight_mode_t mode,
                                                 const std::vector<const uint8_t*>& combine_in) {
  const int32_t W = s.world_size, K = s.top_k, H = s.hidden;
  const size_t db = oracle_dtype_bytes(s.dtype);
  const size_t row_bytes = static_cast<size_t>(H) * db;
  std::vector<std::vector<uint8_t>> out(static_cast<size_t>(W));
  std::vector<float> acc(static_cast<size_t>(H));
  for (int32_t src = 0; src < W; ++src) {
    const OracleInput& x = in[src];
    out[src].assign(static_cast<size_t>(x.n) * row_bytes, 0);
    for (int32_t t = 0; t < x.n; ++t) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      const auto add = [&](int32_t r, int64_t row, bool scaled, float w) {
        const uint8_t* y = combine_in[r] + static_cast<size_t>(row) * row_bytes;
        for (int32_t i = 0; i < H; ++i) {
          const float v = oracle_load(y, i, s.dtype);
          const float term = scaled ? w * v : v;
          acc[i] = acc[i] + term;
        }
      };
      if (s.layout == EPD_LAYOUT_RANK_MAJOR) {
        // One row per destination rank, ranks ascending.
        for (int32_t r = 0; r < W; ++r)
          for (int32_t k = 0; k < K; ++k) {
            const auto& rt = d.route[src][static_cast<size_t>(t) * K + k];
            if (rt.first == r) {
              add(r, rt.second, false, 1.0f);
              break;
            }
          }
      } else {
        for (int32_t k = 0; k < K; ++k) {
          const auto& rt = d.route[src][static_cast<size_t>(t) * K + k];
          if (rt.first < 0) continue;
          const float w = x.weights.empty() ? 1.0f : x.weights[static_cast<size_t>(t) * K + k];
          add(rt.first, rt.second, mode == EPD_WEIGHTS_APPLY, w);
        }
      }
      for (int32_t i = 0; i < H; ++i) oracle_store(out[src].data() + t * row_bytes, i, acc[i], s.dtype);
    }
  }
  return out;
}

}  // namespace epd_test
