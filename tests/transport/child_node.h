// child_node.h — runs a transport node in a forked child process, for tests
// that kill or stop a peer. The child echoes every message back (same tag),
// answers every write with a message (tag kWriteAckTag, the imm as payload),
// and exits when the parent closes its control pipe (or dies: PDEATHSIG).
// Must be called while the test process is single-threaded (before any
// transport or watchdog exists in it).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

#include "transport.h"

namespace epd::transport::test {

constexpr uint32_t kWriteAckTag = 0xACC;
constexpr uint32_t kChildRegion = 1;
constexpr size_t kChildRegionBytes = 16u << 20;

struct ChildNode {
  pid_t pid = -1;
  int ctrl_fd = -1;     // closing it asks the child to exit
  std::string address;  // where the child listens
  // Kills (SIGCONT first, so a stopped child dies too) and reaps the child by pid.
  void kill_and_reap();
  ~ChildNode() { kill_and_reap(); }
};

// Forks node `id` whose only peer is `parent_id` (which dials it).
bool spawn_child_node(NodeId id, NodeId parent_id, ChildNode* out, std::string* error);

}  // namespace epd::transport::test
