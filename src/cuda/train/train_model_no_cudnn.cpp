// GPU training entry points of a CUDA build WITHOUT cuDNN (src/cuda/CMakeLists.txt compiles this file
// instead of src/cuda/train/*): the SyncBN kernels, NCCL communicator and bench work, training refuses.
#include "syncbn/config.h"
#include "syncbn/cuda/train_model.h"
#include "syncbn/error.h"

namespace syncbn {

std::string gpu_build_description() {
  return std::string("CUDA (") + SBN_CUDA_ARCHITECTURES + "), NCCL, no cuDNN (no GPU training)";
}

// Without GPU training in this build, --device auto must pick the CPU even where a GPU is visible.
bool cuda_device_available() { return false; }

std::unique_ptr<TrainModel> make_cuda_train_model(const ModelSpec&, const TrainConfig&, Communicator&) {
  SBN_FAIL("--device cuda: this syncbn was built without cuDNN, which GPU training needs for its convolutions "
           "(install cuDNN >= 8, e.g. into the CUDA toolkit or CUDNN_ROOT, and reconfigure); use --device cpu");
}

}  // namespace syncbn
