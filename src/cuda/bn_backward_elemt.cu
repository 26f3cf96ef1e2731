// bn_backward_elemt (CUDA): dx = a·dy' + k1·(x − hi) + k0 per channel, in the input dtype.
//
// Invariants (as cpu::bn_backward_elemt):
//  - dx = fma(a_c, dy', fma(k1_c, x − hi_c, k0_c)) in fp32 with dy' the ReLU-gated gradient (gate
//    recomputed from x exactly as the forward computed y), then rounded to nearest-even into the dtype.
//    This is the exact gradient of the group-batch normalization: k1, k0 carry the GLOBAL sums (N, Σdy',
//    Σdy'·(x − mean)) from bn_backward_combine. With running statistics k1 = k0 = 0: dx = a·dy'.
//  - dx is assigned (not accumulated); dx may alias dy (in place), never x.
//  - Every element written exactly once (bn_tiling.h, tested on the CPU).
//
// Grid: as bn_normalize (1-d over planar pieces; 2-d channels-last with per-thread coefficients held in
// registers: five per channel).
//
// Memory traffic: read x and dy, write dx: 3·sizeof(T) bytes per element, the minimum (the all-reduce
// between bn_backward_reduce and this pass forbids fusing them). Why ≥ 80% of HBM bandwidth on an H100:
// as bn_normalize, with two loads in flight per vector; a 2-read-1-write stream like STREAM triad. Same
// limits (small tensors, vec = 1 shapes).
#include "bn_launch.cuh"

namespace syncbn::cuda {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

template <class T, int V, bool kRelu>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    elemt_planar_kernel(const T* dy, const T* x, T* dx, const BnTile t, const float* __restrict__ hi,
                        const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ k1,
                        const float* __restrict__ k0) {
  elemt_thread_planar<T, V, kRelu>(dy, x, dx, t, blockIdx.x, threadIdx.x, threadIdx.y, hi, a, b, k1, k0);
}

template <class T, int V, bool kRelu>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    elemt_rows_kernel(const T* dy, const T* x, T* dx, const BnTile t, const float* __restrict__ hi,
                      const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ k1,
                      const float* __restrict__ k0) {
  elemt_thread_rows<T, V, kRelu>(dy, x, dx, t, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y, hi, a, b, k1, k0);
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void bn_backward_elemt(const void* dy, const void* x, DType dtype, const BnGeometry& g, const float* hi,
                       const float* a, const float* b, bool relu, const float* k1, const float* k0, void* dx,
                       int sm_count, cudaStream_t stream) {
  if (g.numel() == 0) return;
  SBN_CHECK(dy && x && dx && hi && a && b && k1 && k0, "bn_backward_elemt: null pointer");
  const BnTile t = detail::plan(BnPass::kElementwise, g, dtype,
                                detail::addr(x) | detail::addr(dy) | detail::addr(dx), sm_count);
  detail::with_dtype_vec_relu(dtype, t.vec, relu, [&](auto* tag_ptr, auto v, auto r) {
    using T = std::remove_pointer_t<decltype(tag_ptr)>;
    constexpr int V = decltype(v)::value;
    constexpr bool kRelu = decltype(r)::value;
    detail::launch_tiled(t, stream, elemt_rows_kernel<T, V, kRelu>, elemt_planar_kernel<T, V, kRelu>,
                         static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dx), t, hi, a, b, k1, k0);
  });
  SBN_CUDA_LAUNCH_CHECK("bn_backward_elemt: " + detail::describe(t, dtype));
}

}  // namespace syncbn::cuda
