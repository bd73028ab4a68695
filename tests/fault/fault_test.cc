// fault_test.cc — faults through the real epd and real worker processes:
// SIGKILL of a worker mid-call (its peers get PEER_LOST naming it within the
// deadline, another group is unaffected, the rank re-joins and the results
// after the re-join are verified), SIGKILL of the daemon (every waiting client
// gets DAEMON_LOST within 1 s), and a slow rank that is not declared dead.
#include <gtest/gtest.h>
#include <signal.h>

#include <cinttypes>
#include <cstdio>
#include <thread>

#include "harness.h"

namespace epd::test {
namespace {

using FaultTest = DaemonTest;

bool read_until(job::Child& c, const std::string& prefix, std::string& line, int timeout_ms) {
  const int64_t deadline = job::now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
  for (;;) {
    const int64_t left_ms = (deadline - job::now_ns()) / 1000000;
    if (left_ms <= 0 || !c.read_line(line, static_cast<int>(left_ms))) return false;
    if (line.rfind(prefix, 0) == 0) return true;
    if (line.rfind("ERROR", 0) == 0) ADD_FAILURE() << "worker " << c.pid() << ": " << line;
  }
}

int64_t stamp_of(const std::string& line) {
  int64_t ns = 0;
  char word[32];
  if (std::sscanf(line.c_str(), "%31s %" SCNd64, word, &ns) != 2) return 0;
  return ns;
}

// Reads a worker to EOF; returns its exit code and the RESULT line, if any.
int finish(job::Child& c, job::WorkerResult& res, bool& got) {
  std::string line;
  got = false;
  while (c.read_line(line, 60000)) {
    if (job::parse_result(line, res)) got = true;
    if (line.rfind("ERROR", 0) == 0) ADD_FAILURE() << "worker " << c.pid() << ": " << line;
  }
  return c.wait(30000);
}

std::vector<std::string> args(const std::string& group, int world, int rank, int steps, int seed) {
  return {"--group", group, "--world", std::to_string(world), "--rank", std::to_string(rank), "--steps",
          std::to_string(steps), "--hidden", "64", "--experts", std::to_string(4 * world), "--max-tokens", "16",
          "--top-k", "3", "--seed", std::to_string(seed), "--timeout-ms", "20000"};
}

TEST_F(FaultTest, WorkerKilledMidCallPeersSeePeerLostAndRankRejoins) {
  const int seed = static_cast<int>(job::now_ns() % 100000);
  std::printf("seed %d\n", seed);
  constexpr int kStall = 5, kSteps = 30;
  // Group "a": rank 3 stops between dispatch and combine of step kStall.
  std::vector<job::Child*> survivors;
  for (int r = 0; r < 3; ++r) {
    auto v = args("a", 4, r, kSteps, seed);
    v.push_back("--tolerate-peer-lost");
    survivors.push_back(&worker(v));
  }
  auto v3 = args("a", 4, 3, kSteps, seed);
  v3.insert(v3.end(), {"--stall-at", std::to_string(kStall)});
  job::Child& victim = worker(v3);
  // Group "b" runs beside it the whole time.
  std::vector<job::Child*> others;
  for (int r = 0; r < 2; ++r) others.push_back(&worker(args("b", 2, r, 400, seed + 7)));

  std::string line;
  ASSERT_TRUE(read_until(victim, "STALLED", line, 30000)) << "rank 3 never reached its stall point";
  const int64_t killed_at = job::now_ns();
  victim.kill(SIGKILL);
  EXPECT_EQ(victim.wait(10000), 128 + SIGKILL);
  for (auto* s : survivors) {
    ASSERT_TRUE(read_until(*s, "PEER_LOST", line, 20000)) << "a survivor never saw PEER_LOST";
    EXPECT_NE(line.find("rank 3"), std::string::npos) << line;
    const double ms = static_cast<double>(stamp_of(line) - killed_at) / 1e6;
    std::printf("PEER_LOST after %.1f ms: %s\n", ms, line.c_str());
    EXPECT_LT(ms, 2000.0) << "PEER_LOST took too long (group timeout is 20000 ms)";
  }
  // Rank 3 re-joins with the same spec and generation and resumes at the stalled step.
  auto vr = args("a", 4, 3, kSteps, seed);
  vr.insert(vr.end(), {"--start-step", std::to_string(kStall), "--tolerate-peer-lost"});
  job::Child& rejoined = worker(vr);
  for (auto* s : survivors) {
    job::WorkerResult res;
    bool got = false;
    EXPECT_EQ(finish(*s, res, got), 0) << "seed " << seed;
    EXPECT_TRUE(got);
    EXPECT_EQ(res.steps, kSteps);
  }
  job::WorkerResult rr;
  bool got = false;
  EXPECT_EQ(finish(rejoined, rr, got), 0) << "seed " << seed;
  EXPECT_TRUE(got);
  EXPECT_EQ(rr.steps, kSteps - kStall);
  for (auto* o : others) {
    job::WorkerResult res;
    EXPECT_EQ(finish(*o, res, got), 0) << "group b was disturbed";
    EXPECT_TRUE(got);
    EXPECT_EQ(res.peer_lost, 0);
    EXPECT_EQ(res.steps, 400);
  }
}

TEST_F(FaultTest, DaemonKilledClientsSeeDaemonLostWithinOneSecond) {
  std::vector<job::Child*> ws;
  for (int r = 0; r < 2; ++r) {
    auto v = args("d", 2, r, 1, 1);
    v.push_back("--ring-and-wait");  // rank r rings slot r: neither completes
    ws.push_back(&worker(v));
  }
  std::string line;
  for (auto* w : ws) ASSERT_TRUE(read_until(*w, "WAITING", line, 20000));
  const int64_t killed_at = job::now_ns();
  daemon().child().kill(SIGKILL);
  for (auto* w : ws) {
    ASSERT_TRUE(read_until(*w, "DAEMON_LOST", line, 5000)) << line;
    const double ms = static_cast<double>(stamp_of(line) - killed_at) / 1e6;
    std::printf("DAEMON_LOST after %.1f ms\n", ms);
    EXPECT_LT(ms, 1000.0);
    EXPECT_EQ(w->wait(10000), 0);
  }
  EXPECT_EQ(daemon().child().wait(5000), 128 + SIGKILL);
}

TEST_F(FaultTest, SlowRankIsNotDeclaredDead) {
  epd_client_t* a = connect_or_die(socket());
  epd_client_t* b = connect_or_die(socket());
  epd_group_t* ga = nullptr;
  epd_group_t* gb = nullptr;
  std::thread t([&] {
    const epd_group_spec_t s = small_spec("slow", 2, 0, 20000);
    EXPECT_EQ(epd_group_join(a, &s, &ga), EPD_OK);
  });
  const epd_group_spec_t s1 = small_spec("slow", 2, 1, 20000);
  ASSERT_EQ(epd_group_join(b, &s1, &gb), EPD_OK) << epd_client_last_error(b);
  t.join();
  epd_dispatch_args_t args0{};
  args0.struct_size = sizeof args0;
  epd_dispatch_result_t res{};
  res.struct_size = sizeof res;
  ASSERT_EQ(epd_group_dispatch(ga, 0, &args0), EPD_OK);
  // Rank 1 is late (still "compiling"): rank 0's short waits time out, nothing is declared lost.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(epd_group_dispatch_wait(ga, 0, 150, &res), EPD_ERR_TIMEOUT) << epd_group_last_error(ga);
  ASSERT_EQ(epd_group_dispatch(gb, 0, &args0), EPD_OK);
  EXPECT_EQ(epd_group_dispatch_wait(ga, 0, 5000, &res), EPD_OK) << epd_group_last_error(ga);
  EXPECT_EQ(epd_group_dispatch_wait(gb, 0, 5000, &res), EPD_OK) << epd_group_last_error(gb);
  EXPECT_TRUE(wait_rank_state(socket(), "slow", 1, "joined"));
  epd_group_leave(ga);
  epd_group_leave(gb);
  epd_client_disconnect(a);
  epd_client_disconnect(b);
}

}  // namespace
}  // namespace epd::test
