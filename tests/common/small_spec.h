// small_spec.h — the small fp32 group spec the integration, fault and security
// tests join with (4 experts per rank, top-2, hidden 32, 8 tokens, 2 slots),
// for the fixtures and for the one-rank helper processes that link only
// libepd-client. Header-only.
#pragma once

#include <cstdint>
#include <cstdio>

#include "epd/epd.h"

namespace epd::test {

inline epd_group_spec_t small_spec(const char* name, int32_t world, int32_t rank, uint32_t timeout_ms = 10000,
                                   uint64_t generation = 1) {
  epd_group_spec_t s;
  epd_group_spec_init(&s);
  std::snprintf(s.name, sizeof s.name, "%s", name);
  s.generation = generation;
  s.world_size = world;
  s.rank = rank;
  s.num_experts = 4 * world;
  s.top_k = 2;
  s.hidden = 32;
  s.dtype = EPD_DTYPE_FP32;
  s.max_tokens_per_rank = 8;
  s.slots = 2;
  s.timeout_ms = timeout_ms;
  return s;
}

}  // namespace epd::test
