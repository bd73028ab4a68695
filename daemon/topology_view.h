// topology_view.h — the daemon's own view of this machine's topology (GPUs,
// RDMA NICs, NUMA nodes and the chosen GPU->NIC pairs, from hwloc), loaded
// once at start-up and rendered for `epctl topology`.
//
// load_daemon_topology() is called by main() before the control thread runs;
// it logs the pairs. The render functions return the cached result (or why
// there is none: built without hwloc, or hwloc failed) and may be called from
// any thread after that.
#pragma once

#include <string>

namespace epd {

void load_daemon_topology();
// JSON object: {"available": bool, ... topology ... or "reason": "..."}.
const std::string& daemon_topology_json();
// Human-readable table (or the reason there is none).
const std::string& daemon_topology_text();

}  // namespace epd
