// layout.cc — workspace layout computation and the C entry points over it.
#include "layout.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>

#include "checked.h"

namespace epd {

namespace {

// Hands out consecutive aligned regions; remembers any overflow.
class Bump {
 public:
  explicit Bump(uint64_t start) : next_(start) {}
  uint64_t take(CheckedSize bytes) {
    const CheckedSize at = next_.align_up(kRegionAlign);
    next_ = at + bytes;
    return at.value();
  }
  CheckedSize end() const { return next_.align_up(kRegionAlign); }

 private:
  CheckedSize next_;
};

// Local experts of every rank, in one pass over expert_owner (owners outside
// [0, world_size) are not counted: validate() refuses them first).
std::vector<int32_t> owned_counts(const GroupSpec& spec) {
  std::vector<int32_t> owned(static_cast<size_t>(std::max(spec.world_size, 0)), 0);
  for (int32_t o : spec.expert_owner)
    if (o >= 0 && o < spec.world_size) owned[static_cast<size_t>(o)]++;
  return owned;
}

// The layout of a rank that owns `local_experts` experts.
RankLayout rank_layout(const GroupSpec& spec, int32_t rank, int32_t local_experts) {
  RankLayout l;
  l.rank = rank;
  l.local_experts = local_experts;
  const CheckedSize M = static_cast<uint64_t>(spec.max_tokens_per_rank);
  const CheckedSize K = static_cast<uint64_t>(spec.top_k);
  const CheckedSize H = static_cast<uint64_t>(spec.hidden);
  const CheckedSize W = static_cast<uint64_t>(spec.world_size);
  const CheckedSize L = static_cast<uint64_t>(local_experts);
  const bool fp8 = spec.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128;
  const bool rank_major = spec.layout == EPD_LAYOUT_RANK_MAJOR;
  const CheckedSize R = rank_major ? W * M : L * W * M;
  const CheckedSize in_row = H * static_cast<uint64_t>(dtype_bytes(spec.dtype));
  const CheckedSize recv_row = fp8 ? H : in_row;
  // validate() bounds the receive rows by INT32_MAX; a clamp keeps an
  // unvalidated spec from turning into a negative count.
  l.recv_rows = R.overflowed() || R.value() > INT64_MAX ? INT64_MAX : static_cast<int64_t>(R.value());
  l.ids_per_row = rank_major ? spec.top_k : 1;
  l.scale_blocks = fp8 ? spec.hidden / EPD_FP8_BLOCK : 0;
  l.in_row_bytes = in_row.value();
  l.recv_row_bytes = recv_row.value();
  const CheckedSize I = static_cast<uint64_t>(l.ids_per_row);
  const CheckedSize B = static_cast<uint64_t>(l.scale_blocks);

  Bump b(0);
  SlotOffsets& s = l.slot[0];
  s.send_hdr = b.take(sizeof(SendHeader));
  s.send_x = b.take(M * in_row);
  s.send_ids = b.take(M * K * 4);
  s.send_weights = b.take(M * K * 4);
  s.route_rank = b.take(M * K * 4);
  s.route_row = b.take(M * K * 4);
  s.recv_total = b.take(4);
  s.recv_counts = b.take(L * 4);
  s.recv_x = b.take(R * recv_row);
  s.recv_scales = b.take(R * B * 4);
  s.recv_ids = b.take(R * I * 4);
  s.recv_weights = b.take(R * I * 4);
  s.recv_src = b.take(R * 8);
  s.combine_in = b.take(R * in_row);
  s.combine_out = b.take(M * in_row);
  const CheckedSize slot_bytes = b.end();
  const CheckedSize bytes = CheckedSize(kControlBytes) + CheckedSize(static_cast<uint64_t>(spec.slots)) * slot_bytes;
  l.overflowed = bytes.overflowed() || in_row.overflowed();
  l.slot_bytes = slot_bytes.value();
  l.bytes = bytes.value();

  // Slot i is slot 0 shifted by the control block and i slot areas; every
  // such sum is below `bytes`, so it fits whenever bytes does.
  const SlotOffsets rel = s;
  const int32_t slots = std::clamp(spec.slots, 0, static_cast<int32_t>(EPD_MAX_SLOTS));
  for (int32_t i = 0; i < slots; ++i) {
    const CheckedSize base = CheckedSize(kControlBytes) + CheckedSize(static_cast<uint64_t>(i)) * slot_bytes;
    SlotOffsets& o = l.slot[i];
    const uint64_t* src = &rel.send_hdr;
    uint64_t* dst = &o.send_hdr;
    for (size_t f = 0; f < sizeof(SlotOffsets) / sizeof(uint64_t); ++f) dst[f] = (base + src[f]).value();
  }
  return l;
}

}  // namespace

RankLayout compute_rank_layout(const GroupSpec& spec, int32_t rank) {
  int32_t local = 0;
  for (int32_t o : spec.expert_owner) local += o == rank;
  return rank_layout(spec, rank, local);
}

GroupLayout GroupLayout::compute(const GroupSpec& spec) {
  GroupLayout g;
  const std::vector<int32_t> owned = owned_counts(spec);
  CheckedSize total;
  for (int32_t r = 0; r < spec.world_size; ++r) {
    g.ranks.push_back(rank_layout(spec, r, owned[static_cast<size_t>(r)]));
    g.overflowed = g.overflowed || g.ranks.back().overflowed;
    total += g.ranks.back().bytes;
  }
  g.overflowed = g.overflowed || total.overflowed();
  g.total_bytes = g.overflowed ? UINT64_MAX : total.value();
  return g;
}

uint64_t GroupLayout::bytes_on(const GroupSpec& spec, int32_t node, int32_t gpu) const {
  CheckedSize sum;
  for (int32_t r = 0; r < spec.world_size; ++r)
    if (spec.placement[r].node == node && spec.placement[r].gpu == gpu) sum += ranks[r].bytes;
  return sum.value();
}

uint64_t workspace_bytes(const GroupSpec& spec, int32_t rank) {
  return compute_rank_layout(spec, rank).bytes;
}

Result<uint64_t> check_workspace_size(const GroupSpec& spec) {
  // A rank's layout depends on its local expert count only: one layout per
  // distinct count, so this stays O(num_experts + world_size).
  const std::vector<int32_t> owned = owned_counts(spec);
  std::map<int32_t, uint64_t> per_count;
  CheckedSize total;
  bool rank_overflow = false;
  int32_t most = 0;
  for (int32_t r = 0; r < spec.world_size; ++r) {
    const int32_t L = owned[static_cast<size_t>(r)];
    most = std::max(most, L);
    auto it = per_count.find(L);
    if (it == per_count.end()) {
      const RankLayout l = rank_layout(spec, r, L);
      rank_overflow = rank_overflow || l.overflowed;
      it = per_count.emplace(L, l.bytes).first;
    }
    total += it->second;
  }
  if (!rank_overflow && !total.overflowed() && total.value() <= EPD_MAX_GROUP_WORKSPACE_BYTES) return total.value();
  char need[64];
  if (rank_overflow || total.overflowed())
    std::snprintf(need, sizeof need, "more than %llu (2^64 - 1)", static_cast<unsigned long long>(UINT64_MAX));
  else
    std::snprintf(need, sizeof need, "%llu", static_cast<unsigned long long>(total.value()));
  const bool expert_major = spec.layout == EPD_LAYOUT_EXPERT_MAJOR;
  char experts[64] = "";
  if (expert_major) std::snprintf(experts, sizeof experts, " with up to %d local experts per rank", most);
  return make_status(EPD_ERR_INVALID_SPEC,
                     "group workspace needs %s bytes, above the limit of %llu bytes (1 TiB, "
                     "EPD_MAX_GROUP_WORKSPACE_BYTES): world_size = %d, slots = %d, max_tokens_per_rank = %d, "
                     "hidden = %d, dtype = %s, top_k = %d, layout = %s%s",
                     need, static_cast<unsigned long long>(EPD_MAX_GROUP_WORKSPACE_BYTES), spec.world_size,
                     spec.slots, spec.max_tokens_per_rank, spec.hidden, dtype_name(spec.dtype), spec.top_k,
                     layout_name(spec.layout), experts);
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
