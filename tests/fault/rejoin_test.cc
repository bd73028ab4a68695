// rejoin_test.cc — issue 14, finding 8: recovery semantics through the real
// epd. A rank SIGKILLed (inside combine_wait, or between steps) re-joins
// alone; its survivors get EPD_ERR_PEER_LOST only for operations started
// before the re-join (the open dispatch/combine pair, an op rung while the
// rank was away), never on their next step on another slot. A first join of
// a newer generation leaves the running one alone until the new generation is
// complete; a second combine for one dispatch is SLOT_BUSY naming it.
// Survivors are in-process handles; the killed rank is fault_rank_helper, a
// process driven line by line on stdin, ended by pid. Label: fault.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "rank_helper_process.h"

namespace epd::test {
namespace {

// In-process ranks of one group, driven together from the test thread.
struct Ranks {
  std::vector<epd_client_t*> clients;
  std::vector<epd_group_t*> groups;
  ~Ranks() {
    for (auto* g : groups)
      if (g) epd_group_leave(g);
    for (auto* c : clients) epd_client_disconnect(c);
  }
};

epd_group_spec_t spec_of(const char* name, int32_t world, int32_t rank, uint64_t generation, uint32_t timeout_ms) {
  epd_group_spec_t s = small_spec(name, world, rank, timeout_ms);
  s.generation = generation;
  return s;
}

// Ranks `ranks` of `name` join on threads (a join returns once the group is
// complete, which may need the helper too); returns their statuses.
std::vector<epd_status_t> join_all(const std::string& socket, Ranks& r, const char* name, int32_t world,
                                   const std::vector<int32_t>& ranks, uint64_t generation, uint32_t timeout_ms) {
  const size_t base = r.groups.size();
  std::vector<epd_status_t> st(ranks.size(), EPD_ERR_INTERNAL);
  r.groups.resize(base + ranks.size(), nullptr);
  for (size_t i = 0; i < ranks.size(); ++i) r.clients.push_back(connect_or_die(socket));
  std::vector<std::thread> t;
  for (size_t i = 0; i < ranks.size(); ++i)
    t.emplace_back([&, i] {
      const epd_group_spec_t s = spec_of(name, world, ranks[i], generation, timeout_ms);
      st[i] = epd_group_join(r.clients[base + i], &s, &r.groups[base + i]);
    });
  for (auto& th : t) th.join();
  return st;
}

std::vector<float> g_x(8 * 32, 0.5f);
std::vector<int32_t> g_ids = {0, 1, 2, 3, 1, 2, 3, 0};

epd_status_t dispatch(epd_group_t* g, int slot) {
  epd_dispatch_args_t a{sizeof a, g_x.data(), g_ids.data(), EPD_ID_INT32, nullptr, 4};
  return epd_group_dispatch(g, slot, &a);
}
epd_status_t dwait(epd_group_t* g, int slot) {
  epd_dispatch_result_t r{};
  r.struct_size = sizeof r;
  return epd_group_dispatch_wait(g, slot, 0, &r);
}
epd_status_t cwait(epd_group_t* g, int slot) {
  const void* out = nullptr;
  return epd_group_combine_wait(g, slot, 0, &out);
}

// One whole step on `slot` by every in-process rank (and the helper, when
// given); every call must succeed.
void step(Ranks& r, int slot, Helper* h) {
  SCOPED_TRACE("step on slot " + std::to_string(slot));
  if (h) h->send("step " + std::to_string(slot) + " 2");
  for (auto* g : r.groups) ASSERT_EQ(dispatch(g, slot), EPD_OK) << epd_group_last_error(g);
  for (auto* g : r.groups) ASSERT_EQ(dwait(g, slot), EPD_OK) << epd_group_last_error(g);
  for (auto* g : r.groups) ASSERT_EQ(epd_group_combine(g, slot, EPD_WEIGHTS_ONES), EPD_OK) << epd_group_last_error(g);
  for (auto* g : r.groups) ASSERT_EQ(cwait(g, slot), EPD_OK) << epd_group_last_error(g);
  if (h) {
    EXPECT_EQ(h->line(), "OK step");
  }
}

class RejoinTest : public DaemonTest {
 protected:
  // Ranks 0-2 in-process, rank 3 the helper; every rank joined.
  void start(Ranks& r, std::unique_ptr<Helper>& h) {
    h = std::make_unique<Helper>(*watchdog_, socket());
    ASSERT_GT(h->pid(), 0);
    h->send("join re 4 3 1 20000");
    const auto st = join_all(socket(), r, "re", 4, {0, 1, 2}, 1, 20000);
    for (auto s : st) ASSERT_EQ(s, EPD_OK);
    ASSERT_EQ(h->line(), "JOINED");
  }
  // The killed rank 3 comes back in a new process.
  void rejoin(std::unique_ptr<Helper>& h) {
    ASSERT_TRUE(wait_rank_state(socket(), "re", 3, "lost")) << "the daemon never saw rank 3 go";
    h = std::make_unique<Helper>(*watchdog_, socket());
    ASSERT_EQ(h->ask("join re 4 3 1 20000"), "JOINED");
  }
};

// Killed inside combine_wait on slot 0: the survivors' open pair on slot 0
// fails (before and after the re-join: it started before), and once rank 3
// is back every step works, on slot 1 first, then alternating.
TEST_F(RejoinTest, KilledInCombineWaitSurvivorsNextStepOnTheOtherSlotWorks) {
  Ranks r;
  std::unique_ptr<Helper> h;
  ASSERT_NO_FATAL_FAILURE(start(r, h));
  ASSERT_NO_FATAL_FAILURE(step(r, 0, h.get()));
  ASSERT_NO_FATAL_FAILURE(step(r, 1, h.get()));
  for (auto* g : r.groups) ASSERT_EQ(dispatch(g, 0), EPD_OK);
  ASSERT_EQ(h->ask("dispatch 0 2"), "OK dispatch");
  ASSERT_EQ(h->ask("dwait 0"), "WAITING dwait");
  for (auto* g : r.groups) ASSERT_EQ(dwait(g, 0), EPD_OK) << epd_group_last_error(g);
  ASSERT_EQ(h->line(), "OK dwait");
  ASSERT_EQ(h->ask("combine 0"), "OK combine");
  ASSERT_EQ(h->ask("cwait 0"), "WAITING cwait");
  h->kill_now();
  // Ranks 0 and 1 combine before the re-join, rank 2 after it: all get PEER_LOST naming rank 3.
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(epd_group_combine(r.groups[i], 0, EPD_WEIGHTS_ONES), EPD_OK);
    EXPECT_EQ(cwait(r.groups[i], 0), EPD_ERR_PEER_LOST) << epd_group_last_error(r.groups[i]);
    EXPECT_NE(std::string(epd_group_last_error(r.groups[i])).find("rank 3"), std::string::npos);
  }
  ASSERT_NO_FATAL_FAILURE(rejoin(h));
  ASSERT_EQ(epd_group_combine(r.groups[2], 0, EPD_WEIGHTS_ONES), EPD_OK);
  EXPECT_EQ(cwait(r.groups[2], 0), EPD_ERR_PEER_LOST) << "rank 2's pair on slot 0 started before the re-join";
  for (int s : {1, 0, 1, 0, 1}) ASSERT_NO_FATAL_FAILURE(step(r, s, h.get()));
}

// Killed between steps (every slot idle): an op rung while rank 3 is away
// gets PEER_LOST; after the re-join both slots work at once.
TEST_F(RejoinTest, KilledBetweenStepsOnlyOpsBeforeTheRejoinSeeTheLoss) {
  Ranks r;
  std::unique_ptr<Helper> h;
  ASSERT_NO_FATAL_FAILURE(start(r, h));
  ASSERT_NO_FATAL_FAILURE(step(r, 0, h.get()));
  ASSERT_NO_FATAL_FAILURE(step(r, 1, h.get()));
  h->kill_now();
  ASSERT_TRUE(wait_rank_state(socket(), "re", 3, "lost"));
  ASSERT_EQ(dispatch(r.groups[0], 1), EPD_OK);
  EXPECT_EQ(dwait(r.groups[0], 1), EPD_ERR_PEER_LOST) << epd_group_last_error(r.groups[0]);
  ASSERT_NO_FATAL_FAILURE(rejoin(h));
  for (int s : {0, 1, 1, 0, 0, 1}) ASSERT_NO_FATAL_FAILURE(step(r, s, h.get()));
  // A second loss after the recovery is reported again, to ops started before the next re-join.
  h->kill_now();
  ASSERT_TRUE(wait_rank_state(socket(), "re", 3, "lost"));
  ASSERT_EQ(dispatch(r.groups[1], 0), EPD_OK);
  EXPECT_EQ(dwait(r.groups[1], 0), EPD_ERR_PEER_LOST) << epd_group_last_error(r.groups[1]);
  ASSERT_NO_FATAL_FAILURE(rejoin(h));
  for (int s : {1, 0}) ASSERT_NO_FATAL_FAILURE(step(r, s, h.get()));
}

// A first join of generation 2 leaves generation 1 running; generation 2
// replaces it only once complete. Until then its join may time out without
// harm to generation 1.
TEST_F(RejoinTest, NewerGenerationReplacesTheRunningOneOnlyWhenComplete) {
  Ranks g1;
  for (auto s : join_all(socket(), g1, "gen", 2, {0, 1}, 1, 20000)) ASSERT_EQ(s, EPD_OK);
  ASSERT_NO_FATAL_FAILURE(step(g1, 0, nullptr));
  // Rank 0 of generation 2 alone (a mis-launched process): its join times out.
  Ranks lone;
  std::vector<epd_status_t> lone_st;
  std::jthread t([&] { lone_st = join_all(socket(), lone, "gen", 2, {0}, 2, 3000); });
  ASSERT_TRUE(wait_rank_state(socket(), "gen", 0, "joining"));
  for (int s : {1, 0, 1}) ASSERT_NO_FATAL_FAILURE(step(g1, s, nullptr));
  t.join();
  ASSERT_EQ(lone_st.size(), 1u);
  EXPECT_EQ(lone_st[0], EPD_ERR_TIMEOUT) << epd_client_last_error(lone.clients[0]);
  ASSERT_NO_FATAL_FAILURE(step(g1, 0, nullptr));
  // A stale generation is refused, naming both.
  {
    Ranks stale;
    const auto st = join_all(socket(), stale, "gen", 2, {1}, 0, 2000);
    EXPECT_EQ(st[0], EPD_ERR_STALE_GENERATION) << epd_client_last_error(stale.clients[0]);
  }
  // The whole of generation 2: it replaces generation 1, whose next op is GROUP_CLOSED.
  Ranks g2;
  for (auto s : join_all(socket(), g2, "gen", 2, {0, 1}, 2, 20000)) ASSERT_EQ(s, EPD_OK);
  ASSERT_EQ(dispatch(g1.groups[0], 1), EPD_OK);
  EXPECT_EQ(dwait(g1.groups[0], 1), EPD_ERR_GROUP_CLOSED) << epd_group_last_error(g1.groups[0]);
  for (int s : {0, 1}) ASSERT_NO_FATAL_FAILURE(step(g2, s, nullptr));
}

// A newer generation retires one that is still forming: its pending join
// gets GROUP_CLOSED, the new group runs and the daemon stays up. (Retiring a
// generation with pending members once read the freed group: found by the
// whole-tree libFuzzer build of epd_fuzz_requests; visible under ASan.)
TEST_F(RejoinTest, NewerGenerationRetiresAFormingOneWithPendingJoins) {
  Ranks forming;
  std::vector<epd_status_t> forming_st;
  std::jthread t([&] { forming_st = join_all(socket(), forming, "forming", 3, {1}, 0, 20000); });
  ASSERT_TRUE(wait_rank_state(socket(), "forming", 1, "joining"));
  Ranks newer;
  for (auto st : join_all(socket(), newer, "forming", 1, {0}, 2, 20000))
    ASSERT_EQ(st, EPD_OK) << epd_client_last_error(newer.clients[0]);
  t.join();
  ASSERT_EQ(forming_st.size(), 1u);
  EXPECT_EQ(forming_st[0], EPD_ERR_GROUP_CLOSED) << epd_client_last_error(forming.clients[0]);
  for (int slot : {0, 1}) ASSERT_NO_FATAL_FAILURE(step(newer, slot, nullptr));
  epd_client_t* probe = connect_or_die(socket());
  ASSERT_NE(probe, nullptr);
  epd_client_disconnect(probe);
}

// A second combine for one dispatch: SLOT_BUSY while the first is in flight
// (the message says so), NO_DISPATCH once the slot is idle again; a negative
// token count is INVALID_ARGUMENT naming the value.
TEST_F(RejoinTest, SecondCombineForOneDispatchIsSlotBusy) {
  Ranks r;
  for (auto s : join_all(socket(), r, "twice", 2, {0, 1}, 1, 20000)) ASSERT_EQ(s, EPD_OK);
  epd_group_t* a = r.groups[0];
  for (auto* g : r.groups) ASSERT_EQ(dispatch(g, 0), EPD_OK);
  for (auto* g : r.groups) ASSERT_EQ(dwait(g, 0), EPD_OK);
  ASSERT_EQ(epd_group_combine(a, 0, EPD_WEIGHTS_ONES), EPD_OK);
  EXPECT_EQ(epd_group_combine(a, 0, EPD_WEIGHTS_ONES), EPD_ERR_SLOT_BUSY);
  const std::string busy = epd_group_last_error(a);
  EXPECT_NE(busy.find("already in flight"), std::string::npos) << busy;
  EXPECT_EQ(busy.find("dispatch_wait"), std::string::npos) << "the dispatch_wait had finished: " << busy;
  ASSERT_EQ(epd_group_combine(r.groups[1], 0, EPD_WEIGHTS_ONES), EPD_OK);
  for (auto* g : r.groups) ASSERT_EQ(cwait(g, 0), EPD_OK) << epd_group_last_error(g);
  EXPECT_EQ(epd_group_combine(a, 0, EPD_WEIGHTS_ONES), EPD_ERR_NO_DISPATCH);
  EXPECT_NE(std::string(epd_group_last_error(a)).find("the slot is idle"), std::string::npos)
      << epd_group_last_error(a);
  epd_dispatch_args_t neg{sizeof neg, g_x.data(), g_ids.data(), EPD_ID_INT32, nullptr, -1};
  EXPECT_EQ(epd_group_dispatch(a, 1, &neg), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(epd_group_last_error(a)).find("n_tokens = -1"), std::string::npos) << epd_group_last_error(a);
  ASSERT_NO_FATAL_FAILURE(step(r, 1, nullptr));
}

}  // namespace
}  // namespace epd::test
