// config_test.cc — epd.toml parsing, validation messages, command-line
// overrides, --print-config (round trip, secret redacted, every [[group]] row
// of the spec's field list), the example config.
#include "config.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <type_traits>

#include "service_test_support.h"

namespace epd {
namespace {

using test::TempDir;

#define SKIP_WITHOUT_TOML()                                                      \
  do {                                                                           \
    if (!config_files_supported())                                               \
      GTEST_SKIP() << "this build has no toml++: config files are unsupported"; \
  } while (0)

const char* kFullConfig = R"toml(
[server]
socket_path = "/tmp/epd-test/ctl.sock"
socket_mode = 0o640
socket_group = "wheel"
max_sessions = 64
allowed_uids = [1000, 1001]
join_timeout_ms = 5000
exit_watch_ms = 20

[executor]
host_threads = 6

[log]
level = "debug"
target = "stderr"

[cluster]
node_id = 1
listen_address = "0.0.0.0:7700"
secret = "hunter2-very-secret"
peers = ["10.0.0.1:7700", "10.0.0.2:7700", "[fe80::1]:7700"]
transport = "rdma"
rdma_fallback_to_tcp = false

[[group]]
name = "moe-a"
generation = 3
world_size = 4
placement = ["0:0", "0:1", 2, "1:host"]
num_experts = 8
top_k = 2
expert_owner = [3, 2, 1, 0, 0, 1, 2, 3]
hidden = 256
dtype = "fp16"
dispatch_quant = "fp8_e4m3"
max_tokens_per_rank = 64
mode = "low_latency"
layout = "expert_major"
slots = 3
timeout_ms = 1234
sm_budget = 20

[[group]]
name = "moe-b"
world_size = 2
num_experts = 4
top_k = 1
hidden = 16
max_tokens_per_rank = 8
)toml";

std::vector<const char*> argv_of(std::initializer_list<const char*> args) {
  std::vector<const char*> v{"epd"};
  v.insert(v.end(), args.begin(), args.end());
  return v;
}

Result<LoadedConfig> load(const std::vector<const char*>& argv) {
  return load_config(static_cast<int>(argv.size()), argv.data());
}

TEST(Config, ParsesEveryField) {
  SKIP_WITHOUT_TOML();
  Result<DaemonConfig> r = parse_config_toml(kFullConfig, "full.toml");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const DaemonConfig& c = *r;
  EXPECT_EQ(c.socket_path, "/tmp/epd-test/ctl.sock");
  EXPECT_EQ(c.socket_mode, 0640u);
  EXPECT_EQ(c.socket_group, "wheel");
  EXPECT_EQ(c.max_sessions, 64u);
  EXPECT_EQ(c.allowed_uids, (std::vector<uint32_t>{1000, 1001}));
  EXPECT_EQ(c.join_timeout_ms, 5000u);
  EXPECT_EQ(c.exit_watch_ms, 20u);
  EXPECT_EQ(c.host_threads, 6u);
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.log_target, "stderr");
  EXPECT_EQ(c.node_id, 1u);
  EXPECT_EQ(c.listen_address, "0.0.0.0:7700");
  EXPECT_EQ(c.cluster_secret, "hunter2-very-secret");
  EXPECT_EQ(c.peers, (std::vector<std::string>{"10.0.0.1:7700", "10.0.0.2:7700", "[fe80::1]:7700"}));
  EXPECT_EQ(c.transport, "rdma");
  EXPECT_FALSE(c.rdma_fallback_to_tcp);
  ASSERT_EQ(c.groups.size(), 2u);

  const GroupSpec& a = c.groups[0];
  EXPECT_EQ(a.name, "moe-a");
  EXPECT_EQ(a.generation, 3u);
  EXPECT_EQ(a.world_size, 4);
  ASSERT_EQ(a.placement.size(), 4u);
  EXPECT_EQ(a.placement[0].node, 0);
  EXPECT_EQ(a.placement[0].gpu, 0);
  EXPECT_EQ(a.placement[1].gpu, 1);
  EXPECT_EQ(a.placement[2].node, 0);
  EXPECT_EQ(a.placement[2].gpu, 2);
  EXPECT_EQ(a.placement[3].node, 1);
  EXPECT_EQ(a.placement[3].gpu, EPD_GPU_HOST);
  EXPECT_EQ(a.num_experts, 8);
  EXPECT_EQ(a.top_k, 2);
  EXPECT_EQ(a.expert_owner, (std::vector<int32_t>{3, 2, 1, 0, 0, 1, 2, 3}));
  EXPECT_EQ(a.hidden, 256);
  EXPECT_EQ(a.dtype, EPD_DTYPE_FP16);
  EXPECT_EQ(a.dispatch_quant, EPD_QUANT_FP8_E4M3_BLOCK128);
  EXPECT_EQ(a.max_tokens_per_rank, 64);
  EXPECT_EQ(a.mode, EPD_MODE_LOW_LATENCY);
  EXPECT_EQ(a.layout, EPD_LAYOUT_EXPERT_MAJOR);
  EXPECT_EQ(a.slots, 3);
  EXPECT_EQ(a.timeout_ms, 1234u);
  EXPECT_EQ(a.sm_budget, 20);
  EXPECT_TRUE(a.validate().is_ok());

  // Defaults of a minimal group: host placement, contiguous owners, server timeout.
  const GroupSpec& b = c.groups[1];
  EXPECT_EQ(b.generation, 0u);
  ASSERT_EQ(b.placement.size(), 2u);
  EXPECT_EQ(b.placement[1].node, 0);
  EXPECT_EQ(b.placement[1].gpu, EPD_GPU_HOST);
  EXPECT_EQ(b.expert_owner, (std::vector<int32_t>{0, 0, 1, 1}));
  EXPECT_EQ(b.dtype, EPD_DTYPE_BF16);
  EXPECT_EQ(b.dispatch_quant, EPD_QUANT_NONE);
  EXPECT_EQ(b.mode, EPD_MODE_HIGH_THROUGHPUT);
  EXPECT_EQ(b.layout, EPD_LAYOUT_RANK_MAJOR);
  EXPECT_EQ(b.slots, 2);
  EXPECT_EQ(b.timeout_ms, 5000u);  // server.join_timeout_ms
}

TEST(Config, EmptyFileGivesDefaults) {
  SKIP_WITHOUT_TOML();
  Result<DaemonConfig> r = parse_config_toml("", "empty.toml");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(print_config(*r), print_config(DaemonConfig{}));
}

TEST(Config, SocketModeAsString) {
  SKIP_WITHOUT_TOML();
  Result<DaemonConfig> r = parse_config_toml("[server]\nsocket_mode = \"0600\"\n", "m.toml");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->socket_mode, 0600u);
}

struct BadCase {
  std::string toml;
  std::vector<std::string> must_contain;  // key and value (and the reason where useful)
};

// Every invalid case is rejected with a message naming the file, the key and the value.
TEST(Config, InvalidValuesNameFileKeyAndValue) {
  SKIP_WITHOUT_TOML();
  const std::string kGroup = "[[group]]\nname = \"g\"\nworld_size = 2\nnum_experts = 4\ntop_k = 2\n"
                       "hidden = 128\nmax_tokens_per_rank = 8\n";
  const std::vector<BadCase> cases = {
      {"[log]\nlevel = \"loud\"\n", {"bad.toml:2", "log.level", "'loud'", "is not one of: trace"}},
      {"[log]\ntarget = \"syslog\"\n", {"log.target", "'syslog'", "auto, stderr, journal"}},
      {"[log]\nlevel = 3\n", {"log.level", "3", "is not a string"}},
      {"[server]\nsocket_path = \"relative/epd.sock\"\n",
       {"server.socket_path", "'relative/epd.sock'", "absolute"}},
      {"[server]\nsocket_path = \"/" + std::string(120, 'x') + "\"\n",
       {"server.socket_path", "xxxxxxxx", "107"}},
      {"[server]\nsocket_mode = 0o1777\n", {"server.socket_mode", "1777"}},
      {"[server]\nsocket_mode = \"rw-rw----\"\n", {"server.socket_mode", "'rw-rw----'", "octal"}},
      {"[server]\nmax_sessions = 0\n", {"server.max_sessions", "= 0", "outside"}},
      {"[server]\nmax_sessions = \"many\"\n", {"server.max_sessions", "'many'", "not an integer"}},
      {"[server]\nallowed_uids = [1000, -2]\n", {"server.allowed_uids[1]", "-2"}},
      {"[server]\nallowed_uids = 1000\n", {"server.allowed_uids", "1000", "not an array"}},
      {"[server]\njoin_timeout_ms = 0\n", {"server.join_timeout_ms", "= 0"}},
      {"[server]\nexit_watch_ms = 1001\n", {"server.exit_watch_ms", "1001", "outside"}},
      {"[executor]\nhost_threads = 100000\n", {"executor.host_threads", "100000"}},
      {"[cluster]\ntransport = \"udp\"\n", {"cluster.transport", "'udp'", "tcp, rdma"}},
      {"[cluster]\npeers = [\"nohost\"]\n", {"cluster.peers[0]", "'nohost'", "host:port"}},
      {"[cluster]\npeers = [\"a:1\", \"b:0\"]\n", {"cluster.peers[1]", "'b:0'", "port"}},
      {"[cluster]\nnode_id = 2\npeers = [\"a:1\", \"b:2\"]\n",
       {"bad.toml", "cluster.node_id", "2", "cluster.peers (2 entries)"}},
      {"[cluster]\nlisten_address = \"x:99999\"\n", {"cluster.listen_address", "'x:99999'"}},
      {"[cluster]\nrdma_fallback_to_tcp = \"yes\"\n",
       {"cluster.rdma_fallback_to_tcp", "'yes'", "true or false"}},
      {"[server]\nsockt_path = \"/x\"\n", {"bad.toml:2", "unknown key 'server.sockt_path'"}},
      {"[serverx]\na = 1\n", {"unknown key 'serverx'"}},
      {"server = 3\n", {"server", "3", "not a table"}},
      {"[log]\nlevel = \n", {"bad.toml:2"}},  // TOML syntax error, with its line
      {"[group]\nname = \"g\"\n", {"group", "array of tables"}},
      {kGroup + "dtype = \"bf17\"\n", {"bad.toml:8", "group[0].dtype", "'bf17'", "bf16"}},
      {kGroup + "layout = \"diagonal\"\n", {"group[0].layout", "'diagonal'", "rank_major"}},
      {kGroup + "mode = \"fast\"\n", {"group[0].mode", "'fast'", "low_latency"}},
      {kGroup + "dispatch_quant = \"int4\"\n", {"group[0].dispatch_quant", "'int4'"}},
      {kGroup + "colour = \"red\"\n", {"unknown key 'group[0].colour'"}},
      {"[[group]]\nname = \"g\"\nworld_size = 2\nnum_experts = 4\ntop_k = 2\nmax_tokens_per_rank = 8\n",
       {"bad.toml:1", "group[0]", "missing", "'hidden'"}},
      {"[[group]]\nname = \"g\"\nworld_size = 0\nnum_experts = 4\ntop_k = 2\nhidden = 8\n"
       "max_tokens_per_rank = 8\n",
       {"group[0] ('g')", "world_size = 0"}},
      {kGroup + "top_k = 9\n", {"bad.toml"}},  // duplicate key: a TOML error
      {"[[group]]\nname = \"g\"\nworld_size = 2\nnum_experts = 4\ntop_k = 0\nhidden = 8\n"
       "max_tokens_per_rank = 8\n",
       {"group[0] ('g')", "top_k = 0"}},
      {"[[group]]\nname = \"a b\"\nworld_size = 2\nnum_experts = 4\ntop_k = 2\nhidden = 8\n"
       "max_tokens_per_rank = 8\n",
       {"group[0]", "name 'a b'"}},
      {kGroup + "placement = [\"0:0\", \"0:x\"]\n", {"group[0].placement[1]", "'0:x'"}},
      {kGroup + "placement = [\"0:0\"]\n", {"group[0]", "placement has 1 entries"}},
      {kGroup + "expert_owner = [0, 1, 1]\n", {"group[0]", "expert_owner has 3 entries"}},
      {kGroup + "expert_owner = [0, 1, 1, -1]\n", {"group[0].expert_owner[3]", "-1"}},
      {kGroup + "slots = 1\n", {"group[0] ('g')", "slots = 1"}},
      {"[[group]]\nname = \"g\"\nworld_size = 2\nnum_experts = 4\ntop_k = 2\nhidden = 100\n"
       "max_tokens_per_rank = 8\ndispatch_quant = \"fp8_e4m3\"\n",
       {"group[0]", "hidden = 100", "128"}},
      {kGroup + kGroup, {"group[1].name", "'g'", "already"}},
  };
  for (const BadCase& c : cases) {
    Result<DaemonConfig> r = parse_config_toml(c.toml, "bad.toml");
    ASSERT_FALSE(r.is_ok()) << "accepted:\n" << c.toml;
    const std::string& msg = r.status().message();
    EXPECT_EQ(msg.rfind("bad.toml", 0), 0u) << "message does not start with the file: " << msg;
    for (const std::string& s : c.must_contain)
      EXPECT_NE(msg.find(s), std::string::npos)
          << "message lacks \"" << s << "\": " << msg << "\nfor:\n" << c.toml;
  }
}

TEST(Config, NoFileMeansDefaults) {
  Result<LoadedConfig> r = load(argv_of({"--config", ""}));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->outcome, LoadOutcome::kRun);
  EXPECT_EQ(r->config.config_file, "");
  EXPECT_EQ(print_config(r->config), print_config(DaemonConfig{}));
}

TEST(Config, MissingNamedFileIsAnError) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.file("absent.toml");
  Result<LoadedConfig> r = load(argv_of({"--config", path.c_str()}));
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("No such file"), std::string::npos) << r.status().message();
}

TEST(Config, CommandLineOverridesWin) {
  SKIP_WITHOUT_TOML();
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.write("epd.toml", kFullConfig);
  Result<LoadedConfig> r = load(argv_of({"--config", path.c_str(), "--socket", "/run/other.sock",
                                         "--log-level", "warn", "--log-target", "journal",
                                         "--host-threads", "3", "--socket-mode", "0600",
                                         "--socket-group", "epd", "--max-sessions", "7",
                                         "--join-timeout-ms", "99", "--exit-watch-ms", "0", "--node-id", "2",
                                         "--listen-address", "[::]:7701", "--transport", "tcp"}));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const DaemonConfig& c = r->config;
  EXPECT_EQ(c.config_file, path);
  EXPECT_EQ(c.socket_path, "/run/other.sock");
  EXPECT_EQ(c.log_level, "warn");
  EXPECT_EQ(c.log_target, "journal");
  EXPECT_EQ(c.host_threads, 3u);
  EXPECT_EQ(c.socket_mode, 0600u);
  EXPECT_EQ(c.socket_group, "epd");
  EXPECT_EQ(c.max_sessions, 7u);
  EXPECT_EQ(c.join_timeout_ms, 99u);
  EXPECT_EQ(c.exit_watch_ms, 0u);
  EXPECT_EQ(c.node_id, 2u);
  EXPECT_EQ(c.listen_address, "[::]:7701");
  EXPECT_EQ(c.transport, "tcp");
  // Keys not overridden keep the file's values.
  EXPECT_EQ(c.allowed_uids, (std::vector<uint32_t>{1000, 1001}));
  EXPECT_EQ(c.groups.size(), 2u);
  EXPECT_FALSE(c.rdma_fallback_to_tcp);
}

TEST(Config, BadOverridesNameFlagAndValue) {
  const std::vector<std::pair<std::vector<const char*>, std::vector<std::string>>> cases = {
      {{"--log-level", "loud"}, {"--log-level", "'loud'", "trace"}},
      {{"--log-target", "syslog"}, {"--log-target", "'syslog'"}},
      {{"--socket", "rel.sock"}, {"--socket", "'rel.sock'", "absolute"}},
      {{"--host-threads", "-1"}, {"--host-threads", "'-1'"}},
      {{"--host-threads", "lots"}, {"--host-threads", "'lots'"}},
      {{"--socket-mode", "999"}, {"--socket-mode", "'999'", "octal"}},
      {{"--transport", "udp"}, {"--transport", "'udp'"}},
      {{"--listen-address", "nope"}, {"--listen-address", "'nope'"}},
      {{"--no-such-flag"}, {"--no-such-flag"}},
      {{"stray"}, {"stray"}},
  };
  for (const auto& [args, expected] : cases) {
    std::vector<const char*> argv{"epd", "--config", ""};
    argv.insert(argv.end(), args.begin(), args.end());
    Result<LoadedConfig> r = load(argv);
    ASSERT_FALSE(r.is_ok()) << "accepted " << args[0];
    for (const std::string& s : expected)
      EXPECT_NE(r.status().message().find(s), std::string::npos)
          << "message lacks \"" << s << "\": " << r.status().message();
  }
}

TEST(Config, PrintConfigRoundTrips) {
  SKIP_WITHOUT_TOML();
  Result<DaemonConfig> first = parse_config_toml(kFullConfig, "full.toml");
  ASSERT_TRUE(first.is_ok()) << first.status().to_string();
  const std::string printed = print_config(*first);
  Result<DaemonConfig> second = parse_config_toml(printed, "printed.toml");
  ASSERT_TRUE(second.is_ok()) << second.status().to_string() << "\n" << printed;
  // Identical but for the secret, which is redacted and so not carried over.
  DaemonConfig without_secret = *first;
  without_secret.cluster_secret.clear();
  EXPECT_EQ(print_config(*second), print_config(without_secret));
  EXPECT_EQ(print_config(*parse_config_toml(print_config(*second), "again.toml")),
            print_config(*second));
  const DaemonConfig& a = *first;
  const DaemonConfig& b = *second;
  EXPECT_EQ(b.socket_path, a.socket_path);
  EXPECT_EQ(b.socket_mode, a.socket_mode);
  EXPECT_EQ(b.socket_group, a.socket_group);
  EXPECT_EQ(b.max_sessions, a.max_sessions);
  EXPECT_EQ(b.allowed_uids, a.allowed_uids);
  EXPECT_EQ(b.join_timeout_ms, a.join_timeout_ms);
  EXPECT_EQ(b.exit_watch_ms, a.exit_watch_ms);
  EXPECT_EQ(b.host_threads, a.host_threads);
  EXPECT_EQ(b.log_level, a.log_level);
  EXPECT_EQ(b.log_target, a.log_target);
  EXPECT_EQ(b.node_id, a.node_id);
  EXPECT_EQ(b.listen_address, a.listen_address);
  EXPECT_EQ(b.peers, a.peers);
  EXPECT_EQ(b.transport, a.transport);
  EXPECT_EQ(b.rdma_fallback_to_tcp, a.rdma_fallback_to_tcp);
  EXPECT_EQ(b.cluster_secret, "");  // redacted, so not carried over
  ASSERT_EQ(b.groups.size(), a.groups.size());
  for (size_t i = 0; i < a.groups.size(); ++i) {
    EXPECT_TRUE(b.groups[i].compare(a.groups[i]).is_ok()) << b.groups[i].compare(a.groups[i]).to_string();
    EXPECT_EQ(b.groups[i].generation, a.groups[i].generation);
  }
}

// ---- [[group]] keys, row by row of the spec's field list (core/spec_fields.h) ----------

// A value of the field other than `v` that keeps the group valid.
template <typename T>
T other_value(T v) {
  if constexpr (std::is_enum_v<T>) {
    const auto& names = EnumNames<T>::kNames;
    const size_t n = sizeof names / sizeof names[0];
    for (size_t i = 0; i < n; ++i)
      if (names[i].value == v) return names[(i + 1) % n].value;
    return names[0].value;
  } else {
    return static_cast<T>(v + 1);
  }
}

const char* kRowGroup =
    "[[group]]\nname = \"rows\"\nworld_size = 4\nnum_experts = 16\ntop_k = 4\nhidden = 256\n"
    "max_tokens_per_rank = 64\n";

TEST(Config, EveryGroupRowRoundTripsThroughPrintAndParse) {
  SKIP_WITHOUT_TOML();
  Result<DaemonConfig> base = parse_config_toml(kRowGroup, "rows.toml");
  ASSERT_TRUE(base.is_ok()) << base.status().to_string();
  ASSERT_EQ(base->groups.size(), 1u);
  std::set<std::string> not_keys;
  for_each_spec_field([&](const auto& f) {
    if constexpr (!kIsSpecHand<decltype(f)>) {
      if (!f.has(kSpecConfig)) {
        not_keys.insert(f.name);
        return;
      }
      SCOPED_TRACE(f.name);
      DaemonConfig c = *base;
      GroupSpec& g = c.groups[0];
      g.*f.member = other_value(g.*f.member);
      // The inline executor needs every rank on one GPU.
      g.placement.assign(static_cast<size_t>(g.world_size),
                         epd_placement_t{0, g.executor == EPD_EXECUTOR_INLINE ? 0 : EPD_GPU_HOST});
      g.expert_owner.resize(static_cast<size_t>(g.num_experts));
      for (int32_t e = 0; e < g.num_experts; ++e)
        g.expert_owner[e] = GroupSpec::contiguous_owner(e, g.num_experts, g.world_size);
      ASSERT_TRUE(g.validate().is_ok()) << g.validate().message();
      const std::string printed = print_config(c);
      EXPECT_NE(printed.find("\n" + std::string(f.name) + " = "), std::string::npos) << printed;
      Result<DaemonConfig> back = parse_config_toml(printed, "printed.toml");
      ASSERT_TRUE(back.is_ok()) << back.status().to_string() << "\n" << printed;
      ASSERT_EQ(back->groups.size(), 1u);
      EXPECT_EQ(spec_value_text(back->groups[0].*f.member), spec_value_text(g.*f.member));
      EXPECT_TRUE(back->groups[0].compare(g).is_ok()) << back->groups[0].compare(g).message();
      EXPECT_EQ(back->groups[0].generation, g.generation);
    }
  });
  EXPECT_EQ(not_keys, (std::set<std::string>{"rank"})) << "a config group is always rank 0";
}

TEST(Config, EveryRequiredGroupKeyIsRequired) {
  SKIP_WITHOUT_TOML();
  for_each_spec_field([&](const auto& f) {
    if constexpr (!kIsSpecHand<decltype(f)>) {
      if (!f.has(kSpecRequired)) return;
      std::string toml = kRowGroup;
      const std::string line = std::string(f.name) + " = ";
      const size_t at = toml.find(line);
      ASSERT_NE(at, std::string::npos) << f.name << " is required but kRowGroup lacks it";
      toml.erase(at, toml.find('\n', at) + 1 - at);
      Result<DaemonConfig> r = parse_config_toml(toml, "bad.toml");
      ASSERT_FALSE(r.is_ok()) << "accepted without " << f.name;
      EXPECT_NE(r.status().message().find("missing the required key '" + std::string(f.name) + "'"),
                std::string::npos)
          << r.status().message();
    }
  });
}

TEST(Config, GroupTimeoutZeroIsTheServerDefault) {
  SKIP_WITHOUT_TOML();
  Result<DaemonConfig> r =
      parse_config_toml(std::string("[server]\njoin_timeout_ms = 7000\n") + kRowGroup + "timeout_ms = 0\n", "t.toml");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->groups[0].timeout_ms, 7000u);
  EXPECT_EQ(DaemonConfig{}.join_timeout_ms, kDefaultTimeoutMs);
}

TEST(Config, PrintConfigEscapesStrings) {
  SKIP_WITHOUT_TOML();
  DaemonConfig c;
  c.socket_group = "we\"ird\\grp\n\x01";
  Result<DaemonConfig> back = parse_config_toml(print_config(c), "printed.toml");
  ASSERT_TRUE(back.is_ok()) << back.status().to_string() << "\n" << print_config(c);
  EXPECT_EQ(back->socket_group, c.socket_group);
}

TEST(Config, PrintConfigRedactsTheSecret) {
  DaemonConfig c;
  c.cluster_secret = "hunter2-very-secret";
  const std::string text = print_config(c);
  EXPECT_EQ(text.find("hunter2"), std::string::npos) << text;
  EXPECT_NE(text.find("redacted"), std::string::npos) << text;
  EXPECT_EQ(print_config(DaemonConfig{}).find("redacted"), std::string::npos);
}

TEST(Config, PrintConfigFlag) {
  SKIP_WITHOUT_TOML();
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.write("epd.toml", kFullConfig);
  Result<LoadedConfig> r =
      load(argv_of({"--config", path.c_str(), "--log-level", "error", "--print-config"}));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->outcome, LoadOutcome::kPrintConfig);
  EXPECT_NE(r->text.find("level = \"error\""), std::string::npos) << r->text;
  EXPECT_NE(r->text.find("name = \"moe-a\""), std::string::npos) << r->text;
  EXPECT_EQ(r->text.find("hunter2"), std::string::npos) << r->text;
  // The printed effective config is itself a valid config file with the same effect.
  const std::string printed = dir.write("printed.toml", r->text);
  Result<LoadedConfig> again = load(argv_of({"--config", printed.c_str(), "--print-config"}));
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_EQ(again->config.log_level, "error");
  EXPECT_EQ(again->config.groups.size(), 2u);
}

TEST(Config, PrintConfigWithoutFile) {
  Result<LoadedConfig> r = load(argv_of({"--config", "", "--socket", "/run/x.sock", "--print-config"}));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->outcome, LoadOutcome::kPrintConfig);
  EXPECT_NE(r->text.find("socket_path = \"/run/x.sock\""), std::string::npos) << r->text;
}

TEST(Config, HelpAndVersion) {
  Result<LoadedConfig> help = load(argv_of({"--help"}));
  ASSERT_TRUE(help.is_ok()) << help.status().to_string();
  EXPECT_EQ(help->outcome, LoadOutcome::kHelp);
  for (const char* flag : {"--config", "--socket", "--log-level", "--log-target", "--host-threads",
                           "--print-config", "--version"})
    EXPECT_NE(help->text.find(flag), std::string::npos) << flag << " missing from:\n" << help->text;
  Result<LoadedConfig> version = load(argv_of({"--version"}));
  ASSERT_TRUE(version.is_ok()) << version.status().to_string();
  EXPECT_EQ(version->outcome, LoadOutcome::kVersion);
  EXPECT_NE(version->text.find("epd "), std::string::npos) << version->text;
}

// The shipped example parses as-is (all defaults), and its commented example
// group ("#key" lines) parses and validates once uncommented.
TEST(Config, ExampleConfigParses) {
  SKIP_WITHOUT_TOML();
  const std::string example = test::read_file(EPD_SOURCE_DIR "/systemd/epd.toml.example");
  ASSERT_FALSE(example.empty());
  Result<DaemonConfig> as_is = parse_config_toml(example, "epd.toml.example");
  ASSERT_TRUE(as_is.is_ok()) << as_is.status().to_string();
  EXPECT_EQ(print_config(*as_is), print_config(DaemonConfig{}));

  std::string uncommented;
  std::stringstream lines(example);
  for (std::string line; std::getline(lines, line);)
    uncommented += (line.size() > 1 && line[0] == '#' && line[1] != ' ' ? line.substr(1) : line) + "\n";
  Result<DaemonConfig> with_group = parse_config_toml(uncommented, "epd.toml.example");
  ASSERT_TRUE(with_group.is_ok()) << with_group.status().to_string() << "\n" << uncommented;
  ASSERT_EQ(with_group->groups.size(), 1u);
  const GroupSpec& g = with_group->groups[0];
  EXPECT_EQ(g.name, "deepseek-v3");
  EXPECT_EQ(g.world_size, 8);
  EXPECT_EQ(g.placement[7].gpu, 7);
  EXPECT_EQ(g.num_experts, 256);
  EXPECT_EQ(g.expert_owner[255], 7);
  EXPECT_EQ(g.dispatch_quant, EPD_QUANT_FP8_E4M3_BLOCK128);
  EXPECT_EQ(g.layout, EPD_LAYOUT_EXPERT_MAJOR);
}

// Builds without toml++ refuse config files with a clear error (and only then).
TEST(Config, FilesRefusedOnlyWithoutToml) {
  Result<DaemonConfig> r = parse_config_toml("[log]\nlevel = \"info\"\n", "/etc/epd/epd.toml");
  if (config_files_supported()) {
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return;
  }
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), EPD_ERR_UNSUPPORTED);
  EXPECT_NE(r.status().message().find("/etc/epd/epd.toml"), std::string::npos);
  EXPECT_NE(r.status().message().find("toml++"), std::string::npos);
}

}  // namespace
}  // namespace epd
