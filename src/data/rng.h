// Portable integer hashing and bounded draws for the data layer (internal header).
//
// Everything the data layer randomizes (sampler permutations, augmentation draws, synthetic images) is
// a pure function of integers through these helpers, so it is bitwise identical on every rank,
// compiler and platform: no std::*_distribution (implementation-defined), no floating point.
#pragma once

#include <cstdint>

namespace syncbn::data_detail {

// SplitMix64's finalizer (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Hash of an ordered pair; chained to key streams by (domain, seed, epoch, index, ...).
inline std::uint64_t hash2(std::uint64_t a, std::uint64_t b) {
  return mix64(a + 0x9e3779b97f4a7c15ull + mix64(b ^ 0x6a09e667f3bcc909ull));
}

// A SplitMix64 stream: enough quality for shuffling-free per-sample draws, and tiny.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t operator()() {
    state_ += 0x9e3779b97f4a7c15ull;
    return mix64(state_);
  }

 private:
  std::uint64_t state_;
};

// Uniform integer in [0, range) from a generator of uniform 64-bit words, without modulo bias:
// words below 2^64 mod range are rejected, so the accepted ones cover every residue equally often.
template <class Gen>
std::uint64_t bounded(Gen& gen, std::uint64_t range) {
  const std::uint64_t threshold = (0 - range) % range;  // 2^64 mod range
  for (;;) {
    const std::uint64_t r = static_cast<std::uint64_t>(gen());
    if (r >= threshold) return r % range;
  }
}

// Domain separators, so the sampler, augmentation and synthetic data never share a stream.
inline constexpr std::uint64_t kDomainSampler = 0x53414d504c455200ull;    // "SAMPLER"
inline constexpr std::uint64_t kDomainAugment = 0x4155474d454e5400ull;    // "AUGMENT"
inline constexpr std::uint64_t kDomainSynthetic = 0x53594e5448455400ull;  // "SYNTHET"

}  // namespace syncbn::data_detail
