// quota_test.cc — issue 14, finding 3 against a real `epd` with small
// [limits]: one uid opens sessions and creates groups until a quota is hit.
// The one above it gets EPD_ERR_QUOTA_EXCEEDED naming the key, the uid and
// the numbers, the daemon stays up, the groups already there keep working,
// releasing one (a session closed, a group destroyed) makes room again, and
// `epctl status` shows the limits and the uid's use. Runs as any uid.
// Label: security.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>

#include "epctl_query.h"
#include "tenant_support.h"

namespace epd::test {
namespace {

class QuotaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    watchdog_ = std::make_unique<Watchdog>(std::string(info->test_suite_name()) + "." + info->name(), 90);
  }
  void TearDown() override {
    if (daemon_) {
      EXPECT_TRUE(daemon_->child().running()) << "epd died";
      EXPECT_EQ(daemon_->stop(), 0) << "epd did not exit 0 on SIGTERM";
    }
    daemon_.reset();
    watchdog_.reset();
  }
  void start(const std::string& limits) {
    daemon_ = std::make_unique<TenantDaemon>("[limits]\n" + limits);
    ASSERT_TRUE(daemon_->ok()) << daemon_->error();
    watchdog_->add_pid(daemon_->child().pid());
  }
  std::string status_json() {
    std::string body;
    EXPECT_EQ(query_daemon_status(daemon_->socket(), "status", true, body), EPD_OK);
    return body;
  }
  static void expect_parts(const std::string& msg, const std::vector<std::string>& parts) {
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
  }
  // A world-1 group's join, with one dispatch/combine of 0 tokens to show it works.
  static epd_status_t join_and_use(epd_client_t* c, const char* name, epd_group_t** g) {
    const epd_group_spec_t s = small_spec(name, 1, 0);
    const epd_status_t rc = epd_group_join(c, &s, g);
    if (rc != EPD_OK) return rc;
    epd_dispatch_args_t a{sizeof(epd_dispatch_args_t), nullptr, nullptr, EPD_ID_INT32, nullptr, 0};
    EXPECT_EQ(epd_group_dispatch(*g, 0, &a), EPD_OK) << epd_group_last_error(*g);
    epd_dispatch_result_t res{};
    res.struct_size = sizeof res;
    EXPECT_EQ(epd_group_dispatch_wait(*g, 0, 10000, &res), EPD_OK) << epd_group_last_error(*g);
    EXPECT_EQ(epd_group_combine(*g, 0, EPD_WEIGHTS_ONES), EPD_OK) << epd_group_last_error(*g);
    const void* out = nullptr;
    EXPECT_EQ(epd_group_combine_wait(*g, 0, 10000, &out), EPD_OK) << epd_group_last_error(*g);
    return rc;
  }
  // After a release: the group's last op may still be completing on the
  // daemon's control thread (a group is destroyed once idle), so retry a
  // bounded number of times while the quota is still full.
  static epd_status_t join_after_release(epd_client_t* c, const char* name, epd_group_t** g) {
    epd_status_t rc = EPD_ERR_QUOTA_EXCEEDED;
    for (int i = 0; i < 500 && rc == EPD_ERR_QUOTA_EXCEEDED; ++i) rc = join_and_use(c, name, g);
    return rc;
  }
  std::string uid() const { return "uid " + std::to_string(geteuid()); }

  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<TenantDaemon> daemon_;
};

TEST_F(QuotaTest, SessionsPerUid) {
  start("max_sessions_per_uid = 3\n");
  std::vector<epd_client_t*> held;
  for (int i = 0; i < 3; ++i) held.push_back(connect_or_die(daemon_->socket()));
  epd_client_t* extra = nullptr;
  EXPECT_EQ(epd_client_connect(daemon_->socket().c_str(), &extra), EPD_ERR_QUOTA_EXCEEDED);
  expect_parts(epd_client_last_error(nullptr),
               {"limits.max_sessions_per_uid = 3", uid(), "already holds 3 sessions"});
  EXPECT_TRUE(daemon_->child().running());
  // The sessions held still work; closing one makes room.
  epd_group_t* g = nullptr;
  ASSERT_EQ(join_and_use(held[0], "still", &g), EPD_OK) << epd_client_last_error(held[0]);
  epd_group_leave(g);
  epd_client_disconnect(held.back());
  held.pop_back();
  epd_client_t* again = nullptr;
  // The daemon sees the close on its next loop turn: retry briefly (bounded).
  epd_status_t rc = EPD_ERR_QUOTA_EXCEEDED;
  for (int i = 0; i < 200 && rc == EPD_ERR_QUOTA_EXCEEDED; ++i)
    rc = epd_client_connect(daemon_->socket().c_str(), &again);
  ASSERT_EQ(rc, EPD_OK) << epd_client_last_error(nullptr);
  held.push_back(again);
  // `epctl status` is a session too, so show the use through one already held.
  epd_client_disconnect(held.back());
  held.pop_back();
  std::string body;
  rc = EPD_ERR_QUOTA_EXCEEDED;
  for (int i = 0; i < 200 && rc != EPD_OK; ++i) rc = query_daemon_status(daemon_->socket(), "status", true, body);
  ASSERT_EQ(rc, EPD_OK) << body;
  expect_parts(body, {"\"max_sessions_per_uid\":3", "{\"uid\":" + std::to_string(geteuid()) + ",\"sessions\":3,"});
  for (auto* c : held) epd_client_disconnect(c);
}

TEST_F(QuotaTest, GroupsGlobal) {
  start("max_groups_per_uid = 0\nmax_groups = 1\n");
  epd_client_t* c = connect_or_die(daemon_->socket());
  epd_group_t *a = nullptr, *b = nullptr;
  ASSERT_EQ(join_and_use(c, "a", &a), EPD_OK) << epd_client_last_error(c);
  EXPECT_EQ(join_and_use(c, "b", &b), EPD_ERR_QUOTA_EXCEEDED);
  expect_parts(epd_client_last_error(c), {"limits.max_groups = 1", "1 groups exist", "group 'b' of " + uid()});
  EXPECT_TRUE(daemon_->child().running());
  epd_group_leave(a);
  ASSERT_EQ(join_after_release(c, "b", &b), EPD_OK) << epd_client_last_error(c);
  epd_group_leave(b);
  epd_client_disconnect(c);
}

TEST_F(QuotaTest, GroupsPerUid) {
  start("max_groups_per_uid = 2\nmax_groups = 3\n");
  epd_client_t* c = connect_or_die(daemon_->socket());
  epd_group_t *a = nullptr, *b = nullptr, *x = nullptr;
  ASSERT_EQ(join_and_use(c, "a", &a), EPD_OK) << epd_client_last_error(c);
  ASSERT_EQ(join_and_use(c, "b", &b), EPD_OK) << epd_client_last_error(c);
  EXPECT_EQ(join_and_use(c, "c", &x), EPD_ERR_QUOTA_EXCEEDED);
  expect_parts(epd_client_last_error(c), {"limits.max_groups_per_uid = 2", uid(), "already holds 2 groups", "'c'"});
  EXPECT_TRUE(daemon_->child().running());
  expect_parts(status_json(), {"\"max_groups_per_uid\":2", "\"max_groups\":3", "\"groups\":2,",
                               // sessions: c and the status query itself
                               "{\"uid\":" + std::to_string(geteuid()) + ",\"sessions\":2,\"groups\":2,"});
  // The groups there still work; destroying one (its last rank leaves) makes room.
  epd_group_leave(a);
  ASSERT_EQ(join_after_release(c, "c", &x), EPD_OK) << epd_client_last_error(c);
  epd_group_t* y = nullptr;
  ASSERT_EQ(join_and_use(c, "b", &y), EPD_ERR_DUPLICATE_RANK);  // b is still there, rank 0 held
  epd_group_leave(b);
  epd_group_leave(x);
  epd_client_disconnect(c);
}

TEST_F(QuotaTest, WorkspaceBytesPerUidAndGlobal) {
  const epd_group_spec_t s = small_spec("w", 1, 0);
  uint64_t bytes = 0;
  ASSERT_EQ(epd_group_spec_workspace_bytes(&s, 0, EPD_GPU_HOST, &bytes), EPD_OK);
  ASSERT_GT(bytes, 0u);
  const uint64_t limit = bytes + bytes / 2;  // one group fits, two do not
  start("max_workspace_bytes_per_uid = " + std::to_string(limit) + "\nmax_workspace_bytes = " +
        std::to_string(3 * bytes) + "\n");
  epd_client_t* c = connect_or_die(daemon_->socket());
  epd_group_t *a = nullptr, *b = nullptr;
  ASSERT_EQ(join_and_use(c, "w1", &a), EPD_OK) << epd_client_last_error(c);
  EXPECT_EQ(join_and_use(c, "w2", &b), EPD_ERR_QUOTA_EXCEEDED);
  expect_parts(epd_client_last_error(c),
               {"limits.max_workspace_bytes_per_uid = " + std::to_string(limit), uid(),
                "holds " + std::to_string(bytes) + " bytes", "group 'w2' needs " + std::to_string(bytes) + " more"});
  EXPECT_TRUE(daemon_->child().running());
  expect_parts(status_json(), {"\"workspace_bytes\":" + std::to_string(bytes)});
  epd_group_leave(a);
  ASSERT_EQ(join_after_release(c, "w2", &b), EPD_OK) << epd_client_last_error(c);
  epd_group_leave(b);
  epd_client_disconnect(c);
}

}  // namespace
}  // namespace epd::test
