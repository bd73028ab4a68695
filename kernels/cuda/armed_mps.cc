// armed_mps.cc — detect_mps (gpu_armed.h): whether CUDA MPS serves this
// process's contexts on a device. The device attribute is the reading that
// counts (it says what this process's contexts are); the control pipe only
// explains a mismatch, e.g. an MPS server started after the daemon.
#include <cuda_runtime_api.h>
#include <sys/stat.h>

#include <cstdlib>
#include <string>

#include "gpu_armed.h"
#include "gpu_executor.h"

namespace epd {

MpsState detect_mps(int32_t device) {
  MpsState st;
  const char* env = std::getenv("CUDA_MPS_PIPE_DIRECTORY");
  const std::string pipe = std::string(env && *env ? env : "/tmp/nvidia-mps") + "/control";
  struct stat sb {};
  const bool pipe_present = ::stat(pipe.c_str(), &sb) == 0 && S_ISFIFO(sb.st_mode);
  auto count = gpu_device_count();
  if (!count) {
    st.description = "MPS unknown: " + count.status().message();
    return st;
  }
  int enabled = 0;
  const cudaError_t e = cudaDeviceGetAttribute(&enabled, cudaDevAttrMpsEnabled, device);
  if (e != cudaSuccess) {
    st.active = pipe_present;
    st.description = std::string("MPS ") + (pipe_present ? "control pipe present at " : "control pipe absent at ") +
                     pipe + " (CU_DEVICE_ATTRIBUTE_MPS_ENABLED unreadable: " + cudaGetErrorName(e) + ")";
    return st;
  }
  st.active = enabled != 0;
  const std::string gpu = "GPU " + std::to_string(device);
  if (st.active)
    st.description = "MPS active on " + gpu + " (CU_DEVICE_ATTRIBUTE_MPS_ENABLED = 1, control pipe " + pipe + ")";
  else if (pipe_present)
    st.description = "MPS not active on " + gpu + " although " + pipe +
                     " exists: this process started before the MPS server, or the server serves another user";
  else
    st.description = "MPS not active on " + gpu + " (no control pipe at " + pipe +
                     "): daemon kernels time-slice with the workers'";
  return st;
}

}  // namespace epd
