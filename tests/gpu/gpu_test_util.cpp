#include "gpu_test_util.h"

#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>

#include "syncbn/cuda/bn_thread.h"
#include "syncbn/cuda/device.h"
#include "syncbn/cuda/nccl_communicator.h"
#include "syncbn/error.h"
#include "syncbn/mpi_communicator.h"

namespace syncbn::test {

std::string gpu_unavailable(Communicator& world, bool device_per_rank) {
  std::string why;
  const int devices = cuda::visible_devices(&why);
  int device = devices > 0 ? world.local_rank() % devices : -1;
  if (devices == 0) why = "no CUDA device: " + why;
  auto* mpi = dynamic_cast<MpiCommunicator*>(&world);
  if (device_per_rank && mpi) {
    // The applications' choice (NcclCommunicator, device_select.h): by device UUID over the node's ranks, so
    // ranks that each see their own device (CUDA_VISIBLE_DEVICES per rank) use it. Collective and agreed:
    // every rank gets the same verdict. SBN_GPU_SHARING=1 lets ranks share devices.
    try {
      device = cuda::select_device(*mpi, cuda::NcclOptions::from_env());
    } catch (const Error& e) {
      if (why.empty()) why = std::string("no CUDA device per rank: ") + e.what();
    }
  } else if (device_per_rank && devices > 0 && world.local_size() > devices) {
    why = "no CUDA device per rank: " + std::to_string(world.local_size()) + " ranks on " + world.host() +
          " see " + std::to_string(devices) + " device(s) (NCCL needs one device per rank)";
  }
  if (why.empty()) {
    const cudaError_t rc = cudaSetDevice(device);
    if (rc != cudaSuccess) why = "no usable CUDA device: cudaSetDevice: " + cuda::cuda_error_text(rc);
  }
  // Agree before anyone returns: a rank that skipped alone would leave the others in a collective.
  if (!world.any(!why.empty(), "gpu_test.available")) return "";
  return why.empty() ? "no CUDA device on another rank of this job" : why;
}

bool gpu_required() {
  const char* v = std::getenv("SBN_REQUIRE_GPU");
  return v && std::strcmp(v, "1") == 0;
}

std::vector<double> round_to_dtype(const std::vector<double>& v, cuda::DType dtype) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const auto f = static_cast<float>(v[i]);
    switch (dtype) {
      case cuda::DType::kF32: out[i] = f; break;
      case cuda::DType::kBF16: {
        __nv_bfloat16 h;
        cuda::from_float(f, &h);
        out[i] = cuda::to_float(h);
        break;
      }
      case cuda::DType::kF16: {
        __half h;
        cuda::from_float(f, &h);
        out[i] = cuda::to_float(h);
        break;
      }
    }
  }
  return out;
}

}  // namespace syncbn::test
