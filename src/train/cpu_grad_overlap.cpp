// The CPU model's gradient all-reduce overlapping the backward (cpu_grad_overlap.h).
#include "cpu_grad_overlap.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "syncbn/bench_util.h"
#include "syncbn/error.h"

namespace syncbn {
namespace {

// Every bucket is small (256 KB; the first, holding the classifier whose gradients come first, too), so
// that each starts soon after its layers finish and the one left for the end of the backward is small.
// Measured on the convnet at np = 2 (6 buckets): the exposed all-reduce fell from 0.83 to 0.38 ms per
// step; 1 MB buckets (3) left 0.5 ms exposed.
constexpr std::int64_t kFirstBucketFloats = (std::int64_t{256} << 10) / sizeof(float);
constexpr std::int64_t kBucketFloats = (std::int64_t{256} << 10) / sizeof(float);

void add_slot(const ParamSlot& s, std::vector<std::int64_t>& out) {
  if (s.present()) out.push_back(s.offset);
}

void add_conv(const ConvPlan& c, std::vector<std::int64_t>& out) {
  add_slot(c.weight, out);
  add_slot(c.bias, out);
}

void add_norm(const NormPlan& n, std::vector<std::int64_t>& out) {
  add_slot(n.gamma, out);
  add_slot(n.beta, out);
}

// The parameters of one op of the plan.
void op_params(const OpPlan& op, std::vector<std::int64_t>& out) {
  switch (op.kind) {
    case OpKind::kConv: add_conv(op.conv, out); break;
    case OpKind::kNorm: add_norm(op.norm, out); break;
    case OpKind::kLinear:
      add_slot(op.linear.weight, out);
      add_slot(op.linear.bias, out);
      break;
    case OpKind::kBlock:
      add_conv(op.block.conv1, out);
      add_conv(op.block.conv2, out);
      add_norm(op.block.n1, out);
      add_norm(op.block.n2, out);
      if (op.block.shortcut) {
        add_conv(op.block.sc_conv, out);
        add_norm(op.block.sc_norm, out);
      }
      break;
    default: break;  // pooling, flatten: no parameters
  }
}

}  // namespace

bool cpu_grad_overlap_enabled(bool fp64_grads, int world_size) {
  const char* env = std::getenv("SBN_GRAD_OVERLAP");
  return !fp64_grads && world_size > 1 && !(env && std::strcmp(env, "0") == 0);
}

CpuGradOverlap::CpuGradOverlap(const NetPlan& plan, std::size_t modules, const ParamStore& params, float* grads,
                               Communicator& comm)
    : comm_(comm),
      grads_(grads),
      schedule_(
          [&] {
            std::vector<std::pair<std::int64_t, std::int64_t>> spans;
            for (const ParamInfo& p : params.all()) spans.emplace_back(p.offset, p.size);
            return spans;
          }(),
          reverse_buckets(params.total(), kFirstBucketFloats, kBucketFloats)) {
  // The modules of build_network (src/nn/model.cpp): one per op, except a BatchNorm with a fused pool,
  // which is one module for the norm op and the pool op after it.
  for (std::size_t i = 0; i < plan.ops.size(); ++i) {
    module_params_.emplace_back();
    op_params(plan.ops[i], module_params_.back());
    if (plan.ops[i].kind == OpKind::kNorm && plan.ops[i].norm.fused_pool > 0) ++i;
  }
  SBN_CHECK(module_params_.size() == modules, "gradient overlap: the plan gives " +
                                                  std::to_string(module_params_.size()) + " modules, the network has " +
                                                  std::to_string(modules) + " (src/nn/model.cpp changed?)");
}

void CpuGradOverlap::start(const std::vector<int>& ids) {
  for (int id : ids) {
    const GradBucket& b = schedule_.buckets()[static_cast<std::size_t>(id)];
    requests_.push_back(comm_.start_allreduce_sum(grads_ + b.offset, static_cast<std::size_t>(b.count),
                                                  "gradient bucket"));
  }
}

void CpuGradOverlap::module_done(std::size_t k) {
  if (!armed_) return;
  const double t0 = now_seconds();
  for (std::int64_t off : module_params_[k]) schedule_.complete(off);
  start(schedule_.take_ready());
  // MPI progresses non-blocking collectives only inside MPI calls: one test per module boundary moves
  // every started bucket on (the progress engine serves them all), in order, until one is still open.
  while (tested_ < requests_.size() && comm_.test(requests_[tested_])) ++tested_;
  seconds_ += now_seconds() - t0;
}

double CpuGradOverlap::finish(Communicator& comm) {
  SBN_CHECK(&comm == &comm_, "gradient overlap: reduce_and_update got another communicator than the model's");
  const double t0 = now_seconds();
  start(schedule_.take_rest());
  for (Communicator::Request r : requests_) comm_.wait(r);
  const double seconds = seconds_ + now_seconds() - t0;
  requests_.clear();
  tested_ = 0;
  seconds_ = 0;
  armed_ = false;
  schedule_.reset();
  return seconds;
}

}  // namespace syncbn
