// tenant_support.h — what the security tests of owners and quotas share: a
// real `epd` whose socket every local user may open (a runtime directory of
// mode 0755, socket mode 0666, optionally a config file), a second Unix user
// created for the test (root only; removed at the end) and running a program
// as that user (fork, drop to its uid/gid, exec) with its stdout collected.
//
// Ownership: TenantDaemon owns its directory and daemon; TestUser removes the
// user it created. Thread-safety: none (one test thread).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "harness.h"
#include "main_job_lib.h"

namespace epd::test {

class TenantDaemon {
 public:
  // config_toml: the text of a config file to start with ("" = none).
  explicit TenantDaemon(const std::string& config_toml = "");
  ~TenantDaemon();
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  const std::string& socket() const { return socket_; }
  job::Child& child() { return child_; }
  // SIGTERM, then wait; the exit code (-1 on timeout).
  int stop(int timeout_ms = 10000);

 private:
  std::unique_ptr<job::TempDir> dir_;
  job::Child child_;
  int notify_fd_ = -1;
  std::string socket_, error_;
  bool ok_ = false;
};

class TestUser {
 public:
  // Creates a user with a unique name (useradd); ok() false, with why(), when
  // not root or useradd fails.
  TestUser();
  ~TestUser();
  bool ok() const { return uid_ != 0; }
  const std::string& why() const { return why_; }
  const std::string& name() const { return name_; }
  uid_t uid() const { return uid_; }
  gid_t gid() const { return gid_; }

 private:
  std::string name_, why_;
  bool created_ = false;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
};

// Runs argv as uid/gid (no supplementary groups), waits at most timeout_ms;
// returns its stdout, and its exit code in *rc (-1: killed at the deadline).
std::string run_as(uid_t uid, gid_t gid, const std::vector<std::string>& argv, int timeout_ms, int* rc);

std::string join_helper_path();

}  // namespace epd::test
