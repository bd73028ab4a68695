// driver_api.cc — the driver API table (driver_api.h), resolved once.
#include "driver_api.h"

#include <mutex>

#include "cuda_status.h"
#include "gpu_executor.h"

namespace epd {

namespace {

// Looks one entry point up through the static runtime, so nothing links libcuda.
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

DriverApi resolve() {
  DriverApi d;
  auto count = gpu_device_count();  // initialises the runtime, which loads libcuda.so.1
  if (!count) {
    d.status = count.status();
    return d;
  }
  Status s;
  if (s) s = resolve_driver_entry("cuGetErrorName", &d.get_error_name);
  if (s) s = resolve_driver_entry("cuModuleGetLoadingMode", &d.module_get_loading_mode);
  if (s) s = resolve_driver_entry("cuMemCreate", &d.mem_create);
  if (s) s = resolve_driver_entry("cuMemRelease", &d.mem_release);
  if (s) s = resolve_driver_entry("cuMemAddressReserve", &d.mem_address_reserve);
  if (s) s = resolve_driver_entry("cuMemAddressFree", &d.mem_address_free);
  if (s) s = resolve_driver_entry("cuMemMap", &d.mem_map);
  if (s) s = resolve_driver_entry("cuMemUnmap", &d.mem_unmap);
  if (s) s = resolve_driver_entry("cuMemSetAccess", &d.mem_set_access);
  if (s) s = resolve_driver_entry("cuMemGetAllocationGranularity", &d.mem_get_allocation_granularity);
  if (s) s = resolve_driver_entry("cuMemExportToShareableHandle", &d.mem_export_to_shareable_handle);
  if (s) s = resolve_driver_entry("cuStreamWaitValue32", &d.stream_wait_value32);
  if (s) s = resolve_driver_entry("cuStreamWriteValue32", &d.stream_write_value32);
  d.status = s;
  return d;
}

}  // namespace

const DriverApi& driver_api() {
  static DriverApi table;
  static std::once_flag once;
  std::call_once(once, [] { table = resolve(); });
  return table;
}

Status cu_error(CUresult r, const char* what, const char* file, int line) {
  const char* name = "?";
  if (const auto get_name = driver_api().get_error_name) get_name(r, &name);
  return make_status(EPD_ERR_CUDA, "%s: %s at %s:%d", what, name, file, line);
}

}  // namespace epd
