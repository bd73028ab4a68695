// status_report_test.cc — the cluster threads in `epctl status` (daemon/
// status_report.h): hand-built snapshots and cluster thread states, rendered
// as text and JSON, compared with expectations written out by hand.
// Label: unit.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cluster.h"
#include "status_report.h"

namespace epd {
namespace {

using Row = StatusSnapshot::ClusterThreadRow;

StatusSnapshot base_snapshot() {
  StatusSnapshot s;
  s.pid = 4100;
  s.uptime_s = 2.5;
  s.version = "9.9.9";
  s.executor = "host";
  s.socket_path = "/run/epd/t.sock";
  s.log_target = "stderr";
  s.gpu = "none";
  s.sessions = 1;
  return s;
}

Row pinned_proxy() {
  Row r;
  r.role = "shipping proxy";
  r.tid = 4242;
  r.pinned = true;
  r.cpus = {8, 9, 10, 11, 20};
  r.nic = "mlx5_1";
  r.numa_node = 1;
  r.detail = "NUMA node 1 of RDMA NIC mlx5_1";
  return r;
}

Row unpinned_progress() {
  Row r;
  r.role = "transport progress";
  r.tid = 4243;
  r.detail = "not pinned: pthread_setaffinity_np(CPUs 99): \"Invalid argument\"";
  return r;
}

TEST(StatusReport, StatusJsonListsEachClusterThread) {
  StatusSnapshot s = base_snapshot();
  s.cluster_threads = {pinned_proxy(), unpinned_progress()};
  const std::string j = render_status(s, proto::StatusWhat::kStatus, true);
  const std::string want =
      "\"cluster_threads\":["
      "{\"role\":\"shipping proxy\",\"tid\":4242,\"pinned\":true,\"cpus\":\"8-11,20\",\"numa_node\":1,"
      "\"nic\":\"mlx5_1\",\"detail\":\"NUMA node 1 of RDMA NIC mlx5_1\"},"
      "{\"role\":\"transport progress\",\"tid\":4243,\"pinned\":false,\"cpus\":\"\",\"numa_node\":null,"
      "\"nic\":null,\"detail\":\"not pinned: pthread_setaffinity_np(CPUs 99): \\\"Invalid argument\\\"\"}]}";
  ASSERT_GE(j.size(), want.size()) << j;
  EXPECT_EQ(j.substr(j.size() - want.size()), want) << j;
  EXPECT_EQ(j.rfind("{\"pid\":4100,", 0), 0u) << j;
  // `epctl all` carries the same array inside its daemon object.
  const std::string all = render_status(s, proto::StatusWhat::kAll, true);
  EXPECT_NE(all.find(want + ",\"groups\":["), std::string::npos) << all;
}

TEST(StatusReport, StatusJsonWithoutClusterHasAnEmptyArray) {
  const std::string j = render_status(base_snapshot(), proto::StatusWhat::kStatus, true);
  EXPECT_EQ(j.substr(j.size() - std::string(",\"cluster_threads\":[]}").size()), ",\"cluster_threads\":[]}") << j;
}

TEST(StatusReport, StatusTextHasOneLinePerClusterThread) {
  StatusSnapshot s = base_snapshot();
  Row starting;
  starting.role = "transport progress";
  starting.nic = "mlx5_1";
  starting.numa_node = 1;
  starting.detail = "not started yet; pinning not known";
  s.cluster_threads = {pinned_proxy(), starting};
  const std::string t = render_status(s, proto::StatusWhat::kStatus, false);
  const std::string want =
      "gpu: none\n"
      "cluster threads:\n"
      "  shipping proxy      tid 4242     CPUs 8-11,20     NUMA 1    NIC mlx5_1      NUMA node 1 of RDMA NIC mlx5_1\n"
      "  transport progress  tid -        CPUs -           NUMA 1    NIC mlx5_1      not started yet; pinning not "
      "known\n";
  ASSERT_GE(t.size(), want.size()) << t;
  EXPECT_EQ(t.substr(t.size() - want.size()), want) << t;
}

TEST(StatusReport, StatusTextWithoutClusterHasNoThreadBlock) {
  const std::string t = render_status(base_snapshot(), proto::StatusWhat::kStatus, false);
  EXPECT_EQ(t.find("cluster threads"), std::string::npos) << t;
  EXPECT_EQ(t.substr(t.size() - 10), "gpu: none\n") << t;
}

TEST(StatusReport, LongDetailIsNotCut) {
  StatusSnapshot s = base_snapshot();
  Row r = unpinned_progress();
  r.detail = std::string(700, 'x') + " END";
  s.cluster_threads = {r};
  EXPECT_NE(render_status(s, proto::StatusWhat::kStatus, false).find(r.detail + "\n"), std::string::npos);
  EXPECT_NE(render_status(s, proto::StatusWhat::kStatus, true).find("\"" + r.detail + "\"}]}"), std::string::npos);
}

TEST(StatusReport, ClusterThreadRowsFromTheLinkState) {
  cluster::ProxyPinning pin;
  pin.nic = "mlx5_0";
  pin.numa_node = 0;
  pin.cpus = {0, 1, 2, 3};
  pin.reason = "NUMA node 0 of RDMA NIC mlx5_0";
  cluster::ProxyThreadState pinned;
  pinned.role = "shipping proxy";
  pinned.started = true;
  pinned.tid = 77;
  pinned.pinned = true;
  pinned.affinity = {0, 1, 2, 3};
  pinned.detail = pin.reason;
  cluster::ProxyThreadState failed;  // pinning refused: the affinity read back is the inherited one
  failed.role = "transport progress";
  failed.started = true;
  failed.tid = 78;
  failed.affinity = {0, 1, 2, 3, 4, 5, 6, 7};
  failed.detail = "not pinned: pthread_setaffinity_np(CPUs 0-3): Invalid argument";
  cluster::ProxyThreadState not_started;
  not_started.role = "transport progress";

  const std::vector<Row> rows = cluster_thread_rows(pin, {pinned, failed, not_started});
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].role, "shipping proxy");
  EXPECT_EQ(rows[0].tid, 77);
  EXPECT_TRUE(rows[0].pinned);
  EXPECT_EQ(rows[0].cpus, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(rows[0].nic, "mlx5_0");
  EXPECT_EQ(rows[0].numa_node, 0);
  EXPECT_EQ(rows[0].detail, "NUMA node 0 of RDMA NIC mlx5_0");

  EXPECT_EQ(rows[1].role, "transport progress");
  EXPECT_EQ(rows[1].tid, 78);
  EXPECT_FALSE(rows[1].pinned);
  EXPECT_TRUE(rows[1].cpus.empty());
  EXPECT_EQ(rows[1].detail, "not pinned: pthread_setaffinity_np(CPUs 0-3): Invalid argument");

  EXPECT_EQ(rows[2].tid, 0);
  EXPECT_FALSE(rows[2].pinned);
  EXPECT_EQ(rows[2].detail, "not started yet; pinning not known");

  EXPECT_TRUE(cluster_thread_rows(pin, {}).empty());
}

}  // namespace
}  // namespace epd
