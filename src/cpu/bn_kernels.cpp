// CPU SyncBN kernels. Every element loop streams through memory once: the double-accumulating
// reductions through the SIMD traits of simd.h, the elementwise passes as `omp simd` loops the compiler
// vectorizes (with non-temporal stores for large outputs); the per-channel arithmetic comes from
// bn_math.h, shared with the CUDA kernels.
//
// Memory traffic per element (fp32): bn_stats reads x (4 B); bn_normalize reads x, writes y (8 B);
// bn_backward_reduce reads x, dy (8 B); bn_backward_elemt reads x, dy, writes dx (12 B). These are the
// "bytes that must move" syncbn-bench divides by: the all-reduce between the passes forbids fusing them.
// What can be fused is the max pooling after a BN+ReLU (the *_pool kernels, BnPool): normalize_pool reads
// x and writes the pooled output and its window indices (4 + 1.25 B per input element for 2×2), and backward
// reads the pooled dy and the indices in place of a full-size dy that max-pool backward would write and
// both backward passes would read. With --precision bf16 the fused passes (and bn_stats before them) also
// read and write bf16 activations (templates over the element types, widened in registers, accumulated
// exactly as fp32): half the bytes of x, dx and the pooled y, dy.
#include "syncbn/bn_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "simd.h"
#include "stream_store.h"
#include "syncbn/error.h"

namespace syncbn {

BnGeometry bn_geometry(const std::vector<std::int64_t>& shape, Layout layout, const std::string& who) {
  BnGeometry g;
  const std::size_t rank = shape.size();
  SBN_CHECK(rank >= 2 && rank <= 4,
            who + ": unsupported input rank " + std::to_string(rank) + " " + describe(shape, layout) +
                "; expected (N, C), (N, C, L) or (N, C, H, W)");
  g.channels = shape[1];
  if (rank == 4 && layout == Layout::kChannelsLast) {
    g.channels_last = true;
    g.outer = shape[0] * shape[2] * shape[3];
    g.inner = 1;
  } else if (rank == 2) {
    g.channels_last = true;  // (N, C) is channels-last with one row per sample
    g.outer = shape[0];
    g.inner = 1;
  } else {
    SBN_CHECK(layout == Layout::kPlanar,
              who + ": channels-last layout needs a rank-4 tensor, got " + describe(shape, layout));
    g.outer = shape[0];
    g.inner = 1;
    for (std::size_t i = 2; i < rank; ++i) g.inner *= shape[i];
  }
  return g;
}

// ---- combine arguments (shared by the CPU and CUDA paths) ---------------------------------------

BnRunningUpdate BnRunningUpdate::of(bool update, const std::optional<double>& momentum,
                                    std::int64_t batches_tracked) {
  BnRunningUpdate u;
  if (!update) return u;
  u.kind = momentum ? kMomentum : kCumulative;
  u.momentum = momentum.value_or(0.0);
  u.batches_tracked = batches_tracked;
  return u;
}

BnLayerArrays BnLayerArrays::batch(std::int64_t k) const {
  const std::int64_t p = k * channels;
  BnLayerArrays r = *this;
  for (double** v : {&r.mean, &r.var, &r.invstd, &r.renorm_r, &r.renorm_d})
    if (*v) *v += p;
  for (float** v : {&r.hi, &r.a, &r.b, &r.k1, &r.k0})
    if (*v) *v += p;
  return r;
}

BnCombineArgs bn_combine_args(const BnLayerArrays& arrays, std::int64_t batch, int group_size, double tag,
                              double eps, BnRunningUpdate running, BnRenormLimits renorm) {
  SBN_CHECK(arrays.mean && arrays.var && arrays.invstd && arrays.hi && arrays.a && arrays.b,
            "bn_combine_args: an output array is missing");
  SBN_CHECK(running.kind == BnRunningUpdate::kNone || (arrays.running_mean && arrays.running_var),
            "bn_combine_args: a running-statistics update without both running arrays");
  SBN_CHECK(!renorm.enabled || (arrays.running_mean && arrays.running_var && arrays.renorm_r && arrays.renorm_d),
            "bn_combine_args: Batch Renormalization without the running statistics or the r, d arrays");
  SBN_CHECK(!renorm.enabled || (renorm.rmax >= 1.0 && renorm.dmax >= 0.0),
            "bn_combine_args: Batch Renormalization needs rmax >= 1 and dmax >= 0");
  return {group_size, tag, eps, running, arrays.batch(batch), renorm};
}

BnBackwardCombineArgs bn_backward_combine_args(const BnLayerArrays& arrays, std::int64_t batch, int group_size,
                                               double tag, double expected_count, bool renorm) {
  SBN_CHECK(arrays.mean && arrays.invstd && arrays.hi && arrays.k1 && arrays.k0,
            "bn_backward_combine_args: an input or output array is missing");
  SBN_CHECK(!renorm || arrays.renorm_r, "bn_backward_combine_args: Batch Renormalization without the r array");
  return {group_size, tag, expected_count, arrays.batch(batch), renorm};
}

namespace cpu {
namespace {

using simd::Native;
using simd::Scalar;

// An element as fp32: bf16 activations (--precision bf16) widen exactly; fp32 ones are themselves, so
// the fp32 instantiations are the fp32 code.
inline float widen(float v) { return v; }
inline float widen(Bf16 v) { return bf16_to_float(v); }

// Accumulators of a planar reduction: four independent vector sums per quantity (enough to hide the
// add latency at memory speed), plus scalar sums for the tails. Kept across the N planes of a channel.
template <class S>
struct PlaneAcc {
  typename S::D a[4] = {S::zero(), S::zero(), S::zero(), S::zero()};
  typename S::D b[4] = {S::zero(), S::zero(), S::zero(), S::zero()};
  double ta = 0, tb = 0;
  double sum_a() const { return S::hsum(S::add(S::add(a[0], a[1]), S::add(a[2], a[3]))) + ta; }
  double sum_b() const { return S::hsum(S::add(S::add(b[0], b[1]), S::add(b[2], b[3]))) + tb; }
};

// acc.a += Σ(p − k), acc.b += Σ(p − k)² over one contiguous plane. The accumulators are copied into
// locals: vector types may alias anything, so updating them through `acc` would force a store per step.
template <class S, class X>
inline void stats_plane(const X* p, std::int64_t len, double k, PlaneAcc<S>& acc) {
  constexpr int W = S::kW;
  using D = typename S::D;
  const D K = S::set1(k);
  D a0 = acc.a[0], a1 = acc.a[1], a2 = acc.a[2], a3 = acc.a[3];
  D b0 = acc.b[0], b1 = acc.b[1], b2 = acc.b[2], b3 = acc.b[3];
  std::int64_t i = 0;
  for (; i + 4 * W <= len; i += 4 * W) {
    const D d0 = S::sub(S::cvt(S::loadf(p + i)), K);
    const D d1 = S::sub(S::cvt(S::loadf(p + i + W)), K);
    const D d2 = S::sub(S::cvt(S::loadf(p + i + 2 * W)), K);
    const D d3 = S::sub(S::cvt(S::loadf(p + i + 3 * W)), K);
    a0 = S::add(a0, d0);
    a1 = S::add(a1, d1);
    a2 = S::add(a2, d2);
    a3 = S::add(a3, d3);
    b0 = S::fma(d0, d0, b0);
    b1 = S::fma(d1, d1, b1);
    b2 = S::fma(d2, d2, b2);
    b3 = S::fma(d3, d3, b3);
  }
  for (; i + W <= len; i += W) {
    const D d = S::sub(S::cvt(S::loadf(p + i)), K);
    a0 = S::add(a0, d);
    b0 = S::fma(d, d, b0);
  }
  acc.a[0] = a0, acc.a[1] = a1, acc.a[2] = a2, acc.a[3] = a3;
  acc.b[0] = b0, acc.b[1] = b1, acc.b[2] = b2, acc.b[3] = b3;
  for (; i < len; ++i) {
    const double d = static_cast<double>(widen(p[i])) - k;
    acc.ta += d;
    acc.tb = std::fma(d, d, acc.tb);
  }
}

// dy' = dy, or dy gated by the fused ReLU: the forward output a·(x − hi) + b recomputed with the same
// fma as bn_normalize, so the gate matches the forward bit for bit.
template <class S, bool kRelu>
inline typename S::F gated(typename S::F dy, typename S::F xh, typename S::F a, typename S::F b) {
  if constexpr (kRelu) {
    return S::gate(dy, xh, a, b);
  } else {
    return dy;
  }
}

// acc.a += Σdy', acc.b += Σdy'·(x − hi) over one plane (accumulators in locals, as in stats_plane).
template <class S, bool kRelu>
inline void backward_plane(const float* dy, const float* x, std::int64_t len, float hi, float a, float b,
                           PlaneAcc<S>& acc) {
  constexpr int W = S::kW;
  using D = typename S::D;
  using F = typename S::F;
  const F H = S::setf(hi), A = S::setf(a), B = S::setf(b);
  D a0 = acc.a[0], a1 = acc.a[1], a2 = acc.a[2], a3 = acc.a[3];
  D b0 = acc.b[0], b1 = acc.b[1], b2 = acc.b[2], b3 = acc.b[3];
  auto step = [&](std::int64_t j, D& sa, D& sb) {
    const F xh = S::subf(S::loadf(x + j), H);
    const D g = S::cvt(gated<S, kRelu>(S::loadf(dy + j), xh, A, B));
    sa = S::add(sa, g);
    sb = S::fma(g, S::cvt(xh), sb);
  };
  std::int64_t i = 0;
  for (; i + 4 * W <= len; i += 4 * W) {
    step(i, a0, b0);
    step(i + W, a1, b1);
    step(i + 2 * W, a2, b2);
    step(i + 3 * W, a3, b3);
  }
  for (; i + W <= len; i += W) step(i, a0, b0);
  acc.a[0] = a0, acc.a[1] = a1, acc.a[2] = a2, acc.a[3] = a3;
  acc.b[0] = b0, acc.b[1] = b1, acc.b[2] = b2, acc.b[3] = b3;
  for (; i < len; ++i) {
    const float xh = x[i] - hi;
    const double g = gated<Scalar, kRelu>(dy[i], xh, a, b);
    acc.ta += g;
    acc.tb = std::fma(g, static_cast<double>(xh), acc.tb);
  }
}

// Planar reductions walk this many channels at a time through each sample (see bn_stats).
constexpr std::int64_t kPlaneGroup = 16;

// Channels-last reductions fold kRows rows at a time into per-channel sums that stay in L1 (S1, S2 or
// A, B: 2·C doubles), so each sum is loaded and stored once per kRows rows instead of once per row.
constexpr std::int64_t kRows = 4;

// Channels-last stats for channels [c0, c1) (a multiple of S::kW wide), relative to the first row k.
template <class S, class X>
inline void stats_rows(const X* x, std::int64_t rows, std::int64_t C, std::int64_t c0, std::int64_t c1,
                       double* S1, double* S2) {
  constexpr int W = S::kW;
  using D = typename S::D;
  const X* k = x;
  std::int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    const X* p = x + r * C;
    for (std::int64_t c = c0; c < c1; c += W) {
      const D kc = S::cvt(S::loadf(k + c));
      const D d0 = S::sub(S::cvt(S::loadf(p + c)), kc);
      const D d1 = S::sub(S::cvt(S::loadf(p + C + c)), kc);
      const D d2 = S::sub(S::cvt(S::loadf(p + 2 * C + c)), kc);
      const D d3 = S::sub(S::cvt(S::loadf(p + 3 * C + c)), kc);
      S::stored(S1 + c, S::add(S::loadd(S1 + c), S::add(S::add(d0, d1), S::add(d2, d3))));
      const D q01 = S::fma(d1, d1, S::mul(d0, d0));
      const D q23 = S::fma(d3, d3, S::mul(d2, d2));
      S::stored(S2 + c, S::add(S::loadd(S2 + c), S::add(q01, q23)));
    }
  }
  for (; r < rows; ++r) {
    const X* p = x + r * C;
    for (std::int64_t c = c0; c < c1; c += W) {
      const D d = S::sub(S::cvt(S::loadf(p + c)), S::cvt(S::loadf(k + c)));
      S::stored(S1 + c, S::add(S::loadd(S1 + c), d));
      S::stored(S2 + c, S::fma(d, d, S::loadd(S2 + c)));
    }
  }
}

// Channels-last backward sums for channels [c0, c1): A += Σdy', B += Σdy'·(x − hi).
template <class S, bool kRelu, class G, class X>
inline void backward_rows(const G* dy, const X* x, std::int64_t rows, std::int64_t C,
                          std::int64_t c0, std::int64_t c1, const float* hi, const float* a,
                          const float* b, double* A, double* B) {
  constexpr int W = S::kW;
  using D = typename S::D;
  using F = typename S::F;
  std::int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    const X* xp = x + r * C;
    const G* dp = dy + r * C;
    for (std::int64_t c = c0; c < c1; c += W) {
      const F H = S::loadf(hi + c), Av = S::loadf(a + c), Bv = S::loadf(b + c);
      D sa = S::zero(), sb = S::zero();
      for (std::int64_t j = 0; j < kRows; ++j) {
        const F xh = S::subf(S::loadf(xp + j * C + c), H);
        const D g = S::cvt(gated<S, kRelu>(S::loadf(dp + j * C + c), xh, Av, Bv));
        sa = S::add(sa, g);
        sb = S::fma(g, S::cvt(xh), sb);
      }
      S::stored(A + c, S::add(S::loadd(A + c), sa));
      S::stored(B + c, S::add(S::loadd(B + c), sb));
    }
  }
  for (; r < rows; ++r) {
    const X* xp = x + r * C;
    const G* dp = dy + r * C;
    for (std::int64_t c = c0; c < c1; c += W) {
      const F xh = S::subf(S::loadf(xp + c), S::loadf(hi + c));
      const D g = S::cvt(gated<S, kRelu>(S::loadf(dp + c), xh, S::loadf(a + c), S::loadf(b + c)));
      S::stored(A + c, S::add(S::loadd(A + c), g));
      S::stored(B + c, S::fma(g, S::cvt(xh), S::loadd(B + c)));
    }
  }
}

template <bool kRelu>
void backward_sums(const float* dy, const float* x, const BnGeometry& g, const float* hi, const float* a,
                   const float* b, double* A, double* B, std::int64_t c0, std::int64_t c1) {
  const std::int64_t C = g.channels;
  if (!g.channels_last) {
    for (std::int64_t cb = c0; cb < c1; cb += kPlaneGroup) {  // as in bn_stats
      const std::int64_t ce = std::min(c1, cb + kPlaneGroup);
      PlaneAcc<Native> acc[kPlaneGroup];
      for (std::int64_t o = 0; o < g.outer; ++o)
        for (std::int64_t c = cb; c < ce; ++c) {
          const std::int64_t off = (o * C + c) * g.inner;
          backward_plane<Native, kRelu>(dy + off, x + off, g.inner, hi[c], a[c], b[c], acc[c - cb]);
        }
      for (std::int64_t c = cb; c < ce; ++c) {
        A[c] = acc[c - cb].sum_a();
        B[c] = acc[c - cb].sum_b();
      }
    }
    return;
  }
  std::fill(A + c0, A + c1, 0.0);
  std::fill(B + c0, B + c1, 0.0);
  const std::int64_t cv = c0 + (c1 - c0) - (c1 - c0) % Native::kW;
  backward_rows<Native, kRelu>(dy, x, g.outer, C, c0, cv, hi, a, b, A, B);
  backward_rows<Scalar, kRelu>(dy, x, g.outer, C, cv, c1, hi, a, b, A, B);
}

inline float relu_if(float y, bool relu) { return relu ? std::max(y, 0.0f) : y; }

// An output element: fp32 as computed, or rounded once to bf16 (nearest even).
inline void put(float& dst, float v) { dst = v; }
inline void put(Bf16& dst, float v) { dst = float_to_bf16(v); }

inline float gate(float dy, float xh, float a, float b, bool relu) {
  return (!relu || std::fma(a, xh, b) > 0.0f) ? dy : 0.0f;
}

// BN's elementwise backward of one element, x̂-centred (xh = x − hi): dx = a·gate(dy) + k1·xh + k0, the
// one expression of the plain and the fused (pool) passes.
inline float elemt_dx(float dy, float xh, float a, float b, float k1, float k0, bool relu) {
  return std::fma(a, gate(dy, xh, a, b, relu), std::fma(k1, xh, k0));
}

// Whether rows of C floats can be streamed line by line (every row starts on a 64-byte boundary).
inline bool rows_streamable(const void* dst, std::int64_t channels) {
  return channels % kLineFloats == 0 && (reinterpret_cast<std::uintptr_t>(dst) & 63u) == 0;
}

// ---- max pooling fused into the passes (BnPool) ---------------------------------------------------

// The rows of dy that bn_backward_reduce_pool expands at a time: a multiple of kRows (so backward_rows
// groups the rows as one whole-batch call does), about 16 KB, kept in L1 with the rows of x it meets.
constexpr std::int64_t kPoolTileFloats = 4096;

// Where the rows (n, h, w positions) of a pooled batch's full-size gradient take their values, walked in
// memory order with counters (no divisions per row): the pooled element `cell` when arg there equals
// `here`, its index in the window; cell −1 for a row or column the pooling dropped (gradient 0).
struct PoolSource {
  std::int64_t cell = -1;
  std::int32_t here = 0;
};

class PoolRows {
 public:
  PoolRows(const BnPool& p, std::int64_t row)
      : k_(p.k), H_(p.height), W_(p.width), Ho_(p.out_height()), Wo_(p.out_width()) {
    n_ = row / (H_ * W_);
    h_ = row % (H_ * W_) / W_;
    w_ = row % W_;
    ho_ = h_ / k_, i_ = h_ % k_, wo_ = w_ / k_, j_ = w_ % k_;
  }
  PoolSource source() const {
    if (ho_ >= Ho_ || wo_ >= Wo_) return {};
    return {(n_ * Ho_ + ho_) * Wo_ + wo_, static_cast<std::int32_t>(i_ * k_ + j_)};
  }
  void next() {
    if (++j_ == k_) j_ = 0, ++wo_;
    if (++w_ < W_) return;
    w_ = wo_ = j_ = 0;
    if (++i_ == k_) i_ = 0, ++ho_;
    if (++h_ < H_) return;
    h_ = ho_ = i_ = 0;
    ++n_;
  }

 private:
  std::int64_t k_, H_, W_, Ho_, Wo_;
  std::int64_t n_ = 0, h_ = 0, w_ = 0, ho_ = 0, i_ = 0, wo_ = 0, j_ = 0;  // (h, w) = (ho·k + i, wo·k + j)
};

// Channels [c0, c1) of one row of the full-size gradient, the expression of MaxPool::backward.
template <class G>
inline void pooled_dy_row(const G* dy, const std::uint8_t* arg, std::int64_t C, PoolSource s, std::int64_t c0,
                          std::int64_t c1, float* dst) {
  if (s.cell < 0) {
    std::fill(dst + c0, dst + c1, 0.0f);
    return;
  }
  const G* g = dy + s.cell * C;
  const std::uint8_t* ap = arg + s.cell * C;
#pragma omp simd
  for (std::int64_t c = c0; c < c1; ++c) dst[c] = ap[c] == s.here ? widen(g[c]) : 0.0f;
}

// backward_sums over the full-size gradient, expanded a tile of rows at a time into scratch.
template <bool kRelu, class G, class X>
void backward_sums_pool(const G* dy, const std::uint8_t* arg, const BnPool& pool, const X* x,
                        const BnGeometry& g, const float* hi, const float* a, const float* b, double* A, double* B,
                        std::int64_t c0, std::int64_t c1, float* scratch) {
  const std::int64_t C = g.channels, tile = bn_pool_scratch_floats(C) / C;
  std::fill(A + c0, A + c1, 0.0);
  std::fill(B + c0, B + c1, 0.0);
  const std::int64_t cv = c0 + (c1 - c0) - (c1 - c0) % Native::kW;
  PoolRows src(pool, 0);
  for (std::int64_t r0 = 0; r0 < g.outer; r0 += tile) {
    const std::int64_t rows = std::min(tile, g.outer - r0);
    for (std::int64_t i = 0; i < rows; ++i, src.next())
      pooled_dy_row(dy, arg, C, src.source(), c0, c1, scratch + i * C);
    backward_rows<Native, kRelu>(scratch, x + r0 * C, rows, C, c0, cv, hi, a, b, A, B);
    backward_rows<Scalar, kRelu>(scratch, x + r0 * C, rows, C, cv, c1, hi, a, b, A, B);
  }
}

// One pooled element's window (top-left input row `base`, rows W·C apart) for channels [c0, c1): the
// activations computed as bn_normalize computes them, the maximum and its index as MaxPool computes them.
template <bool kRelu, class X, class Y>
inline void pool_window(const X* base, std::int64_t k, std::int64_t W, std::int64_t C, const float* hi,
                        const float* a, const float* b, std::int64_t c0, std::int64_t c1, Y* out,
                        std::uint8_t* arg) {
  auto act = [=](const X* p, std::int64_t c) {
    return relu_if(std::fma(a[c], widen(p[c]) - hi[c], b[c]), kRelu);
  };
  if (k == 2) {
    const X* p0 = base;
    const X* p1 = base + C;
    const X* p2 = base + W * C;
    const X* p3 = p2 + C;
#pragma omp simd
    for (std::int64_t c = c0; c < c1; ++c) {
      const float v0 = act(p0, c), v1 = act(p1, c), v2 = act(p2, c), v3 = act(p3, c);
      const float top = std::max(v0, v1), bottom = std::max(v2, v3);
      const std::int32_t top_arg = static_cast<std::int32_t>(v1 > v0);
      const std::int32_t bottom_arg = 2 + static_cast<std::int32_t>(v3 > v2);
      const std::int32_t second = static_cast<std::int32_t>(bottom > top);
      put(out[c], std::max(top, bottom));
      arg[c] = static_cast<std::uint8_t>(top_arg + second * (bottom_arg - top_arg));
    }
    return;
  }
  for (std::int64_t c = c0; c < c1; ++c) {
    float m = act(base, c);
    std::int32_t best = 0;
    for (std::int64_t i = 0; i < k; ++i)
      for (std::int64_t j = 0; j < k; ++j) {
        const float v = act(base + (i * W + j) * C, c);
        if (v > m) m = v, best = static_cast<std::int32_t>(i * k + j);
      }
    put(out[c], m);
    arg[c] = static_cast<std::uint8_t>(best);
  }
}

template <bool kRelu, class X, class Y>
void normalize_pool(const X* x, const BnGeometry& g, const BnPool& p, const float* hi, const float* a,
                    const float* b, Y* y, std::uint8_t* arg, std::int64_t c0, std::int64_t c1) {
  const std::int64_t C = g.channels, H = p.height, W = p.width, k = p.k, Ho = p.out_height(), Wo = p.out_width();
  const std::int64_t N = g.outer / (H * W);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t ho = 0; ho < Ho; ++ho)
      for (std::int64_t wo = 0; wo < Wo; ++wo) {
        const std::int64_t cell = (n * Ho + ho) * Wo + wo;
        pool_window<kRelu>(x + ((n * H + ho * k) * W + wo * k) * C, k, W, C, hi, a, b, c0, c1, y + cell * C,
                           arg + cell * C);
      }
}

void check_pool(const BnGeometry& g, const BnPool& p) {
  SBN_CHECK(g.channels_last && p.k >= 1 && p.k <= kMaxPoolWindow && p.out_height() > 0 && p.out_width() > 0 &&
                g.outer % (p.height * p.width) == 0,
            "fused BN + max-pool: needs a channels-last batch of HxW planes at least k x k, k <= 16 (k = " +
                std::to_string(p.k) + ", " + std::to_string(p.height) + "x" + std::to_string(p.width) + ")");
}

// dγ, dβ of a backward message's local sums (bn_backward_reduce).
void add_param_grads(const double* A, const double* B, const double* mean, const float* hi, const double* invstd,
                     float* dgamma, float* dbeta, std::int64_t c0, std::int64_t c1, BnRenormFactors renorm) {
  for (std::int64_t c = c0; c < c1; ++c) {
    if (dbeta) dbeta[c] += static_cast<float>(A[c]);
    if (!dgamma) continue;
    double dg = bn_dgamma(A[c], B[c], mean[c], hi[c], renorm.r ? renorm.r[c] * invstd[c] : invstd[c]);
    if (renorm.d) dg += renorm.d[c] * A[c];  // Batch Renormalization: Σdy'·(x̂·r + d)
    dgamma[c] += static_cast<float>(dg);
  }
}

inline void backward_header(double tag, const BnGeometry& g, double* msg) {
  msg[kMsgTag] = tag;
  msg[kMsgTag2] = tag * tag;
  msg[kMsgCount] = static_cast<double>(g.per_channel());
}

}  // namespace

// ---- forward ----------------------------------------------------------------------------------

template <class X>
void bn_first_values(const X* x, const BnGeometry& g, double* out, ChannelRange r) {
  for (std::int64_t c = r.begin; c < r.stop(g.channels); ++c)
    out[c] = g.per_channel() == 0 ? 0.0 : static_cast<double>(widen(g.channels_last ? x[c] : x[c * g.inner]));
}

void bn_first_values(const float* x, const BnGeometry& g, double* out, ChannelRange r) {
  bn_first_values<float>(x, g, out, r);
}

void bn_stats(const float* x, const BnGeometry& g, const double* pivot, double tag, double* msg, ChannelRange r) {
  bn_stats<float>(x, g, pivot, tag, msg, r);
}

template <class X>
void bn_stats(const X* x, const BnGeometry& g, const double* pivot, double tag, double* msg, ChannelRange r) {
  const std::int64_t C = g.channels, c0 = r.begin, c1 = r.stop(C);
  const std::int64_t n = g.per_channel();
  msg[kMsgTag] = tag;
  msg[kMsgTag2] = tag * tag;
  msg[kMsgCount] = static_cast<double>(n);
  double* S1 = msg + kMsgHeader;
  double* S2 = S1 + C;
  if (n == 0) {
    std::fill(S1 + c0, S1 + c1, 0.0);
    std::fill(S2 + c0, S2 + c1, 0.0);
    return;
  }
  if (!g.channels_last) {
    // kPlaneGroup channels at a time, sample by sample: each sample's planes of the group are one
    // contiguous run for the prefetchers; every channel still adds its planes in sample order.
    for (std::int64_t cb = c0; cb < c1; cb += kPlaneGroup) {
      const std::int64_t ce = std::min(c1, cb + kPlaneGroup);
      PlaneAcc<Native> acc[kPlaneGroup];
      for (std::int64_t o = 0; o < g.outer; ++o)
        for (std::int64_t c = cb; c < ce; ++c)  // local shift: this rank's first value of channel c
          stats_plane(x + (o * C + c) * g.inner, g.inner, static_cast<double>(widen(x[c * g.inner])), acc[c - cb]);
      for (std::int64_t c = cb; c < ce; ++c)
        bn_shift_to_pivot(acc[c - cb].sum_a(), acc[c - cb].sum_b(), static_cast<double>(n), widen(x[c * g.inner]),
                          pivot ? pivot[c] : 0.0, &S1[c], &S2[c]);
    }
    return;
  }
  std::fill(S1 + c0, S1 + c1, 0.0);
  std::fill(S2 + c0, S2 + c1, 0.0);
  const std::int64_t cv = c0 + (c1 - c0) - (c1 - c0) % Native::kW;
  stats_rows<Native>(x, g.outer, C, c0, cv, S1, S2);
  stats_rows<Scalar>(x, g.outer, C, cv, c1, S1, S2);
  for (std::int64_t c = c0; c < c1; ++c)  // local shift: the first row
    bn_shift_to_pivot(S1[c], S2[c], static_cast<double>(n), widen(x[c]), pivot ? pivot[c] : 0.0, &S1[c], &S2[c]);
}

BnStatus bn_combine(const double* msg, const BnCombineArgs& args, ChannelRange r) {
  if (!bn_tags_agree(msg[kMsgTag], msg[kMsgTag2], args.group_size, args.tag)) return kBnTagMismatch;
  const double n = msg[kMsgCount];
  if (n < 1) return kBnEmptyBatch;
  if (n < 2) return kBnSingleSample;
  const double factor = args.running.factor();
  for (std::int64_t c = r.begin; c < r.stop(args.arrays.channels); ++c) bn_combine_channel(msg, args, factor, c);
  return kBnOk;
}

void bn_normalize(const float* x, const BnGeometry& g, const float* hi, const float* a, const float* b,
                  bool relu, bool stream, float* y, ChannelRange r) {
  // Memory order. (Walking in reverse, to start on the lines bn_stats left in L2, measured slower:
  // the hardware prefetchers follow ascending streams better.)
  const std::int64_t C = g.channels, c0 = r.begin, c1 = r.stop(C);
  if (!g.channels_last) {
    for (std::int64_t o = 0; o < g.outer; ++o) {
      for (std::int64_t c = c0; c < c1; ++c) {
        const float h = hi[c], ac = a[c], bc = b[c];
        const std::int64_t off = (o * C + c) * g.inner;
        const float* xp = x + off;
        write_elements(y + off, g.inner, stream,
                       [=](std::int64_t i) { return relu_if(std::fma(ac, xp[i] - h, bc), relu); });
      }
    }
  } else {
    const bool nt = stream && rows_streamable(y + c0, C) && (c1 - c0) % kLineFloats == 0;
    const float* hr = hi + c0;
    const float* ar = a + c0;
    const float* br = b + c0;
    for (std::int64_t row = 0; row < g.outer; ++row) {
      const float* xp = x + row * C + c0;
      write_elements(y + row * C + c0, c1 - c0, nt,
                     [=](std::int64_t c) { return relu_if(std::fma(ar[c], xp[c] - hr[c], br[c]), relu); });
    }
  }
  if (stream) stream_fence();
}

// ---- backward ---------------------------------------------------------------------------------

void bn_backward_reduce(const float* dy, const float* x, const BnGeometry& g, const float* hi,
                        const float* a, const float* b, bool relu, const double* mean,
                        const double* invstd, double tag, double* msg, float* dgamma, float* dbeta,
                        ChannelRange r, BnRenormFactors renorm) {
  const std::int64_t C = g.channels, c0 = r.begin, c1 = r.stop(C);
  backward_header(tag, g, msg);
  double* A = msg + kMsgHeader;
  double* B = A + C;
  if (relu) {
    backward_sums<true>(dy, x, g, hi, a, b, A, B, c0, c1);
  } else {
    backward_sums<false>(dy, x, g, hi, a, b, A, B, c0, c1);
  }
  add_param_grads(A, B, mean, hi, invstd, dgamma, dbeta, c0, c1, renorm);
}

BnStatus bn_backward_combine(const double* msg, const BnBackwardCombineArgs& args, ChannelRange r) {
  if (!bn_tags_agree(msg[kMsgTag], msg[kMsgTag2], args.group_size, args.tag)) return kBnTagMismatch;
  if (msg[kMsgCount] != args.expected_count) return kBnCountMismatch;
  for (std::int64_t c = r.begin; c < r.stop(args.arrays.channels); ++c) bn_backward_combine_channel(msg, args, c);
  return kBnOk;
}

void bn_backward_elemt(const float* dy, const float* x, const BnGeometry& g, const float* hi,
                       const float* a, const float* b, bool relu, const float* k1, const float* k0,
                       bool stream, float* dx, ChannelRange r) {
  const std::int64_t C = g.channels, c0 = r.begin, c1 = r.stop(C);
  if (!g.channels_last) {
    for (std::int64_t o = 0; o < g.outer; ++o) {
      for (std::int64_t c = c0; c < c1; ++c) {
        const float h = hi[c], ac = a[c], bc = b[c], q1 = k1[c], q0 = k0[c];
        const std::int64_t off = (o * C + c) * g.inner;
        const float* xp = x + off;
        const float* dp = dy + off;
        write_elements(dx + off, g.inner, stream, [=](std::int64_t i) {
          const float xh = xp[i] - h;
          return elemt_dx(dp[i], xh, ac, bc, q1, q0, relu);
        });
      }
    }
  } else {
    const bool nt = stream && rows_streamable(dx + c0, C) && (c1 - c0) % kLineFloats == 0;
    const float* hr = hi + c0;
    const float* ar = a + c0;
    const float* br = b + c0;
    const float* k1r = k1 + c0;
    const float* k0r = k0 + c0;
    for (std::int64_t row = 0; row < g.outer; ++row) {
      const float* xp = x + row * C + c0;
      const float* dp = dy + row * C + c0;
      write_elements(dx + row * C + c0, c1 - c0, nt, [=](std::int64_t c) {
        const float xh = xp[c] - hr[c];
        return elemt_dx(dp[c], xh, ar[c], br[c], k1r[c], k0r[c], relu);
      });
    }
  }
  if (stream) stream_fence();
}

// ---- fused with max pooling ---------------------------------------------------------------------

std::int64_t bn_pool_scratch_floats(std::int64_t channels) {
  const std::int64_t tile = std::max<std::int64_t>(1, kPoolTileFloats / (kRows * channels)) * kRows;
  return tile * channels;
}

void bn_normalize_pool(const float* x, const BnGeometry& g, const BnPool& pool, const float* hi, const float* a,
                       const float* b, bool relu, float* y, std::uint8_t* arg, ChannelRange r) {
  bn_normalize_pool<float, float>(x, g, pool, hi, a, b, relu, y, arg, r);
}

template <class X, class Y>
void bn_normalize_pool(const X* x, const BnGeometry& g, const BnPool& pool, const float* hi, const float* a,
                       const float* b, bool relu, Y* y, std::uint8_t* arg, ChannelRange r) {
  check_pool(g, pool);
  const std::int64_t c0 = r.begin, c1 = r.stop(g.channels);
  if (relu) {
    normalize_pool<true>(x, g, pool, hi, a, b, y, arg, c0, c1);
  } else {
    normalize_pool<false>(x, g, pool, hi, a, b, y, arg, c0, c1);
  }
}

void bn_backward_reduce_pool(const float* dy, const std::uint8_t* arg, const BnPool& pool, const float* x,
                             const BnGeometry& g, const float* hi, const float* a, const float* b, bool relu,
                             const double* mean, const double* invstd, double tag, double* msg, float* dgamma,
                             float* dbeta, float* scratch, ChannelRange r, BnRenormFactors renorm) {
  bn_backward_reduce_pool<float, float>(dy, arg, pool, x, g, hi, a, b, relu, mean, invstd, tag, msg, dgamma, dbeta,
                                        scratch, r, renorm);
}

template <class X, class Y>
void bn_backward_reduce_pool(const Y* dy, const std::uint8_t* arg, const BnPool& pool, const X* x,
                             const BnGeometry& g, const float* hi, const float* a, const float* b, bool relu,
                             const double* mean, const double* invstd, double tag, double* msg, float* dgamma,
                             float* dbeta, float* scratch, ChannelRange r, BnRenormFactors renorm) {
  check_pool(g, pool);
  const std::int64_t C = g.channels, c0 = r.begin, c1 = r.stop(C);
  backward_header(tag, g, msg);
  double* A = msg + kMsgHeader;
  double* B = A + C;
  if (relu) {
    backward_sums_pool<true>(dy, arg, pool, x, g, hi, a, b, A, B, c0, c1, scratch);
  } else {
    backward_sums_pool<false>(dy, arg, pool, x, g, hi, a, b, A, B, c0, c1, scratch);
  }
  add_param_grads(A, B, mean, hi, invstd, dgamma, dbeta, c0, c1, renorm);
}

void bn_backward_elemt_pool(const float* dy, const std::uint8_t* arg, const BnPool& pool, const float* x,
                            const BnGeometry& g, const float* hi, const float* a, const float* b, bool relu,
                            const float* k1, const float* k0, bool stream, float* dx, ChannelRange r) {
  bn_backward_elemt_pool<float, float>(dy, arg, pool, x, g, hi, a, b, relu, k1, k0, stream, dx, r);
}

template <class X, class Y>
void bn_backward_elemt_pool(const Y* dy, const std::uint8_t* arg, const BnPool& pool, const X* x,
                            const BnGeometry& g, const float* hi, const float* a, const float* b, bool relu,
                            const float* k1, const float* k0, bool stream, X* dx, ChannelRange r) {
  check_pool(g, pool);
  const std::int64_t C = g.channels, c0 = r.begin, c1 = r.stop(C);
  const bool nt = stream && rows_streamable(dx + c0, C) && (c1 - c0) % kLineFloats == 0;
  const float* hr = hi + c0;
  const float* ar = a + c0;
  const float* br = b + c0;
  const float* k1r = k1 + c0;
  const float* k0r = k0 + c0;
  PoolRows src(pool, 0);
  for (std::int64_t row = 0; row < g.outer; ++row, src.next()) {
    const PoolSource s = src.source();
    const X* xp = x + row * C + c0;
    X* out = dx + row * C + c0;
    if (s.cell < 0) {  // dropped by the pooling: dy' = 0, but the mean terms still reach x
      write_elements(out, c1 - c0, nt, [=](std::int64_t c) {
        const float xh = widen(xp[c]) - hr[c];
        return elemt_dx(0.0f, xh, ar[c], br[c], k1r[c], k0r[c], relu);
      });
      continue;
    }
    const Y* gp = dy + s.cell * C + c0;
    const std::uint8_t* ap = arg + s.cell * C + c0;
    const std::int32_t here = s.here;
    write_elements(out, c1 - c0, nt, [=](std::int64_t c) {  // the expressions of MaxPool and bn_backward_elemt
      const float xh = widen(xp[c]) - hr[c];
      const float d = ap[c] == here ? widen(gp[c]) : 0.0f;
      return elemt_dx(d, xh, ar[c], br[c], k1r[c], k0r[c], relu);
    });
  }
  if (stream) stream_fence();
}

// The bf16 instantiations (bn_kernels.h); the all-float ones are made by the fp32 functions above.
template void bn_first_values<Bf16>(const Bf16*, const BnGeometry&, double*, ChannelRange);
template void bn_stats<Bf16>(const Bf16*, const BnGeometry&, const double*, double, double*, ChannelRange);
#define SBN_POOL_KERNELS(X, Y)                                                                                    \
  template void bn_normalize_pool<X, Y>(const X*, const BnGeometry&, const BnPool&, const float*, const float*,  \
                                        const float*, bool, Y*, std::uint8_t*, ChannelRange);                    \
  template void bn_backward_reduce_pool<X, Y>(const Y*, const std::uint8_t*, const BnPool&, const X*,             \
                                              const BnGeometry&, const float*, const float*, const float*, bool, \
                                              const double*, const double*, double, double*, float*, float*,     \
                                              float*, ChannelRange, BnRenormFactors);                            \
  template void bn_backward_elemt_pool<X, Y>(const Y*, const std::uint8_t*, const BnPool&, const X*,              \
                                             const BnGeometry&, const float*, const float*, const float*, bool,  \
                                             const float*, const float*, bool, X*, ChannelRange);
SBN_POOL_KERNELS(float, Bf16)
SBN_POOL_KERNELS(Bf16, Bf16)
SBN_POOL_KERNELS(Bf16, float)
#undef SBN_POOL_KERNELS

}  // namespace cpu
}  // namespace syncbn
