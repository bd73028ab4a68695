// host_backend.h — groups the host executor runs: the workspace is the memfd
// every rank maps, rings come on the session blocks' host doorbells and
// outcomes go back through them. The embedded default (no GPU needed).
// Thread-safety: as GroupBackend.
#pragma once

#include "backend.h"

namespace epd {

std::unique_ptr<GroupBackend> make_host_backend(const GroupSpec& spec, const BackendEnv& env);

}  // namespace epd
