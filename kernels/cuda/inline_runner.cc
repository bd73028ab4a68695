// inline_runner.cc — libepd-inline.so: the worker-side runner of the inline
// executor (gpu_inline.h). libepd-client dlopens it on the first join of an
// inline group and calls epd_inline_create_v1 with the group's block mapped in
// the worker; the runner enqueues the rank's one-launch kernels on the
// worker's stream through a GpuExecutor made by create_inline, each launch
// finishing with the armed completion in its last block.
#include <cuda_runtime_api.h>

#include <exception>
#include <new>
#include <vector>

#include "control_block.h"
#include "cuda_status.h"
#include "device_params.h"
#include "gpu_executor.h"
#include "gpu_inline.h"

namespace epd {

namespace {

// Restores the calling thread's current device on scope exit (the executor
// selects the rank's device; the worker's own code expects its own).
class DeviceScope {
 public:
  DeviceScope() { ok_ = cudaGetDevice(&prev_) == cudaSuccess; }
  ~DeviceScope() {
    if (ok_) cudaSetDevice(prev_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int prev_ = 0;
  bool ok_ = false;
};

class Runner final : public InlineRunner {
 public:
  ~Runner() override {
    if (d_bases_) {
      DeviceScope keep;
      cudaSetDevice(device_);
      cudaFree(d_bases_);
    }
  }

  static Result<std::unique_ptr<InlineRunner>> create(const InlineCreateArgs& a) {
    const GroupSpec& spec = *a.spec;
    auto lay = inline_block_layout(spec);
    if (!lay) return lay.status();
    if (a.block_bytes < lay->bytes)
      return make_status(EPD_ERR_PROTOCOL, "inline group '%s': the daemon's block has %llu bytes, the layout needs %llu",
                         spec.name.c_str(), static_cast<unsigned long long>(a.block_bytes),
                         static_cast<unsigned long long>(lay->bytes));
    if (a.rank < 0 || a.rank >= spec.world_size)
      return make_status(EPD_ERR_INVALID_ARGUMENT, "inline runner: rank = %d is outside [0, %d)", a.rank,
                         spec.world_size);
    DeviceScope keep;
    auto ex = GpuExecutor::create_inline(spec, a.block, a.device);
    if (!ex) return ex.status();
    std::unique_ptr<Runner> r(new Runner());
    r->spec_ = spec;
    r->rank_ = a.rank;
    r->device_ = a.device;
    r->ex_ = std::move(ex.value());
    r->abort_word_ = reinterpret_cast<const uint32_t*>(a.block + lay->abort_at);
    std::vector<uint8_t*> bases;
    for (uint64_t at : lay->rank_at) bases.push_back(a.block + at);
    EPD_CUDA_RETURN(cudaSetDevice(a.device));
    EPD_CUDA_RETURN(cudaMalloc(reinterpret_cast<void**>(&r->d_bases_), bases.size() * sizeof(uint8_t*)));
    EPD_CUDA_RETURN(cudaMemcpy(r->d_bases_, bases.data(), bases.size() * sizeof(uint8_t*), cudaMemcpyHostToDevice));
    return std::unique_ptr<InlineRunner>(std::move(r));
  }

  Status dispatch(int32_t slot, int32_t n_tokens, const int32_t* n_tokens_device, void* stream) override {
    if (slot < 0 || slot >= spec_.slots)
      return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
    InLaunch in;
    in.n_tokens = n_tokens;
    in.n_tokens_device = n_tokens_device;
    const gpu::ArmedParams done = completion(slot, kDoneDispatch);
    DeviceScope keep;
    // No barrier after the launch: its completion meets every rank's first.
    return ex_->dispatch_shard(slot, rank_, stream, /*end_barrier=*/false, nullptr, &done, &in);
  }

  Status combine(int32_t slot, epd_weight_mode_t mode, void* stream) override {
    if (slot < 0 || slot >= spec_.slots)
      return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
    const InLaunch in;  // the mode travels in the launch
    const gpu::ArmedParams done = completion(slot, kDoneCombine);
    DeviceScope keep;
    return ex_->combine_shard(slot, rank_, mode, stream, /*start_barrier=*/true, nullptr, &done, &in);
  }

  std::string describe() const override { return ex_->describe_variant() + ", " + ex_->describe_launch(false); }

 private:
  Runner() = default;

  gpu::ArmedParams completion(int32_t slot, uint32_t op) const {
    gpu::ArmedParams p{};
    p.bases = d_bases_;
    p.world = spec_.world_size;
    p.slot = slot;
    p.op = op;
    p.expert_major = spec_.layout == EPD_LAYOUT_EXPERT_MAJOR;
    p.abort_word = abort_word_;
    p.progress = nullptr;
    p.seq = 0;  // no host-mapped progress: the completion counts calls_done on the device (graph replays too)
    p.rank_lo = rank_;
    p.rank_hi = rank_ + 1;
    return p;
  }

  GroupSpec spec_;
  int32_t rank_ = 0, device_ = 0;
  std::unique_ptr<GpuExecutor> ex_;
  const uint32_t* abort_word_ = nullptr;
  uint8_t** d_bases_ = nullptr;  // [world] rank bases in this process, on the device
};

}  // namespace

}  // namespace epd

extern "C" __attribute__((visibility("default"))) void epd_inline_create_v1(const epd::InlineCreateArgs* a) {
  if (!a || !a->out || !a->status) return;
  try {
    if (a->abi != epd::kInlineAbi || !a->spec || !a->block) {
      *a->status = epd::make_status(EPD_ERR_INTERNAL,
                                    "libepd-inline.so does not match libepd-client (interface 0x%x, expected 0x%x): "
                                    "install both from one build",
                                    a->abi, epd::kInlineAbi);
      return;
    }
    auto r = epd::Runner::create(*a);
    if (!r) {
      *a->status = r.status();
      return;
    }
    *a->out = std::move(r.value());
    *a->status = epd::Status::ok();
  } catch (const std::exception& e) {
    *a->status = epd::make_status(EPD_ERR_INTERNAL, "inline runner: %s", e.what());
  }
}
