// backend.h — the seam between a daemon group and what executes it. Every
// group has exactly one GroupBackend, chosen once by make_backend() from the
// spec (backend_factory.cc); the rest of the daemon never asks what kind of
// group it holds, it asks the backend.
//
// Backends today (one file pair each):
//   host        host_backend.*        the host executor over the memfd workspace
//   gpu         gpu_armed_backend.*   GPU workspaces on one node, armed streams
//   gpu-inline  gpu_inline_backend.*  one GPU block; the workers' streams launch (executor inline)
//   gpu-staged  gpu_staged_backend.*  GPU ranks of a group spanning nodes, staged
//                                     through the host mirror the host executor runs on
// A new backend is a new file pair and one row in the factory's table.
//
// Ownership: the Group owns its backend; a backend owns what it allocates in
// start() (GPU workspaces, streams, pollers) and never the host workspace.
// Thread-safety: control thread only, except finish(), which the group's
// worker thread also calls for the jobs it runs (backends serialise it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layout.h"
#include "logging.h"
#include "session_block.h"
#include "shared_region.h"
#include "spec.h"
#include "status.h"

namespace epd {

// Where one rank learns the outcome of an op: its entry in its session block.
struct RankTarget {
  std::shared_ptr<SharedRegion> shm;
  uint32_t index = 0;
  uint32_t seq = 0;
  int32_t rank = -1;
};

// What a joining rank receives with its JOIN reply.
struct RankExport {
  int fd = -1;                    // owned: the caller sends it, then closes it
  uint64_t workspace_bytes = 0;   // a host workspace: the memfd's size (else 0)
  int32_t gpu_device = -1;        // a GPU workspace: the fd is a cuMem handle on this device (else -1)
  uint64_t gpu_mapped_bytes = 0;
};

// A ring that reached the backend by its own path (not the session block's
// host doorbells), e.g. a host-staged GPU rank's doorbell in device memory.
struct BackendRing {
  int32_t rank = 0;
  int32_t slot = 0;
  Op op = Op::kDispatch;
  uint32_t mode = 0;  // combine: the weight mode the worker wrote
};

// What the daemon gives every backend it makes.
struct BackendEnv {
  int32_t node_id = 0;          // this daemon's node (config [cluster] node_id)
  std::function<void()> wake;   // after take_rings() has something (any thread)
};

class GroupBackend {
 public:
  virtual ~GroupBackend() = default;

  // "host", "gpu", "gpu-staged": the name logs and `epctl groups` show.
  virtual const char* kind() const = 0;
  // Bytes of the group's host workspace (the memfd): the whole layout when
  // the host executor runs over it, a placeholder page when it does not.
  virtual uint64_t host_workspace_bytes(const GroupLayout& layout) const = 0;
  virtual bool runs_host_executor() const = 0;
  // Once the host workspace exists (host_bases[r]: rank r's region in it):
  // allocates what the backend owns. An error refuses the group.
  virtual Status start(const std::vector<uint8_t*>& host_bases) = 0;
  // One log line at creation: where the group runs and the bytes it holds.
  virtual std::string created_line() const = 0;

  // The workspace fd and facts a rank receives when its join completes.
  virtual Result<RankExport> export_rank(int32_t rank, const SharedRegion& host_workspace) = 0;
  // A ring on the host doorbells of a session block: OK, or why this group
  // is rung another way (the ring is refused with that status).
  virtual Status accept_host_ring() const = 0;
  // Rings that came by the backend's own path since the last call.
  virtual std::vector<BackendRing> take_rings() { return {}; }
  // The outcome of `op` on `slot` for one rank; with_results: the executor
  // ran it (results are in the host workspace), else a refusal or failure.
  virtual void finish(const RankTarget& t, int32_t slot, Op op, const Status& st, bool with_results) {
    (void)with_results;
    publish(*t.shm, t.index, slot, op, t.seq, st);
  }
  // A joined rank left or was lost: release whatever waits for it.
  virtual void rank_gone(int32_t rank, const LogContext& ctx) {
    (void)rank;
    (void)ctx;
  }
  // Every rank is present and some joins are pending: true to complete them
  // now, false to wait (`joined`: ranks still joined from before;
  // `processes`: how many distinct processes hold this node's ranks), an
  // error to refuse them.
  virtual Result<bool> joins_may_complete(int32_t joined, int32_t processes) {
    (void)joined;
    (void)processes;
    return true;
  }

  // GPU memory the backend allocated in start() (0 for none). A group holds
  // this plus its host workspace: what quotas charge and `epctl groups` shows.
  virtual uint64_t device_bytes() const = 0;
  // For `epctl groups`: the executor column (where it runs, variant, health).
  virtual std::string status_text() const = 0;
};

// Chooses the backend for `spec` (the only place that asks what kind of group
// a spec describes) and makes it; start() is the caller's next call.
Result<std::unique_ptr<GroupBackend>> make_backend(const GroupSpec& spec, const BackendEnv& env);

}  // namespace epd
