// leak_test.cc — issue 14, finding 5 (leaks): creating and destroying 1000
// groups must leave the daemon's address space where it was. Host groups on
// one daemon, and groups spanning two nodes (two real `epd`, one per network
// namespace, tests/multinode/netns_cluster.h; skipped with the reason where
// namespaces cannot be made). After a warm-up, the daemon's mappings
// (/proc/<pid>/maps lines) and VmSize are read; 1000 more cycles may add only
// a small, fixed number of mappings, never one per group. Each group's
// workspace is 64 MiB or more, so a leaked one shows in VmSize at once.
// Clients are in-process (libepd-client) on threads, one per node; the
// daemons are ended by pid. Label: security.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "epd/epd.h"
#include "harness.h"
#include "netns_cluster.h"

namespace epd::test {
namespace {

constexpr int kCycles = 1000;
constexpr int kWarmup = 20;
// A few mappings may appear once (malloc arenas, thread stacks kept in
// glibc's cache); one per cycle would be 1000.
constexpr long kMaxNewMappings = 48;
// glibc may reserve a 64 MiB arena per thread it sees (8 per core at most);
// a leaked workspace is >= 64 MiB per cycle, 64 GiB over the run.
constexpr long long kMaxVmGrowthKiB = 4LL << 20;  // 4 GiB

struct AddressSpace {
  long mappings = -1;
  long long vm_kib = -1;
};

AddressSpace address_space(int pid) {
  AddressSpace a;
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  if (maps) a.mappings = 0;
  while (std::getline(maps, line)) ++a.mappings;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  while (std::getline(status, line))
    if (line.rfind("VmSize:", 0) == 0) a.vm_kib = std::atoll(line.c_str() + 7);
  return a;
}

// A spec whose workspace is large (hidden 8192 fp32, 256 tokens, 2 slots:
// tens of MiB per rank), so a leaked mapping is unmistakable.
epd_group_spec_t big_spec(const std::string& name, int32_t world, int32_t rank,
                          const std::vector<epd_placement_t>* placement) {
  epd_group_spec_t s = small_spec(name.c_str(), world, rank, 20000);
  s.hidden = 8192;
  s.max_tokens_per_rank = 256;
  s.placement = placement ? placement->data() : nullptr;
  return s;
}

// One host-executor step on slot 0 (every rank of the group calls it); "" or what failed.
std::string step(epd_group_t* g, int32_t tokens) {
  std::vector<float> x(static_cast<size_t>(tokens) * 8192, 0.5f);
  std::vector<int32_t> ids(static_cast<size_t>(tokens) * 2);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i % 4);
  std::vector<float> w(ids.size(), 1.0f);
  epd_dispatch_args_t a{sizeof a, x.data(), ids.data(), EPD_ID_INT32, w.data(), tokens};
  epd_dispatch_result_t r{};
  r.struct_size = sizeof r;
  const void* out = nullptr;
  if (epd_group_dispatch(g, 0, &a) != EPD_OK || epd_group_dispatch_wait(g, 0, 20000, &r) != EPD_OK ||
      epd_group_combine(g, 0, EPD_WEIGHTS_ONES) != EPD_OK || epd_group_combine_wait(g, 0, 20000, &out) != EPD_OK)
    return epd_group_last_error(g);
  return "";
}

// Cycles [from, to): rank `rank` of world `world` joins "<prefix>-<i>", runs a
// step, leaves. Returns "" or what failed.
std::string cycles(const std::string& socket, const std::string& prefix, int from, int to, int32_t world,
                   int32_t rank, const std::vector<epd_placement_t>* placement) {
  epd_client_t* c = nullptr;
  if (epd_client_connect(socket.c_str(), &c) != EPD_OK) return std::string("connect: ") + epd_client_last_error(nullptr);
  std::string err;
  for (int i = from; i < to && err.empty(); ++i) {
    const epd_group_spec_t s = big_spec(prefix + "-" + std::to_string(i), world, rank, placement);
    epd_group_t* g = nullptr;
    if (epd_group_join(c, &s, &g) != EPD_OK) {
      err = "cycle " + std::to_string(i) + ": join: " + epd_client_last_error(c);
      break;
    }
    // A step every cycle: both ranks' joins are complete before either leaves
    // (a join may complete on one node before the other has seen it).
    if (const std::string e = step(g, i % 50 == 0 ? 4 + rank : 1); !e.empty())
      err = "cycle " + std::to_string(i) + ": step: " + e;
    if (epd_group_leave(g) != EPD_OK) err = "cycle " + std::to_string(i) + ": leave failed";
  }
  epd_client_disconnect(c);
  return err;
}

::testing::AssertionResult bounded(const AddressSpace& before, const AddressSpace& after, const std::string& who) {
  if (before.mappings < 0 || after.mappings < 0 || before.vm_kib < 0 || after.vm_kib < 0)
    return ::testing::AssertionFailure() << who << ": cannot read /proc/<pid>/maps or status";
  std::printf("%s: %ld -> %ld mappings, VmSize %lld -> %lld KiB over %d cycles\n", who.c_str(), before.mappings,
              after.mappings, before.vm_kib, after.vm_kib, kCycles);
  if (after.mappings - before.mappings > kMaxNewMappings)
    return ::testing::AssertionFailure() << who << ": " << after.mappings - before.mappings
                                         << " new mappings after " << kCycles << " groups (bound " << kMaxNewMappings
                                         << ")";
  if (after.vm_kib - before.vm_kib > kMaxVmGrowthKiB)
    return ::testing::AssertionFailure() << who << ": VmSize grew by " << after.vm_kib - before.vm_kib << " KiB after "
                                         << kCycles << " groups (bound " << kMaxVmGrowthKiB << " KiB)";
  return ::testing::AssertionSuccess();
}

class LeakTest : public DaemonTest {
 protected:
  int deadline_s() const override { return 280; }
};

TEST_F(LeakTest, ThousandHostGroupsCreatedAndDestroyed) {
  const int pid = daemon().child().pid();
  // Two ranks per group, each on its own connection and thread.
  auto run = [&](int from, int to) {
    std::string e0, e1;
    std::thread t([&] { e1 = cycles(socket(), "host", from, to, 2, 1, nullptr); });
    e0 = cycles(socket(), "host", from, to, 2, 0, nullptr);
    t.join();
    EXPECT_EQ(e0, "");
    EXPECT_EQ(e1, "");
  };
  run(0, kWarmup);
  const AddressSpace before = address_space(pid);
  run(kWarmup, kWarmup + kCycles);
  EXPECT_TRUE(bounded(before, address_space(pid), "epd (host groups)"));
  EXPECT_TRUE(daemon().child().running());
}

TEST(LeakMultinode, ThousandTwoNodeGroupsCreatedAndDestroyed) {
  Watchdog wd("LeakMultinode", 280);
  mn::Cluster cluster(2);
  if (!cluster.ok()) GTEST_SKIP() << cluster.error();
  for (int n = 0; n < 2; ++n) {
    const std::string err = cluster.start_daemon(n);
    ASSERT_EQ(err, "") << cluster.log(n);
    wd.add_pid(cluster.daemon(n).pid());
  }
  const std::vector<epd_placement_t> placement = {{0, EPD_GPU_HOST}, {1, EPD_GPU_HOST}};
  auto run = [&](int from, int to) {
    std::string e0, e1;
    std::thread t([&] { e1 = cycles(cluster.socket(1), "mn", from, to, 2, 1, &placement); });
    e0 = cycles(cluster.socket(0), "mn", from, to, 2, 0, &placement);
    t.join();
    EXPECT_EQ(e0, "") << cluster.log(0);
    EXPECT_EQ(e1, "") << cluster.log(1);
  };
  run(0, kWarmup);
  const AddressSpace before0 = address_space(cluster.daemon(0).pid());
  const AddressSpace before1 = address_space(cluster.daemon(1).pid());
  run(kWarmup, kWarmup + kCycles);
  EXPECT_TRUE(bounded(before0, address_space(cluster.daemon(0).pid()), "node 0 epd"));
  EXPECT_TRUE(bounded(before1, address_space(cluster.daemon(1).pid()), "node 1 epd"));
  EXPECT_TRUE(cluster.daemon(0).running());
  EXPECT_TRUE(cluster.daemon(1).running());
}

}  // namespace
}  // namespace epd::test
