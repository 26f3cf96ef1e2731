// The optimizer step of the GPU model on the flat fp32 arrays (values, grads, momentum, per-element weight
// decay: the ParamStore layout), fp16 loss scaling, and the BatchNorm parameter links.
//
//  - sgd_step: one fused pass = unscale (fp16) + weight decay + momentum + Nesterov update + zero the
//    gradient (train_thread.h: optimizer.cpp's formulas operation for operation). Reads 4 and writes 3
//    floats per parameter; grid-stride over ≤ 8 blocks per SM.
//  - grad_check / step_finish / bn_state_save / bn_state_restore: the step check on the all-reduced
//    gradients (step_check.h), the verdict and the fp16 scale update (loss_scale.h), and the BatchNorm
//    running state kept only by committed steps, all on the device: a step is skipped by the kernels'
//    predicates, not by the host, which learns the verdict at the step's one wait (check()).
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
               std::int64_t n, float mu, float lr, const float* __restrict__ lr_dev, bool nesterov,
               const LossScaleState* __restrict__ scale, const GradCheck* __restrict__ check) {
  const bool skip = !step_commits(*check);
  if (lr_dev) lr = *lr_dev;  // a captured step's learning rate, set per replay
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
    grad_check_kernel(const float* __restrict__ grad, std::int64_t n, GradCheck* __restrict__ check) {
  const std::int64_t start = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  unsigned long long first = grad_first_bad(grad, n, start, static_cast<std::int64_t>(gridDim.x) * blockDim.x);
  // Every thread of the block gets here (blockDim is a multiple of 32): a full-warp vote, and only a warp
  // that found something pays for the minimum and the atomic.
  if (!__any_sync(0xffffffffu, first != kNoBadGradient)) return;
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_down_sync(0xffffffffu, first, o);
    first = other < first ? other : first;
  }
  if ((threadIdx.x & 31) == 0) atomicMin(&check->first_bad, first);
}

__global__ void step_finish_kernel(GradCheck* check, LossScaleState* scale, const LossScaleConfig config) {
  step_finish(check, scale, config);
}

// One block per layer: elements [0, C] (C: the counter).
__global__ void __launch_bounds__(kThreads) bn_state_save_kernel(const BnStateLink* __restrict__ links) {
  const BnStateLink k = links[blockIdx.x];
  for (std::int64_t i = threadIdx.x; i <= k.channels; i += blockDim.x) bn_state_save_element(k, i);
}

__global__ void __launch_bounds__(kThreads)
    bn_state_restore_kernel(const BnStateLink* __restrict__ links, const GradCheck* __restrict__ check) {
  const BnStateLink k = links[blockIdx.x];
  const GradCheck c = *check;
  for (std::int64_t i = threadIdx.x; i <= k.channels; i += blockDim.x) bn_state_restore_element(k, i, c);
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

void grad_check(const float* grad, std::int64_t n, GradCheck* check, const Launch& l) {
  if (n == 0) return;
  grad_check_kernel<<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(grad, n, check);
  SBN_CUDA_LAUNCH_CHECK("grad_check");
}

void sgd_step(float* w, float* grad, float* buf, const float* decay, std::int64_t n, float momentum, float lr,
              bool nesterov, const LossScaleState* scale, const GradCheck* check, const Launch& l,
              const float* lr_dev) {
  if (n == 0) return;
  sgd_kernel<<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(w, grad, buf, decay, n, momentum, lr, lr_dev,
                                                                          nesterov, scale, check);
  SBN_CUDA_LAUNCH_CHECK("sgd_step");
}

void step_finish_launch(GradCheck* check, LossScaleState* scale, const LossScaleConfig& config, const Launch& l) {
  step_finish_kernel<<<1, 1, 0, l.stream>>>(check, scale, config);
  SBN_CUDA_LAUNCH_CHECK("step_finish");
}

void bn_state_save(const BnStateLink* links, int count, const Launch& l) {
  if (count == 0) return;
  bn_state_save_kernel<<<static_cast<unsigned>(count), kThreads, 0, l.stream>>>(links);
  SBN_CUDA_LAUNCH_CHECK("bn_state_save");
}

void bn_state_restore(const BnStateLink* links, int count, const GradCheck* check, const Launch& l) {
  if (count == 0) return;
  bn_state_restore_kernel<<<static_cast<unsigned>(count), kThreads, 0, l.stream>>>(links, check);
  SBN_CUDA_LAUNCH_CHECK("bn_state_restore");
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
