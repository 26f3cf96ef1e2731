// The data layer across real ranks (np = 1, 2, 3): every rank loads bitwise the same data and draws
// the same permutation; the ranks' slices of a step tile the global batch, and what each rank gathers
// (augmented) is exactly its part of the single-process batch.
// MPI rule: no ASSERT before a collective; verdicts are combined with all_ranks().
#include <gtest/gtest.h>

#include <cmath>

#include "data_test_util.h"
#include "syncbn/data.h"
#include "syncbn/sampler.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

DataSplits synthetic_cifar_like() {
  DataOptions o;
  o.dataset = "synthetic";
  o.synthetic_shape = "3x32x32";
  o.synthetic_train = 600;
  o.synthetic_test = 100;
  o.seed = 21;
  return load_dataset(o);
}

TEST(DataMpi, EveryRankHasTheSameDataAndOrder) {
  Communicator& comm = world();
  const DataSplits d = synthetic_cifar_like();
  const std::uint64_t data_hash = fnv1a(d.train.labels.data(), d.train.labels.size() * sizeof(std::int32_t),
                                        fnv1a(d.train.images.data(), d.train.images.size() * sizeof(float)));
  EXPECT_TRUE(comm.all_equal(data_hash, "test.data_hash"));
  Sampler s(d.train.size(), 48, 1234);
  for (std::int64_t e = 0; e < 3; ++e) {
    const auto& p = s.permutation(e);
    EXPECT_TRUE(comm.all_equal(fnv1a(p.data(), p.size() * sizeof(std::int64_t)), "test.perm_hash")) << "epoch " << e;
  }
}

TEST(DataMpi, RankSlicesTileEachStep) {
  Communicator& comm = world();
  const int P = comm.size(), r = comm.rank();
  const DataSplits d = synthetic_cifar_like();
  const std::int64_t B = 32, S = d.train.sample_floats();
  Sampler sampler(d.train.size(), B, 5);
  Augment aug;
  aug.crop_flip = true;
  aug.seed = 8;
  for (std::int64_t step = 0; step < 3; ++step) {
    aug.epoch = step;  // epochs 0..2, a different step of each
    const std::int64_t* idx = sampler.batch(step, step);
    // This rank's part...
    const Slice sl = rank_slice(B, P, r);
    std::vector<float> mine(static_cast<std::size_t>(sl.count * S));
    std::vector<std::int32_t> mine_lab(static_cast<std::size_t>(sl.count));
    gather_batch(d.train, idx + sl.first, sl.count, &aug, mine.data(), mine_lab.data());
    // ...is bitwise the matching rows of the single-process batch.
    std::vector<float> whole(static_cast<std::size_t>(B * S));
    std::vector<std::int32_t> whole_lab(static_cast<std::size_t>(B));
    gather_batch(d.train, idx, B, &aug, whole.data(), whole_lab.data());
    bool ok = std::equal(mine.begin(), mine.end(), whole.begin() + sl.first * S) &&
              std::equal(mine_lab.begin(), mine_lab.end(), whole_lab.begin() + sl.first);
    // Across processes: counts add up to B, and per-sample checksums (integers < 2^53, so the double
    // sum is exact) of the slices add up to the global batch's — no sample missing or doubled.
    const auto checksum = [&](const float* img, const std::int32_t* lab, std::int64_t first, std::int64_t n) {
      double sum = 0;
      for (std::int64_t k = 0; k < n; ++k)
        sum += static_cast<double>(
            (first + k + 1) * static_cast<std::int64_t>(fnv1a(img + k * S, static_cast<std::size_t>(S) * sizeof(float),
                                                              static_cast<std::uint64_t>(lab[k])) %
                                                        1000003));
      return sum;
    };
    double buf[2] = {static_cast<double>(sl.count), checksum(mine.data(), mine_lab.data(), sl.first, sl.count)};
    comm.allreduce_sum(buf, 2, "test.slices");
    ok = ok && buf[0] == static_cast<double>(B) && buf[1] == checksum(whole.data(), whole_lab.data(), 0, B);
    EXPECT_TRUE(all_ranks(comm, ok)) << "step " << step << ": rank " << r << " of " << P;
  }
}

}  // namespace
}  // namespace syncbn::test
