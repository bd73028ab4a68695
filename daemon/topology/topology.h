// topology.h — the node's GPUs, RDMA NICs and NUMA nodes (from hwloc), the
// NIC each GPU should use for inter-node traffic, and the PCIe path between
// two GPUs (with CUDA's peer facts, the link between them: classify_gpu_link).
//
// A Topology is built once, from the live machine or from an hwloc XML file or
// string (tests, or a saved `lstopo --of xml` of another machine), and is
// immutable afterwards. It owns its hwloc topology; it is move-only and frees
// hwloc's state when destroyed. Thread-safety: every method is const and may be
// called from any number of threads at once (hwloc allows concurrent reads, and
// binding does not modify the topology).
//
// Usage (daemon start-up, then one RDMA proxy thread per GPU):
//
//   epd::Result<epd::Topology> topo = epd::Topology::load_live();
//   if (!topo) { log(topo.status().to_string()); /* run without pinning */ }
//   for (const std::string& note : topo->notes()) log(note);  // "no RDMA NIC found ..."
//   // cuDeviceGetPCIBusId() / NVML give the GPU's bus id, in any case or domain width:
//   epd::Result<epd::NicChoice> nic = topo->nic_for_gpu("00000000:18:00.0");
//   // on the proxy thread of that GPU:
//   epd::Status s = topo->pin_current_thread_near(nic->nic);  // hwloc_set_cpubind(THREAD)
//   epd::Result<int> numa = topo->numa_for_nic(nic->nic);     // for host staging memory
//   // or the whole plan for that thread: NIC, NUMA node and its CPUs, and why:
//   epd::Result<epd::ProxyPlacement> p = topo->proxy_for_gpu("0000:18:00.0");
//   // epctl topology:
//   nlohmann::json j = topo->to_json();   // needs <nlohmann/json.hpp> at the call site
//   std::string table = topo->to_table();
//
// GPUs are PCI devices with NVIDIA's vendor id (0x10de) and class 0x0300 (VGA)
// or 0x0302 (3D), plus any PCI device carrying a CUDA or NVML OS device. RDMA
// NICs are OpenFabrics OS devices ("mlx5_0", "rxe0"). Devices are identified by
// PCI bus id, never by CUDA ordinal: `cuda_index` is only what hwloc saw with
// the daemon's own CUDA_VISIBLE_DEVICES.
//
// The library exists only where pkg-config finds hwloc; its users see
// EPD_HAVE_HWLOC defined (to 1) when they link epd_topology.
#pragma once

#include "cpu_list.h"  // format_cpu_list

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "status.h"

namespace epd {

// How close a NIC is to a GPU: the deepest object on both of their paths to the
// root of the hwloc tree. Lower is closer; the numbers order the classes.
enum class Locality : int {
  kPcieSwitch = 0,  // a shared PCI-to-PCI bridge (switch) or device: peer traffic stays below the host
  kHostBridge = 1,  // the same PCI host bridge (root complex), different switches / root ports
  kNuma = 2,        // different host bridges, one NUMA node
  kPackage = 3,     // one package (socket), different NUMA nodes (sub-NUMA clustering)
  kSystem = 4,      // across sockets / the whole machine
};

// "pcie_switch", "host_bridge", "numa", "package", "system".
const char* locality_name(Locality locality);

// What joins one GPU of this node to another, for `epctl topology`. CUDA does
// not name the link: it says whether a GPU can load/store a peer's memory and
// whether atomics on it are native. NVLink gives both; PCIe peer-to-peer gives
// access, and the driver does not report native peer atomics over it (a PCIe
// fabric with AtomicOps end to end that it did report would show as NVLink).
enum class GpuLink : int {
  kNone = 0,    // no CUDA peer access: traffic between them goes through host memory
  kPcie = 1,    // peer access without native atomics
  kNvlink = 2,  // peer access with native atomics
};

// "none", "pcie", "nvlink".
const char* gpu_link_name(GpuLink link);

struct GpuLinkClass {
  GpuLink link = GpuLink::kNone;
  std::optional<Locality> pcie_locality;  // as given: hwloc's, when both GPUs are in its topology
  // The PCIe path in words for a pair without NVLink (with a hint when peer
  // access is missing on a path that should allow it); "" for NVLink or
  // without a PCIe locality.
  std::string note;
};

// Pure (no CUDA, no hwloc): the link of one ordered GPU pair from CUDA's facts
// (cudaDeviceCanAccessPeer, cudaDevP2PAttrNativeAtomicSupported) and hwloc's
// PCIe locality of the two GPUs (Topology::gpu_pair_locality), when known.
// Native atomics without access is taken as no access.
GpuLinkClass classify_gpu_link(bool access, bool native_atomics, std::optional<Locality> pcie_locality);

struct NumaNodeInfo {
  int os_index = -1;
  std::vector<int> cpus;            // OS indexes of the PUs local to this node, ascending
  uint64_t local_memory_bytes = 0;  // 0 when hwloc does not know
};

struct GpuInfo {
  std::string pci_busid;                // canonical "0000:18:00.0"
  uint16_t vendor_id = 0;
  uint16_t device_id = 0;
  uint16_t pci_class = 0;               // 0x0302, 0x0300, ...
  std::vector<std::string> os_devices;  // "cuda0", "nvml0", "card1", ... as hwloc names them
  int cuda_index = -1;                  // N of a "cudaN" OS device, -1 without one
  std::vector<int> numa_nodes;          // NUMA nodes of the GPU's locality (os indexes)
  std::vector<int> cpus;                // PUs of the GPU's locality (os indexes)
};

struct NicInfo {
  std::string name;                  // OpenFabrics device name, "mlx5_0"
  std::string pci_busid;             // canonical bus id; "" for a device without PCI (soft-RoCE)
  std::vector<std::string> netdevs;  // network interfaces of the same PCI function ("ibp25s0")
  std::vector<int> numa_nodes;       // NUMA nodes of the NIC's locality (os indexes)
  std::vector<int> cpus;             // PUs of the NIC's locality (os indexes)
};

// The NIC chosen for one GPU.
struct NicChoice {
  std::string gpu_pci_busid;
  std::string nic;
  Locality locality = Locality::kSystem;
};

// Where a proxy thread runs: the thread that moves one GPU's (or, for the
// host executor, one transport's) inter-node traffic, pinned to the NUMA node
// of the NIC it drives so that its posts, completions and staging copies stay
// on that socket.
struct ProxyPlacement {
  std::string gpu_pci_busid;  // "" for a transport's proxy (no GPU)
  std::string nic;            // OpenFabrics name; "" when not known
  int numa_node = -1;         // -1: not pinned
  std::vector<int> cpus;      // PUs (OS indexes) to pin to; empty: not pinned
  std::string reason;         // how it was chosen, or why it is not pinned (for the log line)
  bool pinned() const { return !cpus.empty(); }
};

struct XmlLoadOptions {
  // Assert that the XML describes the machine this process runs on, so that
  // pin_current_thread_near() really binds (HWLOC_TOPOLOGY_FLAG_IS_THISSYSTEM).
  // Without it, pinning with an XML topology is refused with EPD_ERR_UNSUPPORTED.
  bool is_this_system = false;
};

class Topology {
 public:
  // The machine this process runs on, with I/O devices (HWLOC_TYPE_FILTER_KEEP_IMPORTANT).
  // EPD_ERR_SYSTEM when hwloc cannot discover it.
  static Result<Topology> load_live();
  // An hwloc 2.x XML file. EPD_ERR_SYSTEM (naming the path) when it cannot be
  // read; EPD_ERR_INVALID_ARGUMENT (naming the path) when hwloc rejects it.
  static Result<Topology> load_xml_file(const std::string& path, const XmlLoadOptions& options = {});
  // The same from memory; `origin` names the source in messages and output.
  static Result<Topology> load_xml_string(std::string_view xml, std::string_view origin = "<xml string>",
                                          const XmlLoadOptions& options = {});

  Topology(Topology&&) noexcept;
  Topology& operator=(Topology&&) noexcept;
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;
  ~Topology();

  // "live" or the XML file path / origin given to load_xml_string.
  const std::string& origin() const;
  // Whether binding acts on this machine (live, or XML with is_this_system).
  bool is_this_system() const;

  const std::vector<NumaNodeInfo>& numa_nodes() const;  // by os index
  const std::vector<GpuInfo>& gpus() const;             // by PCI bus id
  const std::vector<NicInfo>& nics() const;             // by name, digit runs compared as numbers
  // One entry per GPU (same order as gpus()) when there is at least one NIC,
  // else empty. For each GPU the closest NICs are those of the lowest
  // Locality, and within it the deepest shared ancestor. Among equally close
  // NICs the choice spreads GPUs over NICs: the largest number of GPUs gets a
  // NIC of its own, then the busiest NIC serves as few GPUs as possible (a
  // matching, not a greedy pass), then the lowest name wins.
  const std::vector<NicChoice>& pick_nics() const;
  // Human-readable remarks: no GPU, no NIC, devices without PCI locality.
  const std::vector<std::string>& notes() const;

  // The choice for one GPU. Accepts "0000:18:00.0", "00000000:18:00.0" (NVML)
  // and "18:00.0", in any case. EPD_ERR_INVALID_ARGUMENT for a malformed or
  // unknown bus id; EPD_ERR_UNSUPPORTED when the machine has no RDMA NIC.
  Result<NicChoice> nic_for_gpu(std::string_view pci_busid) const;
  // The NUMA node of the NIC's locality; when that spans several nodes, the
  // lowest. EPD_ERR_INVALID_ARGUMENT for an unknown NIC.
  Result<int> numa_for_nic(std::string_view nic) const;
  // The PUs (OS indexes) of the NIC's locality. EPD_ERR_INVALID_ARGUMENT for an unknown NIC.
  Result<std::vector<int>> cpuset_for_nic(std::string_view nic) const;
  // Binds the calling thread to the NIC's cpuset (hwloc_set_cpubind,
  // HWLOC_CPUBIND_THREAD). EPD_ERR_INVALID_ARGUMENT for an unknown NIC,
  // EPD_ERR_UNSUPPORTED when the topology is not this machine, EPD_ERR_SYSTEM
  // when the OS refuses (message names the CPUs and the error).
  Status pin_current_thread_near(std::string_view nic) const;

  // The proxy of a GPU: the NIC pick_nics() chose for it, that NIC's NUMA
  // node (numa_for_nic) and the node's PUs (the NIC's locality PUs when the
  // node has none, a memory-only node). Errors as nic_for_gpu().
  Result<ProxyPlacement> proxy_for_gpu(std::string_view pci_busid) const;
  // The proxy of a transport that serves no particular GPU (the host
  // executor's): near `device`, an OpenFabrics name ("mlx5_0") or a network
  // interface of one ("ibp25s0", as NicInfo::netdevs lists). Not an error
  // when it is empty or no RDMA NIC of this topology: then not pinned, and
  // `reason` says why (the scheduler places the thread; guessing a NUMA node
  // would put it across the socket from the NIC half of the time).
  ProxyPlacement proxy_for_device(std::string_view device) const;
  // One proxy_for_gpu() per entry of pick_nics(), in the same order.
  std::vector<ProxyPlacement> gpu_proxies() const;

  // How close two GPUs are on the PCIe tree: the same classes and the same
  // common-ancestor rule as a GPU and its NIC (pick_nics). Symmetric. Bus ids
  // as nic_for_gpu() accepts them. EPD_ERR_INVALID_ARGUMENT for a malformed
  // or unknown bus id, or both naming one GPU.
  Result<Locality> gpu_pair_locality(std::string_view pci_busid_a, std::string_view pci_busid_b) const;

  // {"origin", "this_system", "numa_nodes": [{os_index, cpus, local_memory_bytes}],
  //  "gpus": [{pci_busid, vendor_id, device_id, pci_class, os_devices, cuda_index, numa_nodes, cpus}],
  //  "nics": [{name, pci_busid, netdevs, numa_nodes, cpus}],
  //  "pairs": [{gpu, nic, distance}], "proxies": [{gpu, nic, numa_node, cpus}] (gpu_proxies()),
  //  "notes": [...]}; cpus as a list string "0-3,8-11".
  nlohmann::json to_json() const;
  // Aligned text tables (NUMA nodes, GPUs with their NIC and proxy CPUs,
  // NICs, notes) for epctl.
  std::string to_table() const;

  struct Impl;  // hwloc state; defined in topology.cc

 private:
  explicit Topology(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "0000:18:00.0" from "0000:18:00.0", "00000000:18:00.0" or "18:00.0" (any
// case). EPD_ERR_INVALID_ARGUMENT naming the input when it is not a bus id.
Result<std::string> normalize_pci_busid(std::string_view busid);


// NIC order: names compared with digit runs as numbers ("mlx5_2" < "mlx5_10").
bool nic_name_less(std::string_view a, std::string_view b);

// The spreading step of pick_nics(), exposed for tests: `candidates[g]` lists
// the NIC indexes equally closest to GPU g, and NIC indexes are in name order.
// Returns the chosen NIC index per GPU (-1 where `candidates[g]` is empty).
std::vector<int> spread_gpus_over_nics(const std::vector<std::vector<int>>& candidates, int num_nics);

}  // namespace epd
