// launchers.h — every kernel launcher of kernels/cuda, in one place: the menu
// the launch sequences (plan_<variant>.cc, one per LaunchVariant of
// gpu_launch_plan.h) and the armed executor compose. Each launcher enqueues one
// kernel on `stream` (a cudaStream_t; nullptr = the legacy default stream) and
// returns a cudaError_t as int (0 = success), so this header stays CUDA-free.
// Grid sizes come from the caller (LaunchShape, fixed at creation); block size
// is kThreads everywhere except the one-warp barrier and the one-block armed
// kernels. Private to kernels/cuda.
// Thread-safety: stateless; the kernels' words are owned by the executors.
#pragma once

#include <cstdint>

#include "device_params.h"

namespace epd::gpu {

// ---- dispatch (dispatch.cu): count -> prefix -> scatter over chunks of 32 tokens ----
// count: validates ids, sets the per-(rank, chunk, destination) bitmaps.
int launch_dispatch_count(const DispatchParams& p, int32_t blocks, void* stream);
// prefix: per destination, rows before each chunk (and the fault word, leader only).
int launch_dispatch_prefix(const DispatchParams& p, int32_t blocks, void* stream);
// scatter: rows, payload (copied or fp8-quantised), ids, weights, sources,
// padding, counts and totals; writes nothing after a fault.
int launch_dispatch_scatter(const DispatchParams& p, int32_t blocks, void* stream);
// The three phases in one ordinary launch of `blocks` blocks: the first
// p.count_blocks count, the next p.prefix_blocks scan, the rest scatter,
// handing over through phase words (no co-residency needed; dispatch.cu).
int launch_dispatch_ordered(const DispatchParams& p, int32_t blocks, void* stream);
// Shared memory the dispatch kernels need per block (for the caller's checks).
uint64_t dispatch_smem_bytes(const DispatchParams& p);
// Blocks of the one-launch dispatch resident per SM (after prepare_dispatch_kernels).
int dispatch_ordered_blocks_per_sm(const DispatchParams& p, int* blocks);
// Raises the dispatch kernels' dynamic shared memory limit on the current device.
int prepare_dispatch_kernels(const DispatchParams& p);

// ---- combine (combine.cu) ----
// One warp per (token, row slice): gathers the routed expert outputs and sums
// them in the host executor's order (after p.before, a cross-GPU barrier, when set).
int launch_combine(const CombineParams& p, int32_t blocks, void* stream);
// Blocks of the combine kernel `p` runs (its dtype and row width) resident per SM.
int combine_blocks_per_sm(const CombineParams& p, int* blocks);

// ---- multi-GPU (dispatch.cu) ----
// One warp: arrive at the cross-GPU barrier and wait for every GPU (or the
// deadline, or the abort word).
int launch_shard_barrier(const ShardBarrier& b, void* stream);

// ---- armed executor (armed_kernels.cu) ----
// Reads the abort word and fault words, writes every served rank's completion
// word, last_fault fields and calls_done, clears the fault words it reported
// (kFaultTimeout excepted: the host resets the executor's barrier state) and
// finally the slot's progress word. One block. The dispatch scatter, the
// one-launch dispatch and the combine do the same in their last block when
// their params carry ArmedParams (done.bases set), which is how the armed
// executor runs; this kernel remains for sequences that end otherwise.
int launch_armed_complete(const ArmedParams& p, void* stream);

// ---- benchmark stamps (armed_kernels.cu) ----
// One thread writes %globaltimer (ns; one clock for every process on the GPU)
// to *word; with word nullptr an empty kernel.
int launch_stamp(uint64_t* word, void* stream);
// A launch sequence's stamp i (before its launch i, after its last) when stamps are on.
inline int plan_stamp(uint64_t* stamps, int i, void* stream) { return stamps ? launch_stamp(stamps + i, stream) : 0; }

}  // namespace epd::gpu
