// Proxy thread placement from the hwloc XML fixtures (fixtures/README.md): each
// GPU's proxy goes to the NUMA node of the NIC chosen for it and gets that
// node's CPUs; a transport's proxy (no GPU) goes near the NIC named by its
// OpenFabrics name or one of its network interfaces, and is left unpinned,
// with the reason, when that device is unknown. Also the JSON and table rows.
#include <map>
#include <sstream>
#include <string>
#include <tuple>
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

// gpu -> (nic, numa node, cpus), written out from fixtures/README.md.
using Want = std::map<std::string, std::tuple<std::string, int, std::vector<int>>>;

void expect_gpu_proxies(const Topology& t, const Want& want) {
  ASSERT_EQ(t.gpus().size(), want.size());
  for (const auto& [gpu, w] : want) {
    SCOPED_TRACE(gpu);
    Result<ProxyPlacement> p = t.proxy_for_gpu(gpu);
    ASSERT_TRUE(p) << p.status().to_string();
    EXPECT_EQ(p->gpu_pci_busid, gpu);
    EXPECT_EQ(p->nic, std::get<0>(w));
    EXPECT_EQ(p->numa_node, std::get<1>(w));
    EXPECT_EQ(p->cpus, std::get<2>(w));
    EXPECT_TRUE(p->pinned());
    EXPECT_NE(p->reason.find("NUMA node " + std::to_string(std::get<1>(w)) + " of RDMA NIC " + std::get<0>(w)),
              std::string::npos)
        << p->reason;
  }
  // gpu_proxies(): the same, one per pick_nics() entry, in its order.
  const std::vector<ProxyPlacement> all = t.gpu_proxies();
  ASSERT_EQ(all.size(), t.pick_nics().size());
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].gpu_pci_busid, t.pick_nics()[i].gpu_pci_busid);
    EXPECT_EQ(all[i].nic, t.pick_nics()[i].nic);
    EXPECT_EQ(all[i].cpus, std::get<2>(want.at(all[i].gpu_pci_busid)));
  }
}

TEST(ProxyPlacementTest, EightGpusEightNicsProxiesOnTheirNicsSocket) {
  const Topology t = load("dual_socket_8gpu_8nic.xml");
  const std::vector<int> s0 = range(0, 7), s1 = range(8, 15);
  expect_gpu_proxies(t, {{"0000:18:00.0", {"mlx5_2", 0, s0}},
                         {"0000:2a:00.0", {"mlx5_0", 0, s0}},
                         {"0000:3a:00.0", {"mlx5_3", 0, s0}},
                         {"0000:5d:00.0", {"mlx5_1", 0, s0}},
                         {"0000:9a:00.0", {"mlx5_6", 1, s1}},
                         {"0000:ab:00.0", {"mlx5_4", 1, s1}},
                         {"0000:ba:00.0", {"mlx5_7", 1, s1}},
                         {"0000:db:00.0", {"mlx5_5", 1, s1}}});
  // The bus id in NVML's form and upper case is the same GPU.
  Result<ProxyPlacement> p = t.proxy_for_gpu("00000000:DB:00.0");
  ASSERT_TRUE(p) << p.status().to_string();
  EXPECT_EQ(p->cpus, s1);
}

TEST(ProxyPlacementTest, FourNicsSharedBySwitchPairs) {
  const Topology t = load("dual_socket_8gpu_4nic.xml");
  const std::vector<int> s0 = range(0, 7), s1 = range(8, 15);
  expect_gpu_proxies(t, {{"0000:14:00.0", {"mlx5_1", 0, s0}},
                         {"0000:15:00.0", {"mlx5_1", 0, s0}},
                         {"0000:44:00.0", {"mlx5_0", 0, s0}},
                         {"0000:45:00.0", {"mlx5_0", 0, s0}},
                         {"0000:94:00.0", {"mlx5_3", 1, s1}},
                         {"0000:95:00.0", {"mlx5_3", 1, s1}},
                         {"0000:c4:00.0", {"mlx5_2", 1, s1}},
                         {"0000:c5:00.0", {"mlx5_2", 1, s1}}});
}

// The proxy follows the NIC, not the GPU: GPU 21 sits on NUMA node 1 and GPU
// 91 on package 1, but their NICs hang off NUMA node 0 (CPUs 0-1).
TEST(ProxyPlacementTest, SubNumaProxyFollowsTheNicNotTheGpu) {
  const Topology t = load("snc_package_and_system.xml");
  const std::vector<int> n0 = range(0, 1);
  expect_gpu_proxies(t, {{"0000:11:00.0", {"mlx5_1", 0, n0}},
                         {"0000:14:00.0", {"mlx5_0", 0, n0}},
                         {"0000:21:00.0", {"mlx5_0", 0, n0}},
                         {"0000:91:00.0", {"mlx5_1", 0, n0}}});
  EXPECT_NE(t.proxy_for_gpu("0000:91:00.0")->reason.find("(system)"), std::string::npos);
}

TEST(ProxyPlacementTest, TransportProxyByNicNameOrInterface) {
  const Topology t = load("dual_socket_8gpu_8nic.xml");
  const ProxyPlacement by_name = t.proxy_for_device("mlx5_5");
  EXPECT_EQ(by_name.nic, "mlx5_5");
  EXPECT_EQ(by_name.numa_node, 1);
  EXPECT_EQ(by_name.cpus, range(8, 15));
  EXPECT_TRUE(by_name.gpu_pci_busid.empty());
  // ibp41s0 is mlx5_0's interface (socket 0), as the listen address's device would be.
  const ProxyPlacement by_netdev = t.proxy_for_device("ibp41s0");
  EXPECT_EQ(by_netdev.nic, "mlx5_0");
  EXPECT_EQ(by_netdev.numa_node, 0);
  EXPECT_EQ(by_netdev.cpus, range(0, 7));
  EXPECT_NE(by_netdev.reason.find("interface ibp41s0"), std::string::npos) << by_netdev.reason;
}

TEST(ProxyPlacementTest, UnknownDeviceIsNotPinnedAndSaysWhy) {
  const Topology t = load("dual_socket_8gpu_8nic.xml");
  // eno1 is an Ethernet-only port of the fixture; lo is not in it at all.
  for (const char* dev : {"eno1", "lo"}) {
    const ProxyPlacement p = t.proxy_for_device(dev);
    EXPECT_FALSE(p.pinned()) << dev;
    EXPECT_EQ(p.numa_node, -1) << dev;
    EXPECT_TRUE(p.nic.empty()) << dev;
    EXPECT_NE(p.reason.find(std::string("'") + dev + "' is not an RDMA NIC"), std::string::npos) << p.reason;
    EXPECT_NE(p.reason.find("not pinned"), std::string::npos) << p.reason;
  }
  const ProxyPlacement none = t.proxy_for_device("");
  EXPECT_FALSE(none.pinned());
  EXPECT_NE(none.reason.find("not known"), std::string::npos) << none.reason;
}

TEST(ProxyPlacementTest, NoNicNoProxyPlacement) {
  const Topology t = load("workstation_1gpu_no_nic.xml");
  Result<ProxyPlacement> p = t.proxy_for_gpu("0000:01:00.0");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.status().code(), EPD_ERR_UNSUPPORTED);
  EXPECT_TRUE(t.gpu_proxies().empty());
  EXPECT_FALSE(t.proxy_for_device("mlx5_0").pinned());
  EXPECT_TRUE(t.to_json()["proxies"].empty());
  EXPECT_NE(t.to_table().find("proxy cpus"), std::string::npos) << t.to_table();
}

TEST(ProxyPlacementTest, UnknownGpuIsAnError) {
  const Topology t = load("dual_socket_8gpu_8nic.xml");
  Result<ProxyPlacement> p = t.proxy_for_gpu("0000:77:00.0");
  ASSERT_FALSE(p);
  EXPECT_EQ(p.status().code(), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(p.status().message().find("0000:77:00.0"), std::string::npos) << p.status().message();
}

TEST(ProxyPlacementTest, JsonAndTableShowTheProxies) {
  const Topology t = load("dual_socket_8gpu_8nic.xml");
  const nlohmann::json j = nlohmann::json::parse(t.to_json().dump());
  ASSERT_EQ(j["proxies"].size(), 8u);
  EXPECT_EQ(j["proxies"][4],
            (nlohmann::json{{"gpu", "0000:9a:00.0"}, {"nic", "mlx5_6"}, {"numa_node", 1}, {"cpus", "8-15"}}));
  EXPECT_EQ(j["proxies"][0]["cpus"], "0-7");
  // GPU 2a (socket 0, CPUs 0-7) uses mlx5_0: its row ends with the proxy's NUMA node and CPUs.
  const std::string table = t.to_table();
  ASSERT_NE(table.find("proxy numa  proxy cpus"), std::string::npos) << table;
  const size_t row = table.find("0000:2a:00.0");
  ASSERT_NE(row, std::string::npos) << table;
  const std::string line = table.substr(row, table.find('\n', row) - row);
  EXPECT_NE(line.find("mlx5_0"), std::string::npos) << line;
  std::vector<std::string> cells;
  std::istringstream in(line);
  for (std::string cell; in >> cell;) cells.push_back(cell);
  ASSERT_GE(cells.size(), 2u) << line;
  EXPECT_EQ(cells[cells.size() - 2], "0") << line;
  EXPECT_EQ(cells.back(), "0-7") << line;
}

}  // namespace
}  // namespace epd
