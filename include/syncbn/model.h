// The trainer's networks: `convnet` (conv-norm-ReLU-pool ×3, fc-norm-ReLU, fc) and `resnet` (a small
// CIFAR-style ResNet: stem, three stages of `depth` residual blocks at widths w, 2w, 4w, global average
// pool, fc), for 1×28×28 or 3×32×32 inputs, with any normalization in the norm slot.
#pragma once

#include <memory>
#include <string>

#include "syncbn/nn.h"

namespace syncbn {

struct ModelSpec {
  std::string arch = "convnet";  // convnet | resnet
  std::int64_t width = 32;       // convnet: channels of the first conv (then 2w, 4w; hidden fc 8w)
                                 // resnet: channels of the first stage (then 2w, 4w)
  std::int64_t depth = 2;        // resnet: residual blocks per stage
  std::int64_t in_channels = 1, height = 28, width_px = 28, classes = 10;
  NormSpec norm;                 // the normalization slot, typed (norm_spec.h)
};

struct Model {
  ParamStore params;
  std::unique_ptr<Sequential> net;
  // Names and shapes of every parameter and buffer plus the architecture: two checkpoints/runs are
  // compatible iff their signatures are equal.
  std::string signature;
  std::vector<SyncBatchNorm*> bns;  // every SyncBatchNorm in the net (timing, eval statistics)
  std::vector<BufferRef> buffers;   // every non-parameter state array (checkpoints)
};

// Builds the network, allocates its parameters and initializes them from `seed`. `group`: the BatchNorm
// layers' sync group, needed when spec.norm.communicates() (the caller makes it from spec.norm.sync).
std::unique_ptr<Model> build_model(const ModelSpec& spec, CpuContext& ctx, std::uint64_t seed,
                                   SyncGroup* group = nullptr);

}  // namespace syncbn
