// The link between two GPUs: classify_gpu_link() over every combination of
// CUDA's facts and hwloc's locality, and Topology::gpu_pair_locality() on the
// hand-written fixtures (fixtures/README.md), expected classes read off the XML.
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "fixture_util.h"
#include "topology.h"

namespace epd {
namespace {

using test::load;

constexpr const char* kHint = "peer-to-peer may be turned off (PCIe ACS, the IOMMU, or the driver)";

TEST(GpuLinkTest, Names) {
  EXPECT_STREQ(gpu_link_name(GpuLink::kNone), "none");
  EXPECT_STREQ(gpu_link_name(GpuLink::kPcie), "pcie");
  EXPECT_STREQ(gpu_link_name(GpuLink::kNvlink), "nvlink");
}

TEST(GpuLinkTest, AccessWithNativeAtomicsIsNvlinkWhateverThePciePath) {
  const std::vector<std::optional<Locality>> paths = {std::nullopt,      Locality::kPcieSwitch, Locality::kHostBridge,
                                                      Locality::kNuma,   Locality::kPackage,    Locality::kSystem};
  for (const std::optional<Locality>& path : paths) {
    const GpuLinkClass c = classify_gpu_link(true, true, path);
    EXPECT_EQ(c.link, GpuLink::kNvlink) << (path ? locality_name(*path) : "no locality");
    EXPECT_EQ(c.pcie_locality, path);
    EXPECT_EQ(c.note, "");
  }
}

TEST(GpuLinkTest, AccessWithoutNativeAtomicsIsPcieWithItsPath) {
  struct Case {
    Locality path;
    const char* note;
  };
  const Case cases[] = {
      {Locality::kPcieSwitch, "PCIe path pcie_switch: below a shared PCIe switch"},
      {Locality::kHostBridge, "PCIe path host_bridge: through one host bridge (root complex)"},
      {Locality::kNuma, "PCIe path numa: through the CPU, between host bridges of one NUMA node"},
      {Locality::kPackage, "PCIe path package: through the CPU, between NUMA nodes of one socket"},
      {Locality::kSystem, "PCIe path system: across the CPU interconnect, between sockets"},
  };
  for (const Case& k : cases) {
    const GpuLinkClass c = classify_gpu_link(true, false, k.path);
    EXPECT_EQ(c.link, GpuLink::kPcie) << k.note;
    ASSERT_TRUE(c.pcie_locality.has_value()) << k.note;
    EXPECT_EQ(*c.pcie_locality, k.path);
    EXPECT_EQ(c.note, k.note);
  }
  const GpuLinkClass unknown = classify_gpu_link(true, false, std::nullopt);
  EXPECT_EQ(unknown.link, GpuLink::kPcie);
  EXPECT_FALSE(unknown.pcie_locality.has_value());
  EXPECT_EQ(unknown.note, "");
}

TEST(GpuLinkTest, NoAccessIsNoneAndHintsWhenThePathIsBelowOneHostBridge) {
  // Below one host bridge nothing but a setting stops peer-to-peer: say so.
  EXPECT_EQ(classify_gpu_link(false, false, Locality::kPcieSwitch).note,
            std::string("PCIe path pcie_switch: below a shared PCIe switch; ") + kHint);
  EXPECT_EQ(classify_gpu_link(false, false, Locality::kHostBridge).note,
            std::string("PCIe path host_bridge: through one host bridge (root complex); ") + kHint);
  // Through the CPU the platform usually is the reason: the path, no hint.
  EXPECT_EQ(classify_gpu_link(false, false, Locality::kNuma).note,
            "PCIe path numa: through the CPU, between host bridges of one NUMA node");
  EXPECT_EQ(classify_gpu_link(false, false, Locality::kPackage).note,
            "PCIe path package: through the CPU, between NUMA nodes of one socket");
  EXPECT_EQ(classify_gpu_link(false, false, Locality::kSystem).note,
            "PCIe path system: across the CPU interconnect, between sockets");
  for (Locality path : {Locality::kPcieSwitch, Locality::kHostBridge, Locality::kNuma, Locality::kPackage,
                        Locality::kSystem}) {
    const GpuLinkClass c = classify_gpu_link(false, false, path);
    EXPECT_EQ(c.link, GpuLink::kNone) << locality_name(path);
    EXPECT_EQ(c.pcie_locality, std::optional<Locality>(path));
  }
  const GpuLinkClass unknown = classify_gpu_link(false, false, std::nullopt);
  EXPECT_EQ(unknown.link, GpuLink::kNone);
  EXPECT_EQ(unknown.note, "");
}

TEST(GpuLinkTest, NativeAtomicsWithoutAccessIsNone) {
  const GpuLinkClass c = classify_gpu_link(false, true, Locality::kNuma);
  EXPECT_EQ(c.link, GpuLink::kNone);
  EXPECT_EQ(c.note, "PCIe path numa: through the CPU, between host bridges of one NUMA node");
}

// Both orders, which must agree.
void expect_pair(const Topology& t, const char* a, const char* b, Locality want) {
  for (const auto& [x, y] : {std::pair{a, b}, std::pair{b, a}}) {
    Result<Locality> l = t.gpu_pair_locality(x, y);
    ASSERT_TRUE(l) << x << " / " << y << ": " << l.status().to_string();
    EXPECT_EQ(l.value(), want) << x << " / " << y << ": got " << locality_name(l.value()) << ", want "
                               << locality_name(want);
  }
}

TEST(GpuPairLocalityTest, FourNicFixture) {
  // Per socket two switches (root port -> upstream port -> downstream ports),
  // each with two GPUs; each switch under its own host bridge.
  Topology t = load("dual_socket_8gpu_4nic.xml");
  expect_pair(t, "0000:14:00.0", "0000:15:00.0", Locality::kPcieSwitch);
  expect_pair(t, "0000:44:00.0", "0000:45:00.0", Locality::kPcieSwitch);
  expect_pair(t, "0000:c4:00.0", "0000:c5:00.0", Locality::kPcieSwitch);
  expect_pair(t, "0000:14:00.0", "0000:44:00.0", Locality::kNuma);  // two host bridges of package 0
  expect_pair(t, "0000:95:00.0", "0000:c4:00.0", Locality::kNuma);  // two host bridges of package 1
  expect_pair(t, "0000:14:00.0", "0000:94:00.0", Locality::kSystem);
  expect_pair(t, "0000:45:00.0", "0000:c5:00.0", Locality::kSystem);
}

TEST(GpuPairLocalityTest, RootPortsOfOneHostBridge) {
  Topology t = load("dual_socket_split_host_bridges.xml");
  expect_pair(t, "0000:91:00.0", "0000:92:00.0", Locality::kHostBridge);
  expect_pair(t, "0000:11:00.0", "0000:21:00.0", Locality::kNuma);
  expect_pair(t, "0000:11:00.0", "0000:92:00.0", Locality::kSystem);
}

TEST(GpuPairLocalityTest, SubNumaClusters) {
  // Package 0 = Group 0 (NUMA 0: GPUs 11 and 14 under one host bridge, 14
  // behind a switch) + Group 1 (NUMA 1: GPU 21); package 1: GPU 91.
  Topology t = load("snc_package_and_system.xml");
  expect_pair(t, "0000:11:00.0", "0000:14:00.0", Locality::kHostBridge);
  expect_pair(t, "0000:11:00.0", "0000:21:00.0", Locality::kPackage);
  expect_pair(t, "0000:14:00.0", "0000:21:00.0", Locality::kPackage);
  expect_pair(t, "0000:21:00.0", "0000:91:00.0", Locality::kSystem);
  expect_pair(t, "0000:11:00.0", "0000:91:00.0", Locality::kSystem);
}

TEST(GpuPairLocalityTest, BusIdsInCudaAndNvmlSpelling) {
  Topology t = load("dual_socket_8gpu_4nic.xml");
  // NVML's 8-digit domain, CUDA's upper case, no domain.
  expect_pair(t, "00000000:14:00.0", "15:00.0", Locality::kPcieSwitch);
  expect_pair(t, "0000:C4:00.0", "0000:C5:00.0", Locality::kPcieSwitch);
  expect_pair(t, "0000:C5:00.0", "00000000:15:00.0", Locality::kSystem);
}

TEST(GpuPairLocalityTest, Errors) {
  Topology t = load("dual_socket_8gpu_4nic.xml");
  struct Case {
    const char* a;
    const char* b;
    const char* named;  // the message names this
  };
  const Case cases[] = {
      {"0000:14:00.0", "0000:99:00.0", "0000:99:00.0"},  // no such device
      {"0000:16:00.0", "0000:14:00.0", "0000:16:00.0"},  // mlx5_1: a NIC, not a GPU
      {"0000:14:00.0", "not-a-bus-id", "not-a-bus-id"},
      {"0000:14:00.0", "14:00.0", "0000:14:00.0"},  // one GPU twice
  };
  for (const Case& k : cases) {
    Result<Locality> l = t.gpu_pair_locality(k.a, k.b);
    ASSERT_FALSE(l) << k.a << " / " << k.b;
    EXPECT_EQ(l.status().code(), EPD_ERR_INVALID_ARGUMENT) << l.status().to_string();
    EXPECT_NE(l.status().message().find(k.named), std::string::npos) << l.status().to_string();
  }
}

}  // namespace
}  // namespace epd
