// status_table_test.cc — issue 14, finding 7: the text tables of `epctl`
// (daemon/status_report.cc) keep their columns aligned whatever the cell
// lengths: a long group name, a long executor string, big numbers, lost
// ranks. Each column's cells must start (text) or end (numbers) at the same
// character in every line, header included, and never run into the next
// column. `all` includes the topology. Label: unit.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "status_report.h"

namespace epd {
namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string l;
  while (std::getline(in, l)) out.push_back(l);
  return out;
}

// Finds each expected cell in order in each line; checks alignment per column.
void expect_aligned(const std::string& text, const std::vector<std::vector<std::string>>& cells,
                    const std::vector<bool>& right) {
  SCOPED_TRACE(text);
  const auto lines = lines_of(text);
  ASSERT_EQ(lines.size(), cells.size());
  const size_t ncol = right.size();
  std::vector<std::vector<std::pair<size_t, size_t>>> at(ncol);  // [col][line] = [begin, end)
  for (size_t i = 0; i < lines.size(); ++i) {
    ASSERT_EQ(cells[i].size(), ncol);
    size_t cursor = 0;
    for (size_t c = 0; c < ncol; ++c) {
      const size_t b = lines[i].find(cells[i][c], cursor);
      ASSERT_NE(b, std::string::npos) << "line " << i << " has no '" << cells[i][c] << "'";
      at[c].push_back({b, b + cells[i][c].size()});
      cursor = b + cells[i][c].size();
    }
    EXPECT_NE(lines[i].back(), ' ') << "trailing space in line " << i;
  }
  for (size_t c = 0; c < ncol; ++c) {
    for (size_t i = 1; i < lines.size(); ++i) {
      if (right[c])
        EXPECT_EQ(at[c][i].second, at[c][0].second) << "column " << c << " line " << i << " ends elsewhere";
      else
        EXPECT_EQ(at[c][i].first, at[c][0].first) << "column " << c << " line " << i << " starts elsewhere";
    }
    if (c + 1 < ncol) {
      size_t max_end = 0, min_begin = SIZE_MAX;
      for (size_t i = 0; i < lines.size(); ++i) {
        max_end = std::max(max_end, at[c][i].second);
        min_begin = std::min(min_begin, at[c + 1][i].first);
      }
      EXPECT_LT(max_end, min_begin) << "column " << c << " runs into column " << c + 1;
    }
  }
}

StatusSnapshot::GroupRow group(const std::string& name, const std::string& executor) {
  StatusSnapshot::GroupRow g;
  g.name = name;
  g.executor = executor;
  g.dtype = "bf16";
  g.layout = "expert_major";
  g.mode = "high_throughput";
  g.state = "running";
  return g;
}

TEST(StatusTable, GroupsColumnsAlignWithLongNamesAndExecutors) {
  StatusSnapshot s;
  auto a = group("a", "host");
  a.generation = 1;
  a.world_size = 2;
  a.joined = 2;
  a.num_experts = 16;
  a.top_k = 2;
  a.hidden = 64;
  a.slots = 2;
  a.max_tokens = 8;
  auto b = group("deepseek-v3.prefill.ep64.generation-long-name-of-63-characters",
                 "GPU group on GPUs 0,1,2,3,4,5,6,7, 68719476736 bytes of GPU workspace; variant multi_gpu");
  b.generation = 18446744073709551615ull;
  b.world_size = 1024;
  b.joined = 1000;
  b.num_experts = 65536;
  b.top_k = 64;
  b.hidden = 1048576;
  b.slots = 8;
  b.max_tokens = 1048576;
  b.lost = {3, 17, 1023};
  b.state = "joining";
  s.groups = {a, b};
  const std::string text = render_status(s, proto::StatusWhat::kGroups, false);
  expect_aligned(text,
                 {{"GROUP", "GEN", "STATE", "RANKS", "EXPERTS", "TOPK", "HIDDEN", "DTYPE", "LAYOUT", "MODE", "SLOTS",
                   "MAXTOK", "LOST", "EXECUTOR"},
                  {"a", "1", "running", "2/2", "16", "2", "64", "bf16", "expert_major", "high_throughput", "2", "8",
                   "-", "host"},
                  {b.name, "18446744073709551615", "joining", "1000/1024", "65536", "64", "1048576", "bf16",
                   "expert_major", "high_throughput", "8", "1048576", "3,17,1023", b.executor}},
                 {false, true, false, true, true, true, true, false, false, false, true, true, false, false});
}

TEST(StatusTable, RanksCountersAndSessionsAlign) {
  StatusSnapshot s;
  StatusSnapshot::RankRow r1, r2;
  r1.group = "a";
  r1.state = "joined";
  r1.rank = 0;
  r1.pid = 7;
  r1.session = 1;
  r2.group = "a-much-longer-group-name-than-the-twenty-char-column";
  r2.state = "lost";
  r2.rank = 1023;
  r2.pid = 4194304;
  r2.uid = 4294967294u;
  r2.session = 123456789012ull;
  r2.generation = 99;
  r2.counters.bytes_sent = 123456789012345678ull;
  r2.last_progress_age_s = 2.5;
  s.ranks = {r1, r2};
  expect_aligned(render_status(s, proto::StatusWhat::kRanks, false),
                 {{"GROUP", "GEN", "RANK", "STATE", "SESSION", "PID", "UID", "LAST PROGRESS"},
                  {"a", "0", "0", "joined", "1", "7", "0", "never"},
                  {r2.group, "99", "1023", "lost", "123456789012", "4194304", "4294967294", "2.5s ago"}},
                 {false, true, true, false, true, true, true, false});
  expect_aligned(render_status(s, proto::StatusWhat::kCounters, false),
                 {{"GROUP", "RANK", "DISPATCH", "COMBINE", "TOKENS", "ROWS_RECV", "BYTES_SENT", "BYTES_RECV",
                   "LAST PROGRESS"},
                  {"a", "0", "0", "0", "0", "0", "0", "0", "never"},
                  {r2.group, "1023", "0", "0", "0", "0", "123456789012345678", "0", "2.5s ago"}},
                 {false, true, true, true, true, true, true, true, false});
  StatusSnapshot::SessionRow x;
  x.id = 5;
  x.pid = 99;
  x.name = "a-client-with-a-name-longer-than-twenty";
  x.memberships = 3;
  x.connected_s = 1.5;
  s.sessions_list = {x};
  expect_aligned(render_status(s, proto::StatusWhat::kSessions, false),
                 {{"SESSION", "PID", "UID", "GID", "CLIENT", "MEMBERSHIPS", "CONNECTED"},
                  {"5", "99", "0", "0", x.name, "3", "1.5s"}},
                 {true, true, true, true, false, true, false});
}

TEST(StatusTable, AllIncludesTheTopology) {
  StatusSnapshot s;
  const std::string text = render_status(s, proto::StatusWhat::kAll, false);
  const std::string topo = render_status(s, proto::StatusWhat::kTopology, false);
  ASSERT_FALSE(topo.empty());
  EXPECT_NE(text.find(topo), std::string::npos) << text;
  const std::string json = render_status(s, proto::StatusWhat::kAll, true);
  EXPECT_NE(json.find(",\"topology\":" + render_status(s, proto::StatusWhat::kTopology, true) + "}"), std::string::npos)
      << json;
}

}  // namespace
}  // namespace epd
