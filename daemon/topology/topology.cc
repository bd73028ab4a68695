// topology.cc — loading the hwloc topology and finding GPUs, RDMA NICs, NUMA
// nodes and the GPU→NIC choice (see topology.h).
#include "topology.h"

#include <hwloc.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace epd {

struct Topology::Impl {
  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (topo != nullptr) hwloc_topology_destroy(topo);
  }

  hwloc_topology_t topo = nullptr;
  std::string origin;
  bool this_system = false;
  std::vector<NumaNodeInfo> numa;
  std::vector<GpuInfo> gpus;
  std::vector<hwloc_obj_t> gpu_objs;  // the PCI device of gpus[i]
  std::vector<NicInfo> nics;
  std::vector<hwloc_obj_t> nic_objs;  // the PCI device of nics[i], or its OS device without PCI
  std::vector<NicChoice> pairs;
  std::vector<std::string> notes;
};

namespace {

constexpr uint16_t kNvidiaVendor = 0x10de;
constexpr uint16_t kPciClassVga = 0x0300;
constexpr uint16_t kPciClass3d = 0x0302;

std::vector<int> bitmap_indexes(hwloc_const_bitmap_t set) {
  std::vector<int> out;
  if (set == nullptr) return out;
  for (int i = hwloc_bitmap_first(set); i >= 0; i = hwloc_bitmap_next(set, i)) out.push_back(i);
  return out;
}

std::string format_busid(const hwloc_obj_t pci) {
  const auto& a = pci->attr->pcidev;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04x:%02x:%02x.%x", static_cast<unsigned>(a.domain),
                static_cast<unsigned>(a.bus), static_cast<unsigned>(a.dev), static_cast<unsigned>(a.func));
  return buf;
}

hwloc_obj_t pci_ancestor(hwloc_obj_t obj) {
  for (hwloc_obj_t o = obj; o != nullptr; o = o->parent) {
    if (o->type == HWLOC_OBJ_PCI_DEVICE) return o;
    if (!hwloc_obj_type_is_io(o->type)) return nullptr;
  }
  return nullptr;
}

bool is_nvidia_osdev(hwloc_obj_t osdev) {
  const hwloc_obj_osdev_type_e t = osdev->attr->osdev.type;
  const std::string_view subtype = osdev->subtype != nullptr ? osdev->subtype : "";
  const std::string_view name = osdev->name != nullptr ? osdev->name : "";
  if (t == HWLOC_OBJ_OSDEV_COPROC && (subtype == "CUDA" || name.starts_with("cuda"))) return true;
  if (t == HWLOC_OBJ_OSDEV_GPU && (subtype == "NVML" || name.starts_with("nvml"))) return true;
  return false;
}

bool is_gpu(hwloc_obj_t pci) {
  const auto& a = pci->attr->pcidev;
  if (a.vendor_id == kNvidiaVendor && (a.class_id == kPciClassVga || a.class_id == kPciClass3d)) return true;
  for (hwloc_obj_t c = pci->io_first_child; c != nullptr; c = c->next_sibling) {
    if (c->type == HWLOC_OBJ_OS_DEVICE && is_nvidia_osdev(c)) return true;
  }
  return false;
}

int cuda_index_of(std::string_view name) {
  if (!name.starts_with("cuda") || name.size() == 4) return -1;
  int v = 0;
  for (char ch : name.substr(4)) {
    if (!std::isdigit(static_cast<unsigned char>(ch)) || v > 100000) return -1;
    v = v * 10 + (ch - '0');
  }
  return v;
}

void fill_locality(hwloc_topology_t topo, hwloc_obj_t obj, std::vector<int>* numa, std::vector<int>* cpus) {
  hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(topo, obj);
  if (anc == nullptr) return;
  *numa = bitmap_indexes(anc->nodeset);
  *cpus = bitmap_indexes(anc->cpuset);
}

int tree_depth(hwloc_obj_t obj) {
  int d = 0;
  for (hwloc_obj_t o = obj->parent; o != nullptr; o = o->parent) ++d;
  return d;
}

// hwloc_get_common_ancestor_obj() relies on object depths, which are negative
// (special) for I/O objects; walk the parent links instead.
hwloc_obj_t common_ancestor(hwloc_obj_t a, hwloc_obj_t b) {
  std::set<hwloc_obj_t> path;
  for (hwloc_obj_t o = a; o != nullptr; o = o->parent) path.insert(o);
  for (hwloc_obj_t o = b; o != nullptr; o = o->parent) {
    if (path.count(o) != 0) return o;
  }
  return nullptr;
}

// The closeness of two devices: their locality class, then (within it) how
// deep their shared ancestor is. Lower compares closer.
struct Closeness {
  Locality locality = Locality::kSystem;
  int neg_depth = 0;
  bool operator==(const Closeness&) const = default;
  bool operator<(const Closeness& o) const {
    return locality != o.locality ? locality < o.locality : neg_depth < o.neg_depth;
  }
};

// Also true for an object above a single package (a machine with one socket).
bool within_one_package(hwloc_topology_t topo, hwloc_obj_t obj) {
  if (obj->cpuset == nullptr || hwloc_bitmap_iszero(obj->cpuset)) return false;
  for (hwloc_obj_t p = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_PACKAGE, nullptr); p != nullptr;
       p = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_PACKAGE, p)) {
    if (p->cpuset != nullptr && hwloc_bitmap_isincluded(obj->cpuset, p->cpuset)) return true;
  }
  return false;
}

Closeness closeness(hwloc_topology_t topo, hwloc_obj_t a, hwloc_obj_t b) {
  hwloc_obj_t anc = common_ancestor(a, b);
  if (anc == nullptr) return Closeness{Locality::kSystem, 0};
  Closeness c;
  c.neg_depth = -tree_depth(anc);
  if (anc->type == HWLOC_OBJ_BRIDGE) {
    c.locality = anc->attr->bridge.upstream_type == HWLOC_OBJ_BRIDGE_HOST ? Locality::kHostBridge
                                                                          : Locality::kPcieSwitch;
  } else if (anc->type == HWLOC_OBJ_PCI_DEVICE || anc->type == HWLOC_OBJ_OS_DEVICE) {
    c.locality = Locality::kPcieSwitch;
  } else if (anc->nodeset == nullptr || hwloc_bitmap_weight(anc->nodeset) <= 1) {
    c.locality = Locality::kNuma;
  } else if (within_one_package(topo, anc)) {
    c.locality = Locality::kPackage;
  } else {
    c.locality = Locality::kSystem;
  }
  return c;
}

void scan_numa(Topology::Impl* t) {
  for (hwloc_obj_t o = hwloc_get_next_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, nullptr); o != nullptr;
       o = hwloc_get_next_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, o)) {
    NumaNodeInfo n;
    n.os_index = static_cast<int>(o->os_index);
    n.cpus = bitmap_indexes(o->cpuset);
    n.local_memory_bytes = o->attr->numanode.local_memory;
    t->numa.push_back(std::move(n));
  }
  std::sort(t->numa.begin(), t->numa.end(),
            [](const NumaNodeInfo& a, const NumaNodeInfo& b) { return a.os_index < b.os_index; });
}

void scan_gpus(Topology::Impl* t) {
  std::vector<hwloc_obj_t> objs;
  for (hwloc_obj_t o = hwloc_get_next_pcidev(t->topo, nullptr); o != nullptr; o = hwloc_get_next_pcidev(t->topo, o)) {
    if (is_gpu(o)) objs.push_back(o);
  }
  auto key = [](hwloc_obj_t o) {
    const auto& a = o->attr->pcidev;
    return std::make_tuple(static_cast<unsigned>(a.domain), a.bus, a.dev, a.func);
  };
  std::sort(objs.begin(), objs.end(), [&](hwloc_obj_t a, hwloc_obj_t b) { return key(a) < key(b); });
  for (hwloc_obj_t o : objs) {
    GpuInfo g;
    g.pci_busid = format_busid(o);
    g.vendor_id = o->attr->pcidev.vendor_id;
    g.device_id = o->attr->pcidev.device_id;
    g.pci_class = o->attr->pcidev.class_id;
    for (hwloc_obj_t c = o->io_first_child; c != nullptr; c = c->next_sibling) {
      if (c->type != HWLOC_OBJ_OS_DEVICE || c->name == nullptr) continue;
      g.os_devices.emplace_back(c->name);
      if (g.cuda_index < 0 && c->attr->osdev.type == HWLOC_OBJ_OSDEV_COPROC) g.cuda_index = cuda_index_of(c->name);
    }
    fill_locality(t->topo, o, &g.numa_nodes, &g.cpus);
    t->gpus.push_back(std::move(g));
    t->gpu_objs.push_back(o);
  }
  // CUDA / NVML devices hwloc could not place on a PCI device cannot be told
  // apart by bus id, so they are left out; say so.
  for (hwloc_obj_t o = hwloc_get_next_osdev(t->topo, nullptr); o != nullptr; o = hwloc_get_next_osdev(t->topo, o)) {
    if (is_nvidia_osdev(o) && pci_ancestor(o) == nullptr) {
      t->notes.push_back(std::string("GPU OS device ") + (o->name != nullptr ? o->name : "?") +
                         " has no PCI device in the topology; it is left out");
    }
  }
}

void scan_nics(Topology::Impl* t) {
  std::vector<std::pair<NicInfo, hwloc_obj_t>> found;
  for (hwloc_obj_t o = hwloc_get_next_osdev(t->topo, nullptr); o != nullptr; o = hwloc_get_next_osdev(t->topo, o)) {
    if (o->attr->osdev.type != HWLOC_OBJ_OSDEV_OPENFABRICS || o->name == nullptr) continue;
    NicInfo n;
    n.name = o->name;
    hwloc_obj_t pci = pci_ancestor(o);
    hwloc_obj_t anchor = o;
    if (pci != nullptr) {
      anchor = pci;
      n.pci_busid = format_busid(pci);
      for (hwloc_obj_t c = pci->io_first_child; c != nullptr; c = c->next_sibling) {
        if (c->type == HWLOC_OBJ_OS_DEVICE && c->attr->osdev.type == HWLOC_OBJ_OSDEV_NETWORK && c->name != nullptr) {
          n.netdevs.emplace_back(c->name);
        }
      }
    } else {
      t->notes.push_back("RDMA NIC " + n.name + " has no PCI device (a software device?): it is paired " +
                         "by CPU locality only");
    }
    fill_locality(t->topo, o, &n.numa_nodes, &n.cpus);
    found.emplace_back(std::move(n), anchor);
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return nic_name_less(a.first.name, b.first.name); });
  for (auto& [n, obj] : found) {
    t->nics.push_back(std::move(n));
    t->nic_objs.push_back(obj);
  }
}

void choose_nics(Topology::Impl* t) {
  if (t->gpus.empty()) {
    t->notes.emplace_back(
        "no GPU found (no NVIDIA PCI device of class 0x0300/0x0302, no CUDA or NVML OS device)");
  }
  if (t->nics.empty()) {
    t->notes.emplace_back("no RDMA NIC found (no OpenFabrics OS device); GPUs are left unpaired");
    return;
  }
  std::vector<std::vector<int>> candidates(t->gpus.size());
  std::vector<Locality> best_locality(t->gpus.size(), Locality::kSystem);
  for (size_t g = 0; g < t->gpus.size(); ++g) {
    Closeness best;
    for (size_t n = 0; n < t->nics.size(); ++n) {
      const Closeness c = closeness(t->topo, t->gpu_objs[g], t->nic_objs[n]);
      if (candidates[g].empty() || c < best) {
        best = c;
        candidates[g].assign(1, static_cast<int>(n));
      } else if (c == best) {
        candidates[g].push_back(static_cast<int>(n));
      }
    }
    best_locality[g] = best.locality;
  }
  const std::vector<int> choice = spread_gpus_over_nics(candidates, static_cast<int>(t->nics.size()));
  for (size_t g = 0; g < t->gpus.size(); ++g) {
    NicChoice c;
    c.gpu_pci_busid = t->gpus[g].pci_busid;
    c.nic = choice[g] >= 0 ? t->nics[static_cast<size_t>(choice[g])].name : std::string();
    c.locality = best_locality[g];
    t->pairs.push_back(std::move(c));
  }
}

int parse_hex(std::string_view s, size_t max_digits, unsigned* out) {
  if (s.empty() || s.size() > max_digits) return -1;
  unsigned v = 0;
  for (char ch : s) {
    const int c = std::tolower(static_cast<unsigned char>(ch));
    if (c >= '0' && c <= '9') {
      v = v * 16 + static_cast<unsigned>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      v = v * 16 + static_cast<unsigned>(c - 'a' + 10);
    } else {
      return -1;
    }
  }
  *out = v;
  return 0;
}

// hwloc unloads its plugins (the PCI one, and libpciaccess with it) when the
// last topology is destroyed: libpciaccess's global state then shows up as a
// leak under LeakSanitizer at exit, and the next load pays for dlopen again.
// One initialised, never loaded topology kept for the life of the process
// keeps them loaded.
void keep_hwloc_plugins_loaded() {
  static const hwloc_topology_t keeper = [] {
    hwloc_topology_t t = nullptr;
    return hwloc_topology_init(&t) == 0 ? t : nullptr;
  }();
  (void)keeper;
}

Status load(Topology::Impl* impl, const std::string* xml, const XmlLoadOptions& options) {
  keep_hwloc_plugins_loaded();
  if (hwloc_topology_init(&impl->topo) != 0) {
    impl->topo = nullptr;
    return errno_status("hwloc_topology_init", errno);
  }
  if (hwloc_topology_set_io_types_filter(impl->topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT) != 0) {
    return errno_status("hwloc_topology_set_io_types_filter(KEEP_IMPORTANT)", errno);
  }
  if (xml != nullptr) {
    if (options.is_this_system &&
        hwloc_topology_set_flags(impl->topo, HWLOC_TOPOLOGY_FLAG_IS_THISSYSTEM) != 0) {
      return errno_status("hwloc_topology_set_flags(IS_THISSYSTEM)", errno);
    }
    // hwloc wants the size including the terminating NUL, as its export returns it.
    if (xml->size() + 1 > static_cast<size_t>(INT32_MAX)) {
      return make_status(EPD_ERR_INVALID_ARGUMENT, "topology XML '%s' is too large (%zu bytes)",
                         impl->origin.c_str(), xml->size());
    }
    if (hwloc_topology_set_xmlbuffer(impl->topo, xml->c_str(), static_cast<int>(xml->size() + 1)) != 0) {
      const int err = errno;
      return make_status(EPD_ERR_INVALID_ARGUMENT, "topology XML '%s' is not a valid hwloc XML topology (%s)",
                         impl->origin.c_str(), std::strerror(err));
    }
  }
  if (hwloc_topology_load(impl->topo) != 0) {
    const int err = errno;
    if (xml != nullptr) {
      return make_status(EPD_ERR_INVALID_ARGUMENT,
                         "topology XML '%s' is not a valid hwloc XML topology (hwloc_topology_load: %s)",
                         impl->origin.c_str(), std::strerror(err));
    }
    return make_status(EPD_ERR_SYSTEM, "hwloc_topology_load of this machine failed: %s", std::strerror(err));
  }
  impl->this_system = hwloc_topology_is_thissystem(impl->topo) != 0;
  scan_numa(impl);
  scan_gpus(impl);
  scan_nics(impl);
  choose_nics(impl);
  return Status::ok();
}

}  // namespace

const char* locality_name(Locality locality) {
  switch (locality) {
    case Locality::kPcieSwitch: return "pcie_switch";
    case Locality::kHostBridge: return "host_bridge";
    case Locality::kNuma: return "numa";
    case Locality::kPackage: return "package";
    case Locality::kSystem: return "system";
  }
  return "unknown";
}

Topology::Topology(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Topology::Topology(Topology&&) noexcept = default;
Topology& Topology::operator=(Topology&&) noexcept = default;
Topology::~Topology() = default;

Result<Topology> Topology::load_live() {
  auto impl = std::make_unique<Impl>();
  impl->origin = "live";
  Status s = load(impl.get(), nullptr, XmlLoadOptions{});
  if (!s) return s;
  return Topology(std::move(impl));
}

Result<Topology> Topology::load_xml_file(const std::string& path, const XmlLoadOptions& options) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return errno_status(("open topology XML '" + path + "'").c_str(), errno);
  std::string xml;
  char buf[65536];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) xml.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) return errno_status(("read topology XML '" + path + "'").c_str(), err);
  return load_xml_string(xml, path, options);
}

Result<Topology> Topology::load_xml_string(std::string_view xml, std::string_view origin,
                                           const XmlLoadOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->origin = std::string(origin);
  const std::string text(xml);
  Status s = load(impl.get(), &text, options);
  if (!s) return s;
  return Topology(std::move(impl));
}

const std::string& Topology::origin() const { return impl_->origin; }
bool Topology::is_this_system() const { return impl_->this_system; }
const std::vector<NumaNodeInfo>& Topology::numa_nodes() const { return impl_->numa; }
const std::vector<GpuInfo>& Topology::gpus() const { return impl_->gpus; }
const std::vector<NicInfo>& Topology::nics() const { return impl_->nics; }
const std::vector<NicChoice>& Topology::pick_nics() const { return impl_->pairs; }
const std::vector<std::string>& Topology::notes() const { return impl_->notes; }

namespace {
Result<size_t> find_gpu(const Topology::Impl& t, std::string_view pci_busid) {
  Result<std::string> id = normalize_pci_busid(pci_busid);
  if (!id) return id.status();
  for (size_t g = 0; g < t.gpus.size(); ++g) {
    if (t.gpus[g].pci_busid == *id) return g;
  }
  return make_status(EPD_ERR_INVALID_ARGUMENT, "no GPU with PCI bus id %s in the topology '%s' (%zu GPUs)",
                     id->c_str(), t.origin.c_str(), t.gpus.size());
}
}  // namespace

Result<NicChoice> Topology::nic_for_gpu(std::string_view pci_busid) const {
  Result<size_t> g = find_gpu(*impl_, pci_busid);
  if (!g) return g.status();
  if (impl_->pairs.empty()) {
    return make_status(EPD_ERR_UNSUPPORTED, "GPU %s has no NIC: the topology '%s' has no RDMA NIC",
                       impl_->gpus[*g].pci_busid.c_str(), impl_->origin.c_str());
  }
  return impl_->pairs[*g];
}

Result<Locality> Topology::gpu_pair_locality(std::string_view pci_busid_a, std::string_view pci_busid_b) const {
  Result<size_t> a = find_gpu(*impl_, pci_busid_a);
  if (!a) return a.status();
  Result<size_t> b = find_gpu(*impl_, pci_busid_b);
  if (!b) return b.status();
  if (*a == *b) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "'%.*s' and '%.*s' are the same GPU (%s), not a pair",
                       static_cast<int>(pci_busid_a.size()), pci_busid_a.data(), static_cast<int>(pci_busid_b.size()),
                       pci_busid_b.data(), impl_->gpus[*a].pci_busid.c_str());
  }
  return closeness(impl_->topo, impl_->gpu_objs[*a], impl_->gpu_objs[*b]).locality;
}

namespace {
Result<size_t> find_nic(const Topology::Impl& t, std::string_view nic) {
  for (size_t i = 0; i < t.nics.size(); ++i) {
    if (t.nics[i].name == nic) return i;
  }
  std::string known;
  for (const NicInfo& n : t.nics) known += (known.empty() ? "" : ", ") + n.name;
  return make_status(EPD_ERR_INVALID_ARGUMENT, "unknown RDMA NIC '%.*s' (topology '%s' has: %s)",
                     static_cast<int>(nic.size()), nic.data(), t.origin.c_str(),
                     known.empty() ? "none" : known.c_str());
}
}  // namespace

Result<int> Topology::numa_for_nic(std::string_view nic) const {
  Result<size_t> i = find_nic(*impl_, nic);
  if (!i) return i.status();
  const std::vector<int>& nodes = impl_->nics[*i].numa_nodes;
  if (nodes.empty()) {
    return make_status(EPD_ERR_INTERNAL, "RDMA NIC %s has no NUMA node in topology '%s'",
                       impl_->nics[*i].name.c_str(), impl_->origin.c_str());
  }
  return nodes.front();
}

Result<std::vector<int>> Topology::cpuset_for_nic(std::string_view nic) const {
  Result<size_t> i = find_nic(*impl_, nic);
  if (!i) return i.status();
  return impl_->nics[*i].cpus;
}

Status Topology::pin_current_thread_near(std::string_view nic) const {
  Result<size_t> i = find_nic(*impl_, nic);
  if (!i) return i.status();
  const NicInfo& info = impl_->nics[*i];
  if (!impl_->this_system) {
    return make_status(EPD_ERR_UNSUPPORTED, "cannot pin near RDMA NIC %s: topology '%s' is not this machine",
                       info.name.c_str(), impl_->origin.c_str());
  }
  hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(impl_->topo, impl_->nic_objs[*i]);
  if (anc == nullptr || anc->cpuset == nullptr || hwloc_bitmap_iszero(anc->cpuset)) {
    return make_status(EPD_ERR_INTERNAL, "RDMA NIC %s has no CPUs in topology '%s'", info.name.c_str(),
                       impl_->origin.c_str());
  }
  if (hwloc_set_cpubind(impl_->topo, anc->cpuset, HWLOC_CPUBIND_THREAD) != 0) {
    const int err = errno;
    return make_status(EPD_ERR_SYSTEM, "hwloc_set_cpubind(thread, CPUs %s) near RDMA NIC %s: %s",
                       format_cpu_list(info.cpus).c_str(), info.name.c_str(), std::strerror(err));
  }
  return Status::ok();
}

Result<std::string> normalize_pci_busid(std::string_view busid) {
  // [domain:]bus:dev.func
  const std::string_view in = busid;
  const size_t dot = busid.rfind('.');
  const size_t last_colon = busid.rfind(':');
  unsigned domain = 0, bus = 0, dev = 0, func = 0;
  bool ok = dot != std::string_view::npos && last_colon != std::string_view::npos && last_colon < dot;
  if (ok) {
    std::string_view head = busid.substr(0, last_colon);
    const size_t first_colon = head.find(':');
    if (first_colon != std::string_view::npos) {
      ok = parse_hex(head.substr(0, first_colon), 8, &domain) == 0;
      head = head.substr(first_colon + 1);
    }
    ok = ok && parse_hex(head, 2, &bus) == 0 &&
         parse_hex(busid.substr(last_colon + 1, dot - last_colon - 1), 2, &dev) == 0 &&
         parse_hex(busid.substr(dot + 1), 1, &func) == 0 && dev < 32 && func < 8;
  }
  if (!ok) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "'%.*s' is not a PCI bus id ([domain:]bus:device.function, hex)",
                       static_cast<int>(in.size()), in.data());
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04x:%02x:%02x.%x", domain, bus, dev, func);
  return std::string(buf);
}

bool nic_name_less(std::string_view a, std::string_view b) {
  size_t i = 0, j = 0;
  auto digit = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; };
  while (i < a.size() && j < b.size()) {
    if (digit(a[i]) && digit(b[j])) {
      size_t ie = i, je = j;
      while (ie < a.size() && digit(a[ie])) ++ie;
      while (je < b.size() && digit(b[je])) ++je;
      // Compare the digit runs as numbers: strip leading zeros, then by length, then lexically.
      size_t is = i, js = j;
      while (is + 1 < ie && a[is] == '0') ++is;
      while (js + 1 < je && b[js] == '0') ++js;
      const std::string_view na = a.substr(is, ie - is), nb = b.substr(js, je - js);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = ie;
      j = je;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  if ((a.size() - i) != (b.size() - j)) return (a.size() - i) < (b.size() - j);
  return a < b;  // equal up to leading zeros: any fixed order
}

}  // namespace epd
