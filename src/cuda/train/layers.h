// Private to src/cuda/train: the GPU network's layers (made from a NetPlan, net_plan.h).
//
// Invariants (as nn.h for the CPU layers):
//  - Activations are DeviceTensors in the activation dtype: NHWC (N, C, H, W) or (N, F) rows.
//  - forward() returns the layer's output (owned by the layer, or its input itself for the identity
//    layers); the input must stay valid until backward(), which uses it. backward() returns the input
//    gradient (owned by the layer, or dy itself), or null when need_dx is false; it ACCUMULATES (+=)
//    parameter gradients into the flat gradient array, so micro-batches accumulate.
//  - Everything is enqueued on the context's stream; no layer synchronises the host, except when a
//    buffer or the cuDNN workspace grows (cudaFree synchronises the device): the first step of a shape.
//  - A layer with parameters calls grads_done() once its backward has enqueued the last write to their
//    gradients (also with an empty batch): the model's gradient buckets start from there (grad_buckets.h).
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "syncbn/cuda/device.h"
#include "syncbn/cuda/sync_batchnorm.h"
#include "kernels.h"
#include "libs.h"
#include "syncbn/net_plan.h"

namespace syncbn::cuda::train {

// What the layers share: passed explicitly (no globals), owned by the model.
struct NetContext {
  Launch launch;                  // the step's stream and the device's SM count
  cudnnHandle_t cudnn = nullptr;  // bound to launch.stream
  cublasHandle_t cublas = nullptr;
  DType dtype = DType::kF32;      // activations, conv/GEMM inputs and outputs
  float* values = nullptr;        // flat fp32 parameters (device, ParamStore layout)
  float* grads = nullptr;         // flat fp32 gradients
  // Incremented whenever `values` change (optimizer step, load): layers that keep a converted copy of
  // their weights (NHWC filters, bf16/fp16 GEMM operands) refresh it on their next forward.
  std::uint64_t version = 1;
  DeviceBuffer workspace;         // cuDNN workspace shared by every convolution (one runs at a time)
  std::size_t workspace_limit = 0;  // per algorithm, bytes
  ReduceWorkspace reduce_ws;      // column reductions (bias, GroupNorm parameter gradients)
  SyncGroup* bn_group = nullptr;  // the synced BatchNorm modes' group (null: local)
  // Set by the model: the parameters whose gradients a layer's backward has just completed (enqueued);
  // empty: nobody listens.
  std::function<void(std::initializer_list<ParamSlot>)> grads_done;
};

// Tells ctx's listener that the backward has enqueued the last write to these parameters' gradients.
inline void grads_done(NetContext& ctx, std::initializer_list<ParamSlot> slots) {
  if (ctx.grads_done) ctx.grads_done(slots);
}

class BatchNormLayer;

class Layer {
 public:
  virtual ~Layer() = default;
  virtual const DeviceTensor& forward(const DeviceTensor& x, bool training) = 0;
  virtual const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) = 0;
  // The BatchNorm layers inside, in forward order.
  virtual void batchnorms(std::vector<BatchNormLayer*>& out) { (void)out; }
};

// CudaSyncBatchNorm in the network. γ/β and their gradients live in the layer's own device arrays; the
// model copies γ/β in from the flat store after each update and adds the gradients out before the
// all-reduce, for all layers in one launch each (kernels.h, BnParamLink).
class BatchNormLayer final : public Layer {
 public:
  BatchNormLayer(const NormPlan& plan, NetContext& ctx);
  const DeviceTensor& forward(const DeviceTensor& x, bool training) override;
  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override;
  void batchnorms(std::vector<BatchNormLayer*>& out) override { out.push_back(this); }
  CudaSyncBatchNorm& bn() { return bn_; }
  const NormPlan& plan() const { return plan_; }

 private:
  NormPlan plan_;
  NetContext& ctx_;
  CudaSyncBatchNorm bn_;
  const DeviceTensor* x_ = nullptr;
  DeviceTensor y_, dx_;
};

std::unique_ptr<Layer> make_conv(const ConvPlan& plan, NetContext& ctx);        // conv2d.cpp (cuDNN)
std::unique_ptr<Layer> make_linear(const LinearPlan& plan, NetContext& ctx);    // linear.cpp (cuBLAS)
std::unique_ptr<Layer> make_norm(const NormPlan& plan, NetContext& ctx);        // norm.cpp
std::unique_ptr<Layer> make_network(const NetPlan& plan, NetContext& ctx);      // network.cpp

}  // namespace syncbn::cuda::train
