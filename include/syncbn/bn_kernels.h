// SyncBN kernels, CPU implementation. The CUDA twins (src/cuda/bn_kernels.cu) have the same names,
// the same argument structs and the same decomposition:
//
//   forward:  bn_stats → [one all-reduce of the message] → bn_combine → bn_normalize
//   backward: bn_backward_reduce → [one all-reduce] → bn_backward_combine → bn_backward_elemt
//
// Statistics are accumulated in double around a local shift and moved to a common pivot (bn_math.h);
// element loops read fp32 and write fp32. No kernel allocates. Message layout: bn_math.h.
#pragma once

#include <algorithm>
#include <cstdint>
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

// Arguments of bn_combine; pointers are host memory for the CPU kernel, device memory for CUDA.
struct BnCombineArgs {
  std::int64_t channels = 0;
  int group_size = 1;           // ranks that summed the message
  double tag = 0;               // this rank's tag for the message
  double eps = 1e-5;
  double factor = -1;           // running-stat factor (momentum, or 1/k for a cumulative average); < 0: none
  const float* gamma = nullptr; // (C) or null: 1
  const float* beta = nullptr;  // (C) or null: 0
  float* running_mean = nullptr;  // (C) updated when factor >= 0
  float* running_var = nullptr;   // (C)
  double* pivot = nullptr;        // (C) in: the K used by bn_stats; out: this batch's global mean
  double* mean = nullptr;         // (C) out, saved for backward
  double* var = nullptr;          // (C) out: biased batch variance
  double* invstd = nullptr;       // (C) out
  float* hi = nullptr;            // (C) out: float(mean)
  float* a = nullptr;             // (C) out: y = a·(x − hi) + b
  float* b = nullptr;             // (C) out
};

// Arguments of bn_backward_combine.
struct BnBackwardCombineArgs {
  std::int64_t channels = 0;
  int group_size = 1;
  double tag = 0;
  double expected_count = 0;      // the group count seen by forward
  const float* gamma = nullptr;   // (C) or null: 1
  const double* mean = nullptr;   // (C) saved by forward
  const double* invstd = nullptr; // (C)
  const float* hi = nullptr;      // (C)
  float* k1 = nullptr;            // (C) out: dx = a·dy' + k1·(x − hi) + k0
  float* k0 = nullptr;            // (C) out
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
// parameter gradients dβ = Σdy' and dγ = invstd·Σdy'·(x − mean) when dgamma/dbeta are not null.
void bn_backward_reduce(const float* dy, const float* x, const BnGeometry& g, const float* hi,
                        const float* a, const float* b, bool relu, const double* mean,
                        const double* invstd, double tag, double* msg, float* dgamma, float* dbeta,
                        ChannelRange r = {});

// Per-channel input-gradient coefficients from the summed backward message.
BnStatus bn_backward_combine(const double* msg, const BnBackwardCombineArgs& args, ChannelRange r = {});

// dx = a·dy' + k1·(x − hi) + k0.
void bn_backward_elemt(const float* dy, const float* x, const BnGeometry& g, const float* hi,
                       const float* a, const float* b, bool relu, const float* k1, const float* k0,
                       bool stream, float* dx, ChannelRange r = {});

}  // namespace cpu
}  // namespace syncbn
