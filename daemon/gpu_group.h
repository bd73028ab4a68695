// gpu_group.h — the GPU half of a daemon group: every rank's workspace in GPU
// memory (cuMem, exportable as POSIX fds) and the armed executor that serves
// them (kernels/gpu_armed.h), plus the process-wide GPU facts the daemon logs
// and reports (driver, devices, MPS).
//
// Built with CUDA this wraps epd_cuda; built without, every call reports that
// this epd has no GPU executor (gpu_group_stub.cc). CUDA is loaded lazily (the
// static runtime dlopens libcuda.so.1 on first use), so epd starts on a
// machine without a driver and says once why GPU groups are unavailable.
//
// Ownership: a GpuGroup owns its workspaces and executor. An executor whose
// abort did not drain may still run queued work later: the GpuGroup then
// leaks its workspaces rather than unmapping live memory (logged).
// Thread-safety: control thread only, except describe()/completed().
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "spec.h"
#include "status.h"

namespace epd {

// Before anything initialises CUDA (main, first thing): the environment the
// armed streams need (CUDA_DEVICE_MAX_CONNECTIONS, eager module loading).
void gpu_prepare_process();

// Probes the driver once (cached): OK with the device count, or why GPU groups
// are unavailable (EPD_ERR_GPU_UNAVAILABLE / EPD_ERR_UNSUPPORTED without CUDA).
Result<int32_t> gpu_probe();

// One line for the log and status: MPS state of `device` (detect_mps), or
// why it is unknown.
std::string gpu_mps_description(int32_t device);

// The single device every rank of `spec` is placed on, or a specific error:
// host groups return -1; mixed host/GPU or several GPUs are refused with
// EPD_ERR_UNSUPPORTED naming the placement entries.
Result<int32_t> gpu_device_of(const GroupSpec& spec);

class GpuGroup {
 public:
  ~GpuGroup();
  GpuGroup(const GpuGroup&) = delete;
  GpuGroup& operator=(const GpuGroup&) = delete;

  // Allocates every rank's workspace on `device`, initialises the control
  // blocks and arms the streams.
  static Result<std::unique_ptr<GpuGroup>> create(const GroupSpec& spec, int32_t device);

  int32_t device() const { return device_; }
  uint64_t mapped_bytes(int32_t rank) const;
  uint64_t total_bytes() const;  // sum of mapped bytes over ranks
  // A new fd for rank's workspace (the caller sends and closes it).
  Result<int> export_fd(int32_t rank) const;

  // A rank is gone: release every armed wait with `reason` (bounded by the
  // group's timeout). Idempotent.
  Status abort(epd_status_t reason);
  bool aborted() const;
  // After abort, once every rank has joined afresh: clear and re-arm.
  Status reset();
  Status health() const;
  uint64_t completed(int32_t slot) const;
  std::string describe() const;

 private:
  struct Impl;
  GpuGroup();
  int32_t device_ = -1;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd
