// gpu_driver.h — the few CUDA driver entry points libepd-client needs, loaded
// lazily with dlopen("libcuda.so.1") + cuGetProcAddress_v2, so the library
// builds without the CUDA toolkit and loads on a machine without a driver
// (every call then returns EPD_ERR_GPU_UNAVAILABLE saying why).
//
// The driver types are declared here with the ABI of cuda.h (CUDA >= 12); only
// what the client uses: import of a cuMem POSIX file descriptor, stream memory
// operations, asynchronous copies and memsets, and a private stream for host
// queries. Ownership: GpuDriver::get() returns a process-wide table that lives
// until exit (the library handle is never closed). Thread-safety: get() is
// thread-safe (std::call_once); the function pointers are plain driver calls.
#pragma once

#include <cstddef>
#include <cstdint>

#include "status.h"

namespace epd::cu {

// ---- driver ABI (values and layouts from cuda.h, CUDA 12/13) ----
using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUmemGenericAllocationHandle = unsigned long long;
struct CUctx_st;
struct CUstream_st;
using CUcontext = CUctx_st*;
using CUstream = CUstream_st*;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr int CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1;
constexpr int CU_MEM_LOCATION_TYPE_DEVICE = 1;
constexpr int CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3;
constexpr unsigned CU_STREAM_WAIT_VALUE_GEQ = 0x0;
constexpr unsigned CU_STREAM_WAIT_VALUE_EQ = 0x1;
constexpr unsigned CU_STREAM_WAIT_VALUE_AND = 0x2;
constexpr unsigned CU_STREAM_WRITE_VALUE_DEFAULT = 0x0;
constexpr unsigned CU_STREAM_NON_BLOCKING = 0x1;
constexpr int CU_STREAM_CAPTURE_STATUS_NONE = 0;

// cuStreamBatchMemOp's parameter union (CUstreamBatchMemOpParams, 48 bytes),
// of which only the 32-bit write is used.
constexpr unsigned CU_STREAM_MEM_OP_WRITE_VALUE_32 = 2;
struct CUstreamMemOpWriteValue {
  unsigned operation;   // CU_STREAM_MEM_OP_WRITE_VALUE_32
  CUdeviceptr address;
  uint64_t value;       // the low 32 bits for a 32-bit write
  unsigned flags;       // CU_STREAM_WRITE_VALUE_*
  CUdeviceptr alias;    // unused
};
union CUstreamBatchMemOpParams {
  unsigned operation;
  CUstreamMemOpWriteValue write_value;
  uint64_t pad[6];
};
static_assert(sizeof(CUstreamBatchMemOpParams) == 48, "the driver's CUstreamBatchMemOpParams is 48 bytes");

struct CUmemLocation {
  int type;  // CUmemLocationType
  int id;
};
struct CUmemAccessDesc {
  CUmemLocation location;
  int flags;  // CUmemAccess_flags
};

struct GpuDriver {
  CUresult (*init)(unsigned int flags) = nullptr;
  CUresult (*device_get)(CUdevice*, int ordinal) = nullptr;
  CUresult (*ctx_get_current)(CUcontext*) = nullptr;
  CUresult (*ctx_set_current)(CUcontext) = nullptr;
  CUresult (*primary_ctx_retain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*mem_import)(CUmemGenericAllocationHandle*, void* os_handle, int handle_type) = nullptr;
  CUresult (*mem_release)(CUmemGenericAllocationHandle) = nullptr;
  CUresult (*address_reserve)(CUdeviceptr*, size_t size, size_t alignment, CUdeviceptr addr,
                              unsigned long long flags) = nullptr;
  CUresult (*address_free)(CUdeviceptr, size_t) = nullptr;
  CUresult (*mem_map)(CUdeviceptr, size_t size, size_t offset, CUmemGenericAllocationHandle,
                      unsigned long long flags) = nullptr;
  CUresult (*mem_unmap)(CUdeviceptr, size_t) = nullptr;
  CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t count) = nullptr;
  CUresult (*write32)(CUstream, CUdeviceptr, uint32_t value, unsigned int flags) = nullptr;
  CUresult (*wait32)(CUstream, CUdeviceptr, uint32_t value, unsigned int flags) = nullptr;
  CUresult (*batch_mem_op)(CUstream, unsigned int count, CUstreamBatchMemOpParams*, unsigned int flags) = nullptr;
  CUresult (*memcpy_async)(CUdeviceptr dst, CUdeviceptr src, size_t, CUstream) = nullptr;
  CUresult (*memset32_async)(CUdeviceptr, unsigned int value, size_t count, CUstream) = nullptr;
  CUresult (*memcpy_dtoh_async)(void* dst, CUdeviceptr src, size_t, CUstream) = nullptr;
  CUresult (*stream_create)(CUstream*, unsigned int flags) = nullptr;
  CUresult (*stream_destroy)(CUstream) = nullptr;
  CUresult (*stream_synchronize)(CUstream) = nullptr;
  CUresult (*stream_is_capturing)(CUstream, int* status) = nullptr;
  CUresult (*error_name)(CUresult, const char**) = nullptr;

  // The process-wide table, loaded on first use; EPD_ERR_GPU_UNAVAILABLE when
  // libcuda.so.1 or an entry point is missing, or cuInit fails.
  static Result<const GpuDriver*> get();

  // A status naming the driver error, the call and the line.
  Status error(CUresult r, const char* what, int line) const;
  // Two 32-bit writes in stream order on `st` (each after a memory barrier,
  // so earlier work is visible before either), as one stream operation.
  Status write32_pair(CUstream st, CUdeviceptr a, uint32_t va, CUdeviceptr b, uint32_t vb) const;
  // Makes `device`'s primary context current on this thread unless a context
  // already is (a worker's framework has usually done it).
  Status ensure_context(int32_t device) const;
  // The primary context of `device` (retained for the life of the process).
  Result<CUcontext> primary_context(int32_t device) const;
};

}  // namespace epd::cu

#define EPD_CU_CALL(drv, expr)                                                       \
  do {                                                                               \
    const ::epd::cu::CUresult epd_cu_r_ = (expr);                                    \
    if (epd_cu_r_ != ::epd::cu::CUDA_SUCCESS) return (drv).error(epd_cu_r_, #expr, __LINE__); \
  } while (0)
