// install_test.cc — issue 14, finding 7: `cmake --install <build> --prefix P`
// into a private temporary prefix (never /usr or /etc) gives a pkg-config
// file that points into P, a C program that compiles, links and runs against
// the installed libepd-client through `pkg-config --cflags --libs` and through
// CMake's find_package(epd-client), units whose ExecStart and config path
// follow P (checked by `systemd-analyze verify` where it can run), and the
// <sysconfdir>/epd directory the README's `cp` step needs. Every command is
// bounded; the whole test stays under a minute. Label: security.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <string>
#include <vector>

#include "service_test_support.h"

namespace epd::test {
namespace {

const char* kProgram = R"(#include <epd/epd.h>
#include <stdio.h>
#include <string.h>
int main(void) {
  const char* s = epd_status_string(EPD_ERR_INVALID_SPEC);
  epd_group_spec_t spec;
  epd_group_spec_init(&spec);
  printf("%s slots=%d\n", s, spec.slots);
  return strstr(s, "INVALID_SPEC") ? 0 : 1;
}
)";

std::string sh_quote(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

class Install : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    prefix_ = dir_.file("prefix");
    const auto r = sh("cmake --install " + sh_quote(EPD_BUILD_DIR) + " --prefix " + sh_quote(prefix_), "install.log");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  CommandResult sh(const std::string& cmd, const std::string& log, int timeout_s = 30) {
    return run_command({"/bin/sh", "-c", cmd}, dir_.file(log), std::chrono::seconds(timeout_s));
  }

  // The first line of `text` that starts with `key`.
  static std::string line_of(const std::string& text, const std::string& key) {
    std::stringstream in(text);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(key, 0) == 0) return line;
    return {};
  }

  std::string find_file(const std::string& name) {
    const auto r = sh("find " + sh_quote(prefix_) + " -name " + sh_quote(name) + " | head -1", "find.log", 10);
    std::string p = r.output;
    while (!p.empty() && (p.back() == '\n' || p.back() == ' ')) p.pop_back();
    return p;
  }

  TempDir dir_;
  std::string prefix_;
};

TEST_F(Install, PkgConfigPointsIntoThePrefixAndAProgramLinksAndRuns) {
  const std::string pc = find_file("epd-client.pc");
  ASSERT_FALSE(pc.empty()) << "no epd-client.pc under " << prefix_;
  const std::string text = read_file(pc);
  EXPECT_EQ(line_of(text, "prefix="), "prefix=" + prefix_) << text;
  if (find_in_path("pkg-config").empty() || find_in_path("cc").empty())
    GTEST_SKIP() << "pkg-config or cc is not installed";
  const std::string pcdir = pc.substr(0, pc.rfind('/'));
  const std::string env = "PKG_CONFIG_PATH=" + sh_quote(pcdir) + " ";
  auto flags = sh(env + "pkg-config --cflags --libs epd-client", "flags.log");
  ASSERT_EQ(flags.exit_code, 0) << flags.output;
  EXPECT_NE(flags.output.find("-I" + prefix_ + "/"), std::string::npos) << flags.output;
  EXPECT_NE(flags.output.find("-L" + prefix_ + "/"), std::string::npos) << flags.output;
  auto var = sh(env + "pkg-config --variable=prefix epd-client", "prefix.log");
  EXPECT_EQ(var.output, prefix_ + "\n");

  dir_.write("probe.c", kProgram);
  const std::string exe = dir_.file("probe");
  auto cc = sh("cc -o " + sh_quote(exe) + " " + sh_quote(dir_.file("probe.c")) + " $(" + env +
                   "pkg-config --cflags --libs epd-client)",
               "cc.log", 40);
  ASSERT_EQ(cc.exit_code, 0) << cc.output;
  // pkg-config gives no rpath: the installed library is found through its libdir.
  auto libdir = sh(env + "pkg-config --variable=libdir epd-client", "libdir.log");
  ASSERT_EQ(libdir.exit_code, 0) << libdir.output;
  ASSERT_EQ(libdir.output.rfind(prefix_ + "/", 0), 0u) << libdir.output;
  libdir.output.pop_back();  // the newline
  auto run = sh("LD_LIBRARY_PATH=" + sh_quote(libdir.output) + " " + sh_quote(exe), "run.log");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("INVALID_SPEC"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("slots=2"), std::string::npos) << run.output;
}

TEST_F(Install, FindPackageBuildsAProgram) {
  ASSERT_EQ(::mkdir(dir_.file("proj").c_str(), 0755), 0);
  dir_.write("proj/probe.c", kProgram);
  dir_.write("proj/CMakeLists.txt",
             "cmake_minimum_required(VERSION 3.16)\nproject(probe C)\nfind_package(epd-client REQUIRED)\n"
             "add_executable(probe probe.c)\ntarget_link_libraries(probe PRIVATE epd::epd-client)\n");
  const std::string b = dir_.file("proj-build");
  auto conf = sh("cmake -S " + sh_quote(dir_.file("proj")) + " -B " + sh_quote(b) +
                     " -DCMAKE_PREFIX_PATH=" + sh_quote(prefix_),
                 "conf.log", 40);
  ASSERT_EQ(conf.exit_code, 0) << conf.output;
  auto build = sh("cmake --build " + sh_quote(b), "build.log", 40);
  ASSERT_EQ(build.exit_code, 0) << build.output;
  // The imported target carries the installed library's path: it runs as built.
  auto run = sh(sh_quote(b + "/probe"), "run.log");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("INVALID_SPEC"), std::string::npos) << run.output;
}

TEST_F(Install, UnitsFollowThePrefixAndTheConfigDirectoryExists) {
  const std::string service = find_file("epd.service");
  ASSERT_FALSE(service.empty()) << "no epd.service under " << prefix_;
  const std::string text = read_file(service);
  EXPECT_EQ(line_of(text, "ExecStart="), "ExecStart=" + prefix_ + "/bin/epd --config " + prefix_ + "/etc/epd/epd.toml")
      << text;
  EXPECT_EQ(line_of(text, "Documentation="), "Documentation=file:" + prefix_ + "/share/doc/epd/epd.toml.example");
  EXPECT_EQ(text.find("/usr/bin/epd"), std::string::npos) << text;
  struct stat st {};
  EXPECT_EQ(::stat((prefix_ + "/etc/epd").c_str(), &st), 0) << "no " << prefix_ << "/etc/epd";
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(::access((prefix_ + "/bin/epd").c_str(), X_OK), 0);
  EXPECT_EQ(::access((prefix_ + "/share/doc/epd/epd.toml.example").c_str(), R_OK), 0);

  const std::string analyze = find_in_path("systemd-analyze");
  if (analyze.empty()) GTEST_SKIP() << "systemd-analyze is not installed: the installed units were not verified";
  const std::string probe = dir_.write("probe.service", "[Service]\nType=oneshot\nExecStart=/bin/true\n");
  auto p = run_command({analyze, "verify", "--man=no", probe}, dir_.file("probe.log"));
  if (p.exit_code != 0) GTEST_SKIP() << "systemd-analyze verify cannot run here: " << p.output;
  const std::string socket_unit = service.substr(0, service.rfind('/')) + "/epd.socket";
  auto v = run_command({analyze, "verify", "--man=no", socket_unit, service}, dir_.file("verify.log"));
  EXPECT_EQ(v.exit_code, 0) << v.output;
  EXPECT_EQ(v.output.find("epd.service:"), std::string::npos) << v.output;
}

}  // namespace
}  // namespace epd::test
