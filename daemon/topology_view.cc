// topology_view.cc — load and cache the daemon's topology view, with CUDA's
// GPU peer links rendered beside hwloc's PCIe view.
#include "topology_view.h"

#include "logging.h"

#ifdef EPD_HAVE_HWLOC
#include <algorithm>
#include <map>
#include <optional>
#include <utility>
#include <vector>

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

#ifdef EPD_HAVE_HWLOC
constexpr char kPeersTitle[] = "GPU peers (CUDA):";

// CUDA writes bus ids in upper case ("0000:1B:00.0"), hwloc in lower case:
// shown as hwloc does, so that both halves of `epctl topology` read alike.
// CUDA's own text when it is no bus id.
std::string canonical_busid(const std::string& busid) {
  Result<std::string> id = normalize_pci_busid(busid);
  return id ? id.value() : busid;
}

// One ordered pair of the view with its class.
struct PeerPair {
  GpuPeerView::Link facts;
  GpuLinkClass cls;
};

using PairIndex = std::map<std::pair<int32_t, int32_t>, const PeerPair*>;

std::vector<PeerPair> classify(const GpuPeerView& v, const Topology* topo) {
  std::map<int32_t, std::string> busid;
  for (const GpuPeerView::Device& d : v.devices) busid[d.index] = d.pci_busid;
  std::vector<PeerPair> out;
  for (const GpuPeerView::Link& l : v.links) {
    std::optional<Locality> locality;
    const auto from = busid.find(l.from), to = busid.find(l.to);
    if (topo != nullptr && from != busid.end() && to != busid.end()) {
      // Not an error when hwloc lacks a GPU: that pair's PCIe path is unknown.
      Result<Locality> r = topo->gpu_pair_locality(from->second, to->second);
      if (r) locality = r.value();
    }
    out.push_back(PeerPair{l, classify_gpu_link(l.access, l.native_atomics, locality)});
  }
  return out;
}

PairIndex index_pairs(const std::vector<PeerPair>& pairs) {
  PairIndex idx;
  for (const PeerPair& p : pairs) idx[{p.facts.from, p.facts.to}] = &p;
  return idx;
}

const PeerPair* find_pair(const PairIndex& idx, int32_t from, int32_t to) {
  const auto it = idx.find({from, to});
  return it == idx.end() ? nullptr : it->second;
}

bool same_both_ways(const PeerPair& a, const PeerPair& b) {
  return a.cls.link == b.cls.link && a.facts.access == b.facts.access &&
         a.facts.native_atomics == b.facts.native_atomics &&
         a.facts.performance_rank == b.facts.performance_rank && a.cls.note == b.cls.note;
}

std::string gpu_name(int32_t index) { return "GPU" + std::to_string(index); }

// "  GPU0 <-> GPU2: pcie, performance rank 1; PCIe path numa: ..."
std::string pair_line(int32_t a, const char* arrow, int32_t b, const PeerPair& p) {
  std::string line = "  " + gpu_name(a) + " " + arrow + " " + gpu_name(b) + ": " + gpu_link_name(p.cls.link);
  if (p.facts.access) line += ", performance rank " + std::to_string(p.facts.performance_rank);
  if (!p.cls.note.empty()) line += "; " + p.cls.note;
  return line + "\n";
}

// Each column padded to its widest cell plus two spaces; the last not padded.
std::string render_columns(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (size_t c = 0; c < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
  }
  std::string out;
  for (const auto& r : rows) {
    for (size_t c = 0; c < r.size(); ++c) {
      out += r[c];
      if (c + 1 < r.size()) out += std::string(width[c] - r[c].size() + 2, ' ');
    }
    out += "\n";
  }
  return out;
}
#endif

}  // namespace

#ifdef EPD_HAVE_HWLOC
nlohmann::json gpu_peers_json(const Result<GpuPeerView>& peers, const Topology* topo) {
  nlohmann::json j;
  j["available"] = peers.is_ok();
  if (!peers) j["reason"] = peers.status().message();
  j["devices"] = nlohmann::json::array();
  j["links"] = nlohmann::json::array();
  if (!peers) return j;
  const GpuPeerView& v = peers.value();
  for (const GpuPeerView::Device& d : v.devices) {
    j["devices"].push_back({{"index", d.index}, {"pci_busid", canonical_busid(d.pci_busid)}});
  }
  for (const PeerPair& p : classify(v, topo)) {
    j["links"].push_back({{"from", p.facts.from},
                          {"to", p.facts.to},
                          {"access", p.facts.access},
                          {"native_atomics", p.facts.native_atomics},
                          {"performance_rank", p.facts.performance_rank},
                          {"link", gpu_link_name(p.cls.link)},
                          {"pcie_locality", p.cls.pcie_locality ? nlohmann::json(locality_name(*p.cls.pcie_locality))
                                                                : nlohmann::json(nullptr)}});
  }
  return j;
}

std::string gpu_peers_text(const Result<GpuPeerView>& peers, const Topology* topo) {
  if (!peers) return std::string(kPeersTitle) + " unavailable: " + peers.status().message() + "\n";
  const GpuPeerView& v = peers.value();
  if (v.devices.empty()) return std::string(kPeersTitle) + " no GPU\n";
  const std::vector<PeerPair> pairs = classify(v, topo);
  const PairIndex idx = index_pairs(pairs);

  std::vector<std::vector<std::string>> rows;
  rows.push_back({kPeersTitle, "pci_busid"});
  for (const GpuPeerView::Device& d : v.devices) rows[0].push_back(gpu_name(d.index));
  for (const GpuPeerView::Device& from : v.devices) {
    std::vector<std::string> row = {"  " + gpu_name(from.index), canonical_busid(from.pci_busid)};
    for (const GpuPeerView::Device& to : v.devices) {
      const PeerPair* p = find_pair(idx, from.index, to.index);
      row.push_back(from.index == to.index ? "-" : p != nullptr ? gpu_link_name(p->cls.link) : "?");
    }
    rows.push_back(std::move(row));
  }
  std::string out = render_columns(rows);

  // The matrix says all there is about NVLink pairs; the others get their PCIe path.
  for (size_t i = 0; i < v.devices.size(); ++i) {
    for (size_t k = i + 1; k < v.devices.size(); ++k) {
      const int32_t a = v.devices[i].index, b = v.devices[k].index;
      const PeerPair* ab = find_pair(idx, a, b);
      const PeerPair* ba = find_pair(idx, b, a);
      if (ab != nullptr && ba != nullptr && same_both_ways(*ab, *ba)) {
        if (ab->cls.link != GpuLink::kNvlink) out += pair_line(a, "<->", b, *ab);
        continue;
      }
      if (ab != nullptr) out += pair_line(a, "->", b, *ab);
      if (ba != nullptr) out += pair_line(b, "->", a, *ba);
    }
  }

  if (topo != nullptr) {
    for (const GpuPeerView::Device& d : v.devices) {
      const std::string id = canonical_busid(d.pci_busid);
      const bool known = std::any_of(topo->gpus().begin(), topo->gpus().end(),
                                     [&](const GpuInfo& g) { return g.pci_busid == id; });
      if (!known) out += "  " + gpu_name(d.index) + " (" + id + ") is not in hwloc's topology: PCIe path unknown\n";
    }
  }
  return out;
}

std::string gpu_peers_summary(const Result<GpuPeerView>& peers) {
  if (!peers) return "GPU peers: unavailable: " + peers.status().message();
  const GpuPeerView& v = peers.value();
  const size_t n = v.devices.size();
  if (n == 0) return "GPU peers: no GPU";
  if (n == 1) return "GPU peers: 1 GPU, no pairs";
  const std::vector<PeerPair> pairs = classify(v, nullptr);
  const bool uniform = pairs.size() == n * (n - 1) && std::all_of(pairs.begin(), pairs.end(), [&](const PeerPair& p) {
                         return p.cls.link == pairs.front().cls.link;
                       });
  if (uniform) {
    return "GPU peers: " + std::to_string(n) + " GPUs, every pair " + gpu_link_name(pairs.front().cls.link);
  }
  const PairIndex idx = index_pairs(pairs);
  std::string list;
  auto add = [&](const std::string& item) { list += (list.empty() ? "" : ", ") + item; };
  for (size_t i = 0; i < n; ++i) {
    for (size_t k = i + 1; k < n; ++k) {
      const int32_t a = v.devices[i].index, b = v.devices[k].index;
      const PeerPair* ab = find_pair(idx, a, b);
      const PeerPair* ba = find_pair(idx, b, a);
      if (ab != nullptr && ba != nullptr && ab->cls.link == ba->cls.link) {
        add(std::to_string(a) + "<->" + std::to_string(b) + " " + gpu_link_name(ab->cls.link));
        continue;
      }
      if (ab != nullptr) add(std::to_string(a) + "->" + std::to_string(b) + " " + gpu_link_name(ab->cls.link));
      if (ba != nullptr) add(std::to_string(b) + "->" + std::to_string(a) + " " + gpu_link_name(ba->cls.link));
    }
  }
  return "GPU peers: " + list;
}
#endif

void load_daemon_topology() {
  View& v = view();
#ifdef EPD_HAVE_HWLOC
  auto topo = Topology::load_live();
  // Device attribute queries only; main() runs this after blocking the stop
  // signals, so the CUDA driver's threads started here inherit the mask.
  const Result<GpuPeerView> peers = gpu_peer_view();
  const Topology* hwloc = topo ? &topo.value() : nullptr;
  nlohmann::json j;
  if (!topo) {
    const std::string why = topo.status().to_string();
    j["available"] = false;
    j["reason"] = why;
    v.text = "topology: unavailable: " + why + "\n";
    log_message(LogLevel::kWarn, "topology: " + why);
  } else {
    j = topo->to_json();
    j["available"] = true;
    v.text = topo->to_table();
    std::string pairs;
    for (const auto& p : topo->pick_nics())
      pairs += (pairs.empty() ? "" : ", ") + p.gpu_pci_busid + " -> " + p.nic + " (" + locality_name(p.locality) + ")";
    log_message(LogLevel::kInfo, "topology: " + std::to_string(topo->gpus().size()) + " GPU(s), " +
                                     std::to_string(topo->nics().size()) + " RDMA NIC(s)" +
                                     (pairs.empty() ? "" : "; GPU->NIC " + pairs));
  }
  j["gpu_peers"] = gpu_peers_json(peers, hwloc);
  // Names come from hwloc, sysfs and the driver: never throw on bytes that are not UTF-8.
  v.json = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  v.text += gpu_peers_text(peers, hwloc);
  log_message(LogLevel::kInfo, gpu_peers_summary(peers));
#else
  v.json =
      "{\"available\":false,\"reason\":\"built without hwloc\",\"gpu_peers\":{\"available\":false,\"reason\":"
      "\"built without hwloc\",\"devices\":[],\"links\":[]}}";
  v.text = "topology: unavailable (built without hwloc)\n";
#endif
}

const std::string& daemon_topology_json() { return view().json; }
const std::string& daemon_topology_text() { return view().text; }

}  // namespace epd
