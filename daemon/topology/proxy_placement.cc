// proxy_placement.cc — where proxy threads run: the NUMA node of the NIC a GPU
// (or a transport) uses, and that node's CPUs (see topology.h). Built only on
// the public Topology accessors.
#include <string>
#include <vector>

#include "topology.h"

namespace epd {
namespace {

const NicInfo* find_device(const Topology& t, std::string_view device) {
  for (const NicInfo& n : t.nics()) {
    if (n.name == device) return &n;
  }
  for (const NicInfo& n : t.nics()) {
    for (const std::string& netdev : n.netdevs) {
      if (netdev == device) return &n;
    }
  }
  return nullptr;
}

// Fills nic / numa_node / cpus / reason for a proxy near `nic`.
void place_near(const Topology& t, const NicInfo& nic, ProxyPlacement* p) {
  p->nic = nic.name;
  Result<int> numa = t.numa_for_nic(nic.name);
  if (numa) {
    for (const NumaNodeInfo& n : t.numa_nodes()) {
      if (n.os_index == *numa && !n.cpus.empty()) {
        p->numa_node = *numa;
        p->cpus = n.cpus;
        p->reason = "NUMA node " + std::to_string(*numa) + " of RDMA NIC " + nic.name;
        return;
      }
    }
  }
  if (!nic.cpus.empty()) {  // a memory-only NUMA node, or none known: the NIC's own locality
    p->numa_node = numa ? *numa : -1;
    p->cpus = nic.cpus;
    p->reason = "CPUs local to RDMA NIC " + nic.name + " (its NUMA node has no CPUs of its own)";
    return;
  }
  p->reason = "RDMA NIC " + nic.name + " has no CPU locality in topology '" + t.origin() + "'; not pinned";
}

}  // namespace

Result<ProxyPlacement> Topology::proxy_for_gpu(std::string_view pci_busid) const {
  Result<NicChoice> choice = nic_for_gpu(pci_busid);
  if (!choice) return choice.status();
  ProxyPlacement p;
  p.gpu_pci_busid = choice->gpu_pci_busid;
  const NicInfo* nic = find_device(*this, choice->nic);
  if (nic == nullptr) {
    return make_status(EPD_ERR_INTERNAL, "GPU %s was paired with '%s', which topology '%s' does not list",
                       p.gpu_pci_busid.c_str(), choice->nic.c_str(), origin().c_str());
  }
  place_near(*this, *nic, &p);
  if (p.pinned()) p.reason += ", the NIC chosen for GPU " + p.gpu_pci_busid + " (" + locality_name(choice->locality) + ")";
  return p;
}

ProxyPlacement Topology::proxy_for_device(std::string_view device) const {
  ProxyPlacement p;
  if (device.empty()) {
    p.reason = "the transport's network device is not known; not pinned";
    return p;
  }
  const NicInfo* nic = find_device(*this, device);
  if (nic == nullptr) {
    p.reason = "'" + std::string(device) + "' is not an RDMA NIC (nor a network interface of one) in topology '" +
               origin() + "'; not pinned";
    return p;
  }
  place_near(*this, *nic, &p);
  if (p.pinned() && nic->name != device) p.reason += " (interface " + std::string(device) + ")";
  return p;
}

std::vector<ProxyPlacement> Topology::gpu_proxies() const {
  std::vector<ProxyPlacement> out;
  for (const NicChoice& c : pick_nics()) {
    Result<ProxyPlacement> p = proxy_for_gpu(c.gpu_pci_busid);
    if (p) {
      out.push_back(std::move(*p));
    } else {
      ProxyPlacement none;
      none.gpu_pci_busid = c.gpu_pci_busid;
      none.reason = p.status().message();
      out.push_back(std::move(none));
    }
  }
  return out;
}

}  // namespace epd
