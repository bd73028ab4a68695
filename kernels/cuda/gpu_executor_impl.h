// gpu_executor_impl.h — GpuExecutor's private state (gpu_executor.h), shared
// by its setup (gpu_executor.cc) and its per-call side (gpu_executor_launch.cc):
// per GPU the device tables, setup stream and barrier words; per group the
// routing scratch on the home GPU and the launch plan. Private to kernels/cuda.
// Ownership: everything here is owned by its executor and freed with it
// (stream-ordered, on the setup streams). Thread-safety: as the executor's.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

#include "cuda_status.h"
#include "device_params.h"
#include "gpu_executor.h"
#include "gpu_inline.h"
#include "launch_plan.h"

namespace epd {

// One GPU's part of the executor: its device tables and barrier words.
struct ShardImpl {
  int32_t device = 0;
  cudaStream_t setup = nullptr;   // see GpuExecutor::Impl::shards
  gpu::DevRank* ranks = nullptr;  // [slots][W], on `device`
  int32_t* owner = nullptr;
  int32_t* local_index = nullptr;
  std::vector<void*> allocations;
  uint32_t* grid_bar = nullptr;          // [slots][kOrderedWords]: this GPU's SlotScratch::barrier words
  uint32_t** peer_words = nullptr;       // [slots][shards]: every GPU's signal word of the slot
  std::vector<uint32_t> barriers_taken;  // per slot
  uint32_t launch_barriers = 0;          // barriers taken by the call being enqueued (device-relative targets)
  void* last_stream = nullptr;

  ~ShardImpl() {
    if (!setup) return;
    cudaSetDevice(device);
    for (void* p : allocations) cudaFreeAsync(p, setup);
    cudaStreamSynchronize(setup);
    cudaStreamDestroy(setup);
  }
  Status alloc(uint64_t bytes, void** out, uint64_t* total) {
    EPD_CUDA_RETURN(cudaMallocAsync(out, bytes, setup));
    allocations.push_back(*out);
    *total += bytes;
    return Status::ok();
  }
  // Creates the setup stream on sh.device and copies the rank table (every
  // slot), the expert owners and local indices there; zeroes the grid barrier words.
  Status init(const GpuExecutor::Shard& sh, const GroupSpec& spec, const std::vector<gpu::DevRank>& table,
              const std::vector<int32_t>& local_index_of, uint64_t* total);
};

// Every rank's control block zeroed, then magic and version; synchronises `stream`.
Status init_control_blocks(const std::vector<uint8_t*>& bases, cudaStream_t stream);
// Zeroes a routing scratch (scratch_layout) and re-arms its fault keys.
Status init_scratch(uint8_t* block, const ScratchLayout& lay, int32_t slots, cudaStream_t stream);

struct GpuExecutor::Impl {
  std::vector<uint8_t*> bases;
  // Every setup copy, allocation and free goes through the shards'
  // non-blocking setup streams: another group's armed streams never go idle,
  // so nothing here may wait for the whole device (cudaDeviceSynchronize,
  // cudaFree, cudaMemcpy on the legacy stream would).
  std::vector<std::unique_ptr<ShardImpl>> shards;
  std::vector<gpu::SlotScratch> scratch;  // on the home GPU (shard 0)
  // Multi-GPU: the routing scratch and barrier counters, in one cuMem block
  // on the home GPU mapped for every shard's GPU (stream-ordered pool memory
  // would need pool access set per peer).
  std::unique_ptr<GpuWorkspace> shared;
  uint32_t* counters = nullptr;  // [slots], in `shared`
  // Per shard, on its GPU and mapped for every shard's GPU: one signal word per
  // slot (GpuTuning::barrier 0).
  std::vector<std::unique_ptr<GpuWorkspace>> signal;
  int32_t barrier_mode = 0;
  // The inline executor: barrier targets computed on the device from the
  // shard's kBarriersTaken word, so captured graphs replay right (ShardBarrier::taken).
  bool device_relative_barriers = false;
  int32_t dests = 0, chunks = 0;
  gpu::LaunchPlan plan;  // the variant, its row split and every shard's grids
  std::vector<bool> dispatched;

  ShardImpl& home() { return *shards[0]; }
  // Per-slot routing scratch on the home GPU (on `shared` over several GPUs),
  // zeroed, fault keys re-armed.
  Status alloc_scratch(const GroupSpec& spec, const std::vector<int32_t>& gpus, uint64_t* total, uint8_t* external);
  // Multi-GPU: the barrier counters and every GPU's signal words and peer tables.
  Status alloc_signals(const GroupSpec& spec, const std::vector<int32_t>& gpus, int32_t mode, uint64_t* total);
};

}  // namespace epd
