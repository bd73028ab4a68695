// harness.h — scaffolding for the executor tests: random specs and caller
// inputs, aligned poisoned workspaces, snapshots for "nothing else was
// written" checks, and comparison of executor outputs against the oracle.
//
// Check functions return "" on success or a description of the first
// mismatch, so a test prints one precise line (plus its seed) instead of a flood.
// Ownership: a Group owns its workspaces (freed in the destructor) and borrows
// the thread pool. Thread-safety: none; one test thread uses a Group.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "epd/types.h"
#include "host_executor.h"
#include "layout.h"
#include "oracle.h"
#include "spec.h"
#include "thread_pool.h"

namespace epd_test {

uint64_t fnv1a(const void* p, size_t n, uint64_t h = 1469598103934665603ull);

enum class Routing { kUniform, kZipf, kOneExpert, kOneRank, kMasked };
constexpr int kRoutingCount = 5;
const char* routing_name(Routing r);

// A spec as the caller holds it. `owner` is the custom expert_owner table, empty
// when the caller passes NULL; o.owner is always filled (by the oracle's own
// contiguous default when `owner` is empty).
struct CaseSpec {
  epd_group_spec_t base{};     // expert_owner left NULL; c() attaches `owner`
  std::vector<int32_t> owner;
  OracleSpec o;

  epd_group_spec_t c() const;
  epd::GroupSpec group_spec() const;  // from_c + validate, both must succeed (asserted by caller)
  std::string describe() const;
};

// Fills base and o from plain parameters (owner empty = contiguous default).
CaseSpec make_case_spec(int32_t world_size, int32_t num_experts, int32_t top_k, int32_t hidden,
                        epd_dtype_t dtype, bool fp8, int32_t max_tokens, epd_layout_t layout,
                        int32_t slots, std::vector<int32_t> owner = {});

// A random valid spec whose whole group needs at most max_group_bytes.
CaseSpec random_spec(std::mt19937_64& rng, epd_layout_t layout, uint64_t max_group_bytes);

// One rank's caller inputs: values (for the oracle) and the buffers handed to
// the executor (ids as int32 or int64, weights possibly NULL).
struct RankInput {
  OracleInput o;
  epd_id_dtype_t id_dtype = EPD_ID_INT32;
  std::vector<int32_t> ids32;
  std::vector<int64_t> ids64;

  epd::DispatchInputs view() const;
  uint64_t hash() const;
};

// force_n >= 0 gives every rank that many tokens; otherwise n is random per rank
// (0, the capacity, or anything between).
std::vector<RankInput> random_inputs(std::mt19937_64& rng, const OracleSpec& s, Routing routing,
                                     int32_t force_n = -1);
// Rebuilds the executor-facing buffers from o (after a test edits o.ids).
void sync_ids(RankInput& in);
std::vector<OracleInput> oracle_inputs(const std::vector<RankInput>& in);

// Per-expert coefficients of the test's expert function y = a_e * x + b_e.
struct ExpertFn {
  std::vector<float> a, b;
};
ExpertFn random_expert_fn(std::mt19937_64& rng, int32_t num_experts);

using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;  // (offset, bytes)

class Group {
 public:
  static constexpr uint64_t kGuardBytes = 4096;  // poisoned tail past `bytes`

  explicit Group(const epd::GroupSpec& spec, epd::ThreadPool* pool = nullptr);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int32_t world_size() const { return static_cast<int32_t>(bases_.size()); }
  uint8_t* base(int32_t r) const { return bases_[r]; }
  uint64_t alloc_bytes(int32_t r) const { return alloc_[r]; }
  const epd::RankLayout& layout(int32_t r) const { return layouts_[r]; }
  const epd::GroupSpec& spec() const { return spec_; }
  epd::HostExecutor& exec() { return *exec_; }

  void poison_all(uint8_t pattern);
  void fill(int32_t r, uint64_t off, uint64_t bytes, uint8_t pattern);

  // Copies every workspace (guard included) into the group's snapshot buffer.
  void snapshot();
  // "" when every byte outside allowed[r] equals the snapshot.
  std::string changed_outside(const std::vector<Ranges>& allowed) const;
  // "" when every byte equals the snapshot.
  std::string changed_anywhere() const;

 private:
  epd::GroupSpec spec_;
  std::vector<epd::RankLayout> layouts_;
  std::vector<uint8_t*> bases_;
  std::vector<uint64_t> alloc_;
  std::vector<std::vector<uint8_t>> snap_;
  std::unique_ptr<epd::HostExecutor> exec_;
};

// Stages every rank's inputs into `slot` (all must succeed: returns the first error).
epd::Status stage_all(Group& g, int32_t slot, const std::vector<RankInput>& in);

// The regions a dispatch of `slot` may write, per rank (recv_*, route_*).
std::vector<Ranges> dispatch_outputs(const Group& g, const OracleSpec& s, int32_t slot);
// combine_out rows [0, n[r]) of `slot`.
std::vector<Ranges> combine_outputs(const Group& g, int32_t slot, const std::vector<int32_t>& n);
// Poisons everything dispatch and combine of `slot` may write.
void poison_outputs(Group& g, const OracleSpec& s, int32_t slot, uint8_t pattern);

std::string check_dispatch(const Group& g, const OracleSpec& s, int32_t slot,
                           const OracleDispatch& d);

// Conservation read straight from the executor's outputs, without the oracle's
// row numbering: every non-masked (source rank, token, expert) appears exactly
// once, on the expert's owner, and nothing else appears; counts sum to it.
std::string check_conservation(const Group& g, const OracleSpec& s, int32_t slot,
                               const std::vector<OracleInput>& in);

// Writes every rank's combine_in of `slot`: random garbage on padding rows, the
// expert function of each received row on the others (rank_major rows reduced
// over the rank's experts of the token, weighted for already_applied).
void fill_expert_outputs(Group& g, const OracleSpec& s, int32_t slot, const OracleDispatch& d,
                         const ExpertFn& fn, epd_weight_mode_t mode, std::mt19937_64& rng);

// Fills bytes with a fast generator seeded from rng.
void random_bytes(std::mt19937_64& rng, uint8_t* p, uint64_t n);

// Writes random garbage into every rank's send_hdr, send_ids and send_weights of `slot`.
void scribble_send_slot(Group& g, const OracleSpec& s, int32_t slot, std::mt19937_64& rng);

std::vector<const uint8_t*> combine_in_ptrs(const Group& g, int32_t slot);

std::string check_combine(const Group& g, const OracleSpec& s, int32_t slot,
                          const std::vector<std::vector<uint8_t>>& expected);

// The weight modes valid for a layout.
std::vector<epd_weight_mode_t> valid_modes(epd_layout_t layout);

}  // namespace epd_test
