// The GPU peers section of `epctl topology` (topology_view.h): hand-made CUDA
// peer views rendered beside a hwloc fixture, no GPU needed. Expected JSON and
// text are written from the fixture's tree (fixtures/README.md) by hand.
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fixture_util.h"
#include "gpu_group.h"
#include "topology.h"
#include "topology_view.h"

namespace epd {
namespace {

using test::load;

GpuPeerView::Link link(int32_t from, int32_t to, bool access, bool atomics, int32_t rank) {
  GpuPeerView::Link l;
  l.from = from;
  l.to = to;
  l.access = access;
  l.native_atomics = atomics;
  l.performance_rank = rank;
  return l;
}

// dual_socket_8gpu_4nic.xml: 14 and 15 share a switch, 44 is on the other
// host bridge of package 0, c4 on package 1. Bus ids as CUDA and NVML write
// them (upper case, 8-digit domain). 2 -> 3 has access, 3 -> 2 has not.
GpuPeerView four_gpu_view() {
  GpuPeerView v;
  v.devices = {{0, "0000:14:00.0"}, {1, "0000:15:00.0"}, {2, "00000000:44:00.0"}, {3, "0000:C4:00.0"}};
  v.links = {link(0, 1, true, true, 0),   link(0, 2, true, false, 1),  link(0, 3, false, false, -1),
             link(1, 0, true, true, 0),   link(1, 2, true, false, 1),  link(1, 3, false, false, -1),
             link(2, 0, true, false, 1),  link(2, 1, true, false, 1),  link(2, 3, true, false, 2),
             link(3, 0, false, false, -1), link(3, 1, false, false, -1), link(3, 2, false, false, -1)};
  return v;
}

// (from, to) -> (access, native_atomics, performance_rank, link, pcie_locality or "null")
using LinkRows = std::map<std::pair<int, int>, std::tuple<bool, bool, int, std::string, std::string>>;

LinkRows link_rows(const nlohmann::json& j) {
  LinkRows rows;
  for (const nlohmann::json& l : j.at("links")) {
    const nlohmann::json& loc = l.at("pcie_locality");
    const auto key = std::make_pair(l.at("from").get<int>(), l.at("to").get<int>());
    EXPECT_EQ(rows.count(key), 0u) << "link listed twice: " << l.dump();
    rows[key] = {l.at("access").get<bool>(), l.at("native_atomics").get<bool>(), l.at("performance_rank").get<int>(),
                 l.at("link").get<std::string>(), loc.is_null() ? "null" : loc.get<std::string>()};
  }
  return rows;
}

TEST(GpuPeersViewTest, JsonBesideTheFixture) {
  Topology t = load("dual_socket_8gpu_4nic.xml");
  const nlohmann::json j = gpu_peers_json(four_gpu_view(), &t);
  EXPECT_EQ(j.at("available"), true);
  EXPECT_FALSE(j.contains("reason")) << j.dump();
  const nlohmann::json devices = nlohmann::json::array({{{"index", 0}, {"pci_busid", "0000:14:00.0"}},
                                                        {{"index", 1}, {"pci_busid", "0000:15:00.0"}},
                                                        {{"index", 2}, {"pci_busid", "0000:44:00.0"}},
                                                        {{"index", 3}, {"pci_busid", "0000:c4:00.0"}}});
  EXPECT_EQ(j.at("devices"), devices) << j.dump();
  const LinkRows want = {
      {{0, 1}, {true, true, 0, "nvlink", "pcie_switch"}},   {{1, 0}, {true, true, 0, "nvlink", "pcie_switch"}},
      {{0, 2}, {true, false, 1, "pcie", "numa"}},           {{2, 0}, {true, false, 1, "pcie", "numa"}},
      {{1, 2}, {true, false, 1, "pcie", "numa"}},           {{2, 1}, {true, false, 1, "pcie", "numa"}},
      {{0, 3}, {false, false, -1, "none", "system"}},       {{3, 0}, {false, false, -1, "none", "system"}},
      {{1, 3}, {false, false, -1, "none", "system"}},       {{3, 1}, {false, false, -1, "none", "system"}},
      {{2, 3}, {true, false, 2, "pcie", "system"}},         {{3, 2}, {false, false, -1, "none", "system"}},
  };
  EXPECT_EQ(link_rows(j), want) << j.dump();
  for (const nlohmann::json& l : j.at("links")) EXPECT_EQ(l.size(), 7u) << l.dump();
}

TEST(GpuPeersViewTest, TextBesideTheFixture) {
  Topology t = load("dual_socket_8gpu_4nic.xml");
  const std::string want =
      "GPU peers (CUDA):  pci_busid     GPU0    GPU1    GPU2  GPU3\n"
      "  GPU0             0000:14:00.0  -       nvlink  pcie  none\n"
      "  GPU1             0000:15:00.0  nvlink  -       pcie  none\n"
      "  GPU2             0000:44:00.0  pcie    pcie    -     pcie\n"
      "  GPU3             0000:c4:00.0  none    none    none  -\n"
      "  GPU0 <-> GPU2: pcie, performance rank 1; PCIe path numa: through the CPU, between host bridges of one NUMA "
      "node\n"
      "  GPU0 <-> GPU3: none; PCIe path system: across the CPU interconnect, between sockets\n"
      "  GPU1 <-> GPU2: pcie, performance rank 1; PCIe path numa: through the CPU, between host bridges of one NUMA "
      "node\n"
      "  GPU1 <-> GPU3: none; PCIe path system: across the CPU interconnect, between sockets\n"
      "  GPU2 -> GPU3: pcie, performance rank 2; PCIe path system: across the CPU interconnect, between sockets\n"
      "  GPU3 -> GPU2: none; PCIe path system: across the CPU interconnect, between sockets\n";
  EXPECT_EQ(gpu_peers_text(four_gpu_view(), &t), want);
}

TEST(GpuPeersViewTest, WithoutHwlocThereIsNoPciePath) {
  const nlohmann::json j = gpu_peers_json(four_gpu_view(), nullptr);
  EXPECT_EQ(j.at("available"), true);
  ASSERT_EQ(j.at("links").size(), 12u);
  for (const nlohmann::json& l : j.at("links")) EXPECT_TRUE(l.at("pcie_locality").is_null()) << l.dump();
  EXPECT_EQ(link_rows(j).at({2, 3}), std::make_tuple(true, false, 2, std::string("pcie"), std::string("null")));
  EXPECT_EQ(link_rows(j).at({0, 1}), std::make_tuple(true, true, 0, std::string("nvlink"), std::string("null")));
  const std::string want =
      "GPU peers (CUDA):  pci_busid     GPU0    GPU1    GPU2  GPU3\n"
      "  GPU0             0000:14:00.0  -       nvlink  pcie  none\n"
      "  GPU1             0000:15:00.0  nvlink  -       pcie  none\n"
      "  GPU2             0000:44:00.0  pcie    pcie    -     pcie\n"
      "  GPU3             0000:c4:00.0  none    none    none  -\n"
      "  GPU0 <-> GPU2: pcie, performance rank 1\n"
      "  GPU0 <-> GPU3: none\n"
      "  GPU1 <-> GPU2: pcie, performance rank 1\n"
      "  GPU1 <-> GPU3: none\n"
      "  GPU2 -> GPU3: pcie, performance rank 2\n"
      "  GPU3 -> GPU2: none\n";
  EXPECT_EQ(gpu_peers_text(four_gpu_view(), nullptr), want);
}

TEST(GpuPeersViewTest, NoAccessBelowOneSwitchAndAGpuHwlocLacks) {
  Topology t = load("dual_socket_8gpu_4nic.xml");
  GpuPeerView v;
  v.devices = {{0, "0000:14:00.0"}, {1, "0000:15:00.0"}, {2, "0000:E1:00.0"}};  // e1: not in the fixture
  for (int32_t a = 0; a < 3; ++a)
    for (int32_t b = 0; b < 3; ++b)
      if (a != b) v.links.push_back(link(a, b, false, false, -1));
  const LinkRows want = {
      {{0, 1}, {false, false, -1, "none", "pcie_switch"}}, {{1, 0}, {false, false, -1, "none", "pcie_switch"}},
      {{0, 2}, {false, false, -1, "none", "null"}},        {{2, 0}, {false, false, -1, "none", "null"}},
      {{1, 2}, {false, false, -1, "none", "null"}},        {{2, 1}, {false, false, -1, "none", "null"}},
  };
  EXPECT_EQ(link_rows(gpu_peers_json(v, &t)), want);
  const std::string text =
      "GPU peers (CUDA):  pci_busid     GPU0  GPU1  GPU2\n"
      "  GPU0             0000:14:00.0  -     none  none\n"
      "  GPU1             0000:15:00.0  none  -     none\n"
      "  GPU2             0000:e1:00.0  none  none  -\n"
      "  GPU0 <-> GPU1: none; PCIe path pcie_switch: below a shared PCIe switch; peer-to-peer may be turned off "
      "(PCIe ACS, the IOMMU, or the driver)\n"
      "  GPU0 <-> GPU2: none\n"
      "  GPU1 <-> GPU2: none\n"
      "  GPU2 (0000:e1:00.0) is not in hwloc's topology: PCIe path unknown\n";
  EXPECT_EQ(gpu_peers_text(v, &t), text);
}

TEST(GpuPeersViewTest, UnavailableSaysWhy) {
  const std::string why = "no usable CUDA driver or device: libcuda.so.1: cannot open shared object file";
  const Result<GpuPeerView> none = make_status(EPD_ERR_GPU_UNAVAILABLE, "%s", why.c_str());
  const nlohmann::json want = {{"available", false},
                               {"reason", why},
                               {"devices", nlohmann::json::array()},
                               {"links", nlohmann::json::array()}};
  Topology t = load("dual_socket_8gpu_4nic.xml");
  EXPECT_EQ(gpu_peers_json(none, &t), want);
  EXPECT_EQ(gpu_peers_json(none, nullptr), want);
  EXPECT_EQ(gpu_peers_text(none, &t), "GPU peers (CUDA): unavailable: " + why + "\n");
  EXPECT_EQ(gpu_peers_summary(none), "GPU peers: unavailable: " + why);
}

TEST(GpuPeersViewTest, Summary) {
  EXPECT_EQ(gpu_peers_summary(four_gpu_view()),
            "GPU peers: 0<->1 nvlink, 0<->2 pcie, 0<->3 none, 1<->2 pcie, 1<->3 none, 2->3 pcie, 3->2 none");
  GpuPeerView one;
  one.devices = {{0, "0000:14:00.0"}};
  EXPECT_EQ(gpu_peers_summary(one), "GPU peers: 1 GPU, no pairs");
  EXPECT_EQ(gpu_peers_summary(GpuPeerView{}), "GPU peers: no GPU");
  EXPECT_EQ(gpu_peers_text(GpuPeerView{}, nullptr), "GPU peers (CUDA): no GPU\n");

  // An HGX board: eight GPUs, NVLink between every pair.
  GpuPeerView hgx;
  for (int32_t d = 0; d < 8; ++d) hgx.devices.push_back({d, "0000:0" + std::to_string(d) + ":00.0"});
  for (int32_t a = 0; a < 8; ++a)
    for (int32_t b = 0; b < 8; ++b)
      if (a != b) hgx.links.push_back(link(a, b, true, true, 0));
  EXPECT_EQ(gpu_peers_summary(hgx), "GPU peers: 8 GPUs, every pair nvlink");
  // One pair missing from CUDA's answer: not "every pair".
  hgx.links.pop_back();
  const std::string partial = gpu_peers_summary(hgx);
  EXPECT_EQ(partial.find("every pair"), std::string::npos) << partial;
  EXPECT_NE(partial.find("6->7 nvlink"), std::string::npos) << partial;
  EXPECT_EQ(partial.find("7->6"), std::string::npos) << partial;
}

// Random facts on the fixture's GPUs: every link's class follows the rule
// (written out here, not taken from classify_gpu_link) and the matrix cell
// of (from, to) shows it.
TEST(GpuPeersViewTest, RandomFactsMatchTheRuleInJsonAndMatrix) {
  const std::vector<std::string> ids = {"0000:14:00.0", "0000:15:00.0", "0000:44:00.0", "0000:45:00.0",
                                        "0000:94:00.0", "0000:95:00.0", "0000:c4:00.0", "0000:c5:00.0"};
  Topology t = load("dual_socket_8gpu_4nic.xml");
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int round = 0; round < 20; ++round) {
    const int n = 2 + static_cast<int>(rng() % 7);  // 2..8 GPUs
    GpuPeerView v;
    for (int d = 0; d < n; ++d) v.devices.push_back({d, ids[static_cast<size_t>(d)]});
    std::map<std::pair<int, int>, std::string> want;
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b) {
        if (a == b) continue;
        const bool access = rng() % 2 == 0, atomics = rng() % 2 == 0;
        v.links.push_back(link(a, b, access, atomics, access ? static_cast<int32_t>(rng() % 3) : -1));
        want[{a, b}] = !access ? "none" : atomics ? "nvlink" : "pcie";
      }
    const nlohmann::json j = gpu_peers_json(v, &t);
    ASSERT_EQ(j.at("links").size(), want.size());
    for (const nlohmann::json& l : j.at("links")) {
      EXPECT_EQ(l.at("link"), want.at({l.at("from").get<int>(), l.at("to").get<int>()})) << l.dump();
    }
    // Matrix rows are lines 1..n: label, bus id, then one cell per column.
    std::istringstream lines(gpu_peers_text(v, &t));
    std::vector<std::vector<std::string>> cells;
    std::string line;
    for (int i = 0; i <= n && std::getline(lines, line); ++i) {
      std::istringstream words(line);
      cells.emplace_back();
      for (std::string w; words >> w;) cells.back().push_back(w);
    }
    const std::string text = lines.str();
    ASSERT_EQ(cells.size(), static_cast<size_t>(n) + 1) << text;
    for (int a = 0; a < n; ++a) {
      const std::vector<std::string>& row = cells[static_cast<size_t>(a) + 1];
      ASSERT_EQ(row.size(), static_cast<size_t>(n) + 2) << text;
      EXPECT_EQ(row[0], "GPU" + std::to_string(a)) << text;
      EXPECT_EQ(row[1], ids[static_cast<size_t>(a)]) << text;
      for (int b = 0; b < n; ++b) {
        EXPECT_EQ(row[static_cast<size_t>(b) + 2], a == b ? "-" : want.at({a, b})) << text;
      }
    }
  }
}

}  // namespace
}  // namespace epd
