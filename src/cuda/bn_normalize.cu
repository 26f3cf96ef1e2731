// bn_normalize (CUDA): y = a·(x − hi) + b per channel, optionally max(y, 0), in the input dtype.
//
// Invariants (as cpu::bn_normalize):
//  - y = fma(a_c, x − hi_c, b_c) in fp32, then the ReLU (y < 0 ? 0 : y), then rounded to nearest-even
//    into x's dtype. With the same coefficients an fp32 output is bit-identical to the CPU's.
//  - Activations are assigned (never accumulated); x and y may not overlap unless identical (in place is
//    fine: every element is read before it is written by the same thread).
//  - Every element is written exactly once (bn_tiling.h; tested by tests/gpu/test_gpu_emulation.cpp).
//
// Grid: planar tensors use a 1-d grid over (sample, channel, segment) pieces, the channel's three
// coefficients loaded once per piece; channels-last tensors a 2-d grid, each thread owning one vector of
// channels for the whole kernel (coefficients in registers) and striding over rows. Grids are capped at
// 8 blocks per SM (full occupancy) and stride, so per-thread setup is amortized.
//
// Memory traffic: read x, write y: 2·sizeof(T) bytes per element, the minimum for an out-of-place map.
// Why ≥ 80% of HBM bandwidth on an H100: a streaming map with coalesced 16-byte accesses, 2–4
// independent loads per thread per step (32–64 bytes) and 1024–2048 resident threads per SM keeps
// 32–128 KB of reads in flight per SM (Little's law asks ~18 KB), like a device-to-device copy, which is
// the bench's baseline. Limits: small tensors
// (launch-bound), vec = 1 shapes (see bn_stats.cu), and one subtlety that helps rather than hurts: when
// bn_stats has just read x and x fits in L2 (50 MB on H100), part of x comes from L2 and the "effective
// bandwidth" can exceed the copy's.
#include "bn_launch.cuh"

namespace syncbn::cuda {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

template <class T, int V, bool kRelu>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    normalize_planar_kernel(const T* x, T* y, const BnTile t, const float* __restrict__ hi,
                            const float* __restrict__ a, const float* __restrict__ b) {
  normalize_thread_planar<T, V, kRelu>(x, y, t, blockIdx.x, threadIdx.x, threadIdx.y, hi, a, b);
}

template <class T, int V, bool kRelu>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    normalize_rows_kernel(const T* x, T* y, const BnTile t, const float* __restrict__ hi,
                          const float* __restrict__ a, const float* __restrict__ b) {
  normalize_thread_rows<T, V, kRelu>(x, y, t, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y, hi, a, b);
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void bn_normalize(const void* x, DType dtype, const BnGeometry& g, const float* hi, const float* a,
                  const float* b, bool relu, void* y, int sm_count, cudaStream_t stream) {
  if (g.numel() == 0) return;
  SBN_CHECK(x && y && hi && a && b, "bn_normalize: null pointer");
  const BnTile t = detail::plan(BnPass::kElementwise, g, dtype, detail::addr(x) | detail::addr(y), sm_count);
  detail::with_dtype_vec_relu(dtype, t.vec, relu, [&](auto* tag_ptr, auto v, auto r) {
    using T = std::remove_pointer_t<decltype(tag_ptr)>;
    constexpr int V = decltype(v)::value;
    constexpr bool kRelu = decltype(r)::value;
    detail::launch_tiled(t, stream, normalize_rows_kernel<T, V, kRelu>, normalize_planar_kernel<T, V, kRelu>,
                         static_cast<const T*>(x), static_cast<T*>(y), t, hi, a, b);
  });
  SBN_CUDA_LAUNCH_CHECK("bn_normalize: " + detail::describe(t, dtype));
}

}  // namespace syncbn::cuda
