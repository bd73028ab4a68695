// shared_region.h — a memfd-backed shared memory region owned by the daemon:
// created, sized, sealed against shrinking and growing (so a client can never
// make the daemon fault on a truncated mapping) and mapped MAP_SHARED.
//
// Shared through std::shared_ptr: a job still running on a group's worker
// keeps the regions it publishes into alive after their session is gone.
// Thread-safety: the object is immutable after create(); the bytes it maps are
// shared with other processes and must be accessed as untrusted.
#pragma once

#include <cstdint>
#include <memory>

#include "status.h"

namespace epd {

class SharedRegion {
 public:
  static Result<std::shared_ptr<SharedRegion>> create(const char* name, uint64_t bytes);
  ~SharedRegion();
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;

  int fd() const { return fd_; }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  SharedRegion(int fd, uint8_t* data, uint64_t size) : fd_(fd), data_(data), size_(size) {}
  int fd_;
  uint8_t* data_;
  uint64_t size_;
};

}  // namespace epd
