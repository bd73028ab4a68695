// gpu_staged_backend.h — GPU ranks of a group that spans nodes, served
// host-staged (daemon/gpu/gpu_stage.h): the host mirror of the whole group is
// the memfd the host executor runs on and the cluster layer ships between
// nodes; this node's GPU ranks are copied into it when they ring (their
// doorbells are in device memory, polled by the stage) and their results and
// completion words copied back. Host doorbells are refused.
// Thread-safety: as GroupBackend; finish() runs on the group's worker too
// (GpuStage serialises per rank).
#pragma once

#include "backend.h"

namespace epd {

std::unique_ptr<GroupBackend> make_gpu_staged_backend(const GroupSpec& spec, const BackendEnv& env);

}  // namespace epd
