// Per-channel SyncBN formulas shared by the CPU kernels (src/cpu) and the CUDA kernels (src/cuda), so
// the CPU tests cover the arithmetic both paths use. Everything here is O(C): the element loops live in
// the kernels. See DESIGN.md §2-3 and README "Design" for the derivations.
//
// Message layout, forward and backward alike (doubles, summed by ONE all-reduce over the sync group):
//   [0] tag   [1] tag²   [2] n   [3, 3+C) A   [3+C, 3+2C) B
// forward:  A = Σ(x − K), B = Σ(x − K)²   (K = the per-channel pivot, identical on every rank)
// backward: A = Σdy',     B = Σdy'·(x − hi)  (dy' = dy gated by the fused ReLU; hi = float(mean))
// The tags lead the buffer so that even ranks whose messages differ in length (different C) see each
// other's tags: MPI either truncates (an error) or delivers the leading tags, which then disagree.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SBN_HD __host__ __device__ __forceinline__
#else
#define SBN_HD inline
#endif

namespace syncbn {

constexpr int kMsgTag = 0;
constexpr int kMsgTag2 = 1;
constexpr int kMsgCount = 2;
constexpr int kMsgHeader = 3;

SBN_HD std::int64_t bn_msg_size(std::int64_t channels) { return kMsgHeader + 2 * channels; }

// Outcome of a combine step; non-zero values are errors the layer turns into messages.
enum BnStatus : int {
  kBnOk = 0,
  kBnTagMismatch = 1,    // ranks of the group are in different layers/phases
  kBnEmptyBatch = 2,     // the group has no samples
  kBnSingleSample = 3,   // one value per channel in training: variance undefined
  kBnCountMismatch = 4,  // backward saw a different element count than forward
};

// Group sums of the tags equal P·tag and P·tag² iff every rank sent the same tag: by Cauchy-Schwarz
// Σt² ≥ (Σt)²/P with equality only when all t are equal. Exact in double for tag < 2^20, P < 2^13.
SBN_HD bool bn_tags_agree(double sum_tag, double sum_tag2, int group_size, double tag) {
  return sum_tag == group_size * tag && sum_tag2 == group_size * tag * tag;
}

// Moves sums taken around a local shift k (s1 = Σ(x−k), s2 = Σ(x−k)², over n values) to the common
// pivot K. The local shift keeps s1, s2 free of cancellation whatever the data's offset; the move is
// exact up to double rounding of terms of size n·(k−K)², which is what bounds the variance error at
// about 2.2e-16·((mean−K)/std)² relative (README "Numerics").
SBN_HD void bn_shift_to_pivot(double s1, double s2, double n, double k, double pivot, double* S1,
                              double* S2) {
  const double d = k - pivot;
  *S1 = s1 + n * d;
  *S2 = s2 + d * (2.0 * s1 + n * d);
}

// Global mean and biased variance from the group sums around pivot K.
SBN_HD void bn_moments(double S1, double S2, double n, double pivot, double* mean, double* var) {
  const double m1 = S1 / n;
  const double v = S2 / n - m1 * m1;
  *mean = pivot + m1;
  *var = v > 0.0 ? v : 0.0;
}

// The factor f of a cumulative moving average after k batches (PyTorch momentum=None): 1/(k + 1).
SBN_HD double bn_cumulative_factor(std::int64_t batches_tracked) {
  return 1.0 / static_cast<double>(batches_tracked + 1);
}

// Running statistics: r ← (1−f)·r + f·batch, the variance unbiased with the GLOBAL count n.
SBN_HD void bn_running_update(float* running_mean, float* running_var, double mean, double var,
                              double n, double factor) {
  *running_mean = static_cast<float>((1.0 - factor) * *running_mean + factor * mean);
  *running_var = static_cast<float>((1.0 - factor) * *running_var + factor * var * n / (n - 1.0));
}

// Forward per-channel coefficients: y = a·(x − hi) + b with hi = float(mean). Splitting the mean into
// hi + lo keeps y accurate when |mean| ≫ std: x − hi is exact in fp32 there (Sterbenz), lo goes into b.
SBN_HD void bn_forward_coefs(double mean, double invstd, double gamma, double beta, float* hi, float* a,
                             float* b) {
  const float h = static_cast<float>(mean);
  const double lo = mean - static_cast<double>(h);
  const double scale = gamma * invstd;
  *hi = h;
  *a = static_cast<float>(scale);
  *b = static_cast<float>(beta - scale * lo);
}

// Backward per-channel coefficients from the GROUP sums A = Σdy', B = Σdy'·(x − hi) over N values:
//   dx = a·(dy' − A/N − (x − mean)·invstd²·Σdy'(x − mean)/N)  =  a·dy' + k1·(x − hi) + k0
SBN_HD void bn_backward_coefs(double A, double B, double n, double mean, float hi, double invstd,
                              double scale, float* k1, float* k0) {
  const double lo = mean - static_cast<double>(hi);
  const double sum_dy_xmu = B - lo * A;
  const double c1 = -scale * invstd * invstd * sum_dy_xmu / n;
  *k1 = static_cast<float>(c1);
  *k0 = static_cast<float>(-scale * A / n - c1 * lo);
}

// Local dγ of one channel from its local sums A = Σdy', B = Σdy'·(x − hi): Σdy'·x̂, x̂ = (x − mean)·invstd.
// Batch Renormalization's Σdy'·(x̂·r + d) is this with r·invstd for invstd, plus d·A, which callers add in
// a statement of its own: without it (or with d = 0) the sum contracts into FMAs exactly as plain BN's.
SBN_HD double bn_dgamma(double A, double B, double mean, float hi, double invstd) {
  const double lo = mean - static_cast<double>(hi);
  return invstd * (B - lo * A);
}

// ---- Batch Renormalization (Ioffe 2017) ------------------------------------------------------------
// y = γ·(x̂·r + d) + β with x̂ = (x − μ_B)/σ_B, σ_B = sqrt(var_B + eps) (the group's batch statistics) and
//   r = clip(σ_B/σ_run, 1/r_max, r_max),  d = clip((μ_B − μ_run)/σ_run, −d_max, d_max),
// σ_run = sqrt(running_var + eps), μ_run = running_mean, both BEFORE this batch's running update. r and d
// are constants of the backward, so the layer is plain BN with γ' = γ·r and β' = β + γ·d: the coefficient
// functions above serve unchanged, and only the local dγ = Σdy'·(x̂·r + d) needs r and d again (bn_dgamma).

// r and d of one channel. Comparisons rather than fmin/fmax, so a NaN statistic stays NaN (and the step is
// then rejected as non-finite) instead of being clipped into a limit. r_max = 1 gives r = 1 and d_max = 0
// gives d = 0 exactly: plain BN bit for bit.
SBN_HD void bn_renorm_factors(double mean, double var, float running_mean, float running_var, double eps,
                              double rmax, double dmax, double* r, double* d) {
  const double run_var = static_cast<double>(running_var) + eps;
  const double rr = sqrt((var + eps) / run_var);
  const double dd = (mean - static_cast<double>(running_mean)) / sqrt(run_var);
  const double rmin = 1.0 / rmax;
  *r = rr < rmin ? rmin : rr > rmax ? rmax : rr;
  *d = dmax <= 0.0 ? 0.0 : dd < -dmax ? -dmax : dd > dmax ? dmax : dd;
}

// The affine parameters the renormalized layer normalizes with: γ' = γ·r, β' = β + γ·d (β as it was for d = 0).
SBN_HD void bn_renorm_affine(double r, double d, double* gamma, double* beta) {
  if (d != 0.0) *beta += *gamma * d;
  *gamma *= r;
}

// ==== PreciseBN population statistics (README "PreciseBN") ==========================================
// A population pass accumulates, per rank and channel, n, s1 = Σ(x − P), s2 = Σ(x − P)² over N batches
// around a per-rank pivot P (the first batch's mean rounded to 16 significant bits), then ONE world
// all-reduce per layer sums [S1, S2, P·S1, n·P, n·P²] per channel. The sums re-centre at any common K:
//   Σ(x − K)² = Σ_r [s2 + 2(P_r − K)·s1 + n_r(P_r − K)²].
// With 16-bit pivots the n·P and n·P² terms are exact in double (for n < 2^21 per rank), and ranks whose
// batches are close round to the same P, so the re-centring adds no cancellation.

// m rounded to 16 significant bits (0 stays 0).
SBN_HD double bn_population_pivot(double m) {
  int e = 0;
  const double f = frexp(m, &e);  // m = f·2^e, 0.5 ≤ |f| < 1
  return ldexp(rint(ldexp(f, 16)), e - 16);
}

// This rank's five per-channel terms of the population message from its sums around its pivot P.
SBN_HD void bn_population_terms(double n, double s1, double s2, double pivot, double* S1, double* S2, double* PS1,
                                double* nP, double* nP2) {
  *S1 = s1;
  *S2 = s2;
  *PS1 = pivot * s1;
  *nP = n * pivot;
  *nP2 = n * pivot * pivot;
}

// Population mean and UNBIASED variance (n/(n−1)) of all N values from the world sums of the terms.
// K = the rounded mean of the pivots: every term is then a difference of exact values, and the result
// is the same on every rank (the same sums in, the same operations).
SBN_HD void bn_population_moments(double N, double S1, double S2, double PS1, double nP, double nP2, double* mean,
                                  double* var) {
  const double K = bn_population_pivot(nP / N);
  const double d = (S1 + (nP - K * N)) / N;  // mean − K
  const double m2 = S2 + 2.0 * (PS1 - K * S1) + ((nP2 - K * nP) - K * (nP - K * N));  // Σ(x − K)²
  const double v = (m2 - N * d * d) / (N - 1.0);
  *mean = K + d;
  *var = v > 0.0 ? v : 0.0;
}

}  // namespace syncbn
