// PreciseBN (README "PreciseBN"), run at np = 1, 2, 3, 4:
//  - a population pass over N batches sets running mean / unbiased variance to the statistics of all the
//    N·B values (long-double reference, ≤ 1e-6 relative), bitwise the same on every rank, and the same
//    as one process given the whole batches (≤ 1e-6; the test reports whether bitwise); sync and local
//    modes, uneven and empty local batches, data at mean/std = 1000;
//  - the pass moves no running statistics counter or pivot;
//  - the naive method (fvcore's: a cumulative average of per-batch statistics) misses the spread of the
//    batch means when samples are correlated within an image: the README's measured example.
// MPI rule: no ASSERT before a collective; verdicts are combined with all_ranks().
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>

#include "syncbn/sampler.h"
#include "syncbn/sync_batchnorm.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

constexpr std::int64_t kC = 5, kH = 3, kW = 4, kS = kH * kW;
// Global batch sizes of the N batches: with 3 or 4 ranks the small ones leave ranks empty.
const std::vector<std::int64_t> kBatches = {12, 5, 2, 9, 3};

struct Population {
  std::vector<double> mean, var;  // (C) as the layer stored them (floats)
};

// This rank's slice of global batch b, logical (n, C, S), rounded to float; first sample index via *first.
std::vector<double> batch_slice(std::size_t b, int P, int r, double mean, double sd, std::int64_t* n) {
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < b; ++i) offset += kBatches[i];
  const Slice s = rank_slice(kBatches[b], P, r);
  *n = s.count;
  return round_to_float(make_data(77, offset + s.first, s.count, kC, kS, mean, sd));
}

// Runs the population pass of a fresh layer in `mode` over `group_world` (ranks P, this one r) and
// finishes it over `world`. Returns the statistics; *moved is set if the pass moved counter or pivot.
Population run_pass(Communicator& world, Communicator& group_world, const SyncMode& mode, Layout layout, int P,
                    int r, double mean, double sd, bool* moved) {
  SyncGroup group(group_world, mode);
  BatchNormOptions opt;
  opt.channels = kC;
  SyncBatchNorm bn("layer2.bn", opt, &group);
  bn.pivot().assign(static_cast<std::size_t>(kC), 0.5);
  bn.begin_population();
  for (std::size_t b = 0; b < kBatches.size(); ++b) {
    std::int64_t n = 0;
    const auto xl = batch_slice(b, P, r, mean, sd, &n);
    if (n == 0 && mode.kind == SyncMode::kLocal) continue;  // as the trainer: nobody waits for this rank
    Tensor y;
    bn.forward(to_tensor(xl, {n, kC, kH, kW}, layout), y, true);
  }
  bn.finish_population(world);
  *moved = bn.num_batches_tracked() != 0 || bn.pivot() != std::vector<double>(static_cast<std::size_t>(kC), 0.5);
  return {{bn.running_mean().begin(), bn.running_mean().end()}, {bn.running_var().begin(), bn.running_var().end()}};
}

// Long-double two-pass statistics of all values of all batches (population mean, unbiased variance).
Population reference(double mean, double sd) {
  std::vector<long double> s1(kC, 0), s2(kC, 0);
  std::vector<std::vector<double>> all;
  std::int64_t count = 0;
  for (std::size_t b = 0; b < kBatches.size(); ++b) {
    std::int64_t n = 0;
    all.push_back(batch_slice(b, 1, 0, mean, sd, &n));
    count += n * kS;
  }
  for (const auto& v : all)
    for (std::size_t i = 0; i < v.size(); ++i) s1[(i / kS) % kC] += v[i];
  Population p;
  for (std::int64_t c = 0; c < kC; ++c) p.mean.push_back(static_cast<double>(s1[c] / count));
  for (const auto& v : all)
    for (std::size_t i = 0; i < v.size(); ++i) {
      const long double d = v[i] - static_cast<long double>(p.mean[(i / kS) % kC]);
      s2[(i / kS) % kC] += d * d;
    }
  for (std::int64_t c = 0; c < kC; ++c) p.var.push_back(static_cast<double>(s2[c] / (count - 1)));
  return p;
}

// Rank 0's values, on every rank (a sum where only rank 0 contributes is exact).
std::vector<double> rank0(Communicator& world, const std::vector<double>& v) {
  std::vector<double> b = world.rank() == 0 ? v : std::vector<double>(v.size(), 0.0);
  world.allreduce_sum(b.data(), b.size(), "test.rank0");
  return b;
}

class PreciseBnExact : public ::testing::TestWithParam<std::tuple<const char*, Layout, double>> {};

TEST_P(PreciseBnExact, PopulationStatisticsOfAllSamples) {
  Communicator& world = test::world();
  const int P = world.size(), r = world.rank();
  const SyncMode mode = parse_sync_mode(std::get<0>(GetParam()));
  const Layout layout = std::get<1>(GetParam());
  const double mean = std::get<2>(GetParam()), sd = mean > 100 ? 1.0 : 3.0;
  bool moved = false, moved1 = false;
  const Population got = run_pass(world, world, mode, layout, P, r, mean, sd, &moved);
  // One process given the whole batches (world size 1): what np = 1 computes.
  const std::unique_ptr<Communicator> self = world.split(r, 0, "test.self");
  const Population one = run_pass(*self, *self, parse_sync_mode("sync"), layout, 1, 0, mean, sd, &moved1);
  const Population ref = reference(mean, sd);

  std::string why;
  bool ok = !moved && !moved1;
  if (moved || moved1) why += "the pass moved num_batches_tracked or the pivot\n";
  for (const auto& [a, b, what] : {std::tuple{&got.mean, &ref.mean, "mean vs reference"},
                                   std::tuple{&got.var, &ref.var, "variance vs reference"},
                                   std::tuple{&got.mean, &one.mean, "mean vs one process"},
                                   std::tuple{&got.var, &one.var, "variance vs one process"}}) {
    const auto res = near(*a, *b, 1e-6, 0.0, what);
    if (!res) why += std::string(res.message()) + "\n";
    ok = ok && res;
  }
  const bool same_everywhere = rank0(world, got.mean) == got.mean && rank0(world, got.var) == got.var;
  if (!same_everywhere) why += "ranks differ\n";
  ok = ok && same_everywhere;
  if (r == 0)
    std::printf("# %s mean %g np %d: %s bitwise equal to one process\n", std::get<0>(GetParam()), mean, P,
                got.mean == one.mean && got.var == one.var ? "" : "NOT");
  EXPECT_TRUE(all_ranks(world, ok)) << why;
}

INSTANTIATE_TEST_SUITE_P(Modes, PreciseBnExact,
                         ::testing::Values(std::tuple{"sync", Layout::kPlanar, 2.0},
                                           std::tuple{"sync", Layout::kChannelsLast, 1000.0},
                                           std::tuple{"local", Layout::kPlanar, 1000.0},
                                           std::tuple{"local", Layout::kChannelsLast, 2.0}));

// Samples whose positions share a per-image offset (as neighbouring pixels do): batches of 2 images.
// The exact population variance is that of all values; the naive PreciseBN (fvcore: the cumulative
// average of each batch's unbiased variance) sees only the spread within batches and misses that of
// the batch means. Each rank runs it alone (a world of one): the figures are the README's.
TEST(PreciseBnNaive, MissesTheSpreadOfBatchMeans) {
  Communicator& world = test::world();
  const std::unique_ptr<Communicator> self = world.split(world.rank(), 0, "test.self");
  constexpr std::int64_t kBatch = 2, kN = 200, kPos = 64;  // 2 images of 8x8 per batch, 200 batches
  SyncGroup group(*self, parse_sync_mode("sync"));
  BatchNormOptions opt;
  opt.channels = 1;
  SyncBatchNorm exact("exact.bn", opt, &group);
  opt.momentum.reset();  // cumulative average of per-batch statistics: the naive method
  SyncBatchNorm naive("naive.bn", opt, &group);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> image(0.0, 1.0), pixel(0.0, 1.0);
  long double s1 = 0, s2 = 0;
  std::vector<double> values;
  exact.begin_population();
  for (std::int64_t b = 0; b < kN; ++b) {
    std::vector<double> x;
    for (std::int64_t i = 0; i < kBatch; ++i) {
      const double offset = 3.0 + image(rng);  // per image: std 1
      for (std::int64_t p = 0; p < kPos; ++p) x.push_back(static_cast<float>(offset + pixel(rng)));
    }
    values.insert(values.end(), x.begin(), x.end());
    const Tensor t = to_tensor(x, {kBatch, 1, 8, 8}, Layout::kPlanar);
    Tensor y;
    exact.forward(t, y, true);
    naive.forward(t, y, true);
  }
  exact.finish_population(*self);
  for (double v : values) s1 += v;
  const long double m = s1 / values.size();
  for (double v : values) s2 += (v - m) * (v - m);
  const double ref = static_cast<double>(s2 / (values.size() - 1));
  const double got = exact.running_var()[0], nv = naive.running_var()[0];
  if (world.rank() == 0)
    std::printf("# population variance %.4f: exact PreciseBN %.4f (rel err %.1e), naive average of batch "
                "variances %.4f (%.1f%%)\n",
                ref, got, std::abs(got - ref) / ref, nv, 100 * (nv - ref) / ref);
  EXPECT_LE(std::abs(got - ref), 1e-6 * ref);
  EXPECT_LT(nv, 0.85 * ref) << "the naive method should underestimate by about a quarter here";
}

}  // namespace
}  // namespace syncbn::test
