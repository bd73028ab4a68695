// gpu_placement.cc — gpu_devices_of (gpu_group.h): which GPU each rank of a
// group is placed on. Built with or without CUDA.
#include <string>

#include "gpu_group.h"

namespace epd {

bool spans_nodes(const GroupSpec& spec) {
  for (const auto& p : spec.placement)
    if (p.node != spec.placement[0].node) return true;
  return false;
}

Result<std::vector<int32_t>> gpu_devices_of(const GroupSpec& spec) {
  const bool one_node = !spans_nodes(spec);
  std::vector<int32_t> out;
  for (int32_t r = 0; r < spec.world_size; ++r) {
    const epd_placement_t& p = spec.placement[static_cast<size_t>(r)];
    const int32_t first = spec.placement[0].gpu;
    if ((p.gpu == EPD_GPU_HOST) != (first == EPD_GPU_HOST))
      return make_status(EPD_ERR_UNSUPPORTED,
                         "group '%s': placement[0].gpu = %d but placement[%d].gpu = %d: a group runs entirely on the "
                         "host executor or entirely on GPUs",
                         spec.name.c_str(), first, r, p.gpu);
    if (p.gpu == EPD_GPU_HOST) continue;
    if (one_node && r > 0 && p.gpu != out.back())
      for (int32_t q = 0; q < r; ++q)
        if (out[static_cast<size_t>(q)] == p.gpu)
          return make_status(EPD_ERR_UNSUPPORTED,
                             "group '%s': placement[%d].gpu = %d, but placement[%d].gpu = %d too and placement[%d].gpu "
                             "= %d: each GPU's ranks must be contiguous",
                             spec.name.c_str(), r, p.gpu, q, p.gpu, r - 1, out.back());
    out.push_back(p.gpu);
  }
  return out;
}

}  // namespace epd
