// unit_files_test.cc — the files in systemd/ checked by systemd's own tools:
// `systemd-analyze verify` of epd.service + epd.socket (ExecStart pointed at an
// existing binary, since verify requires one), systemd-sysusers and
// systemd-tmpfiles applied to a private --root, the hardening directives of
// issue 14 (finding 6) and `systemd-analyze security --offline=yes` of the
// unit (overall exposure at most 2.0). Skipped where the tools are missing or
// cannot run in this container.
#include <gtest/gtest.h>

#include <sys/stat.h>


#include "service_test_support.h"

namespace epd {
namespace {

using test::TempDir;

const std::string kUnits = EPD_SOURCE_DIR "/systemd/";

std::string self_exe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("/bin/sh");
}

void replace_first(std::string* s, const std::string& from, const std::string& to) {
  const size_t at = s->find(from);
  if (at != std::string::npos) s->replace(at, from.size(), to);
}

// Lines of `output` that mention `name` (systemd-analyze warns with "FILE:LINE: ...").
std::string lines_mentioning(const std::string& output, const std::string& name) {
  std::stringstream in(output);
  std::string line, found;
  while (std::getline(in, line))
    if (line.find(name) != std::string::npos) found += line + "\n";
  return found;
}

class UnitFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    analyze_ = test::find_in_path("systemd-analyze");
    if (analyze_.empty()) GTEST_SKIP() << "systemd-analyze is not installed";
    // Can verify run here at all? Try a trivial unit first.
    const std::string probe = dir_.write("probe.service",
                                         "[Service]\nType=oneshot\nExecStart=" + self_exe() + "\n");
    auto r = test::run_command({analyze_, "verify", "--man=no", probe}, dir_.file("probe.log"));
    if (r.exit_code != 0)
      GTEST_SKIP() << "systemd-analyze verify cannot run here: " << r.output;
  }

  // Copies of the units with ExecStart pointing at an existing binary.
  void write_units(const std::string& extra_service_line = "") {
    std::string service = test::read_file(kUnits + "epd.service");
    ASSERT_NE(service.find("ExecStart=/usr/bin/epd "), std::string::npos);
    replace_first(&service, "ExecStart=/usr/bin/epd ", "ExecStart=" + self_exe() + " ");
    if (!extra_service_line.empty())
      replace_first(&service, "[Service]\n", "[Service]\n" + extra_service_line + "\n");
    dir_.write("epd.service", service);
    dir_.write("epd.socket", test::read_file(kUnits + "epd.socket"));
  }

  test::CommandResult verify() {
    return test::run_command(
        {analyze_, "verify", "--man=no", dir_.file("epd.socket"), dir_.file("epd.service")},
        dir_.file("verify.log"));
  }

  TempDir dir_;
  std::string analyze_;
};

TEST_F(UnitFiles, VerifyIsClean) {
  write_units();
  auto r = verify();
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(lines_mentioning(r.output, "epd.s"), "") << r.output;
}

// The check above can fail: a broken copy is reported.
TEST_F(UnitFiles, VerifyReportsABrokenUnit) {
  write_units("DevicePolicy=sometimes");
  auto r = verify();
  EXPECT_NE(lines_mentioning(r.output, "epd.service"), "") << r.output;
}

TEST(UnitFileContents, ServiceKeepsDeviceAccess) {
  const std::string service = test::read_file(kUnits + "epd.service");
  EXPECT_EQ(service.find("PrivateDevices=yes"), std::string::npos);
  for (const char* line : {"Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure",
                           "ExecStart=/usr/bin/epd --config /etc/epd/epd.toml", "RuntimeDirectory=epd",
                           "LimitMEMLOCK=infinity", "DeviceAllow=char-nvidia-frontend rw",
                           "DeviceAllow=char-nvidia-uvm rw", "DeviceAllow=char-infiniband_verbs rw",
                           "DeviceAllow=/dev/infiniband/rdma_cm rw", "User=", "Group="})
    EXPECT_NE(service.find(std::string("\n") + line), std::string::npos) << line;
  const std::string socket = test::read_file(kUnits + "epd.socket");
  for (const char* line : {"ListenSequentialPacket=/run/epd/epd.sock", "SocketMode=0660",
                           "SocketGroup=epd"})
    EXPECT_NE(socket.find(std::string("\n") + line), std::string::npos) << line;
}

// Issue 14, finding 6: the sandbox around the daemon. Each directive that
// cannot be set has a one-line reason in the unit ("# NAME= ...").
TEST(UnitFileContents, ServiceIsHardened) {
  const std::string service = test::read_file(kUnits + "epd.service");
  for (const char* line :
       {"SystemCallArchitectures=native", "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged",
        "SystemCallErrorNumber=EPERM", "ProtectProc=invisible", "PrivateMounts=yes", "IPAddressDeny=any",
        "IPAddressAllow=localhost", "MemoryHigh=", "MemoryMax=", "TasksMax=", "StartLimitIntervalSec=",
        "StartLimitBurst=", "NoNewPrivileges=yes", "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",  // empty: no capabilities at all
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "UMask=0027"}) {
    EXPECT_NE(service.find(std::string("\n") + line), std::string::npos) << line;
  }
  // The start limits belong to [Unit] (systemd ignores them in [Service]).
  const size_t service_section = service.find("\n[Service]");
  ASSERT_NE(service_section, std::string::npos);
  EXPECT_LT(service.find("\nStartLimitIntervalSec="), service_section);
  EXPECT_LT(service.find("\nStartLimitBurst="), service_section);
  // How to open the cluster network is written next to the allow list.
  EXPECT_NE(service.find("#   IPAddressAllow="), std::string::npos);
  for (const char* unset : {"PrivateDevices", "PrivateNetwork", "PrivateUsers", "PrivateTmp", "ProcSubset",
                            "MemoryDenyWriteExecute", "RemoveIPC"}) {
    EXPECT_EQ(service.find(std::string("\n") + unset + "="), std::string::npos) << unset << " is set";
    EXPECT_NE(service.find(std::string("\n# ") + unset + "="), std::string::npos)
        << unset << "= has no one-line reason in the unit";
  }
}

// `systemd-analyze security` scores the unit offline (no running systemd
// needed); the target is an overall exposure of 2.0 or less.
TEST(UnitSecurity, ExposureAtMostTwo) {
  const std::string analyze = test::find_in_path("systemd-analyze");
  if (analyze.empty()) GTEST_SKIP() << "systemd-analyze is not installed";
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  std::string service = test::read_file(kUnits + "epd.service");
  replace_first(&service, "ExecStart=/usr/bin/epd ", "ExecStart=" + self_exe() + " ");
  const std::string unit = dir.write("epd.service", service);
  dir.write("epd.socket", test::read_file(kUnits + "epd.socket"));
  auto r = test::run_command({analyze, "security", "--offline=yes", "--no-pager", unit}, dir.file("security.log"));
  const std::string marker = "Overall exposure level for epd.service: ";
  const size_t at = r.output.find(marker);
  if (at == std::string::npos)
    GTEST_SKIP() << "systemd-analyze security --offline=yes cannot score the unit here (exit " << r.exit_code
                 << "): " << r.output;
  double exposure = 10.0;
  ASSERT_EQ(std::sscanf(r.output.c_str() + at + marker.size(), "%lf", &exposure), 1) << r.output;
  EXPECT_LE(exposure, 2.0) << r.output;
  // The same bound through the tool's own switch (exposure in tenths).
  auto t = test::run_command({analyze, "security", "--offline=yes", "--no-pager", "--threshold=20", unit},
                             dir.file("threshold.log"));
  EXPECT_EQ(t.exit_code, 0) << t.output;
}

TEST(UserAndDirs, SysusersAndTmpfilesInPrivateRoot) {
  const std::string sysusers = test::find_in_path("systemd-sysusers");
  const std::string tmpfiles = test::find_in_path("systemd-tmpfiles");
  if (sysusers.empty() || tmpfiles.empty())
    GTEST_SKIP() << "systemd-sysusers / systemd-tmpfiles are not installed";
  TempDir root;
  ASSERT_TRUE(root.ok());
  ASSERT_EQ(mkdir(root.file("etc").c_str(), 0755), 0);
  auto u = test::run_command({sysusers, "--root=" + root.path(), kUnits + "epd.sysusers"},
                             root.file("sysusers.log"));
  if (u.exit_code != 0) GTEST_SKIP() << "systemd-sysusers cannot run here: " << u.output;
  const std::string passwd = test::read_file(root.file("etc/passwd"));
  const std::string group = test::read_file(root.file("etc/group"));
  // "epd:x:UID:GID:..."
  const size_t at = passwd.rfind("epd:x:", 0) == 0 ? 0 : passwd.find("\nepd:x:");
  ASSERT_NE(at, std::string::npos) << passwd;
  unsigned uid = 0, gid = 0;
  ASSERT_EQ(std::sscanf(passwd.c_str() + at + (at ? 1 : 0), "epd:x:%u:%u:", &uid, &gid), 2) << passwd;
  EXPECT_NE(group.find("epd:x:" + std::to_string(gid) + ":"), std::string::npos) << group;

  auto t = test::run_command({tmpfiles, "--create", "--root=" + root.path(), kUnits + "epd.tmpfiles"},
                             root.file("tmpfiles.log"));
  ASSERT_EQ(t.exit_code, 0) << t.output;
  struct stat st {};
  ASSERT_EQ(stat(root.file("run/epd").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  if (geteuid() == 0) {  // only root could chown it
    EXPECT_EQ(st.st_uid, uid);
    EXPECT_EQ(st.st_gid, gid);
  }
}

}  // namespace
}  // namespace epd
