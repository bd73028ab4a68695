// epd/epd.hpp — a thin RAII C++ wrapper over the C ABI of epd/epd.h.
//
// epd::Client owns an epd_client_t, epd::Group an epd_group_t; both are
// move-only and release their handle in the destructor (a Group must not
// outlive the Client it was joined through). Methods return epd_status_t like
// the C functions (no exceptions); last_error() gives the message. Method
// names are the C names without the epd_<object>_ prefix.
// Thread-safety: as the C functions they wrap (see epd.h).
#pragma once

#include <string>
#include <utility>

#include "epd/epd.h"

namespace epd {

class Group {
 public:
  Group() = default;
  explicit Group(epd_group_t* g) : g_(g) {}
  Group(Group&& o) noexcept : g_(std::exchange(o.g_, nullptr)) {}
  Group& operator=(Group&& o) noexcept {
    if (this != &o) {
      leave();
      g_ = std::exchange(o.g_, nullptr);
    }
    return *this;
  }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;
  ~Group() { leave(); }

  epd_status_t leave() { return epd_group_leave(std::exchange(g_, nullptr)); }
  epd_status_t dispatch(int32_t slot, const epd_dispatch_args_t& args) { return epd_group_dispatch(g_, slot, &args); }
  epd_status_t dispatch_wait(int32_t slot, uint32_t timeout_ms, epd_dispatch_result_t& out) {
    out.struct_size = sizeof out;
    return epd_group_dispatch_wait(g_, slot, timeout_ms, &out);
  }
  epd_status_t combine(int32_t slot, epd_weight_mode_t mode) { return epd_group_combine(g_, slot, mode); }
  epd_status_t combine_wait(int32_t slot, uint32_t timeout_ms, const void*& out) {
    return epd_group_combine_wait(g_, slot, timeout_ms, &out);
  }
  // GPU groups: enqueued on `stream` (a cudaStream_t / CUstream; nullptr = legacy default stream).
  epd_status_t dispatch_async(int32_t slot, const epd_gpu_dispatch_args_t& args, void* stream) {
    return epd_group_dispatch_async(g_, slot, &args, stream);
  }
  epd_status_t dispatch_wait_async(int32_t slot, void* stream) {
    return epd_group_dispatch_wait_async(g_, slot, stream);
  }
  epd_status_t combine_async(int32_t slot, epd_weight_mode_t mode, const void* expert_out, int64_t rows,
                             void* stream) {
    return epd_group_combine_async(g_, slot, mode, expert_out, rows, stream);
  }
  epd_status_t combine_wait_async(int32_t slot, void* stream) {
    return epd_group_combine_wait_async(g_, slot, stream);
  }
  epd_status_t gpu_status(int32_t slot, uint32_t timeout_ms = 0) {
    return epd_group_gpu_status(g_, slot, timeout_ms);
  }
  // Stable for the life of this Group (see epd_group_gpu_views).
  epd_status_t gpu_views(int32_t slot, epd_gpu_views_t& out) {
    out.struct_size = sizeof out;
    return epd_group_gpu_views(g_, slot, &out);
  }
  std::string last_error() const { return epd_group_last_error(g_); }
  epd_group_t* get() const { return g_; }
  explicit operator bool() const { return g_ != nullptr; }

 private:
  epd_group_t* g_ = nullptr;
};

class Client {
 public:
  Client() = default;
  Client(Client&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
  Client& operator=(Client&& o) noexcept {
    if (this != &o) {
      epd_client_disconnect(c_);
      c_ = std::exchange(o.c_, nullptr);
    }
    return *this;
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client() { epd_client_disconnect(c_); }

  // socket_path "" = $EPD_SOCKET or the default path.
  epd_status_t connect(const std::string& socket_path = "") {
    epd_client_disconnect(std::exchange(c_, nullptr));
    return epd_client_connect(socket_path.empty() ? nullptr : socket_path.c_str(), &c_);
  }
  epd_status_t join(const epd_group_spec_t& spec, Group& out) {
    epd_group_t* g = nullptr;
    const epd_status_t rc = epd_group_join(c_, &spec, &g);
    if (rc == EPD_OK) out = Group(g);
    return rc;
  }
  epd_status_t query(epd_client_info_t& info) {
    info.struct_size = sizeof info;
    return epd_client_query(c_, &info);
  }
  // After a failed connect the message is per thread (epd_client_last_error(NULL)).
  std::string last_error() const { return epd_client_last_error(c_); }
  epd_client_t* get() const { return c_; }
  explicit operator bool() const { return c_ != nullptr; }

 private:
  epd_client_t* c_ = nullptr;
};

}  // namespace epd
