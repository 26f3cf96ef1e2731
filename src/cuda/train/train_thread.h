// What ONE thread of each training kernel of the GPU model does (src/cuda/train/*.cu), as host+device
// (SBN_HD) functions: the kernels are grid-stride loops (or one block per group) around these, and
// tests/gpu/test_gpu_train.cpp runs the very same functions on the CPU over every index and compares the
// result with the CPU layers (src/nn), bit for bit where the CPU computes in the same order. Same idea as
// bn_thread.h for the SyncBN kernels.
//
// Invariants shared by all of them (those of nn.h):
//  - 4-d activations are NHWC: element (n, h, w, c) at ((n·H + h)·W + w)·C + c; (N, F) rows otherwise.
//  - Activations are T = float, __nv_bfloat16 or __half; arithmetic is fp32 (statistics and the loss in
//    double, as on the CPU); results are rounded to T once, at the end (to nearest-even).
//  - Parameters and their gradients are fp32 in the flat ParamStore layout (OIHW conv weights, (out, in)
//    linear weights); gradients are ACCUMULATED (+=), activations and input gradients are assigned.
//  - Element functions take their index type I as a template parameter: the kernels use 32-bit indices
//    whenever the tensor has fewer than 2^31 elements (a 64-bit division is a ~70-instruction subroutine
//    on the GPU, which would make these memory-bound maps instruction-bound), 64-bit otherwise.
#pragma once

#include <cstdint>

#include "syncbn/bn_math.h"
#include "syncbn/cuda/bn_thread.h"  // to_float / from_float

namespace syncbn::cuda::train {

// ---- layouts -----------------------------------------------------------------------------------------

// The coordinates of element e of a 4-d tensor (N, H, W, C), C fastest.
template <class I>
struct Nhwc {
  I n, h, w, c;
};

template <class I>
SBN_HD Nhwc<I> nhwc_coords(I e, I C, I H, I W) {
  Nhwc<I> p;
  p.c = e % C;
  I r = e / C;
  p.w = r % W;
  r /= W;
  p.h = r % H;
  p.n = r / H;
  return p;
}

// The network input: element e of the NHWC tensor (N, H, W, C) comes from this index of the planar
// (N, C, H, W) batch the loop hands over.
template <class I>
SBN_HD I nchw_index_of_nhwc(I e, I C, I H, I W) {
  const Nhwc<I> p = nhwc_coords(e, C, H, W);
  return ((p.n * C + p.c) * H + p.h) * W + p.w;
}

// Convolution weights: element e of cuDNN's NHWC filter (O, K, K, I) ("KRSC") is this element of the
// canonical OIHW array in the ParamStore. A bijection, so the gradient scatter needs no atomics.
template <class I>
SBN_HD I oihw_index_of_krsc(I e, I in, I k) {
  const Nhwc<I> p = nhwc_coords(e, in, k, k);  // (o, r, s, c)
  return ((p.n * in + p.c) * k + p.h) * k + p.w;
}

// ---- elementwise -------------------------------------------------------------------------------------

// max(v, 0) as std::max(v, 0.0f) computes it (NaN and −0 pass through, like the CPU layers).
SBN_HD float apply_relu(float v) { return v < 0.0f ? 0.0f : v; }

// The ReLU's backward, gated by its OUTPUT (as the CPU: y > 0 ? dy : 0).
SBN_HD float relu_grad(float y, float dy) { return y > 0.0f ? dy : 0.0f; }

// ---- 2×2 max pooling (stride 2, floor) -------------------------------------------------------------

struct PoolGeom {
  std::int64_t N, C, H, W, Ho, Wo;  // input (N, H, W, C), output (N, Ho, Wo, C) with Ho = H/2, Wo = W/2
};

// Output element e: the window's maximum and its index 0..3 (row-major in the window), the FIRST
// maximum on ties, with exactly the CPU's comparisons (src/nn/module.cpp): top = max(a, b),
// bottom = max(d, e) (std::max keeps the first), then the bottom wins only if strictly greater.
template <class T, class I>
SBN_HD void maxpool2x2_forward_element(const T* x, T* y, std::uint8_t* arg, I e, const PoolGeom& g) {
  const I C = static_cast<I>(g.C), W = static_cast<I>(g.W), Wo = static_cast<I>(g.Wo), Ho = static_cast<I>(g.Ho);
  const I H = static_cast<I>(g.H);
  const Nhwc<I> o = nhwc_coords(e, C, Ho, Wo);
  const I base = ((o.n * H + 2 * o.h) * W + 2 * o.w) * C + o.c;
  const T va = x[base], vb = x[base + C], vd = x[base + W * C], ve = x[base + W * C + C];
  const float a = to_float(va), b = to_float(vb), d = to_float(vd), f = to_float(ve);
  const bool top_b = a < b;  // std::max(a, b) = a < b ? b : a
  const bool bottom_e = d < f;
  const float top = top_b ? b : a, bottom = bottom_e ? f : d;
  const int top_arg = b > a ? 1 : 0;
  const int bottom_arg = f > d ? 3 : 2;
  const bool second = bottom > top;
  y[e] = second ? (bottom_e ? ve : vd) : (top_b ? vb : va);  // the element itself: no rounding
  arg[e] = static_cast<std::uint8_t>(second ? bottom_arg : top_arg);
}

// Input-gradient element e of (N, H, W, C): the output gradient if this position was its window's
// maximum, else 0 (also for the rows and columns the floor division leaves out).
template <class T, class I>
SBN_HD void maxpool2x2_backward_element(const T* dy, const std::uint8_t* arg, T* dx, I e, const PoolGeom& g) {
  const I C = static_cast<I>(g.C), W = static_cast<I>(g.W), H = static_cast<I>(g.H);
  const I Wo = static_cast<I>(g.Wo), Ho = static_cast<I>(g.Ho);
  const Nhwc<I> p = nhwc_coords(e, C, H, W);
  const I ho = p.h / 2, wo = p.w / 2;
  float v = 0.0f;
  if (ho < Ho && wo < Wo) {
    const I o = ((p.n * Ho + ho) * Wo + wo) * C + p.c;
    const int here = static_cast<int>((p.h & 1) * 2 + (p.w & 1));
    if (arg[o] == here) v = to_float(dy[o]);
  }
  from_float(v, &dx[e]);
}

// ---- global average pooling: (N, S, C) → (N, C) ------------------------------------------------------

// Output (n, c) = e: fp32 sum over the S positions in order, times 1/S (the CPU's order and rounding).
template <class T, class I>
SBN_HD void avgpool_forward_element(const T* x, T* y, I e, I S, I C) {
  const I n = e / C, c = e % C;
  float acc = 0.0f;
  for (I s = 0; s < S; ++s) acc += to_float(x[(n * S + s) * C + c]);
  from_float(acc * (1.0f / static_cast<float>(S)), &y[e]);
}

template <class T, class I>
SBN_HD void avgpool_backward_element(const T* dy, T* dx, I e, I S, I C) {
  const I c = e % C, n = e / (S * C);
  from_float(to_float(dy[n * C + c]) * (1.0f / static_cast<float>(S)), &dx[e]);
}

// ---- GroupNorm over NHWC (N, S, C), G groups of Cg = C/G channels ------------------------------------
//
// The CPU layer's decomposition (src/nn/norm.cpp), step for step:
//  1. per (sample n, channel c): double sums over the S positions around k_nc = x[n, 0, c] (forward:
//     Σ(x − k), Σ(x − k)²; backward: Σdy', Σdy'·(x − k), dy' = dy gated by the fused ReLU's y > 0):
//     a column reduction over rows s of the N·C columns j = n·C + c (gn_channel_sums_term);
//  2. per (n, group): the channels' sums moved to the group's pivot K = x[n, 0, g·Cg] (bn_shift_to_pivot,
//     as SyncBN), mean/var/invstd, and fp32 per-(n, c) coefficients (gn_group_forward/backward);
//  3. per element one fma: y = a·x + b (then ReLU); dx = a·dy' + (b·x + d).
// The parameter gradients are per-(n, c) terms summed over n (a second column reduction).

struct GnGeom {
  std::int64_t N, S, C, G;
  SBN_HD std::int64_t group_channels() const { return C / G; }
};

// Step 1: the term of position s for column j = n·C + c. dy null: forward sums; else backward sums,
// gated by y > 0 when y is not null (the fused ReLU).
template <class T>
SBN_HD void gn_channel_sums_term(const T* x, const T* dy, const T* y, const GnGeom& q, std::int64_t s, std::int64_t j,
                                 double* a, double* b) {
  const std::int64_t n = j / q.C, c = j - n * q.C;
  const std::int64_t first = n * q.S * q.C + c, at = first + s * q.C;
  const double d = static_cast<double>(to_float(x[at])) - static_cast<double>(to_float(x[first]));
  if (!dy) {
    *a += d;
    *b += d * d;
  } else {
    const double g = (!y || to_float(y[at]) > 0.0f) ? static_cast<double>(to_float(dy[at])) : 0.0;
    *a += g;
    *b += g * d;
  }
}

// Step 2, forward, group (n, g): saves mean/invstd (N·G) and writes the coefficients ca, cb (N·C).
template <class T>
SBN_HD void gn_group_forward(const T* x, const double* s1, const double* s2, const float* gamma, const float* beta,
                             const GnGeom& q, std::int64_t n, std::int64_t g, double eps, double* mean_out,
                             double* invstd_out, float* ca, float* cb) {
  const std::int64_t cg = q.group_channels(), c0 = g * cg;
  const T* xs = x + n * q.S * q.C;
  const double K = to_float(xs[c0]);
  double S1 = 0, S2 = 0;
  for (std::int64_t c = c0; c < c0 + cg; ++c) {
    double t1 = 0, t2 = 0;
    bn_shift_to_pivot(s1[n * q.C + c], s2[n * q.C + c], static_cast<double>(q.S), to_float(xs[c]), K, &t1, &t2);
    S1 += t1;
    S2 += t2;
  }
  double mean = 0, var = 0;
  bn_moments(S1, S2, static_cast<double>(q.S * cg), K, &mean, &var);
  const double invstd = 1.0 / sqrt(var + eps);
  mean_out[n * q.G + g] = mean;
  invstd_out[n * q.G + g] = invstd;
  for (std::int64_t c = c0; c < c0 + cg; ++c) {
    const double a = gamma[c] * invstd;
    ca[n * q.C + c] = static_cast<float>(a);
    cb[n * q.C + c] = static_cast<float>(beta[c] - a * mean);
  }
}

// Step 3, forward: element e of (N, S, C).
template <class T, class I>
SBN_HD void gn_forward_element(const T* x, const float* ca, const float* cb, bool relu, const GnGeom& q, I e, T* y) {
  const I C = static_cast<I>(q.C), c = e % C, n = e / (static_cast<I>(q.S) * C), i = n * C + c;
  const float v = fmaf(ca[i], to_float(x[e]), cb[i]);
  from_float(relu ? apply_relu(v) : v, &y[e]);
}

// Step 2, backward, group (n, g): from A = Σdy', B = Σdy'·(x − k) per (n, c), the input-gradient
// coefficients ca, cb, cd, and the per-(n, c) parameter-gradient terms: dγ_nc = Σdy'·x̂ (written over B)
// and dβ_nc = A (left in A).
template <class T>
SBN_HD void gn_group_backward(const T* x, double* A, double* B, const float* gamma, const double* mean_in,
                              const double* invstd_in, const GnGeom& q, std::int64_t n, std::int64_t g, float* ca,
                              float* cb, float* cd) {
  const std::int64_t cg = q.group_channels(), c0 = g * cg;
  const T* xs = x + n * q.S * q.C;
  const double mean = mean_in[n * q.G + g], invstd = invstd_in[n * q.G + g];
  const double M = static_cast<double>(q.S * cg);
  double sum_g = 0, sum_gx = 0;  // Σ g'·γ and Σ g'·γ·x̂ over the group
  for (std::int64_t c = c0; c < c0 + cg; ++c) {
    const std::int64_t i = n * q.C + c;
    const double a = A[i];
    const double bx = (B[i] + (static_cast<double>(to_float(xs[c])) - mean) * a) * invstd;  // Σdy'·x̂
    B[i] = bx;
    sum_g += gamma[c] * a;
    sum_gx += gamma[c] * bx;
  }
  // dx = invstd·(γ·dy' − sum_g/M − x̂·sum_gx/M) = a·dy' + b·x + d per channel.
  const double b = -invstd * invstd * sum_gx / M;
  for (std::int64_t c = c0; c < c0 + cg; ++c) {
    const std::int64_t i = n * q.C + c;
    ca[i] = static_cast<float>(invstd * gamma[c]);
    cb[i] = static_cast<float>(b);
    cd[i] = static_cast<float>(-invstd * sum_g / M - b * mean);
  }
}

// Step 3, backward: element e of (N, S, C).
template <class T, class I>
SBN_HD void gn_backward_element(const T* x, const T* y, const T* dy, const float* ca, const float* cb, const float* cd,
                                bool relu, const GnGeom& q, I e, T* dx) {
  const I C = static_cast<I>(q.C), c = e % C, n = e / (static_cast<I>(q.S) * C), i = n * C + c;
  const float g = (!relu || to_float(y[e]) > 0.0f) ? to_float(dy[e]) : 0.0f;
  from_float(fmaf(ca[i], g, fmaf(cb[i], to_float(x[e]), cd[i])), &dx[e]);
}

// ---- softmax cross-entropy ---------------------------------------------------------------------------

// One sample's logits z (K): returns its loss log Σ exp(z − max) + max − z[label] (double, as the CPU),
// sets *argmax (first maximum), and when dz is not null writes dz = (softmax − onehot)·scale, rounded to T.
// scale = grad_scale (1/B) times the loss scale (a power of two: exact). label must be in [0, K).
template <class T>
SBN_HD double cross_entropy_sample(const T* z, std::int64_t K, std::int32_t label, double scale, T* dz,
                                   std::int64_t* argmax) {
  std::int64_t arg = 0;
  for (std::int64_t k = 1; k < K; ++k)
    if (to_float(z[k]) > to_float(z[arg])) arg = k;
  const double zmax = to_float(z[arg]);
  double sum = 0;
  for (std::int64_t k = 0; k < K; ++k) sum += exp(static_cast<double>(to_float(z[k])) - zmax);
  if (dz) {
    for (std::int64_t k = 0; k < K; ++k) {
      const double p = exp(static_cast<double>(to_float(z[k])) - zmax) / sum;
      from_float(static_cast<float>((p - (k == label ? 1.0 : 0.0)) * scale), &dz[k]);
    }
  }
  *argmax = arg;
  return log(sum) + zmax - static_cast<double>(to_float(z[label]));
}

// ---- optimizer ---------------------------------------------------------------------------------------

// One element of SGD (optimizer.h; src/train/optimizer.cpp operation for operation): the gradient is
// first unscaled (× 1/loss scale, a power of two: exact; 1 without loss scaling), then
//   g = grad + wd·w, buf = μ·buf + g, w −= lr·(g + μ·buf) (Nesterov) or lr·buf,
// and the gradient is zeroed for the next step.
SBN_HD void sgd_element(float* w, float* grad, float* buf, float wd, float mu, float lr, bool nesterov, float unscale) {
  const float gi = *grad * unscale + wd * *w;
  const float b = mu * *buf + gi;
  *buf = b;
  *w -= nesterov ? lr * (gi + mu * b) : lr * b;
  *grad = 0.0f;
}

}  // namespace syncbn::cuda::train
