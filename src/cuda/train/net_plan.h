// The GPU model's network as a host-side plan: the architecture of model.h (convnet, resnet) layer by
// layer, each parameter resolved to its slot in the flat ParamStore that build_model() registered for the
// same spec. No CUDA here: the plan is built and checked on the CPU (tests/gpu/test_gpu_train.cpp), and
// the device layers are then made from it (src/cuda/train/network.cpp).
//
// Why a plan over the CPU model's ParamStore instead of a second registration: the GPU model must have
// the SAME parameter names, shapes, order, offsets and initial values as the CPU model for a given spec
// and seed, so that signatures, checkpoints and runs move between devices. The store build_model()
// makes is that definition; plan_network() walks the same architecture and claims every parameter by
// name and shape, and fails if one is missing, misshapen or left unclaimed (model.cpp and this file
// drifted apart) — a failure at start-up and in the unit tests, never a silently different model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "syncbn/model.h"

namespace syncbn::cuda::train {

// Where a parameter lives in the flat store (floats); index −1: absent (e.g. no bias).
struct ParamSlot {
  int index = -1;
  std::int64_t offset = 0;
  std::int64_t size = 0;
  bool present() const { return index >= 0; }
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
  std::string name;   // "conv1.bn": BN buffers are "<name>.running_mean", ".running_var", ".pivot", ...
  NormKind kind = NormKind::kBatchNorm;  // kNone: ReLU or identity
  SyncMode sync;      // kBatchNorm: local, or synced over the model's sync group (sync, sync:K)
  std::int64_t channels = 0;
  bool relu = false;  // fused ReLU after the norm
  ParamSlot gamma, beta;
  std::int64_t groups = 0;  // groupnorm
  bool batchnorm() const { return kind == NormKind::kBatchNorm; }
  bool synced() const { return batchnorm() && sync.kind != SyncMode::kLocal; }
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

struct NetPlan {
  std::string arch;
  std::vector<OpPlan> ops;  // in forward order
  // The CPU model's describe() text for the same network: "conv3x3(1->32) -> bn[sync]+relu -> ...".
  // bn_mode: what the synced BatchNorm layers print (NormSpec::str(): "sync", "sync:2"); local ones
  // print "local".
  std::string describe(const std::string& bn_mode) const;
};

// Plans spec's network over `params` (from build_model(spec, ...)); throws as described above.
NetPlan plan_network(const ModelSpec& spec, const ParamStore& params);

// Every norm layer of the plan in forward order (residual blocks: n1, n2, shortcut norm).
std::vector<const NormPlan*> norm_layers(const NetPlan& plan);

}  // namespace syncbn::cuda::train
