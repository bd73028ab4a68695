// layout.cc — workspace layout computation and the C entry points over it.
#include "layout.h"

#include <cstdio>
#include <cstring>

namespace epd {

namespace {

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Hands out consecutive aligned regions.
class Bump {
 public:
  explicit Bump(uint64_t start) : next_(start) {}
  uint64_t take(uint64_t bytes) {
    uint64_t at = align_up(next_, kRegionAlign);
    next_ = at + bytes;
    return at;
  }
  uint64_t end() const { return align_up(next_, kRegionAlign); }

 private:
  uint64_t next_;
};

}  // namespace

RankLayout compute_rank_layout(const GroupSpec& spec, int32_t rank) {
  RankLayout l;
  l.rank = rank;
  for (int32_t e = 0; e < spec.num_experts; ++e) l.local_experts += spec.expert_owner[e] == rank;
  const uint64_t M = static_cast<uint64_t>(spec.max_tokens_per_rank);
  const uint64_t K = static_cast<uint64_t>(spec.top_k);
  const uint64_t H = static_cast<uint64_t>(spec.hidden);
  const uint64_t W = static_cast<uint64_t>(spec.world_size);
  const bool fp8 = spec.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128;
  const bool rank_major = spec.layout == EPD_LAYOUT_RANK_MAJOR;
  l.recv_rows = static_cast<int64_t>(rank_major ? W * M : static_cast<uint64_t>(l.local_experts) * W * M);
  l.ids_per_row = rank_major ? spec.top_k : 1;
  l.scale_blocks = fp8 ? spec.hidden / EPD_FP8_BLOCK : 0;
  l.in_row_bytes = H * dtype_bytes(spec.dtype);
  l.recv_row_bytes = fp8 ? H : l.in_row_bytes;
  const uint64_t R = static_cast<uint64_t>(l.recv_rows);
  const uint64_t I = static_cast<uint64_t>(l.ids_per_row);

  Bump b(0);
  SlotOffsets& s = l.slot[0];
  s.send_hdr = b.take(sizeof(SendHeader));
  s.send_x = b.take(M * l.in_row_bytes);
  s.send_ids = b.take(M * K * 4);
  s.send_weights = b.take(M * K * 4);
  s.route_rank = b.take(M * K * 4);
  s.route_row = b.take(M * K * 4);
  s.recv_total = b.take(4);
  s.recv_counts = b.take(static_cast<uint64_t>(l.local_experts) * 4);
  s.recv_x = b.take(R * l.recv_row_bytes);
  s.recv_scales = b.take(R * static_cast<uint64_t>(l.scale_blocks) * 4);
  s.recv_ids = b.take(R * I * 4);
  s.recv_weights = b.take(R * I * 4);
  s.recv_src = b.take(R * 8);
  s.combine_in = b.take(R * l.in_row_bytes);
  s.combine_out = b.take(M * l.in_row_bytes);
  l.slot_bytes = b.end();

  // Slot i is slot 0 shifted by the control block and i slot areas.
  const SlotOffsets rel = s;
  for (int32_t i = 0; i < spec.slots; ++i) {
    const uint64_t base = kControlBytes + static_cast<uint64_t>(i) * l.slot_bytes;
    SlotOffsets& o = l.slot[i];
    const uint64_t* src = &rel.send_hdr;
    uint64_t* dst = &o.send_hdr;
    for (size_t f = 0; f < sizeof(SlotOffsets) / sizeof(uint64_t); ++f) dst[f] = src[f] + base;
  }
  l.bytes = kControlBytes + static_cast<uint64_t>(spec.slots) * l.slot_bytes;
  return l;
}

GroupLayout GroupLayout::compute(const GroupSpec& spec) {
  GroupLayout g;
  for (int32_t r = 0; r < spec.world_size; ++r) {
    g.ranks.push_back(compute_rank_layout(spec, r));
    g.total_bytes += g.ranks.back().bytes;
  }
  return g;
}

uint64_t GroupLayout::bytes_on(const GroupSpec& spec, int32_t node, int32_t gpu) const {
  uint64_t sum = 0;
  for (int32_t r = 0; r < spec.world_size; ++r)
    if (spec.placement[r].node == node && spec.placement[r].gpu == gpu) sum += ranks[r].bytes;
  return sum;
}

uint64_t workspace_bytes(const GroupSpec& spec, int32_t rank) {
  return compute_rank_layout(spec, rank).bytes;
}

}  // namespace epd

namespace {

void copy_message(const epd::Status& st, char* msg, size_t msg_len) {
  if (msg && msg_len > 0) std::snprintf(msg, msg_len, "%s", st.message().c_str());
}

}  // namespace

extern "C" epd_status_t epd_group_spec_validate(const epd_group_spec_t* spec, char* msg,
                                                size_t msg_len) {
  if (!spec) {
    copy_message(epd::Status(EPD_ERR_INVALID_ARGUMENT, "spec is NULL"), msg, msg_len);
    return EPD_ERR_INVALID_ARGUMENT;
  }
  auto s = epd::GroupSpec::from_c(*spec);
  epd::Status st = s ? s->validate() : s.status();
  copy_message(st, msg, msg_len);
  return st.code();
}

extern "C" epd_status_t epd_group_workspace_bytes(const epd_group_spec_t* spec, int32_t rank,
                                                  uint64_t* bytes) {
  if (!spec || !bytes) return EPD_ERR_INVALID_ARGUMENT;
  auto s = epd::GroupSpec::from_c(*spec);
  if (!s) return s.status().code();
  epd::Status st = s->validate();
  if (!st) return st.code();
  if (rank < 0 || rank >= s->world_size) return EPD_ERR_INVALID_ARGUMENT;
  *bytes = epd::workspace_bytes(*s, rank);
  return EPD_OK;
}
