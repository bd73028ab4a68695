// factory_test.cc — the registry of kinds and make_transport's policy: tcp;
// rdma without a device (or without RDMA in the build) refuses or falls back
// to tcp as configured, and logs which transport runs; each kind checks its
// option struct; the interface under a listen address. Label: unit.
#include <gtest/gtest.h>

#include <mutex>
#include <string>
#include <vector>

#include "transport.h"

namespace epd::transport {
namespace {

struct Log {
  std::mutex mu;
  std::vector<std::string> lines;
  std::string all() {
    std::lock_guard<std::mutex> l(mu);
    std::string s;
    for (auto& x : lines) s += x + "\n";
    return s;
  }
};

TransportConfig config(Log* log) {
  TransportConfig c;
  c.node_id = 1;
  c.listen_address = "127.0.0.1:0";
  c.cluster_secret = "factory-test-secret-0123";
  c.log = [log](LogSeverity, const std::string& m) {
    std::lock_guard<std::mutex> l(log->mu);
    log->lines.push_back(m);
  };
  return c;
}

TEST(MakeTransport, TcpLogsWhichRuns) {
  Log log;
  auto t = make_transport(config(&log), {});
  ASSERT_TRUE(t) << t.status().to_string();
  EXPECT_STREQ((*t)->name(), "tcp");
  EXPECT_NE(log.all().find("transport tcp on 127.0.0.1:"), std::string::npos) << log.all();
}

TEST(MakeTransport, UnknownKindRefused) {
  Log log;
  TransportConfig c = config(&log);
  c.kind = "carrier-pigeon";
  auto t = make_transport(c, {});
  ASSERT_FALSE(t);
  EXPECT_NE(t.status().message().find("carrier-pigeon"), std::string::npos);
  EXPECT_NE(t.status().message().find("is not 'tcp' or 'rdma'"), std::string::npos) << t.status().message();
}

// The registry: every kind once, with a factory; rdma falls back to tcp.
TEST(TransportKinds, RegistryListsEachKindOnce) {
  std::vector<std::string> names;
  for (const TransportKind& k : transport_kinds()) {
    ASSERT_NE(k.create, nullptr) << k.name;
    EXPECT_EQ(find_transport_kind(k.name), &k);
    if (k.fallback) {
      EXPECT_NE(find_transport_kind(k.fallback), nullptr) << k.name << " falls back to unknown " << k.fallback;
      EXPECT_NE(k.fallback_allowed, nullptr) << k.name;
    }
    names.push_back(k.name);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"tcp", "rdma"}));
  EXPECT_EQ(find_transport_kind("carrier-pigeon"), nullptr);
  EXPECT_STREQ(find_transport_kind("rdma")->fallback, "tcp");
}

// Each kind checks its own option struct: tcp's queue bound.
TEST(TransportKinds, TcpChecksItsOptions) {
  Log log;
  TransportConfig c = config(&log);
  c.max_message_bytes = 1u << 20;
  c.tcp.max_queued_bytes = 1u << 10;
  auto t = make_transport(c, {});
  ASSERT_FALSE(t);
  EXPECT_EQ(t.status().code(), EPD_ERR_INVALID_ARGUMENT);
  EXPECT_NE(t.status().message().find("max_queued_bytes 1024 must be >= max_message_bytes 1048576"),
            std::string::npos)
      << t.status().message();
}

bool rdma_available() {
  Log log;
  TransportConfig c = config(&log);
  return create_rdma_transport(c, {}).is_ok();
}

TEST(MakeTransport, RdmaWithoutDeviceRefusesOrFallsBack) {
  if (rdma_available()) GTEST_SKIP() << "an RDMA device is present; this test covers its absence";
  Log log;
  TransportConfig c = config(&log);
  c.kind = "rdma";
  c.rdma_fallback_to_tcp = false;
  auto refused = make_transport(c, {});
  ASSERT_FALSE(refused);
#ifdef EPD_TEST_HAVE_RDMA
  EXPECT_EQ(refused.status().code(), EPD_ERR_RDMA) << refused.status().to_string();
  EXPECT_NE(refused.status().message().find("no RDMA device found (ibv_get_device_list returned 0 devices)"),
            std::string::npos)
      << refused.status().message();
#else
  EXPECT_EQ(refused.status().code(), EPD_ERR_UNSUPPORTED) << refused.status().to_string();
#endif
  EXPECT_NE(log.all().find("refusing to start"), std::string::npos) << log.all();

  Log log2;
  TransportConfig c2 = config(&log2);
  c2.kind = "rdma";
  c2.rdma_fallback_to_tcp = true;
  auto fell_back = make_transport(c2, {});
  ASSERT_TRUE(fell_back) << fell_back.status().to_string();
  EXPECT_STREQ((*fell_back)->name(), "tcp");
  EXPECT_NE(log2.all().find("falling back to tcp"), std::string::npos) << log2.all();
  EXPECT_NE(log2.all().find("transport tcp (fallback from rdma)"), std::string::npos) << log2.all();
}

// The device under the listen address: what the daemon pins the proxy near.
TEST(InterfaceOfAddress, LoopbackWildcardAndForeignAddresses) {
  Result<std::string> lo = interface_of_address("127.0.0.1:0");
  ASSERT_TRUE(lo) << lo.status().to_string();
  EXPECT_EQ(*lo, "lo");
  Result<std::string> any = interface_of_address("0.0.0.0:7400");
  ASSERT_FALSE(any);
  EXPECT_NE(any.status().message().find("all interfaces"), std::string::npos) << any.status().message();
  Result<std::string> foreign = interface_of_address("192.0.2.77:7400");  // TEST-NET-1: no host has it
  ASSERT_FALSE(foreign);
  EXPECT_NE(foreign.status().message().find("192.0.2.77:7400"), std::string::npos) << foreign.status().message();
  EXPECT_FALSE(interface_of_address("no-port"));
}

}  // namespace
}  // namespace epd::transport
