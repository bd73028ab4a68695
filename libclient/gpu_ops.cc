// gpu_ops.cc — GpuWorkspaceMapping (import) and GpuRankOps (per-call enqueue,
// host query). See gpu_ops.h and the protocol in kernels/control_block.h.
#include "gpu_ops.h"

#include <cstddef>
#include <cstdint>

#include "control_block.h"

namespace epd {

using cu::CUdeviceptr;
using cu::CUstream;

namespace {
CUdeviceptr dptr(const void* p) { return reinterpret_cast<CUdeviceptr>(p); }
CUstream as_stream(void* s) { return static_cast<CUstream>(s); }
}  // namespace

GpuWorkspaceMapping::~GpuWorkspaceMapping() {
  if (!drv_) return;
  if (mapped_) drv_->mem_unmap(va_, bytes_);
  if (va_) drv_->address_free(va_, bytes_);
  if (handle_) drv_->mem_release(handle_);
}

Result<std::unique_ptr<GpuWorkspaceMapping>> GpuWorkspaceMapping::import(const cu::GpuDriver& drv, int fd,
                                                                         uint64_t mapped_bytes, int32_t device) {
  if (fd < 0) return make_status(EPD_ERR_INVALID_ARGUMENT, "workspace fd = %d is not a file descriptor", fd);
  if (mapped_bytes == 0) return make_status(EPD_ERR_INVALID_ARGUMENT, "workspace mapped_bytes = 0");
  EPD_RETURN_IF_ERROR(drv.ensure_context(device));
  std::unique_ptr<GpuWorkspaceMapping> m(new GpuWorkspaceMapping());
  m->drv_ = &drv;
  m->bytes_ = mapped_bytes;
  EPD_CU_CALL(drv, drv.mem_import(&m->handle_, reinterpret_cast<void*>(static_cast<intptr_t>(fd)),
                                  cu::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
  EPD_CU_CALL(drv, drv.address_reserve(&m->va_, mapped_bytes, 0, 0, 0));
  EPD_CU_CALL(drv, drv.mem_map(m->va_, mapped_bytes, 0, m->handle_, 0));
  m->mapped_ = true;
  cu::CUmemAccessDesc access{};
  access.location.type = cu::CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = device;
  access.flags = cu::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  EPD_CU_CALL(drv, drv.set_access(m->va_, mapped_bytes, &access, 1));
  return m;
}

GpuRankOps::GpuRankOps(const cu::GpuDriver& drv, const GroupSpec& spec, int32_t rank, uint8_t* base,
                       int32_t device)
    : drv_(drv), spec_(spec), rank_(rank), base_(base), device_(device), layout_(compute_rank_layout(spec, rank)),
      phase_(static_cast<size_t>(spec.slots), Phase::kIdle) {}

GpuRankOps::~GpuRankOps() {
  if (query_stream_) drv_.stream_destroy(query_stream_);
}

void GpuRankOps::reset_slots() { phase_.assign(phase_.size(), Phase::kIdle); }

CUdeviceptr GpuRankOps::word(int32_t slot, size_t field) const {
  return dptr(base_ + offsetof(ControlBlock, slot) + sizeof(ControlSlot) * static_cast<size_t>(slot) + field);
}

Status GpuRankOps::check_slot(int32_t slot, Phase expected, const char* call) const {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  if (phase_[slot] == expected) return Status::ok();
  static const char* const kNext[] = {"dispatch", "dispatch_wait", "combine", "combine_wait"};
  const epd_status_t code = expected == Phase::kDispatchWaited && phase_[slot] == Phase::kIdle
                                ? EPD_ERR_NO_DISPATCH
                                : EPD_ERR_SLOT_BUSY;
  return make_status(code, "rank %d: %s on slot %d out of order: the slot expects %s next", rank_, call, slot,
                     kNext[static_cast<int>(phase_[slot])]);
}

Status GpuRankOps::dispatch_here(int32_t slot, const GpuDispatchArgs& a, void* stream) {
  EPD_RETURN_IF_ERROR(check_slot(slot, Phase::kIdle, "dispatch"));
  const int32_t M = spec_.max_tokens_per_rank, K = spec_.top_k;
  if (a.n_tokens_host < 0 || a.n_tokens_host > M)
    return make_status(EPD_ERR_CAPACITY_EXCEEDED, "rank %d: n_tokens = %d is outside [0, max_tokens_per_rank = %d]",
                       rank_, a.n_tokens_host, M);
  if ((a.x == nullptr) != (a.topk_ids == nullptr))
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "rank %d: x and topk_ids must both be given (copied) or both be NULL (written in place)", rank_);
  const CUstream st = as_stream(stream);
  const SlotOffsets& o = layout_.slot[slot];
  const size_t rows = static_cast<size_t>(a.n_tokens_host);
  if (a.x != nullptr && rows > 0) {
    EPD_CU_CALL(drv_, drv_.memcpy_async(dptr(base_ + o.send_x), dptr(a.x), rows * layout_.in_row_bytes, st));
    EPD_CU_CALL(drv_, drv_.memcpy_async(dptr(base_ + o.send_ids), dptr(a.topk_ids), rows * K * sizeof(int32_t), st));
    if (a.topk_weights)
      EPD_CU_CALL(drv_, drv_.memcpy_async(dptr(base_ + o.send_weights), dptr(a.topk_weights),
                                          rows * K * sizeof(float), st));
    else
      EPD_CU_CALL(drv_, drv_.memset32_async(dptr(base_ + o.send_weights), 0x3f800000u /* 1.0f */, rows * K, st));
  }
  const CUdeviceptr n_word = dptr(base_ + o.send_hdr + offsetof(SendHeader, n_tokens));
  if (inline_) {  // this rank's launch alone: it carries the count (gpu_inline.h)
    EPD_RETURN_IF_ERROR(inline_->dispatch(slot, a.n_tokens_host, a.n_tokens_device, stream));
    phase_[slot] = Phase::kDispatched;
    return Status::ok();
  }
  const CUdeviceptr bell = word(slot, offsetof(ControlSlot, doorbell));
  // The default write flags put a memory barrier before the doorbell: the
  // copies above are visible to the daemon's kernels when they see the ring.
  if (a.n_tokens_device) {
    EPD_CU_CALL(drv_, drv_.memcpy_async(n_word, dptr(a.n_tokens_device), sizeof(int32_t), st));
    EPD_CU_CALL(drv_, drv_.write32(st, bell, kRingDispatch, cu::CU_STREAM_WRITE_VALUE_DEFAULT));
  } else {  // count and doorbell in one stream operation
    EPD_RETURN_IF_ERROR(drv_.write32_pair(st, n_word, static_cast<uint32_t>(a.n_tokens_host), bell, kRingDispatch));
  }
  phase_[slot] = Phase::kDispatched;
  return Status::ok();
}

Status GpuRankOps::dispatch_wait_here(int32_t slot, void* stream) {
  if (slot >= 0 && slot < spec_.slots && phase_[slot] == Phase::kIdle)
    return make_status(EPD_ERR_NO_DISPATCH, "rank %d: dispatch_wait on slot %d without a dispatch", rank_, slot);
  EPD_RETURN_IF_ERROR(check_slot(slot, Phase::kDispatched, "dispatch_wait"));
  if (inline_) {
    phase_[slot] = Phase::kDispatchWaited;
    return Status::ok();
  }
  EPD_CU_CALL(drv_, drv_.wait32(as_stream(stream), word(slot, offsetof(ControlSlot, completion)), kDoneDispatch,
                                cu::CU_STREAM_WAIT_VALUE_AND));
  phase_[slot] = Phase::kDispatchWaited;
  return Status::ok();
}

Status GpuRankOps::combine_here(int32_t slot, epd_weight_mode_t mode, const void* expert_out, int64_t rows, void* stream) {
  if (slot >= 0 && slot < spec_.slots && phase_[slot] == Phase::kIdle)
    return make_status(EPD_ERR_NO_DISPATCH, "rank %d: combine on slot %d without a dispatch", rank_, slot);
  EPD_RETURN_IF_ERROR(check_slot(slot, Phase::kDispatchWaited, "combine"));
  EPD_RETURN_IF_ERROR(check_weight_mode(spec_, mode));
  if (rows < 0 || rows > layout_.recv_rows)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "rank %d: expert_out rows = %lld is outside [0, %lld]", rank_,
                       static_cast<long long>(rows), static_cast<long long>(layout_.recv_rows));
  const CUstream st = as_stream(stream);
  if (expert_out && rows > 0)
    EPD_CU_CALL(drv_, drv_.memcpy_async(dptr(base_ + layout_.slot[slot].combine_in), dptr(expert_out),
                                        static_cast<size_t>(rows) * layout_.in_row_bytes, st));
  if (inline_) {  // this rank's launch alone: it carries the weight mode (gpu_inline.h)
    EPD_RETURN_IF_ERROR(inline_->combine(slot, mode, stream));
    phase_[slot] = Phase::kCombined;
    return Status::ok();
  }
  // Weight mode and doorbell in one stream operation.
  EPD_RETURN_IF_ERROR(drv_.write32_pair(st, word(slot, offsetof(ControlSlot, weight_mode)), static_cast<uint32_t>(mode),
                                        word(slot, offsetof(ControlSlot, doorbell)), kRingCombine));
  phase_[slot] = Phase::kCombined;
  return Status::ok();
}

Status GpuRankOps::combine_wait_here(int32_t slot, void* stream) {
  EPD_RETURN_IF_ERROR(check_slot(slot, Phase::kCombined, "combine_wait"));
  if (inline_) {
    phase_[slot] = Phase::kIdle;
    return Status::ok();
  }
  EPD_CU_CALL(drv_, drv_.wait32(as_stream(stream), word(slot, offsetof(ControlSlot, completion)), kDoneCombine,
                                cu::CU_STREAM_WAIT_VALUE_AND));
  phase_[slot] = Phase::kIdle;
  return Status::ok();
}

Status GpuRankOps::read_control(void* dst, uint64_t offset, size_t bytes) const {
  return in_rank_context([&]() -> Status {
    if (!query_stream_) EPD_CU_CALL(drv_, drv_.stream_create(&query_stream_, cu::CU_STREAM_NON_BLOCKING));
    EPD_CU_CALL(drv_, drv_.memcpy_dtoh_async(dst, dptr(base_ + offset), bytes, query_stream_));
    EPD_CU_CALL(drv_, drv_.stream_synchronize(query_stream_));
    return Status::ok();
  });
}

Status GpuRankOps::dispatch(int32_t slot, const GpuDispatchArgs& a, void* stream) {
  return in_rank_context([&] { return dispatch_here(slot, a, stream); });
}
Status GpuRankOps::dispatch_wait(int32_t slot, void* stream) {
  return in_rank_context([&] { return dispatch_wait_here(slot, stream); });
}
Status GpuRankOps::combine(int32_t slot, epd_weight_mode_t mode, const void* expert_out, int64_t rows, void* stream) {
  return in_rank_context([&] { return combine_here(slot, mode, expert_out, rows, stream); });
}
Status GpuRankOps::combine_wait(int32_t slot, void* stream) {
  return in_rank_context([&] { return combine_wait_here(slot, stream); });
}

Result<uint32_t> GpuRankOps::fault_word() const {
  uint32_t f = 0;
  EPD_RETURN_IF_ERROR(read_control(&f, offsetof(ControlBlock, fault), sizeof f));
  return f;
}

Result<uint32_t> GpuRankOps::completion(int32_t slot) const {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  uint32_t w = 0;
  EPD_RETURN_IF_ERROR(read_control(&w, offsetof(ControlBlock, slot) + sizeof(ControlSlot) * static_cast<size_t>(slot) +
                                           offsetof(ControlSlot, completion),
                                   sizeof w));
  return w;
}

Status GpuRankOps::query(int32_t slot) const {
  if (slot < 0 || slot >= spec_.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, spec_.slots);
  ControlSlot cs{};
  EPD_RETURN_IF_ERROR(read_control(&cs, offsetof(ControlBlock, slot) + sizeof(ControlSlot) * slot, sizeof cs));
  const epd_status_t code = completion_status(cs.completion);
  if (code == EPD_OK) return Status::ok();
  const char* op = (cs.completion & kDoneCombine) && !(cs.completion & kDoneDispatch) ? "combine" : "dispatch";
  if (cs.completion & kArmedAbortBit)
    return make_status(code, "rank %d, slot %d: the daemon aborted the group's GPU calls (%s)", rank_, slot,
                       epd_status_string(code));
  if (cs.last_fault != kFaultNone)
    return make_status(code, "rank %d, slot %d: GPU %s failed: fault %u at rank %d, token %d, k %d, value %lld",
                       rank_, slot, op, cs.last_fault, cs.last_fault_rank, cs.last_fault_token, cs.last_fault_k,
                       static_cast<long long>(cs.last_fault_value));
  return make_status(code, "rank %d, slot %d: GPU %s failed (%s)", rank_, slot, op, epd_status_string(code));
}

}  // namespace epd
