// SyncBN kernels, CPU implementation. The CUDA twins (src/cuda/bn_kernels.cu) have the same names,
// the same argument structs and the same decomposition:
//
//   forward:  bn_stats → [one all-reduce of the message] → bn_combine → bn_normalize
//   backward: bn_backward_reduce → [one all-reduce] → bn_backward_combine → bn_backward_elemt
//
// Statistics are accumulated in double around a local shift and moved to a common pivot (bn_math.h);
// element loops read fp32 and write fp32. No kernel allocates. Message layout: bn_math.h.
// The combines' argument structs, their one builder (bn_combine_args, from a layer's BnLayerArrays) and
// their per-channel steps are declared here and shared with the CUDA kernels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "syncbn/bn_math.h"
#include "syncbn/tensor.h"

namespace syncbn {

// How a tensor is walked for per-channel reductions over every dimension but C.
struct BnGeometry {
  std::int64_t outer = 0;     // planar: N;                  channels-last: N·H·W rows
  std::int64_t channels = 0;  // C
  std::int64_t inner = 1;     // planar: elements per (n, c) plane (L or H·W); channels-last: 1
  bool channels_last = false;

  std::int64_t per_channel() const { return outer * inner; }
  std::int64_t numel() const { return outer * inner * channels; }
};

// Geometry of a (N, C), (N, C, L) or (N, C, H, W) tensor; `who` names the layer in the error thrown
// for any other rank.
BnGeometry bn_geometry(const std::vector<std::int64_t>& shape, Layout layout, const std::string& who);

// A layer's batch of N samples as BN batches: consecutive chunks of `samples` samples with ghost
// batches (the last may be shorter), else one chunk of all N. The CPU and CUDA layers slice alike.
struct BnChunks {
  std::int64_t count = 1;    // chunks (at least 1, also for N = 0)
  std::int64_t samples = 0;  // samples per chunk
  // Chunk k of the batch `g` of N samples: its geometry and the element offset of its first sample.
  struct Slice {
    BnGeometry geometry;
    std::int64_t offset = 0;
  };
  Slice slice(const BnGeometry& g, std::int64_t N, std::int64_t k) const {
    const std::int64_t per_sample = N ? g.outer / N : 0;  // rows (channels-last) or planes per sample
    const std::int64_t s0 = k * samples;
    Slice s{g, s0 * per_sample * g.inner * g.channels};
    s.geometry.outer = (count == 1 ? N : std::min(samples, N - s0)) * per_sample;
    return s;
  }
};
// ghost_batch > 0: chunks of that many samples; 0: one chunk.
inline BnChunks bn_chunks(std::int64_t N, std::int64_t ghost_batch) {
  if (ghost_batch <= 0) return {1, N};
  return {std::max<std::int64_t>(1, (N + ghost_batch - 1) / ghost_batch), ghost_batch};
}

// How a forward combine moves the running statistics: r ← (1 − f)·r + f·batch (bn_running_update).
struct BnRunningUpdate {
  enum Kind : int {
    kNone,        // leave them alone (eval, track_running_stats off)
    kMomentum,    // f = momentum
    kCumulative,  // f = 1/(k + 1) after k batches: the cumulative average (PyTorch momentum=None)
  };
  Kind kind = kNone;
  double momentum = 0;               // kMomentum
  std::int64_t batches_tracked = 0;  // kCumulative: k (the CUDA combine reads its device counter instead)

  // A layer's update: kNone unless `update`; else kMomentum, or kCumulative when momentum is nullopt.
  static BnRunningUpdate of(bool update, const std::optional<double>& momentum, std::int64_t batches_tracked);
  // f; 0 for kNone (not read then).
  SBN_HD double factor() const {
    return kind == kMomentum ? momentum : kind == kCumulative ? bn_cumulative_factor(batches_tracked) : 0.0;
  }
};

// The per-channel arrays of a SyncBN layer that its combines read and write: host memory for the CPU
// kernels, device memory for CUDA. Layer-wide arrays hold C values; per-batch arrays hold one block of C
// per BN batch (ghost batches; one block otherwise), batch k's block at k·C.
struct BnLayerArrays {
  std::int64_t channels = 0;      // C
  const float* gamma = nullptr;   // (C) or null: 1
  const float* beta = nullptr;    // (C) or null: 0
  float* running_mean = nullptr;  // (C) or null: no running statistics
  float* running_var = nullptr;   // (C)
  double* pivot = nullptr;        // (C) in: the K of bn_stats (null: 0); out: the batch's global mean
  double* mean = nullptr;         // (batches, C) the forward's, saved for backward
  double* var = nullptr;          // (batches, C) biased batch variance
  double* invstd = nullptr;       // (batches, C)
  float* hi = nullptr;            // (batches, C) float(mean)
  float* a = nullptr;             // (batches, C) y = a·(x − hi) + b
  float* b = nullptr;             // (batches, C)
  float* k1 = nullptr;            // (batches, C) backward: dx = a·dy' + k1·(x − hi) + k0
  float* k0 = nullptr;            // (batches, C)
  double* renorm_r = nullptr;     // (batches, C) Batch Renormalization's r and d (bn_renorm_factors), written
  double* renorm_d = nullptr;     // (batches, C) by a renormalizing forward combine, read by its backward

  // The same arrays with the per-batch ones moved to batch k's block.
  BnLayerArrays batch(std::int64_t k) const;
};

// The arrays as an owner keeps them, in containers with data() and size() (std::vector on the host,
// DeviceArray on a device): an owner that holds one names the set once, in arrays(). An empty container
// is an absent array (null).
template <class DoubleArray, class FloatArray>
struct BnLayerBuffers {
  FloatArray gamma, beta, running_mean, running_var;  // (C)
  DoubleArray pivot;                                  // (C)
  DoubleArray mean, var, invstd;                      // (batches, C)
  FloatArray hi, a, b, k1, k0;                        // (batches, C)
  DoubleArray renorm_r, renorm_d;                     // (batches, C), Batch Renormalization only (else empty)

  BnLayerArrays arrays(std::int64_t channels) {
    BnLayerArrays r;
    r.channels = channels;
    r.gamma = ptr(gamma), r.beta = ptr(beta);
    r.running_mean = ptr(running_mean), r.running_var = ptr(running_var), r.pivot = ptr(pivot);
    r.mean = ptr(mean), r.var = ptr(var), r.invstd = ptr(invstd);
    r.hi = ptr(hi), r.a = ptr(a), r.b = ptr(b);
    r.k1 = ptr(k1), r.k0 = ptr(k0);
    r.renorm_r = ptr(renorm_r), r.renorm_d = ptr(renorm_d);
    return r;
  }

 private:
  template <class Array>
  static auto ptr(Array& v) -> decltype(v.data()) {
    return v.size() ? v.data() : nullptr;
  }
};

// Batch Renormalization in a forward combine (bn_renorm_factors): off, or r ∈ [1/rmax, rmax], |d| ≤ dmax.
struct BnRenormLimits {
  bool enabled = false;
  double rmax = 1.0;  // ≥ 1
  double dmax = 0.0;  // ≥ 0
};

// A BN batch's r and d (BnLayerArrays::renorm_r/d at its block) for the local dγ of bn_backward_reduce;
// null: plain BN.
struct BnRenormFactors {
  const double* r = nullptr;  // (C)
  const double* d = nullptr;  // (C)
};

// Arguments of bn_combine, from bn_combine_args: which message, and the arrays of its BN batch.
struct BnCombineArgs {
  int group_size = 1;        // ranks that summed the message
  double tag = 0;            // this rank's tag for the message
  double eps = 1e-5;
  BnRunningUpdate running;   // kNone: the running statistics are not touched
  BnLayerArrays arrays;      // the batch's block: gamma, beta, running stats, pivot in; mean … b out
  BnRenormLimits renorm;     // enabled: also renorm_r, renorm_d out (from the running stats before the update)
};

// Arguments of bn_backward_combine, from bn_backward_combine_args.
struct BnBackwardCombineArgs {
  int group_size = 1;
  double tag = 0;
  double expected_count = 0;  // the group count seen by forward
  BnLayerArrays arrays;       // the batch's block: gamma, mean, invstd, hi in; k1, k0 out
  bool renorm = false;        // the forward renormalized: γ·renorm_r in place of γ
};

// bn_combine's arguments for BN batch `batch` of `arrays`, whose message `group_size` ranks summed, with
// this rank's `tag`. Throws if an output array is missing, an update lacks a running array, or renorm lacks
// the running statistics or the r, d arrays.
BnCombineArgs bn_combine_args(const BnLayerArrays& arrays, std::int64_t batch, int group_size, double tag,
                              double eps, BnRunningUpdate running, BnRenormLimits renorm = {});

// bn_backward_combine's arguments for BN batch `batch`; `expected_count`: the group count its forward saw
// (the CUDA combine reads it from the device instead); `renorm`: its forward renormalized. Throws if an
// array it needs is missing.
BnBackwardCombineArgs bn_backward_combine_args(const BnLayerArrays& arrays, std::int64_t batch, int group_size,
                                               double tag, double expected_count, bool renorm = false);

// ---- per-channel steps of the combines (the CPU loops and the CUDA kernels run these same lines) ----

// One channel of bn_combine, after its checks. `factor`: args.running.factor(), resolved once per call
// (the CUDA kernel takes a cumulative k from its device counter).
SBN_HD void bn_combine_channel(const double* msg, const BnCombineArgs& args, double factor, std::int64_t c) {
  const BnLayerArrays& arr = args.arrays;
  const double n = msg[kMsgCount];
  const double* S1 = msg + kMsgHeader;
  const double* S2 = S1 + arr.channels;
  double mean = 0, var = 0;
  bn_moments(S1[c], S2[c], n, arr.pivot ? arr.pivot[c] : 0.0, &mean, &var);
  const double invstd = 1.0 / sqrt(var + args.eps);
  arr.mean[c] = mean;
  arr.var[c] = var;
  arr.invstd[c] = invstd;
  if (arr.pivot) arr.pivot[c] = mean;
  double gamma = arr.gamma ? arr.gamma[c] : 1.0, beta = arr.beta ? arr.beta[c] : 0.0;
  if (args.renorm.enabled) {  // before the running update: r, d compare the batch with the history before it
    double r = 1, d = 0;
    bn_renorm_factors(mean, var, arr.running_mean[c], arr.running_var[c], args.eps, args.renorm.rmax,
                      args.renorm.dmax, &r, &d);
    arr.renorm_r[c] = r;
    arr.renorm_d[c] = d;
    bn_renorm_affine(r, d, &gamma, &beta);
  }
  if (args.running.kind != BnRunningUpdate::kNone)
    bn_running_update(&arr.running_mean[c], &arr.running_var[c], mean, var, n, factor);
  bn_forward_coefs(mean, invstd, gamma, beta, &arr.hi[c], &arr.a[c], &arr.b[c]);
}

// One channel of bn_backward_combine, after its checks.
SBN_HD void bn_backward_combine_channel(const double* msg, const BnBackwardCombineArgs& args, std::int64_t c) {
  const BnLayerArrays& arr = args.arrays;
  const double n = msg[kMsgCount];
  const double* A = msg + kMsgHeader;
  const double* B = A + arr.channels;
  double gamma = arr.gamma ? arr.gamma[c] : 1.0;
  if (args.renorm) gamma *= arr.renorm_r[c];  // r is a constant: plain BN's gradient with γ·r (bn_math.h)
  const double scale = gamma * arr.invstd[c];
  bn_backward_coefs(A[c], B[c], n, arr.mean[c], arr.hi[c], arr.invstd[c], scale, &arr.k1[c], &arr.k0[c]);
}

// A k×k max pooling (stride k, floor: the last H mod k rows and W mod k columns are dropped) fused into
// the elementwise passes of a channels-last (N, C, H, W) batch: forward writes only the pooled output and,
// per pooled element, the index i·k + j of its window's first maximum (the unfused MaxPool's rule); backward
// reads the pooled gradient and those indices instead of a full-size dy. CPU only. An index is one byte
// (k·k ≤ 256): it is read twice in backward, a quarter of what an int32 would cost.
constexpr std::int64_t kMaxPoolWindow = 16;
struct BnPool {
  std::int64_t k = 0;                    // window and stride (≤ kMaxPoolWindow); 0: no pooling
  std::int64_t height = 0, width = 0;    // the input's H, W
  std::int64_t out_height() const { return k ? height / k : 0; }
  std::int64_t out_width() const { return k ? width / k : 0; }
};

namespace cpu {

// The channels [begin, end) a CPU kernel call covers (end < 0: to C). With local statistics the layer
// runs stats → combine → normalize on one L2-sized block of channels at a time, so the second pass
// reads the block from cache instead of memory (see SyncBatchNorm). Message layout and per-channel
// arithmetic are the same for every range: a blocked call computes exactly what a whole call computes.
struct ChannelRange {
  std::int64_t begin = 0, end = -1;
  std::int64_t stop(std::int64_t channels) const { return end < 0 ? channels : end; }
};

// This rank's first value of every channel (the local shift bn_stats uses), as doubles: with local
// statistics it is the best pivot (no cross-rank combination, so the move to a pivot is skipped) and it
// makes the statistics independent of what the layer saw before. Empty input: zeros.
void bn_first_values(const float* x, const BnGeometry& g, double* out, ChannelRange r = {});

// Local sums of x around the pivot into msg (bn_msg_size(C) doubles), tagged with `tag`.
// pivot: (C) or null for K = 0.
void bn_stats(const float* x, const BnGeometry& g, const double* pivot, double tag, double* msg, ChannelRange r = {});

// Group statistics from the summed message: checks tags and count, fills mean/var/invstd and the
// forward coefficients, updates running stats and the pivot. Returns kBnOk or the error found.
BnStatus bn_combine(const double* msg, const BnCombineArgs& args, ChannelRange r = {});

// y = a·(x − hi) + b per channel, then max(y, 0) if relu. `stream` uses non-temporal stores for y (for
// outputs much larger than the cache, which would only evict useful lines).
void bn_normalize(const float* x, const BnGeometry& g, const float* hi, const float* a, const float* b,
                  bool relu, bool stream, float* y, ChannelRange r = {});

// Local sums Σdy' and Σdy'·(x − hi) into msg; dy' = dy·[a·(x − hi) + b > 0] if relu (the forward
// output's sign recomputed from x, so y need not be kept or re-read). Accumulates (+=) the local
// parameter gradients dβ = Σdy' and dγ = invstd·Σdy'·(x − mean) when dgamma/dbeta are not null; with
// `renorm` factors (Batch Renormalization) dγ = Σdy'·(x̂·r + d) (bn_renorm_dgamma).
void bn_backward_reduce(const float* dy, const float* x, const BnGeometry& g, const float* hi,
                        const float* a, const float* b, bool relu, const double* mean,
                        const double* invstd, double tag, double* msg, float* dgamma, float* dbeta,
                        ChannelRange r = {}, BnRenormFactors renorm = {});

// Per-channel input-gradient coefficients from the summed backward message.
BnStatus bn_backward_combine(const double* msg, const BnBackwardCombineArgs& args, ChannelRange r = {});

// dx = a·dy' + k1·(x − hi) + k0.
void bn_backward_elemt(const float* dy, const float* x, const BnGeometry& g, const float* hi,
                       const float* a, const float* b, bool relu, const float* k1, const float* k0,
                       bool stream, float* dx, ChannelRange r = {});

// ---- BN (+ReLU) fused with a max pooling (BnPool), channels-last only ----------------------------
// The same numbers as bn_normalize → maxpool and maxpool-backward → bn_backward_reduce → bn_backward_elemt,
// bit for bit: the elements are computed by the same expressions and the sums are added in the same order
// (a full-size dy is 0 off the maxima, and adding those zeros is exact).

// Floats of the scratch bn_backward_reduce_pool needs for C channels (a tile of rows of dy).
std::int64_t bn_pool_scratch_floats(std::int64_t channels);

// y (N, C, H/k, W/k) = max over each window of [relu](a·(x − hi) + b), and arg = its index in the window.
void bn_normalize_pool(const float* x, const BnGeometry& g, const BnPool& pool, const float* hi, const float* a,
                       const float* b, bool relu, float* y, std::uint8_t* arg, ChannelRange r = {});

// bn_backward_reduce of the full-size gradient that max-pool backward makes of (dy, arg) (pooled shape).
// scratch: bn_pool_scratch_floats(C) floats.
void bn_backward_reduce_pool(const float* dy, const std::uint8_t* arg, const BnPool& pool, const float* x,
                             const BnGeometry& g, const float* hi, const float* a, const float* b, bool relu,
                             const double* mean, const double* invstd, double tag, double* msg, float* dgamma,
                             float* dbeta, float* scratch, ChannelRange r = {}, BnRenormFactors renorm = {});

// bn_backward_elemt of that full-size gradient: dx over every position (also those the pooling dropped).
void bn_backward_elemt_pool(const float* dy, const std::uint8_t* arg, const BnPool& pool, const float* x,
                            const BnGeometry& g, const float* hi, const float* a, const float* b, bool relu,
                            const float* k1, const float* k0, bool stream, float* dx, ChannelRange r = {});

// ---- bf16 activations (--precision bf16) -------------------------------------------------------------
// The passes of a fused BN(+ReLU)+max-pool layer over bf16 tensors. X: the input activation x and its
// gradient dx; Y: the pooled output y and its gradient dy; each float or Bf16 (instantiated for the three
// combinations with a Bf16; float/float is the function above, the same code). bf16 elements are widened
// in registers (exact), so the statistics are the double sums of the bf16 values, and everything is
// computed as in fp32; a bf16 output is the fp32 result rounded once (to nearest even).
template <class X>
void bn_first_values(const X* x, const BnGeometry& g, double* out, ChannelRange r = {});
template <class X>
void bn_stats(const X* x, const BnGeometry& g, const double* pivot, double tag, double* msg, ChannelRange r = {});
template <class X, class Y>
void bn_normalize_pool(const X* x, const BnGeometry& g, const BnPool& pool, const float* hi, const float* a,
                       const float* b, bool relu, Y* y, std::uint8_t* arg, ChannelRange r = {});
template <class X, class Y>
void bn_backward_reduce_pool(const Y* dy, const std::uint8_t* arg, const BnPool& pool, const X* x,
                             const BnGeometry& g, const float* hi, const float* a, const float* b, bool relu,
                             const double* mean, const double* invstd, double tag, double* msg, float* dgamma,
                             float* dbeta, float* scratch, ChannelRange r = {}, BnRenormFactors renorm = {});
template <class X, class Y>
void bn_backward_elemt_pool(const Y* dy, const std::uint8_t* arg, const BnPool& pool, const X* x,
                            const BnGeometry& g, const float* hi, const float* a, const float* b, bool relu,
                            const float* k1, const float* k0, bool stream, X* dx, ChannelRange r = {});

}  // namespace cpu
}  // namespace syncbn
