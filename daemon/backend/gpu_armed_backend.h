// gpu_armed_backend.h — GPU groups on one node: every rank's workspace in GPU
// memory and the armed executor that serves them (daemon/gpu/gpu_group.h).
// Ranks ring and wait on their own CUDA streams (epd_group_dispatch_async ...), so
// the host doorbells are refused; a lost rank aborts every armed wait, and
// the group runs again once every rank has joined afresh.
// Thread-safety: as GroupBackend.
#pragma once

#include "backend.h"

namespace epd {

std::unique_ptr<GroupBackend> make_gpu_armed_backend(const GroupSpec& spec, const BackendEnv& env);

}  // namespace epd
