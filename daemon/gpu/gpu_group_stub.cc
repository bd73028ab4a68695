// gpu_group_stub.cc — GpuGroup for an epd built without CUDA (gpu_group.h):
// every GPU placement is refused with a message saying so.
#include "gpu_executor.h"
#include "gpu_group.h"
#include "gpu_inline.h"

namespace epd {

namespace {
Status no_cuda() {
  return make_status(EPD_ERR_GPU_UNAVAILABLE, "this epd was built without CUDA (EPD_WITH_CUDA=OFF or no nvcc)");
}
}  // namespace

void gpu_prepare_process() {}
Result<int32_t> gpu_probe() { return no_cuda(); }
std::string gpu_mps_description(int32_t) { return "MPS unknown: " + no_cuda().message(); }
bool gpu_mps_active(int32_t) { return false; }
Result<GpuPeerView> gpu_peer_view() { return no_cuda(); }

struct GpuGroup::Impl {};
GpuGroup::GpuGroup() = default;
GpuGroup::~GpuGroup() = default;
Result<std::unique_ptr<GpuGroup>> GpuGroup::create(const GroupSpec& spec) {
  return make_status(EPD_ERR_GPU_UNAVAILABLE, "group '%s' places ranks on GPU %d: %s", spec.name.c_str(),
                     spec.placement.empty() ? -1 : spec.placement[0].gpu, no_cuda().message().c_str());
}
int32_t GpuGroup::device(int32_t) const { return -1; }
std::string GpuGroup::gpus() const { return "none"; }
uint64_t GpuGroup::mapped_bytes(int32_t) const { return 0; }
uint64_t GpuGroup::total_bytes() const { return 0; }
Result<int> GpuGroup::export_fd(int32_t) const { return no_cuda(); }
Status GpuGroup::abort(epd_status_t) { return Status::ok(); }
bool GpuGroup::aborted() const { return false; }
Status GpuGroup::reset() { return Status::ok(); }
Status GpuGroup::health() const { return no_cuda(); }
uint64_t GpuGroup::completed(int32_t) const { return 0; }
std::string GpuGroup::describe() const { return no_cuda().message(); }
const char* GpuGroup::variant() const { return "none"; }

// The inline executor's block: never created without CUDA.
GpuWorkspace::~GpuWorkspace() = default;
InlineBlock::~InlineBlock() = default;
Result<std::unique_ptr<InlineBlock>> InlineBlock::create(const GroupSpec& spec) {
  return make_status(EPD_ERR_GPU_UNAVAILABLE, "group '%s' (executor inline) places ranks on GPU %d: %s",
                     spec.name.c_str(), spec.placement.empty() ? -1 : spec.placement[0].gpu,
                     no_cuda().message().c_str());
}
int32_t InlineBlock::device() const { return -1; }
uint64_t InlineBlock::mapped_bytes() const { return 0; }
Result<int> InlineBlock::export_fd() const { return no_cuda(); }
Status InlineBlock::abort(epd_status_t) { return Status::ok(); }
Status InlineBlock::reset() { return Status::ok(); }
Result<uint64_t> InlineBlock::completed() const { return no_cuda(); }

}  // namespace epd
