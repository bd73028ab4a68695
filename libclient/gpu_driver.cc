// gpu_driver.cc — GpuDriver: dlopen("libcuda.so.1") and cuGetProcAddress_v2.
#include "gpu_driver.h"

#include <dlfcn.h>

#include <mutex>

namespace epd::cu {

namespace {

using GetProcAddress = CUresult (*)(const char* symbol, void** pfn, int cuda_version, uint64_t flags,
                                    int* symbol_status);

// CUDA 12.0 ABI of every entry point (the _v2 memops, cuMemcpyAsync with legacy-stream semantics).
constexpr int kAbiVersion = 12000;

template <typename F>
Status resolve(GetProcAddress gpa, const char* name, F* fn) {
  void* p = nullptr;
  int found = 0;
  const CUresult r = gpa(name, &p, kAbiVersion, 0, &found);
  if (r != CUDA_SUCCESS || !p)
    return make_status(EPD_ERR_GPU_UNAVAILABLE, "CUDA driver entry point %s unavailable (cuGetProcAddress: %d)",
                       name, r);
  *fn = reinterpret_cast<F>(p);
  return Status::ok();
}

}  // namespace

Result<const GpuDriver*> GpuDriver::get() {
  static GpuDriver d;
  static Status status;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* why = dlerror();
      status = make_status(EPD_ERR_GPU_UNAVAILABLE, "GPU groups unavailable: dlopen(libcuda.so.1): %s",
                           why ? why : "not found");
      return;
    }
    auto gpa = reinterpret_cast<GetProcAddress>(dlsym(lib, "cuGetProcAddress_v2"));
    if (!gpa) {
      status = make_status(EPD_ERR_GPU_UNAVAILABLE,
                           "GPU groups unavailable: libcuda.so.1 has no cuGetProcAddress_v2 (driver older than CUDA 12)");
      return;
    }
    Status s;
    if (s) s = resolve(gpa, "cuInit", &d.init);
    if (s) s = resolve(gpa, "cuDeviceGet", &d.device_get);
    if (s) s = resolve(gpa, "cuCtxGetCurrent", &d.ctx_get_current);
    if (s) s = resolve(gpa, "cuCtxSetCurrent", &d.ctx_set_current);
    if (s) s = resolve(gpa, "cuDevicePrimaryCtxRetain", &d.primary_ctx_retain);
    if (s) s = resolve(gpa, "cuMemImportFromShareableHandle", &d.mem_import);
    if (s) s = resolve(gpa, "cuMemRelease", &d.mem_release);
    if (s) s = resolve(gpa, "cuMemAddressReserve", &d.address_reserve);
    if (s) s = resolve(gpa, "cuMemAddressFree", &d.address_free);
    if (s) s = resolve(gpa, "cuMemMap", &d.mem_map);
    if (s) s = resolve(gpa, "cuMemUnmap", &d.mem_unmap);
    if (s) s = resolve(gpa, "cuMemSetAccess", &d.set_access);
    if (s) s = resolve(gpa, "cuStreamWriteValue32", &d.write32);
    if (s) s = resolve(gpa, "cuStreamWaitValue32", &d.wait32);
    if (s) s = resolve(gpa, "cuStreamBatchMemOp", &d.batch_mem_op);
    if (s) s = resolve(gpa, "cuMemcpyAsync", &d.memcpy_async);
    if (s) s = resolve(gpa, "cuMemsetD32Async", &d.memset32_async);
    if (s) s = resolve(gpa, "cuMemcpyDtoHAsync", &d.memcpy_dtoh_async);
    if (s) s = resolve(gpa, "cuStreamCreate", &d.stream_create);
    if (s) s = resolve(gpa, "cuStreamDestroy", &d.stream_destroy);
    if (s) s = resolve(gpa, "cuStreamSynchronize", &d.stream_synchronize);
    if (s) s = resolve(gpa, "cuStreamIsCapturing", &d.stream_is_capturing);
    if (s) s = resolve(gpa, "cuGetErrorName", &d.error_name);
    if (s) {
      const CUresult r = d.init(0);
      if (r != CUDA_SUCCESS) s = make_status(EPD_ERR_GPU_UNAVAILABLE, "GPU groups unavailable: cuInit failed (%d)", r);
    }
    status = s;
  });
  if (!status) return status;
  return static_cast<const GpuDriver*>(&d);
}

Status GpuDriver::error(CUresult r, const char* what, int line) const {
  const char* name = "?";
  if (error_name) error_name(r, &name);
  return make_status(EPD_ERR_CUDA, "%s: %s (%d) at %s:%d", what, name, r, __FILE__, line);
}

Status GpuDriver::write32_pair(CUstream st, CUdeviceptr a, uint32_t va, CUdeviceptr b, uint32_t vb) const {
  CUstreamBatchMemOpParams ops[2] = {};
  ops[0].write_value = {CU_STREAM_MEM_OP_WRITE_VALUE_32, a, va, CU_STREAM_WRITE_VALUE_DEFAULT, 0};
  ops[1].write_value = {CU_STREAM_MEM_OP_WRITE_VALUE_32, b, vb, CU_STREAM_WRITE_VALUE_DEFAULT, 0};
  EPD_CU_CALL(*this, batch_mem_op(st, 2, ops, 0));
  return Status::ok();
}

Status GpuDriver::ensure_context(int32_t device) const {
  CUcontext cur = nullptr;
  EPD_CU_CALL(*this, ctx_get_current(&cur));
  if (cur) return Status::ok();
  CUdevice dev = 0;
  EPD_CU_CALL(*this, device_get(&dev, device));
  CUcontext ctx = nullptr;
  EPD_CU_CALL(*this, primary_ctx_retain(&ctx, dev));  // released at exit with the process
  EPD_CU_CALL(*this, ctx_set_current(ctx));
  return Status::ok();
}

Result<CUcontext> GpuDriver::primary_context(int32_t device) const {
  CUdevice dev = 0;
  EPD_CU_CALL(*this, device_get(&dev, device));
  CUcontext ctx = nullptr;
  EPD_CU_CALL(*this, primary_ctx_retain(&ctx, dev));  // released at exit with the process
  return ctx;
}

}  // namespace epd::cu
