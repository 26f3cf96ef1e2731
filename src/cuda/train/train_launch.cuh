// Private to src/cuda/train: grid sizing, dtype dispatch (shared with the SyncBN kernels) and the
// deterministic column reduction used by the bias and GroupNorm parameter gradients.
#pragma once

#include <algorithm>
#include <string>

#include "../bn_launch.cuh"
#include "kernels.h"

namespace syncbn::cuda::train::detail {

using cuda::detail::block_sum2;
using cuda::detail::with_dtype;

// Grid-stride elementwise kernels: enough blocks to fill the device (8 per SM of 256 threads: full
// occupancy on every architecture we build for), never more than the work needs.
inline unsigned elementwise_blocks(std::int64_t n, const Launch& l) {
  const std::int64_t need = (n + kThreads - 1) / kThreads;
  const std::int64_t cap = 8 * static_cast<std::int64_t>(std::max(l.sm_count, 1));
  return static_cast<unsigned>(std::clamp<std::int64_t>(need, 1, cap));
}

// Calls f(I{}) with the index type of an n-element elementwise kernel: 32-bit when n < 2^31, so that
// e + grid stride cannot wrap (train_thread.h: why it matters), 64-bit otherwise.
template <class F>
void with_index(std::int64_t n, F&& f) {
  if (n <= INT32_MAX) {
    f(std::uint32_t{});
  } else {
    f(std::int64_t{});
  }
}

// The loop of a grid-stride kernel over e ∈ [0, n) with index type I.
#define SBN_GRID_STRIDE(I, e, n) \
  for (I e = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; e < (n); e += static_cast<I>(gridDim.x) * blockDim.x)

// Launches the grid-stride kernel<T, I> over `count` elements and checks the launch ("what dtype"): T the
// element type of `dtype`, I the index type (with_index) of `reach`, the largest element count the kernel
// indexes (≥ count). The kernel arguments (__VA_ARGS__) may use T and I.
#define SBN_ELEMENTWISE_LAUNCH(kernel, what, dtype, count, reach, launch, ...)                              \
  do {                                                                                                     \
    ::syncbn::cuda::train::detail::with_dtype(dtype, [&](auto* tag) {                                      \
      using T = std::remove_pointer_t<decltype(tag)>;                                                      \
      ::syncbn::cuda::train::detail::with_index(reach, [&](auto index) {                                   \
        using I = decltype(index);                                                                         \
        kernel<T, I><<<::syncbn::cuda::train::detail::elementwise_blocks(count, launch), kThreads, 0,      \
                       (launch).stream>>>(__VA_ARGS__);                                                    \
      });                                                                                                  \
    });                                                                                                    \
    SBN_CUDA_LAUNCH_CHECK(std::string(what) + " " + dtype_name(dtype));                                   \
  } while (0)

// ---- column reduction ---------------------------------------------------------------------------------
//
// Sums op(r, c, &a, &b) over rows r ∈ [0, rows) for every column c ∈ [0, C), then hands each column's
// two totals to sink(c, a, b). Two kernels:
//   1. grid (column tiles of 32, row splits): thread (x, y) takes column tile·32 + x and rows
//      split_start + y, + 8, ... of its split; the block adds its 8 row-threads in order (shared memory)
//      and writes the split's partials (double);
//   2. one thread per column adds the splits in order and calls the sink.
// A warp reads 32 consecutive columns of a row: coalesced when the op's columns are contiguous. No
// atomics: deterministic.

constexpr int kColTile = 32;
constexpr int kColRows = kThreads / kColTile;  // 8 row-threads per block

template <class Op>
__global__ void __launch_bounds__(kThreads)
    column_partials_kernel(Op op, std::int64_t rows, std::int64_t C, std::int64_t rows_per_split, double* partial) {
  __shared__ double sa[kColRows][kColTile], sb[kColRows][kColTile];
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * rows_per_split;
  const std::int64_t r1 = r0 + rows_per_split < rows ? r0 + rows_per_split : rows;
  double a = 0, b = 0;
  if (c < C)
    for (std::int64_t r = r0 + threadIdx.y; r < r1; r += kColRows) op(r, c, &a, &b);
  sa[threadIdx.y][threadIdx.x] = a;
  sb[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int y = 1; y < kColRows; ++y) {
      a += sa[y][threadIdx.x];
      b += sb[y][threadIdx.x];
    }
    double* p = partial + 2 * (static_cast<std::int64_t>(blockIdx.y) * C + c);
    p[0] = a;
    p[1] = b;
  }
}

template <class Sink>
__global__ void __launch_bounds__(kThreads)
    column_finish_kernel(const double* partial, std::int64_t splits, std::int64_t C, Sink sink) {
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double a = 0, b = 0;
  for (std::int64_t s = 0; s < splits; ++s) {
    a += partial[2 * (s * C + c)];
    b += partial[2 * (s * C + c) + 1];
  }
  sink(c, a, b);
}

// Sinks: accumulate into fp32 gradients (a, and b when not null), or store both sums as doubles.
struct AddToFloats {
  float* a;
  float* b;
  __device__ void operator()(std::int64_t c, double va, double vb) const {
    a[c] += static_cast<float>(va);
    if (b) b[c] += static_cast<float>(vb);
  }
};

struct StoreDoubles {
  double* a;
  double* b;
  __device__ void operator()(std::int64_t c, double va, double vb) const {
    a[c] = va;
    b[c] = vb;
  }
};

template <class Op, class Sink>
void column_reduce(const Op& op, std::int64_t rows, std::int64_t C, const Sink& sink, ReduceWorkspace& ws,
                   const Launch& l, const std::string& what) {
  if (rows == 0 || C == 0) return;
  const std::int64_t tiles = (C + kColTile - 1) / kColTile;
  const std::int64_t target = 4 * static_cast<std::int64_t>(std::max(l.sm_count, 1));  // ~4 blocks per SM
  const std::int64_t most = std::min<std::int64_t>((rows + kColRows - 1) / kColRows, kMaxGridY);
  const std::int64_t want = std::clamp<std::int64_t>((target + tiles - 1) / tiles, 1, std::max<std::int64_t>(most, 1));
  const std::int64_t per_split = (rows + want - 1) / want;
  const std::int64_t splits = (rows + per_split - 1) / per_split;
  SBN_CHECK(tiles <= INT32_MAX, what + ": " + std::to_string(C) + " columns is too many");
  ws.resize(static_cast<std::size_t>(2 * splits * C), what + " workspace", l.stream);
  column_partials_kernel<Op><<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits)),
                               dim3(kColTile, kColRows), 0, l.stream>>>(op, rows, C, per_split, ws.data());
  SBN_CUDA_LAUNCH_CHECK(what + ": column partial sums");
  const auto blocks = static_cast<unsigned>((C + kThreads - 1) / kThreads);
  column_finish_kernel<Sink><<<blocks, kThreads, 0, l.stream>>>(ws.data(), splits, C, sink);
  SBN_CUDA_LAUNCH_CHECK(what + ": column totals");
}

}  // namespace syncbn::cuda::train::detail
