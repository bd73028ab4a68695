// fuzz_requests.cc — fuzz target for the daemon's request handlers (issue 14,
// finding 9): each input is a program of up to kMaxOps operations by up to
// kSessions clients against one live in-process Server (a real control
// thread, groups, workers): connect, HELLO, JOIN with specs drawn from small
// and out-of-range values, LEAVE, STATUS, mutated or fd-carrying records,
// doorbells rung in and out of order, random bytes written into joined
// workspaces, abrupt closes. Checks: the daemon never crashes (it runs in this
// process), every request gets its answer (a reply, or an ERROR) — at once,
// or for a JOIN within its deadline — every doorbell is answered through its
// completion word, and after the run the daemon holds no descriptor and no
// mapping it did not hold before.
//
// With clang -fsanitize=fuzzer (-DEPD_LIBFUZZER) libFuzzer drives
// LLVMFuzzerTestOneInput. Otherwise main() runs N inputs of random bytes from
// a seed: epd_fuzz_requests [N] [seed] (the seed is printed; a failure names
// the input number, and re-running with the same N and seed repeats it).
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "logging.h"
#include "protocol.h"
#include "server.h"
#include "shm_layout.h"

namespace {

using namespace epd;
namespace pr = epd::proto;

constexpr int kSessions = 4;
constexpr int kMaxOps = 64;
constexpr int64_t kAnswerNs = 5000LL * 1000000;   // a request's answer, beyond its own deadline
constexpr uint32_t kJoinTimeoutMs = 16;            // specs' timeout_ms: joins and rendezvous expire fast

int64_t now_ns() { return shm::monotonic_ns(); }

// What the run exercised (printed at the end: a fuzzer that reaches nothing shows it).
struct Stats {
  uint64_t requests = 0, answers = 0, joined = 0, rings = 0, scribbles = 0, closes = 0;
} stats;
long current_input = -1;  // main(): the input running, named in a failure
// $EPD_FUZZ_TRACE=K: input K prints its operations and the daemon logs (debugging a failure).
bool tracing() {
  static const long k = std::getenv("EPD_FUZZ_TRACE") ? std::atol(std::getenv("EPD_FUZZ_TRACE")) : -2;
  return current_input == k;
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "FUZZ FAILURE (input %ld): %s\n", current_input, what.c_str());
  std::fflush(stderr);
  std::abort();
}

// Reads choices from the input; zeros once it is used up.
class Bytes {
 public:
  Bytes(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  uint32_t u8() { return at_ < n_ ? d_[at_++] : 0; }
  uint32_t below(uint32_t n) { return n ? (u8() | u8() << 8) % n : 0; }
  bool done() const { return at_ >= n_; }

 private:
  const uint8_t* d_;
  size_t n_, at_ = 0;
};

// The daemon under test: a Server on its own thread, one per process.
struct Daemon {
  std::string dir, socket;
  std::unique_ptr<Server> server;
  std::thread thread;

  Daemon() {
    char tmpl[] = "/tmp/epd-fuzz-XXXXXX";
    if (!mkdtemp(tmpl)) fail("mkdtemp");
    dir = tmpl;
    socket = dir + "/epd.sock";
    (void)init_logging(LogLevel::kOff, "stderr");
    Server::Options o;
    o.config.socket_path = socket;
    o.config.join_timeout_ms = kJoinTimeoutMs;
    o.config.host_threads = 1;
    o.handle_signals = false;
    auto s = Server::create(std::move(o));
    if (!s) fail("Server::create: " + s.status().to_string());
    server = std::move(s.value());
    thread = std::thread([this] {
      if (Status st = server->run(); !st) fail("Server::run: " + st.to_string());
    });
  }
  ~Daemon() {
    server->request_stop();
    thread.join();
    server.reset();
    rmdir(dir.c_str());
  }
};

Daemon& daemon_instance() {
  static Daemon d;
  return d;
}

struct Expect {
  uint64_t rid;
  int64_t deadline;
  std::string what;  // the request's type (for the failure message)
};

// One membership the daemon granted: its workspace mapping and doorbells.
struct Joined {
  bool live = false;
  uint32_t index = 0;
  uint8_t* ws = nullptr;
  size_t ws_bytes = 0;
  uint32_t slots = 2;
  int64_t answer_by = 0;  // doorbells rung must be answered by then
};

struct Client {
  int fd = -1;
  void* shm = nullptr;
  int doorbell = -1;
  uint64_t next_rid = 1;
  std::vector<Expect> expect;
  std::vector<std::pair<uint64_t, uint32_t>> joins;  // (rid, slots) of JOINs awaiting their reply
  Joined member[shm::kMaxMemberships];

  void close_all() {
    for (Joined& j : member)
      if (j.ws) munmap(j.ws, j.ws_bytes);
    if (shm) munmap(shm, shm::kTotalBytes);
    for (int f : {fd, doorbell})
      if (f >= 0) close(f);
    *this = Client{};
  }
};

// A spec from small values (rare branches: out-of-range and odd ones). An
// exhausted input reads zeros, which pick the common values. Built through
// the C struct and GroupSpec::from_c, as the client library does (default
// expert_owner table); a random owner table replaces it a quarter of the time.
GroupSpec spec_from(Bytes& in) {
  static const char* kNames[] = {"a", "b", "c", "bad name!"};
  epd_group_spec_t c;
  epd_group_spec_init(&c);
  std::snprintf(c.name, sizeof c.name, "%s", kNames[in.below(in.below(8) == 7 ? 4 : 3)]);
  c.generation = in.below(3);
  c.world_size = 1 + static_cast<int32_t>(in.below(in.below(16) == 15 ? 2000 : 3));
  c.rank = static_cast<int32_t>(in.below(static_cast<uint32_t>(c.world_size) + (in.below(8) == 7 ? 3 : 0)));
  c.num_experts = c.world_size * (1 + static_cast<int32_t>(in.below(3)));
  c.top_k = 1 + static_cast<int32_t>(in.below(in.below(16) == 15 ? 100 : std::min(2, c.num_experts)));
  c.hidden = in.below(16) == 15 ? static_cast<int32_t>(in.u8() | in.u8() << 8) : (in.below(2) ? 128 : 32);
  c.dtype = static_cast<epd_dtype_t>(in.below(3));
  c.dispatch_quant = static_cast<epd_quant_t>(in.below(4) == 3);
  c.max_tokens_per_rank = in.below(16) == 15 ? (in.below(2) ? 2000000 : 64) : 1 + static_cast<int32_t>(in.below(8));
  c.mode = static_cast<epd_mode_t>(in.below(2));
  c.layout = static_cast<epd_layout_t>(in.below(2));
  c.slots = 2 + static_cast<int32_t>(in.below(in.below(16) == 15 ? 10 : 2));
  c.timeout_ms = in.below(8) == 7 ? 0 : kJoinTimeoutMs / 2 + in.below(kJoinTimeoutMs);
  GroupSpec s;
  if (auto r = GroupSpec::from_c(c); r) s = std::move(r.value());
  else s.name = c.name;  // from_c refused it: send the name alone, the daemon refuses the rest
  s.placement.assign(static_cast<size_t>(std::max(c.world_size, 0)), epd_placement_t{0, EPD_GPU_HOST});
  if (in.below(16) == 15 && !s.placement.empty()) s.placement[in.below(static_cast<uint32_t>(s.placement.size()))].node = 1;
  if (in.below(4) == 3) {
    s.expert_owner.clear();
    const uint32_t extra = in.below(16) == 15;  // sometimes an owner out of range
    for (int32_t e = 0; e < c.num_experts; ++e)
      s.expert_owner.push_back(static_cast<int32_t>(in.below(static_cast<uint32_t>(c.world_size) + extra)));
  }
  return s;
}

// A valid record of some request type, then mutated.
std::vector<uint8_t> mutated(Bytes& in, uint64_t rid) {
  std::vector<uint8_t> r;
  switch (in.below(4)) {
    case 0: r = pr::encode(pr::Hello{1, "fuzz"}, rid); break;
    case 1: r = pr::encode(pr::Join{spec_from(in)}, rid); break;
    case 2: r = pr::encode(pr::Leave{in.below(12)}, rid); break;
    default: r = pr::encode(pr::StatusQuery{static_cast<pr::StatusWhat>(in.below(8)), in.below(2)}, rid); break;
  }
  for (uint32_t k = 0, m = 1 + in.below(4); k < m && !r.empty(); ++k) {
    switch (in.below(4)) {
      case 0: r[in.below(static_cast<uint32_t>(r.size()))] ^= static_cast<uint8_t>(1u << in.below(8)); break;
      case 1: r.resize(in.below(static_cast<uint32_t>(r.size()) + 1)); break;
      case 2: r.push_back(static_cast<uint8_t>(in.u8())); break;
      default:  // the type field
        if (r.size() >= 10) r[8] = static_cast<uint8_t>(in.below(12));
        break;
    }
  }
  return r;
}

class Run {
 public:
  explicit Run(const uint8_t* data, size_t size) : in_(data, size) {}
  ~Run() {
    for (Client& c : clients_) c.close_all();
  }
  void go() {
    for (int op = 0; op < kMaxOps && !in_.done(); ++op) {
      step(clients_[in_.below(kSessions)]);
      for (Client& c : clients_) drain(c, 0);
    }
    settle();
  }

 private:
  void step(Client& c) {
    const uint32_t op = in_.below(12);
    if (tracing()) std::fprintf(stderr, "op %u on client %d (fd %d)\n", op, static_cast<int>(&c - clients_), c.fd);
    switch (op) {
      case 0: connect_client(c); break;
      case 1: request(c, pr::encode(pr::Hello{static_cast<uint32_t>(getpid()), "fuzz"}, c.next_rid), 0); break;
      case 2: join(c); break;
      case 3: request(c, pr::encode(pr::Leave{in_.below(shm::kMaxMemberships + 2)}, c.next_rid), 0); break;
      case 4: request(c, pr::encode(pr::StatusQuery{static_cast<pr::StatusWhat>(in_.below(8)), in_.below(2)},
                                    c.next_rid), 0); break;
      case 5: garbage(c); break;
      case 6: with_fd(c); break;
      case 7: case 8: ring(c); break;
      case 9: scribble(c); break;
      case 10:
        if (in_.below(4) == 0 && c.fd >= 0) {
          c.close_all();
          ++stats.closes;
        }
        break;
      default: connect_client(c); request(c, pr::encode(pr::Hello{1, "fuzz"}, c.next_rid), 0); break;
    }
  }

  void connect_client(Client& c) {
    if (c.fd >= 0) return;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", daemon_instance().socket.c_str());
    c.fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c.fd < 0 || connect(c.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      fail(std::string("connect to the daemon: ") + strerror(errno));
  }

  // Sends a request whose answer is due by now + kAnswerNs + extra_ns.
  void request(Client& c, const std::vector<uint8_t>& rec, int64_t extra_ns) {
    if (c.fd < 0) return;
    const uint64_t rid = c.next_rid++;
    if (send(c.fd, rec.data(), rec.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(rec.size())) return;
    auto f = pr::decode_frame(rec.data(), rec.size());
    c.expect.push_back(Expect{rid, now_ns() + kAnswerNs + extra_ns, f ? pr::msg_type_name(f->header.type) : "?"});
    ++stats.requests;
  }

  void join(Client& c) {
    GroupSpec s = spec_from(in_);
    if (tracing())
      std::fprintf(stderr, "  JOIN rid %llu '%s' gen %llu world %d rank %d slots %d timeout %u\n",
                   static_cast<unsigned long long>(c.next_rid), s.name.c_str(),
                   static_cast<unsigned long long>(s.generation), s.world_size, s.rank, s.slots, s.timeout_ms);
    c.joins.emplace_back(c.next_rid, static_cast<uint32_t>(std::clamp(s.slots, 1, EPD_MAX_SLOTS)));
    request(c, pr::encode(pr::Join{s}, c.next_rid), int64_t{1000} * 1000000 + int64_t{kJoinTimeoutMs} * 3 * 1000000);
    // Joins that complete now (this one, or the group's others) answer within
    // microseconds: take the replies, so later operations use the memberships.
    for (Client& other : clients_) drain(other, &other == &c ? 2 : 0);
  }

  void garbage(Client& c) {
    std::vector<uint8_t> r = mutated(in_, c.next_rid);
    if (r.empty() || c.fd < 0) return;
    // A record too short to carry a request id is answered with id 0.
    if (r.size() < pr::kHeaderBytes) {
      if (send(c.fd, r.data(), r.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(r.size()))
        c.expect.push_back(Expect{0, now_ns() + kAnswerNs, "short record"});
      return;
    }
    uint64_t rid = 0;
    std::memcpy(&rid, r.data() + 16, 8);
    // A mutated JOIN that still decodes is a real one, waiting up to its own
    // timeout_ms (any value is valid): keep that short so the run stays fast.
    if (auto f = pr::decode_frame(r.data(), r.size()); f && f->header.type == pr::MsgType::kJoin)
      if (auto j = pr::decode_join(*f); j && (j->spec.timeout_ms == 0 || j->spec.timeout_ms > 2 * kJoinTimeoutMs)) {
        j->spec.timeout_ms = kJoinTimeoutMs;
        r = pr::encode(*j, rid);
      }
    if (send(c.fd, r.data(), r.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(r.size())) return;
    // A mutated JOIN may be a real one: its answer may wait for its deadline.
    c.expect.push_back(Expect{rid, now_ns() + kAnswerNs + int64_t{1000} * 1000000,
                              "mutated record of type " + std::to_string(r.size() > 9 ? r[8] | r[9] << 8 : -1)});
    ++c.next_rid;
  }

  void with_fd(Client& c) {
    if (c.fd < 0) return;
    const std::vector<uint8_t> rec = pr::encode(pr::StatusQuery{}, c.next_rid);
    const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) return;
    if (pr::send_record(c.fd, rec, &devnull, 1, false) == 0)
      c.expect.push_back(Expect{c.next_rid, now_ns() + kAnswerNs, "STATUS with an fd"});
    ++c.next_rid;
    close(devnull);
  }

  Joined* pick(Client& c) {  // one of the client's memberships the daemon granted
    std::vector<Joined*> live;
    for (Joined& j : c.member)
      if (j.live) live.push_back(&j);
    return c.shm && !live.empty() ? live[in_.below(static_cast<uint32_t>(live.size()))] : nullptr;
  }

  void ring(Client& c) {
    Joined* j = pick(c);
    if (!j) return;
    const int32_t slot = static_cast<int32_t>(in_.below(j->slots + 1));  // one past the spec's slots too
    shm::SlotWords& w = shm::membership(c.shm, j->index)->slot[std::min(slot, EPD_MAX_SLOTS - 1)];
    const bool combine = in_.below(2);
    uint32_t& req = combine ? w.combine_req : w.dispatch_req;
    const uint32_t done = shm::word(combine ? w.combine_done : w.dispatch_done).load();
    const uint32_t cur = shm::word(req).load();
    if (done != cur) return;  // one doorbell of each kind in flight, as a client has
    if (combine) shm::word(w.combine_mode).store(in_.below(5));
    shm::word(req).store(cur + (in_.below(16) == 0 ? 2 + in_.below(100) : 1));
    const uint64_t one = 1;
    if (write(c.doorbell, &one, sizeof one) != sizeof one) fail("doorbell eventfd write");
    j->answer_by = now_ns() + kAnswerNs + int64_t{kJoinTimeoutMs} * 3 * 1000000;
    ++stats.rings;
  }

  void scribble(Client& c) {
    Joined* j = pick(c);
    if (!j || !j->ws || j->ws_bytes == 0) return;
    ++stats.scribbles;
    for (uint32_t k = 0, m = 1 + in_.below(32); k < m; ++k) {
      const size_t at = (static_cast<size_t>(in_.u8()) << 24 | in_.u8() << 16 | in_.u8() << 8 | in_.u8()) % j->ws_bytes;
      const uint32_t v = in_.below(4) == 0 ? 0xffffffffu : in_.below(3) == 0 ? 0x7fffffffu : in_.u8();
      std::memcpy(j->ws + std::min(at, j->ws_bytes - 4), &v, std::min<size_t>(4, j->ws_bytes));
    }
  }

  // Reads what the daemon sent; waits at most timeout_ms for the first record.
  void drain(Client& c, int timeout_ms) {
    for (int i = 0; i < 256 && c.fd >= 0; ++i) {
      pollfd p{c.fd, POLLIN, 0};
      if (poll(&p, 1, i == 0 ? timeout_ms : 0) <= 0) return;
      pr::Received rx;
      if (pr::recv_record(c.fd, rx, false) != 0 || rx.eof) {
        for (int f : rx.fds) close(f);
        if (!c.expect.empty()) fail("the daemon closed a session with " + std::to_string(c.expect.size()) +
                                    " requests unanswered");
        c.close_all();
        return;
      }
      on_record(c, rx);
    }
  }

  void on_record(Client& c, pr::Received& rx) {
    auto f = pr::decode_frame(rx.data.data(), rx.data.size());
    if (!f) fail("the daemon sent an undecodable record: " + f.status().to_string());
    if (Status st = pr::decode_any(rx.data.data(), rx.data.size()); !st)
      fail("the daemon sent a malformed " + std::string(pr::msg_type_name(f->header.type)) + ": " + st.to_string());
    const uint64_t rid = f->header.request_id;
    if (f->header.type == pr::MsgType::kHelloReply) on_hello_reply(c, *f, rx.fds);
    else if (f->header.type == pr::MsgType::kJoinReply) on_join_reply(c, *f, rid, rx.fds);
    for (int fd : rx.fds) close(fd);
    if (f->header.type == pr::MsgType::kShutdown) fail("the daemon announced a shutdown nobody asked for");
    for (auto it = c.expect.begin(); it != c.expect.end(); ++it)
      if (it->rid == rid) {
        c.expect.erase(it);
        ++stats.answers;
        return;
      }
    fail("an answer with request id " + std::to_string(rid) + " (" + pr::msg_type_name(f->header.type) +
         ") to no request");
  }

  void on_hello_reply(Client& c, const pr::Frame& f, std::vector<int>& fds) {
    auto h = pr::decode_hello_reply(f);
    if (!h || h->status != EPD_OK) return;
    if (fds.size() != 2 || c.shm) fail("HELLO_REPLY with " + std::to_string(fds.size()) + " fds, or a second one");
    void* p = mmap(nullptr, shm::kTotalBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    if (p == MAP_FAILED) fail("mmap of the session block");
    c.shm = p;
    c.doorbell = fds[1];
    fds.pop_back();
  }

  void on_join_reply(Client& c, const pr::Frame& f, uint64_t rid, std::vector<int>& fds) {
    uint32_t slots = 2;
    for (auto it = c.joins.begin(); it != c.joins.end(); ++it)
      if (it->first == rid) {
        slots = it->second;
        c.joins.erase(it);
        break;
      }
    auto j = pr::decode_join_reply(f);
    if (std::getenv("EPD_FUZZ_VERBOSE") && j)
      std::fprintf(stderr, "JOIN_REPLY %d %s\n", j->status, j->message.c_str());
    if (!j || j->status != EPD_OK) return;
    if (fds.size() != 1 || j->member_index >= shm::kMaxMemberships) fail("JOIN_REPLY without its workspace fd");
    Joined& m = c.member[j->member_index];
    ++stats.joined;
    if (m.ws) munmap(m.ws, m.ws_bytes);
    m = Joined{};
    m.live = true;
    m.index = j->member_index;
    m.slots = slots;
    m.ws_bytes = j->workspace_bytes;
    void* p = m.ws_bytes ? mmap(nullptr, m.ws_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0) : MAP_FAILED;
    m.ws = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
    if (!m.ws) m.ws_bytes = 0;
  }

  // Every request answered, every doorbell answered, within its deadline.
  void settle() {
    for (int round = 0; round < 100000; ++round) {
      bool waiting = false;
      for (Client& c : clients_) {
        if (c.fd < 0) continue;
        if (!c.expect.empty()) {
          waiting = true;
          for (const Expect& e : c.expect)
            if (now_ns() > e.deadline)
              fail("request id " + std::to_string(e.rid) + " (" + e.what + ") was never answered");
          drain(c, 2);
        }
        waiting = doorbells_pending(c) || waiting;
      }
      if (!waiting) return;
    }
    fail("settle did not finish");
  }

  bool doorbells_pending(Client& c) {
    if (!c.shm) return false;
    bool pending = false;
    for (Joined& j : c.member) {
      if (!j.live || !shm::word(shm::membership(c.shm, j.index)->active).load()) continue;
      // A slot past the group's slots is no slot: the daemon reads no doorbell there.
      for (uint32_t s = 0; s < std::min<uint32_t>(j.slots, EPD_MAX_SLOTS); ++s) {
        shm::SlotWords& w = shm::membership(c.shm, j.index)->slot[s];
        if (shm::word(w.dispatch_done).load() == shm::word(w.dispatch_req).load() &&
            shm::word(w.combine_done).load() == shm::word(w.combine_req).load())
          continue;
        if (now_ns() > j.answer_by)
          fail("membership " + std::to_string(j.index) + " slot " + std::to_string(s) + ": a doorbell was never answered");
        pending = true;
      }
    }
    if (pending) drain(c, 1);
    return pending;
  }

  Bytes in_;
  Client clients_[kSessions];
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)daemon_instance();
  Run(data, size).go();
  return 0;
}

#ifndef EPD_LIBFUZZER
namespace {

long count_entries(const char* dir) {
  long n = 0;
  if (FILE* f = popen((std::string("ls -1 ") + dir + " 2>/dev/null | wc -l").c_str(), "r")) {
    if (std::fscanf(f, "%ld", &n) != 1) n = -1;
    pclose(f);
  }
  return n;
}

long count_lines(const char* path) {
  FILE* f = std::fopen(path, "r");
  if (!f) return -1;
  long n = 0;
  for (int ch; (ch = std::fgetc(f)) != EOF;) n += ch == '\n';
  std::fclose(f);
  return n;
}

// After the run every session is closed: the daemon's descriptors and
// mappings come back to what they were after the warm-up (bounded wait: it
// closes sessions on its own thread; a few more glibc arenas are allowed).
bool returns_to(long fds, long maps) {
  const int64_t deadline = now_ns() + 10000LL * 1000000;
  long f = 0, m = 0;
  while (now_ns() < deadline) {
    f = count_entries("/proc/self/fd");
    m = count_lines("/proc/self/maps");
    if (f <= fds && m <= maps + 32) return true;  // a leak per group or session is thousands
    poll(nullptr, 0, 20);  // the daemon thread closes what the sessions held
  }
  std::fprintf(stderr, "after the run: %ld fds (was %ld), %ld mappings (was %ld)\n", f, fds, m, maps);
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 2000;
  const unsigned seed = argc > 2 ? static_cast<unsigned>(std::atol(argv[2])) : 12345u;
  std::printf("epd_fuzz_requests: %ld inputs, seed %u\n", n, seed);
  std::fflush(stdout);
  std::mt19937 rng(seed);
  long fds = -1, maps = -1;
  const int64_t t0 = now_ns();
  for (long i = 0; i < n; ++i) {
    current_input = i;
    std::vector<uint8_t> in(16 + rng() % 496);
    for (auto& b : in) b = static_cast<uint8_t>(rng());
    if (tracing()) (void)init_logging(LogLevel::kDebug, "stderr");
    LLVMFuzzerTestOneInput(in.data(), in.size());
    if (i == std::min(n, 500L) - 1) {  // after a warm-up: malloc arenas and thread caches exist by then
      fds = count_entries("/proc/self/fd");
      maps = count_lines("/proc/self/maps");
    }
    if ((i + 1) % 100000 == 0) {
      std::printf("%ld inputs, %.0f s\n", i + 1, static_cast<double>(now_ns() - t0) / 1e9);
      std::fflush(stdout);
    }
  }
  if (!returns_to(fds, maps)) return 1;
  std::printf("ok: %ld inputs, seed %u, every request and doorbell answered, no descriptor or mapping left\n"
              "  %llu requests (%llu answers), %llu joins completed, %llu doorbells rung, %llu workspace scribbles, "
              "%llu abrupt closes, %.1f s\n",
              n, seed, static_cast<unsigned long long>(stats.requests), static_cast<unsigned long long>(stats.answers),
              static_cast<unsigned long long>(stats.joined), static_cast<unsigned long long>(stats.rings),
              static_cast<unsigned long long>(stats.scribbles), static_cast<unsigned long long>(stats.closes),
              static_cast<double>(now_ns() - t0) / 1e9);
  return 0;
}
#endif
