// The CPU model: the network plan of net_plan.h (convnet, resnet) built as oneDNN layers and our CPU SyncBN
// kernels over one flat ParamStore.
#pragma once

#include <memory>
#include <string>

#include "syncbn/net_plan.h"
#include "syncbn/nn.h"

namespace syncbn {

struct Model {
  ParamStore params;
  NetPlan plan;  // what was built (the same plan the GPU model builds for the spec)
  std::unique_ptr<Sequential> net;
  // Names and shapes of every parameter and buffer plus the architecture (NetPlan::signature): two
  // checkpoints/runs are compatible iff their signatures are equal.
  std::string signature;
  std::vector<SyncBatchNorm*> bns;  // every SyncBatchNorm in the net (timing, eval statistics)
  std::vector<BufferRef> buffers;   // every non-parameter state array (checkpoints), as plan.buffers
};

// The layers of a plan over its parameter store (the plan's parameters, registered and finalized).
struct Network {
  std::unique_ptr<Sequential> net;
  std::vector<SyncBatchNorm*> bns;  // every SyncBatchNorm in the net (timing, eval statistics)
  std::vector<BufferRef> buffers;   // every non-parameter state array (checkpoints), as plan.buffers
};
Network build_network(const NetPlan& plan, ParamStore& params, CpuContext& ctx, SyncGroup* group);

// Plans spec's network, builds its layers and initializes the parameters from `seed`. `group`: the
// BatchNorm layers' sync group, needed when spec.norm.communicates() (the caller makes it from
// spec.norm.sync).
std::unique_ptr<Model> build_model(const ModelSpec& spec, CpuContext& ctx, std::uint64_t seed,
                                   SyncGroup* group = nullptr);

// The CPU layer of one op of a plan (parameters already registered; the store finalized before the first
// forward). `group` as for build_model.
ModulePtr make_module(const OpPlan& op, ParamStore& store, CpuContext& ctx, SyncGroup* group);

}  // namespace syncbn
