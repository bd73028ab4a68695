// topology_view.h — the daemon's own view of this machine's topology (GPUs,
// RDMA NICs, NUMA nodes and the chosen GPU->NIC pairs, from hwloc) and of
// which GPUs are CUDA peers and over what link (CUDA's peer facts beside
// hwloc's PCIe view), loaded once at start-up and rendered for `epctl topology`.
//
// load_daemon_topology() is called by main() before the control thread runs;
// it logs the pairs and the GPU peer links. The render functions return the
// cached result (or why there is none: built without hwloc, or hwloc failed)
// and may be called from any thread after that. The gpu_peers_* functions are
// pure (they render what they are given) and thread-safe.
#pragma once

#include <string>

#ifdef EPD_HAVE_HWLOC
#include <nlohmann/json_fwd.hpp>

#include "gpu_group.h"
#endif

namespace epd {

void load_daemon_topology();
// JSON object: {"available": bool, ... topology ... or "reason": "...",
// "gpu_peers": gpu_peers_json()}.
const std::string& daemon_topology_json();
// Human-readable table (or the reason there is none), then gpu_peers_text().
const std::string& daemon_topology_text();

#ifdef EPD_HAVE_HWLOC
class Topology;

// The GPU peers section, from CUDA's view `peers` (gpu_peer_view()) and, for
// each pair's PCIe locality, hwloc's `topo` (nullptr when hwloc could not
// load). GPUs are matched by canonical PCI bus id (normalize_pci_busid).
//   {"available": bool, "reason": str (only when not available),
//    "devices": [{"index", "pci_busid"}],
//    "links": [{"from", "to", "access", "native_atomics", "performance_rank",
//               "link" (gpu_link_name), "pcie_locality" (locality_name or null)}]}
nlohmann::json gpu_peers_json(const Result<GpuPeerView>& peers, const Topology* topo);
// A matrix of gpu_link_name() (row: from, column: to), one line per GPU pair
// without NVLink (its PCIe path), and the GPUs hwloc does not know.
std::string gpu_peers_text(const Result<GpuPeerView>& peers, const Topology* topo);
// One log line: "GPU peers: 0<->1 nvlink, 0<->2 pcie, ...", or why there are none.
std::string gpu_peers_summary(const Result<GpuPeerView>& peers);
#endif

}  // namespace epd
