// gpu_executor.h — dispatch and combine on NVIDIA GPUs for every rank of a
// group whose workspaces one device reaches by load/store (all on that GPU, or
// on peers with CUDA peer access), plus the cuMem allocator of those workspaces.
//
// Multi-GPU groups (one rank per GPU, or contiguous runs of ranks per GPU) run
// one launch sequence per GPU ("shard"), joined by cross-GPU barriers. Which
// launches run is one LaunchVariant, picked at creation (gpu_launch_plan.h).
//
// CUDA-free on purpose: streams are `void*` (a cudaStream_t, nullptr = the
// legacy default stream) and device addresses are `uint8_t*`, so the daemon and
// tests include this with the host compiler. Implemented in kernels/cuda/
// (target epd_cuda). The CUDA runtime is linked statically and the driver API is
// reached through cudaGetDriverEntryPointByVersion, so a binary starts on a
// machine without a driver; every entry point then returns
// EPD_ERR_GPU_UNAVAILABLE with the reason.
//
// Contract: the same as HostExecutor (host_executor.h), bit for bit: rows
// ordered by (source rank, source token), fp8 block-128 quantisation, padding
// rows with ids -1 / weights 0 / source {-1,-1}, counts and totals, combine
// sums in the fixed order with fp32 accumulation and no FMA. Calls are
// stream-ordered and enqueue fixed-size grids whose token counts come from the
// send slots' SendHeader in device memory, so they can be captured in a CUDA
// graph. Faults found by the kernels (bad expert id, duplicate id, count above
// capacity, a spin-wait past its deadline, a corrupt route) are recorded in the
// offending rank's ControlBlock (control_block.h); check_fault() turns the
// first into a Status and clears them, and the next call works.
// Thread-safety: one thread at a time per executor (the daemon serialises per
// group); different executors are independent.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "epd/types.h"
#include "gpu_launch_plan.h"
#include "layout.h"
#include "spec.h"
#include "status.h"

namespace epd {

namespace gpu {
struct ArmedParams;  // kernels/cuda/device_params.h
}  // namespace gpu

// Number of usable CUDA devices, or EPD_ERR_GPU_UNAVAILABLE saying why none
// (no driver, no device, driver too old).
Result<int32_t> gpu_device_count();

// One rank's device workspace: physical memory from cuMemCreate (exportable as
// a POSIX file descriptor), mapped read/write for its device. Owns the memory;
// unmapped and released on destruction.
class GpuWorkspace {
 public:
  ~GpuWorkspace();
  GpuWorkspace(const GpuWorkspace&) = delete;
  GpuWorkspace& operator=(const GpuWorkspace&) = delete;

  // Allocates `bytes` (rounded up to the allocation granularity) on `device`,
  // mapped read/write for `device` and every GPU in `peers` (which need peer
  // access to it: enable_peer_access).
  static Result<std::unique_ptr<GpuWorkspace>> create(uint64_t bytes, int32_t device,
                                                      const std::vector<int32_t>& peers = {});

  uint8_t* device_ptr() const { return ptr_; }
  uint64_t bytes() const { return bytes_; }     // requested bytes
  uint64_t mapped_bytes() const { return mapped_; }
  int32_t device() const { return device_; }
  // A new file descriptor for the allocation (cuMemExportToShareableHandle);
  // the caller owns and closes it.
  Result<int> export_fd() const;

 private:
  GpuWorkspace() = default;
  uint8_t* ptr_ = nullptr;
  uint64_t bytes_ = 0, mapped_ = 0;
  unsigned long long handle_ = 0;  // CUmemGenericAllocationHandle
  int32_t device_ = 0;
};

// One workspace per rank of `spec` (spec order), each workspace_bytes(spec, r) long.
Result<std::vector<std::unique_ptr<GpuWorkspace>>> allocate_gpu_workspaces(const GroupSpec& spec,
                                                                           int32_t device);
// Multi-GPU: rank r's workspace on rank_devices[r], mapped for every GPU listed
// (peer access enabled between them first; refused naming a pair without it).
Result<std::vector<std::unique_ptr<GpuWorkspace>>> allocate_gpu_workspaces(
    const GroupSpec& spec, const std::vector<int32_t>& rank_devices);

// How two GPUs of this node reach each other, from CUDA: whether `from` can
// load/store `to`'s memory, native atomics over the link (NVLink, or PCIe
// with atomics), and the driver's relative performance rank (0 = best).
struct GpuPeerLink {
  int32_t from = 0, to = 0;
  bool access = false;
  bool native_atomics = false;
  int32_t performance_rank = -1;
};
Result<std::vector<GpuPeerLink>> gpu_peer_links();  // every ordered pair of visible GPUs

// Enables CUDA peer access between every pair of `devices` (idempotent), or
// EPD_ERR_UNSUPPORTED naming the first pair without it.
Status enable_peer_access(const std::vector<int32_t>& devices);

// PCI bus id of a device ("0000:1b:00.0"), for matching hwloc's topology.
Result<std::string> gpu_pci_bus_id(int32_t device);

// What an inline executor's call carries in its launch (GpuExecutor::
// dispatch_shard / combine_shard): a dispatch its token count (n_tokens >= 0,
// or read from n_tokens_device when the kernel runs); a combine its `mode`
// argument (the fields are unused).
struct InLaunch {
  int32_t n_tokens = -1;
  const int32_t* n_tokens_device = nullptr;
};

class GpuExecutor {
 public:
  ~GpuExecutor();
  GpuExecutor(const GpuExecutor&) = delete;
  GpuExecutor& operator=(const GpuExecutor&) = delete;

  // spec must be valid; rank_bases[r] is rank r's workspace (device address
  // usable on `device`). Initialises every rank's control block.
  static Result<std::unique_ptr<GpuExecutor>> create(const GroupSpec& spec,
                                                     std::vector<uint8_t*> rank_bases,
                                                     int32_t device, const GpuTuning& tuning = {});
  // Multi-GPU: rank r's workspace is on rank_devices[r] and mapped for every GPU
  // of the group; each GPU's ranks are contiguous. One shard per GPU (in rank
  // order): its launch sequence pushes its ranks' dispatch rows to every rank
  // and pulls its ranks' combine inputs, over NVLink (peer access is enabled
  // here). The routing scratch and the barrier counters live on shard 0's GPU
  // (the home GPU). Every mode runs LaunchVariant::kMultiGpu here unless
  // tuning.one_launch_across_gpus (low_latency: one launch per GPU).
  static Result<std::unique_ptr<GpuExecutor>> create(const GroupSpec& spec,
                                                     std::vector<uint8_t*> rank_bases,
                                                     const std::vector<int32_t>& rank_devices,
                                                     const GpuTuning& tuning = {});

  // The inline executor (gpu_inline.h), in a worker process: `block` is the
  // inline group's block (inline_block_layout) mapped here for `device`. Every
  // rank is a shard of `device` ([r, r + 1)); this process enqueues only its
  // own rank's shard (dispatch_shard / combine_shard with an ArmedParams, whose
  // completion the last block writes). Nothing in the block is written at
  // creation (the daemon initialised it; other ranks may be running). The
  // scratch's barrier counters are the one-word barriers (GpuTuning::barrier 1);
  // the block's abort word ends every wait; low_latency runs the one-launch
  // kernel per rank, high_throughput the multi_gpu launches per rank.
  static Result<std::unique_ptr<GpuExecutor>> create_inline(const GroupSpec& spec, uint8_t* block, int32_t device,
                                                            const GpuTuning& tuning = {});

  struct Shard {
    int32_t device = 0;
    int32_t rank_lo = 0, rank_hi = 0;  // ranks [lo, hi) are on `device`
  };
  const std::vector<Shard>& shards() const { return shards_; }

  // One GPU: enqueue on `stream`. Errors returned here are argument or launch
  // errors; faults in the data come from check_fault(). On a multi-GPU
  // executor these refuse (EPD_ERR_INVALID_ARGUMENT): use the _shard calls.
  Status dispatch(int32_t slot, void* stream);
  Status combine(int32_t slot, epd_weight_mode_t mode, void* stream);

  // Multi-GPU (also valid with one shard): enqueue shard's part on `stream`, a
  // stream of shards()[shard].device. Every shard must enqueue the same
  // sequence of calls per slot: each call holds cross-GPU barriers matched by
  // their sequence number (a dispatch: after count, prefix and, unless
  // end_barrier is false, scatter; a combine: before it, unless start_barrier
  // is false). A barrier waits at most the group's timeout_ms, then records
  // EPD_ERR_TIMEOUT in the shard's ranks' fault words.
  // launch_stamps (benchmarks; nullptr: nothing extra is enqueued): a device
  // buffer of kLaunchStampWords zeroed words; the sequence enqueues a one-thread
  // kernel writing %globaltimer (ns) to word i before its launch i and after
  // its last, and the low_latency dispatch and the combine write their
  // KernelStampPoints after those (unused words are left as they were).
  // done (the armed executor; nullptr otherwise): the operation's completion,
  // written by the last block of the sequence's last launch (kernels/cuda/
  // armed_complete.cuh). A combine with `done` reads the weight mode on the
  // device (`mode` is then only checked for being one the layout allows). On
  // several GPUs the completion's two cross-GPU barriers (before reading the
  // fault words, before clearing them) are taken here, after the operation's own.
  // in_launch (the inline executor, whose caller knows both at enqueue time;
  // nullptr otherwise): the shard's one rank's token count and the combine's
  // weight mode travel in the launch's parameters and the kernels store them
  // where the daemon's path has the worker's stream write them first, so a
  // call enqueues its launch and nothing else.
  Status dispatch_shard(int32_t slot, int32_t shard, void* stream, bool end_barrier = true,
                        uint64_t* launch_stamps = nullptr, const gpu::ArmedParams* done = nullptr,
                        const InLaunch* in_launch = nullptr);
  Status combine_shard(int32_t slot, int32_t shard, epd_weight_mode_t mode, void* stream,
                       bool start_barrier = true, uint64_t* launch_stamps = nullptr,
                       const gpu::ArmedParams* done = nullptr, const InLaunch* in_launch = nullptr);
  Status barrier_shard(int32_t slot, int32_t shard, void* stream);
  // For a caller's own kernel that joins the barrier sequence of (slot,
  // shard): the device counter, the target it must reach, and the shard's
  // device table of the slot's ranks (gpu::ShardBarrier fields). Advances the
  // sequence. counter is nullptr on a single-GPU executor.
  struct BarrierTicket {
    uint32_t* counter = nullptr;        // the word to poll
    uint32_t* const* peers = nullptr;   // the words to add 1 to (device table), see gpu::ShardBarrier
    int32_t n_peers = 0;
    uint32_t target = 0;
    uint64_t timeout_ns = 0;
    const void* ranks = nullptr;
    // Device-relative targets (the inline executor): gpu::ShardBarrier::taken / step / parties.
    const uint32_t* taken = nullptr;
    uint32_t step = 0, parties = 0;
  };
  BarrierTicket take_barrier(int32_t slot, int32_t shard);
  // A device word (on the home GPU, or host-mapped) that ends every barrier
  // wait once nonzero (the armed executor's abort word). nullptr: none.
  void set_abort_word(const uint32_t* word) { abort_word_ = word; }
  // Zeroes the barrier counters and sequences; only while no shard has work
  // queued (after draining every shard's streams).
  Status reset_barriers();

  // Waits for `stream` (nullptr: the last stream each shard used), then
  // returns the first recorded fault (lowest rank) as a Status naming rank,
  // token, k and value, and clears all fault words. OK when none.
  Status check_fault(void* stream = nullptr);

  const GroupLayout& layout() const { return layout_; }
  const GroupSpec& spec() const { return spec_; }
  // Device scratch this executor allocated beside the workspaces (bytes).
  uint64_t scratch_bytes() const { return scratch_bytes_; }
  // The launch variant that runs (choose_launch_variant over spec, tuning
  // and GPUs), its name, and "variant low_latency (one launch per dispatch
  // ...; mode low_latency on one GPU)": what it launches and why.
  LaunchVariant variant() const;
  const char* variant_name() const;
  std::string describe_variant() const;
  // The launch shape chosen: "variant=low_latency parts=8 combine_parts=8
  // ordered_blocks=396 ..."; without the variant token when with_variant is false.
  std::string describe_launch(bool with_variant = true) const;

 private:
  struct Impl;
  GpuExecutor() = default;
  // `done` with its cross-GPU barriers (several GPUs) taken next in the sequence.
  gpu::ArmedParams with_completion_barriers(const gpu::ArmedParams& done, int32_t slot, int32_t shard);
  GroupSpec spec_;
  GroupLayout layout_;
  std::vector<Shard> shards_;
  const uint32_t* abort_word_ = nullptr;
  uint64_t scratch_bytes_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd
