// inline_block.cc — InlineBlock (gpu_inline.h): the daemon's side of an
// inline group's block. Every copy runs on the block's own non-blocking
// stream: other groups' armed streams never go idle, so nothing here may wait
// for the whole device.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <vector>

#include "control_block.h"
#include "cuda_status.h"
#include "gpu_executor.h"
#include "gpu_executor_impl.h"
#include "gpu_inline.h"

namespace epd {

InlineBlock::~InlineBlock() {
  if (!stream_) return;
  cudaSetDevice(mem_ ? mem_->device() : 0);
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

Result<std::unique_ptr<InlineBlock>> InlineBlock::create(const GroupSpec& spec) {
  auto lay = inline_block_layout(spec);
  if (!lay) return lay.status();
  const int32_t device = spec.placement[0].gpu;
  std::unique_ptr<InlineBlock> b(new InlineBlock());
  b->spec_ = spec;
  b->layout_ = std::move(lay.value());
  auto mem = GpuWorkspace::create(b->layout_.bytes, device);
  if (!mem) return mem.status();
  b->mem_ = std::move(mem.value());
  EPD_CUDA_RETURN(cudaSetDevice(device));
  cudaStream_t st = nullptr;
  EPD_CUDA_RETURN(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  b->stream_ = st;
  EPD_RETURN_IF_ERROR(b->init());
  return b;
}

Status InlineBlock::init() {
  auto st = static_cast<cudaStream_t>(stream_);
  uint8_t* base = mem_->device_ptr();
  EPD_CUDA_RETURN(cudaSetDevice(mem_->device()));
  EPD_CUDA_RETURN(cudaMemsetAsync(base, 0, layout_.bytes, st));
  EPD_RETURN_IF_ERROR(init_scratch(base + layout_.scratch_at, layout_.scratch, spec_.slots, st));
  std::vector<uint8_t*> bases;
  for (uint64_t at : layout_.rank_at) bases.push_back(base + at);
  EPD_RETURN_IF_ERROR(init_control_blocks(bases, st));
  aborted_ = false;
  return Status::ok();
}

int32_t InlineBlock::device() const { return mem_->device(); }
uint64_t InlineBlock::mapped_bytes() const { return mem_->mapped_bytes(); }
Result<int> InlineBlock::export_fd() const { return mem_->export_fd(); }

Status InlineBlock::abort(epd_status_t reason) {
  if (reason == EPD_OK) reason = EPD_ERR_SHUTTING_DOWN;
  const uint32_t word = static_cast<uint32_t>(-static_cast<int32_t>(reason));
  auto st = static_cast<cudaStream_t>(stream_);
  EPD_CUDA_RETURN(cudaSetDevice(mem_->device()));
  EPD_CUDA_RETURN(cudaMemcpyAsync(mem_->device_ptr() + layout_.abort_at, &word, sizeof word, cudaMemcpyHostToDevice, st));
  EPD_CUDA_RETURN(cudaStreamSynchronize(st));
  aborted_ = true;
  return Status::ok();
}

Status InlineBlock::reset() { return init(); }

Result<uint64_t> InlineBlock::completed() const {
  auto st = static_cast<cudaStream_t>(stream_);
  EPD_CUDA_RETURN(cudaSetDevice(mem_->device()));
  ControlBlock cb;
  EPD_CUDA_RETURN(cudaMemcpyAsync(&cb, mem_->device_ptr() + layout_.rank_at[0], sizeof cb, cudaMemcpyDeviceToHost, st));
  EPD_CUDA_RETURN(cudaStreamSynchronize(st));
  uint64_t sum = 0;
  for (int32_t s = 0; s < spec_.slots && s < EPD_MAX_SLOTS; ++s) sum += cb.slot[s].calls_done;
  return sum;
}

}  // namespace epd
