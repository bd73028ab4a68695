// topology_format.cc — Topology::to_json() and to_table() for `epctl topology`,
// and the CPU list format they share (see topology.h).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "topology.h"

namespace epd {
namespace {

std::string hex4(uint16_t v) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%04x", static_cast<unsigned>(v));
  return buf;
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

std::string join_ints(const std::vector<int>& items) {
  std::vector<std::string> s;
  for (int v : items) s.push_back(std::to_string(v));
  return join(s, ",");
}

std::string gib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

// Rows of cells printed with each column padded to its widest cell.
class TextTable {
 public:
  explicit TextTable(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string render(const std::string& indent) const {
    std::vector<size_t> width;
    for (const auto& r : rows_) {
      if (width.size() < r.size()) width.resize(r.size(), 0);
      for (size_t c = 0; c < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
    }
    std::string out;
    for (const auto& r : rows_) {
      std::string line = indent;
      for (size_t c = 0; c < r.size(); ++c) {
        line += r[c];
        if (c + 1 < r.size()) line += std::string(width[c] - r[c].size() + 2, ' ');
      }
      out += line + "\n";
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace


nlohmann::json Topology::to_json() const {
  nlohmann::json j;
  j["origin"] = origin();
  j["this_system"] = is_this_system();
  j["numa_nodes"] = nlohmann::json::array();
  for (const NumaNodeInfo& n : numa_nodes()) {
    j["numa_nodes"].push_back(
        {{"os_index", n.os_index}, {"cpus", format_cpu_list(n.cpus)}, {"local_memory_bytes", n.local_memory_bytes}});
  }
  j["gpus"] = nlohmann::json::array();
  for (const GpuInfo& g : gpus()) {
    j["gpus"].push_back({{"pci_busid", g.pci_busid},
                         {"vendor_id", hex4(g.vendor_id)},
                         {"device_id", hex4(g.device_id)},
                         {"pci_class", hex4(g.pci_class)},
                         {"os_devices", g.os_devices},
                         {"cuda_index", g.cuda_index},
                         {"numa_nodes", g.numa_nodes},
                         {"cpus", format_cpu_list(g.cpus)}});
  }
  j["nics"] = nlohmann::json::array();
  for (const NicInfo& n : nics()) {
    j["nics"].push_back({{"name", n.name},
                         {"pci_busid", n.pci_busid},
                         {"netdevs", n.netdevs},
                         {"numa_nodes", n.numa_nodes},
                         {"cpus", format_cpu_list(n.cpus)}});
  }
  j["pairs"] = nlohmann::json::array();
  for (const NicChoice& p : pick_nics()) {
    j["pairs"].push_back({{"gpu", p.gpu_pci_busid}, {"nic", p.nic}, {"distance", locality_name(p.locality)}});
  }
  j["proxies"] = nlohmann::json::array();
  for (const ProxyPlacement& p : gpu_proxies()) {
    j["proxies"].push_back({{"gpu", p.gpu_pci_busid},
                            {"nic", p.nic},
                            {"numa_node", p.numa_node},
                            {"cpus", format_cpu_list(p.cpus)}});
  }
  j["notes"] = notes();
  return j;
}

std::string Topology::to_table() const {
  std::string out = "topology: " + origin() + (is_this_system() ? "" : " (not this machine)") + "\n";

  out += "NUMA nodes (" + std::to_string(numa_nodes().size()) + ")\n";
  TextTable numa({"node", "cpus", "memory"});
  for (const NumaNodeInfo& n : numa_nodes()) {
    numa.add({std::to_string(n.os_index), format_cpu_list(n.cpus), gib(n.local_memory_bytes)});
  }
  out += numa.render("  ");

  out += "GPUs (" + std::to_string(gpus().size()) + ")\n";
  if (!gpus().empty()) {
    // The proxy columns: where that GPU's proxy thread is pinned (the NUMA node of its NIC).
    const std::vector<ProxyPlacement> proxies = gpu_proxies();
    TextTable t({"pci_busid", "id", "os devices", "numa", "cpus", "nic", "distance", "proxy numa", "proxy cpus"});
    for (size_t g = 0; g < gpus().size(); ++g) {
      const GpuInfo& info = gpus()[g];
      const bool paired = g < pick_nics().size();
      const bool pinned = g < proxies.size() && proxies[g].pinned();
      t.add({info.pci_busid, hex4(info.vendor_id).substr(2) + ":" + hex4(info.device_id).substr(2),
             info.os_devices.empty() ? "-" : join(info.os_devices, ","), join_ints(info.numa_nodes),
             format_cpu_list(info.cpus), paired ? pick_nics()[g].nic : "-",
             paired ? locality_name(pick_nics()[g].locality) : "-",
             pinned && proxies[g].numa_node >= 0 ? std::to_string(proxies[g].numa_node) : "-",
             pinned ? format_cpu_list(proxies[g].cpus) : "-"});
    }
    out += t.render("  ");
  }

  out += "RDMA NICs (" + std::to_string(nics().size()) + ")\n";
  if (!nics().empty()) {
    TextTable t({"name", "pci_busid", "netdevs", "numa", "cpus"});
    for (const NicInfo& n : nics()) {
      t.add({n.name, n.pci_busid.empty() ? "-" : n.pci_busid, n.netdevs.empty() ? "-" : join(n.netdevs, ","),
             join_ints(n.numa_nodes), format_cpu_list(n.cpus)});
    }
    out += t.render("  ");
  }

  for (const std::string& note : notes()) out += "note: " + note + "\n";
  return out;
}

}  // namespace epd
