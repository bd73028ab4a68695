// gpu_placement.cc — gpu_device_of (gpu_group.h): which single GPU a group's
// ranks are placed on. Built with or without CUDA.
#include <string>

#include "gpu_group.h"

namespace epd {

Result<int32_t> gpu_device_of(const GroupSpec& spec) {
  int32_t device = EPD_GPU_HOST;
  for (int32_t r = 0; r < spec.world_size; ++r) {
    const epd_placement_t& p = spec.placement[static_cast<size_t>(r)];
    if (r == 0) {
      device = p.gpu;
      continue;
    }
    if (p.gpu == device) continue;
    if (p.gpu == EPD_GPU_HOST || device == EPD_GPU_HOST)
      return make_status(EPD_ERR_UNSUPPORTED,
                         "group '%s': placement[0].gpu = %d but placement[%d].gpu = %d: a group runs entirely on the "
                         "host executor or entirely on GPUs",
                         spec.name.c_str(), device, r, p.gpu);
    return make_status(EPD_ERR_UNSUPPORTED,
                       "group '%s': placement[0].gpu = %d but placement[%d].gpu = %d: a GPU group runs on one GPU "
                       "per node in this version (ranks across several GPUs are not implemented)",
                       spec.name.c_str(), device, r, p.gpu);
  }
  return device;
}

}  // namespace epd
