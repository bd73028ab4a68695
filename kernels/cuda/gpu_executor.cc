// gpu_executor.cc — GpuExecutor: device tables and scratch, launch shapes,
// argument checks, and fault words turned into statuses.
#include "gpu_executor.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "control_block.h"
#include "cuda_status.h"
#include "device_params.h"
#include "shard_barrier.h"

namespace epd {

// One GPU's part of the executor: its device tables and launch shapes.
struct ShardImpl {
  int32_t device = 0;
  cudaStream_t setup = nullptr;   // see Impl::setup
  gpu::DevRank* ranks = nullptr;  // [slots][W], on `device`
  int32_t* owner = nullptr;
  int32_t* local_index = nullptr;
  std::vector<void*> allocations;
  gpu::LaunchShape shape{};
  uint32_t* grid_bar = nullptr;          // [slots][4]: this GPU's SlotScratch::barrier words
  uint32_t** peer_words = nullptr;       // [slots][shards]: every GPU's signal word of the slot
  std::vector<uint32_t> barriers_taken;  // per slot
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
};

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
  int32_t dests = 0, chunks = 0, parts = 1, combine_parts = 1;
  std::vector<bool> dispatched;

  ShardImpl& home() { return *shards[0]; }
};

Result<int32_t> gpu_device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess)
    return make_status(EPD_ERR_GPU_UNAVAILABLE, "no usable CUDA driver or device: cudaGetDeviceCount: %s (%s)",
                       cudaGetErrorName(e), cudaGetErrorString(e));
  if (n == 0) return make_status(EPD_ERR_GPU_UNAVAILABLE, "no CUDA device is visible");
  return static_cast<int32_t>(n);
}

GpuExecutor::~GpuExecutor() = default;

Result<std::unique_ptr<GpuExecutor>> GpuExecutor::create(const GroupSpec& spec,
                                                         std::vector<uint8_t*> rank_bases,
                                                         int32_t device, const GpuTuning& tuning) {
  return create(spec, std::move(rank_bases), std::vector<int32_t>(std::max(spec.world_size, 0), device), tuning);
}

namespace {

// The shards of a placement: one per GPU, in rank order, each GPU's ranks contiguous.
Result<std::vector<GpuExecutor::Shard>> plan_shards(const std::vector<int32_t>& rank_devices, int32_t count) {
  std::vector<GpuExecutor::Shard> out;
  for (int32_t r = 0; r < static_cast<int32_t>(rank_devices.size()); ++r) {
    const int32_t d = rank_devices[static_cast<size_t>(r)];
    if (d < 0 || d >= count)
      return make_status(EPD_ERR_INVALID_ARGUMENT, "rank %d: device = %d is outside [0, %d)", r, d, count);
    if (!out.empty() && out.back().device == d) {
      out.back().rank_hi = r + 1;
      continue;
    }
    for (const auto& sh : out)
      if (sh.device == d)
        return make_status(EPD_ERR_UNSUPPORTED,
                           "rank %d is on GPU %d, but ranks %d..%d are on GPU %d too and rank %d is not: a GPU's "
                           "ranks must be contiguous",
                           r, d, sh.rank_lo, sh.rank_hi - 1, d, r - 1);
    out.push_back(GpuExecutor::Shard{d, r, r + 1});
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<GpuExecutor>> GpuExecutor::create(const GroupSpec& spec,
                                                         std::vector<uint8_t*> rank_bases,
                                                         const std::vector<int32_t>& rank_devices,
                                                         const GpuTuning& tuning) {
  auto count = gpu_device_count();
  if (!count) return count.status();
  EPD_RETURN_IF_ERROR(spec.validate());
  if (static_cast<int32_t>(rank_bases.size()) != spec.world_size)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "rank_bases has %zu entries, world_size is %d",
                       rank_bases.size(), spec.world_size);
  if (static_cast<int32_t>(rank_devices.size()) != spec.world_size)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "rank_devices has %zu entries, world_size is %d",
                       rank_devices.size(), spec.world_size);
  auto planned = plan_shards(rank_devices, *count);
  if (!planned) return planned.status();
  const bool multi = planned->size() > 1;
  std::vector<int32_t> gpus;  // one per shard
  for (const Shard& sh : *planned) gpus.push_back(sh.device);
  if (multi) {
    // A kernel loaded lazily on its first launch synchronises its context; with
    // one GPU spinning in a cross-GPU barrier for a GPU whose launches the host
    // has not enqueued yet, that never finishes (seen on two H200s: every
    // barrier ran into its deadline).
    decltype(&cuModuleGetLoadingMode) loading_mode = nullptr;
    EPD_RETURN_IF_ERROR(resolve_driver_entry("cuModuleGetLoadingMode", &loading_mode));
    CUmoduleLoadingMode mode = CU_MODULE_LAZY_LOADING;
    if (loading_mode(&mode) != CUDA_SUCCESS || mode != CU_MODULE_EAGER_LOADING)
      return make_status(EPD_ERR_UNSUPPORTED,
                         "a GPU executor over %zu GPUs needs CUDA_MODULE_LOADING=EAGER (set before CUDA "
                         "initialises; armed_prepare_environment() does): a lazily loaded kernel synchronises its "
                         "GPU while another GPU's part waits for it in a cross-GPU barrier",
                         planned->size());
    EPD_RETURN_IF_ERROR(enable_peer_access(gpus));
  }

  std::unique_ptr<GpuExecutor> ex(new GpuExecutor());
  ex->spec_ = spec;
  ex->layout_ = GroupLayout::compute(spec);
  ex->shards_ = std::move(planned.value());
  ex->impl_ = std::make_unique<Impl>();
  Impl& im = *ex->impl_;
  im.bases = std::move(rank_bases);
  im.dispatched.assign(static_cast<size_t>(spec.slots), false);
  const int32_t W = spec.world_size, E = spec.num_experts, S = spec.slots;
  const bool rank_major = spec.layout == EPD_LAYOUT_RANK_MAJOR;
  im.dests = E + (rank_major ? W : 0);
  im.chunks = (spec.max_tokens_per_rank + 31) / 32;
  const int64_t units = static_cast<int64_t>(W) * im.chunks;
  if (units * im.dests > (int64_t{1} << 31) || int64_t{W} * spec.max_tokens_per_rank > (int64_t{1} << 30))
    return make_status(EPD_ERR_UNSUPPORTED,
                       "GPU executor: world_size %d x max_tokens_per_rank %d x destinations %d is too large",
                       W, spec.max_tokens_per_rank, im.dests);
  uint64_t& total = ex->scratch_bytes_;

  // Device tables, one copy per shard's GPU.
  std::vector<gpu::DevRank> table(static_cast<size_t>(S) * W);
  for (int32_t s = 0; s < S; ++s)
    for (int32_t r = 0; r < W; ++r) {
      const RankLayout& l = ex->layout_.ranks[r];
      const SlotOffsets& o = l.slot[s];
      uint8_t* b = im.bases[r];
      gpu::DevRank& d = table[static_cast<size_t>(s) * W + r];
      d.ctl = b;
      d.send_hdr = b + o.send_hdr;
      d.send_x = b + o.send_x;
      d.send_ids = reinterpret_cast<const int32_t*>(b + o.send_ids);
      d.send_weights = reinterpret_cast<const float*>(b + o.send_weights);
      d.route_rank = reinterpret_cast<int32_t*>(b + o.route_rank);
      d.route_row = reinterpret_cast<int32_t*>(b + o.route_row);
      d.recv_total = reinterpret_cast<int32_t*>(b + o.recv_total);
      d.recv_counts = reinterpret_cast<int32_t*>(b + o.recv_counts);
      d.recv_x = b + o.recv_x;
      d.recv_scales = reinterpret_cast<float*>(b + o.recv_scales);
      d.recv_ids = reinterpret_cast<int32_t*>(b + o.recv_ids);
      d.recv_weights = reinterpret_cast<float*>(b + o.recv_weights);
      d.recv_src = reinterpret_cast<int32_t*>(b + o.recv_src);
      d.combine_in = b + o.combine_in;
      d.combine_out = b + o.combine_out;
      d.recv_rows = l.recv_rows;
    }
  const std::vector<int32_t> li = spec.local_index();
  for (const Shard& sh : ex->shards_) {
    im.shards.push_back(std::make_unique<ShardImpl>());
    ShardImpl& si = *im.shards.back();
    si.device = sh.device;
    si.barriers_taken.assign(static_cast<size_t>(S), 0);
    EPD_CUDA_RETURN(cudaSetDevice(sh.device));
    EPD_CUDA_RETURN(cudaStreamCreateWithFlags(&si.setup, cudaStreamNonBlocking));
    void* p = nullptr;
    EPD_RETURN_IF_ERROR(si.alloc(table.size() * sizeof(gpu::DevRank), &p, &total));
    si.ranks = static_cast<gpu::DevRank*>(p);
    EPD_CUDA_RETURN(cudaMemcpyAsync(si.ranks, table.data(), table.size() * sizeof(gpu::DevRank),
                                    cudaMemcpyHostToDevice, si.setup));
    EPD_RETURN_IF_ERROR(si.alloc(static_cast<uint64_t>(E) * 4, &p, &total));
    si.owner = static_cast<int32_t*>(p);
    EPD_RETURN_IF_ERROR(si.alloc(static_cast<uint64_t>(E) * 4, &p, &total));
    si.local_index = static_cast<int32_t*>(p);
    EPD_CUDA_RETURN(cudaMemcpyAsync(si.owner, spec.expert_owner.data(), static_cast<size_t>(E) * 4,
                                    cudaMemcpyHostToDevice, si.setup));
    EPD_CUDA_RETURN(cudaMemcpyAsync(si.local_index, li.data(), static_cast<size_t>(E) * 4, cudaMemcpyHostToDevice,
                                    si.setup));
    EPD_RETURN_IF_ERROR(si.alloc(static_cast<uint64_t>(S) * 16, &p, &total));
    si.grid_bar = static_cast<uint32_t*>(p);
    EPD_CUDA_RETURN(cudaMemsetAsync(si.grid_bar, 0, static_cast<size_t>(S) * 16, si.setup));
  }

  // Per-slot scratch on the home GPU: bitmaps, offsets, totals, fault key,
  // abort, barrier; then (multi-GPU) the barrier counters.
  ShardImpl& home = im.home();
  EPD_CUDA_RETURN(cudaSetDevice(home.device));
  const uint64_t table_bytes = static_cast<uint64_t>(units) * im.dests * 4;
  const uint64_t words_at = (static_cast<uint64_t>(im.dests) * 4 + 7) / 8 * 8;
  const uint64_t slot_bytes = (2 * table_bytes + words_at + 64 + 255) / 256 * 256;
  uint8_t* block = nullptr;
  const uint64_t block_bytes = slot_bytes * S + 256;
  if (multi) {
    auto ws = GpuWorkspace::create(block_bytes, home.device, gpus);
    if (!ws) return ws.status();
    im.shared = std::move(ws.value());
    block = im.shared->device_ptr();
    total += im.shared->mapped_bytes();
  } else {
    void* p = nullptr;
    EPD_RETURN_IF_ERROR(home.alloc(block_bytes, &p, &total));
    block = static_cast<uint8_t*>(p);
  }
  EPD_CUDA_RETURN(cudaMemsetAsync(block, 0, block_bytes, home.setup));
  for (int32_t s = 0; s < S; ++s) {
    uint8_t* b = block + slot_bytes * s;
    gpu::SlotScratch sc{};
    sc.bitmaps = reinterpret_cast<uint32_t*>(b);
    sc.offsets = reinterpret_cast<int32_t*>(b + table_bytes);
    sc.totals = reinterpret_cast<int32_t*>(b + 2 * table_bytes);
    uint8_t* words = b + 2 * table_bytes + words_at;
    sc.fault_key = reinterpret_cast<unsigned long long*>(words);
    sc.abort = reinterpret_cast<uint32_t*>(words + 8);
    sc.barrier = nullptr;  // per GPU: ShardImpl::grid_bar
    EPD_CUDA_RETURN(cudaMemsetAsync(sc.fault_key, 0xff, 8, home.setup));
    im.scratch.push_back(sc);
  }
  if (multi) {
    im.counters = reinterpret_cast<uint32_t*>(block + slot_bytes * S);
    im.barrier_mode = tuning.barrier;
    for (const Shard& sh : ex->shards_) {
      auto w = GpuWorkspace::create(static_cast<uint64_t>(S) * 4, sh.device, gpus);
      if (!w) return w.status();
      total += w.value()->mapped_bytes();
      im.signal.push_back(std::move(w.value()));
    }
    std::vector<uint32_t*> words(static_cast<size_t>(S) * gpus.size());
    for (int32_t s = 0; s < S; ++s)
      for (size_t g = 0; g < gpus.size(); ++g)
        words[static_cast<size_t>(s) * gpus.size() + g] = reinterpret_cast<uint32_t*>(im.signal[g]->device_ptr()) + s;
    for (size_t i = 0; i < ex->shards_.size(); ++i) {
      ShardImpl& si = *im.shards[i];
      EPD_CUDA_RETURN(cudaSetDevice(si.device));
      EPD_CUDA_RETURN(cudaMemsetAsync(im.signal[i]->device_ptr(), 0, static_cast<size_t>(S) * 4, si.setup));
      void* p = nullptr;
      EPD_RETURN_IF_ERROR(si.alloc(words.size() * sizeof(uint32_t*), &p, &total));
      si.peer_words = static_cast<uint32_t**>(p);
      EPD_CUDA_RETURN(cudaMemcpyAsync(si.peer_words, words.data(), words.size() * sizeof(uint32_t*),
                                      cudaMemcpyHostToDevice, si.setup));
      EPD_CUDA_RETURN(cudaStreamSynchronize(si.setup));  // `words` goes out of scope
    }
    EPD_CUDA_RETURN(cudaSetDevice(home.device));
  }

  // Control blocks: zeroed, then magic and version.
  ControlBlock cb{};
  cb.magic = kControlMagic;
  cb.version = kControlVersion;
  for (int32_t r = 0; r < W; ++r)
    EPD_CUDA_RETURN(cudaMemcpyAsync(im.bases[r], &cb, sizeof cb, cudaMemcpyHostToDevice, home.setup));
  for (auto& si : im.shards) EPD_CUDA_RETURN(cudaStreamSynchronize(si->setup));  // `table`, `li`, `cb` go out of scope

  // Launch shapes, per shard: fixed at creation (graph-friendly).
  const RankLayout& l0 = ex->layout_.ranks[0];
  const int64_t pieces = spec.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128
                             ? spec.hidden / EPD_FP8_BLOCK
                             : static_cast<int64_t>(l0.in_row_bytes / 16);
  auto blocks_for = [](int64_t warps_needed, int cap) {
    return static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>((warps_needed + gpu::kWarps - 1) / gpu::kWarps, cap)));
  };
  for (size_t i = 0; i < ex->shards_.size(); ++i) {
    const Shard& sh = ex->shards_[i];
    ShardImpl& si = *im.shards[i];
    EPD_CUDA_RETURN(cudaSetDevice(sh.device));
    int sms = 0, coop = 0;
    EPD_CUDA_RETURN(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, sh.device));
    EPD_CUDA_RETURN(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, sh.device));
    const int budget = spec.sm_budget > 0 ? std::min(spec.sm_budget, sms) : sms;
    gpu::LaunchShape& shp = si.shape;
    // Several GPUs: the high_throughput launches with cross-GPU barriers
    // between them, in either mode. Measured on two H200s (128 tokens per
    // rank, top-8 of 256, hidden 7168): 41.9 / 41.3 us bf16 / fp8 dispatch,
    // against 46.8 / 43.1 us for one cooperative launch per GPU with the
    // barriers inside it.
    shp.low_latency = spec.mode == EPD_MODE_LOW_LATENCY && !multi;
    if (shp.low_latency && !coop)
      return make_status(EPD_ERR_UNSUPPORTED, "low_latency needs cooperative launch, which device %d lacks",
                         sh.device);
    // Small batches leave most warps idle with one warp per token: split each
    // row into `parts` slices, one warp each. Measured on an H100 with LL (8 x
    // 128 tokens, hidden 7168): dispatch is best at about one slice per warp of
    // one block per SM (parts 2, 2 cooperative blocks per SM: 58.8 / 44.7 us
    // bf16 / fp8, against 61.3 / 59.9 with 8 slices and 3 blocks per SM);
    // combine at about two slices per warp of four blocks per SM (8 slices:
    // 45 us, 1 slice: 62 us).
    const int64_t token_slots = static_cast<int64_t>(sh.rank_hi - sh.rank_lo) * spec.max_tokens_per_rank;
    const auto slices = [&](int64_t warps, int64_t cap) {
      return static_cast<int32_t>(
          std::clamp<int64_t>(std::min<int64_t>((warps + token_slots - 1) / token_slots, cap), 1, 8));
    };
    if (i == 0) {  // one row split for every shard (the same rows everywhere)
      im.parts = slices(static_cast<int64_t>(sms) * gpu::kWarps, pieces / 2);
      im.combine_parts = slices(static_cast<int64_t>(sms) * 8 * gpu::kWarps, static_cast<int64_t>(l0.in_row_bytes / 16) / 32);
      if (tuning.parts > 0) im.parts = std::clamp(tuning.parts, 1, 8);
      if (tuning.combine_parts > 0) im.combine_parts = std::clamp(tuning.combine_parts, 1, 8);
    }
    const int64_t local_units = static_cast<int64_t>(sh.rank_hi - sh.rank_lo) * im.chunks;
    shp.count_blocks = blocks_for(local_units, budget * 4);
    shp.prefix_blocks = static_cast<int32_t>(std::min<int64_t>(im.dests, budget * 4));
    shp.scatter_blocks = blocks_for(token_slots * im.parts, budget * 4);
    shp.combine_blocks = blocks_for(token_slots * im.combine_parts, (shp.low_latency ? sms : budget) * 4);

    gpu::DispatchParams dp{};
    dp.dests = im.dests;
    if (gpu::dispatch_smem_bytes(dp) > 200 * 1024)
      return make_status(EPD_ERR_UNSUPPORTED,
                         "GPU executor: %d destinations need more shared memory than a block has", im.dests);
    EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::prepare_dispatch_kernels(dp)));
    // low_latency: every block resident at once (the cooperative launch checks it).
    int per_sm = 0;
    EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::fused_blocks_per_sm(dp, &per_sm)));
    if (per_sm < 1)
      return make_status(EPD_ERR_UNSUPPORTED, "GPU executor: the low_latency kernel does not fit on an SM");
    shp.fused_blocks = sms * std::min(per_sm, tuning.fused_blocks_per_sm > 0 ? tuning.fused_blocks_per_sm : 2);
  }
  EPD_CUDA_RETURN(cudaSetDevice(home.device));
  return ex;
}

std::string GpuExecutor::describe_launch() const {
  const Impl& im = *impl_;
  const gpu::LaunchShape& sh = im.shards[0]->shape;
  char b[320];
  std::snprintf(b, sizeof b,
                "mode=%s parts=%d combine_parts=%d fused_blocks=%d count/prefix/scatter_blocks=%d/%d/%d "
                "combine_blocks=%d",
                sh.low_latency ? "low_latency" : "high_throughput", im.parts, im.combine_parts, sh.fused_blocks,
                sh.count_blocks, sh.prefix_blocks, sh.scatter_blocks, sh.combine_blocks);
  std::string out = b;
  if (shards_.size() > 1) {
    out += "; " + std::to_string(shards_.size()) + " GPUs (";
    for (size_t i = 0; i < shards_.size(); ++i) {
      const Shard& s = shards_[i];
      out += (i ? ", " : "") + std::string("GPU ") + std::to_string(s.device) + ": ranks " +
             std::to_string(s.rank_lo) + (s.rank_hi - s.rank_lo > 1 ? "-" + std::to_string(s.rank_hi - 1) : "");
    }
    out += std::string("), peer access, cross-GPU barriers (") +
           (im.barrier_mode == 1 ? "one word on the home GPU" : "a word per GPU, local polling") + ")";
  }
  return out;
}

GpuExecutor::BarrierTicket GpuExecutor::take_barrier(int32_t slot, int32_t shard) {
  Impl& im = *impl_;
  BarrierTicket t;
  if (!im.counters) return t;
  ShardImpl& si = *im.shards[static_cast<size_t>(shard)];
  uint32_t& n = si.barriers_taken[static_cast<size_t>(slot)];
  ++n;
  if (im.barrier_mode == 1) {
    t.counter = im.counters + slot;
  } else {
    t.counter = reinterpret_cast<uint32_t*>(im.signal[static_cast<size_t>(shard)]->device_ptr()) + slot;
    t.peers = si.peer_words + static_cast<size_t>(slot) * shards_.size();
    t.n_peers = static_cast<int32_t>(shards_.size());
  }
  t.target = n * static_cast<uint32_t>(shards_.size());
  t.timeout_ns = static_cast<uint64_t>(spec_.timeout_ms) * 1000000ull;
  t.ranks = si.ranks + static_cast<size_t>(slot) * spec_.world_size;
  return t;
}

using gpu::to_barrier;

Status GpuExecutor::barrier_shard(int32_t slot, int32_t shard, void* stream) {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  if (shard < 0 || shard >= static_cast<int32_t>(shards_.size()))
    return make_status(EPD_ERR_INVALID_ARGUMENT, "shard = %d is outside [0, %zu)", shard, shards_.size());
  if (shards_.size() == 1) return Status::ok();
  const Shard& sh = shards_[static_cast<size_t>(shard)];
  EPD_CUDA_RETURN(cudaSetDevice(sh.device));
  const gpu::ShardBarrier b = to_barrier(take_barrier(slot, shard), abort_word_, sh, slot);
  EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_shard_barrier(b, stream)));
  return Status::ok();
}

Status GpuExecutor::reset_barriers() {
  Impl& im = *impl_;
  for (auto& si : im.shards)
    for (auto& n : si->barriers_taken) n = 0;
  if (!im.counters) return Status::ok();
  ShardImpl& home = im.home();
  EPD_CUDA_RETURN(cudaSetDevice(home.device));
  EPD_CUDA_RETURN(cudaMemsetAsync(im.counters, 0, sizeof(uint32_t) * spec_.slots, home.setup));
  for (auto& w : im.signal)
    EPD_CUDA_RETURN(cudaMemsetAsync(w->device_ptr(), 0, sizeof(uint32_t) * spec_.slots, home.setup));
  EPD_CUDA_RETURN(cudaStreamSynchronize(home.setup));
  return Status::ok();
}

Status GpuExecutor::dispatch(int32_t slot, void* stream) {
  if (shards_.size() > 1)
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "dispatch(slot, stream) on a group over %zu GPUs: enqueue every GPU's part with dispatch_shard",
                       shards_.size());
  return dispatch_shard(slot, 0, stream);
}

Status GpuExecutor::combine(int32_t slot, epd_weight_mode_t mode, void* stream) {
  if (shards_.size() > 1)
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "combine(slot, mode, stream) on a group over %zu GPUs: enqueue every GPU's part with "
                       "combine_shard",
                       shards_.size());
  return combine_shard(slot, 0, mode, stream);
}

Status GpuExecutor::dispatch_shard(int32_t slot, int32_t shard, void* stream, bool end_barrier) {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  if (shard < 0 || shard >= static_cast<int32_t>(shards_.size()))
    return make_status(EPD_ERR_INVALID_ARGUMENT, "shard = %d is outside [0, %zu)", shard, shards_.size());
  Impl& im = *impl_;
  const Shard& sh = shards_[static_cast<size_t>(shard)];
  ShardImpl& si = *im.shards[static_cast<size_t>(shard)];
  EPD_CUDA_RETURN(cudaSetDevice(sh.device));
  gpu::DispatchParams p{};
  p.ranks = si.ranks + static_cast<size_t>(slot) * spec_.world_size;
  p.owner = si.owner;
  p.local_index = si.local_index;
  p.scratch = im.scratch[slot];
  p.scratch.barrier = si.grid_bar + 4 * slot;
  p.world = spec_.world_size;
  p.experts = spec_.num_experts;
  p.top_k = spec_.top_k;
  p.hidden = spec_.hidden;
  p.max_tokens = spec_.max_tokens_per_rank;
  p.dests = im.dests;
  p.chunks = im.chunks;
  p.rank_major = spec_.layout == EPD_LAYOUT_RANK_MAJOR;
  p.dtype = spec_.dtype;
  p.fp8 = spec_.dispatch_quant == EPD_QUANT_FP8_E4M3_BLOCK128;
  p.slot = slot;
  p.parts = im.parts;
  p.in_row_bytes = layout_.ranks[0].in_row_bytes;
  p.recv_row_bytes = layout_.ranks[0].recv_row_bytes;
  p.timeout_ns = static_cast<uint64_t>(spec_.timeout_ms) * 1000000ull;
  p.rank_lo = sh.rank_lo;
  p.rank_hi = sh.rank_hi;
  p.leader = shard == 0;
  if (shards_.size() > 1) {
    gpu::ShardBarrier b[3] = {to_barrier(take_barrier(slot, shard), abort_word_, sh, slot),
                              to_barrier(take_barrier(slot, shard), abort_word_, sh, slot), {}};
    if (end_barrier) b[2] = to_barrier(take_barrier(slot, shard), abort_word_, sh, slot);
    EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_dispatch(p, si.shape, stream, b)));
  } else {
    EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_dispatch(p, si.shape, stream)));
  }
  im.dispatched[slot] = true;
  si.last_stream = stream;
  return Status::ok();
}

Status GpuExecutor::combine_shard(int32_t slot, int32_t shard, epd_weight_mode_t mode, void* stream,
                                  bool start_barrier) {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  if (shard < 0 || shard >= static_cast<int32_t>(shards_.size()))
    return make_status(EPD_ERR_INVALID_ARGUMENT, "shard = %d is outside [0, %zu)", shard, shards_.size());
  const bool rank_major = spec_.layout == EPD_LAYOUT_RANK_MAJOR;
  EPD_RETURN_IF_ERROR(check_weight_mode(spec_, mode));
  Impl& im = *impl_;
  if (!im.dispatched[slot])
    return make_status(EPD_ERR_NO_DISPATCH, "combine on slot %d without a dispatch", slot);
  if (start_barrier) EPD_RETURN_IF_ERROR(barrier_shard(slot, shard, stream));
  const Shard& sh = shards_[static_cast<size_t>(shard)];
  ShardImpl& si = *im.shards[static_cast<size_t>(shard)];
  EPD_CUDA_RETURN(cudaSetDevice(sh.device));
  gpu::CombineParams p{};
  p.ranks = si.ranks + static_cast<size_t>(slot) * spec_.world_size;
  p.world = spec_.world_size;
  p.top_k = spec_.top_k;
  p.hidden = spec_.hidden;
  p.max_tokens = spec_.max_tokens_per_rank;
  p.rank_major = rank_major;
  p.dtype = spec_.dtype;
  p.apply = mode == EPD_WEIGHTS_APPLY;
  p.slot = slot;
  p.parts = im.combine_parts;
  p.in_row_bytes = layout_.ranks[0].in_row_bytes;
  p.rank_lo = sh.rank_lo;
  p.rank_hi = sh.rank_hi;
  EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_combine(p, si.shape, stream)));
  si.last_stream = stream;
  return Status::ok();
}

namespace {

Status fault_status(const ControlBlock& cb, int32_t num_experts, int32_t max_tokens) {
  const char* op = cb.fault_op == 2 ? "combine" : "dispatch";
  switch (cb.fault) {
    case kFaultExpertId:
      return make_status(EPD_ERR_EXPERT_ID_OUT_OF_RANGE,
                         "rank %d: topk_ids[%d][%d] = %lld is outside [-1, %d) (GPU %s, slot %d)",
                         cb.fault_rank, cb.fault_token, cb.fault_k, static_cast<long long>(cb.fault_value),
                         num_experts, op, cb.fault_slot);
    case kFaultDuplicate:
      return make_status(EPD_ERR_INVALID_ARGUMENT,
                         "rank %d: topk_ids[%d] lists expert %lld twice (second at k = %d) (GPU %s, slot %d)",
                         cb.fault_rank, cb.fault_token, static_cast<long long>(cb.fault_value), cb.fault_k, op,
                         cb.fault_slot);
    case kFaultCapacity:
      return make_status(EPD_ERR_CAPACITY_EXCEEDED,
                         "rank %d: n_tokens = %lld is outside [0, max_tokens_per_rank = %d] (GPU %s, slot %d)",
                         cb.fault_rank, static_cast<long long>(cb.fault_value), max_tokens, op, cb.fault_slot);
    case kFaultTimeout:
      return make_status(EPD_ERR_TIMEOUT, "GPU %s, slot %d: a grid barrier passed its %lld ns deadline", op,
                         cb.fault_slot, static_cast<long long>(cb.fault_value));
    case kFaultBadRoute:
      return make_status(EPD_ERR_DEVICE_FAULT,
                         "rank %d: route of token %d, k %d holds %lld, out of range (GPU %s, slot %d)",
                         cb.fault_rank, cb.fault_token, cb.fault_k, static_cast<long long>(cb.fault_value), op,
                         cb.fault_slot);
    default:
      return make_status(EPD_ERR_DEVICE_FAULT, "rank %d: unknown fault word %u", cb.fault_rank, cb.fault);
  }
}

}  // namespace

Status GpuExecutor::check_fault(void* stream) {
  Impl& im = *impl_;
  if (stream) {
    EPD_CUDA_RETURN(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  } else {
    for (auto& si : im.shards) {
      EPD_CUDA_RETURN(cudaSetDevice(si->device));
      EPD_CUDA_RETURN(cudaStreamSynchronize(static_cast<cudaStream_t>(si->last_stream)));
    }
  }
  ShardImpl& home = im.home();
  EPD_CUDA_RETURN(cudaSetDevice(home.device));
  Status first;
  bool timeout = false;
  for (int32_t r = 0; r < spec_.world_size; ++r) {
    ControlBlock cb;
    EPD_CUDA_RETURN(cudaMemcpyAsync(&cb, im.bases[r], offsetof(ControlBlock, reserved0), cudaMemcpyDeviceToHost,
                                    home.setup));
    EPD_CUDA_RETURN(cudaStreamSynchronize(home.setup));
    if (cb.fault == kFaultNone) continue;
    timeout |= cb.fault == kFaultTimeout;
    if (first) first = fault_status(cb, spec_.num_experts, spec_.max_tokens_per_rank);
    EPD_CUDA_RETURN(cudaMemsetAsync(im.bases[r] + offsetof(ControlBlock, fault), 0, sizeof(uint32_t), home.setup));
  }
  if (timeout) {  // a block gave up inside a barrier: its words are stale
    for (const gpu::SlotScratch& sc : im.scratch)
      EPD_CUDA_RETURN(cudaMemsetAsync(sc.fault_key, 0xff, sizeof(unsigned long long), home.setup));
    for (auto& si : im.shards) {
      EPD_CUDA_RETURN(cudaSetDevice(si->device));
      EPD_CUDA_RETURN(cudaMemsetAsync(si->grid_bar, 0, static_cast<size_t>(spec_.slots) * 16, si->setup));
      EPD_CUDA_RETURN(cudaStreamSynchronize(si->setup));
    }
    EPD_CUDA_RETURN(cudaSetDevice(home.device));
  }
  EPD_CUDA_RETURN(cudaStreamSynchronize(home.setup));
  if (!first)
    for (size_t s = 0; s < im.dispatched.size(); ++s) im.dispatched[s] = false;
  return first;
}

}  // namespace epd
