// gpu_staged_backend.cc — GpuStagedBackend (gpu_staged_backend.h).
#include "gpu_staged_backend.h"

#include <unistd.h>

#include <cstdio>

#include "gpu_stage.h"

namespace epd {

namespace {

GpuStage::Op stage_op(Op op) { return op == Op::kDispatch ? GpuStage::Op::kDispatch : GpuStage::Op::kCombine; }

class GpuStagedBackend final : public GroupBackend {
 public:
  GpuStagedBackend(const GroupSpec& spec, BackendEnv env) : spec_(spec), env_(std::move(env)) {}

  const char* kind() const override { return "gpu-staged"; }
  uint64_t host_workspace_bytes(const GroupLayout& layout) const override { return layout.total_bytes; }
  bool runs_host_executor() const override { return true; }

  Status start(const std::vector<uint8_t*>& host_bases) override {
    std::vector<int32_t> local;
    for (int32_t r = 0; r < spec_.world_size; ++r)
      if (spec_.placement[static_cast<size_t>(r)].node == env_.node_id) local.push_back(r);
    auto stage = GpuStage::create(spec_, local, host_bases, env_.wake);
    if (!stage) return stage.status();
    stage_ = std::move(stage.value());
    return Status::ok();
  }

  std::string created_line() const override {
    return "GPU group across nodes: " + stage_->describe() + ", " + std::to_string(stage_->total_bytes()) +
           " bytes of GPU workspace";
  }

  Result<RankExport> export_rank(int32_t rank, const SharedRegion&) override {
    auto fd = stage_->export_fd(rank);
    if (!fd) return fd.status();
    if (Status st = stage_->arm(rank); !st) {
      close(*fd);
      return st;
    }
    RankExport e;
    e.fd = *fd;
    e.gpu_device = stage_->device(rank);
    e.gpu_mapped_bytes = stage_->mapped_bytes(rank);
    return e;
  }

  Status accept_host_ring() const override {
    return make_status(EPD_ERR_UNSUPPORTED,
                       "group '%s' has GPU ranks: ring it with epd_group_dispatch_async / epd_group_combine_async, not the host "
                       "doorbells",
                       spec_.name.c_str());
  }

  std::vector<BackendRing> take_rings() override {
    std::vector<BackendRing> out;
    for (const GpuStage::Ring& r : stage_->take_rings())
      out.push_back(BackendRing{r.rank, r.slot, r.op == GpuStage::Op::kDispatch ? Op::kDispatch : Op::kCombine, r.mode});
    return out;
  }

  void finish(const RankTarget& t, int32_t slot, Op op, const Status& st, bool with_results) override {
    // The session block first: the worker's epd_group_gpu_status reads its message
    // once the completion word below has released its stream.
    publish(*t.shm, t.index, slot, op, t.seq, st);
    if (t.rank < 0) return;
    const Status d = with_results ? stage_->deliver(t.rank, slot, stage_op(op), st.code())
                                  : stage_->fail(t.rank, slot, stage_op(op), st.code());
    if (!d) {
      std::fprintf(stderr, "epd: group '%s' rank %d slot %d: staging the result to the GPU failed: %s\n",
                   spec_.name.c_str(), t.rank, slot, d.message().c_str());
      (void)stage_->fail(t.rank, slot, stage_op(op), EPD_ERR_CUDA);
    }
  }

  // A pending op of this rank fails through the rendezvous.
  void rank_gone(int32_t rank, const LogContext&) override { stage_->disarm(rank); }

  uint64_t device_bytes() const override { return stage_->total_bytes(); }

  std::string status_text() const override {
    std::string text = "GPU ranks host-staged across nodes";
    if (const Status h = stage_->health(); !h) text += " (" + h.message() + ")";
    return text;
  }

 private:
  GroupSpec spec_;
  BackendEnv env_;
  std::unique_ptr<GpuStage> stage_;
};

}  // namespace

std::unique_ptr<GroupBackend> make_gpu_staged_backend(const GroupSpec& spec, const BackendEnv& env) {
  return std::make_unique<GpuStagedBackend>(spec, env);
}

}  // namespace epd
