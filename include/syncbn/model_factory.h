// The one place the trainer gets its TrainModel from, whatever the build: --device cpu builds the
// oneDNN model (cpu_train_model.h), cuda the cuDNN/NCCL one (cuda/train_model.h). A build without the
// CUDA path links stand-ins (src/cuda/train/train_model_no_cuda.cpp) that see no device and refuse
// --device cuda with one line, so no code above this seam asks which build it is in.
#pragma once

#include <memory>
#include <string>

#include "syncbn/communicator.h"
#include "syncbn/net_plan.h"
#include "syncbn/train_config.h"
#include "syncbn/train_model.h"

namespace syncbn {

// --device auto: "cuda" when this build trains on GPUs and every rank of `world` sees one, else "cpu"
// (collective over world); cpu and cuda are returned as given.
std::string resolve_device(const std::string& requested, Communicator& world);

// The model for `device` ("cpu" or "cuda"); collective over world. Throws the device's refusals
// (AgreedError where every rank agrees, e.g. no CUDA device, or a build without the CUDA path).
std::unique_ptr<TrainModel> make_train_model(const std::string& device, const ModelSpec& spec, const TrainConfig& cfg,
                                             Communicator& world);

}  // namespace syncbn
