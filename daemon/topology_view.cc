// topology_view.cc — load and cache the daemon's topology view.
#include "topology_view.h"

#include "logging.h"
#include "status_report.h"

#ifdef EPD_HAVE_HWLOC
#include <nlohmann/json.hpp>

#include "topology.h"
#endif

namespace epd {

namespace {

struct View {
  std::string json = "{\"available\":false,\"reason\":\"not loaded\"}";
  std::string text = "topology: not loaded\n";
};

View& view() {
  static View v;
  return v;
}

}  // namespace

void load_daemon_topology() {
  View& v = view();
#ifdef EPD_HAVE_HWLOC
  auto topo = Topology::load_live();
  if (!topo) {
    const std::string why = topo.status().to_string();
    v.json = "{\"available\":false,\"reason\":" + json_quote(why) + "}";
    v.text = "topology: unavailable: " + why + "\n";
    log_message(LogLevel::kWarn, "topology: " + why);
    return;
  }
  nlohmann::json j = topo->to_json();
  j["available"] = true;
  v.json = j.dump();
  v.text = topo->to_table();
  std::string pairs;
  for (const auto& p : topo->pick_nics())
    pairs += (pairs.empty() ? "" : ", ") + p.gpu_pci_busid + " -> " + p.nic + " (" + locality_name(p.locality) + ")";
  log_message(LogLevel::kInfo, "topology: " + std::to_string(topo->gpus().size()) + " GPU(s), " +
                                   std::to_string(topo->nics().size()) + " RDMA NIC(s)" +
                                   (pairs.empty() ? "" : "; GPU->NIC " + pairs));
#else
  v.json = "{\"available\":false,\"reason\":\"built without hwloc\"}";
  v.text = "topology: unavailable (built without hwloc)\n";
#endif
}

const std::string& daemon_topology_json() { return view().json; }
const std::string& daemon_topology_text() { return view().text; }

}  // namespace epd
