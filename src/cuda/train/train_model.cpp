// GPU training entry points (syncbn/cuda/train_model.h): device detection for --device auto, and the
// factory of the CUDA TrainModel (cuda_train_model.h), with its refusals agreed over the world first so
// that every rank fails alike, before any rank enters the NCCL start-up.
#include "syncbn/cuda/train_model.h"

#include <cuda_runtime.h>

#include "syncbn/run_agreed.h"
#include "syncbn/config.h"
#include "syncbn/cuda/device.h"
#include "cuda_train_model.h"
#include "syncbn/error.h"
#include "syncbn/mpi_communicator.h"

namespace syncbn {

std::string gpu_build_description() { return std::string("CUDA (") + SBN_CUDA_ARCHITECTURES + "), NCCL, cuDNN"; }

bool cuda_device_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::unique_ptr<TrainModel> make_cuda_train_model(const ModelSpec& spec, const TrainConfig& cfg, Communicator& world) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&world);
  run_agreed(world, "cuda.model.checks", [&] {
    SBN_CHECK(mpi != nullptr, "--device cuda: the GPU model bootstraps NCCL over MPI, and this communicator is not MPI");
    SBN_CHECK(cfg.grad_accum == "fp32",
              "--grad-accum " + cfg.grad_accum + " is not supported with --device cuda (the GPU path accumulates and "
              "all-reduces gradients in fp32); use --grad-accum fp32, or --device cpu for fp64 accumulation");
    std::string why;
    SBN_CHECK(cuda::visible_devices(&why) > 0, "--device cuda: no CUDA device visible on " + world.host() + " (" + why + ")");
  });
  return std::make_unique<cuda::train::CudaTrainModel>(spec, cfg, *mpi);
}

}  // namespace syncbn
