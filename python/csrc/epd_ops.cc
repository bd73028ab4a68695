// epd_ops.cc — torch.ops.epd.*: the data plane of libepd-client as PyTorch
// custom ops, on the torch stable ABI (STABLE_TORCH_LIBRARY): one build serves
// every torch from the one it was built with on (see python/README.md).
//
// Every op takes the slot's token tensor first (Group.token(slot)); its device
// selects the kernel: CUDA runs the epd_group_*_async calls on the current CUDA
// stream of that device (copies and stream memory operations only: legal under
// CUDA graph capture); CPU runs the blocking host calls. The token is declared
// mutated so torch.compile keeps and orders the calls; its contents are never
// touched. `group` is the epd_group_t* as an int64 (Group.handle); the
// library instance is the one the Python package loaded (same soname).
//
// Errors throw std::runtime_error "[epd status N] message" (the Python
// wrappers turn it into epd.EpdError). Thread-safety: as the C calls.
#include <dlfcn.h>
#include <link.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "epd/epd.h"

namespace {

using torch::stable::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::headeronly::ScalarType;

[[noreturn]] void fail(int status, const std::string& msg) {
  throw std::runtime_error("[epd status " + std::to_string(status) + "] " + msg);
}

void check(epd_status_t rc, epd_group_t* g, const char* call) {
  if (rc != EPD_OK) fail(rc, std::string(call) + ": " + epd_group_last_error(g));
}

epd_group_t* as_group(int64_t h) {
  if (h == 0) fail(EPD_ERR_INVALID_ARGUMENT, "group handle is 0 (the group was left)");
  return reinterpret_cast<epd_group_t*>(static_cast<intptr_t>(h));
}

int32_t as_i32(int64_t v, const char* what) {
  if (v < INT32_MIN || v > INT32_MAX) fail(EPD_ERR_INVALID_ARGUMENT, std::string(what) + " = " + std::to_string(v) + " does not fit int32");
  return static_cast<int32_t>(v);
}

// libtorch_cuda.so as this process loaded it (by soname, else by a path ending in that name).
void* torch_cuda_library() {
  if (void* lib = dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD)) return lib;
  std::string path;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        const std::string name = info->dlpi_name ? info->dlpi_name : "";
        const std::string want = "/libtorch_cuda.so";
        if (name.size() < want.size() || name.compare(name.size() - want.size(), want.size(), want) != 0) return 0;
        *static_cast<std::string*>(out) = name;
        return 1;
      },
      &path);
  return path.empty() ? nullptr : dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
}

// The current CUDA stream of `device`, through the shim function of
// libtorch_cuda, looked up at run time: the extension builds and loads with a
// CPU-only torch (the CUDA ops then refuse), and needs no CUDA toolkit.
void* current_stream(int32_t device) {
  using Fn = int32_t (*)(int32_t, void**);
  static const Fn fn = [] {
    void* lib = torch_cuda_library();
    return lib ? reinterpret_cast<Fn>(dlsym(lib, "aoti_torch_get_current_cuda_stream")) : nullptr;
  }();
  if (!fn) fail(EPD_ERR_UNSUPPORTED, "this torch has no CUDA support (libtorch_cuda.so is not loaded)");
  void* s = nullptr;
  if (fn(device, &s) != 0) fail(EPD_ERR_CUDA, "cannot get the current CUDA stream of device " + std::to_string(device));
  return s;
}

// Checks a tensor argument: device of the token, contiguous, dtype, 2-D with >= min_rows rows.
void check_arg(const Tensor& t, const Tensor& token, const char* name, int64_t min_rows) {
  const std::string n(name);
  if (t.is_cuda() != token.is_cuda() || (t.is_cuda() && t.get_device_index() != token.get_device_index()))
    fail(EPD_ERR_INVALID_ARGUMENT, n + " is on another device than the group (token on " +
                                       (token.is_cuda() ? "cuda:" + std::to_string(token.get_device_index()) : std::string("cpu")) + ")");
  if (!t.is_contiguous()) fail(EPD_ERR_INVALID_ARGUMENT, n + " is not contiguous");
  if (t.dim() != 2) fail(EPD_ERR_INVALID_ARGUMENT, n + " has " + std::to_string(t.dim()) + " dimensions; 2 expected");
  if (t.size(0) < min_rows)
    fail(EPD_ERR_INVALID_ARGUMENT, n + " has " + std::to_string(t.size(0)) + " rows; n_tokens = " + std::to_string(min_rows));
}

void check_dtype(const Tensor& t, ScalarType want, const char* name, const char* want_name) {
  if (t.scalar_type() != want) fail(EPD_ERR_INVALID_ARGUMENT, std::string(name) + " must be " + want_name);
}

void check_row_bytes(const Tensor& t, uint64_t row_bytes, const char* name) {
  const uint64_t have = static_cast<uint64_t>(t.size(1)) * t.element_size();
  if (have != row_bytes)
    fail(EPD_ERR_INVALID_ARGUMENT, std::string(name) + " rows are " + std::to_string(have) + " bytes; the group's are " +
                                       std::to_string(row_bytes) + " (hidden x the group dtype)");
}

epd_gpu_views_t gpu_views(epd_group_t* g, int32_t slot) {
  epd_gpu_views_t v{};
  v.struct_size = sizeof v;
  check(epd_group_gpu_views(g, slot, &v), g, "epd_group_gpu_views");
  return v;
}

// Host groups: the slot's receive views (valid between dispatch_wait and combine_wait).
epd_dispatch_result_t host_result(epd_group_t* g, int32_t slot) {
  epd_dispatch_result_t r{};
  r.struct_size = sizeof r;
  check(epd_group_dispatch_wait(g, slot, 1, &r), g, "epd_group_dispatch_wait");
  return r;
}

// ---- dispatch -----------------------------------------------------------------------------

void dispatch_cuda(Tensor token, int64_t group, int64_t slot, OptTensor x, OptTensor ids, OptTensor w, OptTensor n_dev,
                   int64_t n_tokens) {
  epd_group_t* g = as_group(group);
  const int32_t s = as_i32(slot, "slot"), n = as_i32(n_tokens, "n_tokens");
  epd_gpu_dispatch_args_t a{};
  a.struct_size = sizeof a;
  a.n_tokens = n;
  if (x) {
    check_arg(*x, token, "x", n);
    check_row_bytes(*x, gpu_views(g, s).combine_row_bytes, "x");
    a.x = x->const_data_ptr();
    if (!ids) fail(EPD_ERR_INVALID_ARGUMENT, "topk_ids is required with x");
  }
  if (ids) {
    check_arg(*ids, token, "topk_ids", n);
    check_dtype(*ids, ScalarType::Int, "topk_ids", "int32 on a GPU group");
    a.topk_ids = static_cast<const int32_t*>(ids->const_data_ptr());
  }
  if (w) {
    check_arg(*w, token, "topk_weights", n);
    check_dtype(*w, ScalarType::Float, "topk_weights", "float32");
    a.topk_weights = static_cast<const float*>(w->const_data_ptr());
  }
  if (n_dev) {
    if (!n_dev->is_cuda() || n_dev->scalar_type() != ScalarType::Int || n_dev->numel() < 1)
      fail(EPD_ERR_INVALID_ARGUMENT, "n_tokens_device must be an int32 CUDA tensor of at least one element");
    a.n_tokens_device = static_cast<const int32_t*>(n_dev->const_data_ptr());
  }
  const int32_t dev = token.get_device_index();
  check(epd_group_dispatch_async(g, s, &a, current_stream(dev)), g, "epd_group_dispatch_async");
}

int32_t host_count(const OptTensor& n_dev, int64_t n_tokens) {
  if (!n_dev) return as_i32(n_tokens, "n_tokens");
  if (!n_dev->is_cpu() || n_dev->scalar_type() != ScalarType::Int || n_dev->numel() < 1)
    fail(EPD_ERR_INVALID_ARGUMENT, "n_tokens_device of a host group must be an int32 CPU tensor");
  const int32_t n = *static_cast<const int32_t*>(n_dev->const_data_ptr());
  if (n > n_tokens) fail(EPD_ERR_INVALID_ARGUMENT, "n_tokens_device = " + std::to_string(n) + " is above n_tokens = " + std::to_string(n_tokens));
  return n;
}

void dispatch_cpu(Tensor token, int64_t group, int64_t slot, OptTensor x, OptTensor ids, OptTensor w, OptTensor n_dev,
                  int64_t n_tokens) {
  epd_group_t* g = as_group(group);
  const int32_t s = as_i32(slot, "slot"), n = host_count(n_dev, n_tokens);
  if (!x || !ids) fail(EPD_ERR_INVALID_ARGUMENT, "a host group's dispatch needs x and topk_ids (it has no send_x view)");
  check_arg(*x, token, "x", n);
  check_arg(*ids, token, "topk_ids", n);
  epd_dispatch_args_t a{};
  a.struct_size = sizeof a;
  a.x = x->const_data_ptr();
  a.topk_ids = ids->const_data_ptr();
  if (ids->scalar_type() == ScalarType::Long) a.id_dtype = EPD_ID_INT64;
  else if (ids->scalar_type() == ScalarType::Int) a.id_dtype = EPD_ID_INT32;
  else fail(EPD_ERR_INVALID_ARGUMENT, "topk_ids must be int32 or int64");
  if (w) {
    check_arg(*w, token, "topk_weights", n);
    check_dtype(*w, ScalarType::Float, "topk_weights", "float32");
    a.topk_weights = static_cast<const float*>(w->const_data_ptr());
  }
  a.n_tokens = n;
  check(epd_group_dispatch(g, s, &a), g, "epd_group_dispatch");
}

// ---- dispatch_wait ------------------------------------------------------------------------

void dispatch_wait_cuda(Tensor token, int64_t group, int64_t slot, int64_t) {
  epd_group_t* g = as_group(group);
  const int32_t s = as_i32(slot, "slot");
  check(epd_group_dispatch_wait_async(g, s, current_stream(token.get_device_index())), g, "epd_group_dispatch_wait_async");
}

void dispatch_wait_cpu(Tensor, int64_t group, int64_t slot, int64_t timeout_ms) {
  epd_group_t* g = as_group(group);
  epd_dispatch_result_t r{};
  r.struct_size = sizeof r;
  const auto t = static_cast<uint32_t>(as_i32(timeout_ms, "timeout_ms"));
  check(epd_group_dispatch_wait(g, as_i32(slot, "slot"), t, &r), g, "epd_group_dispatch_wait");
}

// ---- combine ------------------------------------------------------------------------------

void combine_cuda(Tensor token, int64_t group, int64_t slot, int64_t weight_mode, OptTensor expert_out, int64_t rows) {
  epd_group_t* g = as_group(group);
  const int32_t s = as_i32(slot, "slot");
  const void* src = nullptr;
  if (expert_out) {
    check_arg(*expert_out, token, "expert_out", rows);
    const epd_gpu_views_t v = gpu_views(g, s);
    check_row_bytes(*expert_out, v.combine_row_bytes, "expert_out");
    if (rows > v.capacity_rows)
      fail(EPD_ERR_CAPACITY_EXCEEDED, "rows = " + std::to_string(rows) + " is above the receive capacity of " + std::to_string(v.capacity_rows));
    src = expert_out->const_data_ptr();
  }
  const auto mode = static_cast<epd_weight_mode_t>(as_i32(weight_mode, "weight_mode"));
  check(epd_group_combine_async(g, s, mode, src, src ? rows : 0, current_stream(token.get_device_index())), g, "epd_group_combine_async");
}

void combine_cpu(Tensor token, int64_t group, int64_t slot, int64_t weight_mode, OptTensor expert_out, int64_t rows) {
  epd_group_t* g = as_group(group);
  const int32_t s = as_i32(slot, "slot");
  if (expert_out) {
    check_arg(*expert_out, token, "expert_out", rows);
    const epd_dispatch_result_t r = host_result(g, s);
    check_row_bytes(*expert_out, r.combine_row_bytes, "expert_out");
    if (rows < 0 || rows > r.capacity_rows)
      fail(EPD_ERR_CAPACITY_EXCEEDED, "rows = " + std::to_string(rows) + " is outside [0, " + std::to_string(r.capacity_rows) + "]");
    std::memcpy(r.combine_in, expert_out->const_data_ptr(), static_cast<size_t>(rows) * r.combine_row_bytes);
  }
  check(epd_group_combine(g, s, static_cast<epd_weight_mode_t>(as_i32(weight_mode, "weight_mode"))), g, "epd_group_combine");
}

// ---- combine_wait -------------------------------------------------------------------------

void combine_wait_cuda(Tensor token, int64_t group, int64_t slot, OptTensor out, int64_t) {
  epd_group_t* g = as_group(group);
  const int32_t s = as_i32(slot, "slot");
  epd_gpu_views_t v{};
  if (out) {  // checked before anything is enqueued
    check_arg(*out, token, "out", 0);
    v = gpu_views(g, s);
    check_row_bytes(*out, v.combine_row_bytes, "out");
  }
  check(epd_group_combine_wait_async(g, s, current_stream(token.get_device_index())), g, "epd_group_combine_wait_async");
  if (!out) return;
  // combine_out as a tensor of out's shape and dtype; copy_ runs on the current stream.
  const int64_t sizes[2] = {out->size(0), out->size(1)}, strides[2] = {out->size(1), 1};
  Tensor src = torch::stable::from_blob(const_cast<void*>(v.combine_out), {sizes, 2}, {strides, 2}, out->device(), out->scalar_type());
  torch::stable::copy_(*out, src);
}

// The rows of `out` are the caller's n (the Python wrapper bounds them by max_tokens_per_rank).
void combine_wait_cpu(Tensor token, int64_t group, int64_t slot, OptTensor out, int64_t timeout_ms) {
  epd_group_t* g = as_group(group);
  if (out) check_arg(*out, token, "out", 0);
  const void* res = nullptr;
  const auto t = static_cast<uint32_t>(as_i32(timeout_ms, "timeout_ms"));
  check(epd_group_combine_wait(g, as_i32(slot, "slot"), t, &res), g, "epd_group_combine_wait");
  if (out) std::memcpy(out->mutable_data_ptr(), res, static_cast<size_t>(out->numel()) * out->element_size());
}

// ---- call_floor: the dispatch schema with no work, for python/bench/op_overhead.py ---------
// What torch's op call itself costs with these arguments (parsing, dispatcher,
// stable-ABI boxing), measured next to the real ops. Touches nothing.
void call_floor(Tensor, int64_t, int64_t, OptTensor, OptTensor, OptTensor, OptTensor, int64_t) {}

// ---- device_bytes: a uint8 CUDA tensor over device memory the library mapped -------------

Tensor device_bytes(int64_t address, int64_t nbytes, int64_t device) {
  if (address == 0 || nbytes < 0) fail(EPD_ERR_INVALID_ARGUMENT, "device_bytes: address 0 or negative size " + std::to_string(nbytes));
  const int64_t sizes[1] = {nbytes}, strides[1] = {1};
  const torch::stable::Device d(torch::headeronly::DeviceType::CUDA, static_cast<torch::stable::DeviceIndex>(device));
  return torch::stable::from_blob(reinterpret_cast<void*>(static_cast<intptr_t>(address)), {sizes, 1}, {strides, 1}, d, ScalarType::Byte);
}

}  // namespace

STABLE_TORCH_LIBRARY(epd, m) {
  m.def("dispatch(Tensor(a!) token, int group, int slot, Tensor? x, Tensor? topk_ids, Tensor? topk_weights, "
        "Tensor? n_tokens_device, int n_tokens) -> ()");
  m.def("dispatch_wait(Tensor(a!) token, int group, int slot, int timeout_ms=0) -> ()");
  m.def("combine(Tensor(a!) token, int group, int slot, int weight_mode, Tensor? expert_out=None, int rows=0) -> ()");
  m.def("combine_wait(Tensor(a!) token, int group, int slot, Tensor(b!)? out=None, int timeout_ms=0) -> ()");
  m.def("device_bytes(int address, int nbytes, int device) -> Tensor");
  m.def("call_floor(Tensor(a!) token, int group, int slot, Tensor? x, Tensor? topk_ids, Tensor? topk_weights, "
        "Tensor? n_tokens_device, int n_tokens) -> ()");
}

STABLE_TORCH_LIBRARY_IMPL(epd, CUDA, m) {
  m.impl("dispatch", TORCH_BOX(&dispatch_cuda));
  m.impl("dispatch_wait", TORCH_BOX(&dispatch_wait_cuda));
  m.impl("combine", TORCH_BOX(&combine_cuda));
  m.impl("combine_wait", TORCH_BOX(&combine_wait_cuda));
}

STABLE_TORCH_LIBRARY_IMPL(epd, CPU, m) {
  m.impl("dispatch", TORCH_BOX(&dispatch_cpu));
  m.impl("dispatch_wait", TORCH_BOX(&dispatch_wait_cpu));
  m.impl("combine", TORCH_BOX(&combine_cpu));
  m.impl("combine_wait", TORCH_BOX(&combine_wait_cpu));
}

STABLE_TORCH_LIBRARY_IMPL(epd, CompositeExplicitAutograd, m) {
  m.impl("device_bytes", TORCH_BOX(&device_bytes));
  m.impl("call_floor", TORCH_BOX(&call_floor));
}
