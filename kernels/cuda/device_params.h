// device_params.h — the plain structs the GPU executor and the armed executor
// hand to the kernels: per (slot, rank) workspace addresses, per-slot scratch
// of the routing scheme, barriers, grid sizes and the armed kernels' words.
// Shared by the host side (g++) and the kernels (nvcc), so it holds no CUDA
// types. Every pointer is a device address owned by the GpuExecutor (scratch,
// tables), the ArmedExecutor (its scratch) or the workspace allocator (rank
// bases). The launchers that take them: launchers.h.
// Thread-safety: plain data.
#pragma once

#include <cstdint>

namespace epd::gpu {

// One rank's regions for one slot, as device pointers (base + layout offset).
struct DevRank {
  uint8_t* ctl;          // ControlBlock at the workspace base
  const uint8_t* send_hdr;
  const uint8_t* send_x;
  const int32_t* send_ids;
  const float* send_weights;
  int32_t* route_rank;
  int32_t* route_row;
  int32_t* recv_total;
  int32_t* recv_counts;
  uint8_t* recv_x;
  float* recv_scales;
  int32_t* recv_ids;
  float* recv_weights;
  int32_t* recv_src;
  const uint8_t* combine_in;
  uint8_t* combine_out;
  int64_t recv_rows;
};

// Routing scratch of one slot (executor-owned device memory). The destination
// space has D = E (+ W for rank_major) entries: experts first, then ranks.
struct SlotScratch {
  uint32_t* bitmaps;               // [W][chunks][D]: bit t%32 set if token t of the chunk goes to d
  int32_t* offsets;                // [W][chunks][D]: rows before this chunk at d (exclusive prefix)
  int32_t* totals;                 // [D]
  unsigned long long* fault_key;   // min over faulting (rank, token, k, kind); ~0 = none
  uint32_t* abort;                 // 1 when the current dispatch found a fault
  uint32_t* barrier;               // [kOrderedWords] on the launching GPU (one set per GPU and slot):
                                   // the one-launch low_latency dispatch's ticket, exit, launches,
                                   // the combine's ticket, the barriers taken (OrderedWords); the
                                   // last block resets the tickets and exit
  uint32_t* phase;                 // [2] on the home GPU, monotonic: count blocks done, prefix
                                   // blocks done (every GPU's), for the ordered phases
};

// kBarriersTaken: the cross-rank barriers this GPU's launches of the slot took
// (device-relative barrier targets, ShardBarrier::taken), advanced by each
// launch's last block.
enum OrderedWords : int { kTicket = 0, kExit = 1, kLaunches = 2, kCombineTicket = 3, kBarriersTaken = 4 };
constexpr int kOrderedWords = 8;  // per slot, so a slot's words are 32 bytes

// Cross-GPU barrier of a multi-GPU group: every GPU's launch sequence adds 1 to
// `counter` (one word per slot, on the group's home GPU) and waits until it
// reaches `target` (compared modulo 2^32), `abort_word` turns nonzero, or
// `timeout_ns` passes (then kFaultTimeout goes into ranks [rank_lo, rank_hi)'s
// control blocks). Every GPU enqueues the same sequence of barriers per slot,
// so the n-th barrier's target is n * GPUs: fixed by the host when `taken` is
// null; else computed on the device as (*taken + step) * parties, *taken being
// the barriers this GPU's operations on the slot took before this one (the
// last block of its last launch adds the operation's, ArmedParams::
// launch_barriers), so a CUDA graph replays the launches with the right
// targets (the inline executor).
struct ShardBarrier {
  uint32_t* counter;               // the word this GPU waits on
  const uint32_t* taken;           // device-relative targets (see above), or nullptr
  uint32_t step, parties;          // this barrier's place in its launch (from 1), the GPUs or shards taking part
  // n_peers > 0: arrive by adding 1 to each of peers[0..n_peers) (every GPU's
  // own word, this one's included), so the wait polls local memory; 0: arrive
  // at `counter` itself (one shared word on the home GPU).
  uint32_t* const* peers;
  int32_t n_peers;
  const uint32_t* abort_word;      // may be nullptr
  uint32_t target;
  uint64_t timeout_ns;
  const DevRank* ranks;            // this GPU's table for the slot
  int32_t rank_lo, rank_hi, slot;
};

// The armed executor's kernels (gpu_armed.h): host-mapped, one per slot, what
// the re-arm thread reads to see progress.
struct ArmedProgress {
  uint32_t seq;     // sequence number of the last completed operation (+1; 0 = none)
  int32_t status;   // its epd_status_t
  uint32_t pad[14];
};
static_assert(sizeof(ArmedProgress) == 64, "one cache line per slot");

struct ArmedParams {
  uint8_t* const* bases = nullptr;   // [world] workspace bases (control block at offset 0), device array
  int32_t world = 0;
  int32_t slot = 0;
  uint32_t op = 0;                   // kDoneDispatch or kDoneCombine
  int32_t expert_major = 0;          // combine: EPD_WEIGHTS_APPLY is a valid mode
  const uint32_t* abort_word = nullptr;  // device: -reason once aborted, 0 otherwise
  ArmedProgress* progress = nullptr; // device view of this slot's host-mapped progress
  uint32_t seq = 0;                  // this operation's sequence number + 1
  int32_t rank_lo = 0, rank_hi = 0;  // the ranks on this GPU: the gate and the writes cover only these
  // Multi-GPU (null counters on one GPU): every GPU's operation is done before
  // the fault words are read, and every GPU has read them before any is cleared.
  ShardBarrier before_read{}, before_write{};
  // Device-relative barrier targets (ShardBarrier::taken): the last block of
  // the operation's last launch adds launch_barriers (every barrier of the
  // operation, in its launches before this one, inside it, and the two above)
  // to *barriers_taken once it is done with them.
  uint32_t* barriers_taken = nullptr;
  uint32_t launch_barriers = 0;
};

struct DispatchParams {
  const DevRank* ranks;            // [W] for this slot
  const int32_t* owner;            // [E] expert -> rank
  const int32_t* local_index;      // [E] expert -> index among its owner's experts
  SlotScratch scratch;
  int32_t world, experts, top_k, hidden, max_tokens;
  int32_t dests;                   // D
  int32_t chunks;                  // ceil(max_tokens / 32)
  int32_t rank_major;              // 1 rank_major, 0 expert_major
  int32_t dtype;                   // epd_dtype_t
  int32_t fp8;                     // 1 with fp8-e4m3 block-128 quantisation
  int32_t slot;
  int32_t parts;                   // warps per token in scatter (each a slice of the row)
  uint64_t in_row_bytes, recv_row_bytes;
  uint64_t timeout_ns;             // deadline of every spin-wait
  // The ranks this launch serves (a multi-GPU group runs one launch sequence
  // per GPU): sources of count and scatter, destinations of prefix, padding,
  // counts and totals. [0, world) on one GPU. The leader (one launch sequence
  // per group) turns the fault key into a fault word.
  int32_t rank_lo, rank_hi, leader;
  // Benchmarks only, read by the host launch sequence, never by a kernel:
  // when set, the sequence writes %globaltimer to stamps[i] before its launch i
  // and after its last (gpu_launch_plan.h: kMaxLaunchStamps words), and the
  // one-launch kernel its KernelStampPoints to stamps[kMaxLaunchStamps + i].
  uint64_t* stamps;
  // One-launch low_latency dispatch (dispatch_ordered): GPUs taking part and
  // the phase split of its grid (count, prefix, then scatter blocks).
  int32_t n_shards;
  int32_t count_blocks, prefix_blocks;
  // The armed executor: when done.bases is set, the launch's last block writes
  // the operation's completion (armed_complete.cuh) instead of a separate kernel.
  ArmedParams done;
  // Where the count phase reads the token count of its (one) source rank:
  // kCountFromHeader its send header; the inline executor's launches carry it
  // instead, so the worker's stream writes nothing before them: kCountInLaunch
  // n_in_launch, kCountFromPointer *n_pointer (the caller's device-side count)
  // when the kernel runs. Either is stored to the send header as well.
  int32_t count_from;
  int32_t n_in_launch;
  const int32_t* n_pointer;
};

enum CountSource : int32_t { kCountFromHeader = 0, kCountInLaunch = 1, kCountFromPointer = 2 };

struct CombineParams {
  const DevRank* ranks;
  // apply: 1 weights from dispatch time, 0 plain sum, -1 read at run time from
  // the first served rank's control word (EPD_WEIGHTS_APPLY -> 1): the armed
  // executor arms a combine before the clients choose the mode.
  int32_t world, top_k, hidden, max_tokens, rank_major, dtype, apply, slot;
  int32_t parts;                   // warps per token (each a slice of the row)
  uint64_t in_row_bytes;
  int32_t rank_lo, rank_hi;        // ranks whose tokens this launch combines ([0, world) on one GPU)
  uint64_t* stamps;                // benchmarks only, as DispatchParams::stamps (kernel stamps included)
  uint32_t* words;                 // this GPU's SlotScratch::barrier words of the slot
  // A multi-GPU group (counter set): the cross-GPU barrier before the combine
  // (every rank's expert outputs written), inside the kernel: the block with
  // combine ticket 0 arrives, every block waits.
  ShardBarrier before;
  ArmedParams done;                // as DispatchParams::done
  // The inline executor (mode_in_launch 1): the launch stores `mode` to its
  // served ranks' weight-mode words (read by the completion) before the
  // cross-rank barrier, instead of a stream write before the launch.
  int32_t mode_in_launch;
  uint32_t mode;
};

// Grid sizes of one GPU's launches, fixed at creation (make_launch_plan,
// launch_plan.h); which of them run is the LaunchVariant's sequence.
struct LaunchShape {
  int32_t count_blocks, prefix_blocks, scatter_blocks;  // high_throughput / multi_gpu dispatch grids
  int32_t ordered_blocks;         // low_latency one-launch grid: count_blocks + ordered_prefix_blocks + scatter blocks
  int32_t ordered_prefix_blocks;  // its prefix blocks
  int32_t combine_blocks;
};

constexpr int kThreads = 256;     // threads per block of every kernel
constexpr int kWarps = kThreads / 32;
// The dispatch's prefix phase scans a destination with one warp when its
// column of count words (world * chunks) is at most this long, else with a block.
constexpr int kWarpPrefixWords = 4 * 32;
#ifdef __CUDACC__
__host__ __device__
#endif
inline bool warp_prefix_fits(int32_t world, int32_t chunks) {
  return static_cast<int64_t>(world) * chunks <= kWarpPrefixWords;
}
// Prefix blocks that give every destination a scanner (a warp or a block).
inline int64_t prefix_blocks_for(int32_t world, int32_t chunks, int64_t dests) {
  return warp_prefix_fits(world, chunks) ? (dests + kWarps - 1) / kWarps : dests;
}

}  // namespace epd::gpu
