// Non-temporal stores for the elementwise kernels' outputs (internal to src/cpu).
//
// A SyncBN output larger than the caches is written once and read back only by the next layer, long
// after it would have been evicted; writing it through the cache costs a read-for-ownership of every
// line (4/3 of the store traffic on this kind of machine) and evicts inputs the next pass wants.
#pragma once

#include <cstdint>
#include <cstring>

#include "syncbn/tensor.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace syncbn::cpu {

constexpr int kLineFloats = 16;  // one 64-byte cache line of fp32

// Stores the 16 floats of `src` (64-byte aligned) to `dst` (64-byte aligned), bypassing the caches.
inline void stream_line(float* dst, const float* src) {
#if defined(__AVX512F__)
  _mm512_stream_ps(dst, _mm512_load_ps(src));
#elif defined(__AVX__)
  _mm256_stream_ps(dst, _mm256_load_ps(src));
  _mm256_stream_ps(dst + 8, _mm256_load_ps(src + 8));
#elif defined(__SSE2__)
  for (int j = 0; j < kLineFloats; j += 4) _mm_stream_ps(dst + j, _mm_load_ps(src + j));
#else
  std::memcpy(dst, src, kLineFloats * sizeof(float));
#endif
}

// Orders the non-temporal stores before anything that follows (another thread, an MPI send).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Writes dst[i] = f(i) for i in [0, len). With `stream`, whole aligned lines go out non-temporally and
// the unaligned head and the tail through the cache. f must be cheap and inlinable (it is evaluated
// once per element, in vectorizable loops).
template <class F>
inline void write_elements(float* dst, std::int64_t len, bool stream, F&& f) {
  std::int64_t i = 0;
  if (stream) {
    const auto misalign = reinterpret_cast<std::uintptr_t>(dst) & 63u;
    std::int64_t head = misalign ? static_cast<std::int64_t>((64u - misalign) / sizeof(float)) : 0;
    if (head > len) head = len;
    for (; i < head; ++i) dst[i] = f(i);
    for (; i + kLineFloats <= len; i += kLineFloats) {
      alignas(64) float line[kLineFloats];
#pragma omp simd
      for (int j = 0; j < kLineFloats; ++j) line[j] = f(i + j);
      stream_line(dst + i, line);
    }
  }
#pragma omp simd
  for (std::int64_t j = i; j < len; ++j) dst[j] = f(j);
}

// The same into bf16 (rounded to nearest even), always through the cache: the bf16 outputs are the next
// convolution's input or the previous one's gradient, read back soon, and half the bytes.
template <class F>
inline void write_elements(Bf16* dst, std::int64_t len, bool /*stream*/, F&& f) {
#pragma omp simd
  for (std::int64_t j = 0; j < len; ++j) dst[j] = float_to_bf16(f(j));
}

}  // namespace syncbn::cpu
