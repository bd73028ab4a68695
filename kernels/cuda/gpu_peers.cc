// gpu_peers.cc — how the GPUs of this node reach each other (gpu_executor.h):
// CUDA's peer attributes, enabling peer access for a group, PCI bus ids.
#include <cuda_runtime_api.h>

#include <cstdio>

#include "cuda_status.h"
#include "gpu_executor.h"

namespace epd {

Result<std::vector<GpuPeerLink>> gpu_peer_links() {
  auto n = gpu_device_count();
  if (!n) return n.status();
  std::vector<GpuPeerLink> out;
  for (int32_t a = 0; a < *n; ++a)
    for (int32_t b = 0; b < *n; ++b) {
      if (a == b) continue;
      GpuPeerLink l;
      l.from = a;
      l.to = b;
      int v = 0;
      EPD_CUDA_RETURN(cudaDeviceCanAccessPeer(&v, a, b));
      l.access = v != 0;
      if (l.access) {
        EPD_CUDA_RETURN(cudaDeviceGetP2PAttribute(&v, cudaDevP2PAttrNativeAtomicSupported, a, b));
        l.native_atomics = v != 0;
        EPD_CUDA_RETURN(cudaDeviceGetP2PAttribute(&v, cudaDevP2PAttrPerformanceRank, a, b));
        l.performance_rank = v;
      }
      out.push_back(l);
    }
  return out;
}

Status enable_peer_access(const std::vector<int32_t>& devices) {
  int current = 0;
  EPD_CUDA_RETURN(cudaGetDevice(&current));
  Status st;
  for (int32_t a : devices) {
    for (int32_t b : devices) {
      if (a == b) continue;
      int can = 0;
      EPD_CUDA_RETURN(cudaDeviceCanAccessPeer(&can, a, b));
      if (!can) {
        st = make_status(EPD_ERR_UNSUPPORTED,
                         "GPU %d cannot access GPU %d's memory (no CUDA peer access between them: no NVLink, and "
                         "PCIe peer-to-peer is off or crosses the CPU interconnect)",
                         a, b);
        break;
      }
      EPD_CUDA_RETURN(cudaSetDevice(a));
      const cudaError_t e = cudaDeviceEnablePeerAccess(b, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) {
        (void)cudaGetLastError();  // clears the sticky-free "already enabled" error
      } else if (e != cudaSuccess) {
        st = make_status(EPD_ERR_CUDA, "cudaDeviceEnablePeerAccess(GPU %d -> GPU %d): %s", a, b,
                         cudaGetErrorName(e));
        break;
      }
    }
    if (!st) break;
  }
  cudaSetDevice(current);
  return st;
}

Result<std::string> gpu_pci_bus_id(int32_t device) {
  char id[32] = {};
  EPD_CUDA_RETURN(cudaDeviceGetPCIBusId(id, sizeof id, device));
  return std::string(id);
}

}  // namespace epd
