// Softmax cross-entropy of the GPU model: per-sample loss, correctness and the logits' gradient, then the
// batch's Σ loss and #correct added to two device doubles — the values the loop reads once per
// micro-batch (the only device → host transfer of a step besides the end-of-step status).
//
// Two kernels: one thread per sample (K is the number of classes, 10 here: a warp per sample would idle),
// writing loss and correctness to a per-sample scratch; then ONE block sums the scratch in a fixed order
// (strided per-thread sums, then block_sum2), so the sums are deterministic. The per-sample arithmetic is
// the CPU's (src/nn/module.cpp, train_thread.h): log-sum-exp around the max in double, the first maximum
// is the prediction, dz = (softmax − onehot)·grad_scale, times the fp16 loss scale when there is one (read
// from device memory in stream order: no host synchronisation).
#include "train_launch.cuh"

namespace syncbn::cuda::train {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_kernel(const T* __restrict__ z, std::int64_t N, std::int64_t K, const std::int32_t* __restrict__ labels,
                         float grad_scale, const LossScaleState* __restrict__ scale, T* __restrict__ dz,
                         double* __restrict__ per_sample, int* __restrict__ status) {
  const double factor = static_cast<double>(grad_scale) * (scale ? static_cast<double>(scale->scale) : 1.0);
  for (std::int64_t n = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int32_t label = labels[n];
    if (label < 0 || label >= K) {
      if (atomicCAS(status, 0, 1) == 0) {  // the first bad label of the step is reported
        status[1] = label;
        status[2] = static_cast<int>(n);
      }
      per_sample[2 * n] = 0;
      per_sample[2 * n + 1] = 0;
      if (dz)
        for (std::int64_t k = 0; k < K; ++k) from_float(0.0f, &dz[n * K + k]);
      continue;
    }
    std::int64_t arg = 0;
    per_sample[2 * n] = cross_entropy_sample(z + n * K, K, label, factor, dz ? dz + n * K : nullptr, &arg);
    per_sample[2 * n + 1] = arg == label ? 1.0 : 0.0;
  }
}

__global__ void __launch_bounds__(kThreads)
    cross_entropy_sum_kernel(const double* __restrict__ per_sample, std::int64_t N, double* __restrict__ acc) {
  double loss = 0, correct = 0;
  for (std::int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    loss += per_sample[2 * n];
    correct += per_sample[2 * n + 1];
  }
  detail::block_sum2(loss, correct);
  if (threadIdx.x == 0) {
    acc[0] += loss;
    acc[1] += correct;
  }
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void cross_entropy(const void* logits, DType dtype, std::int64_t N, std::int64_t K, const std::int32_t* labels,
                   float grad_scale, const LossScaleState* scale, void* dlogits, double* per_sample, double* acc,
                   int* status, const Launch& l) {
  SBN_CHECK(K > 0, "cross_entropy: no classes");
  if (N == 0) return;
  detail::with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cross_entropy_kernel<T><<<detail::elementwise_blocks(N, l), kThreads, 0, l.stream>>>(
        static_cast<const T*>(logits), N, K, labels, grad_scale, scale, static_cast<T*>(dlogits), per_sample, status);
  });
  SBN_CUDA_LAUNCH_CHECK(std::string("cross_entropy ") + dtype_name(dtype));
  cross_entropy_sum_kernel<<<1, kThreads, 0, l.stream>>>(per_sample, N, acc);
  SBN_CUDA_LAUNCH_CHECK("cross_entropy (batch sums)");
}

}  // namespace syncbn::cuda::train
