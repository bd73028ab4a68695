// gpu_peer_view.cc — gpu_peer_view() over epd_cuda (gpu_group.h): every
// visible device's PCI bus id and CUDA's facts for every ordered pair, probed
// once. Attribute queries only (no allocation, no launch), so it is cheap.
#include <mutex>
#include <utility>

#include "gpu_executor.h"
#include "gpu_group.h"

namespace epd {

namespace {

Result<GpuPeerView> probe_peer_view() {
  Result<int32_t> n = gpu_probe();
  if (!n) return n.status();
  GpuPeerView view;
  for (int32_t d = 0; d < *n; ++d) {
    Result<std::string> busid = gpu_pci_bus_id(d);
    if (!busid) return busid.status();
    view.devices.push_back(GpuPeerView::Device{d, std::move(*busid)});
  }
  Result<std::vector<GpuPeerLink>> links = gpu_peer_links();
  if (!links) return links.status();
  for (const GpuPeerLink& l : *links) {
    view.links.push_back(GpuPeerView::Link{l.from, l.to, l.access, l.native_atomics, l.performance_rank});
  }
  return view;
}

}  // namespace

Result<GpuPeerView> gpu_peer_view() {
  static std::once_flag once;
  static Result<GpuPeerView> probed = make_status(EPD_ERR_GPU_UNAVAILABLE, "not probed");
  std::call_once(once, [] { probed = probe_peer_view(); });
  return probed;
}

}  // namespace epd
