// shared_region.cc — memfd creation, sealing and mapping.
#include "shared_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace epd {

Result<std::shared_ptr<SharedRegion>> SharedRegion::create(const char* name, uint64_t bytes) {
  if (bytes == 0) return make_status(EPD_ERR_INVALID_ARGUMENT, "shared region '%s' of 0 bytes", name);
  const int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return errno_status("memfd_create", errno);
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int e = errno;
    close(fd);
    return make_status(e == ENOSPC || e == ENOMEM ? EPD_ERR_NO_MEMORY : EPD_ERR_SYSTEM,
                       "ftruncate(memfd '%s', %llu bytes): %s", name,
                       static_cast<unsigned long long>(bytes), strerror(e));
  }
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    const int e = errno;
    close(fd);
    return errno_status("fcntl(F_ADD_SEALS)", e);
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    const int e = errno;
    close(fd);
    return make_status(EPD_ERR_NO_MEMORY, "mmap(memfd '%s', %llu bytes): %s", name,
                       static_cast<unsigned long long>(bytes), strerror(e));
  }
  return std::shared_ptr<SharedRegion>(new SharedRegion(fd, static_cast<uint8_t*>(p), bytes));
}

SharedRegion::~SharedRegion() {
  munmap(data_, size_);
  close(fd_);
}

}  // namespace epd
