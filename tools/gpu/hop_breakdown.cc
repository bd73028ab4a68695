// hop_breakdown.cc — where the time of an empty (n_tokens = 0) dispatch +
// combine round trip goes, in process and through armed streams; for 1 and 8
// ranks on GPU 0 (the LL shape of overhead_common.h).
//
// The daemon side is NOT the epd binary: this process holds an ArmedExecutor
// (the same class and default options epd's gpu backend uses) with its
// default-off stamp hook on (ArmedOptions::stamps), and a second process of
// this binary (hop_worker.cc) is the worker: it imports the workspaces over
// SCM_RIGHTS and enqueues through GpuRankOps, the code behind
// epd_group_*_async. Stamps are %globaltimer (ns, one clock for every process
// on the GPU) written by one-thread kernels:
//   worker stream: before the first rank's dispatch/combine call, after the
//     last rank's doorbell write, after the last rank's completion wait;
//   armed stream: after the doorbell waits, before each launch of the plan and
//     after its last (whose last block wrote the completion).
// Each stamp is itself a launch (~1-2 µs on the stream it sits on: see
// side=worker op=stream_sync_only segment=gpu_stamp_to_stamp), so the
// segments are upper bounds; host_total_unstamped vs host_total_stamped shows
// the stamps' total cost. The in-process reference is GpuExecutor in this
// process, stamped per launch, for the group's variant (low_latency: one
// launch per operation, the variant armed streams run too) and for
// high_throughput (three dispatch launches).
// Per stream operation of the worker: worker lines (hop_worker.cc).
//
// Usage: epd_hop_breakdown [--iters N] [--warmup N]. Lines:
//   breakdown world=W mps=M side=S ... segment=X median_us=.. p99_us=.. n=..
// then a summary table of medians. Exit status 0 when every part ran.
#include <cuda_runtime_api.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../../tests/gpu/armed_ipc.h"
#include "gpu_armed.h"
#include "gpu_executor.h"
#include "hop_breakdown.h"
#include "overhead_common.h"

namespace epd::hop {

Figure figure_of(std::vector<double> v) {
  Figure f;
  f.n = v.size();
  if (v.empty()) return f;
  std::sort(v.begin(), v.end());
  f.median = v[v.size() / 2];
  f.p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
  return f;
}

Figure print_figure(const std::string& where, const std::string& segment, std::vector<double> us) {
  const Figure f = figure_of(std::move(us));
  std::printf("%s segment=%s median_us=%.2f p99_us=%.2f n=%zu\n", where.c_str(), segment.c_str(), f.median, f.p99, f.n);
  std::fflush(stdout);
  return f;
}

namespace {

#define HOP_CUDA(expr)                                                                         \
  do {                                                                                         \
    const cudaError_t e_ = (expr);                                                             \
    if (e_ != cudaSuccess) return make_status(EPD_ERR_CUDA, "%s: %s", #expr, cudaGetErrorName(e_)); \
  } while (0)

struct Run {
  int32_t warmup = 200, iters = 1000, mps = 0;
  // Summary: row ("side ... segment") -> world -> median, rows in first-seen order.
  std::vector<std::string> rows;
  std::map<std::string, std::map<int32_t, double>> medians;
};

// Named samples in insertion order.
class Segments {
 public:
  void add(const std::string& name, double us) {
    for (auto& [n, v] : s_)
      if (n == name) {
        v.push_back(us);
        return;
      }
    s_.push_back({name, {us}});
  }
  // Prints every segment under "breakdown world=W mps=M <what>" and keeps its median.
  void print(Run& run, int32_t world, const std::string& what) {
    const std::string where = "breakdown world=" + std::to_string(world) + " mps=" + std::to_string(run.mps) + " " + what;
    for (auto& [n, v] : s_) {
      const Figure f = print_figure(where, n, std::move(v));
      const std::string row = what + " " + n;
      if (!run.medians.count(row)) run.rows.push_back(row);
      run.medians[row][world] = f.median;
    }
    s_.clear();
  }

 private:
  std::vector<std::pair<std::string, std::vector<double>>> s_;
};

double delta_us(uint64_t from, uint64_t to) {
  return static_cast<double>(static_cast<int64_t>(to - from)) / 1000.0;
}

// What launch i of a one-GPU variant's dispatch (op 0) or combine (op 1) is.
std::string launch_name(const std::string& variant, int op, int i) {
  if (op == 1) return "combine";
  if (variant.rfind("low_latency", 0) == 0) return "ordered";
  static const char* const kHt[] = {"count", "prefix", "scatter"};
  if (variant == "high_throughput" && i < 3) return kHt[i];
  return "launch" + std::to_string(i);
}

// How many of a plan's stamps (before each launch, after the last; zero = not
// written) are there, 0 when fewer than two; their first and last.
int plan_bounds(const uint64_t* p, uint64_t* first, uint64_t* last) {
  int n = 0;
  while (n < kMaxLaunchStamps && p[n] != 0) ++n;
  if (n < 2) return 0;
  *first = p[0];
  *last = p[n - 1];
  return n;
}

// The stamps a one-launch kernel wrote itself (KernelStampPoint, after the
// plan's launch stamps) as kernel_* segments, from the stamp before its launch
// to the one after: which phase of the launch the time goes to. Only the
// points written count (combine has no phase points; the in-process combine
// no exit count).
void add_kernel(Segments& seg, const uint64_t* p, int n_launch_stamps) {
  if (n_launch_stamps != 2) return;  // one launch: before it, after it
  const uint64_t* k = p + kMaxLaunchStamps;
  if (!k[kKsFirstBlockStart] || !k[kKsWorkDone]) return;
  struct Step {
    int point;
    const char* name;
  };
  static const Step kSteps[] = {{kKsFirstBlockStart, "kernel_launch_to_first_block"},
                                {kKsCountDone, "kernel_count"},
                                {kKsPrefixReleased, "kernel_count_to_prefix_release"},
                                {kKsPrefixDone, "kernel_prefix"},
                                {kKsScatterReleased, "kernel_prefix_to_scatter_release"},
                                {kKsWorkDone, "kernel_work"},
                                {kKsExitDone, "kernel_exit_count"}};
  uint64_t prev = p[0];
  for (const Step& s : kSteps) {
    if (!k[s.point]) continue;
    seg.add(s.name, delta_us(prev, k[s.point]));
    prev = k[s.point];
  }
  seg.add("kernel_end_to_next_stamp", delta_us(prev, p[1]));
  if (k[kKsLastBlockStart]) seg.add("kernel_block_start_spread", delta_us(k[kKsFirstBlockStart], k[kKsLastBlockStart]));
}

// The plan's stamps as launch_<name> segments, and the kernel's own; false
// when none were written.
bool add_plan(Segments& seg, const uint64_t* p, const std::string& variant, int op, uint64_t* first, uint64_t* last) {
  const int n = plan_bounds(p, first, last);
  for (int i = 0; i + 1 < n; ++i) seg.add("launch_" + launch_name(variant, op, i), delta_us(p[i], p[i + 1]));
  add_kernel(seg, p, n);
  return n > 0;
}

// What in_process runs: the group's own low_latency launches, the
// high_throughput ones, or low_latency with one warp per token row (parts 1:
// an eighth of the scatter and combine blocks; how much of an empty launch
// is the size of its grid).
enum InProcess : int { kInProcLowLatency = 0, kInProcHighThroughput = 1, kInProcOneSlice = 2 };

// GpuExecutor launched here: warmup + iters round trips unstamped, then
// stamped per launch (dispatch_shard / combine_shard launch_stamps).
Status in_process(Run& run, int32_t world, int kind) {
  GroupSpec spec = bench::ll_spec(world, "hop_inproc");
  if (kind == kInProcHighThroughput) spec.mode = EPD_MODE_HIGH_THROUGHPUT;
  GpuTuning tuning;
  if (kind == kInProcOneSlice) tuning.parts = tuning.combine_parts = 1;
  auto ws = allocate_gpu_workspaces(spec, 0);
  if (!ws) return ws.status();
  std::vector<uint8_t*> bases;
  for (auto& w : *ws) {
    bases.push_back(w->device_ptr());
    HOP_CUDA(cudaMemset(w->device_ptr(), 0, w->bytes()));  // n = 0 in every send header
  }
  auto ex = GpuExecutor::create(spec, bases, 0, tuning);
  if (!ex) return ex.status();
  const std::string variant = std::string((*ex)->variant_name()) + (kind == kInProcOneSlice ? ",parts=1" : "");
  const int32_t n = run.warmup + run.iters;
  const size_t per = 2 * kLaunchStampWords;
  uint64_t* d = nullptr;
  HOP_CUDA(cudaMalloc(reinterpret_cast<void**>(&d), sizeof(uint64_t) * per * n));
  HOP_CUDA(cudaMemset(d, 0, sizeof(uint64_t) * per * n));
  cudaStream_t st = nullptr;
  HOP_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Segments seg;
  for (int pass = 0; pass < 2; ++pass)
    for (int32_t i = 0; i < n; ++i) {
      uint64_t* rec = pass == 1 ? d + per * i : nullptr;
      const double t0 = bench::now_us();
      EPD_RETURN_IF_ERROR((*ex)->dispatch_shard(i % 2, 0, st, true, rec));
      EPD_RETURN_IF_ERROR((*ex)->combine_shard(i % 2, 0, EPD_WEIGHTS_ALREADY_APPLIED, st, true,
                                               rec ? rec + kLaunchStampWords : nullptr));
      HOP_CUDA(cudaStreamSynchronize(st));
      if (i >= run.warmup) seg.add(pass == 0 ? "host_total_unstamped" : "host_total_stamped", bench::now_us() - t0);
    }
  EPD_RETURN_IF_ERROR((*ex)->check_fault(st));
  std::vector<uint64_t> h(per * n);
  HOP_CUDA(cudaMemcpy(h.data(), d, sizeof(uint64_t) * h.size(), cudaMemcpyDeviceToHost));
  const std::string what = "side=inproc variant=" + variant;
  seg.print(run, world, what + " op=round_trip");
  for (int op = 0; op < 2; ++op) {
    for (int32_t i = run.warmup; i < n; ++i) {
      uint64_t first = 0, last = 0;
      if (!add_plan(seg, &h[per * i + kLaunchStampWords * op], variant, op, &first, &last)) continue;
      seg.add("op_total", delta_us(first, last));
      if (op == 1) {
        uint64_t d_first = 0, d_last = 0;
        if (plan_bounds(&h[per * i], &d_first, &d_last) > 0)
          seg.add("dispatch_end_to_combine_start", delta_us(d_last, first));
      }
    }
    seg.print(run, world, what + (op == 0 ? " op=dispatch" : " op=combine"));
  }
  HOP_CUDA(cudaStreamDestroy(st));
  HOP_CUDA(cudaFree(d));
  return Status::ok();
}

// The hop's segments from the worker's records and the armed executor's
// stamp entries. Trip j (from 0, warm-up included) ran on slot j % 2 as that
// slot's (j / 2)-th round trip: operations 2 (j / 2) + 1 (dispatch) and + 2.
void analyze_hop(Run& run, int32_t world, const std::string& variant, const TripRecord* recs,
                 const std::vector<uint64_t>& armed, int32_t stamp_ops) {
  Segments seg;
  for (int32_t i = 0; i < run.iters; ++i) {
    seg.add("host_total_stamped", recs[i].host_total_us);
    seg.add("host_enqueue_stamped", recs[i].host_enqueue_us);
  }
  const std::string what = "side=hop variant=" + variant;
  seg.print(run, world, what + " op=round_trip");
  for (int op = 0; op < 2; ++op) {
    for (int32_t i = 0; i < run.iters; ++i) {
      const int32_t j = run.warmup + i, slot = j % 2;
      const size_t entry = static_cast<size_t>(slot) * stamp_ops + static_cast<size_t>(2 * (j / 2) + op) % stamp_ops;
      const uint64_t* e = &armed[entry * kArmedStampWords];
      const uint64_t* w = recs[i].worker[op];
      uint64_t first = 0, last = 0;
      if (!w[kRingStart] || !w[kRung] || !w[kReleased] || !e[kArmedStampWaitReleased] || !e[kArmedStampCompleted])
        continue;
      seg.add("worker_ring_ops", delta_us(w[kRingStart], w[kRung]));
      seg.add("doorbell_to_wait_release", delta_us(w[kRingStart], e[kArmedStampWaitReleased]));
      seg.add("rung_to_wait_release", delta_us(w[kRung], e[kArmedStampWaitReleased]));
      if (add_plan(seg, e + kArmedStampPlan, variant, op, &first, &last)) {
        seg.add("wait_release_to_first_launch", delta_us(e[kArmedStampWaitReleased], first));
        seg.add("last_launch_end_to_completion_done", delta_us(last, e[kArmedStampCompleted]));
      }
      seg.add("completion_to_worker_release", delta_us(e[kArmedStampCompleted], w[kReleased]));
      seg.add("op_total", delta_us(w[kRingStart], w[kReleased]));
    }
    seg.print(run, world, what + (op == 0 ? " op=dispatch" : " op=combine"));
  }
}

// A memfd of `bytes` mapped here; the fd goes to the worker.
Status make_records(size_t bytes, int* fd, void** map) {
  *fd = ::memfd_create("epd-hop-records", MFD_CLOEXEC);
  if (*fd < 0 || ::ftruncate(*fd, static_cast<off_t>(bytes)) != 0)
    return make_status(EPD_ERR_INTERNAL, "memfd of %zu bytes: %s", bytes, std::strerror(errno));
  *map = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
  if (*map == MAP_FAILED) return make_status(EPD_ERR_INTERNAL, "mmap of the records: %s", std::strerror(errno));
  return Status::ok();
}

// Spawns the worker, hands it the workspaces and the records, waits for its report.
Status run_worker(const Run& run, int32_t world, bool stamped,
                  const std::vector<std::unique_ptr<GpuWorkspace>>& ws, int records_fd, size_t records_bytes) {
  Order o;
  o.world = world;
  o.warmup = run.warmup;
  o.iters = run.iters;
  o.stamped = stamped;
  o.mps = run.mps;
  o.records_bytes = records_bytes;
  std::vector<int> fds;
  for (int32_t r = 0; r < world; ++r) {
    o.mapped_bytes[r] = ws[r]->mapped_bytes();
    auto fd = ws[r]->export_fd();
    if (!fd) return fd.status();
    fds.push_back(*fd);
  }
  fds.push_back(records_fd);
  int sock = -1;
  const pid_t pid = test::spawn_self({}, &sock);
  if (pid < 0) return make_status(EPD_ERR_INTERNAL, "spawning the worker process failed");
  const bool sent = test::send_msg(sock, &o, sizeof o, fds);
  for (int32_t r = 0; r < world; ++r) ::close(fds[r]);
  Report rep{};
  const bool got = sent && test::recv_msg(sock, &rep, sizeof rep, 150000);
  const int st = test::reap(pid, 30000);
  ::close(sock);
  if (!got || !rep.ok || st != 0)
    return make_status(EPD_ERR_INTERNAL, "worker process failed (report %d, exit status %d): %s", got, st,
                       rep.message);
  return Status::ok();
}

// The hop through an ArmedExecutor held here (the daemon's default options),
// with or without its stamp hook, driven by a worker process.
Status armed_run(Run& run, int32_t world, int stamped_arg) {
  const bool stamped = stamped_arg != 0;
  const GroupSpec spec = bench::ll_spec(world, "hop_armed");
  auto ws = allocate_gpu_workspaces(spec, 0);
  if (!ws) return ws.status();
  std::vector<uint8_t*> bases;
  for (auto& w : *ws) {
    bases.push_back(w->device_ptr());
    HOP_CUDA(cudaMemset(w->device_ptr(), 0, w->bytes()));
  }
  ArmedOptions opt;  // depth and poll period as epd's gpu backend (daemon/gpu/gpu_group.cc)
  const int32_t n = run.warmup + run.iters;
  const int32_t stamp_ops = n + 4 * opt.depth + 8;  // no entry is reused, the drain at abort included
  const size_t words = static_cast<size_t>(spec.slots) * stamp_ops * kArmedStampWords;
  uint64_t* d = nullptr;
  if (stamped) {
    HOP_CUDA(cudaMalloc(reinterpret_cast<void**>(&d), sizeof(uint64_t) * words));
    HOP_CUDA(cudaMemset(d, 0, sizeof(uint64_t) * words));
    opt.stamps = d;
    opt.stamp_ops = stamp_ops;
  }
  auto armed = ArmedExecutor::create(spec, bases, 0, opt);
  if (!armed) return armed.status();
  EPD_RETURN_IF_ERROR((*armed)->start());
  const std::string variant = (*armed)->variant_name();
  const size_t bytes = sizeof(TripRecord) * static_cast<size_t>(run.iters);
  int fd = -1;
  void* map = nullptr;
  Status s = make_records(bytes, &fd, &map);
  if (s) s = run_worker(run, world, stamped, *ws, fd, bytes);
  std::vector<uint64_t> h(stamped ? words : 0);
  if (s && stamped) {  // before the abort, whose drain runs the operations still armed
    cudaStream_t st = nullptr;
    HOP_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    HOP_CUDA(cudaMemcpyAsync(h.data(), d, sizeof(uint64_t) * words, cudaMemcpyDeviceToHost, st));
    HOP_CUDA(cudaStreamSynchronize(st));
    HOP_CUDA(cudaStreamDestroy(st));
  }
  if (s && !(*armed)->health()) s = (*armed)->health();
  const Status ab = (*armed)->abort(EPD_ERR_SHUTTING_DOWN, 2000);
  if (s && stamped) {
    analyze_hop(run, world, variant, static_cast<const TripRecord*>(map), h, stamp_ops);
  } else if (s) {
    Segments seg;
    for (int32_t i = 0; i < run.iters; ++i) {
      seg.add("host_total_unstamped", static_cast<const TripRecord*>(map)[i].host_total_us);
      seg.add("host_enqueue_unstamped", static_cast<const TripRecord*>(map)[i].host_enqueue_us);
    }
    seg.print(run, world, "side=hop variant=" + variant + " op=round_trip");
  }
  if (map && map != MAP_FAILED) ::munmap(map, bytes);
  if (fd >= 0) ::close(fd);
  if (!ab) {  // undrained: operations may still run, so the executor, its stamps and the workspaces stay
    for (auto& w : *ws) (void)w.release();
    return ab;
  }
  armed.value().reset();  // destroys the drained executor before its stamp buffer goes
  if (d) HOP_CUDA(cudaFree(d));
  return s;
}

void print_summary(const Run& run) {
  std::printf("summary mps=%d: median us per figure (p99 and n in the lines above)\n", run.mps);
  std::printf("  %-92s %9s %9s\n", "figure", "world=1", "world=8");
  for (const std::string& row : run.rows) {
    const auto& m = run.medians.at(row);
    auto cell = [&](int32_t w) { return m.count(w) ? std::to_string(m.at(w)).substr(0, 8) : std::string("-"); };
    std::printf("  %-92s %9s %9s\n", row.c_str(), cell(1).c_str(), cell(8).c_str());
  }
  std::fflush(stdout);
}

int run_all(Run& run) {
  auto count = gpu_device_count();
  if (!count) {
    std::printf("breakdown: no GPU: %s\n", count.status().message().c_str());
    return 0;
  }
  if (cudaSetDevice(0) != cudaSuccess || cudaFree(nullptr) != cudaSuccess) {
    std::printf("breakdown: CUDA initialisation failed\n");
    return 1;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const MpsState mps = detect_mps(0);
  run.mps = mps.active ? 1 : 0;
  std::printf("breakdown device %s; %s; daemon side: ArmedExecutor in this process (pid %d), worker: a second "
              "process; %d warm-up + %d measured round trips per figure\n",
              prop.name, mps.description.c_str(), static_cast<int>(::getpid()), run.warmup, run.iters);
  int rc = 0;
  for (int32_t world : {1, 8}) {
    struct Part {
      const char* name;
      Status (*fn)(Run&, int32_t, int);
      int arg;
    };
    const Part parts[] = {{"in-process low_latency", in_process, kInProcLowLatency},
                          {"in-process low_latency, parts 1", in_process, kInProcOneSlice},
                          {"in-process high_throughput", in_process, kInProcHighThroughput},
                          {"armed, no stamps", armed_run, 0},
                          {"armed, stamped", armed_run, 1}};
    for (const Part& p : parts) {
      const Status s = p.fn(run, world, p.arg);
      if (!s) {
        std::printf("breakdown world=%d mps=%d part=\"%s\" FAILED: %s\n", world, run.mps, p.name, s.message().c_str());
        rc = 1;
      }
    }
  }
  print_summary(run);
  return rc;
}

}  // namespace
}  // namespace epd::hop

int main(int argc, char** argv) {
  epd::armed_prepare_environment();
  if (const int fd = epd::test::client_role_fd(); fd >= 0) return epd::hop::worker_main(fd);
  alarm(epd::hop::kProcessDeadlineS);
  epd::hop::Run run;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--iters") == 0) run.iters = std::atoi(argv[i + 1]);
    else if (std::strcmp(argv[i], "--warmup") == 0) run.warmup = std::atoi(argv[i + 1]);
  }
  if (run.iters < 1 || run.warmup < 0) {
    std::fprintf(stderr, "usage: %s [--iters N >= 1] [--warmup N >= 0]\n", argv[0]);
    return 2;
  }
  return epd::hop::run_all(run);
}
