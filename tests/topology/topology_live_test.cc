// Topology of the machine the test runs on: it must load, and what it reports
// must be consistent. Exact contents depend on the machine (none of GPUs or
// NICs is required), so the table is printed for the log.
#include <cstdio>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "topology.h"

namespace epd {
namespace {

bool has_note(const Topology& t, const std::string& text) {
  for (const std::string& n : t.notes()) {
    if (n.find(text) != std::string::npos) return true;
  }
  return false;
}

TEST(TopologyLiveTest, LoadsThisMachine) {
  Result<Topology> r = Topology::load_live();
  ASSERT_TRUE(r) << r.status().to_string();
  const Topology& t = *r;
  std::printf("%s", t.to_table().c_str());
  EXPECT_EQ(t.origin(), "live");
  EXPECT_TRUE(t.is_this_system());
  ASSERT_FALSE(t.numa_nodes().empty());
  for (const NumaNodeInfo& n : t.numa_nodes()) EXPECT_FALSE(n.cpus.empty()) << "NUMA node " << n.os_index;
  EXPECT_EQ(t.pick_nics().size(), t.nics().empty() ? 0u : t.gpus().size());
  EXPECT_EQ(has_note(t, "no GPU found"), t.gpus().empty());
  EXPECT_EQ(has_note(t, "no RDMA NIC found"), t.nics().empty());
  for (const GpuInfo& g : t.gpus()) EXPECT_TRUE(normalize_pci_busid(g.pci_busid).is_ok()) << g.pci_busid;

  const nlohmann::json j = nlohmann::json::parse(t.to_json().dump());
  EXPECT_EQ(j["gpus"].size(), t.gpus().size());
  EXPECT_EQ(j["nics"].size(), t.nics().size());
  EXPECT_EQ(j["pairs"].size(), t.pick_nics().size());

  // Where there are NICs, a proxy thread can be pinned near each.
  for (const NicInfo& n : t.nics()) {
    Status s;
    std::thread th([&] { s = t.pin_current_thread_near(n.name); });
    th.join();
    EXPECT_TRUE(s.is_ok()) << s.to_string();
  }
}

}  // namespace
}  // namespace epd
