// Topology from the hand-written hwloc XML fixtures (fixtures/README.md): the
// GPUs, NICs and NUMA nodes found, the exact GPU->NIC pairs and their classes,
// the NICs' NUMA nodes and cpusets, the JSON and table output, and errors.
#include <sched.h>

#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fixture_util.h"
#include "topology.h"

namespace epd {
namespace {

using test::fixture;
using test::load;
using test::range;

// gpu bus id -> (nic, class name)
using Pairs = std::map<std::string, std::pair<std::string, std::string>>;

Pairs pairs_of(const Topology& t) {
  Pairs p;
  for (const NicChoice& c : t.pick_nics()) p[c.gpu_pci_busid] = {c.nic, locality_name(c.locality)};
  return p;
}

std::vector<std::string> gpu_ids(const Topology& t) {
  std::vector<std::string> v;
  for (const GpuInfo& g : t.gpus()) v.push_back(g.pci_busid);
  return v;
}

std::vector<std::string> nic_names(const Topology& t) {
  std::vector<std::string> v;
  for (const NicInfo& n : t.nics()) v.push_back(n.name);
  return v;
}

void expect_nic_locality(const Topology& t, const char* nic, int numa, const std::vector<int>& cpus) {
  Result<int> n = t.numa_for_nic(nic);
  ASSERT_TRUE(n) << n.status().to_string();
  EXPECT_EQ(*n, numa) << nic;
  Result<std::vector<int>> c = t.cpuset_for_nic(nic);
  ASSERT_TRUE(c) << c.status().to_string();
  EXPECT_EQ(*c, cpus) << nic;
}

TEST(TopologyFixtureTest, EightGpusEightNicsPairSwitchSiblings) {
  Topology t = load("dual_socket_8gpu_8nic.xml");
  EXPECT_FALSE(t.is_this_system());
  EXPECT_EQ(t.origin(), fixture("dual_socket_8gpu_8nic.xml"));
  // The ASPEED BMC VGA (vendor 0x1a03) is not a GPU; eno1 has no OpenFabrics device.
  EXPECT_EQ(gpu_ids(t), (std::vector<std::string>{"0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
                                                  "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"}));
  EXPECT_EQ(nic_names(t), (std::vector<std::string>{"mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "mlx5_4", "mlx5_5",
                                                    "mlx5_6", "mlx5_7"}));
  const Pairs want = {{"0000:18:00.0", {"mlx5_2", "pcie_switch"}}, {"0000:2a:00.0", {"mlx5_0", "pcie_switch"}},
                      {"0000:3a:00.0", {"mlx5_3", "pcie_switch"}}, {"0000:5d:00.0", {"mlx5_1", "pcie_switch"}},
                      {"0000:9a:00.0", {"mlx5_6", "pcie_switch"}}, {"0000:ab:00.0", {"mlx5_4", "pcie_switch"}},
                      {"0000:ba:00.0", {"mlx5_7", "pcie_switch"}}, {"0000:db:00.0", {"mlx5_5", "pcie_switch"}}};
  EXPECT_EQ(pairs_of(t), want);
  ASSERT_EQ(t.pick_nics().size(), 8u);
  EXPECT_EQ(t.pick_nics()[0].gpu_pci_busid, "0000:18:00.0");  // same order as gpus()

  for (const char* nic : {"mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"}) expect_nic_locality(t, nic, 0, range(0, 7));
  for (const char* nic : {"mlx5_4", "mlx5_5", "mlx5_6", "mlx5_7"}) expect_nic_locality(t, nic, 1, range(8, 15));

  ASSERT_EQ(t.numa_nodes().size(), 2u);
  EXPECT_EQ(t.numa_nodes()[0].os_index, 0);
  EXPECT_EQ(t.numa_nodes()[0].cpus, range(0, 7));
  EXPECT_EQ(t.numa_nodes()[0].local_memory_bytes, 68719476736u);
  EXPECT_EQ(t.numa_nodes()[1].os_index, 1);
  EXPECT_EQ(t.numa_nodes()[1].cpus, range(8, 15));

  const GpuInfo& g0 = t.gpus()[0];
  EXPECT_EQ(g0.vendor_id, 0x10de);
  EXPECT_EQ(g0.device_id, 0x2330);
  EXPECT_EQ(g0.pci_class, 0x0302);
  EXPECT_EQ(g0.os_devices, (std::vector<std::string>{"cuda0", "nvml0"}));
  EXPECT_EQ(g0.cuda_index, 0);
  EXPECT_EQ(g0.numa_nodes, std::vector<int>{0});
  EXPECT_EQ(t.gpus()[7].cuda_index, 7);
  EXPECT_EQ(t.gpus()[7].numa_nodes, std::vector<int>{1});
  EXPECT_EQ(t.gpus()[7].cpus, range(8, 15));

  const NicInfo& n0 = t.nics()[0];
  EXPECT_EQ(n0.pci_busid, "0000:29:00.0");
  EXPECT_EQ(n0.netdevs, std::vector<std::string>{"ibp41s0"});
  EXPECT_TRUE(t.notes().empty()) << t.notes().front();

  // Bus ids as NVML and CUDA spell them.
  Result<NicChoice> c = t.nic_for_gpu("00000000:9A:00.0");
  ASSERT_TRUE(c) << c.status().to_string();
  EXPECT_EQ(c->nic, "mlx5_6");
  EXPECT_EQ(c->locality, Locality::kPcieSwitch);
  Result<NicChoice> bmc = t.nic_for_gpu("0000:02:00.0");
  ASSERT_FALSE(bmc);
  EXPECT_EQ(bmc.status().code(), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(bmc.status().message().find("0000:02:00.0"), std::string::npos) << bmc.status().message();
}

TEST(TopologyFixtureTest, EightGpusFourNicsShareSwitchNic) {
  Topology t = load("dual_socket_8gpu_4nic.xml");
  EXPECT_EQ(nic_names(t), (std::vector<std::string>{"mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"}));
  const Pairs want = {{"0000:14:00.0", {"mlx5_1", "pcie_switch"}}, {"0000:15:00.0", {"mlx5_1", "pcie_switch"}},
                      {"0000:44:00.0", {"mlx5_0", "pcie_switch"}}, {"0000:45:00.0", {"mlx5_0", "pcie_switch"}},
                      {"0000:94:00.0", {"mlx5_3", "pcie_switch"}}, {"0000:95:00.0", {"mlx5_3", "pcie_switch"}},
                      {"0000:c4:00.0", {"mlx5_2", "pcie_switch"}}, {"0000:c5:00.0", {"mlx5_2", "pcie_switch"}}};
  EXPECT_EQ(pairs_of(t), want);
  expect_nic_locality(t, "mlx5_0", 0, range(0, 7));
  expect_nic_locality(t, "mlx5_1", 0, range(0, 7));
  expect_nic_locality(t, "mlx5_2", 1, range(8, 15));
  expect_nic_locality(t, "mlx5_3", 1, range(8, 15));
  EXPECT_EQ(t.nics()[0].pci_busid, "0000:46:00.0");
  EXPECT_TRUE(t.nics()[0].netdevs.empty());
}

TEST(TopologyFixtureTest, WorkstationWithoutNic) {
  Topology t = load("workstation_1gpu_no_nic.xml");
  ASSERT_EQ(t.gpus().size(), 1u);
  const GpuInfo& g = t.gpus()[0];
  EXPECT_EQ(g.pci_busid, "0000:01:00.0");
  EXPECT_EQ(g.pci_class, 0x0300);  // VGA class, no OS device: found by vendor + class alone
  EXPECT_EQ(g.device_id, 0x2684);
  EXPECT_TRUE(g.os_devices.empty());
  EXPECT_EQ(g.cuda_index, -1);
  EXPECT_EQ(g.numa_nodes, std::vector<int>{0});
  EXPECT_EQ(g.cpus, range(0, 7));
  EXPECT_TRUE(t.nics().empty());  // enp5s0 is Ethernet only
  EXPECT_TRUE(t.pick_nics().empty());
  ASSERT_EQ(t.notes().size(), 1u);
  EXPECT_NE(t.notes()[0].find("no RDMA NIC found"), std::string::npos) << t.notes()[0];

  Result<NicChoice> c = t.nic_for_gpu("0000:01:00.0");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.status().code(), EPD_ERR_UNSUPPORTED);
  Result<int> numa = t.numa_for_nic("mlx5_0");
  ASSERT_FALSE(numa);
  EXPECT_EQ(numa.status().code(), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(numa.status().message().find("'mlx5_0'"), std::string::npos) << numa.status().message();
  EXPECT_EQ(t.pin_current_thread_near("mlx5_0").code(), EPD_ERR_INVALID_ARGUMENT);

  const nlohmann::json j = t.to_json();
  EXPECT_EQ(j["gpus"].size(), 1u);
  EXPECT_TRUE(j["nics"].is_array() && j["nics"].empty());
  EXPECT_TRUE(j["pairs"].is_array() && j["pairs"].empty());
  EXPECT_EQ(j["notes"].size(), 1u);
  const std::string table = t.to_table();
  EXPECT_NE(table.find("RDMA NICs (0)"), std::string::npos) << table;
  EXPECT_NE(table.find("note: no RDMA NIC"), std::string::npos) << table;
}

TEST(TopologyFixtureTest, SplitHostBridgesGiveHostBridgeAndNumaClasses) {
  Topology t = load("dual_socket_split_host_bridges.xml");
  // GPU 21 shares only socket 0's NUMA node with mlx5_0, yet that beats the idle
  // NICs of the other socket; GPUs 91 and 92 tie on mlx5_1 / mlx5_2 and are spread.
  const Pairs want = {{"0000:11:00.0", {"mlx5_0", "host_bridge"}},
                      {"0000:21:00.0", {"mlx5_0", "numa"}},
                      {"0000:91:00.0", {"mlx5_1", "numa"}},
                      {"0000:92:00.0", {"mlx5_2", "numa"}}};
  EXPECT_EQ(pairs_of(t), want);
  expect_nic_locality(t, "mlx5_0", 0, range(0, 3));
  expect_nic_locality(t, "mlx5_1", 1, range(4, 7));
  expect_nic_locality(t, "mlx5_2", 1, range(4, 7));
}

TEST(TopologyFixtureTest, SubNumaPackageAndSystemClasses) {
  Topology t = load("snc_package_and_system.xml");
  // GPU 11 ties mlx5_0 and mlx5_1 at its host bridge, but GPU 14 shares a switch
  // with mlx5_0 only: the matching gives GPU 11 mlx5_1 (a greedy pass would not).
  const Pairs want = {{"0000:11:00.0", {"mlx5_1", "host_bridge"}},
                      {"0000:14:00.0", {"mlx5_0", "pcie_switch"}},
                      {"0000:21:00.0", {"mlx5_0", "package"}},
                      {"0000:91:00.0", {"mlx5_1", "system"}}};
  EXPECT_EQ(pairs_of(t), want);
  ASSERT_EQ(t.numa_nodes().size(), 3u);
  EXPECT_EQ(t.numa_nodes()[1].cpus, range(2, 3));
  EXPECT_EQ(t.numa_nodes()[2].cpus, range(4, 5));
  expect_nic_locality(t, "mlx5_0", 0, range(0, 1));
  expect_nic_locality(t, "mlx5_1", 0, range(0, 1));
  EXPECT_EQ(t.gpus()[2].numa_nodes, std::vector<int>{1});
  EXPECT_EQ(t.gpus()[3].cpus, range(4, 5));
}

TEST(TopologyFixtureTest, JsonAndTable) {
  Topology t = load("dual_socket_8gpu_8nic.xml");
  const nlohmann::json j = nlohmann::json::parse(t.to_json().dump());
  EXPECT_EQ(j["origin"], fixture("dual_socket_8gpu_8nic.xml"));
  EXPECT_EQ(j["this_system"], false);
  ASSERT_EQ(j["pairs"].size(), 8u);
  EXPECT_EQ(j["pairs"][0], (nlohmann::json{{"gpu", "0000:18:00.0"}, {"nic", "mlx5_2"}, {"distance", "pcie_switch"}}));
  ASSERT_EQ(j["gpus"].size(), 8u);
  EXPECT_EQ(j["gpus"][0]["pci_class"], "0x0302");
  EXPECT_EQ(j["gpus"][0]["vendor_id"], "0x10de");
  EXPECT_EQ(j["gpus"][0]["os_devices"], (nlohmann::json{"cuda0", "nvml0"}));
  EXPECT_EQ(j["gpus"][4]["cpus"], "8-15");
  ASSERT_EQ(j["nics"].size(), 8u);
  EXPECT_EQ(j["nics"][0], (nlohmann::json{{"name", "mlx5_0"}, {"pci_busid", "0000:29:00.0"}, {"netdevs", {"ibp41s0"}},
                                          {"numa_nodes", {0}}, {"cpus", "0-7"}}));
  ASSERT_EQ(j["numa_nodes"].size(), 2u);
  EXPECT_EQ(j["numa_nodes"][1]["cpus"], "8-15");
  EXPECT_TRUE(j["notes"].is_array() && j["notes"].empty());

  const std::string table = t.to_table();
  bool found = false;
  size_t pos = 0;
  while (pos < table.size()) {
    const size_t end = table.find('\n', pos);
    const std::string line = table.substr(pos, end - pos);
    if (line.find("0000:db:00.0") != std::string::npos) {
      found = true;
      EXPECT_NE(line.find("cuda7,nvml7"), std::string::npos) << line;
      EXPECT_NE(line.find("mlx5_5"), std::string::npos) << line;
      EXPECT_NE(line.find("pcie_switch"), std::string::npos) << line;
      EXPECT_NE(line.find("8-15"), std::string::npos) << line;
    }
    pos = end == std::string::npos ? table.size() : end + 1;
  }
  EXPECT_TRUE(found) << table;
  EXPECT_NE(table.find("GPUs (8)"), std::string::npos) << table;
  EXPECT_NE(table.find("(not this machine)"), std::string::npos) << table;
}

TEST(TopologyFixtureTest, PinningRefusedForAnotherMachine) {
  Topology t = load("dual_socket_8gpu_8nic.xml");
  Status s = t.pin_current_thread_near("mlx5_0");
  EXPECT_EQ(s.code(), EPD_ERR_UNSUPPORTED);
  EXPECT_NE(s.message().find("dual_socket_8gpu_8nic.xml"), std::string::npos) << s.message();
}

TEST(TopologyFixtureTest, InvalidXmlNamesTheFile) {
  const std::string path = fixture("invalid_truncated.xml");
  Result<Topology> r = Topology::load_xml_file(path);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(r.status().message().find("'" + path + "'"), std::string::npos) << r.status().message();

  for (const char* text : {"this is not XML", "<?xml version=\"1.0\"?><inventory/>", ""}) {
    Result<Topology> s = Topology::load_xml_string(text, "inline-fixture");
    ASSERT_FALSE(s) << text;
    EXPECT_EQ(s.status().code(), EPD_ERR_INVALID_ARGUMENT) << text;
    EXPECT_NE(s.status().message().find("'inline-fixture'"), std::string::npos) << s.status().message();
  }
}

TEST(TopologyFixtureTest, MissingFileNamesTheFile) {
  const std::string path = fixture("no_such_fixture.xml");
  Result<Topology> r = Topology::load_xml_file(path);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), EPD_ERR_SYSTEM);
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("No such file"), std::string::npos) << r.status().message();
}

// hwloc bitmap string with only bit `cpu` set ("0x00000004", "0x00000001,0x00000000").
std::string single_bit_mask(int cpu) {
  char word[16];
  std::snprintf(word, sizeof word, "0x%08x", 1u << (cpu % 32));
  std::string s = word;
  for (int i = 0; i < cpu / 32; ++i) s += ",0x00000000";
  return s;
}

// An XML topology of this machine's last allowed CPU with one NIC under it,
// loaded as "this system": pinning must really change the thread's affinity.
TEST(TopologyFixtureTest, PinsThreadToNicCpus) {
  cpu_set_t before;
  CPU_ZERO(&before);
  ASSERT_EQ(sched_getaffinity(0, sizeof before, &before), 0);
  if (CPU_COUNT(&before) < 2) GTEST_SKIP() << "needs at least two allowed CPUs to see a change";
  int cpu = -1;
  for (int i = 0; i < CPU_SETSIZE; ++i) {
    if (CPU_ISSET(i, &before)) cpu = i;
  }
  const std::string set = "cpuset=\"" + single_bit_mask(cpu) + "\" complete_cpuset=\"" + single_bit_mask(cpu) +
                          "\" nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\"";
  const std::string idx = std::to_string(cpu);
  const std::string xml =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE topology SYSTEM \"hwloc2.dtd\">\n"
      "<topology version=\"2.0\">\n"
      "<object type=\"Machine\" os_index=\"0\" " + set + ">\n"
      "<object type=\"Package\" os_index=\"0\" " + set + ">\n"
      "<object type=\"NUMANode\" os_index=\"0\" " + set + " local_memory=\"1073741824\"/>\n"
      "<object type=\"Core\" os_index=\"" + idx + "\" " + set + ">\n"
      "<object type=\"PU\" os_index=\"" + idx + "\" " + set + "/>\n"
      "</object>\n"
      "<object type=\"Bridge\" bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[00-01]\">\n"
      "<object type=\"Bridge\" bridge_type=\"1-1\" depth=\"1\" bridge_pci=\"0000:[01-01]\" "
      "pci_busid=\"0000:00:01.0\" pci_type=\"0604 [8086:347a] [0000:0000] 00\">\n"
      "<object type=\"PCIDev\" pci_busid=\"0000:01:00.0\" pci_type=\"0207 [15b3:1021] [15b3:0041] 00\">\n"
      "<object type=\"OSDev\" name=\"mlx5_0\" osdev_type=\"3\"/>\n"
      "</object>\n</object>\n</object>\n</object>\n</object>\n</topology>\n";
  Result<Topology> r = Topology::load_xml_string(xml, "pin-test", XmlLoadOptions{.is_this_system = true});
  ASSERT_TRUE(r) << r.status().to_string();
  ASSERT_TRUE(r->is_this_system());
  ASSERT_EQ(r->cpuset_for_nic("mlx5_0").value(), std::vector<int>{cpu});

  Status pin_status;
  cpu_set_t after;
  CPU_ZERO(&after);
  int get_rc = -1;
  std::thread th([&] {
    pin_status = r->pin_current_thread_near("mlx5_0");
    get_rc = sched_getaffinity(0, sizeof after, &after);
  });
  th.join();
  ASSERT_TRUE(pin_status.is_ok()) << pin_status.to_string();
  ASSERT_EQ(get_rc, 0);
  EXPECT_EQ(CPU_COUNT(&after), 1);
  EXPECT_TRUE(CPU_ISSET(cpu, &after)) << "cpu " << cpu;
}

}  // namespace
}  // namespace epd
