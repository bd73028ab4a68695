// cuda_status.h — CUDA runtime errors turned into epd::Status right at the
// call, with the library's own error name and file:line (driver API errors:
// EPD_CU_RETURN in driver_api.h).
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

