// SIMD traits for the reduction kernels (internal to src/cpu).
//
// The reductions read fp32 and accumulate in double; GCC does not vectorize that well on its own (it
// keeps lane accumulators in memory: 10 GB/s instead of the 23 GB/s this machine streams). Each trait
// pairs W floats (F) with W doubles (D) so one templated loop serves AVX-512 (W = 8), AVX2+FMA (W = 4)
// and plain scalar code (W = 1, also the tail of every loop). The ISA is chosen at compile time by
// the build's -march (SBN_CPU_ARCH). loadf also widens W bf16 values (--precision bf16 activations):
// a bf16 is the high half of an fp32, so widening is a zero-extend and a shift, exact.
#pragma once

#include <cmath>

#include "syncbn/tensor.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// GCC 12 reports its own AVX-512 conversion intrinsics as "maybe uninitialized" (a known false
// positive in avx512fintrin.h); silence it for the code that instantiates them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace syncbn::cpu::simd {

struct Scalar {
  static constexpr int kW = 1;
  using F = float;
  using D = double;
  static F loadf(const float* p) { return *p; }
  static F loadf(const Bf16* p) { return bf16_to_float(*p); }
  static F setf(float v) { return v; }
  static F subf(F a, F b) { return a - b; }
  // dy where a·xh + b > 0 (the fused ReLU's gate, same fma as the forward), else 0.
  static F gate(F dy, F xh, F a, F b) { return std::fma(a, xh, b) > 0.0f ? dy : 0.0f; }
  static D cvt(F v) { return static_cast<double>(v); }
  static D zero() { return 0.0; }
  static D set1(double v) { return v; }
  static D add(D a, D b) { return a + b; }
  static D sub(D a, D b) { return a - b; }
  static D mul(D a, D b) { return a * b; }
  static D fma(D a, D b, D c) { return std::fma(a, b, c); }
  static D loadd(const double* p) { return *p; }
  static void stored(double* p, D v) { *p = v; }
  static double hsum(D v) { return v; }
};

#if defined(__AVX512F__)
struct Native {
  static constexpr int kW = 8;
  using F = __m256;
  using D = __m512d;
  static F loadf(const float* p) { return _mm256_loadu_ps(p); }
  static F loadf(const Bf16* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static F setf(float v) { return _mm256_set1_ps(v); }
  static F subf(F a, F b) { return _mm256_sub_ps(a, b); }
  static F gate(F dy, F xh, F a, F b) {
    const __mmask8 m = _mm256_cmp_ps_mask(_mm256_fmadd_ps(a, xh, b), _mm256_setzero_ps(), _CMP_GT_OQ);
    return _mm256_maskz_mov_ps(m, dy);
  }
  static D cvt(F v) { return _mm512_cvtps_pd(v); }
  static D zero() { return _mm512_setzero_pd(); }
  static D set1(double v) { return _mm512_set1_pd(v); }
  static D add(D a, D b) { return _mm512_add_pd(a, b); }
  static D sub(D a, D b) { return _mm512_sub_pd(a, b); }
  static D mul(D a, D b) { return _mm512_mul_pd(a, b); }
  static D fma(D a, D b, D c) { return _mm512_fmadd_pd(a, b, c); }
  static D loadd(const double* p) { return _mm512_loadu_pd(p); }
  static void stored(double* p, D v) { _mm512_storeu_pd(p, v); }
  static double hsum(D v) { return _mm512_reduce_add_pd(v); }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct Native {
  static constexpr int kW = 4;
  using F = __m128;
  using D = __m256d;
  static F loadf(const float* p) { return _mm_loadu_ps(p); }
  static F loadf(const Bf16* p) {
    const __m128i w = _mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return _mm_castsi128_ps(_mm_slli_epi32(w, 16));
  }
  static F setf(float v) { return _mm_set1_ps(v); }
  static F subf(F a, F b) { return _mm_sub_ps(a, b); }
  static F gate(F dy, F xh, F a, F b) {
    return _mm_and_ps(dy, _mm_cmp_ps(_mm_fmadd_ps(a, xh, b), _mm_setzero_ps(), _CMP_GT_OQ));
  }
  static D cvt(F v) { return _mm256_cvtps_pd(v); }
  static D zero() { return _mm256_setzero_pd(); }
  static D set1(double v) { return _mm256_set1_pd(v); }
  static D add(D a, D b) { return _mm256_add_pd(a, b); }
  static D sub(D a, D b) { return _mm256_sub_pd(a, b); }
  static D mul(D a, D b) { return _mm256_mul_pd(a, b); }
  static D fma(D a, D b, D c) { return _mm256_fmadd_pd(a, b, c); }
  static D loadd(const double* p) { return _mm256_loadu_pd(p); }
  static void stored(double* p, D v) { _mm256_storeu_pd(p, v); }
  static double hsum(D v) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};
#else
using Native = Scalar;
#endif

}  // namespace syncbn::cpu::simd
