// driver_api.h — the one table of CUDA driver API entry points kernels/ uses
// (cuMem* for the workspaces, stream memory operations for the armed
// executor, the module loading mode). They are looked up through the static
// runtime's cudaGetDriverEntryPointByVersion, so nothing links libcuda and a
// machine without a driver gets EPD_ERR_GPU_UNAVAILABLE with the reason
// instead of a loader error. (libclient keeps its own dlopen'd table:
// libepd-client links no CUDA.) Private to kernels/cuda.
// Ownership: process-wide, resolved on first use and never freed.
// Thread-safety: driver_api() resolves once under std::call_once; the table
// is immutable afterwards, so any thread may read it.
#pragma once

#include <cuda.h>

#include "status.h"

namespace epd {

struct DriverApi {
  // OK when every entry point below resolved; else why none may be used.
  Status status;
  decltype(&cuGetErrorName) get_error_name = nullptr;
  // Module loading (the executors refuse lazy loading: see gpu_armed.h).
  decltype(&cuModuleGetLoadingMode) module_get_loading_mode = nullptr;
  // Virtual memory management (gpu_workspace.cc).
  decltype(&cuMemCreate) mem_create = nullptr;
  decltype(&cuMemRelease) mem_release = nullptr;
  decltype(&cuMemAddressReserve) mem_address_reserve = nullptr;
  decltype(&cuMemAddressFree) mem_address_free = nullptr;
  decltype(&cuMemMap) mem_map = nullptr;
  decltype(&cuMemUnmap) mem_unmap = nullptr;
  decltype(&cuMemSetAccess) mem_set_access = nullptr;
  decltype(&cuMemGetAllocationGranularity) mem_get_allocation_granularity = nullptr;
  decltype(&cuMemExportToShareableHandle) mem_export_to_shareable_handle = nullptr;
  // Stream memory operations (armed_executor.cc).
  decltype(&cuStreamWaitValue32) stream_wait_value32 = nullptr;
  decltype(&cuStreamWriteValue32) stream_write_value32 = nullptr;
};

// The table, resolved on the first call (which initialises the CUDA runtime).
const DriverApi& driver_api();

// A driver API error as EPD_ERR_CUDA: "<what>: <CUDA_ERROR_NAME> at <file>:<line>".
Status cu_error(CUresult r, const char* what, const char* file, int line);

}  // namespace epd

#define EPD_CU_RETURN(expr)                                                                    \
  do {                                                                                         \
    const CUresult epd_cu_err_ = (expr);                                                       \
    if (epd_cu_err_ != CUDA_SUCCESS) return ::epd::cu_error(epd_cu_err_, #expr, __FILE__, __LINE__); \
  } while (0)
