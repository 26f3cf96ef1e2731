// bn_backward_reduce (CUDA): local Σdy' and Σdy'·(x − hi) per channel as the SyncBN backward message,
// plus the local parameter gradients.
//
// Invariants (as cpu::bn_backward_reduce, bn_math.h for the layout):
//  - msg = [tag, tag², n, A[C], B[C]] with A = Σdy', B = Σdy'·(x − hi) over this rank's n values; dy' is
//    dy gated by the fused ReLU, the gate recomputed from x with the forward's own fma (so y is neither
//    kept nor re-read).
//  - Parameter gradients ACCUMULATE (+=) the LOCAL contribution: dβ += A, dγ += invstd·(B − lo·A) with
//    lo = mean − hi (Σdy'·(x − mean) from the same sums). The trainer's gradient all-reduce sums them.
//  - n == 0 is legal: the message is [tag, tag², 0, 0 …], the gradients unchanged (+= 0), x and dy not read.
//  - Deterministic (fixed partition and summation order).
//
// Same two-kernel structure as bn_stats (partials per block into the workspace, then a per-channel merge
// that also does the parameter-gradient update, so no third launch).
//
// Memory traffic: x and dy read once: 2·sizeof(T) bytes per element; workspace kilobytes. Why ≥ 80% of
// HBM bandwidth on an H100: as bn_stats, with two independent coalesced 16-byte loads per vector, i.e.
// twice the bytes in flight per thread. Same limits (small tensors, vec = 1 shapes).
#include "bn_launch.cuh"

namespace syncbn::cuda {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

template <class T, int V, bool kRelu>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    backward_planar_kernel(const T* __restrict__ dy, const T* __restrict__ x, const BnTile t,
                           const float* __restrict__ hi, const float* __restrict__ a, const float* __restrict__ b,
                           double* __restrict__ ws) {
  const std::int64_t c = blockIdx.x;
  double sa = 0.0, sb = 0.0;
  backward_thread_planar<T, V, kRelu>(dy, x, t, c, blockIdx.y, threadIdx.x, threadIdx.y, hi[c], a[c], b[c], &sa,
                                      &sb);
  detail::store_planar_partials(sa, sb, t, ws);
}

template <class T, int V, bool kRelu>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    backward_rows_kernel(const T* __restrict__ dy, const T* __restrict__ x, const BnTile t,
                         const float* __restrict__ hi, const float* __restrict__ a, const float* __restrict__ b,
                         double* __restrict__ ws) {
  double sa[V], sb[V];
  backward_thread_rows<T, V, kRelu>(dy, x, t, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y, hi, a, b, sa, sb);
  detail::store_rows_partials<V>(sa, sb, t, ws);
}

// One thread per channel: Σ over splits, message entries, local dγ/dβ.
__global__ void __launch_bounds__(detail::kChannelThreads)
    backward_merge_kernel(std::int64_t channels, double n, const double* __restrict__ ws, std::int64_t splits,
                          const double* __restrict__ mean, const float* __restrict__ hi,
                          const double* __restrict__ invstd, double tag, double* __restrict__ msg, float* dgamma,
                          float* dbeta, const BnRenormFactors renorm) {
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c == 0) bn_write_header(msg, tag, n);
  if (c >= channels) return;
  double A = 0.0, B = 0.0;
  if (n > 0.0) bn_sum_partials(ws, splits, channels, c, &A, &B);
  bn_backward_finish_channel(A, B, channels, c, mean, hi, invstd, msg, dgamma, dbeta, renorm);
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void bn_backward_reduce(const void* dy, const void* x, DType dtype, const BnGeometry& g, const float* hi,
                        const float* a, const float* b, bool relu, const double* mean, const double* invstd,
                        double tag, double* msg, float* dgamma, float* dbeta, const BnWorkspace& ws,
                        cudaStream_t stream, BnRenormFactors renorm) {
  SBN_CHECK(msg && hi && a && b && g.channels > 0, "bn_backward_reduce: null pointer or no channels");
  SBN_CHECK((!dgamma && !dbeta) || (mean && invstd), "bn_backward_reduce: parameter gradients need mean and invstd");
  SBN_CHECK(!renorm.r == !renorm.d, "bn_backward_reduce: Batch Renormalization needs both r and d");
  const std::int64_t n = g.per_channel();
  const BnTile t = detail::plan(BnPass::kReduce, g, dtype, detail::addr(x) | detail::addr(dy), ws.sm_count);
  const std::int64_t splits = n > 0 ? t.grid_y : 0;
  if (n > 0) {
    const auto need = static_cast<std::size_t>(2 * splits * g.channels);
    SBN_CHECK(x && dy && ws.data && ws.doubles >= need,
              "bn_backward_reduce: workspace of " + std::to_string(ws.doubles) + " doubles, the launch needs " +
                  std::to_string(need) + " (size it with bn_workspace_doubles)");
    detail::with_dtype_vec_relu(dtype, t.vec, relu, [&](auto* tag_ptr, auto v, auto r) {
      using T = std::remove_pointer_t<decltype(tag_ptr)>;
      constexpr int V = decltype(v)::value;
      constexpr bool kRelu = decltype(r)::value;
      const T* dyt = static_cast<const T*>(dy);
      const T* xt = static_cast<const T*>(x);
      if constexpr (V <= kMaxRowsReduceVec) {
        detail::launch_tiled(t, stream, backward_rows_kernel<T, V, kRelu>, backward_planar_kernel<T, V, kRelu>, dyt,
                             xt, t, hi, a, b, ws.data);
      } else {
        detail::launch_tiled(t, stream, nullptr, backward_planar_kernel<T, V, kRelu>, dyt, xt, t, hi, a, b, ws.data);
      }
    });
    SBN_CUDA_LAUNCH_CHECK("bn_backward_reduce: partial sums, " + detail::describe(t, dtype));
  }
  const auto blocks = static_cast<unsigned>(bn_ceil_div(g.channels, detail::kChannelThreads));
  backward_merge_kernel<<<blocks, detail::kChannelThreads, 0, stream>>>(
      g.channels, static_cast<double>(n), ws.data, splits, mean, hi, invstd, tag, msg, dgamma, dbeta, renorm);
  SBN_CUDA_LAUNCH_CHECK("bn_backward_reduce: merge of the partial sums");
}

}  // namespace syncbn::cuda
