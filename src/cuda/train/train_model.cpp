// GPU training entry points. cuda_device_available() is complete; the GPU TrainModel is not written yet,
// so make_cuda_train_model() refuses with a clear message (README "Known limitations").
#include "syncbn/cuda/train_model.h"

#include <cuda_runtime.h>

#include "syncbn/error.h"

namespace syncbn {

bool cuda_device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::unique_ptr<TrainModel> make_cuda_train_model(const ModelSpec&, const TrainConfig&, Communicator&) {
  SBN_FAIL("--device cuda: training on the GPU is not implemented yet (the CUDA SyncBN kernels, NCCL communicator "
           "and layer are; see README, GPU path); use --device cpu");
}

}  // namespace syncbn
