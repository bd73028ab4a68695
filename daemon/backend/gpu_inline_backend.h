// gpu_inline_backend.h — GPU groups run by the inline executor
// (spec.executor = inline, kernels/gpu_inline.h): the daemon owns one block on
// the group's GPU (every rank's workspace, the routing scratch, the abort word)
// and hands it to every rank; the workers' own streams launch the kernels. The
// host doorbells are refused; a lost rank sets the abort word (every rank's
// waiting or later launch completes with PEER_LOST), and the group runs again
// once every rank has joined afresh (the block is re-initialised then).
// Thread-safety: as GroupBackend.
#pragma once

#include "backend.h"

namespace epd {

std::unique_ptr<GroupBackend> make_gpu_inline_backend(const GroupSpec& spec, const BackendEnv& env);

}  // namespace epd
