// transport.h — the daemon-to-daemon transport: one instance per daemon,
// connecting it to the daemons of other nodes. Implementations are kinds in a
// registry (transport_kinds(), registry.cc), each with a factory and its own
// option struct in TransportConfig: "tcp" (tcp_*.cc, works everywhere,
// host-staged) and "rdma" (rdma_*.cc, libibverbs + librdmacm, built when
// EPD_HAVE_RDMA). Both build on ConnectedTransport (connected_transport.h):
// one connect-with-backoff and one handshake bookkeeping for every kind.
//
// What it provides, per peer node: an authenticated connection (handshake.h:
// protocol version + a mutual proof of the shared cluster secret bound to the
// connection's transcript; TCP then seals every frame with per-connection,
// per-direction keys, link_crypto.h), reliable ordered messages (send → on_message) and bulk writes into a
// region the peer registered (write → on_write at the peer once the data is in
// place) — the shape of RDMA WRITE with immediate. Messages and writes to one
// peer are delivered in the order they were issued.
//
// Ownership: the Transport owns its sockets / queue pairs and its progress
// thread. Registered regions stay owned by the caller and must outlive the
// Transport (or their deregistration). Callbacks are copied at creation.
// Thread-safety: every method may be called from any thread concurrently.
// Callbacks run on the transport's progress thread, one at a time; they may
// call send()/write() (which then never block: a full queue returns
// EPD_ERR_TIMEOUT at once) but must not block themselves.
// Every blocking method takes a deadline; a peer that closes, resets or stays
// silent longer than peer_timeout is reported as EPD_ERR_PEER_LOST /
// EPD_ERR_TIMEOUT naming the node, via on_peer_state and from later calls.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "status.h"
#include "wire.h"  // kProtocolMajor / kProtocolMinor

namespace epd::transport {

using NodeId = uint32_t;
constexpr NodeId kUnknownNode = 0xffffffffu;  // a connection refused before its HELLO
using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
inline Deadline deadline_after(std::chrono::milliseconds ms) { return Clock::now() + ms; }

enum class LogSeverity { kInfo, kWarn, kError };

// The "tcp" kind's own options.
struct TcpOptions {
  size_t max_queued_bytes = 64u << 20;  // per-peer send queue bound, >= max_message_bytes
};

// The "rdma" kind's own options.
struct RdmaOptions {
  std::string device;                      // ibv device name; empty: the one rdma_cm picks
  uint32_t queue_depth = 256;              // posted receives / send work requests per QP
  uint32_t message_slot_bytes = 64u << 10;  // largest send() over verbs, incl. 32-byte header
  size_t staging_bytes = 8u << 20;         // bounce buffer for write() from unregistered memory
};

// What every kind takes, plus each kind's option struct.
struct TransportConfig {
  std::string kind = "tcp";        // a name in transport_kinds() (make_transport)
  bool rdma_fallback_to_tcp = false;  // "rdma" without a device: fall back, or refuse
  NodeId node_id = 0;
  // "host:port" to listen on (port 0: ephemeral; see listen_address()). Never
  // defaults to all interfaces: "0.0.0.0:port" / "[::]:port" only if written here.
  std::string listen_address;
  std::map<NodeId, std::string> peers;  // node id → "host:port"
  std::string cluster_secret;           // >= 16 bytes; never sent on the wire
  // The file the secret was read from ("" = none): ClusterLink refuses to
  // start when others than its owner may read it (check_secret_file).
  std::string cluster_secret_file;
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds peer_timeout{5000};  // silence (no frame at all) → EPD_ERR_TIMEOUT
  size_t max_message_bytes = 16u << 20;   // send() payload limit, checked on both sides
  // Before authentication: a connection must finish its handshake within
  // handshake_timeout of being accepted or dialed (else EPD_ERR_TIMEOUT), and
  // one source address may hold at most max_pending_per_address connections
  // still in their handshake (more are closed at accept). Frames before
  // authentication are limited to kMaxPreAuthPayload bytes (wire.h).
  std::chrono::milliseconds handshake_timeout{5000};
  uint32_t max_pending_per_address = 8;
  // Protocol version spoken; tests override it to check the refusal.
  uint16_t protocol_major = kProtocolMajor;
  uint16_t protocol_minor = kProtocolMinor;
  TcpOptions tcp;
  RdmaOptions rdma;
  // Log hook (start-up line, refusals, lost peers). Default: stderr.
  std::function<void(LogSeverity, const std::string&)> log;
  // Called once on the progress / completion proxy thread when it starts (the
  // daemon pins it near the NIC with hwloc here).
  std::function<void()> on_progress_thread_start;
};

struct TransportCallbacks {
  // A message from `peer`. `data` is valid only during the call.
  std::function<void(NodeId peer, uint32_t tag, const void* data, size_t bytes)> on_message;
  // `bytes` of data from `peer` are now in one of this node's registered
  // regions (where the writer chose); `imm` is the writer's immediate value.
  std::function<void(NodeId peer, uint32_t imm, size_t bytes)> on_write;
  // A peer connected (OK) or was lost / refused (the error, naming the node).
  // peer is kUnknownNode for a connection refused before it said who it is.
  // A connection that fails while the node it claims has another, live link
  // is logged but not reported here: it does not make that node lost.
  std::function<void(NodeId peer, const Status& status)> on_peer_state;
};

class Transport {
 public:
  virtual ~Transport() = default;
  Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // "tcp" or "rdma", for the daemon's start-up log line.
  virtual const char* name() const = 0;
  // The address actually listened on ("127.0.0.1:41234" after port 0).
  virtual std::string listen_address() const = 0;
  // Adds or changes the address of a peer (before connect()).
  virtual void set_peer_address(NodeId peer, const std::string& host_port) = 0;

  // Registers [addr, addr + bytes) of host memory as region `region_id`, which
  // peers may write into. Regions registered before connect() are advertised
  // in the handshake; later ones are advertised to connected peers at once.
  // (Host memory only: multi-node groups ship host mirrors; GPU memory would
  // come as a dmabuf registration once a caller exists.)
  virtual Status register_region(uint32_t region_id, void* addr, size_t bytes) = 0;
  // Forgets region `region_id`. Once it returns OK nothing is written into
  // the region's memory any more and the caller may free it; a peer's later
  // write to the id is dropped (TCP reads and discards its bytes; RDMA: the
  // memory registration is gone and the NIC refuses the write, which ends that
  // connection — peers stop writing to a group's mirror once it is detached,
  // so only a race meets this). An error (the progress thread did not confirm
  // within 10 s) means the region may still be written: keep its memory.
  // Unknown ids are OK.
  virtual Status deregister_region(uint32_t region_id) = 0;

  // Returns once `peer` is connected and authenticated. The node with the lower
  // id dials; the other waits for the inbound connection. Refusals (wrong
  // secret, version, unknown node, a second connection of a node with a live
  // link) return the reason, on both sides; on the
  // waiting side the latest refused attempt by `peer` is returned at once
  // until a connection with it succeeds.
  virtual Status connect(NodeId peer, Deadline deadline) = 0;
  // Closes the connection to `peer` (orderly; queued data is dropped).
  virtual void disconnect(NodeId peer) = 0;
  // OK while connected; else why not (never connected, lost, refused).
  virtual Status peer_status(NodeId peer) const = 0;

  // Sends a message; `data` may be reused when this returns. Blocks only while
  // the connection cannot take more (socket and the max_queued_bytes queue
  // full, or no RDMA credit), at most until `deadline` (then EPD_ERR_TIMEOUT).
  virtual Status send(NodeId peer, uint32_t tag, const void* data, size_t bytes,
                      Deadline deadline) = 0;
  // Writes `bytes` at `offset` of the peer's region `region_id`; the peer's
  // on_write(imm, bytes) runs after the data is in place. TCP copies `data`
  // before returning. RDMA reads `data` in place when it lies in a registered
  // region (then it must stay unchanged until flush() returns), else copies it
  // through a staging buffer.
  virtual Status write(NodeId peer, uint32_t region_id, uint64_t offset, const void* data,
                       size_t bytes, uint32_t imm, Deadline deadline) = 0;
  // Waits until everything queued to `peer` has left this node (TCP: handed to
  // the kernel; RDMA: completed by the NIC).
  virtual Status flush(NodeId peer, Deadline deadline) = 0;

  // Stops the progress thread and closes every connection (also done by the
  // destructor). Calls after shutdown() return EPD_ERR_SHUTTING_DOWN.
  virtual void shutdown() = 0;
};

// Checks what every implementation needs (node id, secret length, listen
// address given, timeouts positive, peers parseable); each kind checks its
// own option struct when it starts.
Status validate_config(const TransportConfig& config);

// "host:port" → host and port; "[v6]:port" accepted. Errors name the string.
Status split_host_port(const std::string& s, std::string* host, uint16_t* port);

// ---- kinds ------------------------------------------------------------------------
// The factories, one per kind (tcp_transport.cc, rdma_progress.cc).
Result<std::unique_ptr<Transport>> create_tcp_transport(const TransportConfig& config,
                                                        TransportCallbacks callbacks);
// EPD_ERR_UNSUPPORTED when built without RDMA; EPD_ERR_RDMA without a device.
Result<std::unique_ptr<Transport>> create_rdma_transport(const TransportConfig& config,
                                                         TransportCallbacks callbacks);

// A row of the registry: the name TransportConfig::kind selects, the factory,
// and the kind make_transport() falls back to when this one cannot start —
// only when the config flag `fallback_allowed` points to is set (the refusal
// names it as `fallback_option`).
struct TransportKind {
  const char* name;
  Result<std::unique_ptr<Transport>> (*create)(const TransportConfig&, TransportCallbacks);
  const char* fallback = nullptr;  // nullptr: none
  bool TransportConfig::*fallback_allowed = nullptr;
  const char* fallback_option = nullptr;
};

// Every kind of this build (rdma is listed without EPD_HAVE_RDMA too: its
// factory then says EPD_ERR_UNSUPPORTED).
std::span<const TransportKind> transport_kinds();
// The kind named `name`, or nullptr.
const TransportKind* find_transport_kind(std::string_view name);

// The daemon's policy: the kind config.kind names; when it cannot start, its
// fallback kind if the config allows it (rdma → tcp with rdma_fallback_to_tcp),
// else its error. Logs which transport runs (and why a fallback happened)
// through config.log.
Result<std::unique_ptr<Transport>> make_transport(const TransportConfig& config,
                                                  TransportCallbacks callbacks);

// The network interface holding the address of `listen_address` ("10.0.0.1:7400"
// -> "ibp25s0"): the device the transport's traffic uses, for placing its
// threads near that NIC. Errors (naming the address): a wildcard address (all
// interfaces), one no local interface holds, getifaddrs failing.
Result<std::string> interface_of_address(const std::string& listen_address);

// config.log, or stderr when unset.
void transport_log(const TransportConfig& config, LogSeverity sev, const std::string& msg);

}  // namespace epd::transport
