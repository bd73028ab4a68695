// gpu_link.cc — classify_gpu_link(): the link between two GPUs from CUDA's
// peer facts and hwloc's PCIe locality (see topology.h).
#include <string>

#include "topology.h"

namespace epd {
namespace {

// The PCIe path of a Locality class, in words.
const char* pcie_path(Locality locality) {
  switch (locality) {
    case Locality::kPcieSwitch: return "below a shared PCIe switch";
    case Locality::kHostBridge: return "through one host bridge (root complex)";
    case Locality::kNuma: return "through the CPU, between host bridges of one NUMA node";
    case Locality::kPackage: return "through the CPU, between NUMA nodes of one socket";
    case Locality::kSystem: return "across the CPU interconnect, between sockets";
  }
  return "unknown";
}

}  // namespace

const char* gpu_link_name(GpuLink link) {
  switch (link) {
    case GpuLink::kNone: return "none";
    case GpuLink::kPcie: return "pcie";
    case GpuLink::kNvlink: return "nvlink";
  }
  return "unknown";
}

GpuLinkClass classify_gpu_link(bool access, bool native_atomics, std::optional<Locality> pcie_locality) {
  GpuLinkClass c;
  c.pcie_locality = pcie_locality;
  if (access && native_atomics) {
    c.link = GpuLink::kNvlink;
    return c;  // the PCIe path is not the one peer traffic takes
  }
  c.link = access ? GpuLink::kPcie : GpuLink::kNone;
  if (!pcie_locality) return c;
  c.note = std::string("PCIe path ") + locality_name(*pcie_locality) + ": " + pcie_path(*pcie_locality);
  // Below one host bridge no CPU is in the way, so missing peer access is
  // usually a setting; through the CPU it is usually the platform.
  if (!access && *pcie_locality <= Locality::kHostBridge) {
    c.note += "; peer-to-peer may be turned off (PCIe ACS, the IOMMU, or the driver)";
  }
  return c;
}

}  // namespace epd
