// Launchers of the GPU model's own kernels (src/cuda/train/*.cu): everything the network needs besides
// cuDNN (convolutions), cuBLAS (fully connected GEMMs) and CudaSyncBatchNorm (BatchNorm).
//
// Conventions (as bn_kernels.h):
//  - every pointer is device memory; every launcher enqueues on `l.stream` and returns (no host
//    synchronisation); every launch is checked (cudaGetLastError) and throws syncbn::Error naming it;
//  - activations are fp32, bf16 or fp16 (`dtype`), NHWC for 4-d tensors; parameters and gradients fp32;
//  - parameter gradients are accumulated (+=), activations and input gradients assigned;
//  - empty tensors are fine (nothing is launched), so a rank with no samples runs the same code;
//  - reductions are deterministic (fixed order, no floating-point atomics): same device, same shapes →
//    bit-identical results run to run.
// What one thread computes is in train_thread.h (host+device, tested on the CPU).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "syncbn/cuda/device.h"
#include "syncbn/cuda/dtype.h"
#include "loss_scale.h"
#include "step_check.h"
#include "train_thread.h"

namespace syncbn::cuda::train {

// Where and how wide to launch: the step's stream and the device's multiprocessors (grid sizes).
struct Launch {
  cudaStream_t stream = nullptr;
  int sm_count = 1;
};

// Scratch of the deterministic column reductions (bias and GroupNorm parameter gradients): per-split
// partial sums; grown by the launchers when a shape needs more (growth frees the old buffer, which
// synchronises the device: first step of a shape only).
using ReduceWorkspace = DeviceArray<double>;

// ---- layouts ------------------------------------------------------------------------------------------

// Network input: planar fp32 (N, C, H, W) → NHWC in `dtype`.
void input_to_nhwc(const float* planar, std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                   DType dtype, void* nhwc, const Launch& l);
// Conv weights: canonical OIHW fp32 → cuDNN's NHWC filter layout (O, K, K, I) in `dtype`.
void weights_to_krsc(const float* oihw, std::int64_t out, std::int64_t in, std::int64_t k, DType dtype, void* krsc,
                     const Launch& l);
// Conv weight gradient: grad_oihw += the (O, K, K, I) gradient cuDNN computed in `dtype`.
void accumulate_krsc_grad(const void* krsc, DType dtype, std::int64_t out, std::int64_t in, std::int64_t k,
                          float* grad_oihw, const Launch& l);
// dst = src rounded to `dtype` (fully connected weights for bf16/fp16 GEMMs).
void cast_from_float(const float* src, std::int64_t n, DType dtype, void* dst, const Launch& l);

// ---- activations -----------------------------------------------------------------------------------------

// y = max(x, 0); dx = y > 0 ? dy : 0.
void relu_forward(const void* x, DType dtype, std::int64_t n, void* y, const Launch& l);
void relu_backward(const void* y, const void* dy, DType dtype, std::int64_t n, void* dx, const Launch& l);
// The residual join: y = max(a + b, 0).
void add_relu_forward(const void* a, const void* b, DType dtype, std::int64_t n, void* y, const Launch& l);
// out = a + b (fp32 sum, rounded once).
void add_tensors(const void* a, const void* b, DType dtype, std::int64_t n, void* out, const Launch& l);

// ---- bias ------------------------------------------------------------------------------------------------

// y (rows, C) += bias (C).
void add_bias(void* y, DType dtype, std::int64_t rows, std::int64_t C, const float* bias, const Launch& l);
// grad (C) += Σ over rows of dy (rows, C).
void bias_grad(const void* dy, DType dtype, std::int64_t rows, std::int64_t C, float* grad, ReduceWorkspace& ws,
               const Launch& l);

// ---- pooling ---------------------------------------------------------------------------------------------

// 2×2 max pooling, stride 2 (floor); arg (N, Ho, Wo, C) keeps each maximum's position in its window.
void maxpool2x2_forward(const void* x, DType dtype, const PoolGeom& g, void* y, std::uint8_t* arg, const Launch& l);
void maxpool2x2_backward(const void* dy, const std::uint8_t* arg, DType dtype, const PoolGeom& g, void* dx,
                         const Launch& l);
// (N, S, C) → (N, C) mean over the S positions, and its gradient.
void avgpool_forward(const void* x, DType dtype, std::int64_t N, std::int64_t S, std::int64_t C, void* y,
                     const Launch& l);
void avgpool_backward(const void* dy, DType dtype, std::int64_t N, std::int64_t S, std::int64_t C, void* dx,
                      const Launch& l);

// ---- GroupNorm -------------------------------------------------------------------------------------------

// A GroupNorm layer's device scratch (the caller sizes it for the batch): mean/invstd (N·G) go from
// forward to backward; the per-(n, c) sums and coefficients (N·C) are rewritten by each pass.
struct GnBuffers {
  double* mean = nullptr;    // (N·G)
  double* invstd = nullptr;  // (N·G)
  double* sum_a = nullptr;   // (N·C)
  double* sum_b = nullptr;   // (N·C)
  float* ca = nullptr;       // (N·C)
  float* cb = nullptr;       // (N·C)
  float* cd = nullptr;       // (N·C)
};

// y = GN(x)·γ + β (then ReLU), the CPU layer's decomposition (train_thread.h).
void group_norm_forward(const void* x, DType dtype, const GnGeom& q, const float* gamma, const float* beta, double eps,
                        bool relu, void* y, const GnBuffers& buf, ReduceWorkspace& ws, const Launch& l);
// dx (skipped when null) and dγ/dβ += (fp32, accumulated); y is the forward's output (the ReLU gate).
void group_norm_backward(const void* x, const void* y, const void* dy, DType dtype, const GnGeom& q, const float* gamma,
                         bool relu, void* dx, float* dgamma, float* dbeta, const GnBuffers& buf, ReduceWorkspace& ws,
                         const Launch& l);

// ---- loss ------------------------------------------------------------------------------------------------

// Softmax cross-entropy of logits (N, K) against labels (N): acc[0] += Σ loss, acc[1] += #correct (both
// double, summed in a fixed order). When dlogits is not null it receives (softmax − onehot)·grad_scale·S,
// S the current loss scale (*scale when not null, else 1). A label outside [0, K) records
// status[0] = 1, status[1] = the label, status[2] = the sample (first one only) and contributes nothing.
// per_sample: scratch of 2·N doubles.
void cross_entropy(const void* logits, DType dtype, std::int64_t N, std::int64_t K, const std::int32_t* labels,
                   float grad_scale, const LossScaleState* scale, void* dlogits, double* per_sample, double* acc,
                   int* status, const Launch& l);

// ---- optimizer -------------------------------------------------------------------------------------------

// The step check (step_check.h), in stream order after the gradient all-reduce:
// check->first_bad = min(check->first_bad, the first index of an inf/NaN in grad[0, n)); the caller
// resets *check (all bits set) before.
void grad_check(const float* grad, std::int64_t n, GradCheck* check, const Launch& l);
// SGD over the flat arrays (sgd_element) when step_commits(*check), then grad = 0 in any case. With a
// loss scale: gradients × 1/S. lr_dev (not null): the learning rate is read from there on the device (a
// captured step's, changed per replay), `lr` ignored.
void sgd_step(float* w, float* grad, float* buf, const float* decay, std::int64_t n, float momentum, float lr,
              bool nesterov, const LossScaleState* scale, const GradCheck* check, const Launch& l,
              const float* lr_dev = nullptr);
// step_finish on the device (one thread): the verdict, and the loss-scale update when scale is not null.
void step_finish_launch(GradCheck* check, LossScaleState* scale, const LossScaleConfig& config, const Launch& l);

// ---- BatchNorm parameters --------------------------------------------------------------------------------

// A CudaSyncBatchNorm's γ/β (and their local gradients) and where they live in the flat parameter store.
struct BnParamLink {
  float* gamma = nullptr;
  float* beta = nullptr;
  float* dgamma = nullptr;
  float* dbeta = nullptr;
  std::int64_t gamma_offset = 0, beta_offset = 0, channels = 0;
};
// Every layer's γ/β = values at its offsets (after an optimizer step or a load). links: device array.
void bn_params_scatter(const BnParamLink* links, int count, const float* values, const Launch& l);
// grads at the offsets += every layer's dγ/dβ, which are then zeroed (before the gradient all-reduce).
void bn_grads_gather(const BnParamLink* links, int count, float* grads, const Launch& l);
// Every layer's running statistics, pivot and counter into their copies (the step's first forward).
void bn_state_save(const BnStateLink* links, int count, const Launch& l);
// ... and back from the copies unless step_commits(*check) (after grad_check).
void bn_state_restore(const BnStateLink* links, int count, const GradCheck* check, const Launch& l);

}  // namespace syncbn::cuda::train
