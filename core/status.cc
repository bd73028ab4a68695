// status.cc — status names and Status helpers.
#include "status.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>

extern "C" const char* epd_status_string(epd_status_t status) {
  switch (status) {
    case EPD_OK: return "EPD_OK: success";
    case EPD_ERR_INVALID_ARGUMENT: return "EPD_ERR_INVALID_ARGUMENT: invalid argument";
    case EPD_ERR_INVALID_SPEC: return "EPD_ERR_INVALID_SPEC: invalid group spec";
    case EPD_ERR_EXPERT_ID_OUT_OF_RANGE: return "EPD_ERR_EXPERT_ID_OUT_OF_RANGE: expert id outside [-1, num_experts)";
    case EPD_ERR_CAPACITY_EXCEEDED: return "EPD_ERR_CAPACITY_EXCEEDED: token count above max_tokens_per_rank";
    case EPD_ERR_FP8_ALIGNMENT: return "EPD_ERR_FP8_ALIGNMENT: fp8 block quantisation needs hidden divisible by 128";
    case EPD_ERR_UNSUPPORTED: return "EPD_ERR_UNSUPPORTED: not supported by this build or executor";
    case EPD_ERR_BAD_SLOT: return "EPD_ERR_BAD_SLOT: slot outside [0, slots)";
    case EPD_ERR_NO_DISPATCH: return "EPD_ERR_NO_DISPATCH: no dispatch in flight on this slot";
    case EPD_ERR_SPEC_MISMATCH: return "EPD_ERR_SPEC_MISMATCH: spec differs from the group's";
    case EPD_ERR_DUPLICATE_RANK: return "EPD_ERR_DUPLICATE_RANK: rank already joined";
    case EPD_ERR_STALE_GENERATION: return "EPD_ERR_STALE_GENERATION: generation older than the group's";
    case EPD_ERR_UNKNOWN_GROUP: return "EPD_ERR_UNKNOWN_GROUP: no such group";
    case EPD_ERR_VERSION_MISMATCH: return "EPD_ERR_VERSION_MISMATCH: protocol major version differs";
    case EPD_ERR_PROTOCOL: return "EPD_ERR_PROTOCOL: malformed or truncated message";
    case EPD_ERR_TIMEOUT: return "EPD_ERR_TIMEOUT: deadline passed";
    case EPD_ERR_PEER_LOST: return "EPD_ERR_PEER_LOST: a rank of the group is gone";
    case EPD_ERR_DAEMON_LOST: return "EPD_ERR_DAEMON_LOST: connection to the daemon lost";
    case EPD_ERR_PERMISSION: return "EPD_ERR_PERMISSION: permission denied";
    case EPD_ERR_NO_MEMORY: return "EPD_ERR_NO_MEMORY: out of memory";
    case EPD_ERR_SYSTEM: return "EPD_ERR_SYSTEM: system call failed";
    case EPD_ERR_CUDA: return "EPD_ERR_CUDA: CUDA call failed";
    case EPD_ERR_GPU_UNAVAILABLE: return "EPD_ERR_GPU_UNAVAILABLE: no usable CUDA driver or device";
    case EPD_ERR_SLOT_BUSY: return "EPD_ERR_SLOT_BUSY: slot has an operation in flight";
    case EPD_ERR_SHUTTING_DOWN: return "EPD_ERR_SHUTTING_DOWN: daemon is stopping";
    case EPD_ERR_NOT_JOINED: return "EPD_ERR_NOT_JOINED: not joined to a group";
    case EPD_ERR_BAD_WEIGHT_MODE: return "EPD_ERR_BAD_WEIGHT_MODE: combine weight mode invalid for this layout";
    case EPD_ERR_RDMA: return "EPD_ERR_RDMA: RDMA call failed";
    case EPD_ERR_INTERNAL: return "EPD_ERR_INTERNAL: internal error";
    case EPD_ERR_DEVICE_FAULT: return "EPD_ERR_DEVICE_FAULT: kernel reported a fault";
    case EPD_ERR_GROUP_CLOSED: return "EPD_ERR_GROUP_CLOSED: group was torn down";
    case EPD_ERR_NOT_OWNER: return "EPD_ERR_NOT_OWNER: group belongs to another user";
    case EPD_ERR_QUOTA_EXCEEDED: return "EPD_ERR_QUOTA_EXCEEDED: a configured quota would be exceeded";
  }
  return "EPD_ERR_UNKNOWN: unknown status code";
}

namespace epd {

std::string Status::to_string() const {
  std::string s = epd_status_string(code_);
  if (!message_.empty()) {
    s += " (";
    s += message_;
    s += ")";
  }
  return s;
}

Status make_status(epd_status_t code, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return Status(code, buf);
}

Status errno_status(const char* what, int err) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: %s (errno %d)", what, std::strerror(err), err);
  return Status(EPD_ERR_SYSTEM, buf);
}

}  // namespace epd
