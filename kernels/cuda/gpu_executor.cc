// gpu_executor.cc — GpuExecutor's setup: placement checks, device tables and
// scratch, control blocks, the launch plan (launch_plan.h) and its description.
// The per-call side (dispatch, combine, barriers, faults): gpu_executor_launch.cc.
#include <cuda.h>
#include <dlfcn.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "control_block.h"
#include "driver_api.h"
#include "gpu_executor_impl.h"

namespace epd {

Result<int32_t> gpu_device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaErrorInsufficientDriver) {
    // The runtime says this both when the driver is too old and when there is
    // none at all: tell the operator which.
    void* lib = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!lib) {
      const char* why = dlerror();
      return make_status(EPD_ERR_GPU_UNAVAILABLE, "no NVIDIA driver on this machine (%s)",
                         why ? why : "not found");
    }
    dlclose(lib);
    return make_status(EPD_ERR_GPU_UNAVAILABLE,
                       "the NVIDIA driver is older than this CUDA runtime needs (cudaGetDeviceCount: %s)",
                       cudaGetErrorName(e));
  }
  if (e == cudaErrorNoDevice) return make_status(EPD_ERR_GPU_UNAVAILABLE, "no NVIDIA GPU on this machine (the driver sees none)");
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

// The argument checks of create() and its shards; over several GPUs, eager
// module loading and peer access between them.
Result<std::vector<GpuExecutor::Shard>> check_placement(const GroupSpec& spec, size_t n_bases,
                                                        const std::vector<int32_t>& rank_devices) {
  auto count = gpu_device_count();
  if (!count) return count.status();
  EPD_RETURN_IF_ERROR(spec.validate());
  if (static_cast<int32_t>(n_bases) != spec.world_size)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "rank_bases has %zu entries, world_size is %d", n_bases,
                       spec.world_size);
  if (static_cast<int32_t>(rank_devices.size()) != spec.world_size)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "rank_devices has %zu entries, world_size is %d",
                       rank_devices.size(), spec.world_size);
  auto planned = plan_shards(rank_devices, *count);
  if (!planned || planned->size() < 2) return planned;
  // A kernel loaded lazily on its first launch synchronises its context; with
  // one GPU spinning in a cross-GPU barrier for a GPU whose launches the host
  // has not enqueued yet, that never finishes (seen on two H200s: every
  // barrier ran into its deadline).
  const DriverApi& d = driver_api();
  EPD_RETURN_IF_ERROR(d.status);
  CUmoduleLoadingMode mode = CU_MODULE_LAZY_LOADING;
  if (d.module_get_loading_mode(&mode) != CUDA_SUCCESS || mode != CU_MODULE_EAGER_LOADING)
    return make_status(EPD_ERR_UNSUPPORTED,
                       "a GPU executor over %zu GPUs needs CUDA_MODULE_LOADING=EAGER (set before CUDA "
                       "initialises; armed_prepare_environment() does): a lazily loaded kernel synchronises its "
                       "GPU while another GPU's part waits for it in a cross-GPU barrier",
                       planned->size());
  std::vector<int32_t> gpus;
  for (const GpuExecutor::Shard& sh : *planned) gpus.push_back(sh.device);
  EPD_RETURN_IF_ERROR(enable_peer_access(gpus));
  return planned;
}

// Every (slot, rank)'s regions as device pointers, slot-major.
std::vector<gpu::DevRank> rank_table(const GroupSpec& spec, const GroupLayout& layout,
                                     const std::vector<uint8_t*>& bases) {
  const int32_t W = spec.world_size, S = spec.slots;
  std::vector<gpu::DevRank> table(static_cast<size_t>(S) * W);
  for (int32_t s = 0; s < S; ++s)
    for (int32_t r = 0; r < W; ++r) {
      const RankLayout& l = layout.ranks[r];
      const SlotOffsets& o = l.slot[s];
      uint8_t* b = bases[r];
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
  return table;
}

}  // namespace

Status ShardImpl::init(const GpuExecutor::Shard& sh, const GroupSpec& spec, const std::vector<gpu::DevRank>& table,
                       const std::vector<int32_t>& local_index_of, uint64_t* total) {
  const int32_t E = spec.num_experts, S = spec.slots;
  device = sh.device;
  barriers_taken.assign(static_cast<size_t>(S), 0);
  EPD_CUDA_RETURN(cudaSetDevice(sh.device));
  EPD_CUDA_RETURN(cudaStreamCreateWithFlags(&setup, cudaStreamNonBlocking));
  void* p = nullptr;
  EPD_RETURN_IF_ERROR(alloc(table.size() * sizeof(gpu::DevRank), &p, total));
  ranks = static_cast<gpu::DevRank*>(p);
  EPD_CUDA_RETURN(cudaMemcpyAsync(ranks, table.data(), table.size() * sizeof(gpu::DevRank), cudaMemcpyHostToDevice,
                                  setup));
  EPD_RETURN_IF_ERROR(alloc(static_cast<uint64_t>(E) * 4, &p, total));
  owner = static_cast<int32_t*>(p);
  EPD_RETURN_IF_ERROR(alloc(static_cast<uint64_t>(E) * 4, &p, total));
  local_index = static_cast<int32_t*>(p);
  EPD_CUDA_RETURN(cudaMemcpyAsync(owner, spec.expert_owner.data(), static_cast<size_t>(E) * 4,
                                  cudaMemcpyHostToDevice, setup));
  EPD_CUDA_RETURN(cudaMemcpyAsync(local_index, local_index_of.data(), static_cast<size_t>(E) * 4,
                                  cudaMemcpyHostToDevice, setup));
  EPD_RETURN_IF_ERROR(alloc(static_cast<uint64_t>(S) * gpu::kOrderedWords * 4, &p, total));
  grid_bar = static_cast<uint32_t*>(p);
  EPD_CUDA_RETURN(cudaMemsetAsync(grid_bar, 0, static_cast<size_t>(S) * gpu::kOrderedWords * 4, setup));
  return Status::ok();
}

// Per slot: bitmaps, offsets, totals, fault key, abort, barrier; then
// (multi-GPU) the barrier counters (gpu_inline.h: scratch_layout). external:
// an inline executor's scratch in the daemon's block, initialised there (every
// rank's process shares it: nothing is written here).
Status GpuExecutor::Impl::alloc_scratch(const GroupSpec& spec, const std::vector<int32_t>& gpus, uint64_t* total,
                                        uint8_t* external) {
  const int32_t S = spec.slots;
  ShardImpl& h = home();
  EPD_CUDA_RETURN(cudaSetDevice(h.device));
  auto lay = scratch_layout(spec);
  if (!lay) return lay.status();
  uint8_t* block = nullptr;
  if (external) {
    block = external;
    counters = reinterpret_cast<uint32_t*>(block + lay->counters_at);
  } else if (gpus.size() > 1) {
    auto ws = GpuWorkspace::create(lay->bytes, h.device, gpus);
    if (!ws) return ws.status();
    shared = std::move(ws.value());
    block = shared->device_ptr();
    *total += shared->mapped_bytes();
    counters = reinterpret_cast<uint32_t*>(block + lay->counters_at);
  } else {
    void* p = nullptr;
    EPD_RETURN_IF_ERROR(h.alloc(lay->bytes, &p, total));
    block = static_cast<uint8_t*>(p);
  }
  if (!external) EPD_RETURN_IF_ERROR(init_scratch(block, *lay, S, h.setup));
  for (int32_t s = 0; s < S; ++s) {
    uint8_t* b = block + lay->slot_bytes * s;
    gpu::SlotScratch sc{};
    sc.bitmaps = reinterpret_cast<uint32_t*>(b);
    sc.offsets = reinterpret_cast<int32_t*>(b + lay->table_bytes);
    sc.totals = reinterpret_cast<int32_t*>(b + 2 * lay->table_bytes);
    uint8_t* words = b + lay->words_at;
    sc.fault_key = reinterpret_cast<unsigned long long*>(words);
    sc.abort = reinterpret_cast<uint32_t*>(words + 8);
    sc.barrier = nullptr;  // per GPU: ShardImpl::grid_bar
    sc.phase = reinterpret_cast<uint32_t*>(words + 16);
    scratch.push_back(sc);
  }
  return Status::ok();
}

Status init_control_blocks(const std::vector<uint8_t*>& bases, cudaStream_t stream) {
  ControlBlock cb{};
  cb.magic = kControlMagic;
  cb.version = kControlVersion;
  for (uint8_t* b : bases) EPD_CUDA_RETURN(cudaMemcpyAsync(b, &cb, sizeof cb, cudaMemcpyHostToDevice, stream));
  EPD_CUDA_RETURN(cudaStreamSynchronize(stream));  // `cb` goes out of scope
  return Status::ok();
}

Status init_scratch(uint8_t* block, const ScratchLayout& lay, int32_t slots, cudaStream_t stream) {
  EPD_CUDA_RETURN(cudaMemsetAsync(block, 0, lay.bytes, stream));
  for (int32_t s = 0; s < slots; ++s)
    EPD_CUDA_RETURN(cudaMemsetAsync(block + lay.slot_bytes * s + lay.words_at, 0xff, 8, stream));  // no fault key
  return Status::ok();
}

Status GpuExecutor::Impl::alloc_signals(const GroupSpec& spec, const std::vector<int32_t>& gpus, int32_t mode,
                                        uint64_t* total) {
  const int32_t S = spec.slots;
  barrier_mode = mode;
  for (int32_t g : gpus) {
    auto w = GpuWorkspace::create(static_cast<uint64_t>(S) * 4, g, gpus);
    if (!w) return w.status();
    *total += w.value()->mapped_bytes();
    signal.push_back(std::move(w.value()));
  }
  std::vector<uint32_t*> words(static_cast<size_t>(S) * gpus.size());
  for (int32_t s = 0; s < S; ++s)
    for (size_t g = 0; g < gpus.size(); ++g)
      words[static_cast<size_t>(s) * gpus.size() + g] = reinterpret_cast<uint32_t*>(signal[g]->device_ptr()) + s;
  for (size_t i = 0; i < shards.size(); ++i) {
    ShardImpl& si = *shards[i];
    EPD_CUDA_RETURN(cudaSetDevice(si.device));
    EPD_CUDA_RETURN(cudaMemsetAsync(signal[i]->device_ptr(), 0, static_cast<size_t>(S) * 4, si.setup));
    void* p = nullptr;
    EPD_RETURN_IF_ERROR(si.alloc(words.size() * sizeof(uint32_t*), &p, total));
    si.peer_words = static_cast<uint32_t**>(p);
    EPD_CUDA_RETURN(cudaMemcpyAsync(si.peer_words, words.data(), words.size() * sizeof(uint32_t*),
                                    cudaMemcpyHostToDevice, si.setup));
    EPD_CUDA_RETURN(cudaStreamSynchronize(si.setup));  // `words` goes out of scope
  }
  EPD_CUDA_RETURN(cudaSetDevice(home().device));
  return Status::ok();
}

Result<std::unique_ptr<GpuExecutor>> GpuExecutor::create(const GroupSpec& spec,
                                                         std::vector<uint8_t*> rank_bases,
                                                         const std::vector<int32_t>& rank_devices,
                                                         const GpuTuning& tuning) {
  auto planned = check_placement(spec, rank_bases.size(), rank_devices);
  if (!planned) return planned.status();
  std::vector<int32_t> gpus;  // one per shard
  for (const Shard& sh : *planned) gpus.push_back(sh.device);

  std::unique_ptr<GpuExecutor> ex(new GpuExecutor());
  ex->spec_ = spec;
  ex->layout_ = GroupLayout::compute(spec);
  ex->shards_ = std::move(planned.value());
  ex->impl_ = std::make_unique<Impl>();
  Impl& im = *ex->impl_;
  im.bases = std::move(rank_bases);
  im.dispatched.assign(static_cast<size_t>(spec.slots), false);
  const int32_t W = spec.world_size;
  im.dests = spec.num_experts + (spec.layout == EPD_LAYOUT_RANK_MAJOR ? W : 0);
  im.chunks = (spec.max_tokens_per_rank + 31) / 32;
  const int64_t units = static_cast<int64_t>(W) * im.chunks;
  if (units * im.dests > (int64_t{1} << 31) || int64_t{W} * spec.max_tokens_per_rank > (int64_t{1} << 30))
    return make_status(EPD_ERR_UNSUPPORTED,
                       "GPU executor: world_size %d x max_tokens_per_rank %d x destinations %d is too large",
                       W, spec.max_tokens_per_rank, im.dests);
  uint64_t& total = ex->scratch_bytes_;

  // Device tables, one copy per shard's GPU; the routing scratch on the home
  // GPU; over several GPUs, the barrier words.
  const std::vector<gpu::DevRank> table = rank_table(spec, ex->layout_, im.bases);
  const std::vector<int32_t> li = spec.local_index();
  for (const Shard& sh : ex->shards_) {
    im.shards.push_back(std::make_unique<ShardImpl>());
    EPD_RETURN_IF_ERROR(im.shards.back()->init(sh, spec, table, li, &total));
  }
  EPD_RETURN_IF_ERROR(im.alloc_scratch(spec, gpus, &total, nullptr));
  if (gpus.size() > 1) EPD_RETURN_IF_ERROR(im.alloc_signals(spec, gpus, tuning.barrier, &total));

  EPD_RETURN_IF_ERROR(init_control_blocks(im.bases, im.home().setup));
  for (auto& si : im.shards) EPD_CUDA_RETURN(cudaStreamSynchronize(si->setup));  // `table`, `li` go out of scope

  // The launch variant and every shard's grids: fixed at creation (graph-friendly).
  auto plan = gpu::make_launch_plan(spec, ex->layout_, ex->shards_, tuning, im.dests, im.chunks);
  if (!plan) return plan.status();
  im.plan = std::move(plan.value());
  EPD_CUDA_RETURN(cudaSetDevice(im.home().device));
  return ex;
}

Result<std::unique_ptr<GpuExecutor>> GpuExecutor::create_inline(const GroupSpec& spec, uint8_t* block,
                                                                int32_t device, const GpuTuning& tuning) {
  auto lay = inline_block_layout(spec);
  if (!lay) return lay.status();
  const int32_t W = spec.world_size;
  std::unique_ptr<GpuExecutor> ex(new GpuExecutor());
  ex->spec_ = spec;
  ex->layout_ = GroupLayout::compute(spec);
  for (int32_t r = 0; r < W; ++r) ex->shards_.push_back(Shard{device, r, r + 1});
  ex->impl_ = std::make_unique<Impl>();
  Impl& im = *ex->impl_;
  for (int32_t r = 0; r < W; ++r) im.bases.push_back(block + lay->rank_at[static_cast<size_t>(r)]);
  im.dispatched.assign(static_cast<size_t>(spec.slots), false);
  im.dests = lay->scratch.dests;
  im.chunks = lay->scratch.chunks;
  im.barrier_mode = 1;
  im.device_relative_barriers = true;
  uint64_t& total = ex->scratch_bytes_;
  EPD_CUDA_RETURN(cudaSetDevice(device));
  const std::vector<gpu::DevRank> table = rank_table(spec, ex->layout_, im.bases);
  const std::vector<int32_t> li = spec.local_index();
  for (const Shard& sh : ex->shards_) {
    im.shards.push_back(std::make_unique<ShardImpl>());
    EPD_RETURN_IF_ERROR(im.shards.back()->init(sh, spec, table, li, &total));
  }
  EPD_RETURN_IF_ERROR(im.alloc_scratch(spec, {device}, &total, block + lay->scratch_at));
  ex->abort_word_ = reinterpret_cast<const uint32_t*>(block + lay->abort_at);
  for (auto& si : im.shards) EPD_CUDA_RETURN(cudaStreamSynchronize(si->setup));  // `table`, `li` go out of scope
  GpuTuning t = tuning;
  t.one_launch_across_gpus = true;
  t.co_resident = W;
  auto plan = gpu::make_launch_plan(spec, ex->layout_, ex->shards_, t, im.dests, im.chunks);
  if (!plan) return plan.status();
  im.plan = std::move(plan.value());
  EPD_CUDA_RETURN(cudaSetDevice(device));
  return ex;
}

LaunchVariant GpuExecutor::variant() const { return impl_->plan.choice.variant; }

const char* GpuExecutor::variant_name() const { return launch_variant_name(variant()); }

std::string GpuExecutor::describe_variant() const {
  return std::string("variant ") + variant_name() + " (" + launch_variant_summary(variant()) + "; " +
         impl_->plan.choice.reason + ")";
}

std::string GpuExecutor::describe_launch(bool with_variant) const {
  const Impl& im = *impl_;
  const gpu::LaunchShape& sh = im.plan.shapes[0];
  char b[320];
  std::snprintf(b, sizeof b,
                "parts=%d combine_parts=%d ordered_blocks=%d count/prefix/scatter_blocks=%d/%d/%d combine_blocks=%d",
                im.plan.parts, im.plan.combine_parts, sh.ordered_blocks, sh.count_blocks, sh.prefix_blocks,
                sh.scatter_blocks, sh.combine_blocks);
  std::string out = with_variant ? std::string("variant=") + variant_name() + " " + b : std::string(b);
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

}  // namespace epd
