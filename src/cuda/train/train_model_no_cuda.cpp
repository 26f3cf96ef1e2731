// GPU training entry points of a build WITHOUT the CUDA path (src/CMakeLists.txt links this file as
// syncbn_cuda when nvcc is not found): no device is ever visible, --device cuda refuses with one line.
#include "syncbn/cuda/train_model.h"
#include "syncbn/error.h"

namespace syncbn {

std::string gpu_build_description() { return "none"; }

bool cuda_device_available() { return false; }

std::unique_ptr<TrainModel> make_cuda_train_model(const ModelSpec&, const TrainConfig&, Communicator&) {
  SBN_FAIL("--device cuda: this syncbn was built without CUDA (configure with nvcc available)");
}

}  // namespace syncbn
