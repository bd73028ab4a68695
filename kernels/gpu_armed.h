// gpu_armed.h — the daemon's armed GPU executor: for one group on one GPU, one
// CUDA stream per slot kept armed ahead of time, so no CPU is on a call's
// critical path; plus MPS detection and the CUDA environment the daemon needs.
//
// Per slot the armed stream holds, for each operation ahead of time:
//   cuStreamWaitValue32(doorbell of every rank, kRingDispatch | kRingCombine, AND)
//   GpuExecutor::dispatch_shard (or combine_shard, which reads the weight mode
//     from the ranks' control words on the device), i.e. the launch sequence of
//     the executor's variant (variant_name()): one launch per operation for
//     low_latency groups on one GPU, the same variant as in process;
//   and, in the last block of that sequence's last launch, the completion: the
//   kernels' fault words (or the abort reason) become a status, written with
//   kDoneDispatch / kDoneCombine into every rank's completion word and into a
//   host-mapped progress word for the re-arm thread.
// Dispatch and combine strictly alternate per slot (dispatch first), so the
// daemon knows which one comes next without being told; the doorbell values
// are constants, which makes the client's enqueue replayable in a CUDA graph
// (control_block.h defines the words and values). A re-arm thread keeps
// `depth` operations armed per slot as earlier ones complete.
//
// Deadline path: abort(reason) sets a device abort word and writes
// kRingDispatch | kRingCombine | kArmedAbortBit into every doorbell from a
// separate stream, so every armed wait is released and the streams drain (the
// kernels run on stale inputs, bounded by their own deadlines); each drained
// operation completes with `reason` (EPD_ERR_PEER_LOST / EPD_ERR_SHUTTING_DOWN).
// reset() then clears doorbells, completions and faults and re-arms for the
// next client generation.
//
// CUDA-free header (implementation in kernels/cuda/armed_*.cc, target epd_cuda).
// Ownership: the executor owns its GpuExecutor, streams and scratch; it does not
// own the workspaces (rank_bases), which must outlive it.
// Thread-safety: abort(), aborted(), completed(), describe() and
// variant_name() may be called from any thread; start(), reset() and
// destruction from one owner thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "epd/types.h"
#include "gpu_launch_plan.h"
#include "spec.h"
#include "status.h"

namespace epd {

// Prepares the process environment for armed streams. Must run before
// anything initialises CUDA in the process (the daemon's main, first thing):
//  - CUDA_DEVICE_MAX_CONNECTIONS = `connections` (default 32) unless already
//    set: armed streams block at a wait, and streams beyond the connection
//    count share a hardware queue, so a blocked wait would stall the streams
//    behind it (the abort stream included);
//  - CUDA_MODULE_LOADING = EAGER (always): with lazy loading (the default
//    since CUDA 12.2) the first launch of a kernel may synchronise the
//    context, which never completes while a wait is armed; seen on an H100
//    (driver 580) as a hang in the first arming. ArmedExecutor::create
//    refuses to run under lazy loading.
void armed_prepare_environment(int32_t connections = 32);

// Whether CUDA MPS serves contexts on `device`, and a one-line description for
// the log and status ("MPS active on GPU 0 (CU_DEVICE_ATTRIBUTE_MPS_ENABLED)",
// "MPS not active: no control pipe at /tmp/nvidia-mps/control", ...).
struct MpsState {
  bool active = false;
  std::string description;
};
MpsState detect_mps(int32_t device);

// Stream operations one slot's armed stream may hold pending (armed_depth_for).
constexpr int32_t kArmedStreamEntries = 512;

// The depth the armed executor uses for `depth` asked. A stream takes a bounded
// number of pending operations; past it the host's enqueue blocks until the
// GPU consumes some. start() arms operations that wait for doorbells nobody
// rang yet, so arming more than fits blocked it for ever (seen on an H100:
// depth 64 with 8 ranks on one GPU, 2 x 64 operations x 8 doorbell waits and
// a launch each; depth 8, the daemon's, and depth 64 with one rank ran). The
// depth is capped so that one slot's stream holds at most kArmedStreamEntries:
// per operation a wait per rank of the largest shard, up to 6 launches and
// barriers, and 12 stamp kernels when stamps are on; never below 2.
inline int32_t armed_depth_for(int32_t depth, int32_t ranks_per_gpu, bool stamps) {
  const int64_t per_op = static_cast<int64_t>(ranks_per_gpu < 1 ? 1 : ranks_per_gpu) + 6 + (stamps ? 12 : 0);
  const int64_t fits = kArmedStreamEntries / (2 * per_op);
  const int64_t d = depth < fits ? depth : fits;
  return static_cast<int32_t>(d < 2 ? 2 : d);
}

struct ArmedOptions {
  int32_t depth = 8;        // operations armed ahead per slot (>= 2); capped so that a slot's
                            // stream holds at most kArmedStreamEntries operations (describe() shows it)
  uint32_t poll_us = 20;    // re-arm thread poll period; off the critical path while depth > 0 remain
  // Launch tuning for benchmarks and tests (GpuTuning); the default is the
  // executor's own choice, the same as in process.
  GpuTuning tuning;
  // Benchmarks only (tools/gpu/hop_breakdown.cc); nullptr (the default): off,
  // nothing extra is enqueued. A device buffer of
  // [slots][stamp_ops][kArmedStampWords] uint64 on the home GPU that outlives
  // the executor. Operation `seq` (from 1) of slot s records into entry
  // (seq - 1) % stamp_ops: one-thread kernels (home GPU only) write
  // %globaltimer (ns) at the points of ArmedStampPoint.
  uint64_t* stamps = nullptr;
  int32_t stamp_ops = 0;
};

// Where an armed operation's stamps go within its kArmedStampWords entry.
enum ArmedStampPoint : int32_t {
  kArmedStampWaitReleased = 0,  // first on the stream after the doorbell waits
  kArmedStampPlan = 1,          // kLaunchStampWords: before each launch of the plan, after its last, then the kernels' own
  kArmedStampCompleted = 18,    // after the plan's last launch (which wrote the completion words)
  kArmedStampWords = 20,
};

// Benchmarks: enqueues on `stream` (a cudaStream_t / CUstream of the current
// device) one one-thread kernel that writes %globaltimer (ns; one clock for
// every process on the GPU) to the device word *word; with word nullptr an
// empty kernel.
Status enqueue_globaltimer_stamp(uint64_t* word, void* stream);

class GpuExecutor;

class ArmedExecutor {
 public:
  ~ArmedExecutor();  // abort(EPD_ERR_SHUTTING_DOWN), drain, join the re-arm thread
  ArmedExecutor(const ArmedExecutor&) = delete;
  ArmedExecutor& operator=(const ArmedExecutor&) = delete;

  // spec must be valid; rank_bases as for GpuExecutor::create (every rank of
  // the group, reachable from `device`). Initialises the control blocks.
  static Result<std::unique_ptr<ArmedExecutor>> create(const GroupSpec& spec, std::vector<uint8_t*> rank_bases,
                                                       int32_t device, const ArmedOptions& options = {});
  // Multi-GPU (GpuExecutor's multi-GPU create): per GPU, one armed stream per
  // slot waits for that GPU's ranks' doorbells and runs its shard; the
  // launches' cross-GPU barriers wait for the other GPUs' ranks (each at most
  // the group's timeout), and each GPU writes its own ranks' completion words.
  static Result<std::unique_ptr<ArmedExecutor>> create(const GroupSpec& spec, std::vector<uint8_t*> rank_bases,
                                                       const std::vector<int32_t>& rank_devices,
                                                       const ArmedOptions& options = {});

  // Arms `depth` operations per slot and starts the re-arm thread.
  Status start();

  // Releases every armed wait with `reason` (EPD_ERR_PEER_LOST, EPD_ERR_SHUTTING_DOWN,
  // EPD_ERR_TIMEOUT, ...) and waits until every armed operation has completed,
  // at most `deadline_ms`. OK once drained; EPD_ERR_TIMEOUT when the deadline passed.
  // Idempotent; stops re-arming until reset().
  Status abort(epd_status_t reason, uint32_t deadline_ms);

  // After a drained abort: clears every rank's doorbells, completions and
  // fault words and the abort word, then re-arms. Clients must start their
  // slot state afresh (a re-join).
  Status reset();

  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  // Whether every armed operation has completed (true before start()). When an
  // executor is destroyed undrained (its abort timed out), operations may
  // still run later: it leaks its own streams and scratch, and the owner must
  // keep the workspaces mapped as well.
  bool drained() const;
  // Operations (dispatches plus combines) completed on `slot` since the last reset.
  uint64_t completed(int32_t slot) const;
  // The first error the re-arm thread hit (a CUDA error, or a kernel timeout
  // fault, after which it aborts itself with EPD_ERR_TIMEOUT); OK otherwise.
  Status health() const;
  // "armed: GPU 0, 8 ranks, 2 slots, depth 8, ...; variant high_throughput
  // (<what it launches>; <why>); parts=..." (the executor's describe_variant()).
  std::string describe() const;
  // The launch variant that runs behind the armed waits ("high_throughput",
  // "low_latency", "multi_gpu"; gpu_launch_plan.h): the one the group's mode
  // gets in process too.
  const char* variant_name() const;
  const GpuExecutor& executor() const;

 private:
  struct Impl;
  ArmedExecutor();
  std::atomic<bool> aborted_{false};
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd
