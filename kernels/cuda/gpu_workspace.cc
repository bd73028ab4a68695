// gpu_workspace.cc — GpuWorkspace: device workspaces from cuMemCreate, mapped
// with cuMemMap and exportable as POSIX file descriptors. The driver API comes
// from the process's one table (driver_api.h), so nothing links libcuda and a
// machine without a driver gets EPD_ERR_GPU_UNAVAILABLE instead of a loader error.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "cuda_status.h"
#include "driver_api.h"
#include "gpu_executor.h"

namespace epd {

namespace {

CUmemAllocationProp allocation_prop(int32_t device) {
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  return prop;
}

}  // namespace

GpuWorkspace::~GpuWorkspace() {
  const DriverApi& d = driver_api();
  if (!d.status || !ptr_) return;
  const auto va = reinterpret_cast<CUdeviceptr>(ptr_);
  d.mem_unmap(va, mapped_);
  d.mem_address_free(va, mapped_);
  d.mem_release(handle_);
}

Result<std::unique_ptr<GpuWorkspace>> GpuWorkspace::create(uint64_t bytes, int32_t device,
                                                           const std::vector<int32_t>& peers) {
  const DriverApi& d = driver_api();
  if (!d.status) return d.status;
  EPD_CUDA_RETURN(cudaSetDevice(device));
  EPD_CUDA_RETURN(cudaFree(nullptr));  // makes the primary context current
  const CUmemAllocationProp prop = allocation_prop(device);
  size_t gran = 0;
  EPD_CU_RETURN(d.mem_get_allocation_granularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
  std::unique_ptr<GpuWorkspace> w(new GpuWorkspace());
  w->bytes_ = bytes;
  w->mapped_ = (bytes + gran - 1) / gran * gran;
  w->device_ = device;
  CUmemGenericAllocationHandle h = 0;
  EPD_CU_RETURN(d.mem_create(&h, w->mapped_, &prop, 0));
  CUdeviceptr va = 0;
  if (CUresult r = d.mem_address_reserve(&va, w->mapped_, gran, 0, 0); r != CUDA_SUCCESS) {
    d.mem_release(h);
    return cu_error(r, "cuMemAddressReserve", __FILE__, __LINE__);
  }
  if (CUresult r = d.mem_map(va, w->mapped_, 0, h, 0); r != CUDA_SUCCESS) {
    d.mem_address_free(va, w->mapped_);
    d.mem_release(h);
    return cu_error(r, "cuMemMap", __FILE__, __LINE__);
  }
  w->ptr_ = reinterpret_cast<uint8_t*>(va);
  w->handle_ = h;
  std::vector<CUmemAccessDesc> access(1);
  access[0].location = prop.location;
  access[0].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  for (int32_t p : peers) {
    if (p == device) continue;
    CUmemAccessDesc a = access[0];
    a.location.id = p;
    access.push_back(a);
  }
  EPD_CU_RETURN(d.mem_set_access(va, w->mapped_, access.data(), access.size()));  // w's destructor unmaps on error
  return w;
}

Result<int> GpuWorkspace::export_fd() const {
  const DriverApi& d = driver_api();
  if (!d.status) return d.status;
  int fd = -1;
  EPD_CU_RETURN(d.mem_export_to_shareable_handle(&fd, handle_, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
  return fd;
}

Result<std::vector<std::unique_ptr<GpuWorkspace>>> allocate_gpu_workspaces(const GroupSpec& spec,
                                                                           int32_t device) {
  std::vector<std::unique_ptr<GpuWorkspace>> out;
  for (int32_t r = 0; r < spec.world_size; ++r) {
    auto w = GpuWorkspace::create(workspace_bytes(spec, r), device);
    if (!w) return w.status();
    out.push_back(std::move(w.value()));
  }
  return out;
}

Result<std::vector<std::unique_ptr<GpuWorkspace>>> allocate_gpu_workspaces(
    const GroupSpec& spec, const std::vector<int32_t>& rank_devices) {
  if (static_cast<int32_t>(rank_devices.size()) != spec.world_size)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "rank_devices has %zu entries, world_size is %d",
                       rank_devices.size(), spec.world_size);
  std::vector<int32_t> gpus = rank_devices;
  std::sort(gpus.begin(), gpus.end());
  gpus.erase(std::unique(gpus.begin(), gpus.end()), gpus.end());
  if (gpus.size() > 1) EPD_RETURN_IF_ERROR(enable_peer_access(gpus));  // or the pair without it, named
  std::vector<std::unique_ptr<GpuWorkspace>> out;
  for (int32_t r = 0; r < spec.world_size; ++r) {
    auto w = GpuWorkspace::create(workspace_bytes(spec, r), rank_devices[static_cast<size_t>(r)], gpus);
    if (!w) return w.status();
    out.push_back(std::move(w.value()));
  }
  return out;
}

}  // namespace epd
