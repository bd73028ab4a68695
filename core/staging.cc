// staging.cc — checks and copies one rank's dispatch inputs (staging.h).
#include "staging.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "checked.h"

namespace epd {

Status check_id_row(const GroupSpec& spec, const int32_t* ids, int32_t token, const char* where) {
  const int32_t K = spec.top_k;
  for (int32_t k = 0; k < K; ++k) {
    const int32_t e = ids[k];
    if (e < -1 || e >= spec.num_experts)
      return make_status(EPD_ERR_EXPERT_ID_OUT_OF_RANGE, "%stopk_ids[%d][%d] = %d is outside [-1, %d)",
                         where, token, k, e, spec.num_experts);
    if (e < 0) continue;
    for (int32_t j = 0; j < k; ++j)
      if (ids[j] == e)
        return make_status(EPD_ERR_INVALID_ARGUMENT,
                           "%stopk_ids[%d] lists expert %d twice (k = %d and k = %d)", where,
                           token, e, j, k);
  }
  return Status::ok();
}

Status check_token_count(const GroupSpec& spec, int64_t n_tokens) {
  if (n_tokens < 0)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "n_tokens = %lld is negative", static_cast<long long>(n_tokens));
  if (n_tokens > spec.max_tokens_per_rank)
    return make_status(EPD_ERR_CAPACITY_EXCEEDED, "n_tokens = %lld is above max_tokens_per_rank = %d",
                       static_cast<long long>(n_tokens), spec.max_tokens_per_rank);
  return Status::ok();
}

Status stage_dispatch_inputs(const GroupSpec& spec, const RankLayout& layout, uint8_t* base,
                             int32_t slot, const DispatchInputs& in) {
  if (slot < 0 || slot >= spec.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec.slots);
  EPD_RETURN_IF_ERROR(check_token_count(spec, in.n_tokens));
  if (in.id_dtype != EPD_ID_INT32 && in.id_dtype != EPD_ID_INT64)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "id_dtype = %d is neither int32 (0) nor int64 (1)",
                       static_cast<int>(in.id_dtype));
  const int64_t n = in.n_tokens, K = spec.top_k;
  if (n > 0 && (!in.x || !in.topk_ids))
    return make_status(EPD_ERR_INVALID_ARGUMENT, "%s is NULL with n_tokens = %d",
                       in.x ? "topk_ids" : "x", in.n_tokens);
  // n <= max_tokens_per_rank, so these fit whenever the layout did; checked
  // all the same, as every size computed from a spec.
  uint64_t id_count = 0, x_bytes = 0;
  if (layout.overflowed || !checked_mul(static_cast<uint64_t>(n), static_cast<uint64_t>(K), &id_count) ||
      !checked_mul(static_cast<uint64_t>(n), layout.in_row_bytes, &x_bytes))
    return make_status(EPD_ERR_INVALID_SPEC, "n_tokens = %d: the send slot's size does not fit in 64 bits",
                       in.n_tokens);
  const SlotOffsets& o = layout.slot[slot];
  auto* ids = reinterpret_cast<int32_t*>(base + o.send_ids);
  // Convert and check into a private row first so an error writes nothing.
  std::vector<int32_t> row(static_cast<size_t>(K));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      int64_t v = in.id_dtype == EPD_ID_INT32 ? static_cast<const int32_t*>(in.topk_ids)[t * K + k]
                                              : static_cast<const int64_t*>(in.topk_ids)[t * K + k];
      if (v < -1 || v >= spec.num_experts)
        return make_status(EPD_ERR_EXPERT_ID_OUT_OF_RANGE, "topk_ids[%lld][%lld] = %lld is outside [-1, %d)",
                           static_cast<long long>(t), static_cast<long long>(k),
                           static_cast<long long>(v), spec.num_experts);
      row[k] = static_cast<int32_t>(v);
    }
    EPD_RETURN_IF_ERROR(check_id_row(spec, row.data(), static_cast<int32_t>(t), ""));
  }
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < K; ++k)
      ids[t * K + k] = in.id_dtype == EPD_ID_INT32
                           ? static_cast<const int32_t*>(in.topk_ids)[t * K + k]
                           : static_cast<int32_t>(static_cast<const int64_t*>(in.topk_ids)[t * K + k]);
  auto* w = reinterpret_cast<float*>(base + o.send_weights);
  if (in.topk_weights) {
    if (n > 0) std::memcpy(w, in.topk_weights, static_cast<size_t>(id_count) * sizeof(float));
  } else {
    std::fill(w, w + id_count, 1.0f);
  }
  if (n > 0) std::memcpy(base + o.send_x, in.x, static_cast<size_t>(x_bytes));
  reinterpret_cast<std::atomic<uint32_t>*>(base + o.send_hdr)
      ->store(static_cast<uint32_t>(n), std::memory_order_release);
  return Status::ok();
}

}  // namespace epd
