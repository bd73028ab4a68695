// armed_kernels.cu — the armed executor's stand-alone completion kernel (for
// launch sequences that do not end in a kernel of their own that can finish
// the operation) and the benchmark stamp kernel (launchers.h; parameters in
// device_params.h). One block each; the work is a few words per rank.
#include <cuda_runtime.h>

#include "armed_complete.cuh"
#include "launchers.h"

namespace epd::gpu {
namespace {

constexpr int kArmedThreads = 256;

__global__ void __launch_bounds__(kArmedThreads) armed_complete(ArmedParams p) { armed_complete_block(p); }

__global__ void stamp_globaltimer(uint64_t* word) {
  if (!word) return;
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  *word = t;
}

}  // namespace

int launch_stamp(uint64_t* word, void* stream) {
  stamp_globaltimer<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(word);
  return static_cast<int>(cudaGetLastError());
}

int launch_armed_complete(const ArmedParams& p, void* stream) {
  armed_complete<<<1, kArmedThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace epd::gpu
