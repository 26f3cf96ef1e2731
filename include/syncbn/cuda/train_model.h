// Training on the GPU (--device cuda): the CUDA implementation of TrainModel (train_model.h). The network
// of net_plan.h with activations on the device (cuDNN convolutions, cuBLAS GEMMs, our CUDA SyncBN kernels
// and elementwise kernels), an NcclCommunicator for SyncBN and the gradient all-reduce, --precision
// fp32/bf16/fp16 activations (fp16 with dynamic loss scaling), parameters and optimizer in fp32.
#pragma once

#include <memory>
#include <string>

#include "syncbn/communicator.h"
#include "syncbn/net_plan.h"
#include "syncbn/train_config.h"
#include "syncbn/train_model.h"

namespace syncbn {

// True when this process sees at least one CUDA device (no error: false).
bool cuda_device_available();

// What this build offers on GPUs, for the ranks' build agreement: "none", or the CUDA architectures,
// NCCL and whether GPU training (cuDNN) is in.
std::string gpu_build_description();

// Builds the GPU model (src/cuda/train/cuda_train_model.h) on this rank's device (local rank), its NCCL
// communicator bootstrapped over `world` (an MpiCommunicator; collective over it), the sync group for the
// synced BN modes, and the optimizer. Refusals every rank agrees on first (AgreedError, one message): no
// CUDA device, --grad-accum fp64 (the GPU path accumulates in fp32).
std::unique_ptr<TrainModel> make_cuda_train_model(const ModelSpec& spec, const TrainConfig& cfg, Communicator& world);

}  // namespace syncbn
