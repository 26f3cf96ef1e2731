// Sampler: which samples each optimizer step uses, identical on every rank and platform.
//
// Each epoch is a global permutation of [0, n) drawn from (seed, epoch) with std::mt19937_64's raw
// output (its sequence is fixed by the C++ standard) and our own unbiased bounded integer (not
// std::uniform_int_distribution, whose output is implementation-defined), so any P ranks, any
// compiler, and a resumed run all see the same order. Step s of an epoch takes permutation entries
// [s·B, (s+1)·B); the last partial batch is DROPPED (steps_per_epoch = floor(n / B)), so every step
// has exactly the global batch B and its loss scale 1/B is the same for every step (DESIGN.md §4).
// Rank r then takes its rank_slice() of the B indices.
#pragma once

#include <cstdint>
#include <vector>

namespace syncbn {

class Sampler {
 public:
  // Throws unless dataset_size ≥ 1 and 1 ≤ global_batch ≤ dataset_size (else no step would run).
  Sampler(std::int64_t dataset_size, std::int64_t global_batch, std::uint64_t seed);

  std::int64_t dataset_size() const { return n_; }
  std::int64_t global_batch() const { return batch_; }
  // floor(n / B): the last partial batch is dropped.
  std::int64_t steps_per_epoch() const { return n_ / batch_; }

  // The B indices of step `step` (0-based within the epoch) of epoch `epoch` (≥ 0); the pointer stays
  // valid until the next call with another epoch. Throws if step is outside [0, steps_per_epoch()).
  const std::int64_t* batch(std::int64_t epoch, std::int64_t step);

  // The whole permutation of epoch `epoch` (same validity rule as batch()).
  const std::vector<std::int64_t>& permutation(std::int64_t epoch);

 private:
  std::int64_t n_, batch_;
  std::uint64_t seed_;
  std::int64_t cached_epoch_ = -1;
  std::vector<std::int64_t> perm_;  // (n) permutation of cached_epoch_
};

// The permutation of [0, n) for (seed, epoch), as Sampler uses it: a pure function.
std::vector<std::int64_t> epoch_permutation(std::int64_t n, std::uint64_t seed, std::int64_t epoch);

// Contiguous slice [first, first + count) of `total` items for rank r of P: the first (total mod P)
// ranks get one more (B = 32 over 3 ranks → 11, 11, 10; a rank may get zero). Slices of ranks
// 0..P-1 tile [0, total) in rank order.
struct Slice {
  std::int64_t first = 0, count = 0;
};
Slice rank_slice(std::int64_t total, int ranks, int rank);

}  // namespace syncbn
