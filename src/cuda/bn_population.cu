// bn_population_pivot, bn_population_add (CUDA): PreciseBN's per-channel steps (bn_population.h).
// One thread per channel, a few KB of traffic per forward: latency-bound, like the combines.
#include "syncbn/bn_math.h"
#include "syncbn/cuda/bn_population.h"
#include "syncbn/cuda/check.h"
#include "syncbn/error.h"

namespace syncbn::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void population_pivot_kernel(const double* mean, double* pivot, std::int64_t C) {
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < C) pivot[c] = syncbn::bn_population_pivot(mean[c]);  // the per-value rounding (bn_math.h)
}

// Element 0 is the count, 1 .. 2C the sums: one thread each, so the order of additions is fixed.
__global__ void population_add_kernel(const double* msg, double* acc, std::int64_t C) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i == 0) acc[0] += msg[kMsgCount];
  if (i < 2 * C) acc[1 + i] += msg[kMsgHeader + i];
}

unsigned blocks_for(std::int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void bn_population_pivot(const double* mean, double* pivot, std::int64_t channels, cudaStream_t stream) {
  SBN_CHECK(mean && pivot && channels > 0, "bn_population_pivot: null array or no channels");
  population_pivot_kernel<<<blocks_for(channels), kThreads, 0, stream>>>(mean, pivot, channels);
  SBN_CUDA_LAUNCH_CHECK("bn_population_pivot");
}

void bn_population_add(const double* msg, double* acc, std::int64_t channels, cudaStream_t stream) {
  SBN_CHECK(msg && acc && channels > 0, "bn_population_add: null array or no channels");
  population_add_kernel<<<blocks_for(2 * channels), kThreads, 0, stream>>>(msg, acc, channels);
  SBN_CUDA_LAUNCH_CHECK("bn_population_add");
}

}  // namespace syncbn::cuda
