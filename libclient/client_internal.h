// client_internal.h — the handles behind libepd-client's C ABI, shared by
// client.cc (connection, joins, the host data path) and client_gpu.cc (GPU
// groups: the imported cuMem workspace and the stream operations).
//
// Ownership: a client handle owns a shared Connection; every group joined
// through it holds another reference, so a group outlives a disconnect (and
// then accepts only leave). A group owns its workspace mapping: the memfd
// mapping of a host group, or the imported GPU mapping and its GpuRankOps.
// Thread-safety: Connection::mu serialises requests; a handle's last error is
// behind err_mu; a group's slots may be driven from different threads, one
// thread per slot (per-slot state only: Slot below, GpuRankOps' phase per
// slot); gpu_mu serialises a GPU group's host reads, one read at a time, so
// status calls on different slots do not wait for each other's deadlines.
#pragma once

#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "epd/epd.h"
#include "gpu_ops.h"
#include "layout.h"
#include "protocol.h"
#include "shm_layout.h"
#include "spec.h"
#include "status.h"

namespace epd::client_detail {

namespace proto = epd::proto;
namespace shm = epd::shm;

constexpr uint32_t kClientMagic = 0x43445045;  // "EPDC"
constexpr uint32_t kGroupMagic = 0x47445045;   // "EPDG"
constexpr int64_t kRequestNs = 10 * 1000000000LL;

struct Handle {
  explicit Handle(uint32_t m) : magic(m) {}
  uint32_t magic;
  mutable std::mutex err_mu;  // guards last_error; read by the const *_last_error calls
  std::string last_error;
  epd_status_t fail(const Status& st) {
    std::lock_guard<std::mutex> lk(err_mu);
    last_error = st.to_string();
    return st.code();
  }
};

struct Connection {
  int sock = -1;
  int doorbell = -1;
  void* shm = nullptr;
  std::mutex mu;  // one request at a time
  uint64_t next_rid = 1;
  proto::HelloReply hello;
  std::atomic<bool> lost{false};
  std::atomic<bool> shutdown_seen{false};
  ~Connection() {
    if (shm) munmap(shm, shm::kTotalBytes);
    if (doorbell >= 0) close(doorbell);
    if (sock >= 0) close(sock);
  }
  bool shutting_down() const {  // shm is null until the HELLO reply is mapped
    return shutdown_seen.load() ||
           (shm && shm::word(shm::header(shm)->daemon_state).load(std::memory_order_acquire) == shm::kShuttingDown);
  }
  Status lost_status() const {
    if (shutting_down()) return make_status(EPD_ERR_SHUTTING_DOWN, "the epd daemon (pid %u) is shutting down", hello.daemon_pid);
    return make_status(EPD_ERR_DAEMON_LOST, "the epd daemon (pid %u) closed the connection", hello.daemon_pid);
  }
  // Whether the daemon closed the socket (checked without blocking); marks the connection lost.
  bool hung_up() {
    if (lost.load()) return true;
    pollfd p{sock, POLLRDHUP, 0};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR))) lost = true;
    return lost.load();
  }
  // Sends a request and waits for the record answering it (or an ERROR with its id).
  Result<proto::Received> call(const std::vector<uint8_t>& rec, uint64_t rid, int64_t timeout_ns);
};

struct epd_client_impl : Handle {
  epd_client_impl() : Handle(kClientMagic) {}
  std::shared_ptr<Connection> conn;
};

enum class Phase : int { kIdle, kDispatching, kDispatched, kCombining };

struct epd_group_impl : Handle {
  epd_group_impl() : Handle(kGroupMagic) {}
  std::shared_ptr<Connection> conn;
  GroupSpec spec;
  GroupLayout layout;
  uint8_t* ws = nullptr;
  uint64_t ws_bytes = 0;
  uint8_t* mine = nullptr;  // this rank's region
  uint32_t index = 0;
  uint64_t group_id = 0;
  shm::Membership* entry = nullptr;
  struct Slot {
    std::atomic<Phase> phase{Phase::kIdle};
    uint32_t dispatch_seq = 0, combine_seq = 0;
    int32_t n_tokens = 0;
    std::atomic<uint32_t> gpu_expect{0};  // GPU group: kDone* bit of the last operation enqueued, 0 before any
  };
  Slot slots[EPD_MAX_SLOTS];
  // GPU groups (gpu_device >= 0): this rank's workspace imported from the
  // daemon's cuMem fd, and the per-call stream operations on it. Declared in
  // this order so the operations go before the mapping they point into.
  int32_t gpu_device = -1;
  std::unique_ptr<GpuWorkspaceMapping> gpu_map;
  std::unique_ptr<InlineRunner> gpu_inline;  // executor inline: this rank's launches (libepd-inline.so)
  std::unique_ptr<GpuRankOps> gpu_ops;
  std::mutex gpu_mu;  // each GpuRankOps host read (completion, query): they share a private stream
  // The abort status (EPD_ERR_PEER_LOST, ...) once a query saw the daemon
  // abort this group's GPU calls: later enqueues are refused, since a wait
  // enqueued after the abort drained may never complete.
  std::atomic<int32_t> gpu_aborted{0};
  ~epd_group_impl() {
    if (ws) munmap(ws, ws_bytes);
  }
  bool is_gpu() const { return gpu_device >= 0; }
};

inline epd_client_impl* as_client(epd_client_t* c) {
  auto* h = reinterpret_cast<epd_client_impl*>(c);
  return h && h->magic == kClientMagic ? h : nullptr;
}
inline epd_group_impl* as_group(epd_group_t* g) {
  auto* h = reinterpret_cast<epd_group_impl*>(g);
  return h && h->magic == kGroupMagic ? h : nullptr;
}

inline Status check_slot(const epd_group_impl& g, int32_t slot) {
  if (slot < 0 || slot >= g.spec.slots)
    return make_status(EPD_ERR_BAD_SLOT, "slot = %d is outside [0, %d)", slot, g.spec.slots);
  return Status::ok();
}

inline Status check_live(const epd_group_impl& g) {
  if (g.conn->lost.load() || g.conn->shutting_down()) return g.conn->lost_status();
  const int32_t fault = shm::word(shm::header(g.conn->shm)->fault_word).load(std::memory_order_acquire);
  if (fault != 0)
    return make_status(EPD_ERR_DEVICE_FAULT, "the daemon set the fault word to %d (%s)", fault,
                       epd_status_string(static_cast<epd_status_t>(fault)));
  return Status::ok();
}

// No exception crosses the C ABI: allocation failures become NO_MEMORY.
template <typename F>
epd_status_t guarded(F&& f) noexcept {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return EPD_ERR_NO_MEMORY;
  } catch (...) {
    return EPD_ERR_INTERNAL;
  }
}

// ---- GPU groups (client_gpu.cc) ----
// Imports the rank's cuMem workspace from the JOIN_REPLY's fd (not consumed)
// and creates its GpuRankOps. EPD_ERR_GPU_UNAVAILABLE without a usable driver.
Status attach_gpu_workspace(epd_group_impl& g, const proto::JoinReply& jr, int fd);
// EPD_ERR_UNSUPPORTED naming the GPU call to use instead of host call `call`.
Status host_call_on_gpu_group(const epd_group_impl& g, const char* call);

}  // namespace epd::client_detail

struct epd_client : epd::client_detail::epd_client_impl {};
struct epd_group : epd::client_detail::epd_group_impl {};
