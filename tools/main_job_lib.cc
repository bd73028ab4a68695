// main_job_lib.cc — processes, the daemon launcher, the workload and the
// checking worker loop shared by the main job, the benchmark and the tests.
#include "main_job_lib.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

extern char** environ;

namespace epd::job {

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// ---- Child ---------------------------------------------------------------------------------
Child::Child(Child&& o) noexcept { *this = std::move(o); }

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    std::swap(pid_, o.pid_);
    std::swap(pidfd_, o.pidfd_);
    std::swap(out_fd_, o.out_fd_);
    std::swap(reaped_, o.reaped_);
    std::swap(status_, o.status_);
    std::swap(buf_, o.buf_);
  }
  return *this;
}

Child::~Child() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    wait(5000);
  }
  if (pidfd_ >= 0) close(pidfd_);
  if (out_fd_ >= 0) close(out_fd_);
}

Child Child::spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env, bool capture_stdout) {
  Child c;
  int p[2] = {-1, -1};
  if (capture_stdout && pipe2(p, O_CLOEXEC) != 0) return c;
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) envs.emplace_back(*e);
  for (const auto& kv : env) {
    const std::string key = kv.substr(0, kv.find('=') + 1);
    envs.erase(std::remove_if(envs.begin(), envs.end(), [&](const std::string& s) { return s.rfind(key, 0) == 0; }),
               envs.end());
    envs.push_back(kv);
  }
  std::vector<char*> av, ev;
  for (const auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
  av.push_back(nullptr);
  for (const auto& e : envs) ev.push_back(const_cast<char*>(e.c_str()));
  ev.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    if (capture_stdout) dup2(p[1], 1);
    execve(av[0], av.data(), ev.data());
    _exit(127);
  }
  if (capture_stdout) {
    close(p[1]);
    c.out_fd_ = p[0];
  }
  c.pid_ = pid;
  c.pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  return c;
}

bool Child::read_line(std::string& line, int timeout_ms) {
  const int64_t deadline = now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
  for (;;) {
    const size_t nl = buf_.find('\n');
    if (nl != std::string::npos) {
      line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return true;
    }
    if (out_fd_ < 0) return false;
    const int64_t left = deadline - now_ns();
    if (left <= 0) return false;
    pollfd p{out_fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left / 1000000 + 1)) <= 0) continue;
    char b[4096];
    const ssize_t n = read(out_fd_, b, sizeof b);
    if (n <= 0) {
      close(out_fd_);
      out_fd_ = -1;
      if (!buf_.empty()) {
        line = std::move(buf_);
        buf_.clear();
        return true;
      }
      return false;
    }
    buf_.append(b, static_cast<size_t>(n));
  }
}

int Child::wait(int timeout_ms) {
  if (pid_ <= 0) return -1;
  if (!reaped_) {
    if (pidfd_ >= 0) {
      pollfd p{pidfd_, POLLIN, 0};
      if (poll(&p, 1, timeout_ms) <= 0) return -1;
    }
    int st = 0;
    if (waitpid(pid_, &st, 0) != pid_) return -1;
    reaped_ = true;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  return status_;
}

void Child::kill(int sig) {
  if (running()) ::kill(pid_, sig);
}

// ---- TempDir / DaemonProcess -------------------------------------------------------------------
TempDir::TempDir(const std::string& prefix) {
  const char* tmp = getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/" + prefix + ".XXXXXX";
  if (mkdtemp(tmpl.data())) path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

DaemonProcess::DaemonProcess(const std::string& epd_path, const std::string& runtime_dir,
                             const std::vector<std::string>& extra, int timeout_ms) {
  socket_ = runtime_dir + "/epd.sock";
  notify_path_ = runtime_dir + "/notify.sock";
  notify_fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", notify_path_.c_str());
  if (notify_fd_ < 0 || bind(notify_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    error_ = "cannot bind the notify socket " + notify_path_ + ": " + strerror(errno);
    return;
  }
  std::vector<std::string> argv = {epd_path, "--config", "", "--socket", socket_, "--log-target", "stderr"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  child_ = Child::spawn(argv, {"NOTIFY_SOCKET=" + notify_path_}, false);
  if (child_.pid() <= 0) {
    error_ = "cannot start " + epd_path;
    return;
  }
  if (!wait_notify("READY=1", timeout_ms)) {
    const int rc = child_.wait(0);
    error_ = "epd did not report READY=1 within " + std::to_string(timeout_ms) + " ms" +
             (rc >= 0 ? " (it exited with " + std::to_string(rc) + ")" : "");
    return;
  }
  ok_ = true;
}

bool DaemonProcess::wait_notify(const std::string& what, int timeout_ms) {
  const int64_t deadline = now_ns() + static_cast<int64_t>(timeout_ms) * 1000000;
  for (;;) {
    const int64_t left = deadline - now_ns();
    if (left <= 0) return false;
    pollfd p{notify_fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left / 1000000 + 1)) <= 0) continue;
    char b[1024];
    const ssize_t n = recv(notify_fd_, b, sizeof b - 1, 0);
    if (n <= 0) continue;
    b[n] = 0;
    if (std::strstr(b, what.c_str())) return true;
  }
}

int DaemonProcess::stop(int timeout_ms) {
  child_.kill(SIGTERM);
  return child_.wait(timeout_ms);
}

DaemonProcess::~DaemonProcess() {
  if (notify_fd_ >= 0) close(notify_fd_);
  if (!notify_path_.empty()) unlink(notify_path_.c_str());
}

// ---- workload -------------------------------------------------------------------------------
int32_t owner_of(const Workload& w, int32_t e) { return e / (w.experts / w.world); }

epd_group_spec_t make_spec(const Workload& w, int32_t rank) {
  epd_group_spec_t s;
  epd_group_spec_init(&s);
  std::snprintf(s.name, sizeof s.name, "%s", w.group.c_str());
  s.generation = w.generation;
  s.world_size = w.world;
  s.rank = rank;
  s.num_experts = w.experts;
  s.top_k = w.top_k;
  s.hidden = w.hidden;
  s.dtype = EPD_DTYPE_FP32;
  s.max_tokens_per_rank = w.max_tokens;
  s.layout = EPD_LAYOUT_RANK_MAJOR;
  s.slots = 2;
  s.timeout_ms = w.timeout_ms;
  return s;
}

namespace {

// splitmix64: cheap, well-mixed, and reproducible on every rank.
uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

RankInputs make_inputs(const Workload& w, int32_t rank, int64_t step) {
  uint64_t state = mix(w.seed ^ mix(static_cast<uint64_t>(rank) ^ mix(static_cast<uint64_t>(step))));
  auto next = [&] { return state = mix(state); };
  // Never zero, both signs, exactly representable: +-(0.25 .. 2.25) in steps of 2^-14.
  auto value = [&] {
    const uint64_t r = next();
    const float v = 0.25f + static_cast<float>(r & 0x7fff) * (1.0f / 16384.0f);
    return (r >> 63) ? -v : v;
  };
  RankInputs in;
  in.n = static_cast<int32_t>(next() % static_cast<uint64_t>(w.max_tokens + 1));
  const size_t n = static_cast<size_t>(in.n), K = static_cast<size_t>(w.top_k), H = static_cast<size_t>(w.hidden);
  in.x.resize(n * H);
  for (auto& v : in.x) v = value();
  in.ids.assign(n * K, -1);
  in.weights.assign(n * K, 0.0f);
  for (size_t t = 0; t < n; ++t)
    for (size_t k = 0; k < K; ++k) {
      if (next() % 8 == 0) continue;  // masked
      int32_t e;
      do e = static_cast<int32_t>(next() % static_cast<uint64_t>(w.experts));
      while (std::find(&in.ids[t * K], &in.ids[t * K] + k, e) != &in.ids[t * K] + k);
      in.ids[t * K + k] = e;
      in.weights[t * K + k] = std::fabs(value());
    }
  return in;
}

// The expert function: f_e(x) = a_e * x + b_e, different for every expert.
inline float expert_fn(int32_t e, float x) {
  const float a = 0.5f + 0.03125f * static_cast<float>(e);
  const float b = 0.0625f * static_cast<float>(e % 7) - 0.125f;
  return a * x + b;
}

// One (token, destination rank) row's reduced expert output, as the
// destination computes it: sum over k ascending of w * f_e(x), in fp32.
void rank_row(const Workload& w, const int32_t* ids, const float* wts, const float* x, int32_t dest, float* y) {
  for (int32_t h = 0; h < w.hidden; ++h) y[h] = 0.0f;
  for (int32_t k = 0; k < w.top_k; ++k) {
    if (ids[k] < 0 || owner_of(w, ids[k]) != dest) continue;
    for (int32_t h = 0; h < w.hidden; ++h) {
      const float p = wts[k] * expert_fn(ids[k], x[h]);
      y[h] = y[h] + p;
    }
  }
}

bool parse_result(const std::string& line, WorkerResult& r) {
  return std::sscanf(line.c_str(),
                     "RESULT rank=%d steps=%" SCNd64 " tokens=%" SCNd64 " rows=%" SCNd64 " wall_ns=%" SCNd64
                     " dispatch_p50_us=%lf dispatch_p99_us=%lf combine_p50_us=%lf combine_p99_us=%lf peer_lost=%" SCNd64,
                     &r.rank, &r.steps, &r.tokens, &r.rows, &r.wall_ns, &r.dispatch_p50_us, &r.dispatch_p99_us,
                     &r.combine_p50_us, &r.combine_p99_us, &r.peer_lost) == 10;
}

}  // namespace epd::job
