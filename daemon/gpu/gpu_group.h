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
// Thread-safety: control thread only, except describe()/variant()/completed().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
// Whether MPS is active on `device` for this process (false when unknown).
bool gpu_mps_active(int32_t device);

// Whether the placement names more than one node.
bool spans_nodes(const GroupSpec& spec);

// The GPU of every rank of `spec` (rank order), or an empty vector for a host
// group. Refused with EPD_ERR_UNSUPPORTED naming the placement entries: a mix
// of host and GPU ranks, and, on one node, a GPU whose ranks are not
// contiguous (each GPU runs one launch sequence over a run of ranks; a group
// spanning nodes is host-staged, gpu_stage.h, and has no such rule).
Result<std::vector<int32_t>> gpu_devices_of(const GroupSpec& spec);

// CUDA's view of how this node's GPUs reach each other, for `epctl topology`
// (rendered beside hwloc's PCIe view) and the group-creation log: every
// visible device's PCI bus id, and per ordered pair whether peer access is
// possible, with native atomics, and the driver's performance rank.
struct GpuPeerView {
  struct Device {
    int32_t index = 0;
    std::string pci_busid;  // as CUDA reports it, e.g. "0000:18:00.0"
  };
  struct Link {
    int32_t from = 0, to = 0;
    bool access = false;
    bool native_atomics = false;
    int32_t performance_rank = -1;
  };
  std::vector<Device> devices;
  std::vector<Link> links;  // every ordered pair (from != to)
};
// Probed once and cached; an error (no driver, built without CUDA) says why.
Result<GpuPeerView> gpu_peer_view();

class GpuGroup {
 public:
  ~GpuGroup();
  GpuGroup(const GpuGroup&) = delete;
  GpuGroup& operator=(const GpuGroup&) = delete;

  // Allocates every rank's workspace on its GPU (gpu_devices_of), mapped for
  // every GPU of the group (peer access enabled between them), initialises the
  // control blocks and arms the streams.
  static Result<std::unique_ptr<GpuGroup>> create(const GroupSpec& spec);

  int32_t device(int32_t rank) const;
  std::string gpus() const;  // "GPU 0" or "GPUs 0,1,2,3"
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
  // The armed executor, its launch variant (what it launches and why) and launch shape.
  std::string describe() const;
  // The launch variant that runs: "high_throughput", "low_latency" or
  // "multi_gpu" (kernels/gpu_launch_plan.h); "none" without CUDA.
  const char* variant() const;

 private:
  struct Impl;
  GpuGroup();
  std::vector<int32_t> devices_;  // per rank
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd
