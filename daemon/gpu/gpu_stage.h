// gpu_stage.h — GPU ranks of a group that spans nodes, served host-staged:
// each node's daemon keeps the group's host mirror (the cluster layer ships
// between mirrors and the host executor runs over it, cluster/cluster.h) and
// stages its local GPU ranks through it.
//
// The workers see an ordinary GPU group: their workspaces are in GPU memory
// (cuMem, handed over at join as for one-node GPU groups) and they ring and
// wait with epd_group_dispatch_async / epd_group_*_wait_async on their streams. Here a
// poller thread reads the local ranks' control slots (doorbells, weight mode)
// every `poll_us`; when a rank rings, it copies what the op needs from the GPU
// into the mirror (dispatch: the send header and the used send rows; combine:
// combine_in) and reports the ring, which the control thread treats like a
// host doorbell. When the host executor has run the op, deliver() copies the
// rank's results from the mirror to its GPU workspace (dispatch: the receive
// regions; combine: combine_out) and then writes its completion word, which
// releases the worker's stream. fail() writes a completion word with an error
// and no data (a refused ring, PEER_LOST, TIMEOUT).
//
// Not a fast path: every op crosses PCIe twice and the TCP transport. It makes
// GPU ranks across nodes work everywhere, with results identical to every other
// executor (the host executor computes them).
//
// Ownership: a GpuStage owns the local ranks' GPU workspaces and its poller
// thread; it writes into the mirror it is given (owned by the Group, which
// outlives it). Thread-safety: take_rings() from the control thread; deliver()
// from the group's worker thread; fail(), arm() and disarm() from the control
// thread; each serialised internally per stream.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "spec.h"
#include "status.h"

namespace epd {

class GpuStage {
 public:
  enum class Op : uint8_t { kDispatch = 1, kCombine = 2 };
  struct Ring {
    int32_t rank = 0;
    int32_t slot = 0;
    Op op = Op::kDispatch;
    uint32_t mode = 0;  // combine: the weight mode the worker wrote
  };

  ~GpuStage();  // stops the poller; frees the workspaces
  GpuStage(const GpuStage&) = delete;
  GpuStage& operator=(const GpuStage&) = delete;

  // local_ranks: the ranks of `spec` on this node (their placement gpu is a
  // device of this node). mirror_bases[r]: rank r's region in the host mirror
  // (every rank; only local ones are used). wake: called (poller thread)
  // after rings were queued. poll_us: the poller's period.
  static Result<std::unique_ptr<GpuStage>> create(const GroupSpec& spec, std::vector<int32_t> local_ranks,
                                                  std::vector<uint8_t*> mirror_bases, std::function<void()> wake,
                                                  uint32_t poll_us = 50);

  int32_t device(int32_t rank) const;
  uint64_t mapped_bytes(int32_t rank) const;
  uint64_t total_bytes() const;
  Result<int> export_fd(int32_t rank) const;  // a new fd; the caller sends and closes it

  // A (re)joined rank: clears its control slots and expects a dispatch on every slot next.
  Status arm(int32_t rank);
  // A rank that left: no longer polled.
  void disarm(int32_t rank);

  std::vector<Ring> take_rings();
  // The host executor ran `op` on `slot` with `status`: rank's results (when
  // OK) to its GPU workspace, then its completion word.
  Status deliver(int32_t rank, int32_t slot, Op op, epd_status_t status);
  // A completion word with `status` and no data.
  Status fail(int32_t rank, int32_t slot, Op op, epd_status_t status);
  // The first CUDA error the poller hit (it stops polling then); OK otherwise.
  Status health() const;
  std::string describe() const;

 private:
  struct Impl;
  GpuStage();
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd
