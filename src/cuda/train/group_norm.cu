// GroupNorm (Wu & He 2018) of the GPU model, NHWC (N, S, C) with G groups of Cg = C/G channels, fused
// ReLU optional: the CPU layer's decomposition (src/nn/norm.cpp; train_thread.h has the formulas).
//
//   forward:  per-(n, c) shifted sums over S (column reduction, double) → per-(n, g) statistics and
//             per-(n, c) fp32 coefficients (one thread per group) → y = fma(a, x, b) (elementwise)
//   backward: per-(n, c) Σdy', Σdy'·(x − k) (column reduction) → per-(n, g) input-gradient coefficients
//             and per-(n, c) parameter terms → dγ, dβ += Σ_n terms (column reduction over n)
//             → dx = fma(a, dy', fma(b, x, d)) (elementwise)
// So every element is touched by fp32 FMAs only; statistics are double, in a fixed order (no atomics:
// deterministic). Memory traffic: forward reads x twice and writes y; backward reads x and dy twice and y
// twice (the gate) and writes dx — the same as the CPU layer's passes. GroupNorm never communicates:
// its statistics are per sample.
#include "train_launch.cuh"

namespace syncbn::cuda::train {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

// Column reduction term of step 1: column j = n·C + c, row = position s.
template <class T>
struct ChannelSumsOp {
  const T* x;
  const T* dy;
  const T* y;
  GnGeom q;
  __device__ void operator()(std::int64_t s, std::int64_t j, double* a, double* b) const {
    gn_channel_sums_term(x, dy, y, q, s, j, a, b);
  }
};

// Column reduction of the parameter terms: rows n, columns c of the (N, C) double arrays.
struct ParamTermsOp {
  const double* dgamma_terms;
  const double* dbeta_terms;
  std::int64_t C;
  __device__ void operator()(std::int64_t n, std::int64_t c, double* a, double* b) const {
    *a += dgamma_terms[n * C + c];
    *b += dbeta_terms[n * C + c];
  }
};

template <class T>
__global__ void __launch_bounds__(kThreads)
    gn_group_forward_kernel(const T* __restrict__ x, const GnGeom q, const float* __restrict__ gamma,
                            const float* __restrict__ beta, double eps, GnBuffers buf) {
  const std::int64_t groups = q.N * q.G;
  for (std::int64_t ng = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; ng < groups;
       ng += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    gn_group_forward(x, buf.sum_a, buf.sum_b, gamma, beta, q, ng / q.G, ng % q.G, eps, buf.mean, buf.invstd, buf.ca,
                     buf.cb);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    gn_group_backward_kernel(const T* __restrict__ x, const GnGeom q, const float* __restrict__ gamma, GnBuffers buf) {
  const std::int64_t groups = q.N * q.G;
  for (std::int64_t ng = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; ng < groups;
       ng += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    gn_group_backward(x, buf.sum_a, buf.sum_b, gamma, buf.mean, buf.invstd, q, ng / q.G, ng % q.G, buf.ca, buf.cb,
                      buf.cd);
}

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    gn_forward_kernel(const T* __restrict__ x, const float* __restrict__ ca, const float* __restrict__ cb, bool relu,
                      const GnGeom q, I n, T* __restrict__ y) {
  SBN_GRID_STRIDE(I, e, n) gn_forward_element(x, ca, cb, relu, q, e, y);
}

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    gn_backward_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy,
                       const float* __restrict__ ca, const float* __restrict__ cb, const float* __restrict__ cd,
                       bool relu, const GnGeom q, I n, T* __restrict__ dx) {
  SBN_GRID_STRIDE(I, e, n) gn_backward_element(x, y, dy, ca, cb, cd, relu, q, e, dx);
}

std::string gn_describe(const GnGeom& q, DType dtype) {
  return std::string(dtype_name(dtype)) + " N=" + std::to_string(q.N) + " S=" + std::to_string(q.S) +
         " C=" + std::to_string(q.C) + " G=" + std::to_string(q.G);
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void group_norm_forward(const void* x, DType dtype, const GnGeom& q, const float* gamma, const float* beta, double eps,
                        bool relu, void* y, const GnBuffers& buf, ReduceWorkspace& ws, const Launch& l) {
  SBN_CHECK(q.G > 0 && q.C % q.G == 0, "group_norm_forward: " + gn_describe(q, dtype) + ": G must divide C");
  const std::int64_t n = q.N * q.S * q.C;
  if (n == 0) return;
  const std::string who = "group_norm_forward " + gn_describe(q, dtype);
  detail::with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xt = static_cast<const T*>(x);
    detail::column_reduce(ChannelSumsOp<T>{xt, nullptr, nullptr, q}, q.S, q.N * q.C,
                          detail::StoreDoubles{buf.sum_a, buf.sum_b}, ws, l, who + " (channel sums)");
    gn_group_forward_kernel<T><<<detail::elementwise_blocks(q.N * q.G, l), kThreads, 0, l.stream>>>(xt, q, gamma, beta,
                                                                                                     eps, buf);
    SBN_CUDA_LAUNCH_CHECK(who + " (statistics)");
    detail::with_index(n, [&](auto index) {
      using I = decltype(index);
      gn_forward_kernel<T, I><<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(
          xt, buf.ca, buf.cb, relu, q, static_cast<I>(n), static_cast<T*>(y));
    });
    SBN_CUDA_LAUNCH_CHECK(who + " (normalize)");
  });
}

void group_norm_backward(const void* x, const void* y, const void* dy, DType dtype, const GnGeom& q, const float* gamma,
                         bool relu, void* dx, float* dgamma, float* dbeta, const GnBuffers& buf, ReduceWorkspace& ws,
                         const Launch& l) {
  const std::int64_t n = q.N * q.S * q.C;
  if (n == 0) return;
  const std::string who = "group_norm_backward " + gn_describe(q, dtype);
  detail::with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xt = static_cast<const T*>(x);
    const T* yt = static_cast<const T*>(y);
    const T* dyt = static_cast<const T*>(dy);
    detail::column_reduce(ChannelSumsOp<T>{xt, dyt, relu ? yt : nullptr, q}, q.S, q.N * q.C,
                          detail::StoreDoubles{buf.sum_a, buf.sum_b}, ws, l, who + " (channel sums)");
    gn_group_backward_kernel<T><<<detail::elementwise_blocks(q.N * q.G, l), kThreads, 0, l.stream>>>(xt, q, gamma, buf);
    SBN_CUDA_LAUNCH_CHECK(who + " (coefficients)");
    detail::column_reduce(ParamTermsOp{buf.sum_b, buf.sum_a, q.C}, q.N, q.C, detail::AddToFloats{dgamma, dbeta}, ws, l,
                          who + " (parameter gradients)");
    if (dx) {
      detail::with_index(n, [&](auto index) {
        using I = decltype(index);
        gn_backward_kernel<T, I><<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(
            xt, yt, dyt, buf.ca, buf.cb, buf.cd, relu, q, static_cast<I>(n), static_cast<T*>(dx));
      });
      SBN_CUDA_LAUNCH_CHECK(who + " (input gradient)");
    }
  });
}

}  // namespace syncbn::cuda::train
