// The CPU implementation of TrainModel: the network of net_plan.h on oneDNN and our CPU SyncBN kernels,
// parameters in one flat store, SGD (optimizer.h), float or double gradient accumulation.
// Step contract (train_model.h): the first train_micro() of a step copies every BN buffer (running
// mean/var, pivot, num_batches_tracked); reduce_and_update() scans the reduced gradients and, at the
// first NaN/Inf, skips the update and restores those copies (last_step(): kNonFinite, the parameter).
#pragma once

#include <memory>

#include "syncbn/net_plan.h"
#include "syncbn/train_config.h"
#include "syncbn/train_model.h"

namespace syncbn {

// Builds the network for `spec` and the optimizer from `cfg`, parameters initialized from cfg.seed (cfg's
// normalization texts are not read: spec.norm is typed). For the synced BN modes the model creates the
// sync group of spec.norm.sync over `world` (collective over it).
std::unique_ptr<TrainModel> make_cpu_train_model(const ModelSpec& spec, const TrainConfig& cfg, Communicator& world);

}  // namespace syncbn
