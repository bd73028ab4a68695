// client_gpu.cc — libepd-client's GPU groups (epd.h, "GPU groups"): the join
// imports this rank's cuMem workspace (GpuWorkspaceMapping), the stream calls
// enqueue through GpuRankOps on the caller's stream, epd_group_gpu_status
// polls the slot's completion word on the host with a deadline, and the
// deprecated 0.1 names of these calls forward to them.
#include <dlfcn.h>
#include <poll.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "client_internal.h"
#include "control_block.h"
#include "staging.h"

namespace epd::client_detail {

namespace {

constexpr int64_t kBusyPollNs = 200 * 1000;  // re-read at once this long, then every ~1 ms

const char* const kStreamCalls =
    "epd_group_dispatch_async / epd_group_dispatch_wait_async / epd_group_combine_async / "
    "epd_group_combine_wait_async";

Status check_gpu(const epd_group_impl& g, const char* call) {
  if (!g.is_gpu())
    return make_status(EPD_ERR_UNSUPPORTED,
                       "%s on group '%s' (rank %d): a host group has no GPU workspace; the stream calls need every "
                       "rank placed on a GPU (placement gpu >= 0); use epd_group_dispatch / "
                       "epd_group_dispatch_wait / epd_group_combine / epd_group_combine_wait",
                       call, g.spec.name.c_str(), g.spec.rank);
  return Status::ok();
}

// Everything an enqueue checks before touching the stream.
Status check_enqueue(const epd_group_impl& g, int32_t slot, const char* call) {
  EPD_RETURN_IF_ERROR(check_gpu(g, call));
  EPD_RETURN_IF_ERROR(check_slot(g, slot));
  if (const int32_t aborted = g.gpu_aborted.load(std::memory_order_acquire); aborted != 0)
    return make_status(static_cast<epd_status_t>(aborted),
                       "%s on group '%s' (rank %d): the daemon aborted the group's GPU calls (%s); every rank must "
                       "epd_group_leave and epd_group_join again",
                       call, g.spec.name.c_str(), g.spec.rank, epd_status_string(static_cast<epd_status_t>(aborted)));
  return check_live(g);
}

// Waits until the completion word of `slot` carries `expect` (or the abort
// bit), polling it at most until `deadline`. gpu_mu is held for each read
// only, so a status call waiting on one slot does not hold up another's.
Status wait_completion(epd_group_impl& g, int32_t slot, uint32_t expect, int64_t limit_ms) {
  const int64_t start = shm::monotonic_ns();
  const int64_t deadline = start + limit_ms * 1000000LL;
  for (;;) {
    auto w = [&] {
      std::lock_guard<std::mutex> lk(g.gpu_mu);
      return g.gpu_ops->completion(slot);
    }();
    if (!w) return w.status();
    if (*w & (expect | kArmedAbortBit)) return Status::ok();
    if (g.conn->hung_up()) return g.conn->lost_status();
    const int64_t now = shm::monotonic_ns();
    if (now >= deadline)
      return make_status(EPD_ERR_TIMEOUT,
                         "epd_group_gpu_status on slot %d (rank %d): the %s enqueued last has not completed "
                         "within %lld ms (completion word 0x%08x; the caller's stream has not reached it, or a rank "
                         "has not rung; 'epctl ranks' shows which)",
                         slot, g.spec.rank, expect == kDoneDispatch ? "dispatch" : "combine",
                         static_cast<long long>(limit_ms), *w);
    if (now - start > kBusyPollNs) {
      // Sleeps up to 1 ms and notices a daemon that hung up meanwhile.
      pollfd p{g.conn->sock, POLLRDHUP, 0};
      (void)poll(&p, 1, 1);
    }
  }
}

// A host-staged GPU rank (a group spanning nodes) also finds the daemon's
// message for a failed op in its session block (the daemon writes it before
// the completion word): appended when its status matches.
Status with_daemon_message(const epd_group_impl& g, int32_t slot, const Status& st) {
  if (st.is_ok()) return st;
  shm::SlotWords& w = g.entry->slot[slot];
  const std::pair<int32_t*, const char*> ops[] = {{&w.dispatch_status, w.dispatch_msg},
                                                  {&w.combine_status, w.combine_msg}};
  for (const auto& [code, msg] : ops) {
    if (static_cast<epd_status_t>(shm::word(*code).load(std::memory_order_acquire)) != st.code()) continue;
    const size_t n = strnlen(msg, shm::kMsgBytes);
    if (n) return Status(st.code(), st.message() + ": " + std::string(msg, n));
  }
  return st;
}

}  // namespace

// libepd-inline.so's factory: EPD_INLINE_LIBRARY, else the file beside this
// library, else the loader's search path. Loaded once and never closed (the
// runners' code lives there).
Status inline_factory(InlineCreateFn* out) {
  static std::mutex mu;
  static InlineCreateFn fn = nullptr;
  static std::string tried;
  std::lock_guard<std::mutex> lk(mu);
  *out = fn;
  if (fn) return Status::ok();
  std::vector<std::string> paths;
  if (const char* env = getenv("EPD_INLINE_LIBRARY"); env && *env) {
    paths.push_back(env);
  } else {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&attach_gpu_workspace), &info) && info.dli_fname) {
      std::string self = info.dli_fname;
      const size_t cut = self.rfind('/');
      if (cut != std::string::npos) paths.push_back(self.substr(0, cut + 1) + kInlineLibrary);
    }
    paths.push_back(kInlineLibrary);
  }
  tried.clear();
  for (const std::string& p : paths) {
    void* h = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* why = dlerror();
      tried += (tried.empty() ? "" : "; ") + p + ": " + (why ? why : "not loadable");
      continue;
    }
    fn = reinterpret_cast<InlineCreateFn>(dlsym(h, kInlineCreateSymbol));
    *out = fn;
    if (fn) return Status::ok();
    tried += (tried.empty() ? "" : "; ") + p + ": no symbol " + kInlineCreateSymbol;
  }
  return make_status(EPD_ERR_UNSUPPORTED,
                     "executor inline needs %s (built with CUDA, installed beside libepd-client; EPD_INLINE_LIBRARY "
                     "names another path): %s",
                     kInlineLibrary, tried.c_str());
}

Status attach_gpu_workspace(epd_group_impl& g, const proto::JoinReply& jr, int fd) {
  auto drv = cu::GpuDriver::get();
  if (!drv) return drv.status();
  const RankLayout& l = g.layout.ranks[static_cast<size_t>(g.spec.rank)];
  const bool in_line = g.spec.executor == EPD_EXECUTOR_INLINE;
  uint64_t need = l.bytes, rank_at = 0;
  if (in_line) {
    auto lay = inline_block_layout(g.spec);
    if (!lay) return lay.status();
    need = lay->bytes;
    rank_at = lay->rank_at[static_cast<size_t>(g.spec.rank)];
  }
  if (jr.gpu_mapped_bytes < need)
    return make_status(EPD_ERR_PROTOCOL, "JOIN_REPLY: GPU %s of %llu bytes, rank %d of group '%s' needs %llu",
                       in_line ? "block" : "workspace", static_cast<unsigned long long>(jr.gpu_mapped_bytes), g.spec.rank,
                       g.spec.name.c_str(), static_cast<unsigned long long>(need));
  auto m = GpuWorkspaceMapping::import(**drv, fd, jr.gpu_mapped_bytes, jr.gpu_device);
  if (!m) return m.status();
  if (in_line) {
    InlineCreateFn make = nullptr;
    EPD_RETURN_IF_ERROR(inline_factory(&make));
    Status st = make_status(EPD_ERR_INTERNAL, "libepd-inline.so gave no runner");
    InlineCreateArgs a;
    a.abi = kInlineAbi;
    a.spec = &g.spec;
    a.block = (*m)->base();
    a.block_bytes = jr.gpu_mapped_bytes;
    a.rank = g.spec.rank;
    a.device = jr.gpu_device;
    a.out = &g.gpu_inline;
    a.status = &st;
    make(&a);
    if (!g.gpu_inline) return st;
  }
  g.gpu_ops = std::make_unique<GpuRankOps>(**drv, g.spec, g.spec.rank, (*m)->base() + rank_at, jr.gpu_device);
  g.gpu_ops->set_inline(g.gpu_inline.get());
  g.gpu_map = std::move(m.value());
  g.gpu_device = jr.gpu_device;
  return Status::ok();
}

Status host_call_on_gpu_group(const epd_group_impl& g, const char* call) {
  return make_status(EPD_ERR_UNSUPPORTED,
                     "%s on group '%s' (rank %d): the group's workspaces are on GPU %d; use the stream calls %s",
                     call, g.spec.name.c_str(), g.spec.rank, g.gpu_device, kStreamCalls);
}

}  // namespace epd::client_detail

using namespace epd::client_detail;
using epd::GpuDispatchArgs;
using epd::make_status;
using epd::Status;

extern "C" {

EPD_API epd_status_t epd_group_dispatch_async(epd_group_t* group, int32_t slot, const epd_gpu_dispatch_args_t* args,
                                              void* stream) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (Status st = check_enqueue(*g, slot, "epd_group_dispatch_async"); !st) return g->fail(st);
    if (!args || args->struct_size < sizeof(epd_gpu_dispatch_args_t))
      return g->fail(make_status(EPD_ERR_INVALID_ARGUMENT, "args is NULL or its struct_size = %u is below %zu",
                                 args ? args->struct_size : 0, sizeof(epd_gpu_dispatch_args_t)));
    if (Status st = epd::check_token_count(g->spec, args->n_tokens); !st) return g->fail(st);
    GpuDispatchArgs a;
    a.x = args->x;
    a.topk_ids = args->topk_ids;
    a.topk_weights = args->topk_weights;
    a.n_tokens_device = args->n_tokens_device;
    a.n_tokens_host = args->n_tokens;
    if (Status st = g->gpu_ops->dispatch(slot, a, stream); !st) return g->fail(st);
    g->slots[slot].gpu_expect.store(epd::kDoneDispatch, std::memory_order_release);
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_dispatch_wait_async(epd_group_t* group, int32_t slot, void* stream) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (Status st = check_enqueue(*g, slot, "epd_group_dispatch_wait_async"); !st) return g->fail(st);
    if (Status st = g->gpu_ops->dispatch_wait(slot, stream); !st) return g->fail(st);
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_combine_async(epd_group_t* group, int32_t slot, epd_weight_mode_t weight_mode,
                                             const void* expert_out, int64_t rows, void* stream) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (Status st = check_enqueue(*g, slot, "epd_group_combine_async"); !st) return g->fail(st);
    if (Status st = g->gpu_ops->combine(slot, weight_mode, expert_out, rows, stream); !st) return g->fail(st);
    g->slots[slot].gpu_expect.store(epd::kDoneCombine, std::memory_order_release);
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_combine_wait_async(epd_group_t* group, int32_t slot, void* stream) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (Status st = check_enqueue(*g, slot, "epd_group_combine_wait_async"); !st) return g->fail(st);
    if (Status st = g->gpu_ops->combine_wait(slot, stream); !st) return g->fail(st);
    return EPD_OK;
  });
}

EPD_API epd_status_t epd_group_gpu_status(epd_group_t* group, int32_t slot, uint32_t timeout_ms) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (Status st = check_gpu(*g, "epd_group_gpu_status"); !st) return g->fail(st);
    if (Status st = check_slot(*g, slot); !st) return g->fail(st);
    const uint32_t expect = g->slots[slot].gpu_expect.load(std::memory_order_acquire);
    if (expect != 0) {
      const int64_t limit_ms = timeout_ms ? timeout_ms : g->spec.effective_timeout_ms();
      if (Status st = wait_completion(*g, slot, expect, limit_ms); !st) return g->fail(st);
    }
    const Status st = with_daemon_message(*g, slot, [&] {
      std::lock_guard<std::mutex> lk(g->gpu_mu);
      return g->gpu_ops->query(slot);
    }());
    if (st) return EPD_OK;
    if (st.code() == EPD_ERR_PEER_LOST || st.code() == EPD_ERR_SHUTTING_DOWN)
      g->gpu_aborted.store(st.code(), std::memory_order_release);
    return g->fail(st);
  });
}

EPD_API epd_status_t epd_group_gpu_views(epd_group_t* group, int32_t slot, epd_gpu_views_t* out) {
  return guarded([&]() -> epd_status_t {
    epd_group_impl* g = as_group(group);
    if (!g) return EPD_ERR_INVALID_ARGUMENT;
    if (Status st = check_gpu(*g, "epd_group_gpu_views"); !st) return g->fail(st);
    if (Status st = check_slot(*g, slot); !st) return g->fail(st);
    if (!out || out->struct_size < sizeof(epd_gpu_views_t))
      return g->fail(make_status(EPD_ERR_INVALID_ARGUMENT, "out is NULL or its struct_size = %u is below %zu",
                                 out ? out->struct_size : 0, sizeof(epd_gpu_views_t)));
    const epd::RankLayout& l = g->gpu_ops->layout();
    const epd::SlotOffsets& o = l.slot[slot];
    uint8_t* b = g->gpu_ops->base();
    out->device = g->gpu_device;
    out->send_x = b + o.send_x;
    out->send_ids = reinterpret_cast<int32_t*>(b + o.send_ids);
    out->send_weights = reinterpret_cast<float*>(b + o.send_weights);
    out->recv_total = reinterpret_cast<const int32_t*>(b + o.recv_total);
    out->recv_counts = reinterpret_cast<const int32_t*>(b + o.recv_counts);
    out->recv_x = b + o.recv_x;
    out->recv_scales = l.scale_blocks ? reinterpret_cast<const float*>(b + o.recv_scales) : nullptr;
    out->recv_ids = reinterpret_cast<const int32_t*>(b + o.recv_ids);
    out->recv_weights = reinterpret_cast<const float*>(b + o.recv_weights);
    out->recv_src = reinterpret_cast<const epd_src_t*>(b + o.recv_src);
    out->combine_in = b + o.combine_in;
    out->combine_out = b + o.combine_out;
    out->capacity_rows = l.recv_rows;
    out->ids_per_row = l.ids_per_row;
    out->num_local_experts = l.local_experts;
    out->x_row_bytes = l.recv_row_bytes;
    out->combine_row_bytes = l.in_row_bytes;
    return EPD_OK;
  });
}

// ---- deprecated 0.1 names, removed in 0.3: each forwards to its replacement ----

EPD_API epd_status_t epd_dispatch_async(epd_group_t* group, int32_t slot, const epd_gpu_dispatch_args_t* args,
                                        void* stream) {
  return epd_group_dispatch_async(group, slot, args, stream);
}

EPD_API epd_status_t epd_dispatch_wait_async(epd_group_t* group, int32_t slot, void* stream) {
  return epd_group_dispatch_wait_async(group, slot, stream);
}

EPD_API epd_status_t epd_combine_async(epd_group_t* group, int32_t slot, epd_weight_mode_t weight_mode,
                                       const void* expert_out, int64_t rows, void* stream) {
  return epd_group_combine_async(group, slot, weight_mode, expert_out, rows, stream);
}

EPD_API epd_status_t epd_combine_wait_async(epd_group_t* group, int32_t slot, void* stream) {
  return epd_group_combine_wait_async(group, slot, stream);
}

EPD_API epd_status_t epd_gpu_status(epd_group_t* group, int32_t slot, uint32_t timeout_ms) {
  return epd_group_gpu_status(group, slot, timeout_ms);
}

EPD_API epd_status_t epd_gpu_views(epd_group_t* group, int32_t slot, epd_gpu_views_t* out) {
  return epd_group_gpu_views(group, slot, out);
}

}  // extern "C"
