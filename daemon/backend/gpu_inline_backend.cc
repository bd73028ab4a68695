// gpu_inline_backend.cc — GpuInlineBackend (gpu_inline_backend.h).
#include "gpu_inline_backend.h"

#include "gpu_group.h"
#include "gpu_inline.h"

namespace epd {

namespace {

class GpuInlineBackend final : public GroupBackend {
 public:
  explicit GpuInlineBackend(const GroupSpec& spec) : spec_(spec) {}

  const char* kind() const override { return "gpu-inline"; }
  // The workspaces live in GPU memory; the memfd is a placeholder page.
  uint64_t host_workspace_bytes(const GroupLayout&) const override { return 4096; }
  bool runs_host_executor() const override { return false; }

  Status start(const std::vector<uint8_t*>&) override {
    const int32_t gpu = spec_.placement[0].gpu;
    auto n = gpu_probe();
    if (!n)
      return make_status(n.status().code(), "group '%s' places ranks on GPU %d, but GPU groups are unavailable: %s",
                         spec_.name.c_str(), gpu, n.status().message().c_str());
    if (gpu >= *n)
      return make_status(EPD_ERR_INVALID_ARGUMENT, "group '%s': placement[0].gpu = %d, but this node has %d GPU(s)",
                         spec_.name.c_str(), gpu, *n);
    auto b = InlineBlock::create(spec_);
    if (!b) return b.status();
    block_ = std::move(b.value());
    return Status::ok();
  }

  std::string created_line() const override {
    return "GPU group on GPU " + std::to_string(block_->device()) + ", " + std::to_string(block_->mapped_bytes()) +
           " bytes of GPU workspace in one block; executor inline (each worker's stream launches its rank's "
           "kernels, libepd-inline.so); " + gpu_mps_description(block_->device());
  }

  Result<RankExport> export_rank(int32_t, const SharedRegion&) override {
    auto fd = block_->export_fd();
    if (!fd) return fd.status();
    RankExport e;
    e.fd = *fd;
    e.gpu_device = block_->device();
    e.gpu_mapped_bytes = block_->mapped_bytes();
    return e;
  }

  Status accept_host_ring() const override {
    return make_status(EPD_ERR_UNSUPPORTED,
                       "group '%s' runs inline on GPU %d: call epd_group_dispatch_async / epd_group_combine_async, "
                       "not the host doorbells",
                       spec_.name.c_str(), block_->device());
  }

  // Every rank's launch that waits (or comes later) ends with PEER_LOST; the
  // survivors leave and join again, and the last join re-initialises.
  void rank_gone(int32_t, const LogContext& ctx) override {
    const Status ab = block_->abort(EPD_ERR_PEER_LOST);
    log_message(ab ? LogLevel::kInfo : LogLevel::kError, ctx,
                ab ? "inline GPU launches aborted with PEER_LOST; every rank must leave and join again"
                   : "inline GPU abort failed: " + ab.message());
  }

  // Ranks in several processes launch on different CUDA contexts; without
  // MPS those time-slice, and a shard's barrier then spins through whole time
  // slices waiting for the others (on an H100 no worker of 8 finished 1500
  // empty round trips in 120 s): refused, naming the fix.
  Result<bool> joins_may_complete(int32_t joined, int32_t processes) override {
    if (processes > 1 && !gpu_mps_active(block_->device()))
      return make_status(EPD_ERR_UNSUPPORTED,
                         "group '%s' runs inline (executor = inline) with its %d ranks in %d processes, but MPS is "
                         "not active on GPU %d: the processes' kernels would time-slice and every op wait whole "
                         "time slices. Start the MPS control daemon (nvidia-cuda-mps-control -d) before epd and the "
                         "workers, drive every rank from one process, or use executor = daemon",
                         spec_.name.c_str(), spec_.world_size, processes, block_->device());
    if (!block_->aborted()) return true;
    if (joined > 0) return false;
    const LogContext ctx{spec_.name, -1, 0, -1};
    if (Status st = block_->reset(); !st) {
      log_message(LogLevel::kError, ctx, "inline GPU block reset failed: " + st.message());
      return make_status(st.code(), "inline GPU block reset failed: %s", st.message().c_str());
    }
    log_message(LogLevel::kInfo, ctx, "inline GPU block reset; every rank joined again");
    return true;
  }

  uint64_t device_bytes() const override { return block_ ? block_->mapped_bytes() : 0; }

  std::string status_text() const override {
    std::string text = "GPU " + std::to_string(block_->device()) + ", executor inline (the workers launch)";
    auto ops = block_->completed();
    text += ops ? ", " + std::to_string(*ops) + " ops of rank 0 since reset" : " (" + ops.status().message() + ")";
    if (block_->aborted()) text += " (aborted: waiting for every rank to join again)";
    return text;
  }

 private:
  GroupSpec spec_;
  std::unique_ptr<InlineBlock> block_;
};

}  // namespace

std::unique_ptr<GroupBackend> make_gpu_inline_backend(const GroupSpec& spec, const BackendEnv&) {
  return std::make_unique<GpuInlineBackend>(spec);
}

}  // namespace epd
