// group.h — one EP group inside the daemon: its spec, its host workspace (one
// memfd holding every rank's region at its offset), its backend (what executes
// it: backend/backend.h), the members holding its ranks, per-slot rendezvous
// state, and — when the backend runs the host executor — the worker thread
// that runs dispatch/combine off the control thread.
//
// Ownership: the Rendezvous owns Groups (by name), the Server owns Sessions; a
// Member is shared between its Group (by rank) and its Session (by shm entry
// index). The Group owns its backend.
// Thread-safety: everything but the job queue is touched only by the control
// thread. submit() is called by the control thread; the worker thread runs the
// executor, publishes results into the members' session blocks (kept alive by
// the job) and reports a Completion through the callback it was given.
// After a job the worker may poll for the next one for a short while before
// sleeping ($EPD_WORKER_SPIN_US, default 0 = never): a combine follows its
// dispatch closely and a wake-up costs several µs, but on a small machine the
// spinning thread steals the CPU the clients need (measured: worse on 2 cores).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"
#include "host_executor.h"
#include "layout.h"
#include "session_block.h"
#include "shared_region.h"
#include "shm_layout.h"
#include "spec.h"
#include "status.h"

namespace epd {

struct Session;
class Group;

// One rank of one group, held by one session.
struct Member {
  Session* session = nullptr;  // null once the session is gone
  std::shared_ptr<SharedRegion> shm;
  uint64_t session_id = 0;
  int32_t pid = 0;
  uint32_t uid = 0;
  Group* group = nullptr;
  int32_t rank = 0;
  uint32_t index = 0;           // entry in the session block
  bool joined = false;          // false while waiting for the other ranks
  uint64_t join_request = 0;    // request id of the pending JOIN
  int64_t join_deadline_ns = 0;
  int64_t joined_at_ns = 0;
  struct SlotState {
    uint32_t dispatch_seen = 0, combine_seen = 0;  // last doorbell sequences taken
    Phase phase = Phase::kIdle;
    uint32_t seq = 0;           // sequence of the rung op
    uint32_t mode = 0;          // weight mode of a rung combine
    // PEER_LOST owed to this member's next op on the slot, for a rank lost
    // while that op was not rung yet. kNextOp: the member's dispatch/combine
    // pair was open on the slot (its dispatch had run with the lost rank), so
    // the pair can never complete, whenever its next op comes. kUntilWhole:
    // the slot was idle; only an op rung while the group is still incomplete
    // gets it, and the re-join that makes the group whole again clears it
    // (Group::forgive_idle_slots), so a survivor's next step after the
    // re-join works on every slot.
    enum class Owed : uint8_t { kNone, kUntilWhole, kNextOp };
    Owed owed = Owed::kNone;
  };
  std::array<SlotState, EPD_MAX_SLOTS> slots;
  std::string peer_lost_msg;
  shm::Counters counters{};     // the daemon's own copy (epctl reads this one)
};

struct Completion {
  uint64_t group_id = 0;
  int32_t slot = 0;
  Op op = Op::kNone;
  Status status;
  std::vector<int32_t> tokens_sent;    // per rank (dispatch)
  std::vector<int32_t> rows_received;  // per rank (dispatch)
};

class Group {
 public:
  using CompletionSink = std::function<void(Completion)>;

  // Makes the backend (make_backend), the host workspace it asks for, starts
  // the backend and, when it runs the host executor, the worker. pool runs
  // the executor's parallel loops (null = the process-wide pool).
  static Result<std::unique_ptr<Group>> create(uint64_t id, const GroupSpec& spec, const BackendEnv& env,
                                               ThreadPool* pool, CompletionSink sink);
  ~Group();  // stops the worker after the running job

  uint64_t id() const { return id_; }
  const GroupSpec& spec() const { return spec_; }
  const GroupLayout& layout() const { return layout_; }
  const SharedRegion& workspace() const { return *workspace_; }
  std::shared_ptr<SharedRegion> workspace_ref() const { return workspace_; }

  // Member by rank (null: absent). Control thread only.
  std::vector<std::shared_ptr<Member>>& members() { return members_; }
  const std::vector<std::shared_ptr<Member>>& members() const { return members_; }
  int32_t present() const;
  int32_t joined() const;

  struct LostRank {
    bool lost = false;
    int32_t pid = 0;
    uint64_t session_id = 0;
    int64_t since_ns = 0;
    std::string reason;
    bool left = false;  // it left (LEAVE) rather than being lost
  };
  std::vector<LostRank>& lost() { return lost_; }
  const std::vector<LostRank>& lost() const { return lost_; }

  struct SlotRendezvous {
    Op op = Op::kNone;
    std::vector<uint8_t> rung;  // per rank
    int32_t rung_count = 0;
    int64_t first_ring_ns = 0;
    bool in_flight = false;
    bool shipped = false;       // multi-node: the local ranks' regions went to the other nodes
  };
  SlotRendezvous& rendezvous(int32_t slot) { return slots_[static_cast<size_t>(slot)]; }
  const SlotRendezvous& rendezvous(int32_t slot) const { return slots_[static_cast<size_t>(slot)]; }
  void clear_rendezvous(int32_t slot);
  // A rank of the group is gone (st: PEER_LOST naming it). Members whose op on
  // `slot` is rung and not yet running get st now; every other member owes st
  // to its next op on the slot. Ends the slot's rendezvous unless it is running.
  // Control thread only.
  void fail_slot(int32_t slot, const Status& st);
  // The group is whole again (every lost rank re-joined): the PEER_LOST owed
  // on slots that were idle at the loss (Owed::kUntilWhole) is dropped; what
  // open pairs owe (kNextOp) stays. Control thread only.
  void forgive_idle_slots();
  int32_t in_flight() const;

  using Target = RankTarget;
  // Runs the op on the worker thread (backends that run the host executor),
  // then tells every target through the backend.
  void submit(int32_t slot, Op op, epd_weight_mode_t mode, std::vector<Target> targets);

  GroupBackend& backend() { return *backend_; }
  const GroupBackend& backend() const { return *backend_; }
  // Tells rank m the outcome of `op` without results (a refusal, a failure),
  // through the backend. Control thread.
  void notify(Member& m, int32_t slot, Op op, uint32_t seq, const Status& st);

  bool closed = false;  // replaced by a newer generation
  bool pinned = false;  // declared in the config: kept while it has no members
  // Who may join, retire or close it: the uid whose join created it (or, for a
  // group declared in the config, the uids and gids of its [[group]] keys, or
  // the daemon's own uid when it names none), plus root and the admin group.
  uint32_t owner_uid = 0;
  std::vector<uint32_t> allowed_uids, allowed_gids;  // config groups only
  // What creating it counted against the owner's quota (released at destroy).
  uint64_t charged_bytes = 0;
  bool charged = false;           // counted in the global totals
  // And in this uid's (groups a join created): the creator's, which is not the
  // owner's when an admin retires a declared group's generation.
  std::optional<uint32_t> charged_uid;
  int64_t created_ns = 0;

 private:
  Group(uint64_t id, GroupSpec spec, std::unique_ptr<GroupBackend> backend, std::shared_ptr<SharedRegion> ws,
        ThreadPool* pool, CompletionSink sink);
  struct Job {
    int32_t slot;
    Op op;
    epd_weight_mode_t mode;
    std::vector<Target> targets;
  };
  void worker_loop();
  void run_job(Job& job);

  uint64_t id_;
  GroupSpec spec_;
  GroupLayout layout_;
  std::shared_ptr<SharedRegion> workspace_;
  std::vector<uint64_t> offsets_;
  std::unique_ptr<GroupBackend> backend_;
  std::unique_ptr<HostExecutor> executor_;  // null unless the backend runs the host executor
  CompletionSink sink_;
  std::vector<std::shared_ptr<Member>> members_;
  std::vector<LostRank> lost_;
  std::vector<SlotRendezvous> slots_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::atomic<uint32_t> queued_{0};  // jobs_.size(), readable without the lock
  int64_t spin_ns_ = 0;              // after a job, poll for the next one this long before sleeping
  bool stop_ = false;
  std::thread worker_;
};

// Byte offset of every rank's region inside the group workspace.
std::vector<uint64_t> rank_offsets(const GroupLayout& layout);

}  // namespace epd
