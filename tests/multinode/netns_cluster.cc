// netns_cluster.cc — namespaces, bridge, node daemons and workers for the multinode tests.
#include "netns_cluster.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace epd::mn {

namespace {

std::string find_ip() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
    if (access(p, X_OK) == 0) return p;
  return "";
}

}  // namespace

int sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

std::string epd_path() { return EPD_TEST_DAEMON; }
std::string worker_path() { return EPD_TEST_WORKER; }
std::string epctl_path() { return EPD_TEST_EPCTL; }

Cluster::Cluster(int nodes) {
  if (geteuid() != 0) {
    error_ = "needs root to create network namespaces";
    return;
  }
  if (find_ip().empty()) {
    error_ = "no `ip` command (iproute2)";
    return;
  }
  const int id = getpid() % 100000;
  tag_ = std::to_string(id);
  subnet_ = "10.233." + std::to_string(id % 250) + ".";
  const std::string hub = "epdmn" + tag_ + "h";
  if (sh("ip netns add " + hub) != 0) {
    error_ = "cannot create network namespaces (ip netns add failed)";
    return;
  }
  hub_ = hub;
  auto fail = [&](const std::string& what) { error_ = "namespace setup failed: " + what; };
  if (sh("ip -n " + hub_ + " link add br0 type bridge") != 0 || sh("ip -n " + hub_ + " link set br0 up") != 0)
    { fail("bridge in " + hub_); return; }
  for (int i = 0; i < nodes; ++i) {
    const std::string ns = "epdmn" + tag_ + "n" + std::to_string(i);
    const std::string veth = "vm" + tag_ + "n" + std::to_string(i), hubend = "vm" + tag_ + "h" + std::to_string(i);
    if (sh("ip netns add " + ns) != 0) { fail("ip netns add " + ns); return; }
    ns_.push_back(ns);
    veth_.push_back(veth);
    if (sh("ip link add " + veth + " netns " + ns + " type veth peer name " + hubend + " netns " + hub_) != 0)
      { fail("veth " + veth); return; }
    if (sh("ip -n " + hub_ + " link set " + hubend + " master br0 up") != 0) { fail("bridge port " + hubend); return; }
    if (sh("ip -n " + ns + " addr add " + subnet_ + std::to_string(i + 1) + "/24 dev " + veth) != 0 ||
        sh("ip -n " + ns + " link set " + veth + " up") != 0 || sh("ip -n " + ns + " link set lo up") != 0)
      { fail("address of " + ns); return; }
  }
  dir_ = std::make_unique<job::TempDir>("epd-mn");
  if (dir_->path().empty()) { fail("temporary directory"); return; }
  daemons_.resize(static_cast<size_t>(nodes));
  notify_fds_.assign(static_cast<size_t>(nodes), -1);
  ok_ = true;
}

Cluster::~Cluster() {
  for (auto& w : workers_)
    if (w->running()) {
      w->kill(SIGKILL);
      (void)w->wait(10000);
    }
  for (auto& d : daemons_)
    if (d && d->running()) {
      d->kill(SIGKILL);
      (void)d->wait(10000);
    }
  for (int fd : notify_fds_)
    if (fd >= 0) close(fd);
  for (const std::string& ns : ns_)
    if (sh("ip netns del " + ns) != 0) std::fprintf(stderr, "warning: ip netns del %s failed\n", ns.c_str());
  if (!hub_.empty() && sh("ip netns del " + hub_) != 0)
    std::fprintf(stderr, "warning: ip netns del %s failed\n", hub_.c_str());
}

std::string Cluster::address(int node) const { return subnet_ + std::to_string(node + 1) + ":7400"; }

std::string Cluster::socket(int node) const { return dir_->path() + "/n" + std::to_string(node) + "/epd.sock"; }

std::string Cluster::log(int node) const {
  std::ifstream f(dir_->path() + "/n" + std::to_string(node) + "/epd.log");
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string Cluster::start_daemon(int node, const std::string& secret, int timeout_ms) {
  const size_t i = static_cast<size_t>(node);
  const std::string dir = dir_->path() + "/n" + std::to_string(node);
  (void)sh("mkdir -p " + dir);
  const std::string cfg = dir + "/epd.toml", notify = dir + "/notify.sock", log = dir + "/epd.log";
  {
    std::ofstream f(cfg);
    f << "[cluster]\nnode_id = " << node << "\nlisten_address = \"" << address(node) << "\"\nsecret = \"" << secret
      << "\"\ntransport = \"tcp\"\npeers = [";
    for (int n = 0; n < nodes(); ++n) f << (n ? ", " : "") << "\"" << address(n) << "\"";
    f << "]\n";
  }
  // The daemon refuses a secret others may read.
  if (chmod(cfg.c_str(), 0600) != 0) return "chmod " + cfg + ": " + strerror(errno);
  if (notify_fds_[i] >= 0) close(notify_fds_[i]);
  unlink(notify.c_str());
  notify_fds_[i] = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", notify.c_str());
  if (notify_fds_[i] < 0 || bind(notify_fds_[i], reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return "cannot bind " + notify + ": " + strerror(errno);
  // sh execs epd in place: the pid we hold is the daemon's.
  daemons_[i] = std::make_unique<job::Child>(job::Child::spawn(
      {find_ip(), "netns", "exec", ns(node), "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>>\"$EPD_TEST_LOG\"", epd_path(),
       "--config", cfg, "--socket", socket(node), "--log-target", "stderr"},
      {"NOTIFY_SOCKET=" + notify, "EPD_TEST_LOG=" + log}, false));
  if (daemons_[i]->pid() <= 0) return "cannot start epd for node " + std::to_string(node);
  const int64_t deadline = job::now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
  for (int guard = 0; guard < 1000; ++guard) {
    const int64_t left = (deadline - job::now_ns()) / 1000000;
    if (left <= 0) break;
    pollfd p{notify_fds_[i], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left) + 1) <= 0) {
      if (daemons_[i]->wait(0) >= 0) break;
      continue;
    }
    char b[1024];
    const ssize_t n = recv(notify_fds_[i], b, sizeof b - 1, 0);
    if (n <= 0) continue;
    b[n] = 0;
    if (std::strstr(b, "READY=1")) return "";
  }
  const int rc = daemons_[i]->wait(0);
  return "node " + std::to_string(node) + "'s epd did not report READY=1" +
         (rc >= 0 ? " (exited with " + std::to_string(rc) + ")" : "") + "; log:\n" + this->log(node);
}

job::Child& Cluster::worker(int node, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {find_ip(), "netns", "exec", ns(node), worker_path(), "--socket", socket(node)};
  argv.insert(argv.end(), args.begin(), args.end());
  workers_.push_back(std::make_unique<job::Child>(job::Child::spawn(argv)));
  return *workers_.back();
}

bool Cluster::link_down(int node) {
  return sh("ip -n " + ns(node) + " link set " + veth_[static_cast<size_t>(node)] + " down") == 0;
}

bool read_until(job::Child& c, const std::string& prefix, std::string& line, int timeout_ms, std::string* seen) {
  const int64_t deadline = job::now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
  for (int guard = 0; guard < 100000; ++guard) {
    const int64_t left_ms = (deadline - job::now_ns()) / 1000000;
    if (left_ms <= 0 || !c.read_line(line, static_cast<int>(left_ms))) return false;
    if (seen) *seen += line + "\n";
    if (line.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

}  // namespace epd::mn
