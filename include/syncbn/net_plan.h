// The trainer's networks, described once for every device: `convnet` (conv-norm-ReLU-pool ×3,
// fc-norm-ReLU, fc) and `resnet` (a small CIFAR-style ResNet: stem, three stages of `depth` residual blocks
// at widths w, 2w, 4w, global average pool, fc), for 1×28×28 or 3×32×32 inputs, with any normalization in
// the norm slot.
//
// plan_network(spec, params) walks the architecture once: it registers every parameter in the ParamStore
// (names, canonical shapes, order, initializers: hence the offsets and the initial values for a seed) and
// returns the op list with each parameter's slot. The CPU model (src/nn/model.cpp, oneDNN) and the GPU
// model (src/cuda/train/, cuDNN) are two builders of this plan, so the two devices have the same
// parameters, buffers and signature by construction: checkpoints and runs move between them.
// Nothing here computes or allocates device memory; no CPU-layer or CUDA header is included.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "syncbn/norm_spec.h"
#include "syncbn/param_store.h"

namespace syncbn {

struct ModelSpec {
  std::string arch = "convnet";  // convnet | resnet
  std::int64_t width = 32;       // convnet: channels of the first conv (then 2w, 4w; hidden fc 8w)
                                 // resnet: channels of the first stage (then 2w, 4w)
  std::int64_t depth = 2;        // resnet: residual blocks per stage
  std::int64_t in_channels = 1, height = 28, width_px = 28, classes = 10;
  NormSpec norm;                 // the normalization slot, typed (norm_spec.h)
};

// Where a parameter lives in the flat store (floats); index −1: absent (e.g. no bias).
struct ParamSlot {
  int index = -1;
  std::int64_t offset = 0;
  std::int64_t size = 0;
  bool present() const { return index >= 0; }
};

// k×k convolution, stride s, padding p, optional bias.
struct ConvSpec {
  std::int64_t in = 0, out = 0, kernel = 3, stride = 1, pad = 1;
  bool bias = false;
};

struct ConvPlan {
  std::string name;  // "conv1", "layer2.0.conv1", "layer2.0.shortcut.conv"
  ConvSpec spec;
  ParamSlot weight;  // OIHW (out, in, k, k)
  ParamSlot bias;    // (out), only with --norm none
};

struct LinearPlan {
  std::string name;  // "fc1"
  std::int64_t in = 0, out = 0;
  ParamSlot weight;  // (out, in)
  ParamSlot bias;    // (out)
};

struct NormPlan {
  std::string name;  // "conv1.bn": BN buffers are "<name>.running_mean", ".running_var", ".pivot", ...
  NormSpec spec;     // kind, sync mode, groups, ghost batch, momentum, eps
  std::int64_t channels = 0;
  bool relu = false;  // fused ReLU after the norm
  // > 0: the next op is a fused_pool × fused_pool max pooling that the CPU builder runs fused into this
  // BatchNorm's output pass (make_norm_pool; set by plan_network where NormSpec::fuse_pool allows). The
  // op list is unchanged: the GPU builder ignores it and runs the two ops separately.
  std::int64_t fused_pool = 0;
  ParamSlot gamma, beta;
  bool batchnorm() const { return spec.batchnorm(); }
  bool synced() const { return spec.communicates(); }
  // The BatchNorm layer's options (batchnorm() only): the same on every device.
  BatchNormOptions batchnorm_options() const;
};

// conv3x3(s)-norm-relu-conv3x3-norm (+ shortcut 1x1 conv(s)-norm when the shape changes) → add → relu.
struct BlockPlan {
  std::string name;  // "layer1.0"
  ConvPlan conv1, conv2;
  NormPlan n1, n2;
  bool shortcut = false;
  ConvPlan sc_conv;
  NormPlan sc_norm;
};

enum class OpKind { kConv, kNorm, kMaxPool, kFlatten, kLinear, kGlobalAvgPool, kBlock };

struct OpPlan {
  OpKind kind = OpKind::kConv;
  ConvPlan conv;      // kConv
  NormPlan norm;      // kNorm
  LinearPlan linear;  // kLinear
  BlockPlan block;    // kBlock
};

// A non-parameter state array of the network (checkpointed): name and element count. BatchNorm layers
// have four, in this order: running_mean (C, f32), running_var (C, f32), pivot (C, f64),
// num_batches_tracked (1, i64).
struct BufferSpec {
  std::string name;
  std::int64_t size = 0;
};

struct NetPlan {
  std::string arch;
  std::vector<OpPlan> ops;           // in forward order
  std::vector<BufferSpec> buffers;   // every buffer, in the norm layers' forward order
  // Architecture, input, classes, norm and the names and shapes of every parameter and buffer: two
  // checkpoints/runs are compatible iff their signatures are equal.
  std::string signature;
  // "conv3x3(1->32) -> bn[sync]+relu -> maxpool2 -> ...": BatchNorm layers print their sync mode
  // (NormSpec::str()), GroupNorm "gnG", no norm "relu" or "identity".
  std::string describe() const;
};

// Registers spec's network in `params` (empty, not finalized), finalizes it, and returns the plan. The
// caller sets the initial values (params.init_params(seed)). Throws for a bad spec (unknown arch, width
// or depth out of range, an input too small for the poolings, groups that do not divide the channels).
NetPlan plan_network(const ModelSpec& spec, ParamStore& params);

// The window of the max pooling that op i fuses (NormPlan::fused_pool), 0 for none. A BatchNorm op
// followed by a kMaxPool op fuses it when its spec's fuse_pool is on; every mode with batch statistics
// (local, sync, sync:K, ghost batches, Batch Renormalization, PreciseBN passes) gives the same numbers
// fused. GroupNorm and no norm are never fused.
std::int64_t fused_pool_window(const NetPlan& plan, std::size_t i);

// Every norm layer of the plan in forward order (residual blocks: n1, n2, shortcut norm).
std::vector<const NormPlan*> norm_layers(const NetPlan& plan);

// One layer's text in NetPlan::describe() (the CPU layers' describe() print the same).
std::string describe(const ConvSpec& s);
std::string describe(const NormPlan& p);
std::string describe(const BlockPlan& p);

// One layer's plan, its parameters registered in `params` (before finalize): what plan_network does per
// layer, and what a layer made alone (nn.h's make_conv2d, make_linear, make_norm) does.
// `classifier`: the output layer (initialized with std 1/sqrt(in) instead of Kaiming's ReLU gain).
ConvPlan plan_conv(ParamStore& params, const std::string& name, const ConvSpec& spec);
LinearPlan plan_linear(ParamStore& params, const std::string& name, std::int64_t in, std::int64_t out, bool bias,
                       bool classifier);
NormPlan plan_norm(ParamStore& params, const std::string& name, std::int64_t channels, const NormSpec& spec,
                   bool relu);
BlockPlan plan_block(ParamStore& params, const std::string& name, std::int64_t in, std::int64_t out,
                     std::int64_t stride, const NormSpec& spec);

}  // namespace syncbn
