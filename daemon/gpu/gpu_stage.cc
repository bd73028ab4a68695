// gpu_stage.cc — GpuStage (gpu_stage.h) over epd_cuda: the local GPU ranks'
// cuMem workspaces (gpu_executor.h), the poller thread, and the staging
// copies through GpuStageCopy (gpu_stage_copy.h: every CUDA call is there).
#include "gpu_stage.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include "control_block.h"
#include "gpu_executor.h"
#include "gpu_stage_copy.h"
#include "layout.h"

namespace epd {

namespace {

constexpr uint32_t ring_of(GpuStage::Op op) {
  return op == GpuStage::Op::kDispatch ? kRingDispatch : kRingCombine;
}
constexpr uint32_t done_of(GpuStage::Op op) {
  return op == GpuStage::Op::kDispatch ? kDoneDispatch : kDoneCombine;
}

using Lane = GpuStageCopy::Lane;

}  // namespace

struct GpuStage::Impl {
  GroupSpec spec;
  GroupLayout layout;
  std::vector<int32_t> local;                          // local ranks
  std::vector<uint8_t*> mirror;                        // [rank] host mirror region
  std::vector<std::unique_ptr<GpuWorkspace>> ws;       // [rank], null when remote
  std::vector<int32_t> device;                         // [rank], -1 when remote
  std::vector<uint8_t*> bases;                         // [rank] workspace device addresses, null when remote
  std::unique_ptr<GpuStageCopy> copies;                // per rank a poll, a work and a control lane
  std::function<void()> wake;
  uint32_t poll_us = 50;

  std::mutex mu;  // guards armed, expect, rings, health, stop
  std::condition_variable cv;
  std::vector<bool> armed;                  // [rank]
  std::vector<std::vector<Op>> expect;      // [rank][slot]: the next op
  std::vector<Ring> rings;
  Status health;
  bool stop = false;
  std::thread poller;
  std::mutex ctl_mu;  // fail() and arm() share the control streams

  uint8_t* dev(int32_t r) const { return bases[static_cast<size_t>(r)]; }
  const RankLayout& lay(int32_t r) const { return layout.ranks[static_cast<size_t>(r)]; }

  // Copies what `op` needs from rank r's GPU workspace into the mirror (poller thread).
  Status stage_in(int32_t r, int32_t s, Op op) {
    const RankLayout& l = lay(r);
    const SlotOffsets& o = l.slot[s];
    uint8_t* m = mirror[static_cast<size_t>(r)];
    auto d2h = [&](uint64_t at, uint64_t bytes) {
      return copies->copy_to_host(r, Lane::kPoll, m + at, dev(r) + at, bytes);
    };
    if (op == Op::kDispatch) {
      EPD_RETURN_IF_ERROR(d2h(o.send_hdr, sizeof(SendHeader)));
      EPD_RETURN_IF_ERROR(copies->sync(r, Lane::kPoll));
      uint32_t n = 0;
      std::memcpy(&n, m + o.send_hdr, sizeof n);
      // The count is the worker's: copy at most capacity rows (the executor reports a larger count).
      const uint64_t rows = std::min<uint64_t>(n, static_cast<uint64_t>(spec.max_tokens_per_rank));
      const uint64_t k_bytes = rows * static_cast<uint64_t>(spec.top_k) * 4;
      EPD_RETURN_IF_ERROR(d2h(o.send_x, rows * l.in_row_bytes));
      EPD_RETURN_IF_ERROR(d2h(o.send_ids, k_bytes));
      EPD_RETURN_IF_ERROR(d2h(o.send_weights, k_bytes));
    } else {
      EPD_RETURN_IF_ERROR(d2h(o.combine_in, static_cast<uint64_t>(l.recv_rows) * l.in_row_bytes));
    }
    return copies->sync(r, Lane::kPoll);
  }

  // Reads every armed rank's control slots; queues and stages rings (poller thread).
  Status poll_once(bool* rang) {
    std::vector<int32_t> ranks;
    {
      std::lock_guard<std::mutex> l(mu);
      for (int32_t r : local)
        if (armed[static_cast<size_t>(r)]) ranks.push_back(r);
    }
    EPD_RETURN_IF_ERROR(copies->read_control_slots(ranks, bases));
    for (int32_t r : ranks)
      for (int32_t s = 0; s < spec.slots; ++s) {
        const ControlSlot& cs = copies->control_slots(r)[s];
        Op op;
        {
          std::lock_guard<std::mutex> l(mu);
          if (!armed[static_cast<size_t>(r)]) continue;
          op = expect[static_cast<size_t>(r)][static_cast<size_t>(s)];
        }
        // Each ring overwrites the other op's bit; the next op cannot ring
        // before this one completes, so no ring is missed between two polls.
        if ((cs.doorbell & ring_of(op)) == 0 || (cs.doorbell & kArmedAbortBit)) continue;
        EPD_RETURN_IF_ERROR(stage_in(r, s, op));
        std::lock_guard<std::mutex> l(mu);
        if (!armed[static_cast<size_t>(r)]) continue;  // left meanwhile
        expect[static_cast<size_t>(r)][static_cast<size_t>(s)] = op == Op::kDispatch ? Op::kCombine : Op::kDispatch;
        rings.push_back(Ring{r, s, op, cs.weight_mode});
        *rang = true;
      }
    return Status::ok();
  }

  void poll_loop() {
    std::unique_lock<std::mutex> l(mu);
    while (!stop) {
      l.unlock();
      bool rang = false;
      const Status st = poll_once(&rang);
      if (rang) wake();
      l.lock();
      if (!st) {
        health = st;
        std::fprintf(stderr, "epd: GPU staging poller stopped: %s\n", st.message().c_str());
        break;
      }
      cv.wait_for(l, std::chrono::microseconds(poll_us));
    }
  }

  // Copies exactly the bytes the executor wrote for rank r (every other byte
  // of the GPU workspace keeps what the worker left there, as with the GPU
  // executor): dispatch: total, counts, ids / weights / sources of every row
  // (padding rows included), payload and scales of the received rows;
  // combine: the rank's n_tokens output rows. Worker thread.
  Status stage_out(int32_t r, int32_t s, Op op, Lane lane) {
    const RankLayout& l = lay(r);
    const SlotOffsets& o = l.slot[s];
    const uint8_t* m = mirror[static_cast<size_t>(r)];
    auto h2d = [&](uint64_t at, uint64_t bytes) {
      return copies->copy_to_device(r, lane, dev(r) + at, m + at, bytes);
    };
    const uint64_t R = static_cast<uint64_t>(l.recv_rows);
    if (op == Op::kCombine) {
      uint32_t n = 0;
      std::memcpy(&n, m + o.send_hdr, sizeof n);
      return h2d(o.combine_out, std::min<uint64_t>(n, static_cast<uint64_t>(spec.max_tokens_per_rank)) * l.in_row_bytes);
    }
    const uint64_t ids = static_cast<uint64_t>(l.ids_per_row) * 4, scales = static_cast<uint64_t>(l.scale_blocks) * 4;
    EPD_RETURN_IF_ERROR(h2d(o.recv_total, 4));
    EPD_RETURN_IF_ERROR(h2d(o.recv_counts, static_cast<uint64_t>(l.local_experts) * 4));
    EPD_RETURN_IF_ERROR(h2d(o.recv_ids, R * ids));
    EPD_RETURN_IF_ERROR(h2d(o.recv_weights, R * ids));
    EPD_RETURN_IF_ERROR(h2d(o.recv_src, R * 8));
    // Received rows: [0, total) (rank_major), or per local expert e the first
    // counts[e] rows of its block of world_size * max_tokens_per_rank (expert_major).
    auto rows = [&](uint64_t first, uint64_t count) -> Status {
      count = std::min(count, R > first ? R - first : 0);
      EPD_RETURN_IF_ERROR(h2d(o.recv_x + first * l.recv_row_bytes, count * l.recv_row_bytes));
      return h2d(o.recv_scales + first * scales, count * scales);
    };
    if (spec.layout == EPD_LAYOUT_RANK_MAJOR) {
      int32_t total = 0;
      std::memcpy(&total, m + o.recv_total, sizeof total);
      return rows(0, static_cast<uint64_t>(std::max(total, 0)));
    }
    const uint64_t block = static_cast<uint64_t>(spec.world_size) * static_cast<uint64_t>(spec.max_tokens_per_rank);
    for (int32_t e = 0; e < l.local_experts; ++e) {
      int32_t c = 0;
      std::memcpy(&c, m + o.recv_counts + 4 * static_cast<uint64_t>(e), sizeof c);
      EPD_RETURN_IF_ERROR(rows(static_cast<uint64_t>(e) * block, static_cast<uint64_t>(std::max(c, 0))));
    }
    return Status::ok();
  }

  Status write_completion(int32_t r, int32_t s, Op op, epd_status_t status, Lane lane) {
    static_assert(sizeof(uint32_t) == sizeof(ControlSlot::completion), "completion word");
    const uint32_t w = completion_word(done_of(op), status, false);
    const uint64_t at = offsetof(ControlBlock, slot) + sizeof(ControlSlot) * static_cast<uint64_t>(s) +
                        offsetof(ControlSlot, completion);
    EPD_RETURN_IF_ERROR(copies->copy_to_device(r, lane, dev(r) + at, &w, sizeof w));
    return copies->sync(r, lane);  // `w` is on this stack
  }
};

GpuStage::GpuStage() = default;

GpuStage::~GpuStage() {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->poller.joinable()) impl_->poller.join();
  impl_->copies.reset();  // the streams go before the workspaces they copy
}

Result<std::unique_ptr<GpuStage>> GpuStage::create(const GroupSpec& spec, std::vector<int32_t> local_ranks,
                                                   std::vector<uint8_t*> mirror_bases, std::function<void()> wake,
                                                   uint32_t poll_us) {
  auto n = gpu_device_count();
  if (!n) return n.status();
  const size_t W = static_cast<size_t>(spec.world_size);
  if (mirror_bases.size() != W)
    return make_status(EPD_ERR_INVALID_ARGUMENT, "mirror_bases has %zu entries, world_size is %d",
                       mirror_bases.size(), spec.world_size);
  std::unique_ptr<GpuStage> g(new GpuStage());
  g->impl_ = std::make_unique<Impl>();
  Impl& im = *g->impl_;
  im.spec = spec;
  im.layout = GroupLayout::compute(spec);
  im.local = std::move(local_ranks);
  im.mirror = std::move(mirror_bases);
  im.wake = std::move(wake);
  im.poll_us = std::max<uint32_t>(poll_us, 1);
  im.ws.resize(W);
  im.device.assign(W, -1);
  im.bases.assign(W, nullptr);
  im.armed.assign(W, false);
  im.expect.assign(W, std::vector<Op>(static_cast<size_t>(spec.slots), Op::kDispatch));
  for (int32_t r : im.local) {
    if (r < 0 || r >= spec.world_size)
      return make_status(EPD_ERR_INVALID_ARGUMENT, "local rank %d is outside [0, %d)", r, spec.world_size);
    const int32_t d = spec.placement[static_cast<size_t>(r)].gpu;
    if (d < 0 || d >= *n)
      return make_status(EPD_ERR_INVALID_ARGUMENT, "group '%s': placement[%d].gpu = %d, but this node has %d GPU(s)",
                         spec.name.c_str(), r, d, *n);
    auto w = GpuWorkspace::create(workspace_bytes(spec, r), d);
    if (!w) return w.status();
    im.bases[static_cast<size_t>(r)] = w.value()->device_ptr();
    im.ws[static_cast<size_t>(r)] = std::move(w.value());
    im.device[static_cast<size_t>(r)] = d;
  }
  auto copies = GpuStageCopy::create(im.device, spec.slots);  // the local ranks' streams, the pinned snapshot
  if (!copies) return copies.status();
  im.copies = std::move(copies.value());
  for (int32_t r : im.local) {
    EPD_RETURN_IF_ERROR(g->arm(r));  // control block initialised; disarmed again below until the rank joins
    g->disarm(r);
  }
  im.poller = std::thread([&im] { im.poll_loop(); });
  return g;
}

int32_t GpuStage::device(int32_t rank) const { return impl_->device[static_cast<size_t>(rank)]; }

uint64_t GpuStage::mapped_bytes(int32_t rank) const {
  const auto& w = impl_->ws[static_cast<size_t>(rank)];
  return w ? w->mapped_bytes() : 0;
}

uint64_t GpuStage::total_bytes() const {
  uint64_t t = 0;
  for (const auto& w : impl_->ws)
    if (w) t += w->mapped_bytes();
  return t;
}

Result<int> GpuStage::export_fd(int32_t rank) const {
  const auto& w = impl_->ws[static_cast<size_t>(rank)];
  if (!w) return make_status(EPD_ERR_INVALID_ARGUMENT, "rank %d is not on this node", rank);
  return w->export_fd();
}

Status GpuStage::arm(int32_t rank) {
  Impl& im = *impl_;
  if (!im.ws[static_cast<size_t>(rank)]) return make_status(EPD_ERR_INVALID_ARGUMENT, "rank %d is not on this node", rank);
  ControlBlock cb{};
  cb.magic = kControlMagic;
  cb.version = kControlVersion;
  {
    std::lock_guard<std::mutex> c(im.ctl_mu);
    EPD_RETURN_IF_ERROR(im.copies->copy_to_device(rank, Lane::kControl, im.dev(rank), &cb, sizeof cb));
    EPD_RETURN_IF_ERROR(im.copies->sync(rank, Lane::kControl));  // `cb` is on this stack
  }
  std::lock_guard<std::mutex> l(im.mu);
  im.armed[static_cast<size_t>(rank)] = true;
  for (auto& e : im.expect[static_cast<size_t>(rank)]) e = Op::kDispatch;
  // A ring queued before the re-join belongs to the rank's previous life.
  im.rings.erase(std::remove_if(im.rings.begin(), im.rings.end(), [&](const Ring& g) { return g.rank == rank; }),
                 im.rings.end());
  return Status::ok();
}

void GpuStage::disarm(int32_t rank) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->armed[static_cast<size_t>(rank)] = false;
  impl_->rings.erase(std::remove_if(impl_->rings.begin(), impl_->rings.end(),
                                    [&](const Ring& g) { return g.rank == rank; }),
                     impl_->rings.end());
}

std::vector<GpuStage::Ring> GpuStage::take_rings() {
  std::lock_guard<std::mutex> l(impl_->mu);
  std::vector<Ring> out;
  out.swap(impl_->rings);
  return out;
}

Status GpuStage::deliver(int32_t rank, int32_t slot, Op op, epd_status_t status) {
  Impl& im = *impl_;
  if (!im.ws[static_cast<size_t>(rank)]) return make_status(EPD_ERR_INVALID_ARGUMENT, "rank %d is not on this node", rank);
  if (status == EPD_OK) EPD_RETURN_IF_ERROR(im.stage_out(rank, slot, op, Lane::kWork));
  return im.write_completion(rank, slot, op, status, Lane::kWork);
}

Status GpuStage::fail(int32_t rank, int32_t slot, Op op, epd_status_t status) {
  Impl& im = *impl_;
  if (!im.ws[static_cast<size_t>(rank)]) return make_status(EPD_ERR_INVALID_ARGUMENT, "rank %d is not on this node", rank);
  std::lock_guard<std::mutex> c(im.ctl_mu);
  return im.write_completion(rank, slot, op, status == EPD_OK ? EPD_ERR_INTERNAL : status, Lane::kControl);
}

Status GpuStage::health() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->health;
}

std::string GpuStage::describe() const {
  const Impl& im = *impl_;
  std::string gpus;
  for (int32_t r : im.local) gpus += (gpus.empty() ? "" : ",") + std::to_string(r) + "@GPU" + std::to_string(im.device[static_cast<size_t>(r)]);
  return "host-staged GPU ranks " + gpus + " (poll every " + std::to_string(im.poll_us) +
         " us; the host executor computes, the cluster transport ships)";
}

}  // namespace epd
