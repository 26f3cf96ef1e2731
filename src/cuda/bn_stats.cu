// bn_stats (CUDA): local per-channel sums around the pivot, written as the SyncBN message.
//
// Invariants (shared with src/cpu/bn_kernels.cpp, message layout in bn_math.h):
//  - msg[0..3) = [tag, tag², n]; msg[3 + c] = Σ(x − K_c), msg[3 + C + c] = Σ(x − K_c)² over this rank's
//    n = N·H·W values of channel c, K = pivot (0 when null). Entries beyond 3 + 2C are not touched.
//  - The sums are taken around the local shift k_c = this rank's first value of channel c (read on the
//    device) and moved to K by bn_shift_to_pivot, so they are free of cancellation whatever the offset.
//  - n == 0 (an empty local batch) is legal: the message is [tag, tag², 0, 0 …]; x is not read.
//  - Deterministic: fixed partition (bn_plan) and fixed summation order.
//
// Two kernels. (1) Partials: each block reduces its share of one channel (planar: block (c, split)) or of
// up to 128 channels (channels-last: block (channel tile, split)); threads accumulate fp32 partials
// flushed into double (bn_thread.h), the block sums in double and writes [split][2][C] doubles to the
// workspace. (2) Merge: one thread per channel sums the splits in order and writes the message.
//
// Memory traffic: x is read once, sizeof(T) bytes per element; the workspace is splits·2·C doubles
// (≤ 2·(4·SMs + C) planar, ≤ 4·SMs·256 channels-last: kilobytes) written and read once. Nothing else
// scales with the tensor, so the kernel is a pure read stream. Why it can reach ≥ 80% of HBM bandwidth on
// an H100 (3.35 TB/s, ~0.7–0.8 µs latency ⇒ ~20–25 KB in flight per SM; H200 4.8 TB/s: ~25–30 KB): every
// thread issues 4 independent loads of 8–16 bytes per step (32–64 bytes), coalesced across a warp, and
// both kernels are held to ≤ 64 registers (__launch_bounds__(256, kStatsMinBlocksPerSm = 4)) so 4 blocks
// of 256 threads are resident per SM: 32 KB (bf16/fp16 channels-last: 4 lanes of 2 bytes, bn_tiling.h) to
// 64 KB per SM in flight. Register and occupancy figures: docs/GPU.md "Registers and occupancy". It
// cannot where (a) the tensor is small (a few MB: launch latency and the tail wave dominate, ~5 µs floor),
// or (b) the row length forces narrow accesses (planar H·W odd, e.g. 7×7, or channels-last C odd ⇒
// vec = 1: 4-byte fp32 / 2-byte bf16 loads, 4–8× fewer bytes in flight per thread; bf16 at vec = 1 is
// expected below 80%).
#include "bn_launch.cuh"

namespace syncbn::cuda {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

// Block (c, split) of a planar tensor → ws[split][0|1][c].
template <class T, int V>
__global__ void __launch_bounds__(kThreads, kStatsMinBlocksPerSm)
    stats_planar_kernel(const T* __restrict__ x, const BnTile t, double* __restrict__ ws) {
  double s1 = 0.0, s2 = 0.0;
  stats_thread_planar<T, V>(x, t, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y, &s1, &s2);
  detail::store_planar_partials(s1, s2, t, ws);
}

// Block (channel tile, split) of a channels-last tensor → ws[split][0|1][tile's channels].
template <class T, int V>
__global__ void __launch_bounds__(kThreads, kStatsMinBlocksPerSm)
    stats_rows_kernel(const T* __restrict__ x, const BnTile t, double* __restrict__ ws) {
  double s1[V], s2[V];
  stats_thread_rows<T, V>(x, t, blockIdx.x, blockIdx.y, threadIdx.x, threadIdx.y, s1, s2);
  detail::store_rows_partials<V>(s1, s2, t, ws);
}

// One thread per channel: Σ over splits, shift to the pivot, write the message (and its header).
template <class T>
__global__ void __launch_bounds__(detail::kChannelThreads)
    stats_merge_kernel(const T* __restrict__ x, std::int64_t channels, std::int64_t inner, bool channels_last,
                       double n, const double* __restrict__ ws, std::int64_t splits,
                       const double* __restrict__ pivot, double tag, double* __restrict__ msg) {
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c == 0) bn_write_header(msg, tag, n);
  if (c >= channels) return;
  double s1 = 0.0, s2 = 0.0, k = 0.0;
  if (n > 0.0) {
    bn_sum_partials(ws, splits, channels, c, &s1, &s2);
    k = bn_local_shift(x, inner, channels_last, c);
  }
  bn_stats_finish_channel(s1, s2, n, k, pivot, channels, c, msg);
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

std::size_t bn_workspace_doubles(const BnGeometry& g, int sm_count) {
  if (g.channels <= 0) return 0;
  return static_cast<std::size_t>(2 * g.channels * bn_max_splits(g.channels, g.channels_last, sm_count));
}

void bn_stats(const void* x, DType dtype, const BnGeometry& g, const double* pivot, double tag, double* msg,
              const BnWorkspace& ws, cudaStream_t stream) {
  SBN_CHECK(msg != nullptr && g.channels > 0, "bn_stats: null message or no channels");
  const std::int64_t n = g.per_channel();
  const BnTile t = detail::plan(BnPass::kReduce, g, dtype, detail::addr(x), ws.sm_count);
  const std::int64_t splits = n > 0 ? t.grid_y : 0;
  if (n > 0) {
    const auto need = static_cast<std::size_t>(2 * splits * g.channels);
    SBN_CHECK(x != nullptr && ws.data != nullptr && ws.doubles >= need,
              "bn_stats: workspace of " + std::to_string(ws.doubles) + " doubles, the launch needs " +
                  std::to_string(need) + " (size it with bn_workspace_doubles)");
    detail::with_dtype(dtype, [&](auto* tag_ptr) {
      using T = std::remove_pointer_t<decltype(tag_ptr)>;
      const T* xt = static_cast<const T*>(x);
      detail::with_vec<T>(t.vec, [&](auto v) {
        constexpr int V = decltype(v)::value;
        if constexpr (V <= kMaxRowsReduceVec) {
          detail::launch_tiled(t, stream, stats_rows_kernel<T, V>, stats_planar_kernel<T, V>, xt, t, ws.data);
        } else {
          detail::launch_tiled(t, stream, nullptr, stats_planar_kernel<T, V>, xt, t, ws.data);
        }
      });
    });
    SBN_CUDA_LAUNCH_CHECK("bn_stats: partial sums, " + detail::describe(t, dtype));
  }
  const auto blocks = static_cast<unsigned>(bn_ceil_div(g.channels, detail::kChannelThreads));
  detail::with_dtype(dtype, [&](auto* tag_ptr) {
    using T = std::remove_pointer_t<decltype(tag_ptr)>;
    stats_merge_kernel<T><<<blocks, detail::kChannelThreads, 0, stream>>>(
        static_cast<const T*>(x), g.channels, g.inner, g.channels_last, static_cast<double>(n), ws.data, splits,
        pivot, tag, msg);
  });
  SBN_CUDA_LAUNCH_CHECK("bn_stats: merge of the partial sums");
}

}  // namespace syncbn::cuda
