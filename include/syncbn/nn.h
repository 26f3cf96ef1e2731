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
#include <memory>
#include <string>
#include <vector>

#include "syncbn/norm_spec.h"
#include "syncbn/sync_batchnorm.h"
#include "syncbn/tensor.h"

namespace syncbn {

// What the layers need at run time: the oneDNN engine/stream for this rank (explicit, no globals).
struct CpuContext {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};

// ---- parameters ------------------------------------------------------------------------------------

// How a parameter starts (init_params): Kaiming-normal weights (fan-in, ReLU gain), the classifier's
// weights with std 1/sqrt(fan-in), ones (norm scales), zeros (biases, norm shifts).
enum class ParamInit { kKaiming, kClassifier, kOnes, kZeros };

struct ParamInfo {
  std::string name;                 // "conv1.weight"
  std::vector<std::int64_t> shape;  // canonical shape (OIHW, (out, in), (C))
  std::int64_t offset = 0;          // into the flat arrays
  std::int64_t size = 0;
  bool decay = true;                // weight decay applies (off by default for norm params and biases)
  ParamInit init = ParamInit::kZeros;
  std::int64_t fan_in = 1;          // for the random inits
};

class ParamStore {
 public:
  // Registers a parameter before finalize(); returns its index. fan_in: inputs per output (random inits).
  int add(const std::string& name, const std::vector<std::int64_t>& shape, bool decay, ParamInit init,
          std::int64_t fan_in = 1);
  // Allocates values and gradients (zeros). No add() afterwards.
  void finalize();
  float* value(int id) { return values_.data() + params_[static_cast<std::size_t>(id)].offset; }
  float* grad(int id) { return grads_.data() + params_[static_cast<std::size_t>(id)].offset; }
  const ParamInfo& info(int id) const { return params_[static_cast<std::size_t>(id)]; }
  const std::vector<ParamInfo>& all() const { return params_; }
  std::vector<float>& values() { return values_; }
  std::vector<float>& grads() { return grads_; }
  std::int64_t total() const { return total_; }
  void zero_grads();
  // The flat index of the first NaN/Inf in grads() (the parameter order is the offset order, so it lies
  // in the first parameter with a non-finite gradient), or -1: the step check on the reduced gradients.
  std::int64_t first_nonfinite_grad() const;
  // The parameter holding flat element `index`, or -1 (out of range, or alignment padding).
  int param_at(std::int64_t index) const;

  // --grad-accum fp64: layers accumulate parameter gradients in double (grads64) instead of float. A
  // float sum's rounding depends on how the samples were split over ranks (and BN networks amplify
  // 1e-7 differences chaotically); with products of floats summed in double, world sizes differ only
  // by double rounding, which the final cast to float removes (README "World-size invariance").
  void enable_fp64_grads();
  bool fp64_grads() const { return fp64_; }
  double* grad64(int id) { return grads64_.data() + params_[static_cast<std::size_t>(id)].offset; }
  std::vector<double>& grads64() { return grads64_; }
  // Sets every parameter from its ParamInit, deterministically from the seed (a platform-independent
  // generator: the same seed gives the same model on every machine and rank).
  void init_params(std::uint64_t seed);

 private:
  std::vector<ParamInfo> params_;
  std::vector<float> values_, grads_;
  std::vector<double> grads64_;
  std::int64_t total_ = 0;
  bool final_ = false;
  bool fp64_ = false;
};

// A non-parameter state array saved in checkpoints (running statistics, pivots, counters).
struct BufferRef {
  std::string name;
  float* f32 = nullptr;   // one of f32 / f64 / i64 is set
  double* f64 = nullptr;
  std::int64_t* i64 = nullptr;
  std::int64_t size = 0;
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

 private:
  std::vector<ModulePtr> modules_;
  std::vector<Tensor> acts_;   // acts_[i] = output of modules_[i] (the last is copied to y)
  Tensor grad_a_, grad_b_;     // ping-pong gradient buffers
};

// Convolution (oneDNN), k×k, stride s, padding p, optional bias. Input NHWC (or planar for the network
// input), output NHWC.
struct ConvSpec {
  std::int64_t in = 0, out = 0, kernel = 3, stride = 1, pad = 1;
  bool bias = false;
};
ModulePtr make_conv2d(const std::string& name, const ConvSpec& spec, ParamStore& store, CpuContext& ctx);

// y = x·Wᵀ + b for x (N, in) (or any (N, ...) flattened), W (out, in): oneDNN's sgemm. `classifier`: the
// output layer (initialized with std 1/sqrt(in) instead of Kaiming's ReLU gain).
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
ModulePtr make_norm(const std::string& name, std::int64_t channels, const NormSpec& spec, bool relu,
                    ParamStore& store, SyncGroup* group = nullptr);

// Residual block: conv3x3(s)-norm-relu-conv3x3-norm, plus the shortcut (identity, or 1x1 conv(s)-norm
// when the shape changes), then ReLU. `group` as for make_norm.
ModulePtr make_residual_block(const std::string& name, std::int64_t in, std::int64_t out, std::int64_t stride,
                              const NormSpec& norm, ParamStore& store, CpuContext& ctx, SyncGroup* group = nullptr);

// Softmax cross-entropy over logits (N, K): returns Σ loss over the N samples (double), counts correct
// predictions, and writes dlogits = (softmax − onehot) · grad_scale.
double softmax_cross_entropy(const Tensor& logits, const std::int32_t* labels, float grad_scale, Tensor& dlogits,
                             std::int64_t* correct);

}  // namespace syncbn
