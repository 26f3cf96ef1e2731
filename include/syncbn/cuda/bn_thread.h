// What ONE thread of each CUDA SyncBN kernel does, and the per-channel steps of the small kernels, as
// host+device (SBN_HD) templates. The kernels in src/cuda/*.cu are thin shells around these (plus the
// block reductions); tests/gpu/test_gpu_emulation.cpp runs the very same code on the CPU for every
// (block, thread) of a launch plan and compares the result with the CPU kernels (src/cpu), which is how
// the index math, the dtype conversions and the fp32-partial arithmetic are tested without a GPU.
//
// Numerics (DESIGN.md §2, §6): statistics are shifted sums around this rank's first value k of the
// channel, accumulated per thread in fp32 over runs of at most kFlushElems values (each fp32 partial then
// has a relative rounding error ≤ ~64·2⁻²⁴), flushed into per-thread doubles, merged per block and across
// blocks in double, and moved to the common pivot in double (bn_shift_to_pivot). The element formulas are
// the CPU ones, operation for operation: y = fma(a, x − hi, b); the ReLU gate recomputes that fma;
// dx = fma(a, dy', fma(k1, x − hi, k0)). For fp32 data GPU and CPU element outputs are therefore
// bit-identical given the same coefficients; bf16/fp16 outputs are that fp32 value rounded to nearest-even.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include <cstdint>

#include "syncbn/bn_kernels.h"
#include "syncbn/bn_math.h"
#include "syncbn/cuda/bn_tiling.h"

#if defined(__CUDA_ARCH__)
#define SBN_UNROLL _Pragma("unroll")
#else
#define SBN_UNROLL
#endif

namespace syncbn::cuda {

// ---- dtypes ---------------------------------------------------------------------------------------

// Activations are fp32, bf16 or fp16; arithmetic is always fp32 (statistics wider still).
SBN_HD float to_float(float v) { return v; }
SBN_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
SBN_HD float to_float(__half v) { return __half2float(v); }

// Round to nearest, ties to even (what PyTorch's .to(bfloat16/half) does).
SBN_HD void from_float(float v, float* out) { *out = v; }
SBN_HD void from_float(float v, __nv_bfloat16* out) { *out = __float2bfloat16_rn(v); }
SBN_HD void from_float(float v, __half* out) { *out = __float2half_rn(v); }

// One aligned vector access of V elements (V·sizeof(T) ≤ 16 bytes: a single 32-, 64- or 128-bit
// load/store instruction). The caller guarantees alignment (bn_pick_vec).
template <class T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <class T, int V>
SBN_HD void load_vec(const T* __restrict__ p, float (&out)[V]) {
  const Vec<T, V> w = *reinterpret_cast<const Vec<T, V>*>(p);
  SBN_UNROLL
  for (int j = 0; j < V; ++j) out[j] = to_float(w.v[j]);
}

// The raw vector, converted element by element where it is used: bf16/fp16 data then occupies half the
// registers while the step's loads are in flight.
template <class T, int V>
SBN_HD Vec<T, V> load_raw(const T* __restrict__ p) {
  return *reinterpret_cast<const Vec<T, V>*>(p);
}

template <class T, int V>
SBN_HD void store_vec(T* __restrict__ p, const float (&in)[V]) {
  Vec<T, V> w;
  SBN_UNROLL
  for (int j = 0; j < V; ++j) from_float(in[j], &w.v[j]);
  *reinterpret_cast<Vec<T, V>*>(p) = w;
}

// ---- element formulas (the CPU's, see src/cpu/bn_kernels.cpp) ----------------------------------------

template <bool kRelu>
SBN_HD float bn_relu(float y) {
  return kRelu ? (y < 0.0f ? 0.0f : y) : y;  // == std::max(y, 0.0f), NaN and -0 included
}

// dy' = dy where the forward's pre-activation a·(x − hi) + b was positive (same fma as the forward).
template <bool kRelu>
SBN_HD float bn_gate(float dy, float xh, float a, float b) {
  return (!kRelu || fmaf(a, xh, b) > 0.0f) ? dy : 0.0f;
}

// Forward output: y = relu(fma(a, x − hi, b)).
template <bool kRelu>
SBN_HD float bn_normalize_value(float x, float h, float a, float b) {
  return bn_relu<kRelu>(fmaf(a, x - h, b));
}

// Input gradient: dx = fma(a, dy', fma(k1, x − hi, k0)).
template <bool kRelu>
SBN_HD float bn_elemt_value(float dy, float x, float h, float a, float b, float k1, float k0) {
  const float xh = x - h;
  return fmaf(a, bn_gate<kRelu>(dy, xh, a, b), fmaf(k1, xh, k0));
}

// The terms (p, q) an element adds to a reduction's sums Σp and Σp·q.
struct SumTerms {
  float p, q;
};

// Statistics around the local shift k: (x − k, x − k).
SBN_HD SumTerms bn_stats_terms(float x, float k) {
  const float d = x - k;
  return {d, d};
}

// Backward sums: (dy', x − hi).
template <bool kRelu>
SBN_HD SumTerms bn_backward_terms(float dy, float x, float h, float a, float b) {
  const float xh = x - h;
  return {bn_gate<kRelu>(dy, xh, a, b), xh};
}

// fp32 partials cover at most this many values each before they are flushed into double.
constexpr int kFlushElems = 64;
SBN_HD constexpr int bn_flush_steps(int values_per_step) {
  return values_per_step >= kFlushElems ? 1 : kFlushElems / values_per_step;
}

// ---- the step loop every per-thread body shares ----------------------------------------------------

// A thread's N pairs of sums (Σp, Σp·q) over its steps: fp32 partials, flushed into doubles every kFlush
// steps (so each partial covers at most kFlushElems values).
template <int N, int kFlush>
struct FlushedSums {
  double d1[N] = {}, d2[N] = {};
  float f1[N] = {}, f2[N] = {};
  int steps = 0;

  SBN_HD void add(int j, float p, float q) {
    f1[j] += p;
    f2[j] = fmaf(p, q, f2[j]);
  }
  // After each cursor step.
  SBN_HD void end_step() {
    if (++steps == kFlush) {
      SBN_UNROLL
      for (int j = 0; j < N; ++j) {
        d1[j] += f1[j];
        d2[j] += f2[j];
        f1[j] = f2[j] = 0.0f;
      }
      steps = 0;
    }
  }
  // The totals, partials included.
  SBN_HD void finish(double* s1, double* s2) const {
    SBN_UNROLL
    for (int j = 0; j < N; ++j) {
      s1[j] = d1[j] + f1[j];
      s2[j] = d2[j] + f2[j];
    }
  }
};

// The U vectors of each of the NT tensors `src` at one cursor step (zero where invalid), all loaded
// before any is used, so they are in flight together, and in the elementwise passes before any is
// stored: in place is safe. Per vector u, tensor 0 is loaded first (x, then dy).
template <class T, int V, int NT>
struct StepVectors {
  static constexpr int U = bn_unroll(V);
  Vec<T, V> v[NT][U] = {};

  template <class Cursor>
  SBN_HD StepVectors(const Cursor& cur, const T* const (&src)[NT]) {
    SBN_UNROLL
    for (int u = 0; u < U; ++u) {
      if (!cur.valid(u)) continue;
      SBN_UNROLL
      for (int i = 0; i < NT; ++i) v[i][u] = load_raw<T, V>(src[i] + cur.offset(u));
    }
  }
  // Element j of tensor i's vector u, converted where it is used (see load_raw).
  SBN_HD float at(int u, int i, int j) const { return to_float(v[i][u].v[j]); }
};

// A reduction over the thread's steps: every valid element (vector u, lane j) adds terms(s, u, j) to
// slot j (N = V: channels-last, one channel per lane) or to slot 0 (N = 1: planar, one channel), in
// fp32 partials of at most kFlushElems values each. *s1, *s2: the N totals.
template <class T, int V, int N, class Cursor, int NT, class Terms>
SBN_HD void reduce_thread(Cursor& cur, const T* const (&src)[NT], Terms terms, double* s1, double* s2) {
  constexpr int U = bn_unroll(V);
  FlushedSums<N, bn_flush_steps(U * V / N)> acc;
  for (; cur.ok(); cur.next()) {
    const StepVectors<T, V, NT> s(cur, src);
    SBN_UNROLL
    for (int u = 0; u < U; ++u) {
      if (!cur.valid(u)) continue;
      SBN_UNROLL
      for (int j = 0; j < V; ++j) {
        const SumTerms e = terms(s, u, j);
        acc.add(N == 1 ? 0 : j, e.p, e.q);
      }
    }
    acc.end_step();
  }
  acc.finish(s1, s2);
}

// One step of an elementwise pass: every valid vector u of dst gets value(s, u, j) in lane j.
template <class T, int V, class Cursor, int NT, class Value>
SBN_HD void map_step(const Cursor& cur, const T* const (&src)[NT], T* dst, Value value) {
  constexpr int U = bn_unroll(V);
  const StepVectors<T, V, NT> s(cur, src);
  SBN_UNROLL
  for (int u = 0; u < U; ++u) {
    if (!cur.valid(u)) continue;
    float out[V];
    SBN_UNROLL
    for (int j = 0; j < V; ++j) out[j] = value(s, u, j);
    store_vec<T, V>(dst + cur.offset(u), out);
  }
}

// Channels-last: lane j's copy of the per-channel coefficient p[c0 + j] (a thread's channels are fixed
// for the whole kernel, so its coefficients stay in registers). An active cursor only.
template <int V>
SBN_HD void load_lanes(const RowsCursor& cur, const float* p, float (&out)[V]) {
  SBN_UNROLL
  for (int j = 0; j < V; ++j) out[j] = p[cur.c0 + j];
}

// The sums of a channels-last thread with no channels (cursor not active).
template <int V>
SBN_HD void zero_sums(double (&s1)[V], double (&s2)[V]) {
  SBN_UNROLL
  for (int j = 0; j < V; ++j) s1[j] = s2[j] = 0.0;
}

// Local shift of channel c: this rank's first value of the channel (sample 0, position 0).
template <class T>
SBN_HD float bn_local_shift(const T* x, std::int64_t inner, bool channels_last, std::int64_t c) {
  return to_float(x[channels_last ? c : c * inner]);
}

// ---- per-thread reductions ----------------------------------------------------------------------

// Planar stats, block (c, split): this thread's Σ(x − k), Σ(x − k)² over its pieces of channel c.
template <class T, int V>
SBN_HD void stats_thread_planar(const T* __restrict__ x, const BnTile& t, std::int64_t c, std::int64_t split,
                                int tx, int ty, double* s1, double* s2) {
  const float k = bn_local_shift(x, t.inner, false, c);
  PlanarCursor cur(t, split, c, tx, ty);
  reduce_thread<T, V, 1>(
      cur, {x}, [&](const auto& s, int u, int j) { return bn_stats_terms(s.at(u, 0, j), k); }, s1, s2);
}

// Channels-last stats, block (bx, split): per channel c0 + j of this thread's vector.
template <class T, int V>
SBN_HD void stats_thread_rows(const T* __restrict__ x, const BnTile& t, std::int64_t bx, std::int64_t split,
                              int tx, int ty, double (&s1)[V], double (&s2)[V]) {
  RowsCursor cur(t, bx, split, tx, ty);
  if (!cur.active) return zero_sums(s1, s2);
  float k[V];
  load_vec<T, V>(x + cur.c0, k);  // row 0: the local shifts
  reduce_thread<T, V, V>(
      cur, {x}, [&](const auto& s, int u, int j) { return bn_stats_terms(s.at(u, 0, j), k[j]); }, s1, s2);
}

// Planar backward sums, block (c, split): Σdy' and Σdy'·(x − hi) for channel c (coefficients h, a, b).
template <class T, int V, bool kRelu>
SBN_HD void backward_thread_planar(const T* __restrict__ dy, const T* __restrict__ x, const BnTile& t,
                                   std::int64_t c, std::int64_t split, int tx, int ty, float h, float a,
                                   float b, double* sa, double* sb) {
  PlanarCursor cur(t, split, c, tx, ty);
  reduce_thread<T, V, 1>(
      cur, {x, dy},
      [&](const auto& s, int u, int j) { return bn_backward_terms<kRelu>(s.at(u, 1, j), s.at(u, 0, j), h, a, b); },
      sa, sb);
}

// Channels-last backward sums for this thread's channels.
template <class T, int V, bool kRelu>
SBN_HD void backward_thread_rows(const T* __restrict__ dy, const T* __restrict__ x, const BnTile& t,
                                 std::int64_t bx, std::int64_t split, int tx, int ty, const float* hi,
                                 const float* a, const float* b, double (&sa)[V], double (&sb)[V]) {
  RowsCursor cur(t, bx, split, tx, ty);
  if (!cur.active) return zero_sums(sa, sb);
  float h[V], ac[V], bc[V];
  load_lanes(cur, hi, h);
  load_lanes(cur, a, ac);
  load_lanes(cur, b, bc);
  reduce_thread<T, V, V>(
      cur, {x, dy},
      [&](const auto& s, int u, int j) {
        return bn_backward_terms<kRelu>(s.at(u, 1, j), s.at(u, 0, j), h[j], ac[j], bc[j]);
      },
      sa, sb);
}

// ---- per-thread elementwise passes ------------------------------------------------------------------
// No __restrict__ on the tensors: in-place use (y == x, dx == dy) is allowed. Each thread loads all its
// vectors of a step before storing any, and no two threads touch the same element, so in place is safe.

template <class T, int V, bool kRelu>
SBN_HD void normalize_thread_planar(const T* x, T* y, const BnTile& t,
                                    std::int64_t block, int tx, int ty, const float* hi, const float* a,
                                    const float* b) {
  for (PlanarCursor cur(t, block, 0, tx, ty); cur.ok(); cur.next()) {
    const float h = hi[cur.channel], ac = a[cur.channel], bc = b[cur.channel];
    map_step<T, V>(cur, {x}, y,
                   [&](const auto& s, int u, int j) { return bn_normalize_value<kRelu>(s.at(u, 0, j), h, ac, bc); });
  }
}

template <class T, int V, bool kRelu>
SBN_HD void normalize_thread_rows(const T* x, T* y, const BnTile& t, std::int64_t bx,
                                  std::int64_t split, int tx, int ty, const float* hi, const float* a,
                                  const float* b) {
  RowsCursor cur(t, bx, split, tx, ty);
  if (!cur.active) return;
  float h[V], ac[V], bc[V];
  load_lanes(cur, hi, h);
  load_lanes(cur, a, ac);
  load_lanes(cur, b, bc);
  for (; cur.ok(); cur.next()) {
    map_step<T, V>(cur, {x}, y, [&](const auto& s, int u, int j) {
      return bn_normalize_value<kRelu>(s.at(u, 0, j), h[j], ac[j], bc[j]);
    });
  }
}

template <class T, int V, bool kRelu>
SBN_HD void elemt_thread_planar(const T* dy, const T* x, T* dx,
                                const BnTile& t, std::int64_t block, int tx, int ty, const float* hi,
                                const float* a, const float* b, const float* k1, const float* k0) {
  for (PlanarCursor cur(t, block, 0, tx, ty); cur.ok(); cur.next()) {
    const std::int64_t c = cur.channel;
    const float h = hi[c], ac = a[c], bc = b[c], c1 = k1[c], c0 = k0[c];
    map_step<T, V>(cur, {x, dy}, dx, [&](const auto& s, int u, int j) {
      return bn_elemt_value<kRelu>(s.at(u, 1, j), s.at(u, 0, j), h, ac, bc, c1, c0);
    });
  }
}

template <class T, int V, bool kRelu>
SBN_HD void elemt_thread_rows(const T* dy, const T* x, T* dx,
                              const BnTile& t, std::int64_t bx, std::int64_t split, int tx, int ty,
                              const float* hi, const float* a, const float* b, const float* k1,
                              const float* k0) {
  RowsCursor cur(t, bx, split, tx, ty);
  if (!cur.active) return;
  float h[V], ac[V], bc[V], c1[V], c0[V];
  load_lanes(cur, hi, h);
  load_lanes(cur, a, ac);
  load_lanes(cur, b, bc);
  load_lanes(cur, k1, c1);
  load_lanes(cur, k0, c0);
  for (; cur.ok(); cur.next()) {
    map_step<T, V>(cur, {x, dy}, dx, [&](const auto& s, int u, int j) {
      return bn_elemt_value<kRelu>(s.at(u, 1, j), s.at(u, 0, j), h[j], ac[j], bc[j], c1[j], c0[j]);
    });
  }
}

// ---- per-channel steps of the merge and combine kernels -------------------------------------------
// (The combines' arithmetic per channel, bn_combine_channel and bn_backward_combine_channel, is shared
// with the CPU kernels: syncbn/bn_kernels.h.)

// Block partials live in the workspace as [split][2][C] doubles: first sums, then second sums.
SBN_HD std::int64_t bn_partial_index(std::int64_t split, int which, std::int64_t channels, std::int64_t c) {
  return (2 * split + which) * channels + c;
}

// Sum over the splits of channel c, in split order (deterministic).
SBN_HD void bn_sum_partials(const double* ws, std::int64_t splits, std::int64_t channels, std::int64_t c,
                            double* s1, double* s2) {
  double a = 0.0, b = 0.0;
  for (std::int64_t s = 0; s < splits; ++s) {
    a += ws[bn_partial_index(s, 0, channels, c)];
    b += ws[bn_partial_index(s, 1, channels, c)];
  }
  *s1 = a;
  *s2 = b;
}

SBN_HD void bn_write_header(double* msg, double tag, double count) {
  msg[kMsgTag] = tag;
  msg[kMsgTag2] = tag * tag;
  msg[kMsgCount] = count;
}

// Forward message entries of channel c from the local sums around the local shift k (n local values).
SBN_HD void bn_stats_finish_channel(double s1, double s2, double n, double k, const double* pivot,
                                    std::int64_t channels, std::int64_t c, double* msg) {
  double* S1 = msg + kMsgHeader;
  double* S2 = S1 + channels;
  if (n == 0.0) {
    S1[c] = 0.0;
    S2[c] = 0.0;
    return;
  }
  bn_shift_to_pivot(s1, s2, n, k, pivot ? pivot[c] : 0.0, &S1[c], &S2[c]);
}

// Backward message entries of channel c, and the LOCAL parameter gradients (accumulated, as on the CPU;
// `renorm`: Batch Renormalization's dγ).
SBN_HD void bn_backward_finish_channel(double A, double B, std::int64_t channels, std::int64_t c,
                                       const double* mean, const float* hi, const double* invstd, double* msg,
                                       float* dgamma, float* dbeta, BnRenormFactors renorm = {}) {
  msg[kMsgHeader + c] = A;
  msg[kMsgHeader + channels + c] = B;
  if (dbeta) dbeta[c] += static_cast<float>(A);
  if (dgamma) {
    double dg = bn_dgamma(A, B, mean[c], hi[c], renorm.r ? renorm.r[c] * invstd[c] : invstd[c]);
    if (renorm.d) dg += renorm.d[c] * A;  // Batch Renormalization: Σdy'·(x̂·r + d)
    dgamma[c] += static_cast<float>(dg);
  }
}

// The checks of cpu::bn_combine, on the summed message.
SBN_HD BnStatus bn_forward_status(const double* msg, int group_size, double tag) {
  if (!bn_tags_agree(msg[kMsgTag], msg[kMsgTag2], group_size, tag)) return kBnTagMismatch;
  if (msg[kMsgCount] < 1) return kBnEmptyBatch;
  if (msg[kMsgCount] < 2) return kBnSingleSample;
  return kBnOk;
}

// The checks of cpu::bn_backward_combine.
SBN_HD BnStatus bn_backward_status(const double* msg, int group_size, double tag, double expected_count) {
  if (!bn_tags_agree(msg[kMsgTag], msg[kMsgTag2], group_size, tag)) return kBnTagMismatch;
  if (msg[kMsgCount] != expected_count) return kBnCountMismatch;
  return kBnOk;
}

// Eval-mode coefficients from the running statistics (the CPU layer's eval branch).
SBN_HD void bn_running_coefs_channel(const float* running_mean, const float* running_var, double eps,
                                     const float* gamma, const float* beta, std::int64_t c, double* mean,
                                     double* var, double* invstd, float* hi, float* a, float* b) {
  const double m = running_mean[c];
  const double is = 1.0 / sqrt(static_cast<double>(running_var[c]) + eps);
  mean[c] = m;
  var[c] = running_var[c];
  invstd[c] = is;
  bn_forward_coefs(m, is, gamma ? gamma[c] : 1.0, beta ? beta[c] : 0.0, &hi[c], &a[c], &b[c]);
}

}  // namespace syncbn::cuda
