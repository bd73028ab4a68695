// cuda_status.h — CUDA runtime and driver errors turned into epd::Status right
// at the call, with the library's own error name and file:line.
// resolve_driver_entry looks a driver API function up through the static
// runtime (cudaGetDriverEntryPointByVersion), so nothing links libcuda.
// Thread-safety: stateless.
#pragma once

#include <cuda_runtime_api.h>

#include "status.h"

#define EPD_CUDA_RETURN(expr)                                                              \
  do {                                                                                     \
    const cudaError_t epd_cuda_err_ = (expr);                                              \
    if (epd_cuda_err_ != cudaSuccess)                                                      \
      return ::epd::make_status(EPD_ERR_CUDA, "%s: %s (%s) at %s:%d", #expr,               \
                                cudaGetErrorName(epd_cuda_err_),                           \
                                cudaGetErrorString(epd_cuda_err_), __FILE__, __LINE__);    \
  } while (0)

namespace epd {

template <typename F>
Status resolve_driver_entry(const char* name, F* fn) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t e = cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &q);
  if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !p)
    return make_status(EPD_ERR_GPU_UNAVAILABLE, "CUDA driver entry point %s unavailable: %s", name,
                       e != cudaSuccess ? cudaGetErrorName(e) : "symbol not found");
  *fn = reinterpret_cast<F>(p);
  return Status::ok();
}

}  // namespace epd
