// gpu_stage_copy.h — the CUDA side of the host-staged GPU ranks of a group
// that spans nodes (daemon/gpu/gpu_stage.h), behind a CUDA-free interface:
// per local rank three non-blocking streams on its GPU, one per lane (the
// poller's reads, the worker's deliveries, the control thread's writes), and a
// pinned snapshot of the ranks' control slots for the poller.
//
// Copies are stream-ordered on the rank's lane and may return before they
// finish (pageable host memory makes the runtime finish them first); sync()
// waits for the lane. Every call makes the rank's GPU current first.
// Ownership: owns the streams and the pinned snapshot, destroyed with it
// (streams first). Device addresses are the caller's (the ranks' workspaces)
// and must stay mapped while copies are in flight.
// Thread-safety: each lane of a rank is used by one thread at a time (the
// caller serialises per lane); lanes are independent of one another.
// read_control_slots() and control_slots() belong to one thread (the poller).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "status.h"

namespace epd {

struct ControlSlot;

class GpuStageCopy {
 public:
  enum class Lane : uint8_t { kPoll = 0, kWork = 1, kControl = 2 };

  ~GpuStageCopy();
  GpuStageCopy(const GpuStageCopy&) = delete;
  GpuStageCopy& operator=(const GpuStageCopy&) = delete;

  // rank_devices[r]: rank r's GPU, or -1 for a rank not on this node (no
  // streams). slots: control slots per rank in the snapshot.
  static Result<std::unique_ptr<GpuStageCopy>> create(const std::vector<int32_t>& rank_devices, int32_t slots);

  // Enqueues `bytes` from rank's GPU memory `src` to host `dst` (nothing when 0).
  Status copy_to_host(int32_t rank, Lane lane, void* dst, const uint8_t* src, uint64_t bytes);
  // Enqueues `bytes` from host `src` to rank's GPU memory `dst` (nothing when 0).
  Status copy_to_device(int32_t rank, Lane lane, uint8_t* dst, const void* src, uint64_t bytes);
  // Waits until every copy enqueued on rank's lane has finished.
  Status sync(int32_t rank, Lane lane);

  // Copies the control slots of every rank in `ranks` (each at its workspace
  // base bases[r] + offsetof(ControlBlock, slot)) into the snapshot, on their
  // poll lanes, and waits for them all.
  Status read_control_slots(const std::vector<int32_t>& ranks, const std::vector<uint8_t*>& bases);
  // Rank's `slots` control slots as last read.
  const ControlSlot* control_slots(int32_t rank) const;

 private:
  GpuStageCopy() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd
