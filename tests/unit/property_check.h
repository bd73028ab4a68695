// property_check.h — one property-test case of the host executor against the
// oracle: a spec, random inputs, every valid weight mode (each with a fresh
// poisoned dispatch and a combine), or two slots interleaved. Uses GoogleTest
// assertions; callers wrap each case in SCOPED_TRACE with its seed.
// Thread-safety: call from the test thread only.
#pragma once

#include <cstdint>

#include "harness.h"

namespace epd_test {

enum class InputEdit { kNone, kAllEmpty, kAllFull };

// The seed of case i of a suite: EPD_UNIT_SEED (when set) or `fallback`, plus i.
uint64_t case_seed(uint64_t fallback, int i);
// EPD_UNIT_CASES (when set) or `fallback`.
int case_count(int fallback);

void run_property_case(uint64_t seed, const CaseSpec& cs, Routing routing,
                       InputEdit edit = InputEdit::kNone);

// Two slots dispatched and combined interleaved; order 0..3 picks which slot
// dispatches first and which combines first.
void run_interleaved_case(uint64_t seed, int order);

}  // namespace epd_test
