// gpu_stage_stub.cc — GpuStage for an epd built without CUDA (gpu_stage.h):
// creation is refused saying so; nothing else is reachable.
#include "gpu_stage.h"

namespace epd {

namespace {
Status no_cuda() {
  return make_status(EPD_ERR_GPU_UNAVAILABLE, "this epd was built without CUDA (EPD_WITH_CUDA=OFF or no nvcc)");
}
}  // namespace

struct GpuStage::Impl {};
GpuStage::GpuStage() = default;
GpuStage::~GpuStage() = default;
Result<std::unique_ptr<GpuStage>> GpuStage::create(const GroupSpec& spec, std::vector<int32_t>, std::vector<uint8_t*>,
                                                   std::function<void()>, uint32_t) {
  return make_status(EPD_ERR_GPU_UNAVAILABLE, "group '%s' places ranks on GPUs: %s", spec.name.c_str(),
                     no_cuda().message().c_str());
}
int32_t GpuStage::device(int32_t) const { return -1; }
uint64_t GpuStage::mapped_bytes(int32_t) const { return 0; }
uint64_t GpuStage::total_bytes() const { return 0; }
Result<int> GpuStage::export_fd(int32_t) const { return no_cuda(); }
Status GpuStage::arm(int32_t) { return no_cuda(); }
void GpuStage::disarm(int32_t) {}
std::vector<GpuStage::Ring> GpuStage::take_rings() { return {}; }
Status GpuStage::deliver(int32_t, int32_t, Op, epd_status_t) { return no_cuda(); }
Status GpuStage::fail(int32_t, int32_t, Op, epd_status_t) { return no_cuda(); }
Status GpuStage::health() const { return no_cuda(); }
std::string GpuStage::describe() const { return no_cuda().message(); }

}  // namespace epd
