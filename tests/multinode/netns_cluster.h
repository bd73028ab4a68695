// netns_cluster.h — "nodes" on one machine for the multinode tests: one
// network namespace per node, all joined by veth pairs to a bridge in a hub
// namespace (so any node reaches any other and one node's link can be set
// down), a real `epd` per node started inside its namespace (own runtime
// directory, config file with node_id / listen_address / peers / secret,
// readiness through a NOTIFY_SOCKET listener, stderr in a log file), and
// worker processes started inside a node's namespace.
//
// Ownership: Cluster owns its namespaces (deleted in the destructor, which
// also deletes their veth ends and the bridge), its daemons and workers (ended
// by pid with SIGKILL if still running) and its temporary directory.
// Thread-safety: none; one test thread uses it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "main_job_lib.h"

namespace epd::mn {

// Runs a shell command; returns its exit status (output discarded).
int sh(const std::string& cmd);

class Cluster {
 public:
  // Creates `nodes` namespaces and the hub. On failure ok() is false and
  // error() says why (the caller skips: no root, no `ip netns`).
  explicit Cluster(int nodes);
  ~Cluster();
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  int nodes() const { return static_cast<int>(ns_.size()); }
  const std::string& ns(int node) const { return ns_[static_cast<size_t>(node)]; }
  std::string address(int node) const;  // "10.x.y.(node+1):7400"

  // Starts node `node`'s epd (secret overridable: the wrong-secret test);
  // waits for READY=1. Returns "" or why not.
  std::string start_daemon(int node, const std::string& secret = kSecret, int timeout_ms = 15000);
  job::Child& daemon(int node) { return *daemons_[static_cast<size_t>(node)]; }
  std::string socket(int node) const;
  // Everything node `node`'s daemon logged so far.
  std::string log(int node) const;
  // Starts an epd_worker inside node `node`'s namespace with `args` after --socket.
  job::Child& worker(int node, const std::vector<std::string>& args);
  // Sets node `node`'s link to the hub down.
  bool link_down(int node);

  static constexpr const char* kSecret = "multinode-test-cluster-secret-0123456789";

 private:
  bool ok_ = false;
  std::string error_, tag_, hub_, subnet_;
  std::vector<std::string> ns_, veth_;
  std::unique_ptr<job::TempDir> dir_;
  std::vector<std::unique_ptr<job::Child>> daemons_;
  std::vector<int> notify_fds_;
  std::vector<std::unique_ptr<job::Child>> workers_;
};

// Reads lines until one starts with `prefix` (true) or the deadline / EOF (false).
// Every line read is appended to `seen`.
bool read_until(job::Child& c, const std::string& prefix, std::string& line, int timeout_ms, std::string* seen = nullptr);

std::string epd_path();
std::string worker_path();
std::string epctl_path();

}  // namespace epd::mn
