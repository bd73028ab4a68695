// gpu_group.cc — GpuGroup over epd_cuda (gpu_group.h).
#include "gpu_group.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <vector>

#include "gpu_armed.h"
#include "gpu_executor.h"
#include "logging.h"

namespace epd {

void gpu_prepare_process() { armed_prepare_environment(); }

Result<int32_t> gpu_probe() {
  static std::once_flag once;
  static Result<int32_t> probed = make_status(EPD_ERR_GPU_UNAVAILABLE, "not probed");
  std::call_once(once, [] { probed = gpu_device_count(); });
  return probed;
}

std::string gpu_mps_description(int32_t device) {
  if (auto n = gpu_probe(); !n) return "MPS unknown: " + n.status().message();
  return detect_mps(device).description;
}

bool gpu_mps_active(int32_t device) { return gpu_probe() && detect_mps(device).active; }


struct GpuGroup::Impl {
  GroupSpec spec;
  std::vector<std::unique_ptr<GpuWorkspace>> ws;
  std::unique_ptr<ArmedExecutor> armed;
};

GpuGroup::GpuGroup() = default;

GpuGroup::~GpuGroup() {
  if (!impl_ || !impl_->armed) return;
  (void)impl_->armed->abort(EPD_ERR_SHUTTING_DOWN, impl_->spec.timeout_ms);
  const bool drained = impl_->armed->drained();
  impl_->armed.reset();  // leaks its own streams and scratch when undrained
  if (!drained) {
    log_message(LogLevel::kError, LogContext{impl_->spec.name, -1, 0, -1},
                "GPU group destroyed with operations still armed; leaking its workspaces on " + gpus());
    for (auto& w : impl_->ws) (void)w.release();
  }
}

Result<std::unique_ptr<GpuGroup>> GpuGroup::create(const GroupSpec& spec) {
  auto devices = gpu_devices_of(spec);
  if (!devices) return devices.status();
  if (devices->empty())
    return make_status(EPD_ERR_INVALID_ARGUMENT, "group '%s' places no rank on a GPU", spec.name.c_str());
  auto n = gpu_probe();
  if (!n) return make_status(n.status().code(), "group '%s' places ranks on GPU %d, but GPU groups are unavailable: %s",
                             spec.name.c_str(), devices->front(), n.status().message().c_str());
  for (size_t r = 0; r < devices->size(); ++r)
    if ((*devices)[r] >= *n)
      return make_status(EPD_ERR_INVALID_ARGUMENT, "group '%s': placement[%zu].gpu = %d, but this node has %d GPU(s)",
                         spec.name.c_str(), r, (*devices)[r], *n);
  std::unique_ptr<GpuGroup> g(new GpuGroup());
  g->devices_ = *devices;
  g->impl_ = std::make_unique<Impl>();
  g->impl_->spec = spec;
  auto ws = allocate_gpu_workspaces(spec, *devices);  // enables peer access between the GPUs
  if (!ws) return ws.status();
  g->impl_->ws = std::move(ws.value());
  std::vector<uint8_t*> bases;
  for (auto& w : g->impl_->ws) bases.push_back(w->device_ptr());
  auto armed = ArmedExecutor::create(spec, std::move(bases), *devices);
  if (!armed) return armed.status();
  g->impl_->armed = std::move(armed.value());
  EPD_RETURN_IF_ERROR(g->impl_->armed->start());
  return g;
}

int32_t GpuGroup::device(int32_t rank) const { return devices_[static_cast<size_t>(rank)]; }

std::string GpuGroup::gpus() const {
  std::vector<int32_t> u = devices_;
  u.erase(std::unique(u.begin(), u.end()), u.end());  // contiguous per GPU
  std::string out = u.size() > 1 ? "GPUs " : "GPU ";
  for (size_t i = 0; i < u.size(); ++i) out += (i ? "," : "") + std::to_string(u[i]);
  return out;
}

uint64_t GpuGroup::mapped_bytes(int32_t rank) const { return impl_->ws[static_cast<size_t>(rank)]->mapped_bytes(); }

uint64_t GpuGroup::total_bytes() const {
  uint64_t t = 0;
  for (const auto& w : impl_->ws) t += w->mapped_bytes();
  return t;
}

Result<int> GpuGroup::export_fd(int32_t rank) const { return impl_->ws[static_cast<size_t>(rank)]->export_fd(); }

Status GpuGroup::abort(epd_status_t reason) {
  if (impl_->armed->aborted()) return Status::ok();
  return impl_->armed->abort(reason, impl_->spec.timeout_ms);
}

bool GpuGroup::aborted() const { return impl_->armed->aborted(); }

Status GpuGroup::reset() {
  if (!impl_->armed->aborted()) return Status::ok();
  return impl_->armed->reset();
}

Status GpuGroup::health() const { return impl_->armed->health(); }

uint64_t GpuGroup::completed(int32_t slot) const { return impl_->armed->completed(slot); }

std::string GpuGroup::describe() const { return impl_->armed->describe(); }

const char* GpuGroup::variant() const { return impl_->armed->variant_name(); }

}  // namespace epd
