// test_util.h — helpers for the transport tests: a node (Transport + the
// events its callbacks recorded, waitable with deadlines), random bytes, a
// raw-socket frame reader, and a watchdog that fails a test instead of hanging.
// Thread-safety: Events is safe to use from the progress thread and the test.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "link_crypto.h"
#include "transport.h"
#include "wire.h"

namespace epd::transport::test {

using namespace std::chrono_literals;

struct Message {
  NodeId peer;
  uint32_t tag;
  std::vector<uint8_t> data;
};
struct WriteEvent {
  NodeId peer;
  uint32_t imm;
  size_t bytes;
};
struct PeerEvent {
  NodeId peer;
  Status status;
};

class Events {
 public:
  TransportCallbacks callbacks();
  // Waits until pred() (called under the lock) holds or the deadline passes.
  template <typename Pred>
  bool wait(Pred pred, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, timeout, [&] { return pred(); });
  }
  // The first error reported for `peer`, waited for up to `timeout`.
  bool wait_peer_error(NodeId peer, std::chrono::milliseconds timeout, Status* out);

  std::mutex mu;
  std::condition_variable cv;
  std::vector<Message> messages;
  std::vector<WriteEvent> writes;
  std::vector<PeerEvent> peer_events;
};

struct Node {
  TransportConfig cfg;
  Events events;
  std::vector<std::string> logs;
  std::mutex log_mu;
  std::unique_ptr<Transport> t;  // last: destroyed first, before what its callbacks use
};

constexpr char kSecret[] = "test-cluster-secret-0123456789";

TransportConfig base_config(NodeId id);
// Creates node `id` listening on 127.0.0.1:0 (config tweaks applied by `tweak`).
std::unique_ptr<Node> make_node(NodeId id, const std::function<void(TransportConfig&)>& tweak = {});
// Tells every node every other node's address.
void introduce(const std::vector<Node*>& nodes);
// Connects every pair (each node calls connect for all others, in threads).
// Returns the statuses of nodes[i].connect(nodes[j]) as "i->j: status" lines for failures.
std::string connect_all(const std::vector<Node*>& nodes, std::chrono::milliseconds timeout);

std::vector<uint8_t> random_bytes_vec(std::mt19937_64& rng, size_t n);
uint64_t test_seed();  // fresh per call; printed by the tests with SCOPED_TRACE

// Raw TCP client for malformed-frame tests.
int raw_connect(const std::string& host_port);
// Reads one frame (header + payload) within the timeout; false on EOF/timeout/bad frame.
bool raw_read_frame(int fd, FrameHeader* h, std::vector<uint8_t>* payload, std::chrono::milliseconds timeout);
bool raw_write_all(int fd, const void* data, size_t bytes);
// True when the peer closes within the timeout (reads and discards until EOF).
bool raw_wait_eof(int fd, std::chrono::milliseconds timeout);

// A hand-driven node on a raw socket: the real handshake (as the dialer),
// then sealed frames both ways, for tests that send what a real node never
// would. Not thread-safe.
struct RawLink {
  int fd = -1;
  std::optional<FrameSealer> tx;
  std::optional<FrameOpener> rx;
  RawLink() = default;
  RawLink(const RawLink&) = delete;
  RawLink& operator=(const RawLink&) = delete;
  ~RawLink();
  // A whole frame, sealed (plain before the handshake sealed).
  bool send_frame(const FrameHeader& h, const void* payload, size_t bytes);
  // Only the (sealed) header record of `h`: the payload never follows.
  bool send_header(const FrameHeader& h);
  // One frame, opened; false on EOF, timeout or a record that fails its tag.
  bool read_frame(FrameHeader* h, std::vector<uint8_t>* payload, std::chrono::milliseconds timeout);
};
// Connects to `host_port` as node `me` expecting node `peer`, and runs the
// handshake with `secret`; nullptr (and *why) when it does not complete.
std::unique_ptr<RawLink> raw_link(const std::string& host_port, NodeId me, NodeId peer, const std::string& secret,
                                  Status* why = nullptr);

// Fails (aborts) the process if not disarmed within `timeout`: a hung test
// becomes a failure with a message instead of a ctest timeout.
class Watchdog {
 public:
  explicit Watchdog(std::chrono::seconds timeout);
  ~Watchdog();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread th_;
};

}  // namespace epd::transport::test
