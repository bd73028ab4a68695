// hop_worker.cc — the worker process of epd_hop_breakdown (hop_breakdown.h):
// imports the daemon process's workspaces, times each stream operation a
// worker enqueues per call in isolation, and runs the round trips (GpuRankOps
// of libepd-client, as epd_group_*_async enqueue them) with %globaltimer
// stamps on its stream, writing one TripRecord per measured round trip into
// the shared memfd. Prints its own lines; the daemon process prints the rest.
#include <cuda_runtime_api.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../../tests/gpu/armed_ipc.h"
#include "gpu_armed.h"
#include "gpu_ops.h"
#include "hop_breakdown.h"
#include "layout.h"
#include "overhead_common.h"

namespace epd::hop {
namespace {

constexpr int kOpSamples = 1000;                  // per isolated operation, after kOpWarmup
constexpr int kOpWarmup = 100;
constexpr int kBatch = 32;                        // operations per gated batch
constexpr int kBatches = 200;

#define HOP_CUDA(expr)                                                                         \
  do {                                                                                         \
    const cudaError_t e_ = (expr);                                                             \
    if (e_ != cudaSuccess) return make_status(EPD_ERR_CUDA, "%s: %s", #expr, cudaGetErrorName(e_)); \
  } while (0)

struct Worker {
  const cu::GpuDriver* drv = nullptr;
  GroupSpec spec;
  std::vector<std::unique_ptr<GpuWorkspaceMapping>> maps;
  std::vector<std::unique_ptr<GpuRankOps>> ops;
  cudaStream_t st = nullptr, release = nullptr;
  uint8_t* scratch = nullptr;  // [0,8): stamps A, B; words below; then a source row
  std::string where;           // "breakdown world=W mps=M side=worker"

  cu::CUstream cst() const { return reinterpret_cast<cu::CUstream>(st); }
  uint64_t* stamp(int i) const { return reinterpret_cast<uint64_t*>(scratch) + i; }
  cu::CUdeviceptr word(int i) const { return reinterpret_cast<cu::CUdeviceptr>(scratch + 64 + 4 * i); }
  cu::CUdeviceptr row() const { return reinterpret_cast<cu::CUdeviceptr>(scratch + 128); }
};

enum Word : int { kGate = 0, kSatisfied = 1, kTarget = 2 };

Status cu_ok(const Worker& w, cu::CUresult r, const char* what) {
  return r == cu::CUDA_SUCCESS ? Status::ok() : w.drv->error(r, what, __LINE__);
}

// One isolated stream operation, as dispatch_async / wait_async enqueue it.
struct Op {
  const char* name;
  std::function<Status()> enqueue;  // empty: nothing (stream_sync alone)
};

std::vector<Op> worker_ops(Worker& w) {
  GpuRankOps& r0 = *w.ops[0];
  const RankLayout& l = r0.layout();
  const size_t K = static_cast<size_t>(w.spec.top_k);
  const auto at = [&r0](uint64_t SlotOffsets::*f) { return reinterpret_cast<cu::CUdeviceptr>(r0.at(0, f)); };
  const cu::CUdeviceptr n_word = at(&SlotOffsets::send_hdr) + offsetof(SendHeader, n_tokens);
  const cu::CUdeviceptr x = at(&SlotOffsets::send_x), ids = at(&SlotOffsets::send_ids);
  const cu::CUdeviceptr wts = at(&SlotOffsets::send_weights);
  const uint64_t row_bytes = l.in_row_bytes;
  Worker* p = &w;
  // n stays 0 (the round trips are empty): every write below writes 0 to the send header.
  auto copy_n0 = [p, n_word] { return cu_ok(*p, p->drv->write32(p->cst(), n_word, 0, 0), "write32 n_tokens"); };
  auto copy_row = [p, x, row_bytes] {
    return cu_ok(*p, p->drv->memcpy_async(x, p->row(), row_bytes, p->cst()), "memcpy_async x");
  };
  auto copy_n1 = [p, copy_row, copy_n0, ids, wts, K, row_bytes] {
    EPD_RETURN_IF_ERROR(copy_row());
    EPD_RETURN_IF_ERROR(cu_ok(*p, p->drv->memcpy_async(ids, p->row() + row_bytes, K * 4, p->cst()), "ids"));
    EPD_RETURN_IF_ERROR(cu_ok(*p, p->drv->memcpy_async(wts, p->row() + row_bytes, K * 4, p->cst()), "weights"));
    return copy_n0();
  };
  return {
      {"copy_in_n0 (write32 of n_tokens)", copy_n0},
      {"copy_in_n1 (x row, ids, weights, n_tokens)", copy_n1},
      {"memcpy_row (one D2D row copy)", copy_row},
      {"doorbell_write32 (default flags)",
       [p] { return cu_ok(*p, p->drv->write32(p->cst(), p->word(kTarget), 1, 0), "write32"); }},
      {"wait32_satisfied (AND)",
       [p] {
         return cu_ok(*p, p->drv->wait32(p->cst(), p->word(kSatisfied), 1, cu::CU_STREAM_WAIT_VALUE_AND), "wait32");
       }},
      {"empty_kernel", [p] { return enqueue_globaltimer_stamp(nullptr, p->st); }},
      {"stream_sync_only", {}},
  };
}

std::string short_name(const char* n) {
  std::string s(n);
  return s.substr(0, s.find(' '));
}

// Host time of the enqueue call, and of enqueue + cudaStreamSynchronize.
Status time_op_host(Worker& w, const Op& op) {
  std::vector<double> enq, sync;
  for (int i = 0; i < kOpWarmup + kOpSamples; ++i) {
    const double t0 = bench::now_us();
    if (op.enqueue) EPD_RETURN_IF_ERROR(op.enqueue());
    const double t1 = bench::now_us();
    HOP_CUDA(cudaStreamSynchronize(w.st));
    const double t2 = bench::now_us();
    if (i < kOpWarmup) continue;
    enq.push_back(t1 - t0);
    sync.push_back(t2 - t0);
  }
  const std::string n = short_name(op.name);
  if (op.enqueue) print_figure(w.where + " op=" + n, "host_enqueue", std::move(enq));
  print_figure(w.where + " op=" + n, "host_enqueue_plus_sync", std::move(sync));
  return Status::ok();
}

// GPU time per operation: behind a wait on a gate word, stamp A, kBatch
// operations, stamp B; a second stream opens the gate once all is enqueued,
// so the GPU runs them back to back. (B - A) / kBatch per batch; with no
// operation (stream_sync_only) the figure is B - A itself: the stamp kernel's own cost.
Status time_op_gpu(Worker& w, const Op& op, uint32_t* gate) {
  std::vector<double> per_op;
  for (int b = 0; b < kBatches + 5; ++b) {
    ++*gate;
    EPD_RETURN_IF_ERROR(cu_ok(w, w.drv->wait32(w.cst(), w.word(kGate), *gate, cu::CU_STREAM_WAIT_VALUE_GEQ), "gate"));
    EPD_RETURN_IF_ERROR(enqueue_globaltimer_stamp(w.stamp(0), w.st));
    for (int i = 0; op.enqueue && i < kBatch; ++i) EPD_RETURN_IF_ERROR(op.enqueue());
    EPD_RETURN_IF_ERROR(enqueue_globaltimer_stamp(w.stamp(1), w.st));
    EPD_RETURN_IF_ERROR(cu_ok(
        w, w.drv->write32(reinterpret_cast<cu::CUstream>(w.release), w.word(kGate), *gate, 0), "gate release"));
    uint64_t t[2] = {};
    HOP_CUDA(cudaMemcpyAsync(t, w.stamp(0), sizeof t, cudaMemcpyDeviceToHost, w.st));
    HOP_CUDA(cudaStreamSynchronize(w.st));
    if (b >= 5) per_op.push_back(static_cast<double>(t[1] - t[0]) / 1000.0 / (op.enqueue ? kBatch : 1));
  }
  print_figure(w.where + " op=" + short_name(op.name), op.enqueue ? "gpu_per_op_batched" : "gpu_stamp_to_stamp",
               std::move(per_op));
  return Status::ok();
}

Status time_worker_ops(Worker& w) {
  HOP_CUDA(cudaMemsetAsync(w.scratch, 0, 128, w.st));
  HOP_CUDA(cudaMemsetAsync(reinterpret_cast<void*>(w.word(kSatisfied)), 0xff, 4, w.st));
  HOP_CUDA(cudaStreamSynchronize(w.st));
  uint32_t gate = 0;
  for (const Op& op : worker_ops(w)) {
    std::printf("%s op=%s what=\"%s\"\n", w.where.c_str(), short_name(op.name).c_str(), op.name);
    EPD_RETURN_IF_ERROR(time_op_host(w, op));
    EPD_RETURN_IF_ERROR(time_op_gpu(w, op, &gate));
  }
  return Status::ok();
}

// One empty round trip of every rank on w.st; with `stamps` ([2][kWorkerStamps]
// device words) the worker's stamps around the enqueues.
Status round_trip(Worker& w, int32_t slot, uint64_t* stamps, double* enqueue_us) {
  const double t0 = bench::now_us();
  auto mark = [&](int op, int point) {
    return stamps ? enqueue_globaltimer_stamp(stamps + op * kWorkerStamps + point, w.st) : Status::ok();
  };
  GpuDispatchArgs a;
  a.n_tokens_host = 0;
  EPD_RETURN_IF_ERROR(mark(0, kRingStart));
  for (auto& op : w.ops) EPD_RETURN_IF_ERROR(op->dispatch(slot, a, w.st));
  EPD_RETURN_IF_ERROR(mark(0, kRung));
  for (auto& op : w.ops) EPD_RETURN_IF_ERROR(op->dispatch_wait(slot, w.st));
  EPD_RETURN_IF_ERROR(mark(0, kReleased));
  EPD_RETURN_IF_ERROR(mark(1, kRingStart));
  for (auto& op : w.ops) EPD_RETURN_IF_ERROR(op->combine(slot, EPD_WEIGHTS_ALREADY_APPLIED, nullptr, 0, w.st));
  EPD_RETURN_IF_ERROR(mark(1, kRung));
  for (auto& op : w.ops) EPD_RETURN_IF_ERROR(op->combine_wait(slot, w.st));
  EPD_RETURN_IF_ERROR(mark(1, kReleased));
  *enqueue_us = bench::now_us() - t0;
  return Status::ok();
}

// warmup + iters round trips (slot = trip % 2), host times into records[i]
// for measured trip i; stamped: the worker's stamps too.
Status round_trips(Worker& w, const Order& o, TripRecord* records, bool stamped) {
  uint64_t* d_stamps = nullptr;
  const size_t per_trip = 2 * kWorkerStamps;
  if (stamped) {
    HOP_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_stamps), sizeof(uint64_t) * per_trip * o.iters));
    HOP_CUDA(cudaMemsetAsync(d_stamps, 0, sizeof(uint64_t) * per_trip * o.iters, w.st));
  }
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    const bool measured = i >= o.warmup;
    uint64_t* s = stamped && measured ? d_stamps + per_trip * (i - o.warmup) : nullptr;
    double enq = 0;
    const double t0 = bench::now_us();
    EPD_RETURN_IF_ERROR(round_trip(w, i % 2, s, &enq));
    HOP_CUDA(cudaStreamSynchronize(w.st));
    if (!measured) continue;
    records[i - o.warmup] = TripRecord{};
    records[i - o.warmup].host_total_us = bench::now_us() - t0;
    records[i - o.warmup].host_enqueue_us = enq;
  }
  for (auto& op : w.ops)
    for (int32_t s = 0; s < w.spec.slots; ++s) EPD_RETURN_IF_ERROR(op->query(s));
  if (stamped) {
    std::vector<uint64_t> h(per_trip * o.iters);
    HOP_CUDA(cudaMemcpy(h.data(), d_stamps, sizeof(uint64_t) * h.size(), cudaMemcpyDeviceToHost));
    for (int i = 0; i < o.iters; ++i)
      for (int op = 0; op < 2; ++op)
        for (int p = 0; p < kWorkerStamps; ++p) records[i].worker[op][p] = h[per_trip * i + op * kWorkerStamps + p];
    HOP_CUDA(cudaFree(d_stamps));
  }
  return Status::ok();
}

Status setup(Worker& w, const Order& o, const std::vector<int>& fds) {
  HOP_CUDA(cudaSetDevice(0));
  HOP_CUDA(cudaFree(nullptr));  // the runtime on the primary context, which the driver calls below share
  auto drv = cu::GpuDriver::get();
  if (!drv) return drv.status();
  w.drv = *drv;
  w.spec = bench::ll_spec(o.world);
  for (int32_t r = 0; r < o.world; ++r) {
    auto m = GpuWorkspaceMapping::import(*w.drv, fds[r], o.mapped_bytes[r], 0);
    if (!m) return m.status();
    w.ops.push_back(std::make_unique<GpuRankOps>(*w.drv, w.spec, r, (*m)->base(), 0));
    w.maps.push_back(std::move(m.value()));
  }
  HOP_CUDA(cudaStreamCreateWithFlags(&w.st, cudaStreamNonBlocking));
  HOP_CUDA(cudaStreamCreateWithFlags(&w.release, cudaStreamNonBlocking));
  const size_t row = w.ops[0]->layout().in_row_bytes + 2 * sizeof(float) * w.spec.top_k;
  HOP_CUDA(cudaMalloc(reinterpret_cast<void**>(&w.scratch), 128 + row));
  HOP_CUDA(cudaMemset(w.scratch, 0, 128 + row));
  return Status::ok();
}

}  // namespace

int worker_main(int sock) {
  alarm(kProcessDeadlineS);
  Order o{};
  std::vector<int> fds;
  Report rep{};
  if (!test::recv_msg(sock, &o, sizeof o, 30000, &fds) || static_cast<int32_t>(fds.size()) != o.world + 1 ||
      o.world < 1 || o.world > kMaxWorld)
    return 2;
  auto fail = [&](const Status& s) {
    std::snprintf(rep.message, sizeof rep.message, "%s", s.message().c_str());
    test::send_msg(sock, &rep, sizeof rep);
    return 1;
  };
  Worker w;
  w.where = "breakdown world=" + std::to_string(o.world) + " mps=" + std::to_string(o.mps) + " side=worker";
  if (Status s = setup(w, o, fds); !s) return fail(s);
  for (int32_t r = 0; r < o.world; ++r) ::close(fds[r]);
  void* shm = ::mmap(nullptr, o.records_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[o.world], 0);
  ::close(fds[o.world]);
  if (shm == MAP_FAILED) return fail(make_status(EPD_ERR_INTERNAL, "mmap of the record memfd failed"));
  if (o.stamped) {
    if (Status s = time_worker_ops(w); !s) return fail(s);
  }
  if (Status s = round_trips(w, o, static_cast<TripRecord*>(shm), o.stamped != 0); !s) return fail(s);
  ::munmap(shm, o.records_bytes);
  rep.ok = 1;
  test::send_msg(sock, &rep, sizeof rep);
  return 0;
}

}  // namespace epd::hop
