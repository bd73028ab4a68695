// armed_executor.cc — ArmedExecutor (gpu_armed.h): per-slot armed streams,
// the re-arm thread, the abort (deadline) path and reset.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include "armed_kernels.h"
#include "control_block.h"
#include "cuda_status.h"
#include "gpu_armed.h"
#include "gpu_executor.h"

namespace epd {

namespace {

struct MemOps {
  decltype(&cuModuleGetLoadingMode) loading_mode = nullptr;
  decltype(&cuStreamWaitValue32) wait32 = nullptr;
  decltype(&cuStreamWriteValue32) write32 = nullptr;
  decltype(&cuGetErrorName) error_name = nullptr;
  Status status;
};

const MemOps& memops() {
  static MemOps m;
  static std::once_flag once;
  std::call_once(once, [] {
    auto count = gpu_device_count();
    if (!count) {
      m.status = count.status();
      return;
    }
    Status s = resolve_driver_entry("cuModuleGetLoadingMode", &m.loading_mode);
    if (s) s = resolve_driver_entry("cuStreamWaitValue32", &m.wait32);
    if (s) s = resolve_driver_entry("cuStreamWriteValue32", &m.write32);
    if (s) s = resolve_driver_entry("cuGetErrorName", &m.error_name);
    m.status = s;
  });
  return m;
}

Status cu_status(CUresult r, const char* what, int line) {
  const char* name = "?";
  if (memops().error_name) memops().error_name(r, &name);
  return make_status(EPD_ERR_CUDA, "%s: %s at %s:%d", what, name, __FILE__, line);
}

#define EPD_CU_RETURN(expr)                                                          \
  do {                                                                               \
    const CUresult epd_cu_err_ = (expr);                                             \
    if (epd_cu_err_ != CUDA_SUCCESS) return cu_status(epd_cu_err_, #expr, __LINE__); \
  } while (0)

constexpr uint32_t kAbortRing = kRingDispatch | kRingCombine | kArmedAbortBit;

// Host-mapped progress words and the device abort words come from two
// process-wide blocks that are never freed: cudaFreeHost and cudaFree wait for
// the whole device, which never goes idle while any group has waits armed.
// (Stream-ordered pool memory, cudaMallocAsync, is no alternative for the abort
// word: cuStreamWriteValue32 refuses it with CUDA_ERROR_INVALID_VALUE, seen on
// an H100, driver 580.) Groups take and return runs of words.
class ProgressPool {
 public:
  static constexpr int32_t kWords = 4096;
  static ProgressPool& get() {
    static ProgressPool p;
    return p;
  }
  Result<int32_t> take(int32_t n) {
    std::lock_guard<std::mutex> l(mu_);
    if (!host_) {
      EPD_CUDA_RETURN(cudaHostAlloc(reinterpret_cast<void**>(&host_), sizeof(gpu::ArmedProgress) * kWords,
                                    cudaHostAllocMapped | cudaHostAllocPortable));
      EPD_CUDA_RETURN(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev_), host_, 0));
      EPD_CUDA_RETURN(cudaMalloc(reinterpret_cast<void**>(&abort_), sizeof(uint32_t) * kWords));
      used_.assign(kWords, false);
    }
    for (int32_t i = 0; i + n <= kWords; ++i) {
      int32_t j = 0;
      while (j < n && !used_[i + j]) ++j;
      if (j < n) {
        i += j;
        continue;
      }
      for (j = 0; j < n; ++j) used_[i + j] = true;
      std::memset(host_ + i, 0, sizeof(gpu::ArmedProgress) * n);
      return i;
    }
    return make_status(EPD_ERR_NO_MEMORY, "armed executor: all %d progress words are in use (%d more asked)", kWords,
                       n);
  }
  void give(int32_t first, int32_t n) {
    std::lock_guard<std::mutex> l(mu_);
    for (int32_t j = 0; j < n; ++j) used_[first + j] = false;
  }
  gpu::ArmedProgress* host(int32_t i) const { return host_ + i; }
  gpu::ArmedProgress* dev(int32_t i) const { return dev_ + i; }
  uint32_t* abort_word(int32_t i) const { return abort_ + i; }

 private:
  std::mutex mu_;
  gpu::ArmedProgress* host_ = nullptr;
  gpu::ArmedProgress* dev_ = nullptr;
  uint32_t* abort_ = nullptr;  // device memory, one word per progress word (the first of a run is used)
  std::vector<bool> used_;
};

}  // namespace

void armed_prepare_environment(int32_t connections) {
  const std::string v = std::to_string(connections);
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", v.c_str(), 0);  // 0: an operator's setting wins
  setenv("CUDA_MODULE_LOADING", "EAGER", 1);            // 1: lazy loading deadlocks armed streams
}

struct ArmedExecutor::Impl {
  const ArmedExecutor* owner = nullptr;  // for aborted()
  GroupSpec spec;
  int32_t device = 0;
  ArmedOptions opt;
  std::vector<uint8_t*> bases;
  std::unique_ptr<GpuExecutor> ex;
  std::vector<cudaStream_t> streams;  // one per slot
  cudaStream_t abort_stream = nullptr;
  uint8_t** d_bases = nullptr;
  uint32_t* d_abort = nullptr;
  uint32_t* d_saved = nullptr;  // [slots][world]
  gpu::ArmedProgress* h_progress = nullptr;
  gpu::ArmedProgress* d_progress = nullptr;
  int32_t progress_first = -1;

  mutable std::mutex mu;  // guards armed, health, stop, and every enqueue on the armed streams
  std::condition_variable cv;
  std::vector<uint32_t> armed;  // per slot: sequence number of the last armed operation (0 = none)
  Status health_status;
  bool stop = false;
  bool running = false;
  std::thread thread;
  // Late-rank watch (re-arm thread): per slot, since when some but not all
  // ranks have rung the next operation, and the completions seen then.
  std::vector<std::chrono::steady_clock::time_point> partial_since;
  std::vector<uint32_t> partial_done;
  std::chrono::steady_clock::time_point next_watch{};

  // Nothing here waits for the device: other groups' waits stay armed.
  ~Impl() {
    cudaSetDevice(device);
    for (cudaStream_t s : streams) cudaStreamDestroy(s);
    ex.reset();
    if (abort_stream) {
      for (void* p : {static_cast<void*>(d_bases), static_cast<void*>(d_saved)})
        if (p) cudaFreeAsync(p, abort_stream);
      cudaStreamSynchronize(abort_stream);
      cudaStreamDestroy(abort_stream);
    }
    if (progress_first >= 0) ProgressPool::get().give(progress_first, spec.slots);
  }

  uint32_t done(int32_t s) const {
    return *const_cast<const volatile uint32_t*>(&h_progress[s].seq);
  }
  CUdeviceptr word(int32_t r, int32_t s, size_t field) const {
    return reinterpret_cast<CUdeviceptr>(bases[r] + offsetof(ControlBlock, slot) + sizeof(ControlSlot) * s + field);
  }
  gpu::ArmedParams params(int32_t s, uint32_t op, uint32_t seq) const {
    gpu::ArmedParams p;
    p.bases = d_bases;
    p.world = spec.world_size;
    p.slot = s;
    p.op = op;
    p.expert_major = spec.layout == EPD_LAYOUT_EXPERT_MAJOR;
    p.abort_word = d_abort;
    p.saved_n = d_saved + static_cast<size_t>(s) * spec.world_size;
    p.progress = d_progress + s;
    p.seq = seq;
    return p;
  }

  // Enqueues the next operation of slot s (caller holds mu). Operations are
  // numbered from 1; odd = dispatch, even = combine.
  Status arm_one(int32_t s) {
    const uint32_t seq = armed[s] + 1;
    const bool dispatch = seq % 2 == 1;
    cudaStream_t st = streams[s];
    const MemOps& m = memops();
    const uint32_t ring = dispatch ? kRingDispatch : kRingCombine;
    for (int32_t r = 0; r < spec.world_size; ++r)
      EPD_CU_RETURN(m.wait32(reinterpret_cast<CUstream>(st), word(r, s, offsetof(ControlSlot, doorbell)), ring,
                             CU_STREAM_WAIT_VALUE_AND));
    gpu::ArmedParams p = params(s, dispatch ? kDoneDispatch : kDoneCombine, seq);
    if (dispatch) {
      EPD_RETURN_IF_ERROR(ex->dispatch(s, st));
    } else if (spec.layout == EPD_LAYOUT_RANK_MAJOR) {
      EPD_RETURN_IF_ERROR(ex->combine(s, EPD_WEIGHTS_ALREADY_APPLIED, st));  // ones: the same plain sum
    } else {
      EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_armed_gate(p, 0, st)));
      EPD_RETURN_IF_ERROR(ex->combine(s, EPD_WEIGHTS_APPLY, st));
      EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_armed_gate(p, 1, st)));
      EPD_RETURN_IF_ERROR(ex->combine(s, EPD_WEIGHTS_ONES, st));
    }
    EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_armed_complete(p, st)));
    armed[s] = seq;
    return Status::ok();
  }

  // Keeps 2 * depth operations armed per slot (caller holds mu).
  Status top_up() {
    EPD_CUDA_RETURN(cudaSetDevice(device));
    for (int32_t s = 0; s < spec.slots; ++s)
      while (!owner->aborted() && armed[s] - done(s) < static_cast<uint32_t>(2 * opt.depth))
        EPD_RETURN_IF_ERROR(arm_one(s));
    return Status::ok();
  }

  // A rank that stays behind: when some ranks have rung a slot's next
  // operation and others have not for longer than the group's timeout, the
  // armed waits would hold the ringing ranks' streams for ever. Reads the
  // doorbells (a few words, on the abort stream) every timeout/4, within
  // [5, 250] ms; returns EPD_ERR_TIMEOUT naming the late ranks (caller holds mu).
  Status watch_late() {
    const auto now = std::chrono::steady_clock::now();
    if (now < next_watch) return Status::ok();
    next_watch = now + std::chrono::milliseconds(std::clamp<uint32_t>(spec.timeout_ms / 4, 5, 250));
    const int32_t W = spec.world_size;
    std::vector<uint32_t> bells(static_cast<size_t>(W) * spec.slots);
    for (int32_t s = 0; s < spec.slots; ++s)
      for (int32_t r = 0; r < W; ++r)
        EPD_CUDA_RETURN(cudaMemcpyAsync(&bells[static_cast<size_t>(s) * W + r],
                                        reinterpret_cast<const void*>(word(r, s, offsetof(ControlSlot, doorbell))),
                                        sizeof(uint32_t), cudaMemcpyDeviceToHost, abort_stream));
    EPD_CUDA_RETURN(cudaStreamSynchronize(abort_stream));
    for (int32_t s = 0; s < spec.slots; ++s) {
      const uint32_t d = done(s);
      const uint32_t want = (d + 1) % 2 == 1 ? kRingDispatch : kRingCombine;  // the next operation's ring
      std::vector<int32_t> late;
      for (int32_t r = 0; r < W; ++r)
        if ((bells[static_cast<size_t>(s) * W + r] & (want | kArmedAbortBit)) != want) late.push_back(r);
      const bool partial = !late.empty() && static_cast<int32_t>(late.size()) < W;
      if (!partial || partial_done[s] != d || partial_since[s] == std::chrono::steady_clock::time_point{}) {
        partial_since[s] = partial ? now : std::chrono::steady_clock::time_point{};
        partial_done[s] = d;
        continue;
      }
      if (now - partial_since[s] < std::chrono::milliseconds(spec.timeout_ms)) continue;
      std::string names;
      for (int32_t r : late) names += (names.empty() ? "" : ",") + std::to_string(r);
      return make_status(EPD_ERR_TIMEOUT, "slot %d: %s rung by %d of %d ranks; rank%s %s did not ring within %u ms",
                         s, want == kRingDispatch ? "dispatch" : "combine", W - static_cast<int32_t>(late.size()), W,
                         late.size() > 1 ? "s" : "", names.c_str(), spec.timeout_ms);
    }
    return Status::ok();
  }

  // After a drained abort: both done bits, the reason and the abort bit in
  // every rank's completion words, so a wait a worker enqueues later (for
  // either operation, a graph replay included) passes at once instead of
  // blocking its stream until reset().
  Status seal(epd_status_t reason) {
    const MemOps& m = memops();
    const auto st = reinterpret_cast<CUstream>(abort_stream);
    const uint32_t w = completion_word(kDoneDispatch | kDoneCombine, reason, true);
    for (int32_t s = 0; s < spec.slots; ++s)
      for (int32_t r = 0; r < spec.world_size; ++r)
        EPD_CU_RETURN(m.write32(st, word(r, s, offsetof(ControlSlot, completion)), w, 0));
    EPD_CUDA_RETURN(cudaStreamSynchronize(abort_stream));
    return Status::ok();
  }

  bool drained() const {
    for (int32_t s = 0; s < spec.slots; ++s)
      if (done(s) != armed[s]) return false;
    return true;
  }

  Status write_abort(epd_status_t reason) {
    const MemOps& m = memops();
    const auto st = reinterpret_cast<CUstream>(abort_stream);
    EPD_CU_RETURN(m.write32(st, reinterpret_cast<CUdeviceptr>(d_abort), static_cast<uint32_t>(-reason), 0));
    for (int32_t s = 0; s < spec.slots; ++s)
      for (int32_t r = 0; r < spec.world_size; ++r)
        EPD_CU_RETURN(m.write32(st, word(r, s, offsetof(ControlSlot, doorbell)), kAbortRing, 0));
    return Status::ok();
  }
};

ArmedExecutor::ArmedExecutor() = default;

Result<std::unique_ptr<ArmedExecutor>> ArmedExecutor::create(const GroupSpec& spec, std::vector<uint8_t*> rank_bases,
                                                             int32_t device, const ArmedOptions& options) {
  EPD_RETURN_IF_ERROR(memops().status);
  CUmoduleLoadingMode loading = CU_MODULE_LAZY_LOADING;
  EPD_CU_RETURN(memops().loading_mode(&loading));
  if (loading != CU_MODULE_EAGER_LOADING)
    return make_status(EPD_ERR_UNSUPPORTED,
                       "armed GPU executor needs CUDA_MODULE_LOADING=EAGER (call armed_prepare_environment() "
                       "before CUDA initialises): a lazily loaded kernel synchronises the context, which an "
                       "armed wait never lets finish");
  if (options.depth < 2 || options.depth > 1024)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "armed depth = %d is outside [2, 1024]", options.depth);
  std::unique_ptr<ArmedExecutor> a(new ArmedExecutor());
  a->impl_ = std::make_unique<Impl>();
  a->impl_->owner = a.get();
  Impl& im = *a->impl_;
  im.spec = spec;
  im.device = device;
  im.opt = options;
  im.bases = rank_bases;
  GroupSpec exec_spec = spec;
  if (!options.allow_cooperative) exec_spec.mode = EPD_MODE_HIGH_THROUGHPUT;  // see ArmedOptions
  auto ex = GpuExecutor::create(exec_spec, std::move(rank_bases), device);
  if (!ex) return ex.status();
  im.ex = std::move(ex.value());
  EPD_CUDA_RETURN(cudaSetDevice(device));
  const int32_t W = spec.world_size, S = spec.slots;
  for (int32_t s = 0; s < S; ++s) {
    cudaStream_t st = nullptr;
    EPD_CUDA_RETURN(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    im.streams.push_back(st);
  }
  // The abort stream gets the highest priority: it must run while armed streams block.
  int lo = 0, hi = 0;
  EPD_CUDA_RETURN(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  EPD_CUDA_RETURN(cudaStreamCreateWithPriority(&im.abort_stream, cudaStreamNonBlocking, hi));
  cudaStream_t st = im.abort_stream;
  EPD_CUDA_RETURN(cudaMallocAsync(reinterpret_cast<void**>(&im.d_bases), sizeof(uint8_t*) * W, st));
  EPD_CUDA_RETURN(cudaMemcpyAsync(im.d_bases, im.bases.data(), sizeof(uint8_t*) * W, cudaMemcpyHostToDevice, st));
  EPD_CUDA_RETURN(cudaMallocAsync(reinterpret_cast<void**>(&im.d_saved), sizeof(uint32_t) * W * S, st));
  EPD_CUDA_RETURN(cudaMemsetAsync(im.d_saved, 0, sizeof(uint32_t) * W * S, st));
  auto first = ProgressPool::get().take(S);
  if (!first) return first.status();
  im.progress_first = *first;
  im.h_progress = ProgressPool::get().host(*first);
  im.d_progress = ProgressPool::get().dev(*first);
  im.d_abort = ProgressPool::get().abort_word(*first);
  EPD_CUDA_RETURN(cudaMemsetAsync(im.d_abort, 0, sizeof(uint32_t), st));
  im.armed.assign(static_cast<size_t>(S), 0);
  im.partial_since.assign(static_cast<size_t>(S), {});
  im.partial_done.assign(static_cast<size_t>(S), 0);
  EPD_CUDA_RETURN(cudaStreamSynchronize(st));  // never cudaDeviceSynchronize: see ~Impl
  return a;
}

ArmedExecutor::~ArmedExecutor() {
  if (!impl_) return;
  Impl& im = *impl_;
  if (im.running && !aborted()) (void)abort(EPD_ERR_SHUTTING_DOWN, im.spec.timeout_ms);
  {
    std::lock_guard<std::mutex> l(im.mu);
    im.stop = true;
  }
  im.cv.notify_all();
  if (im.thread.joinable()) im.thread.join();
  if (!drained()) {
    // Operations still queued behind waits may run later: their streams,
    // scratch and tables must stay valid, so they are leaked on purpose (the
    // owner keeps the workspaces mapped too; see drained()).
    std::fprintf(stderr, "epd: armed executor destroyed with operations pending; leaking its streams and scratch\n");
    (void)impl_.release();
  }
}

bool ArmedExecutor::drained() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->drained();
}

Status ArmedExecutor::start() {
  Impl& im = *impl_;
  {
    std::lock_guard<std::mutex> l(im.mu);
    if (im.running) return make_status(EPD_ERR_INVALID_ARGUMENT, "armed executor already started");
    EPD_RETURN_IF_ERROR(im.top_up());
    im.running = true;
  }
  im.thread = std::thread([this] {
    Impl& m = *impl_;
    std::unique_lock<std::mutex> l(m.mu);
    while (!m.stop) {
      bool timed_out = false;
      Status late;
      if (!aborted() && m.health_status) {
        Status s = m.top_up();
        if (!s) m.health_status = s;
        for (int32_t sl = 0; sl < m.spec.slots; ++sl)
          timed_out |= *const_cast<const volatile int32_t*>(&m.h_progress[sl].status) == EPD_ERR_TIMEOUT;
        late = m.watch_late();
      }
      if (timed_out || !late) {  // a kernel passed its deadline (its barrier state needs a host reset), or a rank is late
        m.health_status = !late ? make_status(EPD_ERR_TIMEOUT, "%s; aborting the armed streams", late.message().c_str())
                                : make_status(EPD_ERR_TIMEOUT, "a GPU kernel passed its deadline; aborting the armed streams");
        l.unlock();
        (void)abort(EPD_ERR_TIMEOUT, m.spec.timeout_ms);
        l.lock();
        continue;
      }
      m.cv.wait_for(l, std::chrono::microseconds(m.opt.poll_us));
    }
  });
  return Status::ok();
}

Status ArmedExecutor::abort(epd_status_t reason, uint32_t deadline_ms) {
  Impl& im = *impl_;
  if (reason == EPD_OK) reason = EPD_ERR_SHUTTING_DOWN;
  // Not under mu: the re-arm thread may hold it while an enqueue blocks behind
  // an armed wait (seen with cooperative launches, and with every launch under
  // compute-sanitizer); the abort bits release that wait, top_up() stops at the
  // flag, and operations armed meanwhile pass their waits at once (the
  // doorbells keep the abort bits until reset()).
  aborted_.store(true, std::memory_order_release);
  EPD_CUDA_RETURN(cudaSetDevice(im.device));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(deadline_ms);
  EPD_RETURN_IF_ERROR(im.write_abort(reason));
  auto rewrite_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
  for (;;) {
    {
      std::lock_guard<std::mutex> l(im.mu);
      if (im.drained()) return im.seal(reason);
    }
    if (std::chrono::steady_clock::now() > deadline) break;
    // A live client of another rank may have rung over the abort bits: write them again (each ms).
    if (std::chrono::steady_clock::now() > rewrite_at && cudaStreamQuery(im.abort_stream) == cudaSuccess) {
      EPD_RETURN_IF_ERROR(im.write_abort(reason));
      rewrite_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
    }
    std::this_thread::yield();
  }
  std::lock_guard<std::mutex> l(im.mu);
  std::string left;
  for (int32_t s = 0; s < im.spec.slots; ++s)
    left += " slot " + std::to_string(s) + ": " + std::to_string(im.done(s)) + "/" + std::to_string(im.armed[s]);
  return make_status(EPD_ERR_TIMEOUT, "armed streams did not drain within %u ms after abort (completed/armed:%s)",
                     deadline_ms, left.c_str());
}

Status ArmedExecutor::reset() {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> l(im.mu);
  if (!aborted()) return make_status(EPD_ERR_INVALID_ARGUMENT, "reset() needs a drained abort() first");
  if (!im.drained()) return make_status(EPD_ERR_SLOT_BUSY, "reset(): armed operations are still pending");
  EPD_CUDA_RETURN(cudaSetDevice(im.device));
  for (cudaStream_t s : im.streams) EPD_CUDA_RETURN(cudaStreamSynchronize(s));
  (void)im.ex->check_fault(im.abort_stream);  // clears fault words and the kernels' barrier state
  EPD_CUDA_RETURN(cudaMemsetAsync(im.d_abort, 0, sizeof(uint32_t), im.abort_stream));
  for (int32_t r = 0; r < im.spec.world_size; ++r)
    for (int32_t s = 0; s < im.spec.slots; ++s)
      EPD_CUDA_RETURN(cudaMemsetAsync(reinterpret_cast<void*>(im.word(r, s, 0)), 0, 2 * sizeof(uint32_t),
                                      im.abort_stream));  // doorbell, completion
  EPD_CUDA_RETURN(cudaStreamSynchronize(im.abort_stream));
  std::memset(im.h_progress, 0, sizeof(gpu::ArmedProgress) * im.spec.slots);
  for (auto& a : im.armed) a = 0;
  for (auto& p : im.partial_since) p = {};
  im.health_status = Status::ok();
  aborted_.store(false, std::memory_order_release);
  if (im.running) return im.top_up();
  return Status::ok();
}

uint64_t ArmedExecutor::completed(int32_t slot) const {
  if (slot < 0 || slot >= impl_->spec.slots) return 0;
  return impl_->done(slot);
}

Status ArmedExecutor::health() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->health_status;
}

std::string ArmedExecutor::describe() const {
  const Impl& im = *impl_;
  const char* conn = std::getenv("CUDA_DEVICE_MAX_CONNECTIONS");
  char b[160];
  std::snprintf(b, sizeof b, "armed: GPU %d, %d ranks, %d slots, depth %d, CUDA_DEVICE_MAX_CONNECTIONS=%s; ",
                im.device, im.spec.world_size, im.spec.slots, im.opt.depth, conn ? conn : "unset (8)");
  return b + im.ex->describe_launch();
}

const GpuExecutor& ArmedExecutor::executor() const { return *impl_->ex; }

}  // namespace epd
