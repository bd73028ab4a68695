// gpu_ops.h — the client half of the armed GPU executor (kernels/gpu_armed.h):
// a rank's imported workspace and the per-call stream operations a worker
// enqueues on its own stream. Everything enqueued is a copy, a memset or a
// stream memory operation with constant values, so it is valid under CUDA graph
// capture and every replay does the same thing; the token count may come from
// device memory, so replays can vary it.
//
// Per slot the calls strictly alternate dispatch -> dispatch_wait -> combine ->
// combine_wait (enforced here in enqueue order: the constant-value doorbell
// protocol of control_block.h relies on it). A wait only orders the caller's
// stream after the daemon's completion; the status of that completion is read
// on the host by query() (never during capture), which turns the completion
// word into EPD_ERR_PEER_LOST / EPD_ERR_SHUTTING_DOWN / a kernel fault naming
// rank, token, k and value.
//
// Ownership: GpuWorkspaceMapping owns its mapping (not the file descriptor it
// was imported from). GpuRankOps borrows the driver table and the base address.
// Thread-safety: the enqueue calls of different slots may run concurrently
// (each touches only its slot's phase; the rank's context is looked up once,
// atomically); calls on one slot, one thread at a time. The host reads
// (query, completion, fault_word) share one private stream: one at a time,
// from any thread, concurrently with the enqueue calls. layout() and base()
// are constant.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "epd/types.h"
#include "gpu_driver.h"
#include "gpu_inline.h"
#include "layout.h"
#include "spec.h"
#include "status.h"

namespace epd {

// One rank's daemon workspace mapped into this process from a cuMem POSIX fd.
class GpuWorkspaceMapping {
 public:
  ~GpuWorkspaceMapping();
  GpuWorkspaceMapping(const GpuWorkspaceMapping&) = delete;
  GpuWorkspaceMapping& operator=(const GpuWorkspaceMapping&) = delete;

  // Imports `fd` (not consumed: the caller closes it) of `mapped_bytes` (the
  // daemon's GpuWorkspace::mapped_bytes(), a multiple of the granularity) and
  // maps it read/write for `device`. Makes the device's primary context
  // current on this thread when none is.
  static Result<std::unique_ptr<GpuWorkspaceMapping>> import(const cu::GpuDriver& drv, int fd, uint64_t mapped_bytes,
                                                             int32_t device);
  uint8_t* base() const { return reinterpret_cast<uint8_t*>(va_); }
  uint64_t bytes() const { return bytes_; }

 private:
  GpuWorkspaceMapping() = default;
  const cu::GpuDriver* drv_ = nullptr;
  cu::CUdeviceptr va_ = 0;
  uint64_t bytes_ = 0;
  cu::CUmemGenericAllocationHandle handle_ = 0;
  bool mapped_ = false;
};

// Inputs of one dispatch. Device pointers (or host pinned, through UVA).
struct GpuDispatchArgs {
  const void* x = nullptr;               // [rows][hidden]; nullptr: the caller wrote send_x (and ids, weights) itself
  const int32_t* topk_ids = nullptr;     // [rows][top_k] int32 (int64 ids: write them converted into send_ids)
  const float* topk_weights = nullptr;   // [rows][top_k]; nullptr with x given: weights 1
  const int32_t* n_tokens_device = nullptr;  // the call's count in device memory (read at execution time), or nullptr
  int32_t n_tokens_host = 0;             // the count when n_tokens_device is nullptr; else the upper bound
                                         // of rows copied (a graph's capture-time bound)
};

class GpuRankOps {
 public:
  // `base` is rank `rank`'s workspace in this process (imported mapping, or the
  // daemon's own address in an in-process test). spec must be valid.
  // device: the GPU the workspace lives on; every call runs in its primary
  // context, so a process holding ranks of several GPUs reaches each
  // workspace through the device it is mapped for. -1: the current context.
  GpuRankOps(const cu::GpuDriver& drv, const GroupSpec& spec, int32_t rank, uint8_t* base, int32_t device = -1);
  ~GpuRankOps();
  GpuRankOps(const GpuRankOps&) = delete;
  GpuRankOps& operator=(const GpuRankOps&) = delete;

  // Enqueue on `stream` (a CUstream / cudaStream_t; nullptr = legacy default stream).
  Status dispatch(int32_t slot, const GpuDispatchArgs& args, void* stream);
  Status dispatch_wait(int32_t slot, void* stream);
  // expert_out: rows (host upper bound) of expert outputs copied into combine_in,
  // or nullptr when the caller wrote combine_in itself.
  Status combine(int32_t slot, epd_weight_mode_t mode, const void* expert_out, int64_t rows, void* stream);
  Status combine_wait(int32_t slot, void* stream);

  // Host query, never during stream capture: synchronises a private stream and
  // reads this rank's control block. Returns the status of the last completed
  // operation of `slot` (OK when none failed), else the abort reason or the
  // kernel fault with rank, token, k and value.
  Status query(int32_t slot) const;
  // The sticky fault word of this rank's control block (DeviceFaultKind), host read.
  Result<uint32_t> fault_word() const;
  // The raw completion word of `slot` (control_block.h: kDone* bits | status |
  // kArmedAbortBit), host read like query(); for waits that poll it.
  Result<uint32_t> completion(int32_t slot) const;

  // Forgets the per-slot call order (after the daemon's reset() / a re-join).
  void reset_slots();
  // The inline executor (gpu_inline.h; borrowed, outlives this): dispatch and
  // combine write the count / weight mode and launch the rank's kernels on the
  // caller's stream instead of ringing; the waits enqueue nothing (the launch
  // ends after every rank's part, in stream order).
  void set_inline(InlineRunner* runner) { inline_ = runner; }

  const RankLayout& layout() const { return layout_; }
  uint8_t* at(int32_t slot, uint64_t SlotOffsets::*field) const { return base_ + layout_.slot[slot].*field; }
  uint8_t* base() const { return base_; }

 private:
  enum class Phase : uint8_t { kIdle, kDispatched, kDispatchWaited, kCombined };
  Status check_slot(int32_t slot, Phase expected, const char* call) const;
  cu::CUdeviceptr word(int32_t slot, size_t field) const;
  Status read_control(void* dst, uint64_t offset, size_t bytes) const;
  Status dispatch_here(int32_t slot, const GpuDispatchArgs& a, void* stream);
  Status dispatch_wait_here(int32_t slot, void* stream);
  Status combine_here(int32_t slot, epd_weight_mode_t mode, const void* expert_out, int64_t rows, void* stream);
  Status combine_wait_here(int32_t slot, void* stream);
  // Runs `body` with the rank's GPU's primary context current (the workspace
  // is mapped for that GPU only, and copies check access from the current
  // context), then restores the caller's. A no-op switch when it already is.
  template <typename F>
  Status in_rank_context(F&& body) const {
    if (device_ < 0) return body();
    cu::CUcontext caller = nullptr;
    EPD_CU_CALL(drv_, drv_.ctx_get_current(&caller));
    cu::CUcontext rank_ctx = rank_ctx_.load(std::memory_order_acquire);
    if (!rank_ctx) {
      // Threads racing here each retain the same primary context; one more
      // retain of a context kept for the life of the process is harmless.
      auto ctx = drv_.primary_context(device_);
      if (!ctx) return ctx.status();
      rank_ctx = *ctx;
      rank_ctx_.store(rank_ctx, std::memory_order_release);
    }
    if (rank_ctx == caller) return body();
    EPD_CU_CALL(drv_, drv_.ctx_set_current(rank_ctx));
    const Status st = body();
    drv_.ctx_set_current(caller);
    return st;
  }

  const cu::GpuDriver& drv_;
  GroupSpec spec_;
  int32_t rank_;
  uint8_t* base_;
  int32_t device_;
  RankLayout layout_;
  std::vector<Phase> phase_;
  InlineRunner* inline_ = nullptr;
  mutable cu::CUstream query_stream_ = nullptr;  // in device_'s primary context; host reads only
  mutable std::atomic<cu::CUcontext> rank_ctx_{nullptr};  // device_'s primary context, once looked up
};

}  // namespace epd
