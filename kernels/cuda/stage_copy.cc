// stage_copy.cc — GpuStageCopy (gpu_stage_copy.h) over the CUDA runtime.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstring>

#include "control_block.h"
#include "cuda_status.h"
#include "gpu_stage_copy.h"

namespace epd {

struct GpuStageCopy::Impl {
  std::vector<int32_t> device;                  // [rank], -1 when not on this node
  std::vector<cudaStream_t> stream[3];          // [lane][rank]
  ControlSlot* snapshot = nullptr;              // pinned [rank][slot]
  size_t slots = 0;

  ~Impl() {
    for (size_t r = 0; r < device.size(); ++r) {
      if (device[r] < 0) continue;
      cudaSetDevice(device[r]);
      for (auto& lane : stream)
        if (lane[r]) cudaStreamDestroy(lane[r]);
    }
    if (snapshot) cudaFreeHost(snapshot);
  }
  cudaStream_t of(int32_t rank, Lane lane) const {
    return stream[static_cast<size_t>(lane)][static_cast<size_t>(rank)];
  }
  int32_t device_of(int32_t rank) const { return device[static_cast<size_t>(rank)]; }
};

GpuStageCopy::~GpuStageCopy() = default;

Result<std::unique_ptr<GpuStageCopy>> GpuStageCopy::create(const std::vector<int32_t>& rank_devices,
                                                           int32_t slots) {
  std::unique_ptr<GpuStageCopy> c(new GpuStageCopy());
  c->impl_ = std::make_unique<Impl>();
  Impl& im = *c->impl_;
  const size_t W = rank_devices.size();
  im.device.assign(W, -1);
  im.slots = static_cast<size_t>(slots);
  for (auto& lane : im.stream) lane.assign(W, nullptr);
  for (size_t r = 0; r < W; ++r) {
    if (rank_devices[r] < 0) continue;
    im.device[r] = rank_devices[r];
    EPD_CUDA_RETURN(cudaSetDevice(rank_devices[r]));
    for (auto& lane : im.stream) EPD_CUDA_RETURN(cudaStreamCreateWithFlags(&lane[r], cudaStreamNonBlocking));
  }
  EPD_CUDA_RETURN(cudaMallocHost(reinterpret_cast<void**>(&im.snapshot), sizeof(ControlSlot) * W * im.slots));
  std::memset(static_cast<void*>(im.snapshot), 0, sizeof(ControlSlot) * W * im.slots);
  return c;
}

Status GpuStageCopy::copy_to_host(int32_t rank, Lane lane, void* dst, const uint8_t* src, uint64_t bytes) {
  if (!bytes) return Status::ok();
  const Impl& im = *impl_;
  EPD_CUDA_RETURN(cudaSetDevice(im.device_of(rank)));
  EPD_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, im.of(rank, lane)));
  return Status::ok();
}

Status GpuStageCopy::copy_to_device(int32_t rank, Lane lane, uint8_t* dst, const void* src, uint64_t bytes) {
  if (!bytes) return Status::ok();
  const Impl& im = *impl_;
  EPD_CUDA_RETURN(cudaSetDevice(im.device_of(rank)));
  EPD_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, im.of(rank, lane)));
  return Status::ok();
}

Status GpuStageCopy::sync(int32_t rank, Lane lane) {
  EPD_CUDA_RETURN(cudaStreamSynchronize(impl_->of(rank, lane)));
  return Status::ok();
}

Status GpuStageCopy::read_control_slots(const std::vector<int32_t>& ranks, const std::vector<uint8_t*>& bases) {
  const Impl& im = *impl_;
  for (int32_t r : ranks) {
    EPD_CUDA_RETURN(cudaSetDevice(im.device_of(r)));
    EPD_CUDA_RETURN(cudaMemcpyAsync(im.snapshot + static_cast<size_t>(r) * im.slots,
                                    bases[static_cast<size_t>(r)] + offsetof(ControlBlock, slot),
                                    sizeof(ControlSlot) * im.slots, cudaMemcpyDeviceToHost, im.of(r, Lane::kPoll)));
  }
  for (int32_t r : ranks) EPD_CUDA_RETURN(cudaStreamSynchronize(im.of(r, Lane::kPoll)));
  return Status::ok();
}

const ControlSlot* GpuStageCopy::control_slots(int32_t rank) const {
  return impl_->snapshot + static_cast<size_t>(rank) * impl_->slots;
}

}  // namespace epd
