// gpu_inline.cc — the scratch and inline-block layouts (gpu_inline.h), with
// checked arithmetic.
#include "gpu_inline.h"

#include "checked.h"
#include "layout.h"

namespace epd {

Result<ScratchLayout> scratch_layout(const GroupSpec& spec) {
  ScratchLayout s;
  s.dests = spec.num_experts + (spec.layout == EPD_LAYOUT_RANK_MAJOR ? spec.world_size : 0);
  s.chunks = (spec.max_tokens_per_rank + 31) / 32;
  const CheckedSize table = CheckedSize(static_cast<uint64_t>(spec.world_size)) * static_cast<uint64_t>(s.chunks) *
                            static_cast<uint64_t>(s.dests) * 4u;
  // A slot: bitmaps, offsets (one table each), totals [D], then the words.
  const CheckedSize words_at = table * 2u + (CheckedSize(static_cast<uint64_t>(s.dests)) * 4u).align_up(8);
  const CheckedSize slot = (words_at + 64u).align_up(256);
  const CheckedSize counters_at = slot * static_cast<uint64_t>(spec.slots);
  const CheckedSize bytes = counters_at + 256u;
  if (bytes.overflowed())
    return make_status(EPD_ERR_INVALID_SPEC, "group '%s': the routing scratch's size overflows", spec.name.c_str());
  s.table_bytes = table.value();
  s.words_at = words_at.value();
  s.slot_bytes = slot.value();
  s.counters_at = counters_at.value();
  s.bytes = bytes.value();
  return s;
}

Result<InlineBlockLayout> inline_block_layout(const GroupSpec& spec) {
  InlineBlockLayout b;
  auto sc = scratch_layout(spec);
  if (!sc) return sc.status();
  b.scratch = *sc;
  CheckedSize at = 0;
  for (int32_t r = 0; r < spec.world_size; ++r) {
    b.rank_at.push_back(at.value());
    at = (at + workspace_bytes(spec, r)).align_up(256);
  }
  const CheckedSize scratch_at = at;
  const CheckedSize abort_at = scratch_at + b.scratch.bytes;
  const CheckedSize bytes = abort_at + 256u;
  if (bytes.overflowed())
    return make_status(EPD_ERR_INVALID_SPEC, "group '%s': the inline block's size overflows", spec.name.c_str());
  b.scratch_at = scratch_at.value();
  b.abort_at = abort_at.value();
  b.bytes = bytes.value();
  return b;
}

}  // namespace epd
