// The optimizer step of the GPU model on the flat fp32 arrays (values, grads, momentum, per-element weight
// decay: the ParamStore layout), fp16 loss scaling, and the BatchNorm parameter links.
//
//  - sgd_step: one fused pass = unscale (fp16) + weight decay + momentum + Nesterov update + zero the
//    gradient (train_thread.h: optimizer.cpp's formulas operation for operation). Reads 4 and writes 3
//    floats per parameter; grid-stride over ≤ 8 blocks per SM.
//  - find_nonfinite / loss_scale_step: the overflow check on the all-reduced gradients and the scale
//    update (loss_scale.h), all on the device: the step is skipped by the kernel, not by the host.
//  - bn_params_scatter / bn_grads_gather: CudaSyncBatchNorm keeps γ/β and their gradients in its own
//    arrays; these copy all layers' γ/β from the store after an update and add all layers' local
//    gradients into the store before the all-reduce, in one launch each (one block per layer) instead of
//    four small copies per layer and step.
#include <cmath>

#include "train_launch.cuh"

namespace syncbn::cuda::train {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    sgd_kernel(float* __restrict__ w, float* __restrict__ grad, float* __restrict__ buf, const float* __restrict__ decay,
               std::int64_t n, float mu, float lr, bool nesterov, const LossScaleState* __restrict__ scale) {
  const bool skip = scale && scale->found_inf;
  const float unscale = scale ? 1.0f / scale->scale : 1.0f;  // S is a power of two: exact
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    if (skip) {
      grad[e] = 0.0f;
    } else {
      sgd_element(&w[e], &grad[e], &buf[e], decay[e], mu, lr, nesterov, unscale);
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    nonfinite_kernel(const float* __restrict__ grad, std::int64_t n, LossScaleState* __restrict__ scale) {
  bool bad = false;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    bad |= !isfinite(grad[e]);
  if (__any_sync(0xffffffffu, bad) && (threadIdx.x & 31) == 0) scale->found_inf = 1;  // same value: benign
}

__global__ void loss_scale_kernel(LossScaleState* scale, const LossScaleConfig config) {
  loss_scale_update(scale, config);
}

__global__ void __launch_bounds__(kThreads) bn_scatter_kernel(const BnParamLink* __restrict__ links, const float* __restrict__ values) {
  const BnParamLink k = links[blockIdx.x];
  for (std::int64_t c = threadIdx.x; c < k.channels; c += blockDim.x) {
    k.gamma[c] = values[k.gamma_offset + c];
    k.beta[c] = values[k.beta_offset + c];
  }
}

__global__ void __launch_bounds__(kThreads) bn_gather_kernel(const BnParamLink* __restrict__ links, float* __restrict__ grads) {
  const BnParamLink k = links[blockIdx.x];
  for (std::int64_t c = threadIdx.x; c < k.channels; c += blockDim.x) {
    grads[k.gamma_offset + c] += k.dgamma[c];
    grads[k.beta_offset + c] += k.dbeta[c];
    k.dgamma[c] = 0.0f;
    k.dbeta[c] = 0.0f;
  }
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void sgd_step(float* w, float* grad, float* buf, const float* decay, std::int64_t n, float momentum, float lr,
              bool nesterov, const LossScaleState* scale, const Launch& l) {
  if (n == 0) return;
  sgd_kernel<<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(w, grad, buf, decay, n, momentum, lr, nesterov,
                                                                          scale);
  SBN_CUDA_LAUNCH_CHECK("sgd_step");
}

void find_nonfinite(const float* grad, std::int64_t n, LossScaleState* scale, const Launch& l) {
  if (n == 0) return;
  nonfinite_kernel<<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(grad, n, scale);
  SBN_CUDA_LAUNCH_CHECK("find_nonfinite");
}

void loss_scale_step(LossScaleState* scale, const LossScaleConfig& config, const Launch& l) {
  loss_scale_kernel<<<1, 1, 0, l.stream>>>(scale, config);
  SBN_CUDA_LAUNCH_CHECK("loss_scale_step");
}

void bn_params_scatter(const BnParamLink* links, int count, const float* values, const Launch& l) {
  if (count == 0) return;
  bn_scatter_kernel<<<static_cast<unsigned>(count), kThreads, 0, l.stream>>>(links, values);
  SBN_CUDA_LAUNCH_CHECK("bn_params_scatter");
}

void bn_grads_gather(const BnParamLink* links, int count, float* grads, const Launch& l) {
  if (count == 0) return;
  bn_gather_kernel<<<static_cast<unsigned>(count), kThreads, 0, l.stream>>>(links, grads);
  SBN_CUDA_LAUNCH_CHECK("bn_grads_gather");
}

}  // namespace syncbn::cuda::train
