// integration_test.cc — the real epd with real clients: multi-rank data path
// in separate processes (checked by the worker's own reference), two groups at
// once, join rules (spec mismatch, duplicate rank, stale and newer generation,
// join deadline), protocol errors (version mismatch, malformed and truncated
// messages), epctl, SIGTERM, and client-side argument errors.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "harness.h"
#include "protocol.h"
#include "spec.h"

namespace epd::test {
namespace {

using IntegrationTest = DaemonTest;

// Reads every line of a worker until EOF; returns its exit code.
int finish(job::Child& c, std::vector<std::string>* lines = nullptr, int timeout_ms = 60000) {
  std::string line;
  while (c.read_line(line, timeout_ms)) {
    if (line.rfind("ERROR", 0) == 0) ADD_FAILURE() << "worker " << c.pid() << ": " << line;
    if (lines) lines->push_back(line);
  }
  return c.wait(timeout_ms);
}

std::vector<std::string> group_args(const std::string& group, int world, int rank, int steps, int hidden, int experts,
                                    int seed) {
  return {"--group", group, "--world", std::to_string(world), "--rank", std::to_string(rank), "--steps",
          std::to_string(steps), "--hidden", std::to_string(hidden), "--experts", std::to_string(experts),
          "--max-tokens", "24", "--top-k", "3", "--seed", std::to_string(seed)};
}

TEST_F(IntegrationTest, EightRankProcessesDispatchAndCombineVerified) {
  const int seed = static_cast<int>(job::now_ns() % 100000);
  std::printf("seed %d\n", seed);
  std::vector<job::Child*> ws;
  for (int r = 0; r < 8; ++r) ws.push_back(&worker(group_args("eight", 8, r, 40, 64, 32, seed)));
  for (auto* w : ws) {
    std::vector<std::string> lines;
    EXPECT_EQ(finish(*w, &lines), 0) << "seed " << seed;
    job::WorkerResult res;
    ASSERT_FALSE(lines.empty());
    EXPECT_TRUE(job::parse_result(lines.back(), res)) << lines.back();
    EXPECT_EQ(res.steps, 40);
  }
}

TEST_F(IntegrationTest, TwoGroupsSideBySide) {
  const int seed = static_cast<int>(job::now_ns() % 100000);
  std::vector<job::Child*> ws;
  for (int r = 0; r < 4; ++r) ws.push_back(&worker(group_args("alpha", 4, r, 60, 48, 16, seed)));
  for (int r = 0; r < 2; ++r) ws.push_back(&worker(group_args("beta", 2, r, 60, 128, 6, seed + 1)));
  for (auto* w : ws) EXPECT_EQ(finish(*w), 0) << "seed " << seed;
}

TEST_F(IntegrationTest, SpecMismatchNamesTheField) {
  epd_client_t* a = connect_or_die(socket());
  epd_client_t* b = connect_or_die(socket());
  epd_group_t* ga = nullptr;
  epd_status_t rca = EPD_ERR_INTERNAL;
  std::thread t([&] {
    const epd_group_spec_t s = small_spec("mm", 2, 0);
    rca = epd_group_join(a, &s, &ga);
  });
  ASSERT_TRUE(wait_rank_state(socket(), "mm", 0, "joining"));
  epd_group_spec_t bad = small_spec("mm", 2, 1);
  bad.hidden = 48;
  epd_group_t* gb = nullptr;
  EXPECT_EQ(epd_group_join(b, &bad, &gb), EPD_ERR_SPEC_MISMATCH);
  const std::string msg = epd_client_last_error(b);
  EXPECT_NE(msg.find("hidden"), std::string::npos) << msg;
  EXPECT_NE(msg.find("32"), std::string::npos) << msg;
  EXPECT_NE(msg.find("48"), std::string::npos) << msg;
  const epd_group_spec_t good = small_spec("mm", 2, 1);
  EXPECT_EQ(epd_group_join(b, &good, &gb), EPD_OK) << epd_client_last_error(b);
  t.join();
  EXPECT_EQ(rca, EPD_OK) << epd_client_last_error(a);
  epd_group_leave(ga);
  epd_group_leave(gb);
  epd_client_disconnect(a);
  epd_client_disconnect(b);
}

TEST_F(IntegrationTest, DuplicateRankRefused) {
  epd_client_t* a = connect_or_die(socket());
  epd_client_t* b = connect_or_die(socket());
  epd_group_t* ga = nullptr;
  epd_status_t rca = EPD_ERR_INTERNAL;
  std::thread t([&] {
    const epd_group_spec_t s = small_spec("dup", 2, 0);
    rca = epd_group_join(a, &s, &ga);
  });
  ASSERT_TRUE(wait_rank_state(socket(), "dup", 0, "joining"));
  const epd_group_spec_t s0 = small_spec("dup", 2, 0);
  epd_group_t* gb = nullptr;
  EXPECT_EQ(epd_group_join(b, &s0, &gb), EPD_ERR_DUPLICATE_RANK);
  EXPECT_NE(std::string(epd_client_last_error(b)).find("rank 0"), std::string::npos) << epd_client_last_error(b);
  const epd_group_spec_t s1 = small_spec("dup", 2, 1);
  EXPECT_EQ(epd_group_join(b, &s1, &gb), EPD_OK) << epd_client_last_error(b);
  t.join();
  EXPECT_EQ(rca, EPD_OK) << epd_client_last_error(a);
  epd_group_leave(ga);
  epd_group_leave(gb);
  epd_client_disconnect(a);
  epd_client_disconnect(b);
}

TEST_F(IntegrationTest, StaleGenerationRefusedNewerReplaces) {
  epd_client_t* a = connect_or_die(socket());
  epd_group_spec_t s = small_spec("gen", 1, 0);
  s.generation = 5;
  epd_group_t* g5 = nullptr;
  ASSERT_EQ(epd_group_join(a, &s, &g5), EPD_OK) << epd_client_last_error(a);
  s.generation = 4;
  epd_group_t* g4 = nullptr;
  EXPECT_EQ(epd_group_join(a, &s, &g4), EPD_ERR_STALE_GENERATION);
  const std::string msg = epd_client_last_error(a);
  EXPECT_NE(msg.find("4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("5"), std::string::npos) << msg;
  s.generation = 6;
  epd_group_t* g6 = nullptr;
  ASSERT_EQ(epd_group_join(a, &s, &g6), EPD_OK) << epd_client_last_error(a);
  // The old generation's handle now gets GROUP_CLOSED; the new one works.
  epd_dispatch_args_t args{};
  args.struct_size = sizeof args;
  epd_dispatch_result_t res{};
  res.struct_size = sizeof res;
  ASSERT_EQ(epd_group_dispatch(g5, 0, &args), EPD_OK);
  EXPECT_EQ(epd_group_dispatch_wait(g5, 0, 5000, &res), EPD_ERR_GROUP_CLOSED) << epd_group_last_error(g5);
  ASSERT_EQ(epd_group_dispatch(g6, 0, &args), EPD_OK);
  EXPECT_EQ(epd_group_dispatch_wait(g6, 0, 5000, &res), EPD_OK) << epd_group_last_error(g6);
  epd_group_leave(g5);
  epd_group_leave(g6);
  epd_client_disconnect(a);
}

TEST_F(IntegrationTest, JoinDeadlineNamesMissingRanks) {
  epd_client_t* a = connect_or_die(socket());
  const epd_group_spec_t s = small_spec("lonely", 3, 0, 300);
  epd_group_t* g = nullptr;
  EXPECT_EQ(epd_group_join(a, &s, &g), EPD_ERR_TIMEOUT);
  const std::string msg = epd_client_last_error(a);
  EXPECT_NE(msg.find("1, 2"), std::string::npos) << msg;
  epd_client_disconnect(a);
}

TEST_F(IntegrationTest, VersionMismatchNamesBothVersions) {
  const int fd = raw_connect(socket());
  ASSERT_GE(fd, 0);
  auto hello = proto::encode(proto::Hello{1, "old"}, 7);
  proto::set_version(hello, 99, 3);
  ASSERT_TRUE(raw_send(fd, hello));
  int32_t st = 0;
  std::string msg;
  uint16_t type = 0;
  ASSERT_TRUE(raw_reply(fd, 5000, st, msg, type));
  EXPECT_EQ(st, EPD_ERR_VERSION_MISMATCH);
  EXPECT_NE(msg.find("99.3"), std::string::npos) << msg;
  const std::string ours = std::to_string(proto::kMajor) + "." + std::to_string(proto::kMinor);
  EXPECT_NE(msg.find(ours), std::string::npos) << msg;
  close(fd);
}

TEST_F(IntegrationTest, MalformedAndTruncatedMessagesRefused) {
  const int fd = raw_connect(socket());
  ASSERT_GE(fd, 0);
  int32_t st = 0;
  std::string msg;
  uint16_t type = 0;
  // Shorter than the header.
  ASSERT_TRUE(raw_send(fd, std::vector<uint8_t>{1, 2, 3, 4, 5}));
  ASSERT_TRUE(raw_reply(fd, 5000, st, msg, type));
  EXPECT_EQ(st, EPD_ERR_PROTOCOL);
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  // Bad magic.
  auto hello = proto::encode(proto::Hello{1, "x"}, 1);
  auto bad = hello;
  bad[0] ^= 0xff;
  ASSERT_TRUE(raw_send(fd, bad));
  ASSERT_TRUE(raw_reply(fd, 5000, st, msg, type));
  EXPECT_EQ(st, EPD_ERR_PROTOCOL);
  EXPECT_NE(msg.find("magic"), std::string::npos) << msg;
  // Header length disagrees with the record.
  bad = hello;
  bad.push_back(0);
  ASSERT_TRUE(raw_send(fd, bad));
  ASSERT_TRUE(raw_reply(fd, 5000, st, msg, type));
  EXPECT_EQ(st, EPD_ERR_PROTOCOL);
  EXPECT_NE(msg.find("length"), std::string::npos) << msg;
  // A valid HELLO, then a JOIN cut short inside its payload (header fixed up).
  ASSERT_TRUE(raw_send(fd, hello));
  ASSERT_TRUE(raw_reply(fd, 5000, st, msg, type));
  EXPECT_EQ(st, 0);
  proto::Join j;
  j.spec.name = "cut";
  j.spec.world_size = 2;
  j.spec.num_experts = 4;
  j.spec.placement.assign(2, epd_placement_t{0, EPD_GPU_HOST});
  auto join = proto::encode(j, 2);
  join.resize(join.size() - 6);
  const uint32_t len = static_cast<uint32_t>(join.size() - proto::kHeaderBytes);
  std::memcpy(join.data() + 12, &len, 4);
  ASSERT_TRUE(raw_send(fd, join));
  ASSERT_TRUE(raw_reply(fd, 5000, st, msg, type));
  EXPECT_EQ(st, EPD_ERR_PROTOCOL);
  EXPECT_NE(msg.find("truncated at field"), std::string::npos) << msg;
  // Unknown type.
  bad = hello;
  bad[8] = 77;
  ASSERT_TRUE(raw_send(fd, bad));
  ASSERT_TRUE(raw_reply(fd, 5000, st, msg, type));
  EXPECT_EQ(st, EPD_ERR_PROTOCOL);
  EXPECT_NE(msg.find("77"), std::string::npos) << msg;
  close(fd);
  // The daemon still serves everyone else.
  epd_client_t* c = connect_or_die(socket());
  epd_client_info_t info{};
  info.struct_size = sizeof info;
  EXPECT_EQ(epd_client_query(c, &info), EPD_OK);
  EXPECT_EQ(info.daemon_pid, daemon().child().pid());
  epd_client_disconnect(c);
}

TEST_F(IntegrationTest, EpctlShowsGroupsRanksAndCounters) {
  epd_client_t* a = connect_or_die(socket());
  const epd_group_spec_t s = small_spec("shown", 1, 0);
  epd_group_t* g = nullptr;
  ASSERT_EQ(epd_group_join(a, &s, &g), EPD_OK) << epd_client_last_error(a);
  std::vector<float> x(3 * 32, 1.5f);
  std::vector<int32_t> ids = {0, 1, 2, -1, 3, 0};
  std::vector<float> w = {0.5f, 0.25f, 1, 0, 2, 1};
  epd_dispatch_args_t args{sizeof(epd_dispatch_args_t), x.data(), ids.data(), EPD_ID_INT32, w.data(), 3};
  epd_dispatch_result_t res{};
  res.struct_size = sizeof res;
  ASSERT_EQ(epd_group_dispatch(g, 1, &args), EPD_OK) << epd_group_last_error(g);
  ASSERT_EQ(epd_group_dispatch_wait(g, 1, 5000, &res), EPD_OK) << epd_group_last_error(g);
  EXPECT_EQ(res.total_rows, 3);
  const void* out = nullptr;
  ASSERT_EQ(epd_group_combine(g, 1, EPD_WEIGHTS_ONES), EPD_OK);
  ASSERT_EQ(epd_group_combine_wait(g, 1, 5000, &out), EPD_OK) << epd_group_last_error(g);
  auto run = [&](std::vector<std::string> args2) {
    std::vector<std::string> argv = {epctl_path(), "--socket", socket()};
    argv.insert(argv.end(), args2.begin(), args2.end());
    job::Child c = job::Child::spawn(argv);
    std::string all, line;
    while (c.read_line(line, 10000)) all += line + "\n";
    EXPECT_EQ(c.wait(10000), 0) << all;
    return all;
  };
  const std::string groups = run({"--json", "groups"});
  EXPECT_NE(groups.find("\"name\":\"shown\""), std::string::npos) << groups;
  EXPECT_NE(groups.find("\"generation\":1"), std::string::npos) << groups;
  // Every scalar row of the spec's field list is in the group's "spec" object.
  const size_t spec_at = groups.find("\"spec\":{");
  ASSERT_NE(spec_at, std::string::npos) << groups;
  const std::string spec_json = groups.substr(spec_at, groups.find('}', spec_at) - spec_at);
  int rows = 0;
  epd::for_each_spec_field([&](const auto& field) {
    if constexpr (!epd::kIsSpecHand<decltype(field)>) {
      ++rows;
      EXPECT_NE(spec_json.find(std::string("\"") + field.name + "\":"), std::string::npos) << field.name << ": " << spec_json;
    }
  });
  EXPECT_GT(rows, 10);
  EXPECT_NE(spec_json.find("\"hidden\":" + std::to_string(s.hidden)), std::string::npos) << spec_json;
  EXPECT_NE(spec_json.find("\"max_tokens_per_rank\":" + std::to_string(s.max_tokens_per_rank)), std::string::npos)
      << spec_json;
  const std::string ranks = run({"ranks"});
  EXPECT_NE(ranks.find("joined"), std::string::npos) << ranks;
  EXPECT_NE(ranks.find(std::to_string(getpid())), std::string::npos) << ranks;
  const std::string counters = run({"--json", "counters"});
  EXPECT_NE(counters.find("\"dispatch_calls\":1"), std::string::npos) << counters;
  EXPECT_NE(counters.find("\"combine_calls\":1"), std::string::npos) << counters;
  EXPECT_NE(counters.find("\"tokens_sent\":3"), std::string::npos) << counters;
  const std::string sessions = run({"--json", "sessions"});
  EXPECT_NE(sessions.find("\"name\":\"libepd-client\",\"memberships\":1"), std::string::npos) << sessions;
  // The daemon's hwloc view: valid JSON with an "available" verdict either way
  // (this machine may have no GPU and no NIC), and the same through the text form.
  const std::string topo = run({"--json", "topology"});
  EXPECT_NE(topo.find("\"available\":"), std::string::npos) << topo;
  if (topo.rfind("{\"available\":true", 0) == 0) {  // the top-level verdict (keys are sorted), not gpu_peers
    EXPECT_NE(topo.find("\"numa_nodes\""), std::string::npos) << topo;
    EXPECT_NE(topo.find("\"pairs\""), std::string::npos) << topo;
  }
  EXPECT_FALSE(run({"topology"}).empty());
  const std::string status = run({"status"});
  EXPECT_NE(status.find("pid " + std::to_string(daemon().child().pid())), std::string::npos) << status;
  epd_group_leave(g);
  epd_client_disconnect(a);
}

// A spec's timeout_ms = 0 means the daemon's server.join_timeout_ms, through
// libepd-client too (it used to become 30000 in the library before the join
// was sent, so the daemon's setting never applied).
TEST_F(IntegrationTest, ZeroTimeoutMeansTheDaemonsJoinTimeout) {
  job::TempDir dir("epd-jt");
  job::DaemonProcess d(epd_path(), dir.path(), {"--join-timeout-ms", "700"});
  if (d.child().pid() > 0) watchdog_->add_pid(d.child().pid());
  ASSERT_TRUE(d.ok()) << d.error();
  epd_client_t* a = connect_or_die(d.socket_path());
  epd_group_spec_t s = small_spec("jt", 2, 0, 0);
  epd_group_t* g = nullptr;
  EXPECT_EQ(epd_group_join(a, &s, &g), EPD_ERR_TIMEOUT);  // rank 1 never comes
  const std::string msg = epd_client_last_error(a);
  EXPECT_NE(msg.find("did not join within 700 ms"), std::string::npos) << msg;
  epd_client_disconnect(a);
  EXPECT_EQ(d.stop(10000), 0);
}

TEST_F(IntegrationTest, ClientArgumentErrorsNameTheValue) {
  epd_client_t* a = connect_or_die(socket());
  const epd_group_spec_t s = small_spec("args", 1, 0);
  epd_group_t* g = nullptr;
  ASSERT_EQ(epd_group_join(a, &s, &g), EPD_OK) << epd_client_last_error(a);
  epd_dispatch_args_t args{};
  args.struct_size = sizeof args;
  EXPECT_EQ(epd_group_dispatch(g, 2, &args), EPD_ERR_BAD_SLOT);
  EXPECT_NE(std::string(epd_group_last_error(g)).find("slot = 2"), std::string::npos) << epd_group_last_error(g);
  EXPECT_EQ(epd_group_combine(g, 0, EPD_WEIGHTS_ONES), EPD_ERR_NO_DISPATCH);
  std::vector<float> x(9 * 32, 1.0f);
  std::vector<int32_t> ids(9 * 2, 0);
  args.x = x.data();
  args.topk_ids = ids.data();
  args.n_tokens = 9;
  EXPECT_EQ(epd_group_dispatch(g, 0, &args), EPD_ERR_CAPACITY_EXCEEDED);
  args.n_tokens = 1;
  ids[0] = 0;
  ids[1] = 400;
  EXPECT_EQ(epd_group_dispatch(g, 0, &args), EPD_ERR_EXPERT_ID_OUT_OF_RANGE);
  EXPECT_NE(std::string(epd_group_last_error(g)).find("400"), std::string::npos) << epd_group_last_error(g);
  EXPECT_EQ(epd_group_combine(g, 0, EPD_WEIGHTS_APPLY), EPD_ERR_BAD_WEIGHT_MODE);
  epd_group_leave(g);
  epd_client_disconnect(a);
}

// GPU placements the daemon cannot serve are refused at join with a status
// naming the placement: a group mixing host and GPU ranks, a GPU whose ranks
// are not contiguous, and (on a machine without a usable GPU, like CI) any GPU group,
// with the reason the daemon found. With a GPU the last case joins.
TEST_F(IntegrationTest, GpuPlacementsItCannotServeAreRefusedNamingThem) {
  epd_client_t* a = connect_or_die(socket());
  epd_client_info_t info{};
  info.struct_size = sizeof info;
  ASSERT_EQ(epd_client_query(a, &info), EPD_OK) << epd_client_last_error(a);
  const bool gpu = (info.capabilities & EPD_CAP_GPU_EXECUTOR) != 0;
  auto join_with = [&](const char* name, const std::vector<epd_placement_t>& where, epd_group_t** g) {
    epd_group_spec_t s = small_spec(name, static_cast<int32_t>(where.size()), 0, 2000);
    s.placement = where.data();
    return epd_group_join(a, &s, g);
  };
  epd_group_t* g = nullptr;
  EXPECT_EQ(join_with("mixed", {{0, 0}, {0, EPD_GPU_HOST}}, &g), EPD_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(epd_client_last_error(a)).find("placement[1].gpu = -1"), std::string::npos) << epd_client_last_error(a);
  EXPECT_EQ(join_with("interleaved", {{0, 0}, {0, 1}, {0, 0}}, &g), EPD_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(epd_client_last_error(a)).find("placement[2].gpu = 0"), std::string::npos) << epd_client_last_error(a);
  EXPECT_NE(std::string(epd_client_last_error(a)).find("contiguous"), std::string::npos) << epd_client_last_error(a);
  const epd_status_t rc = join_with("one_gpu", {{0, 0}}, &g);
  if (gpu) {
    EXPECT_EQ(rc, EPD_OK) << epd_client_last_error(a);
    if (rc == EPD_OK) epd_group_leave(g);
  } else {
    EXPECT_EQ(rc, EPD_ERR_GPU_UNAVAILABLE) << epd_client_last_error(a);
    EXPECT_NE(std::string(epd_client_last_error(a)).find("GPU groups are unavailable"), std::string::npos)
        << epd_client_last_error(a);
  }
  epd_client_disconnect(a);
}

// The stream calls of GPU groups on a host group: refused, naming the call,
// never touching CUDA (this runs without a driver).
TEST_F(IntegrationTest, GpuCallsOnAHostGroupAreUnsupported) {
  epd_client_t* a = connect_or_die(socket());
  const epd_group_spec_t s = small_spec("hostonly", 1, 0);
  epd_group_t* g = nullptr;
  ASSERT_EQ(epd_group_join(a, &s, &g), EPD_OK) << epd_client_last_error(a);
  auto says = [&](const char* call) {
    const std::string m = epd_group_last_error(g);
    return m.find(call) != std::string::npos && m.find("host group") != std::string::npos;
  };
  epd_gpu_dispatch_args_t args{};
  args.struct_size = sizeof args;
  EXPECT_EQ(epd_group_dispatch_async(g, 0, &args, nullptr), EPD_ERR_UNSUPPORTED);
  EXPECT_TRUE(says("epd_group_dispatch_async")) << epd_group_last_error(g);
  EXPECT_EQ(epd_group_dispatch_wait_async(g, 0, nullptr), EPD_ERR_UNSUPPORTED);
  EXPECT_TRUE(says("epd_group_dispatch_wait_async")) << epd_group_last_error(g);
  EXPECT_EQ(epd_group_combine_async(g, 0, EPD_WEIGHTS_ONES, nullptr, 0, nullptr), EPD_ERR_UNSUPPORTED);
  EXPECT_TRUE(says("epd_group_combine_async")) << epd_group_last_error(g);
  EXPECT_EQ(epd_group_combine_wait_async(g, 0, nullptr), EPD_ERR_UNSUPPORTED);
  EXPECT_EQ(epd_group_gpu_status(g, 0, 10), EPD_ERR_UNSUPPORTED);
  EXPECT_TRUE(says("epd_group_gpu_status")) << epd_group_last_error(g);
  epd_gpu_views_t v{};
  v.struct_size = sizeof v;
  EXPECT_EQ(epd_group_gpu_views(g, 0, &v), EPD_ERR_UNSUPPORTED);
  EXPECT_EQ(v.send_x, nullptr);  // outputs written only on success
  EXPECT_EQ(epd_group_dispatch_async(nullptr, 0, &args, nullptr), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(epd_group_gpu_status(nullptr, 0, 10), EPD_ERR_INVALID_ARGUMENT);
  // The host path still works on the same handle.
  epd_dispatch_args_t h{};
  h.struct_size = sizeof h;
  ASSERT_EQ(epd_group_dispatch(g, 0, &h), EPD_OK) << epd_group_last_error(g);
  epd_dispatch_result_t res{};
  res.struct_size = sizeof res;
  ASSERT_EQ(epd_group_dispatch_wait(g, 0, 5000, &res), EPD_OK) << epd_group_last_error(g);
  ASSERT_EQ(epd_group_combine(g, 0, EPD_WEIGHTS_ONES), EPD_OK) << epd_group_last_error(g);
  const void* out = nullptr;
  ASSERT_EQ(epd_group_combine_wait(g, 0, 5000, &out), EPD_OK) << epd_group_last_error(g);
  EXPECT_EQ(epd_group_leave(g), EPD_OK);
  epd_client_disconnect(a);
}

// expert_major through the daemon, two in-process ranks, weights applied at
// combine; the expectation is a naive loop over (token, k).
TEST_F(IntegrationTest, ExpertMajorApplyWeightsTwoRanks) {
  constexpr int W = 2, E = 4, K = 2, H = 16, N = 5;
  epd_client_t* c[W];
  epd_group_t* g[W] = {nullptr, nullptr};
  for (int r = 0; r < W; ++r) c[r] = connect_or_die(socket());
  std::thread t([&] {
    epd_group_spec_t s = small_spec("em", W, 0);
    s.num_experts = E;
    s.top_k = K;
    s.hidden = H;
    s.layout = EPD_LAYOUT_EXPERT_MAJOR;
    EXPECT_EQ(epd_group_join(c[0], &s, &g[0]), EPD_OK) << epd_client_last_error(c[0]);
  });
  epd_group_spec_t s1 = small_spec("em", W, 1);
  s1.num_experts = E;
  s1.top_k = K;
  s1.hidden = H;
  s1.layout = EPD_LAYOUT_EXPERT_MAJOR;
  ASSERT_EQ(epd_group_join(c[1], &s1, &g[1]), EPD_OK) << epd_client_last_error(c[1]);
  t.join();
  ASSERT_TRUE(g[0] && g[1]);
  // Inputs: token t of rank r routes to experts (t + r) % E and (t + 2 * r + 1) % E (-1 on t == 3).
  std::vector<float> x[W], w[W];
  std::vector<int64_t> ids[W];
  for (int r = 0; r < W; ++r) {
    for (int i = 0; i < N * H; ++i) x[r].push_back(0.5f + static_cast<float>((i * 7 + r * 3) % 11) * 0.125f);
    for (int tk = 0; tk < N; ++tk) {
      const int64_t e0 = (tk + r) % E, e1 = (tk + 2 * r + 1) % E;
      ids[r].push_back(e0);
      ids[r].push_back(tk == 3 || e1 == e0 ? -1 : e1);
      w[r].push_back(0.75f);
      w[r].push_back(0.25f + 0.125f * static_cast<float>(tk));
    }
  }
  auto f = [](int64_t e, float v) { return (1.0f + static_cast<float>(e)) * v - 0.5f; };
  for (int r = 0; r < W; ++r) {
    epd_dispatch_args_t a{sizeof(epd_dispatch_args_t), x[r].data(), ids[r].data(), EPD_ID_INT64, w[r].data(), N};
    ASSERT_EQ(epd_group_dispatch(g[r], 0, &a), EPD_OK) << epd_group_last_error(g[r]);
  }
  for (int r = 0; r < W; ++r) {
    epd_dispatch_result_t res{};
    res.struct_size = sizeof res;
    ASSERT_EQ(epd_group_dispatch_wait(g[r], 0, 5000, &res), EPD_OK) << epd_group_last_error(g[r]);
    ASSERT_EQ(res.ids_per_row, 1);
    int64_t seen = 0;
    for (int l = 0; l < res.num_local_experts; ++l) {
      const int64_t e = r * (E / W) + l, first = static_cast<int64_t>(l) * W * 8;
      int expect = 0;
      for (int s = 0; s < W; ++s)
        for (int tk = 0; tk < N; ++tk)
          for (int k = 0; k < K; ++k) expect += ids[s][static_cast<size_t>(tk * K + k)] == e;
      EXPECT_EQ(res.counts[l], expect) << "rank " << r << " expert " << e;
      for (int64_t row = first; row < first + res.counts[l]; ++row) {
        EXPECT_EQ(res.ids[row], e);
        const auto* xr = static_cast<const float*>(res.x) + row * H;
        auto* y = static_cast<float*>(res.combine_in) + row * H;
        for (int h = 0; h < H; ++h) y[h] = f(e, xr[h]);
        ++seen;
      }
    }
    EXPECT_EQ(res.total_rows, seen);
    ASSERT_EQ(epd_group_combine(g[r], 0, EPD_WEIGHTS_APPLY), EPD_OK) << epd_group_last_error(g[r]);
  }
  for (int r = 0; r < W; ++r) {
    const void* out = nullptr;
    ASSERT_EQ(epd_group_combine_wait(g[r], 0, 5000, &out), EPD_OK) << epd_group_last_error(g[r]);
    const auto* o = static_cast<const float*>(out);
    for (int tk = 0; tk < N; ++tk)
      for (int h = 0; h < H; ++h) {
        float acc = 0.0f;
        for (int k = 0; k < K; ++k) {
          const int64_t e = ids[r][static_cast<size_t>(tk * K + k)];
          if (e < 0) continue;
          const float p = w[r][static_cast<size_t>(tk * K + k)] * f(e, x[r][static_cast<size_t>(tk * H + h)]);
          acc = acc + p;
        }
        ASSERT_EQ(o[tk * H + h], acc) << "rank " << r << " token " << tk << " h " << h;
      }
  }
  for (int r = 0; r < W; ++r) {
    epd_group_leave(g[r]);
    epd_client_disconnect(c[r]);
  }
}

// Two micro-batches: both slots in flight at once, waited and combined in
// both orders; identity experts, so out[t] = x[t] * (number of destination ranks).
TEST_F(IntegrationTest, TwoSlotsInterleavedInBothOrders) {
  constexpr int W = 2, K = 2, H = 32, N = 6;
  epd_client_t* c[W];
  epd_group_t* g[W] = {nullptr, nullptr};
  for (int r = 0; r < W; ++r) c[r] = connect_or_die(socket());
  std::thread t([&] {
    const epd_group_spec_t s = small_spec("slots", W, 0);
    EXPECT_EQ(epd_group_join(c[0], &s, &g[0]), EPD_OK) << epd_client_last_error(c[0]);
  });
  const epd_group_spec_t s1 = small_spec("slots", W, 1);
  ASSERT_EQ(epd_group_join(c[1], &s1, &g[1]), EPD_OK) << epd_client_last_error(c[1]);
  t.join();
  const int E = 4 * W;
  for (int order = 0; order < 2; ++order) {
    std::vector<float> x[W][2];
    std::vector<int32_t> ids[W][2];
    for (int r = 0; r < W; ++r)
      for (int slot = 0; slot < 2; ++slot) {
        for (int i = 0; i < N * H; ++i)
          x[r][slot].push_back(static_cast<float>(1 + (i + 5 * r + 11 * slot + order) % 13) * 0.5f);
        for (int tk = 0; tk < N; ++tk) {
          ids[r][slot].push_back((tk * 3 + r + slot) % E);
          ids[r][slot].push_back(tk % 3 == 0 ? -1 : (tk * 3 + r + slot + 1 + 3 * order) % E);
        }
        epd_dispatch_args_t a{sizeof(epd_dispatch_args_t), x[r][slot].data(), ids[r][slot].data(), EPD_ID_INT32,
                              nullptr, N - slot};
        ASSERT_EQ(epd_group_dispatch(g[r], slot, &a), EPD_OK) << epd_group_last_error(g[r]);
      }
    const int first = order == 0 ? 1 : 0, second = 1 - first;
    for (int slot : {first, second})
      for (int r = 0; r < W; ++r) {
        epd_dispatch_result_t res{};
        res.struct_size = sizeof res;
        ASSERT_EQ(epd_group_dispatch_wait(g[r], slot, 5000, &res), EPD_OK) << epd_group_last_error(g[r]);
        std::memcpy(res.combine_in, res.x, static_cast<size_t>(res.total_rows) * res.combine_row_bytes);
        ASSERT_EQ(epd_group_combine(g[r], slot, EPD_WEIGHTS_ONES), EPD_OK) << epd_group_last_error(g[r]);
      }
    for (int slot : {second, first})
      for (int r = 0; r < W; ++r) {
        const void* out = nullptr;
        ASSERT_EQ(epd_group_combine_wait(g[r], slot, 5000, &out), EPD_OK) << epd_group_last_error(g[r]);
        const auto* o = static_cast<const float*>(out);
        for (int tk = 0; tk < N - slot; ++tk) {
          bool dest[W] = {false, false};
          for (int k = 0; k < K; ++k) {
            const int32_t e = ids[r][slot][static_cast<size_t>(tk * K + k)];
            if (e >= 0) dest[e / (E / W)] = true;
          }
          for (int h = 0; h < H; ++h) {
            float acc = 0.0f;
            for (int d = 0; d < W; ++d)
              if (dest[d]) acc = acc + x[r][slot][static_cast<size_t>(tk * H + h)];
            ASSERT_EQ(o[tk * H + h], acc) << "order " << order << " slot " << slot << " rank " << r << " token " << tk;
          }
        }
      }
  }
  for (int r = 0; r < W; ++r) {
    epd_group_leave(g[r]);
    epd_client_disconnect(c[r]);
  }
}

TEST_F(IntegrationTest, SigtermTellsClientsAndExitsZero) {
  epd_client_t* a = connect_or_die(socket());
  epd_client_t* b = connect_or_die(socket());
  epd_group_t* ga = nullptr;
  epd_group_t* gb = nullptr;
  std::thread t([&] {
    const epd_group_spec_t s = small_spec("term", 2, 0);
    EXPECT_EQ(epd_group_join(a, &s, &ga), EPD_OK);
  });
  const epd_group_spec_t s1 = small_spec("term", 2, 1);
  ASSERT_EQ(epd_group_join(b, &s1, &gb), EPD_OK) << epd_client_last_error(b);
  t.join();
  // Rank 0 rings and waits; rank 1 never rings: the SIGTERM ends the wait.
  epd_dispatch_args_t args{};
  args.struct_size = sizeof args;
  ASSERT_EQ(epd_group_dispatch(ga, 0, &args), EPD_OK);
  epd_dispatch_result_t res{};
  res.struct_size = sizeof res;
  EXPECT_EQ(epd_group_dispatch_wait(ga, 0, 100, &res), EPD_ERR_TIMEOUT);  // slow rank 1 is not dead
  daemon().child().kill(SIGTERM);
  EXPECT_EQ(epd_group_dispatch_wait(ga, 0, 5000, &res), EPD_ERR_SHUTTING_DOWN) << epd_group_last_error(ga);
  EXPECT_EQ(epd_group_dispatch(gb, 0, &args), EPD_ERR_SHUTTING_DOWN) << epd_group_last_error(gb);
  EXPECT_EQ(daemon().child().wait(10000), 0);
  epd_group_leave(ga);
  epd_group_leave(gb);
  epd_client_disconnect(a);
  epd_client_disconnect(b);
}

}  // namespace
}  // namespace epd::test
