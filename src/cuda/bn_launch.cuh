// Private to src/cuda: block reductions and the dtype / vector-width / flag dispatch the launchers share.
//
// Block reductions are in double and in a fixed order (shuffle tree, then warps in index order), so a
// kernel's result depends only on the launch plan, never on scheduling: runs on the same device are
// bit-for-bit reproducible.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "syncbn/cuda/bn_kernels.h"
#include "syncbn/cuda/bn_thread.h"
#include "syncbn/cuda/check.h"
#include "syncbn/error.h"

namespace syncbn::cuda::detail {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarps = kThreads / 32;

// ---- block reductions (device) --------------------------------------------------------------------

// Sums a and b over all kThreads threads of the block; the totals are valid in thread (0, 0).
// Shared memory: 2 doubles per warp.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double partial[kWarps][2];
  const int lin = threadIdx.y * blockDim.x + threadIdx.x;
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_xor_sync(kFullMask, a, off);
    b += __shfl_xor_sync(kFullMask, b, off);
  }
  if ((lin & 31) == 0) {
    partial[lin >> 5][0] = a;
    partial[lin >> 5][1] = b;
  }
  __syncthreads();
  if (lin == 0) {
    a = partial[0][0];
    b = partial[0][1];
    for (int w = 1; w < kWarps; ++w) {
      a += partial[w][0];
      b += partial[w][1];
    }
  }
}

// Channels-last: sums each of the block's tx·V channel slots (slot x·V + j = thread column x, vector
// lane j) over the ty block rows. A warp holds 32/tx rows (tx divides 32): lanes with the same column
// are combined by xor-shuffles over the offsets tx … 16 (multiples of tx), then one shared-memory row
// per warp, summed by threads 0 … tx·V−1 in warp order. Returns true in the threads that hold a slot
// total; *ta, *tb are then the block sums of slot `threadIdx.y·tx + threadIdx.x`.
// Shared memory: kWarps × kMaxTileChannels × 2 doubles = 16 KB.
template <int V>
__device__ __forceinline__ bool block_sum_rows(double (&a)[V], double (&b)[V], int tx, double* ta, double* tb) {
  __shared__ double partial[kWarps][kMaxTileChannels][2];
  const int lin = threadIdx.y * blockDim.x + threadIdx.x;
  const int lane = lin & 31, warp = lin >> 5;
  for (int off = 16; off >= tx; off >>= 1) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      a[j] += __shfl_xor_sync(kFullMask, a[j], off);
      b[j] += __shfl_xor_sync(kFullMask, b[j], off);
    }
  }
  if (lane < tx) {  // lane < tx ⇒ this thread's column is `lane`
#pragma unroll
    for (int j = 0; j < V; ++j) {
      partial[warp][lane * V + j][0] = a[j];
      partial[warp][lane * V + j][1] = b[j];
    }
  }
  __syncthreads();
  if (lin >= tx * V) return false;
  double sa = partial[0][lin][0], sb = partial[0][lin][1];
  for (int w = 1; w < kWarps; ++w) {
    sa += partial[w][lin][0];
    sb += partial[w][lin][1];
  }
  *ta = sa;
  *tb = sb;
  return true;
}

// The block (c = blockIdx.x, split = blockIdx.y) of a planar reduction: its threads' sums a, b into the
// workspace partials ws[split][0|1][c].
__device__ __forceinline__ void store_planar_partials(double a, double b, const BnTile& t, double* __restrict__ ws) {
  block_sum2(a, b);
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    ws[bn_partial_index(blockIdx.y, 0, t.channels, blockIdx.x)] = a;
    ws[bn_partial_index(blockIdx.y, 1, t.channels, blockIdx.x)] = b;
  }
}

// The block (channel tile blockIdx.x, split blockIdx.y) of a channels-last reduction: its threads' per-lane
// sums into ws[split][0|1][the tile's channels].
template <int V>
__device__ __forceinline__ void store_rows_partials(double (&a)[V], double (&b)[V], const BnTile& t,
                                                    double* __restrict__ ws) {
  double ta = 0.0, tb = 0.0;
  if (block_sum_rows<V>(a, b, t.tx, &ta, &tb)) {
    const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * t.tx * V + threadIdx.y * t.tx + threadIdx.x;
    if (c < t.channels) {
      ws[bn_partial_index(blockIdx.y, 0, t.channels, c)] = ta;
      ws[bn_partial_index(blockIdx.y, 1, t.channels, c)] = tb;
    }
  }
}

// ---- dispatch (host) ------------------------------------------------------------------------------

inline std::uint64_t addr(const void* p) { return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p)); }

inline BnTile plan(BnPass pass, const BnGeometry& g, DType dtype, std::uint64_t addr_bits, int sm_count) {
  return bn_plan(pass, g.outer, g.channels, g.inner, g.channels_last, static_cast<int>(dtype_size(dtype)),
                 addr_bits, sm_count);
}

// Calls f(T*{}) with the element type of `dtype` as a null pointer tag.
template <class F>
void with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: f(static_cast<float*>(nullptr)); return;
    case DType::kBF16: f(static_cast<__nv_bfloat16*>(nullptr)); return;
    case DType::kF16: f(static_cast<__half*>(nullptr)); return;
  }
  SBN_FAIL("unknown activation dtype " + std::to_string(static_cast<int>(dtype)));
}

// Calls f(std::integral_constant<int, V>{}) for the plan's vector width (bn_with_vec).
template <class T, class F>
void with_vec(int vec, F&& f) {
  if (!bn_with_vec<T>(vec, std::forward<F>(f))) {
    SBN_FAIL("internal: unsupported vector width " + std::to_string(vec) + " for " + std::to_string(sizeof(T)) +
             "-byte elements");
  }
}

// The three dispatches of a SyncBN element or reduction launcher: calls f(T*{}, integral_constant V,
// bool_constant kRelu) for the element type of `dtype`, the plan's vector width and `relu`.
template <class F>
void with_dtype_vec_relu(DType dtype, int vec, bool relu, F&& f) {
  with_dtype(dtype, [&](auto* tag_ptr) {
    using T = std::remove_pointer_t<decltype(tag_ptr)>;
    with_vec<T>(vec, [&](auto v) { bn_with_flag(relu, [&](auto r) { f(tag_ptr, v, r); }); });
  });
}

inline dim3 grid_of(const BnTile& t) {
  SBN_CHECK(t.grid_x >= 1 && t.grid_x <= INT32_MAX && t.grid_y >= 1 && t.grid_y <= kMaxGridY,
            "internal: grid " + std::to_string(t.grid_x) + " x " + std::to_string(t.grid_y) + " out of range");
  return dim3(static_cast<unsigned>(t.grid_x), static_cast<unsigned>(t.grid_y));
}

inline dim3 block_of(const BnTile& t) { return dim3(static_cast<unsigned>(t.tx), static_cast<unsigned>(t.ty)); }

// Launches a pass's channels-last or planar kernel (same parameters) with the plan's grid and block.
template <class... P, class... A>
void launch_tiled(const BnTile& t, cudaStream_t stream, void (*rows)(P...), void (*planar)(P...), A... args) {
  (t.channels_last ? rows : planar)<<<grid_of(t), block_of(t), 0, stream>>>(args...);
}

// A reduction whose vector width V has no channels-last kernel (V > kMaxRowsReduceVec, which bn_plan never
// gives a channels-last reduction): launches the planar kernel; a channels-last plan is an internal error.
template <class... P, class... A>
void launch_tiled(const BnTile& t, cudaStream_t stream, std::nullptr_t, void (*planar)(P...), A... args) {
  SBN_CHECK(!t.channels_last, "internal: no channels-last reduction kernel for vec" + std::to_string(t.vec));
  planar<<<grid_of(t), block_of(t), 0, stream>>>(args...);
}

// "fp32 NCHW vec4" for launch-failure messages.
inline std::string describe(const BnTile& t, DType dtype) {
  return std::string(dtype_name(dtype)) + (t.channels_last ? " channels-last" : " planar") + " vec" +
         std::to_string(t.vec);
}

// Blocks of the one-block-per-few-thousand-channels kernels (combines, merges).
constexpr int kChannelThreads = 256;

}  // namespace syncbn::cuda::detail
