// client.cc — libepd-client: the C ABI of epd/epd.h over the control protocol
// (protocol.h) and the shared session block (shm_layout.h): connection, joins,
// the host data path, last-error messages, and the deprecated 0.1 names of
// these calls (each forwards to its replacement).
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <mutex>
#include <string>

#include "client_internal.h"
#include "epd/epd.h"
#include "staging.h"
#include "layout.h"
#include "protocol.h"
#include "shm_layout.h"

namespace epd::client_detail {

Result<proto::Received> Connection::call(const std::vector<uint8_t>& rec, uint64_t rid, int64_t timeout_ns) {
  if (lost.load()) return lost_status();
  int rc = proto::send_record(sock, rec, nullptr, 0, false);
  if (rc != 0) {
    lost = true;
    if (rc == -EAGAIN) return make_status(EPD_ERR_TIMEOUT, "epd did not take a request within 10 s");
    return rc == -EPIPE || rc == -ECONNRESET ? lost_status() : epd::errno_status("sendmsg to epd", -rc);
  }
  const int64_t deadline = shm::monotonic_ns() + timeout_ns;
  for (;;) {
    const int64_t left = deadline - shm::monotonic_ns();
    if (left <= 0)
      return make_status(EPD_ERR_TIMEOUT, "no reply from epd within %lld ms", static_cast<long long>(timeout_ns / 1000000));
    pollfd p{sock, POLLIN, 0};
    const int n = poll(&p, 1, static_cast<int>(std::min<int64_t>(left / 1000000 + 1, 1000)));
    if (n < 0 && errno != EINTR) return epd::errno_status("poll", errno);
    if (n <= 0) continue;
    proto::Received rx;
    rc = proto::recv_record(sock, rx, false);
    if (rc < 0 || rx.eof) {
      for (int fd : rx.fds) close(fd);
      lost = true;
      return lost_status();
    }
    auto f = proto::decode_frame(rx.data.data(), rx.data.size());
    if (!f) {
      for (int fd : rx.fds) close(fd);
      return f.status();
    }
    if (f->header.type == proto::MsgType::kShutdown) {
      shutdown_seen = true;
      continue;
    }
    if (f->header.request_id != rid) {
      // Request id 0 is the daemon refusing the connection itself (at accept:
      // max_sessions, its fd limit): the answer to whatever was asked.
      if (f->header.type == proto::MsgType::kError && f->header.request_id == 0) return rx;
      for (int fd : rx.fds) close(fd);
      continue;  // a late answer to a request that timed out
    }
    return rx;
  }
}

}  // namespace epd::client_detail

namespace {

using epd::Result;
using epd::Status;
using epd::make_status;
using namespace epd::client_detail;

constexpr int64_t kSpinNs = 20000;             // spin before sleeping on the futex
constexpr int64_t kSliceNs = 100 * 1000000LL;  // futex slice: the connection is checked between slices

// The message of the last failed call on this thread that has no handle to
// keep it (connect, spec queries): epd_client_last_error(NULL).
thread_local std::string tls_error;
// The copy handed out by the last *_last_error call on this thread.
thread_local std::string tls_returned;

// Records `st` as this thread's handle-less error and returns its code.
epd_status_t fail_without_handle(const Status& st) {
  try {
    tls_error = st.to_string();
  } catch (...) {
  }
  return st.code();
}

// Copies `msg` into this thread's returned string (valid until the next copy).
const char* hand_out(const std::string& msg) {
  try {
    tls_returned = msg;
  } catch (...) {
    return "out of memory";
  }
  return tls_returned.c_str();
}

const char* handle_error(const Handle& h) {
  std::lock_guard<std::mutex> lk(h.err_mu);
  return hand_out(h.last_error);
}

// The status carried by an ERROR record, or OK when `f` is not one.
Status error_of(const proto::Frame& f) {
  if (f.header.type != proto::MsgType::kError) return Status::ok();
  auto r = proto::decode_reply(f);
  if (!r) return r.status();
  return Status(static_cast<epd_status_t>(r->status), r->message);
}

void close_all(std::vector<int>& fds) {
  for (int fd : fds) close(fd);
  fds.clear();
}

// Tells the daemon that member `index` is gone, with conn.mu held (a join that
// failed here after the daemon admitted the rank: without this the rank would
// stay joined until the connection closes). The answer is not needed.
void leave_locked(Connection& conn, uint32_t index) {
  const uint64_t rid = conn.next_rid++;
  auto rx = conn.call(proto::encode(proto::Leave{index}, rid), rid, kRequestNs);
  if (rx) close_all(rx->fds);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void ring(const epd_group_impl& g) {
  const uint64_t one = 1;
  if (write(g.conn->doorbell, &one, sizeof one) < 0) {
    // EAGAIN: the counter is already non-zero, the daemon will look anyway.
  }
}

// Waits until *word reaches seq, with the deadline and the liveness checks of epd.h.
Status wait_seq(epd_group_impl& g, uint32_t* word, uint32_t seq, uint32_t* waiters, uint32_t timeout_ms,
                const char* what, int32_t slot) {
  auto done = [&] { return static_cast<int32_t>(shm::word(*word).load(std::memory_order_acquire) - seq) >= 0; };
  const int64_t start = shm::monotonic_ns();
  const int64_t limit_ms = timeout_ms ? timeout_ms : g.spec.effective_timeout_ms();
  const int64_t deadline = start + limit_ms * 1000000LL;
  while (shm::monotonic_ns() - start < kSpinNs)
    for (int i = 0; i < 64; ++i) {
      if (done()) return Status::ok();
      cpu_relax();
    }
  for (;;) {
    if (done()) return Status::ok();
    if (g.conn->lost.load()) return g.conn->lost_status();
    pollfd p{g.conn->sock, POLLRDHUP, 0};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR))) {
      if (done()) return Status::ok();
      g.conn->lost = true;
      return g.conn->lost_status();
    }
    const int64_t now = shm::monotonic_ns();
    if (now >= deadline)
      return make_status(EPD_ERR_TIMEOUT, "%s_wait on slot %d: not finished within %lld ms (still in flight; "
                         "'epctl ranks' shows which rank is behind)", what, slot, static_cast<long long>(limit_ms));
    shm::word(*waiters).fetch_add(1, std::memory_order_seq_cst);
    const uint32_t v = shm::word(*word).load(std::memory_order_seq_cst);
    if (static_cast<int32_t>(v - seq) < 0) shm::futex_wait(word, v, std::min(kSliceNs, deadline - now));
    shm::word(*waiters).fetch_sub(1, std::memory_order_seq_cst);
  }
}

// The deadline of epd_client_connect (epd.h): $EPD_CONNECT_TIMEOUT_MS, else
// 5 s, for connecting and the HELLO reply together.
constexpr uint32_t kConnectTimeoutDefaultMs = 5000;
Result<uint32_t> connect_timeout_ms() {
  const char* env = getenv("EPD_CONNECT_TIMEOUT_MS");
  if (!env || !*env) return kConnectTimeoutDefaultMs;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(env, &end, 10);
  if (errno != 0 || !end || *end || *env == '-' || v < 1 || v > 3600000)
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "EPD_CONNECT_TIMEOUT_MS = '%s' is not a number of milliseconds in [1, 3600000]", env);
  return static_cast<uint32_t>(v);
}

// A connected socket to `path`, within limit_ms (a daemon whose listen
// backlog is full keeps connect() waiting).
Result<std::shared_ptr<Connection>> dial(const char* path, uint32_t limit_ms) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof addr.sun_path)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "socket path '%s' is longer than %zu bytes", path,
                       sizeof addr.sun_path - 1);
  std::strcpy(addr.sun_path, path);
  auto conn = std::make_shared<Connection>();
  conn->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (conn->sock < 0) return epd::errno_status("socket(AF_UNIX, SOCK_SEQPACKET)", errno);
  const timeval connect_limit{static_cast<time_t>(limit_ms / 1000), static_cast<suseconds_t>(limit_ms % 1000) * 1000};
  setsockopt(conn->sock, SOL_SOCKET, SO_SNDTIMEO, &connect_limit, sizeof connect_limit);
  if (connect(conn->sock, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int e = errno;
    if (e == EAGAIN || e == ETIMEDOUT || e == EINPROGRESS)
      return make_status(EPD_ERR_TIMEOUT,
                         "connect(%s): the daemon did not accept the connection within %u ms (its listen backlog is "
                         "full: it is saturated); EPD_CONNECT_TIMEOUT_MS sets this wait",
                         path, limit_ms);
    return make_status(e == EACCES ? EPD_ERR_PERMISSION : EPD_ERR_DAEMON_LOST, "connect(%s): %s", path, strerror(e));
  }
  // Requests are small; a send that cannot complete in 10 s means a daemon that does not read.
  const timeval send_limit{10, 0};
  setsockopt(conn->sock, SOL_SOCKET, SO_SNDTIMEO, &send_limit, sizeof send_limit);
  return conn;
}

// Maps the session block the HELLO reply carries (fds: the block, the doorbell).
Status map_session_block(Connection& conn, const proto::HelloReply& hr, std::vector<int>& fds) {
  struct stat sb;
  if (fstat(fds[0], &sb) != 0 || static_cast<uint64_t>(sb.st_size) < shm::kTotalBytes || hr.shm_bytes != shm::kTotalBytes) {
    close_all(fds);
    return make_status(EPD_ERR_PROTOCOL, "session block of %u bytes, this library expects %u (layout version %u)",
                       hr.shm_bytes, shm::kTotalBytes, shm::kLayoutVersion);
  }
  void* p = mmap(nullptr, shm::kTotalBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
  close(fds[0]);
  conn.doorbell = fds[1];
  fds.clear();
  if (p == MAP_FAILED) return epd::errno_status("mmap(session block)", errno);
  conn.shm = p;
  const shm::Header* hdr = shm::header(p);
  if (hdr->magic != shm::kMagic || hdr->layout_version != shm::kLayoutVersion ||
      hdr->membership_offset != shm::kMembershipOffset || hdr->membership_stride != sizeof(shm::Membership) ||
      hdr->max_memberships != shm::kMaxMemberships)
    return make_status(EPD_ERR_VERSION_MISMATCH, "session block layout version %u (magic 0x%08x), this library speaks %u",
                       hdr->layout_version, hdr->magic, shm::kLayoutVersion);
  return Status::ok();
}

// HELLO and its reply by `deadline` (the connect deadline of limit_ms).
Status hello(Connection& conn, const char* path, uint32_t limit_ms, int64_t deadline) {
  proto::Hello h;
  h.client_pid = static_cast<uint32_t>(getpid());
  h.client_name = "libepd-client";
  const uint64_t rid = conn.next_rid++;
  const int64_t left = std::max<int64_t>(deadline - epd::shm::monotonic_ns(), 1);
  auto rx = conn.call(proto::encode(h, rid), rid, left);
  if (!rx && rx.status().code() == EPD_ERR_TIMEOUT)
    return make_status(EPD_ERR_TIMEOUT,
                       "connect(%s): the daemon accepted the connection but did not answer HELLO within %u ms "
                       "(saturated or stopped); EPD_CONNECT_TIMEOUT_MS sets this wait",
                       path, limit_ms);
  if (!rx) return rx.status();
  auto f = proto::decode_frame(rx->data.data(), rx->data.size());
  Status st = f ? error_of(*f) : f.status();
  Result<proto::HelloReply> hr = st ? proto::decode_hello_reply(*f) : Result<proto::HelloReply>(st);
  if (!hr || hr->status != EPD_OK || rx->fds.size() != 2) {
    close_all(rx->fds);
    if (!hr) return hr.status();
    return hr->status != EPD_OK ? Status(static_cast<epd_status_t>(hr->status), hr->message)
                                : make_status(EPD_ERR_PROTOCOL, "HELLO_REPLY carried %zu file descriptors, expected 2",
                                              rx->fds.size());
  }
  EPD_RETURN_IF_ERROR(map_session_block(conn, *hr, rx->fds));
  conn.hello = std::move(hr.value());
  return Status::ok();
}

// Whether a combine may follow on a slot in phase `ph`; else the status that
// says what is out of order: a second combine for one dispatch is SLOT_BUSY
// while the first is in flight, NO_DISPATCH once the slot is idle again.
Status combine_order(Phase ph, int32_t slot) {
  switch (ph) {
    case Phase::kDispatched: return Status::ok();
    case Phase::kCombining:
      return make_status(EPD_ERR_SLOT_BUSY,
                         "combine on slot %d: this dispatch's combine is already in flight (combine_wait for it first)",
                         slot);
    case Phase::kDispatching:
      return make_status(EPD_ERR_NO_DISPATCH, "combine on slot %d before its dispatch_wait returned", slot);
    case Phase::kIdle: break;
  }
  return make_status(EPD_ERR_NO_DISPATCH,
                     "combine on slot %d without a dispatch: the slot is idle (no dispatch since its last combine, "
                     "or that dispatch failed)",
                     slot);
}

}  // namespace


extern "C" {

EPD_API epd_status_t epd_client_connect(const char* socket_path, epd_client_t** out) {
  return guarded([&]() -> epd_status_t {
    if (!out) return fail_without_handle(make_status(EPD_ERR_INVALID_ARGUMENT, "out is NULL"));
    const char* path = socket_path ? socket_path : getenv("EPD_SOCKET");
    if (!path || !*path) path = EPD_DEFAULT_SOCKET;
    auto limit_ms = connect_timeout_ms();
    if (!limit_ms) return fail_without_handle(limit_ms.status());
    const int64_t deadline = epd::shm::monotonic_ns() + static_cast<int64_t>(*limit_ms) * 1000000LL;
    auto conn = dial(path, *limit_ms);
    if (!conn) return fail_without_handle(conn.status());
    if (Status st = hello(**conn, path, *limit_ms, deadline); !st) return fail_without_handle(st);
    auto* c = new epd_client();
    c->conn = std::move(conn.value());
    *out = c;
    return EPD_OK;
  });
}

EPD_API void epd_client_disconnect(epd_client_t* client) {
  epd_client_impl* c = as_client(client);  // nothing below allocates
  if (!c) return;
  c->magic = 0;
  shutdown(c->conn->sock, SHUT_RDWR);
  c->conn->lost = true;
  delete static_cast<epd_client*>(client);
}

EPD_API epd_status_t epd_client_query(epd_client_t* client, epd_client_info_t* out) {
  return guarded([&]() -> epd_status_t {
    epd_client_impl* c = as_client(client);
    if (!c) return EPD_ERR_INVALID_ARGUMENT;
    if (!out || out->struct_size < sizeof(epd_client_info_t))
      return c->fail(make_status(EPD_ERR_INVALID_ARGUMENT, "out is NULL or its struct_size = %u is below %zu",
                                 out ? out->struct_size : 0, sizeof(epd_client_info_t)));
    const proto::HelloReply& h = c->conn->hello;
    out->protocol_major = proto::kMajor;
    out->protocol_minor = proto::kMinor;
    out->daemon_pid = static_cast<int32_t>(h.daemon_pid);
    out->capabilities = h.capabilities;
    out->session_id = h.session_id;
    std::snprintf(out->daemon_version, sizeof out->daemon_version, "%s", h.daemon_version.c_str());
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_join(epd_client_t* client, const epd_group_spec_t* cspec, epd_group_t** out) {
  return guarded([&]() -> epd_status_t {
    epd_client_impl* c = as_client(client);
    if (!c) return EPD_ERR_INVALID_ARGUMENT;
    if (!cspec || !out) return c->fail(make_status(EPD_ERR_INVALID_ARGUMENT, "%s is NULL", cspec ? "out" : "spec"));
    auto spec = epd::GroupSpec::from_c(*cspec);
    if (!spec) return c->fail(spec.status());
    // timeout_ms 0: the daemon's join_timeout_ms (from its HELLO reply), so
    // that this library's waits end when the daemon's do.
    spec->resolve_timeout(c->conn->hello.join_timeout_ms);
    if (Status st = spec->validate(); !st) return c->fail(st);
    Connection& conn = *c->conn;
    std::lock_guard<std::mutex> lk(conn.mu);
    const uint64_t rid = conn.next_rid++;
    proto::Join j{spec.value()};
    auto rx = conn.call(proto::encode(j, rid), rid, static_cast<int64_t>(spec->effective_timeout_ms()) * 1000000LL + kRequestNs);
    if (!rx) return c->fail(rx.status());
    auto f = proto::decode_frame(rx->data.data(), rx->data.size());
    Status st = f ? error_of(*f) : f.status();
    Result<proto::JoinReply> jr = st ? proto::decode_join_reply(*f) : Result<proto::JoinReply>(st);
    if (!jr) {
      close_all(rx->fds);
      return c->fail(jr.status());
    }
    if (jr->status != EPD_OK) {
      close_all(rx->fds);
      return c->fail(Status(static_cast<epd_status_t>(jr->status), jr->message));
    }
    auto g = std::make_unique<epd_group>();
    g->conn = c->conn;
    g->spec = std::move(spec.value());
    g->layout = epd::GroupLayout::compute(g->spec);
    g->index = jr->member_index;
    g->group_id = jr->group_id;
    auto refuse = [&](const Status& failed) {
      close_all(rx->fds);
      leave_locked(conn, jr->member_index);
      return c->fail(failed);
    };
    if (jr->gpu_device >= 0) {
      // A GPU group: one fd, this rank's cuMem workspace on gpu_device.
      const int32_t placed = g->spec.placement[static_cast<size_t>(g->spec.rank)].gpu;
      if (rx->fds.size() != 1 || jr->member_index >= shm::kMaxMemberships || jr->workspace_bytes != 0 ||
          jr->gpu_device != placed)
        return refuse(make_status(EPD_ERR_PROTOCOL,
                                  "JOIN_REPLY of a GPU group: %zu fds (expected 1), workspace of %llu bytes (expected 0), "
                                  "device %d (spec places rank %d on %d), member index %u",
                                  rx->fds.size(), static_cast<unsigned long long>(jr->workspace_bytes), jr->gpu_device,
                                  g->spec.rank, placed, jr->member_index));
      if (Status st2 = attach_gpu_workspace(*g, *jr, rx->fds[0]); !st2) return refuse(st2);
      close_all(rx->fds);
    } else {
      struct stat sb;
      if (rx->fds.size() != 1 || jr->member_index >= shm::kMaxMemberships || jr->workspace_bytes != g->layout.total_bytes ||
          fstat(rx->fds[0], &sb) != 0 || static_cast<uint64_t>(sb.st_size) != jr->workspace_bytes)
        return refuse(make_status(EPD_ERR_PROTOCOL, "JOIN_REPLY: workspace of %llu bytes (layout needs %llu), member index %u",
                                  static_cast<unsigned long long>(jr->workspace_bytes),
                                  static_cast<unsigned long long>(g->layout.total_bytes), jr->member_index));
      void* p = mmap(nullptr, jr->workspace_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, rx->fds[0], 0);
      if (p == MAP_FAILED) return refuse(epd::errno_status("mmap(group workspace)", errno));
      close_all(rx->fds);
      g->ws = static_cast<uint8_t*>(p);
      g->ws_bytes = jr->workspace_bytes;
      uint64_t off = 0;
      for (int32_t r = 0; r < g->spec.rank; ++r) off += g->layout.ranks[static_cast<size_t>(r)].bytes;
      g->mine = g->ws + off;
    }
    g->entry = shm::membership(conn.shm, g->index);
    *out = g.release();
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_leave(epd_group_t* group) {
  return guarded([&]() -> epd_status_t {
    if (!group) return EPD_OK;
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    epd_status_t rc = EPD_OK;
    Connection& conn = *g->conn;
    if (!conn.lost.load()) {
      std::lock_guard<std::mutex> lk(conn.mu);
      const uint64_t rid = conn.next_rid++;
      auto rx = conn.call(proto::encode(proto::Leave{g->index}, rid), rid, kRequestNs);
      if (rx) close_all(rx->fds);
      else if (rx.status().code() != EPD_ERR_DAEMON_LOST && rx.status().code() != EPD_ERR_SHUTTING_DOWN)
        rc = rx.status().code();
    }
    g->magic = 0;
    delete static_cast<epd_group*>(group);
    return rc;
  });
}

EPD_API epd_status_t epd_group_dispatch(epd_group_t* group, int32_t slot, const epd_dispatch_args_t* args) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (g->is_gpu()) return g->fail(host_call_on_gpu_group(*g, "epd_group_dispatch"));
    if (Status st = check_slot(*g, slot); !st) return g->fail(st);
    if (!args || args->struct_size < offsetof(epd_dispatch_args_t, n_tokens) + sizeof(int32_t))
      return g->fail(make_status(EPD_ERR_INVALID_ARGUMENT, "args is NULL or its struct_size = %u is too small",
                                 args ? args->struct_size : 0));
    if (Status st = check_live(*g); !st) return g->fail(st);
    auto& s = g->slots[slot];
    if (s.phase.load() != Phase::kIdle)
      return g->fail(make_status(EPD_ERR_SLOT_BUSY, "dispatch on slot %d: its previous dispatch has no finished combine yet", slot));
    epd::DispatchInputs in;
    in.x = args->x;
    in.topk_ids = args->topk_ids;
    in.id_dtype = args->id_dtype;
    in.topk_weights = args->topk_weights;
    in.n_tokens = args->n_tokens;
    const epd::RankLayout& l = g->layout.ranks[static_cast<size_t>(g->spec.rank)];
    if (Status st = epd::stage_dispatch_inputs(g->spec, l, g->mine, slot, in); !st) return g->fail(st);
    s.n_tokens = args->n_tokens;
    s.phase = Phase::kDispatching;
    shm::word(g->entry->slot[slot].dispatch_req).store(++s.dispatch_seq, std::memory_order_release);
    ring(*g);
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_dispatch_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms,
                                             epd_dispatch_result_t* out) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (g->is_gpu()) return g->fail(host_call_on_gpu_group(*g, "epd_group_dispatch_wait"));
    if (Status st = check_slot(*g, slot); !st) return g->fail(st);
    if (!out || out->struct_size < sizeof(epd_dispatch_result_t))
      return g->fail(make_status(EPD_ERR_INVALID_ARGUMENT, "out is NULL or its struct_size = %u is below %zu",
                                 out ? out->struct_size : 0, sizeof(epd_dispatch_result_t)));
    auto& s = g->slots[slot];
    const Phase ph = s.phase.load();
    if (ph != Phase::kDispatching && ph != Phase::kDispatched)
      return g->fail(make_status(EPD_ERR_NO_DISPATCH, "dispatch_wait on slot %d without a dispatch", slot));
    shm::SlotWords& w = g->entry->slot[slot];
    if (ph == Phase::kDispatching) {
      if (Status st = wait_seq(*g, &w.dispatch_done, s.dispatch_seq, &w.waiters, timeout_ms, "dispatch", slot); !st) {
        if (st.code() != EPD_ERR_TIMEOUT) s.phase = Phase::kIdle;
        return g->fail(st);
      }
      const auto code = static_cast<epd_status_t>(shm::word(w.dispatch_status).load(std::memory_order_acquire));
      if (code != EPD_OK) {
        s.phase = Phase::kIdle;
        return g->fail(Status(code, std::string(w.dispatch_msg, strnlen(w.dispatch_msg, shm::kMsgBytes))));
      }
      s.phase = Phase::kDispatched;
    }
    const epd::RankLayout& l = g->layout.ranks[static_cast<size_t>(g->spec.rank)];
    const epd::SlotOffsets& o = l.slot[slot];
    int32_t total = 0;
    std::memcpy(&total, g->mine + o.recv_total, 4);
    out->total_rows = static_cast<int32_t>(std::clamp<int64_t>(total, 0, l.recv_rows));
    out->capacity_rows = l.recv_rows;
    out->ids_per_row = l.ids_per_row;
    out->num_local_experts = l.local_experts;
    out->x = g->mine + o.recv_x;
    out->scales = l.scale_blocks ? reinterpret_cast<const float*>(g->mine + o.recv_scales) : nullptr;
    out->ids = reinterpret_cast<const int32_t*>(g->mine + o.recv_ids);
    out->weights = reinterpret_cast<const float*>(g->mine + o.recv_weights);
    out->src = reinterpret_cast<const epd_src_t*>(g->mine + o.recv_src);
    out->counts = reinterpret_cast<const int32_t*>(g->mine + o.recv_counts);
    out->combine_in = g->mine + o.combine_in;
    out->x_row_bytes = l.recv_row_bytes;
    out->combine_row_bytes = l.in_row_bytes;
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_combine(epd_group_t* group, int32_t slot, epd_weight_mode_t weight_mode) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (g->is_gpu()) return g->fail(host_call_on_gpu_group(*g, "epd_group_combine"));
    if (Status st = check_slot(*g, slot); !st) return g->fail(st);
    if (Status st = check_weight_mode(g->spec, weight_mode); !st) return g->fail(st);
    if (Status st = check_live(*g); !st) return g->fail(st);
    auto& s = g->slots[slot];
    if (Status st = combine_order(s.phase.load(), slot); !st) return g->fail(st);
    shm::SlotWords& w = g->entry->slot[slot];
    shm::word(w.combine_mode).store(static_cast<uint32_t>(weight_mode), std::memory_order_relaxed);
    s.phase = Phase::kCombining;
    shm::word(w.combine_req).store(++s.combine_seq, std::memory_order_release);
    ring(*g);
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_combine_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms, const void** out) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (g->is_gpu()) return g->fail(host_call_on_gpu_group(*g, "epd_group_combine_wait"));
    if (Status st = check_slot(*g, slot); !st) return g->fail(st);
    if (!out) return g->fail(make_status(EPD_ERR_INVALID_ARGUMENT, "out is NULL"));
    auto& s = g->slots[slot];
    if (s.phase.load() != Phase::kCombining)
      return g->fail(make_status(EPD_ERR_NO_DISPATCH, "combine_wait on slot %d without a combine", slot));
    shm::SlotWords& w = g->entry->slot[slot];
    if (Status st = wait_seq(*g, &w.combine_done, s.combine_seq, &w.waiters, timeout_ms, "combine", slot); !st) {
      if (st.code() != EPD_ERR_TIMEOUT) s.phase = Phase::kIdle;
      return g->fail(st);
    }
    s.phase = Phase::kIdle;
    const auto code = static_cast<epd_status_t>(shm::word(w.combine_status).load(std::memory_order_acquire));
    if (code != EPD_OK) return g->fail(Status(code, std::string(w.combine_msg, strnlen(w.combine_msg, shm::kMsgBytes))));
    const epd::RankLayout& l = g->layout.ranks[static_cast<size_t>(g->spec.rank)];
    *out = g->mine + l.slot[slot].combine_out;
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_spec_workspace_bytes(const epd_group_spec_t* cspec, int32_t node, int32_t gpu,
                                                    uint64_t* bytes) {
  return guarded([&]() -> epd_status_t {
    if (!cspec || !bytes)
      return fail_without_handle(make_status(EPD_ERR_INVALID_ARGUMENT, "%s is NULL", cspec ? "bytes" : "spec"));
    auto spec = epd::GroupSpec::from_c(*cspec);
    if (!spec) return fail_without_handle(spec.status());
    if (Status st = spec->validate(); !st) return fail_without_handle(st);
    *bytes = epd::GroupLayout::compute(spec.value()).bytes_on(spec.value(), node, gpu);
    return EPD_OK;
  });
}

EPD_API const char* epd_client_last_error(const epd_client_t* client) {
  if (!client) return hand_out(tls_error);
  const auto* h = static_cast<const epd_client_impl*>(client);
  if (h->magic != kClientMagic) return "not an epd_client_t handle";
  return handle_error(*h);
}

EPD_API const char* epd_group_last_error(const epd_group_t* group) {
  if (!group) return "";
  const auto* h = static_cast<const epd_group_impl*>(group);
  if (h->magic != kGroupMagic) return "not an epd_group_t handle";
  return handle_error(*h);
}

// ---- deprecated 0.1 names, removed in 0.3: each forwards to its replacement ----

EPD_API epd_status_t epd_dispatch(epd_group_t* group, int32_t slot, const epd_dispatch_args_t* args) {
  return epd_group_dispatch(group, slot, args);
}

EPD_API epd_status_t epd_dispatch_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms,
                                       epd_dispatch_result_t* out) {
  return epd_group_dispatch_wait(group, slot, timeout_ms, out);
}

EPD_API epd_status_t epd_combine(epd_group_t* group, int32_t slot, epd_weight_mode_t weight_mode) {
  return epd_group_combine(group, slot, weight_mode);
}

EPD_API epd_status_t epd_combine_wait(epd_group_t* group, int32_t slot, uint32_t timeout_ms, const void** out) {
  return epd_group_combine_wait(group, slot, timeout_ms, out);
}

EPD_API epd_status_t epd_workspace_bytes(const epd_group_spec_t* spec, int32_t node, int32_t gpu, uint64_t* bytes) {
  return epd_group_spec_workspace_bytes(spec, node, gpu, bytes);
}

EPD_API const char* epd_last_error(const void* handle) {
  // Both handle kinds start with Handle, so the magic tells which one this is.
  if (!handle) return epd_client_last_error(nullptr);
  const uint32_t magic = static_cast<const Handle*>(handle)->magic;
  if (magic == kClientMagic) return epd_client_last_error(static_cast<const epd_client_t*>(handle));
  if (magic == kGroupMagic) return epd_group_last_error(static_cast<const epd_group_t*>(handle));
  return "not an epd handle";
}

}  // extern "C"
