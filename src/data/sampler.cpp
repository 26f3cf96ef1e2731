#include "syncbn/sampler.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <utility>

#include "rng.h"
#include "syncbn/error.h"

namespace syncbn {

std::vector<std::int64_t> epoch_permutation(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  SBN_CHECK(n >= 0, "epoch_permutation: negative size " + std::to_string(n));
  SBN_CHECK(epoch >= 0, "epoch_permutation: negative epoch " + std::to_string(epoch));
  using namespace data_detail;
  // mt19937_64's output for a given seed is fixed by the standard ([rand.predef]); the (seed, epoch)
  // key is hashed so that neighbouring seeds and epochs give unrelated streams.
  std::mt19937_64 gen(hash2(hash2(kDomainSampler, seed), static_cast<std::uint64_t>(epoch)));
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), std::int64_t{0});
  // Fisher–Yates: every permutation equally likely given unbiased draws.
  for (std::int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<std::int64_t>(bounded(gen, static_cast<std::uint64_t>(i) + 1));
    std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(j)]);
  }
  return p;
}

Sampler::Sampler(std::int64_t dataset_size, std::int64_t global_batch, std::uint64_t seed)
    : n_(dataset_size), batch_(global_batch), seed_(seed) {
  SBN_CHECK(dataset_size >= 1, "Sampler: dataset is empty");
  SBN_CHECK(global_batch >= 1 && global_batch <= dataset_size,
            "Sampler: global batch " + std::to_string(global_batch) + " must be in [1, " +
                std::to_string(dataset_size) +
                "] (the dataset size): the last partial batch is dropped, so a "
                "larger batch would leave no step in an epoch");
}

const std::vector<std::int64_t>& Sampler::permutation(std::int64_t epoch) {
  SBN_CHECK(epoch >= 0, "Sampler: negative epoch " + std::to_string(epoch));
  if (epoch != cached_epoch_) {
    perm_ = epoch_permutation(n_, seed_, epoch);
    cached_epoch_ = epoch;
  }
  return perm_;
}

const std::int64_t* Sampler::batch(std::int64_t epoch, std::int64_t step) {
  SBN_CHECK(step >= 0 && step < steps_per_epoch(), "Sampler: step " + std::to_string(step) + " is outside [0, " +
                                                       std::to_string(steps_per_epoch()) + ") (" + std::to_string(n_) +
                                                       " samples, global batch " + std::to_string(batch_) + ")");
  return permutation(epoch).data() + step * batch_;
}

Slice rank_slice(std::int64_t total, int ranks, int rank) {
  SBN_CHECK(total >= 0, "rank_slice: negative total " + std::to_string(total));
  SBN_CHECK(ranks >= 1 && rank >= 0 && rank < ranks,
            "rank_slice: rank " + std::to_string(rank) + " of " + std::to_string(ranks) + " is invalid");
  const std::int64_t base = total / ranks, extra = total % ranks;
  Slice s;
  s.count = base + (rank < extra ? 1 : 0);
  s.first = rank * base + std::min<std::int64_t>(rank, extra);
  return s;
}

}  // namespace syncbn
