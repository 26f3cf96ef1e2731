// Layers for the trainer (CPU): the module interface, the flat parameter store, and the context.
//
// Invariants:
//  - Activations are (N, C, H, W) logical tensors stored channels-last (NHWC), except the network
//    input, which may be planar; (N, F) for fully connected layers.
//  - forward() assigns its output; backward() assigns dx and ACCUMULATES (+=) parameter gradients, so
//    gradient accumulation over micro-batches is just several backward() calls before a step.
//  - Parameters and their gradients live in one flat ParamStore (OIHW for conv weights, (out, in) for
//    linear weights): the gradient all-reduce sends a few large contiguous buckets, and the optimizer,
//    checkpoints and ranks see one canonical layout whatever format oneDNN computes in.
#pragma once

#include <dnnl.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "syncbn/net_plan.h"
#include "syncbn/norm_spec.h"
#include "syncbn/param_store.h"
#include "syncbn/sync_batchnorm.h"
#include "syncbn/tensor.h"

namespace syncbn {

// What the layers need at run time: the oneDNN engine/stream for this rank (explicit, no globals).
struct CpuContext {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  // --precision bf16: convolutions and linear layers compute on bf16 copies of their inputs and weights
  // (fp32 accumulation and weight gradients); the parameters stay fp32. The activations between a
  // convolution and a fused BN+pool, and between that and the next convolution, are bf16 tensors (and
  // their gradients; build_network decides); the rest stay fp32.
  bool bf16 = false;
};


// ---- modules ---------------------------------------------------------------------------------------

class Module {
 public:
  virtual ~Module() = default;
  virtual void forward(const Tensor& x, Tensor& y, bool training) = 0;
  // dx may be null when the input gradient is not needed (the network input).
  virtual void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx) = 0;
  virtual void buffers(std::vector<BufferRef>& out) { (void)out; }
  // SyncBN layers inside (for communication timing and eval-time statistics); none by default.
  virtual void sync_bns(std::vector<SyncBatchNorm*>& out) { (void)out; }
  virtual std::string describe() const = 0;
};

using ModulePtr = std::unique_ptr<Module>;

// Layers in order, keeping each output for backward.
class Sequential : public Module {
 public:
  void add(ModulePtr m) { modules_.push_back(std::move(m)); }
  void forward(const Tensor& x, Tensor& y, bool training) override;
  void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx) override;
  void buffers(std::vector<BufferRef>& out) override;
  void sync_bns(std::vector<SyncBatchNorm*>& out) override;
  std::string describe() const override;
  const std::vector<ModulePtr>& modules() const { return modules_; }
  // Called by backward() after modules()[k]'s backward with k (descending): that module's parameter
  // gradients are final for this backward, so the model can start their all-reduce (grad_buckets.h).
  void set_backward_hook(std::function<void(std::size_t)> hook) { hook_ = std::move(hook); }

 private:
  std::vector<ModulePtr> modules_;
  std::function<void(std::size_t)> hook_;
  std::vector<Tensor> acts_;   // acts_[i] = output of modules_[i] (the last is copied to y)
  Tensor grad_a_, grad_b_;     // ping-pong gradient buffers
};

// Convolution (oneDNN), k×k, stride s, padding p, optional bias (ConvSpec, net_plan.h). Input NHWC (or
// planar for the network input), output NHWC.
// The layer of a plan (its parameters already registered, net_plan.h); the named overloads register them
// first (plan_conv, plan_linear, plan_norm, plan_block), for a layer made alone.
// `bf16_out` (with ctx.bf16): write the output in bf16 (for a fused BN+pool, the one layer reading it).
// Any convolution reads an fp32 or a bf16 input (bf16: ctx.bf16, not an im2col layer, conv2d_reads_bf16)
// and gives dx its input's dtype; its dy has its output's.
ModulePtr make_conv2d(const ConvPlan& plan, ParamStore& store, CpuContext& ctx, bool bf16_out = false);
bool conv2d_reads_bf16(const ConvSpec& spec);
ModulePtr make_conv2d(const std::string& name, const ConvSpec& spec, ParamStore& store, CpuContext& ctx);

// y = x·Wᵀ + b for x (N, in) (or any (N, ...) flattened), W (out, in): oneDNN's sgemm. `classifier`: the
// output layer (initialized with std 1/sqrt(in) instead of Kaiming's ReLU gain).
ModulePtr make_linear(const LinearPlan& plan, ParamStore& store, CpuContext* ctx = nullptr);  // ctx: bf16 (none: fp32)
ModulePtr make_linear(const std::string& name, std::int64_t in, std::int64_t out, bool bias, bool classifier,
                      ParamStore& store);

ModulePtr make_relu();
// k×k max pooling, stride k (floor), NHWC.
ModulePtr make_maxpool(std::int64_t k);
// (N, C, H, W) → (N, C): mean over H·W.
ModulePtr make_global_avgpool();
// (N, C, H, W) NHWC → (N, H·W·C) as the features of a linear layer (no copy of data semantics: NHWC order).
ModulePtr make_flatten();

// The normalization slot (norm_spec.h): SyncBatchNorm, GroupNorm or nothing, then ReLU when `relu`
// (fused into the normalization pass). `group`: the BatchNorm layers' sync group, made by the model from
// spec.sync (SyncGroup's constructor is a collective); needed when spec.communicates(), ignored otherwise.
ModulePtr make_norm(const NormPlan& plan, ParamStore& store, SyncGroup* group = nullptr);
ModulePtr make_norm(const std::string& name, std::int64_t channels, const NormSpec& spec, bool relu,
                    ParamStore& store, SyncGroup* group = nullptr);
// A BatchNorm slot (+ReLU) and the k×k max pooling after it as one module (SyncBatchNorm::forward_pool):
// the same numbers, parameters and buffers as make_norm followed by make_maxpool(k), without the
// full-size activation and its gradient (NetPlan: NormPlan::fused_pool). Throws for a non-BatchNorm plan.
// It reads fp32 or bf16 input; `out`: the pooled output's dtype (kBF16 for a next layer that reads bf16).
ModulePtr make_norm_pool(const NormPlan& plan, std::int64_t k, ParamStore& store, SyncGroup* group = nullptr,
                         ElementType out = ElementType::kF32);

// Residual block: conv3x3(s)-norm-relu-conv3x3-norm, plus the shortcut (identity, or 1x1 conv(s)-norm
// when the shape changes), then ReLU. `group` as for make_norm.
ModulePtr make_residual_block(const BlockPlan& plan, ParamStore& store, CpuContext& ctx, SyncGroup* group = nullptr);
ModulePtr make_residual_block(const std::string& name, std::int64_t in, std::int64_t out, std::int64_t stride,
                              const NormSpec& norm, ParamStore& store, CpuContext& ctx, SyncGroup* group = nullptr);

// Softmax cross-entropy over logits (N, K): returns Σ loss over the N samples (double), counts correct
// predictions, and writes dlogits = (softmax − onehot) · grad_scale.
double softmax_cross_entropy(const Tensor& logits, const std::int32_t* labels, float grad_scale, Tensor& dlogits,
                             std::int64_t* correct);

}  // namespace syncbn
