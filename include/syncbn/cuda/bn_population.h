// PreciseBN's two device steps (README "PreciseBN", bn_math.h for the formulas): the population pass
// of CudaSyncBatchNorm reuses bn_stats for a forward's local sums around the pass's pivot P and adds
// them to a device accumulator; the host reads the accumulator once, at finish_population. Both
// launches are stream-ordered and never wait for the host.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace syncbn::cuda {

// pivot[c] = bn_population_pivot(mean[c]) for c < channels: the pass's pivot from its first batch mean.
void bn_population_pivot(const double* mean, double* pivot, std::int64_t channels, cudaStream_t stream);

// acc = [n, s1 (C), s2 (C)] += the count and sums of a bn_stats message (bn_msg_size(C) doubles).
void bn_population_add(const double* msg, double* acc, std::int64_t channels, cudaStream_t stream);

}  // namespace syncbn::cuda
