// harness.h — fixtures for the integration and fault tests: a private runtime
// directory and a real `epd` per test (readiness through a test NOTIFY_SOCKET),
// a deadline watchdog that ends the test's processes by pid and aborts, worker
// process helpers, in-process client helpers, and raw protocol access.
//
// Ownership: the fixture owns the daemon and every Child it starts; all are
// ended by pid when the test ends. Thread-safety: the watchdog runs on its own
// thread and touches only the pid registry (mutex-protected).
#pragma once

#include <gtest/gtest.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "epd/epd.h"
#include "../common/small_spec.h"  // small_spec: the spec in-process tests join with
#include "main_job_lib.h"

namespace epd::test {

// Aborts the test binary (after SIGKILLing registered pids) if the deadline passes.
class Watchdog {
 public:
  Watchdog(const std::string& name, int seconds);
  ~Watchdog();
  void add_pid(int pid);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::vector<int> pids_;
  std::thread thread_;
};

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  // Starts an epd_worker process; args are appended to "--socket S".
  job::Child& worker(const std::vector<std::string>& args);
  const std::string& socket() const { return daemon_->socket_path(); }
  job::DaemonProcess& daemon() { return *daemon_; }
  virtual int deadline_s() const { return 90; }
  // The daemon's options after "--config '' --socket ..." (DaemonProcess).
  virtual std::vector<std::string> daemon_args() const { return {"--log-level", "info"}; }

  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<job::TempDir> dir_;
  std::unique_ptr<job::DaemonProcess> daemon_;
  std::vector<std::unique_ptr<job::Child>> children_;
};


// Connects or fails the test.
epd_client_t* connect_or_die(const std::string& socket);

// Raw protocol access: a connected SEQPACKET socket, one send, one receive.
int raw_connect(const std::string& socket);
bool raw_send(int fd, const std::vector<uint8_t>& bytes);
// Receives one record within timeout_ms and decodes its status and message
// (ERROR / reply payloads). Returns false on timeout or EOF.
bool raw_reply(int fd, int timeout_ms, int32_t& status, std::string& message, uint16_t& type);

// Polls `epctl --json ranks` (bounded, no sleeps between queries beyond the
// round trip) until `group` shows `rank` in `state`; false at the deadline.
bool wait_rank_state(const std::string& socket, const std::string& group, int rank, const std::string& state,
                     int timeout_ms = 10000);

std::string worker_path();
std::string epd_path();
std::string epctl_path();

}  // namespace epd::test
