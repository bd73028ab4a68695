// gpu_inline.h — the inline executor (spec.executor = EPD_EXECUTOR_INLINE):
// the worker's own stream launches the daemon's kernels on daemon-owned
// memory, so a call costs what an in-process launch costs; the daemon keeps
// the memory, the topology, the deadlines (every spin-wait's timeout_ms) and
// the aborts (one word it sets when a rank is lost).
//
// Every rank of an inline group is on one GPU of one node (GroupSpec::validate).
// The daemon allocates ONE cuMem block for the group on that GPU — every
// rank's workspace, the routing scratch and barrier counters of GpuExecutor's
// shared scratch, and the abort word — and hands the same block to every rank
// (one fd; the ranks of a group belong to one tenant, GroupSpec owners). Each
// rank's process maps it and runs a GpuExecutor over it in which every rank
// is a shard (GpuExecutor::create_inline): its dispatch is the one-launch
// low_latency kernel for its own rank (count and scatter of its tokens, prefix
// of its destinations) handing over to the other ranks' launches through the
// phase words in the block; its combine carries the cross-rank barrier inside
// the kernel; the last block writes the operation's completion into the
// rank's control block exactly as the armed executor does, so the client's
// completion polling and fault reporting are unchanged. Because the ranks'
// launches wait on each other, they must run at the same time: each rank
// enqueues on its own stream, worker processes sharing the GPU need MPS (else
// each spin-wait lasts a time slice), and the grids are sized so that every
// rank's launches of every slot are resident together.
//
// This header is CUDA-free: the block's layout (daemon and client compute the
// same one), and the runner interface that libepd-inline.so implements
// (kernels/cuda/inline_runner.cc) and libepd-client loads with dlopen.
// Thread-safety: plain data and pure functions; a runner is used by one
// thread at a time per slot (the client's per-slot order).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "epd/types.h"
#include "spec.h"
#include "status.h"

namespace epd {

// GpuExecutor's routing scratch for `spec`: per slot the bitmaps, offsets,
// totals and words (fault key, abort flag, two phase words), then one barrier
// counter per slot. Offsets from the scratch's start.
struct ScratchLayout {
  int32_t dests = 0, chunks = 0;  // D (experts, + ranks for rank_major), ceil(max_tokens / 32)
  uint64_t table_bytes = 0;       // one [W][chunks][D] uint32 table
  uint64_t words_at = 0;          // in a slot, after both tables and the totals: fault key (8 bytes), abort (4), phase[2]
  uint64_t slot_bytes = 0;        // one slot, 256-aligned
  uint64_t counters_at = 0;       // [slots] barrier counters
  uint64_t bytes = 0;             // everything
};
Result<ScratchLayout> scratch_layout(const GroupSpec& spec);

// An inline group's block: rank r's workspace at rank_at[r] (256-aligned,
// workspace_bytes(spec, r) long), the scratch at scratch_at, the abort word
// (0, or -epd_status_t once the daemon aborted the group) at abort_at.
struct InlineBlockLayout {
  std::vector<uint64_t> rank_at;
  ScratchLayout scratch;
  uint64_t scratch_at = 0;
  uint64_t abort_at = 0;
  uint64_t bytes = 0;
};
Result<InlineBlockLayout> inline_block_layout(const GroupSpec& spec);

class GpuWorkspace;  // gpu_executor.h

// The daemon's side: an inline group's block on its GPU (kernels/cuda/
// inline_block.cc; without CUDA every call says this epd has no GPU executor).
// Owns the cuMem allocation. Thread-safety: the daemon's control thread.
class InlineBlock {
 public:
  ~InlineBlock();
  InlineBlock(const InlineBlock&) = delete;
  InlineBlock& operator=(const InlineBlock&) = delete;

  // Allocates the block on placement[0].gpu and initialises it: control
  // blocks, zeroed scratch with re-armed fault keys, abort word 0.
  static Result<std::unique_ptr<InlineBlock>> create(const GroupSpec& spec);
  int32_t device() const;
  uint64_t mapped_bytes() const;
  const InlineBlockLayout& layout() const { return layout_; }
  // A new fd for the block (the caller sends and closes it).
  Result<int> export_fd() const;
  // Sets the abort word to -reason: every rank's waiting or later launch ends
  // and completes with `reason` (and the abort bit). Idempotent.
  Status abort(epd_status_t reason);
  bool aborted() const { return aborted_; }
  // Once no rank has work queued (every rank left and joined afresh): the
  // block as create() left it.
  Status reset();
  // Operations rank 0 completed since the last reset, over every slot
  // (ControlSlot::calls_done), for status.
  Result<uint64_t> completed() const;

 private:
  InlineBlock() = default;
  Status init();
  GroupSpec spec_;
  InlineBlockLayout layout_;
  std::unique_ptr<GpuWorkspace> mem_;
  void* stream_ = nullptr;  // a non-blocking stream of the block's GPU (never waits for the device)
  bool aborted_ = false;
};

// The worker's side, implemented by libepd-inline.so: one rank's launches.
class InlineRunner {
 public:
  virtual ~InlineRunner() = default;
  // Enqueue rank's dispatch / combine on `stream` (a CUstream): the launch
  // and nothing else. The send buffers (and for the combine, combine_in) are
  // already written in stream order; the token count (n_tokens, or
  // *n_tokens_device when the kernel runs, when that is not null) and the
  // weight mode travel in the launch, whose kernels store them to the send
  // header and the mode word. The completion word of the slot carries the
  // outcome when the launch ends.
  virtual Status dispatch(int32_t slot, int32_t n_tokens, const int32_t* n_tokens_device, void* stream) = 0;
  virtual Status combine(int32_t slot, epd_weight_mode_t mode, void* stream) = 0;
  // "variant low_latency (...), parts=..., ...": what runs.
  virtual std::string describe() const = 0;
};

// The factory libepd-inline.so exports under kInlineCreateSymbol (C linkage).
// block: the group's block mapped in this process, for `device`; abi: must
// equal kInlineAbi (the client and the library come from one build).
struct InlineCreateArgs {
  uint32_t abi = 0;
  const GroupSpec* spec = nullptr;
  uint8_t* block = nullptr;
  uint64_t block_bytes = 0;
  int32_t rank = 0;
  int32_t device = 0;
  std::unique_ptr<InlineRunner>* out = nullptr;
  Status* status = nullptr;  // set on failure (out stays empty)
};
using InlineCreateFn = void (*)(const InlineCreateArgs*);
inline constexpr const char* kInlineCreateSymbol = "epd_inline_create_v1";
// Changes whenever InlineCreateArgs, InlineRunner, GroupSpec or the block layout change.
inline constexpr uint32_t kInlineAbi = 0x45504402u + sizeof(InlineCreateArgs) + sizeof(GroupSpec);
// The library's file name (looked up beside libepd-client.so, or EPD_INLINE_LIBRARY).
inline constexpr const char* kInlineLibrary = "libepd-inline.so";

}  // namespace epd
