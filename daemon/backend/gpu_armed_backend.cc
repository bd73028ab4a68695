// gpu_armed_backend.cc — GpuArmedBackend (gpu_armed_backend.h).
#include "gpu_armed_backend.h"

#include "gpu_group.h"

namespace epd {

namespace {

class GpuArmedBackend final : public GroupBackend {
 public:
  explicit GpuArmedBackend(const GroupSpec& spec) : spec_(spec) {}

  const char* kind() const override { return "gpu"; }
  // The workspaces live in GPU memory; the memfd is a placeholder page.
  uint64_t host_workspace_bytes(const GroupLayout&) const override { return 4096; }
  bool runs_host_executor() const override { return false; }

  Status start(const std::vector<uint8_t*>&) override {
    auto gpu = GpuGroup::create(spec_);
    if (!gpu) return gpu.status();
    gpu_ = std::move(gpu.value());
    return Status::ok();
  }

  std::string created_line() const override {
    return "GPU group on " + gpu_->gpus() + ", " + std::to_string(gpu_->total_bytes()) + " bytes of GPU workspace; " +
           gpu_->describe() + "; " + gpu_mps_description(spec_.placement[0].gpu);
  }

  Result<RankExport> export_rank(int32_t rank, const SharedRegion&) override {
    auto fd = gpu_->export_fd(rank);
    if (!fd) return fd.status();
    RankExport e;
    e.fd = *fd;
    e.gpu_device = gpu_->device(rank);
    e.gpu_mapped_bytes = gpu_->mapped_bytes(rank);
    return e;
  }

  Status accept_host_ring() const override {
    return make_status(EPD_ERR_UNSUPPORTED,
                       "group '%s' runs on %s: ring it with epd_group_dispatch_async / epd_group_combine_async, not the host "
                       "doorbells",
                       spec_.name.c_str(), gpu_->gpus().c_str());
  }

  // Every armed wait is released with PEER_LOST so no worker's stream hangs;
  // the survivors leave and join again, and the last join resets.
  void rank_gone(int32_t, const LogContext& ctx) override {
    const Status ab = gpu_->abort(EPD_ERR_PEER_LOST);
    log_message(ab ? LogLevel::kInfo : LogLevel::kError, ctx,
                ab ? "GPU streams aborted with PEER_LOST; every rank must leave and join again"
                   : "GPU streams did not drain after the abort: " + ab.message());
  }

  Result<bool> joins_may_complete(int32_t joined, int32_t) override {
    if (!gpu_->aborted()) return true;
    // After a rank loss the group runs again only once every rank has left
    // and joined afresh (the survivors' streams and slot order start over);
    // then the executor is cleared and re-armed.
    if (joined > 0) return false;
    const LogContext ctx{spec_.name, -1, 0, -1};
    if (Status st = gpu_->reset(); !st) {
      log_message(LogLevel::kError, ctx, "GPU executor reset failed: " + st.message());
      return make_status(st.code(), "GPU executor reset failed: %s", st.message().c_str());
    }
    log_message(LogLevel::kInfo, ctx, "GPU executor reset; every rank joined again");
    return true;
  }

  uint64_t device_bytes() const override { return gpu_->total_bytes(); }

  std::string status_text() const override {
    uint64_t ops = 0;
    for (int32_t slot = 0; slot < spec_.slots; ++slot) ops += gpu_->completed(slot);
    std::string text = gpu_->gpus() + ", variant " + gpu_->variant() + ", " + std::to_string(ops) + " ops since reset";
    if (const Status health = gpu_->health(); !health) text += " (" + health.message() + ")";
    if (gpu_->aborted()) text += " (aborted: waiting for every rank to join again)";
    return text;
  }

 private:
  GroupSpec spec_;
  std::unique_ptr<GpuGroup> gpu_;
};

}  // namespace

std::unique_ptr<GroupBackend> make_gpu_armed_backend(const GroupSpec& spec, const BackendEnv&) {
  return std::make_unique<GpuArmedBackend>(spec);
}

}  // namespace epd
