// shm_layout.h — the per-session shared-memory block between the daemon and one
// client session: doorbells, completion words, per-op status and message, the
// fault word and counters. Shared by daemon and libepd-client.
//
// The daemon creates it (memfd sealed against shrinking and growing), passes it
// with SCM_RIGHTS in the HELLO reply, and both sides map it MAP_SHARED. It holds
// only integers and offsets, never pointers. Ownership of words:
//   client writes: dispatch_req, combine_req, combine_mode, waiters
//   daemon writes: everything else
// The daemon never trusts a client-written word: it reads it once and checks it
// (a doorbell may only advance by one). Completion words are futex words: a
// client waits with FUTEX_WAIT (shared, not private) after raising `waiters`;
// the daemon stores the word, then wakes when `waiters` is non-zero.
// Thread-safety: every access goes through std::atomic_ref (see word()).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "epd/types.h"

namespace epd::shm {

constexpr uint32_t kMagic = 0x4D485345;  // "ESHM"
constexpr uint32_t kLayoutVersion = 1;
constexpr uint32_t kMaxMemberships = 8;   // groups one session may be a member of at once
constexpr uint32_t kMsgBytes = 200;

enum DaemonState : uint32_t { kServing = 0, kShuttingDown = 1 };

// One slot of one membership. 64-byte aligned so words of different slots do
// not share cache lines with unrelated writers.
struct alignas(64) SlotWords {
  uint32_t dispatch_req;     // client: sequence of the latest dispatch doorbell
  uint32_t combine_req;      // client: sequence of the latest combine doorbell
  uint32_t combine_mode;     // client: epd_weight_mode_t of combine_req, stored before it
  uint32_t waiters;          // client: threads in a futex wait on this slot
  uint32_t dispatch_done;    // daemon: sequence of the last finished dispatch (futex word)
  uint32_t combine_done;     // daemon: sequence of the last finished combine (futex word)
  int32_t dispatch_status;   // daemon: epd_status_t of that dispatch
  int32_t combine_status;    // daemon: epd_status_t of that combine
  char dispatch_msg[kMsgBytes];  // daemon: NUL-terminated error message
  char combine_msg[kMsgBytes];
};

struct Counters {
  uint64_t dispatch_calls;
  uint64_t combine_calls;
  uint64_t tokens_sent;     // tokens this rank dispatched
  uint64_t rows_received;   // rows this rank received
  uint64_t bytes_sent;
  uint64_t bytes_received;
  uint64_t last_progress_ns;  // CLOCK_REALTIME of the last completed op
  uint64_t reserved;
};

struct alignas(64) Membership {
  uint32_t active;       // daemon: 1 while the entry belongs to a joined group
  int32_t rank;          // daemon
  uint64_t group_id;     // daemon
  Counters counters;     // daemon (informational copy; epctl reads the daemon's own)
  SlotWords slot[EPD_MAX_SLOTS];
};

struct alignas(64) Header {
  uint32_t magic;
  uint32_t layout_version;
  uint32_t total_bytes;
  uint32_t max_memberships;
  uint32_t membership_offset;  // bytes from the start of the block
  uint32_t membership_stride;
  uint32_t daemon_state;       // DaemonState
  int32_t fault_word;          // daemon: 0, or an epd_status_t that fails every op
};

constexpr uint32_t kMembershipOffset = 4096;
constexpr uint32_t kTotalBytes =
    kMembershipOffset + kMaxMemberships * static_cast<uint32_t>(sizeof(Membership));
static_assert(sizeof(Header) <= kMembershipOffset, "header fits its page");

template <typename T>
inline std::atomic_ref<T> word(T& w) {
  return std::atomic_ref<T>(w);
}

inline Header* header(void* base) { return static_cast<Header*>(base); }
inline Membership* membership(void* base, uint32_t i) {
  return reinterpret_cast<Membership*>(static_cast<uint8_t*>(base) + kMembershipOffset +
                                       static_cast<size_t>(i) * sizeof(Membership));
}

}  // namespace epd::shm

// ---- waiting and waking on shared words -------------------------------------------------
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

namespace epd::shm {

// Shared (not FUTEX_PRIVATE) futex: waiter and waker are different processes.
inline int futex_wait(uint32_t* addr, uint32_t expected, int64_t timeout_ns) {
  timespec ts{static_cast<time_t>(timeout_ns / 1000000000), static_cast<long>(timeout_ns % 1000000000)};
  return static_cast<int>(syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, nullptr, 0));
}
inline void futex_wake_all(uint32_t* addr) {
  syscall(SYS_futex, addr, FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}
inline int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}
inline int64_t realtime_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace epd::shm
