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
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "control_block.h"
#include "cuda_status.h"
#include "driver_api.h"
#include "gpu_armed.h"
#include "gpu_executor.h"
#include "launchers.h"
#include "shard_barrier.h"

namespace epd {

namespace {

constexpr uint32_t kAbortRing = kRingDispatch | kRingCombine | kArmedAbortBit;
static_assert(kArmedStampPlan + kLaunchStampWords <= kArmedStampCompleted, "plan stamps overlap the completion stamp");

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
  // A run of n words; the abort words of the run are on `device` (current).
  Result<int32_t> take(int32_t n, int32_t device) {
    std::lock_guard<std::mutex> l(mu_);
    if (!host_) {
      EPD_CUDA_RETURN(cudaHostAlloc(reinterpret_cast<void**>(&host_), sizeof(gpu::ArmedProgress) * kWords,
                                    cudaHostAllocMapped | cudaHostAllocPortable));
      // Portable and mapped under unified addressing: one device address for every GPU.
      EPD_CUDA_RETURN(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev_), host_, 0));
      used_.assign(kWords, false);
    }
    if (!abort_[device]) {
      EPD_CUDA_RETURN(cudaSetDevice(device));
      EPD_CUDA_RETURN(cudaMalloc(reinterpret_cast<void**>(&abort_[device]), sizeof(uint32_t) * kWords));
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
  uint32_t* abort_word(int32_t i, int32_t device) {
    std::lock_guard<std::mutex> l(mu_);
    return abort_[device] + i;
  }

 private:
  std::mutex mu_;
  gpu::ArmedProgress* host_ = nullptr;
  gpu::ArmedProgress* dev_ = nullptr;
  // Per device, device memory, one word per progress word (the first of a run is used).
  std::map<int32_t, uint32_t*> abort_;
  std::vector<bool> used_;
};

}  // namespace

void armed_prepare_environment(int32_t connections) {
  const std::string v = std::to_string(connections);
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", v.c_str(), 0);  // 0: an operator's setting wins
  setenv("CUDA_MODULE_LOADING", "EAGER", 1);            // 1: lazy loading deadlocks armed streams
}

// One GPU's part: its armed streams (one per slot) and what its kernels use.
struct ArmedShard {
  int32_t device = 0;
  int32_t rank_lo = 0, rank_hi = 0;  // the ranks on this GPU
  std::vector<cudaStream_t> streams;  // one per slot
  cudaStream_t abort_stream = nullptr;
  uint8_t** d_bases = nullptr;  // every rank's base, on this GPU
  gpu::ArmedProgress* h_progress = nullptr;  // [slots]
  gpu::ArmedProgress* d_progress = nullptr;

  // Nothing here waits for the device: other groups' waits stay armed.
  void destroy() {
    cudaSetDevice(device);
    for (cudaStream_t s : streams) cudaStreamDestroy(s);
    if (abort_stream) {
      if (d_bases) cudaFreeAsync(d_bases, abort_stream);
      cudaStreamSynchronize(abort_stream);
      cudaStreamDestroy(abort_stream);
    }
  }
  uint32_t done(int32_t s) const { return *const_cast<const volatile uint32_t*>(&h_progress[s].seq); }
  int32_t status(int32_t s) const { return *const_cast<const volatile int32_t*>(&h_progress[s].status); }
};

struct ArmedExecutor::Impl {
  const ArmedExecutor* owner = nullptr;  // for aborted()
  GroupSpec spec;
  ArmedOptions opt;
  std::vector<uint8_t*> bases;
  std::unique_ptr<GpuExecutor> ex;
  std::vector<ArmedShard> shards;  // one per GPU, as ex->shards()
  uint32_t* d_abort = nullptr;     // on the home GPU (shard 0), read by every GPU's kernels
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

  ~Impl() {
    for (auto& sh : shards) sh.destroy();
    ex.reset();
    if (progress_first >= 0) ProgressPool::get().give(progress_first, spec.slots * static_cast<int32_t>(shards.size()));
  }

  ArmedShard& home() { return shards[0]; }
  // Operations of slot s completed on every GPU.
  uint32_t done(int32_t s) const {
    uint32_t d = shards[0].done(s);
    for (const auto& sh : shards) d = static_cast<int32_t>(sh.done(s) - d) < 0 ? sh.done(s) : d;
    return d;
  }
  CUdeviceptr word(int32_t r, int32_t s, size_t field) const {
    return reinterpret_cast<CUdeviceptr>(bases[r] + offsetof(ControlBlock, slot) + sizeof(ControlSlot) * s + field);
  }
  gpu::ArmedParams params(const ArmedShard& sh, int32_t s, uint32_t op, uint32_t seq) const {
    gpu::ArmedParams p;
    p.bases = sh.d_bases;
    p.world = spec.world_size;
    p.rank_lo = sh.rank_lo;
    p.rank_hi = sh.rank_hi;
    p.slot = s;
    p.op = op;
    p.expert_major = spec.layout == EPD_LAYOUT_EXPERT_MAJOR;
    p.abort_word = d_abort;
    p.progress = sh.d_progress + s;
    p.seq = seq;
    return p;
  }
  // Operation seq's stamp entry on slot s (ArmedOptions::stamps), or nullptr when stamps are off.
  uint64_t* stamp_entry(int32_t s, uint32_t seq) const {
    if (!opt.stamps) return nullptr;
    const size_t op = static_cast<size_t>(seq - 1) % static_cast<size_t>(opt.stamp_ops);
    return opt.stamps + (static_cast<size_t>(s) * static_cast<size_t>(opt.stamp_ops) + op) * kArmedStampWords;
  }

  // Enqueues the next operation of slot s on every GPU (caller holds mu).
  // Operations are numbered from 1; odd = dispatch, even = combine. Each GPU
  // waits for its own ranks' doorbells; the cross-GPU barriers inside the
  // launches wait for the others (at most the group's timeout).
  Status arm_one(int32_t s) {
    const uint32_t seq = armed[s] + 1;
    const bool dispatch = seq % 2 == 1;
    const DriverApi& d = driver_api();
    const uint32_t ring = dispatch ? kRingDispatch : kRingCombine;
    for (int32_t i = 0; i < static_cast<int32_t>(shards.size()); ++i) {
      const ArmedShard& sh = shards[static_cast<size_t>(i)];
      cudaStream_t st = sh.streams[s];
      EPD_CUDA_RETURN(cudaSetDevice(sh.device));
      for (int32_t r = sh.rank_lo; r < sh.rank_hi; ++r)
        EPD_CU_RETURN(d.stream_wait_value32(reinterpret_cast<CUstream>(st), word(r, s, offsetof(ControlSlot, doorbell)),
                                            ring, CU_STREAM_WAIT_VALUE_AND));
      const gpu::ArmedParams p = params(sh, s, dispatch ? kDoneDispatch : kDoneCombine, seq);
      uint64_t* rec = i == 0 ? stamp_entry(s, seq) : nullptr;  // nullptr unless ArmedOptions::stamps
      if (rec) EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_stamp(rec + kArmedStampWaitReleased, st)));
      uint64_t* plan_rec = rec ? rec + kArmedStampPlan : nullptr;
      // The operation's last launch writes its completion (no separate kernel);
      // a combine reads the clients' weight mode on the device.
      if (dispatch) {
        EPD_RETURN_IF_ERROR(ex->dispatch_shard(s, i, st, /*end_barrier=*/false, plan_rec, &p));
      } else {
        const epd_weight_mode_t any = spec.layout == EPD_LAYOUT_RANK_MAJOR ? EPD_WEIGHTS_ALREADY_APPLIED
                                                                            : EPD_WEIGHTS_APPLY;
        EPD_RETURN_IF_ERROR(ex->combine_shard(s, i, any, st, /*start_barrier=*/true, plan_rec, &p));
      }
      if (rec) EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_stamp(rec + kArmedStampCompleted, st)));
    }
    armed[s] = seq;
    return Status::ok();
  }

  // Keeps 2 * depth operations armed per slot (caller holds mu).
  Status top_up() {
    for (int32_t s = 0; s < spec.slots; ++s)
      while (!owner->aborted() && armed[s] - done(s) < static_cast<uint32_t>(2 * opt.depth))
        EPD_RETURN_IF_ERROR(arm_one(s));
    return Status::ok();
  }

  bool any_status(int32_t status) const {
    for (const auto& sh : shards)
      for (int32_t s = 0; s < spec.slots; ++s)
        if (sh.status(s) == status) return true;
    return false;
  }

  // A rank that stays behind: when some ranks have rung a slot's next
  // operation and others have not for longer than the group's timeout, the
  // armed waits would hold the ringing ranks' streams for ever. Reads the
  // doorbells (a few words, on the home GPU's abort stream) every timeout/4,
  // within [5, 250] ms; returns EPD_ERR_TIMEOUT naming the late ranks (caller holds mu).
  Status watch_late() {
    const auto now = std::chrono::steady_clock::now();
    if (now < next_watch) return Status::ok();
    next_watch = now + std::chrono::milliseconds(std::clamp<uint32_t>(spec.timeout_ms / 4, 5, 250));
    const int32_t W = spec.world_size;
    std::vector<uint32_t> bells(static_cast<size_t>(W) * spec.slots);
    cudaStream_t st = home().abort_stream;
    EPD_CUDA_RETURN(cudaSetDevice(home().device));
    for (int32_t s = 0; s < spec.slots; ++s)
      for (int32_t r = 0; r < W; ++r)
        EPD_CUDA_RETURN(cudaMemcpyAsync(&bells[static_cast<size_t>(s) * W + r],
                                        reinterpret_cast<const void*>(word(r, s, offsetof(ControlSlot, doorbell))),
                                        sizeof(uint32_t), cudaMemcpyDeviceToHost, st));
    EPD_CUDA_RETURN(cudaStreamSynchronize(st));
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
  // blocking its stream until reset(). Each GPU writes its own ranks' words.
  Status seal(epd_status_t reason) {
    EPD_RETURN_IF_ERROR(write_slot_words(offsetof(ControlSlot, completion),
                                         completion_word(kDoneDispatch | kDoneCombine, reason, true)));
    for (const auto& sh : shards) EPD_CUDA_RETURN(cudaStreamSynchronize(sh.abort_stream));
    return Status::ok();
  }

  // Enqueues `value` into `field` of every slot of every rank, each GPU its own
  // ranks' words on its abort stream.
  Status write_slot_words(size_t field, uint32_t value) {
    const DriverApi& d = driver_api();
    for (const auto& sh : shards) {
      EPD_CUDA_RETURN(cudaSetDevice(sh.device));
      const auto st = reinterpret_cast<CUstream>(sh.abort_stream);
      for (int32_t s = 0; s < spec.slots; ++s)
        for (int32_t r = sh.rank_lo; r < sh.rank_hi; ++r)
          EPD_CU_RETURN(d.stream_write_value32(st, word(r, s, field), value, 0));
    }
    return Status::ok();
  }

  bool drained() const {
    for (const auto& sh : shards)
      for (int32_t s = 0; s < spec.slots; ++s)
        if (sh.done(s) != armed[s]) return false;
    return true;
  }

  bool abort_streams_idle() const {
    for (const auto& sh : shards)
      if (cudaStreamQuery(sh.abort_stream) != cudaSuccess) return false;
    return true;
  }

  Status write_abort(epd_status_t reason) {
    const DriverApi& d = driver_api();
    EPD_CUDA_RETURN(cudaSetDevice(home().device));
    EPD_CU_RETURN(d.stream_write_value32(reinterpret_cast<CUstream>(home().abort_stream),
                                         reinterpret_cast<CUdeviceptr>(d_abort), static_cast<uint32_t>(-reason), 0));
    return write_slot_words(offsetof(ControlSlot, doorbell), kAbortRing);
  }
};

ArmedExecutor::ArmedExecutor() = default;

Result<std::unique_ptr<ArmedExecutor>> ArmedExecutor::create(const GroupSpec& spec, std::vector<uint8_t*> rank_bases,
                                                             int32_t device, const ArmedOptions& options) {
  return create(spec, std::move(rank_bases), std::vector<int32_t>(std::max(spec.world_size, 0), device), options);
}

namespace {
// The most ranks one GPU of the executor serves (its doorbell waits per operation).
int32_t largest_shard(const std::vector<GpuExecutor::Shard>& shards) {
  int32_t ranks = 1;
  for (const auto& sh : shards) ranks = std::max(ranks, sh.rank_hi - sh.rank_lo);
  return ranks;
}
}  // namespace

Result<std::unique_ptr<ArmedExecutor>> ArmedExecutor::create(const GroupSpec& spec, std::vector<uint8_t*> rank_bases,
                                                             const std::vector<int32_t>& rank_devices,
                                                             const ArmedOptions& options) {
  EPD_RETURN_IF_ERROR(driver_api().status);
  CUmoduleLoadingMode loading = CU_MODULE_LAZY_LOADING;
  EPD_CU_RETURN(driver_api().module_get_loading_mode(&loading));
  if (loading != CU_MODULE_EAGER_LOADING)
    return make_status(EPD_ERR_UNSUPPORTED,
                       "armed GPU executor needs CUDA_MODULE_LOADING=EAGER (call armed_prepare_environment() "
                       "before CUDA initialises): a lazily loaded kernel synchronises the context, which an "
                       "armed wait never lets finish");
  if (options.depth < 2 || options.depth > 1024)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "armed depth = %d is outside [2, 1024]", options.depth);
  if (options.stamps && options.stamp_ops < 1)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "armed stamp_ops = %d with a stamp buffer (at least 1)",
                       options.stamp_ops);
  std::unique_ptr<ArmedExecutor> a(new ArmedExecutor());
  a->impl_ = std::make_unique<Impl>();
  a->impl_->owner = a.get();
  Impl& im = *a->impl_;
  im.spec = spec;
  im.opt = options;
  im.bases = rank_bases;
  auto ex = GpuExecutor::create(spec, std::move(rank_bases), rank_devices, options.tuning);
  if (!ex) return ex.status();
  im.ex = std::move(ex.value());
  const int32_t W = spec.world_size, S = spec.slots;
  const int32_t n_shards = static_cast<int32_t>(im.ex->shards().size());
  im.opt.depth = armed_depth_for(options.depth, largest_shard(im.ex->shards()), options.stamps != nullptr);
  auto first = ProgressPool::get().take(S * n_shards, im.ex->shards()[0].device);
  if (!first) return first.status();
  im.progress_first = *first;
  im.d_abort = ProgressPool::get().abort_word(*first, im.ex->shards()[0].device);
  im.ex->set_abort_word(im.d_abort);
  for (int32_t i = 0; i < n_shards; ++i) {
    const GpuExecutor::Shard& gs = im.ex->shards()[static_cast<size_t>(i)];
    im.shards.emplace_back();
    ArmedShard& sh = im.shards.back();
    sh.device = gs.device;
    sh.rank_lo = gs.rank_lo;
    sh.rank_hi = gs.rank_hi;
    sh.h_progress = ProgressPool::get().host(*first + i * S);
    sh.d_progress = ProgressPool::get().dev(*first + i * S);
    EPD_CUDA_RETURN(cudaSetDevice(sh.device));
    for (int32_t s = 0; s < S; ++s) {
      cudaStream_t st = nullptr;
      EPD_CUDA_RETURN(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
      sh.streams.push_back(st);
    }
    // The abort stream gets the highest priority: it must run while armed streams block.
    int lo = 0, hi = 0;
    EPD_CUDA_RETURN(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    EPD_CUDA_RETURN(cudaStreamCreateWithPriority(&sh.abort_stream, cudaStreamNonBlocking, hi));
    cudaStream_t st = sh.abort_stream;
    EPD_CUDA_RETURN(cudaMallocAsync(reinterpret_cast<void**>(&sh.d_bases), sizeof(uint8_t*) * W, st));
    EPD_CUDA_RETURN(cudaMemcpyAsync(sh.d_bases, im.bases.data(), sizeof(uint8_t*) * W, cudaMemcpyHostToDevice, st));
    if (i == 0) EPD_CUDA_RETURN(cudaMemsetAsync(im.d_abort, 0, sizeof(uint32_t), st));
  }
  im.armed.assign(static_cast<size_t>(S), 0);
  im.partial_since.assign(static_cast<size_t>(S), {});
  im.partial_done.assign(static_cast<size_t>(S), 0);
  for (auto& sh : im.shards) EPD_CUDA_RETURN(cudaStreamSynchronize(sh.abort_stream));  // never cudaDeviceSynchronize: see ArmedShard
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
        timed_out = m.any_status(EPD_ERR_TIMEOUT);
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
    if (std::chrono::steady_clock::now() > rewrite_at && im.abort_streams_idle()) {
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
  for (const auto& sh : im.shards) {
    EPD_CUDA_RETURN(cudaSetDevice(sh.device));
    for (cudaStream_t s : sh.streams) EPD_CUDA_RETURN(cudaStreamSynchronize(s));
  }
  EPD_CUDA_RETURN(cudaSetDevice(im.home().device));
  (void)im.ex->check_fault(im.home().abort_stream);  // clears fault words and the kernels' barrier state
  EPD_RETURN_IF_ERROR(im.ex->reset_barriers());
  for (const auto& sh : im.shards) {
    EPD_CUDA_RETURN(cudaSetDevice(sh.device));
    if (&sh == &im.shards[0]) EPD_CUDA_RETURN(cudaMemsetAsync(im.d_abort, 0, sizeof(uint32_t), sh.abort_stream));
    for (int32_t r = sh.rank_lo; r < sh.rank_hi; ++r)
      for (int32_t s = 0; s < im.spec.slots; ++s)
        EPD_CUDA_RETURN(cudaMemsetAsync(reinterpret_cast<void*>(im.word(r, s, 0)), 0, 2 * sizeof(uint32_t),
                                        sh.abort_stream));  // doorbell, completion
  }
  for (const auto& sh : im.shards) {
    EPD_CUDA_RETURN(cudaStreamSynchronize(sh.abort_stream));
    std::memset(sh.h_progress, 0, sizeof(gpu::ArmedProgress) * im.spec.slots);
  }
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
  std::string gpus;
  for (const auto& sh : im.shards) gpus += (gpus.empty() ? "" : ",") + std::to_string(sh.device);
  std::snprintf(b, sizeof b, "armed: GPU %s, %d ranks, %d slots, depth %d, CUDA_DEVICE_MAX_CONNECTIONS=%s; ",
                gpus.c_str(), im.spec.world_size, im.spec.slots, im.opt.depth, conn ? conn : "unset (8)");
  return b + im.ex->describe_variant() + "; " + im.ex->describe_launch(/*with_variant=*/false);
}

Status enqueue_globaltimer_stamp(uint64_t* word, void* stream) {
  EPD_CUDA_RETURN(static_cast<cudaError_t>(gpu::launch_stamp(word, stream)));
  return Status::ok();
}

const char* ArmedExecutor::variant_name() const { return impl_->ex->variant_name(); }

const GpuExecutor& ArmedExecutor::executor() const { return *impl_->ex; }

}  // namespace epd
