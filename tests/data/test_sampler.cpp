// Sampler and rank_slice: permutations, reproducibility, epochs, the last-batch policy, slicing, and
// rank independence of the gathered (augmented) data.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "data_test_util.h"
#include "syncbn/data.h"
#include "syncbn/sampler.h"

namespace syncbn::test {
namespace {

bool is_permutation_of_iota(std::vector<std::int64_t> p) {
  std::sort(p.begin(), p.end());
  for (std::size_t i = 0; i < p.size(); ++i)
    if (p[i] != static_cast<std::int64_t>(i)) return false;
  return true;
}

TEST(Sampler, EachEpochIsAPermutation) {
  for (std::int64_t n : {1, 2, 7, 1000, 60000}) {
    Sampler s(n, 1, 123);
    for (std::int64_t e : {0, 1, 17})
      EXPECT_TRUE(is_permutation_of_iota(s.permutation(e))) << "n " << n << " epoch " << e;
  }
  EXPECT_TRUE(epoch_permutation(0, 1, 0).empty());
}

TEST(Sampler, ReproducibleFromTheSeed) {
  Sampler a(5000, 64, 7), b(5000, 64, 7), c(5000, 64, 8);
  for (std::int64_t e = 0; e < 3; ++e) {
    EXPECT_EQ(a.permutation(e), b.permutation(e));
    EXPECT_EQ(a.permutation(e), epoch_permutation(5000, 7, e));
    EXPECT_NE(a.permutation(e), c.permutation(e));
  }
  // Out-of-order epoch access (a resume) gives the same batches.
  Sampler r(5000, 64, 7);
  const std::vector<std::int64_t> late(r.batch(2, 5), r.batch(2, 5) + 64);
  const std::vector<std::int64_t> want(a.permutation(2).begin() + 5 * 64, a.permutation(2).begin() + 6 * 64);
  EXPECT_EQ(late, want);
}

TEST(Sampler, EpochsDiffer) {
  Sampler s(1000, 10, 0);
  std::set<std::vector<std::int64_t>> seen;
  for (std::int64_t e = 0; e < 20; ++e) seen.insert(s.permutation(e));
  EXPECT_EQ(seen.size(), 20u);
  // Not just different: about n − 1 positions change (a shifted or slightly perturbed order would not).
  const auto p0 = epoch_permutation(1000, 0, 0), p1 = epoch_permutation(1000, 0, 1);
  int same = 0;
  for (std::size_t i = 0; i < p0.size(); ++i) same += p0[i] == p1[i];
  EXPECT_LT(same, 10);
}

TEST(Sampler, GoldenValues) {
  // The order is part of the on-disk contract (resume, comparisons across machines): it must not change
  // with the compiler or the platform. std::mt19937_64 itself is pinned by the standard:
  std::mt19937_64 standard;
  standard.discard(9999);
  EXPECT_EQ(standard(), 9981545732273789042ull);
  EXPECT_EQ(epoch_permutation(10, 0, 0), (std::vector<std::int64_t>{7, 8, 3, 9, 5, 2, 6, 0, 1, 4}));
  EXPECT_EQ(epoch_permutation(10, 0, 1), (std::vector<std::int64_t>{8, 6, 7, 3, 4, 0, 2, 9, 5, 1}));
  EXPECT_EQ(epoch_permutation(10, 12345, 7), (std::vector<std::int64_t>{2, 5, 1, 4, 7, 0, 3, 8, 6, 9}));
}

TEST(Sampler, UnbiasedOverSmallPermutations) {
  // All 24 orders of 4 items, 24000 epochs: each order 1000 ± 31 (binomial std); ±20% is > 6 sigma.
  std::map<std::vector<std::int64_t>, int> count;
  for (std::int64_t e = 0; e < 24000; ++e) ++count[epoch_permutation(4, 99, e)];
  ASSERT_EQ(count.size(), 24u);
  for (const auto& [perm, c] : count) {
    EXPECT_GT(c, 800);
    EXPECT_LT(c, 1200);
  }
}

TEST(Sampler, BatchesOfAnEpochAreDisjointAndDropTheLastPartialBatch) {
  Sampler s(103, 10, 5);
  EXPECT_EQ(s.steps_per_epoch(), 10);  // floor(103 / 10): the last 3 are dropped
  EXPECT_EQ(s.global_batch(), 10);
  EXPECT_EQ(s.dataset_size(), 103);
  for (std::int64_t e = 0; e < 3; ++e) {
    std::set<std::int64_t> used;
    for (std::int64_t st = 0; st < s.steps_per_epoch(); ++st) {
      const std::int64_t* b = s.batch(e, st);
      EXPECT_EQ(b, s.permutation(e).data() + st * 10);
      for (int k = 0; k < 10; ++k) {
        EXPECT_TRUE(b[k] >= 0 && b[k] < 103);
        EXPECT_TRUE(used.insert(b[k]).second) << "index " << b[k] << " twice in epoch " << e;
      }
    }
    EXPECT_EQ(used.size(), 100u);
    // The dropped ones are the permutation's tail, so a different 3 each epoch.
    const auto& p = s.permutation(e);
    for (std::size_t k = 100; k < 103; ++k) EXPECT_EQ(used.count(p[k]), 0u);
  }
  Sampler exact(100, 25, 0);
  EXPECT_EQ(exact.steps_per_epoch(), 4);
  Sampler whole(7, 7, 0);
  EXPECT_EQ(whole.steps_per_epoch(), 1);
}

TEST(Sampler, PointerStaysValidWithinAnEpoch) {
  Sampler s(64, 8, 1);
  const std::int64_t* first = s.batch(3, 0);
  const std::vector<std::int64_t> copy(first, first + 8);
  for (std::int64_t st = 1; st < s.steps_per_epoch(); ++st) s.batch(3, st);
  EXPECT_EQ(std::vector<std::int64_t>(first, first + 8), copy);
}

TEST(Sampler, Errors) {
  EXPECT_EQ(error_text([] { Sampler(10, 11, 0); }),
            "Sampler: global batch 11 must be in [1, 10] (the dataset size): the last partial batch is dropped, "
            "so a larger batch would leave no step in an epoch");
  EXPECT_EQ(error_text([] { Sampler(10, 0, 0); }),
            "Sampler: global batch 0 must be in [1, 10] (the dataset size): the last partial batch is dropped, "
            "so a larger batch would leave no step in an epoch");
  EXPECT_EQ(error_text([] { Sampler(0, 1, 0); }), "Sampler: dataset is empty");
  Sampler s(10, 3, 0);
  EXPECT_EQ(error_text([&] { s.batch(0, 3); }), "Sampler: step 3 is outside [0, 3) (10 samples, global batch 3)");
  EXPECT_EQ(error_text([&] { s.batch(0, -1); }), "Sampler: step -1 is outside [0, 3) (10 samples, global batch 3)");
  EXPECT_EQ(error_text([&] { s.batch(-1, 0); }), "Sampler: negative epoch -1");
}

TEST(RankSlice, ElevenElevenTen) {
  const Slice a = rank_slice(32, 3, 0), b = rank_slice(32, 3, 1), c = rank_slice(32, 3, 2);
  EXPECT_EQ(a.first, 0);
  EXPECT_EQ(a.count, 11);
  EXPECT_EQ(b.first, 11);
  EXPECT_EQ(b.count, 11);
  EXPECT_EQ(c.first, 22);
  EXPECT_EQ(c.count, 10);
  const Slice z = rank_slice(2, 3, 2);
  EXPECT_EQ(z.first, 2);
  EXPECT_EQ(z.count, 0);
}

TEST(RankSlice, SlicesTileTheBatchInRankOrder) {
  for (std::int64_t total = 0; total <= 40; ++total)
    for (int P = 1; P <= 9; ++P) {
      std::int64_t next = 0, most = 0, least = total;
      for (int r = 0; r < P; ++r) {
        const Slice s = rank_slice(total, P, r);
        ASSERT_EQ(s.first, next) << total << " over " << P << ", rank " << r;
        ASSERT_GE(s.count, 0);
        // Earlier ranks never get fewer than later ones.
        if (r > 0) {
          ASSERT_LE(s.count, rank_slice(total, P, r - 1).count);
        }
        next += s.count;
        most = std::max(most, s.count);
        least = std::min(least, s.count);
      }
      ASSERT_EQ(next, total) << total << " over " << P;
      ASSERT_LE(most - least, 1) << total << " over " << P;
    }
}

TEST(RankSlice, Errors) {
  EXPECT_EQ(error_text([] { rank_slice(10, 0, 0); }), "rank_slice: rank 0 of 0 is invalid");
  EXPECT_EQ(error_text([] { rank_slice(10, 3, 3); }), "rank_slice: rank 3 of 3 is invalid");
  EXPECT_EQ(error_text([] { rank_slice(10, 3, -1); }), "rank_slice: rank -1 of 3 is invalid");
  EXPECT_EQ(error_text([] { rank_slice(-1, 3, 0); }), "rank_slice: negative total -1");
}

TEST(RankSlice, GatheredSlicesConcatenateToTheGlobalBatch) {
  // Simulated P ranks: each gathers its slice of step s (augmented); concatenated in rank order they
  // are bitwise the single-rank batch, for any P — the data side of world-size invariance.
  DataOptions o;
  o.dataset = "synthetic";
  o.synthetic_shape = "3x32x32";
  o.synthetic_train = 500;
  o.synthetic_test = 10;
  const DataSplits d = load_dataset(o);
  const std::int64_t B = 32, S = d.train.sample_floats();
  Augment aug;
  aug.crop_flip = true;
  aug.seed = 3;
  aug.epoch = 2;
  Sampler sampler(d.train.size(), B, 77);
  const std::int64_t* idx = sampler.batch(2, 4);
  std::vector<float> whole(static_cast<std::size_t>(B * S));
  std::vector<std::int32_t> whole_lab(static_cast<std::size_t>(B));
  gather_batch(d.train, idx, B, &aug, whole.data(), whole_lab.data());
  for (int P : {1, 2, 3, 5, 7}) {
    std::vector<float> cat;
    std::vector<std::int32_t> cat_lab;
    for (int r = 0; r < P; ++r) {
      const Slice sl = rank_slice(B, P, r);
      std::vector<float> img(static_cast<std::size_t>(sl.count * S));
      std::vector<std::int32_t> lab(static_cast<std::size_t>(sl.count));
      gather_batch(d.train, idx + sl.first, sl.count, &aug, img.data(), lab.data());
      cat.insert(cat.end(), img.begin(), img.end());
      cat_lab.insert(cat_lab.end(), lab.begin(), lab.end());
    }
    EXPECT_EQ(cat, whole) << "P " << P;
    EXPECT_EQ(cat_lab, whole_lab) << "P " << P;
  }
}

}  // namespace
}  // namespace syncbn::test
