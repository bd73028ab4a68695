// host_executor.cc — HostExecutor.
#include "host_executor.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "checked.h"
#include "numeric.h"

namespace epd {

namespace {

// acc[i] += y[i] or acc[i] += w * y[i] (the product rounded first: no FMA).
// Written as plain loops over one dtype each so the compiler vectorises them.
template <typename Load>
void accumulate(float* acc, int32_t H, bool apply, float w, Load load) {
  if (apply) {
    for (int32_t i = 0; i < H; ++i) acc[i] = acc[i] + w * load(i);
  } else {
    for (int32_t i = 0; i < H; ++i) acc[i] = acc[i] + load(i);
  }
}

void accumulate_row(float* acc, const uint8_t* y, int32_t H, epd_dtype_t dtype, bool apply, float w) {
  switch (dtype) {
    case EPD_DTYPE_BF16: {
      const auto* p = reinterpret_cast<const uint16_t*>(y);
      accumulate(acc, H, apply, w, [p](int32_t i) { return bits_float(static_cast<uint32_t>(p[i]) << 16); });
      return;
    }
    case EPD_DTYPE_FP16: {
      const auto* p = reinterpret_cast<const uint16_t*>(y);
      accumulate(acc, H, apply, w, [p](int32_t i) { return fp16_to_float(p[i]); });
      return;
    }
    case EPD_DTYPE_FP32: {
      const auto* p = reinterpret_cast<const float*>(y);
      accumulate(acc, H, apply, w, [p](int32_t i) { return p[i]; });
      return;
    }
  }
}

void store_row(uint8_t* out, const float* acc, int32_t H, epd_dtype_t dtype) {
  if (dtype == EPD_DTYPE_BF16) {
    auto* o = reinterpret_cast<uint16_t*>(out);
    for (int32_t i = 0; i < H; ++i) {
      const uint32_t u = float_bits(acc[i]);
      const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
      const uint32_t nan = (u >> 16) | 0x40u;
      o[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
    }
    return;
  }
  for (int32_t i = 0; i < H; ++i) store_from_float(out, i, acc[i], dtype);
}

int32_t load_once(const void* p) {
  return reinterpret_cast<const std::atomic<int32_t>*>(p)->load(std::memory_order_acquire);
}

}  // namespace

HostExecutor::HostExecutor(const GroupSpec& spec, std::vector<uint8_t*> rank_bases, ThreadPool* pool)
    : spec_(spec),
      layout_(GroupLayout::compute(spec)),
      bases_(std::move(rank_bases)),
      pool_(pool ? pool : &ThreadPool::shared()),
      local_index_(spec.local_index()),
      slots_(static_cast<size_t>(spec.slots)),
      q_(static_cast<size_t>(spec.world_size)),
      scales_(static_cast<size_t>(spec.world_size)) {}

Status HostExecutor::read_and_check(int32_t slot, std::vector<std::vector<int32_t>>& ids,
                                    std::vector<std::vector<float>>& weights) {
  const int32_t W = spec_.world_size, K = spec_.top_k, M = spec_.max_tokens_per_rank;
  SlotState& st = slots_[slot];
  st.n.assign(static_cast<size_t>(W), 0);
  // Token counts first, each read once; they also size the work, which decides
  // whether the pool is worth waking (an empty or tiny call runs inline).
  CheckedSize elements;
  for (int32_t s = 0; s < W; ++s) {
    const int32_t n = load_once(at(s, layout_.ranks[s].slot[slot].send_hdr));
    if (n < 0 || n > M)
      return make_status(EPD_ERR_CAPACITY_EXCEEDED,
                         "rank %d: n_tokens = %d is outside [0, max_tokens_per_rank = %d]", s, n, M);
    st.n[s] = n;
    elements += CheckedSize(static_cast<uint64_t>(n)) * static_cast<uint64_t>(spec_.hidden) * static_cast<uint64_t>(K);
  }
  // An overflowed sum saturates: plenty of work, so the pool runs it.
  inline_ = st.inline_work = elements.value() < static_cast<uint64_t>(kInlineElements);
  std::vector<Status> errors(static_cast<size_t>(W));
  const bool fp8 = spec_.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128;
  for_each_rank([&](int64_t s) {
    const RankLayout& l = layout_.ranks[s];
    const SlotOffsets& o = l.slot[slot];
    const int32_t n = st.n[s];
    const size_t nk = static_cast<size_t>(n) * K;
    ids[s].resize(nk);
    weights[s].resize(nk);
    if (nk > 0) {
      std::memcpy(ids[s].data(), at(static_cast<int32_t>(s), o.send_ids), nk * 4);
      std::memcpy(weights[s].data(), at(static_cast<int32_t>(s), o.send_weights), nk * 4);
    }
    char where[32];
    std::snprintf(where, sizeof where, "rank %lld: ", static_cast<long long>(s));
    for (int32_t t = 0; t < n; ++t) {
      Status c = check_id_row(spec_, ids[s].data() + static_cast<size_t>(t) * K, t, where);
      if (!c) {
        errors[s] = c;
        return;
      }
    }
    if (fp8) {
      const int32_t H = spec_.hidden;
      q_[s].resize(static_cast<size_t>(n) * H);
      scales_[s].resize(static_cast<size_t>(n) * (H / EPD_FP8_BLOCK));
      const uint8_t* x = at(static_cast<int32_t>(s), o.send_x);
      for (int32_t t = 0; t < n; ++t)
        quantize_row_fp8(x + static_cast<size_t>(t) * l.in_row_bytes, H, spec_.dtype,
                         q_[s].data() + static_cast<size_t>(t) * H,
                         scales_[s].data() + static_cast<size_t>(t) * (H / EPD_FP8_BLOCK));
    }
  });
  for (auto& e : errors)
    if (!e) return e;
  return Status::ok();
}

void HostExecutor::for_each_rank(const std::function<void(int64_t)>& fn) {
  if (inline_) {
    for (int64_t r = 0; r < spec_.world_size; ++r) fn(r);
  } else {
    pool_->parallel_for(spec_.world_size, fn);
  }
}

Status HostExecutor::dispatch(int32_t slot) {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  const int32_t W = spec_.world_size, K = spec_.top_k, M = spec_.max_tokens_per_rank;
  SlotState& st = slots_[slot];
  st.dispatched = false;
  std::vector<std::vector<int32_t>> ids(static_cast<size_t>(W));
  std::vector<std::vector<float>> weights(static_cast<size_t>(W));
  EPD_RETURN_IF_ERROR(read_and_check(slot, ids, weights));

  // Plan: row of every (source, token, k) at its destination, in (source, token, k) order.
  const bool rank_major = spec_.layout == EPD_LAYOUT_RANK_MAJOR;
  const int64_t WM = static_cast<int64_t>(W) * M;
  st.route_rank.assign(static_cast<size_t>(W), {});
  st.route_row.assign(static_cast<size_t>(W), {});
  std::vector<int32_t> next_row(rank_major ? static_cast<size_t>(W) : static_cast<size_t>(spec_.num_experts), 0);
  for (int32_t s = 0; s < W; ++s) {
    const int32_t n = st.n[s];
    auto& rr = st.route_rank[s];
    auto& rw = st.route_row[s];
    rr.assign(static_cast<size_t>(n) * K, -1);
    rw.assign(static_cast<size_t>(n) * K, -1);
    for (int32_t t = 0; t < n; ++t) {
      for (int32_t k = 0; k < K; ++k) {
        const int32_t e = ids[s][static_cast<size_t>(t) * K + k];
        if (e < 0) continue;
        const int32_t r = spec_.expert_owner[e];
        rr[static_cast<size_t>(t) * K + k] = r;
        if (rank_major) {
          int32_t row = -1;
          for (int32_t j = 0; j < k; ++j)
            if (rr[static_cast<size_t>(t) * K + j] == r) row = rw[static_cast<size_t>(t) * K + j];
          rw[static_cast<size_t>(t) * K + k] = row >= 0 ? row : next_row[r]++;
        } else {
          rw[static_cast<size_t>(t) * K + k] =
              static_cast<int32_t>(local_index_[e] * WM + next_row[e]++);
        }
      }
    }
  }

  // Write every destination's outputs.
  const bool fp8 = spec_.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128;
  const int32_t nb = fp8 ? spec_.hidden / EPD_FP8_BLOCK : 0;
  for_each_rank([&](int64_t rr64) {
    const int32_t r = static_cast<int32_t>(rr64);
    const RankLayout& l = layout_.ranks[r];
    const SlotOffsets& o = l.slot[slot];
    const int32_t I = l.ids_per_row;
    auto* rx = at(r, o.recv_x);
    auto* rscale = reinterpret_cast<float*>(at(r, o.recv_scales));
    auto* rid = reinterpret_cast<int32_t*>(at(r, o.recv_ids));
    auto* rw = reinterpret_cast<float*>(at(r, o.recv_weights));
    auto* rsrc = reinterpret_cast<int32_t*>(at(r, o.recv_src));
    auto* counts = reinterpret_cast<int32_t*>(at(r, o.recv_counts));
    std::vector<uint8_t> written(static_cast<size_t>(l.recv_rows), 0);
    std::vector<int32_t> cnt(static_cast<size_t>(l.local_experts), 0);
    int64_t total = 0;
    for (int32_t s = 0; s < W; ++s) {
      const uint8_t* sx = at(s, layout_.ranks[s].slot[slot].send_x);
      for (int32_t t = 0; t < st.n[s]; ++t) {
        for (int32_t k = 0; k < K; ++k) {
          const size_t tk = static_cast<size_t>(t) * K + k;
          if (st.route_rank[s][tk] != r) continue;
          const int64_t row = st.route_row[s][tk];
          const int32_t e = ids[s][tk];
          cnt[local_index_[e]]++;
          if (rank_major) {
            if (!written[row]) {
              written[row] = 1;
              ++total;
              for (int32_t j = 0; j < I; ++j) {
                const int32_t ej = ids[s][static_cast<size_t>(t) * K + j];
                const bool local = ej >= 0 && spec_.expert_owner[ej] == r;
                rid[row * I + j] = local ? ej : -1;
                rw[row * I + j] = local ? weights[s][static_cast<size_t>(t) * K + j] : 0.0f;
              }
            } else {
              continue;  // payload already written by an earlier k of this token
            }
          } else {
            written[row] = 1;
            ++total;
            rid[row] = e;
            rw[row] = weights[s][tk];
          }
          rsrc[row * 2] = s;
          rsrc[row * 2 + 1] = t;
          if (fp8) {
            std::memcpy(rx + row * l.recv_row_bytes, q_[s].data() + static_cast<size_t>(t) * spec_.hidden,
                        static_cast<size_t>(spec_.hidden));
            std::memcpy(rscale + row * nb, scales_[s].data() + static_cast<size_t>(t) * nb,
                        static_cast<size_t>(nb) * 4);
          } else {
            std::memcpy(rx + row * l.recv_row_bytes, sx + static_cast<size_t>(t) * l.in_row_bytes,
                        l.recv_row_bytes);
          }
        }
      }
    }
    for (int64_t row = 0; row < l.recv_rows; ++row) {
      if (written[row]) continue;
      for (int32_t j = 0; j < I; ++j) {
        rid[row * I + j] = -1;
        rw[row * I + j] = 0.0f;
      }
      rsrc[row * 2] = -1;
      rsrc[row * 2 + 1] = -1;
    }
    // A rank that owns no expert has an empty counts region (and cnt.data() may be null).
    if (!cnt.empty()) std::memcpy(counts, cnt.data(), cnt.size() * 4);
    reinterpret_cast<std::atomic<int32_t>*>(at(r, o.recv_total))
        ->store(static_cast<int32_t>(total), std::memory_order_release);
  });
  st.weight = std::move(weights);
  st.dispatched = true;
  return Status::ok();
}

Status HostExecutor::combine(int32_t slot, epd_weight_mode_t mode) {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  const bool rank_major = spec_.layout == EPD_LAYOUT_RANK_MAJOR;
  EPD_RETURN_IF_ERROR(check_weight_mode(spec_, mode));
  SlotState& st = slots_[slot];
  if (!st.dispatched)
    return make_status(EPD_ERR_NO_DISPATCH, "combine on slot %d without a dispatch", slot);
  st.dispatched = false;
  inline_ = st.inline_work;
  const int32_t K = spec_.top_k, H = spec_.hidden;
  const bool apply = mode == EPD_WEIGHTS_APPLY;
  for_each_rank([&](int64_t s64) {
    const int32_t s = static_cast<int32_t>(s64);
    const RankLayout& l = layout_.ranks[s];
    uint8_t* out = at(s, l.slot[slot].combine_out);
    std::vector<float> acc(static_cast<size_t>(H));
    std::vector<int32_t> dests;
    for (int32_t t = 0; t < st.n[s]; ++t) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      const int32_t* rr = st.route_rank[s].data() + static_cast<size_t>(t) * K;
      const int32_t* rw = st.route_row[s].data() + static_cast<size_t>(t) * K;
      auto add_row = [&](int32_t r, int64_t row, float w) {
        const RankLayout& dl = layout_.ranks[r];
        const uint8_t* y = at(r, dl.slot[slot].combine_in) + row * dl.in_row_bytes;
        accumulate_row(acc.data(), y, H, spec_.dtype, apply, w);
      };
      if (rank_major) {
        dests.clear();
        for (int32_t k = 0; k < K; ++k)
          if (rr[k] >= 0 && std::find(dests.begin(), dests.end(), rr[k]) == dests.end())
            dests.push_back(rr[k]);
        std::sort(dests.begin(), dests.end());
        for (int32_t r : dests)
          for (int32_t k = 0; k < K; ++k)
            if (rr[k] == r) {
              add_row(r, rw[k], 1.0f);
              break;
            }
      } else {
        for (int32_t k = 0; k < K; ++k) {
          if (rr[k] < 0) continue;
          add_row(rr[k], rw[k], st.weight[s][static_cast<size_t>(t) * K + k]);
        }
      }
      store_row(out + static_cast<size_t>(t) * l.in_row_bytes, acc.data(), H, spec_.dtype);
    }
  });
  return Status::ok();
}

}  // namespace epd
