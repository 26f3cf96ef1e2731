// Distributed SyncBN properties, run at np = 1, 2, 3, 4:
//  - sync over P ranks == BN over the concatenated batch (y, running stats, dx, Σ_ranks dγ/dβ), with
//    uneven and empty local batches;
//  - sync:2 == independent pairs; local == per-rank BN (an empty rank: empty output, batch counted);
//  - exactly one all-reduce per layer per direction; eval never communicates;
//  - layer-order mismatch and rejected input are reported on every rank, naming the layer, no hang.
// MPI rule: no ASSERT before a collective; verdicts are combined with all_ranks().
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <numeric>

#include "syncbn/error.h"
#include "syncbn/sync_batchnorm.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

std::vector<std::int64_t> even_split(int P) { return std::vector<std::int64_t>(static_cast<std::size_t>(P), 4); }

struct Scenario {
  std::vector<std::int64_t> split;  // samples per rank
  Layout layout;
  bool relu;
  std::int64_t C, H, W;
};

// Runs one training step of a layer in `mode` on this rank's slice and compares with the reference
// over the batch of this rank's sync group. Returns this rank's verdict (no ASSERTs inside).
bool run_and_compare(Communicator& world, const SyncMode& mode, const Scenario& sc, std::string& why) {
  const int P = world.size(), r = world.rank();
  const int K = mode.kind == SyncMode::kLocal ? 1 : mode.kind == SyncMode::kSync ? P : mode.group_size;
  const int g0 = r / K * K;  // first rank of this rank's group
  std::int64_t first = 0, group_first = 0, group_n = 0;
  for (int q = 0; q < P; ++q) {
    if (q < r) first += sc.split[static_cast<std::size_t>(q)];
    if (q < g0) group_first += sc.split[static_cast<std::size_t>(q)];
    if (q >= g0 && q < g0 + K) group_n += sc.split[static_cast<std::size_t>(q)];
  }
  const std::int64_t n = sc.split[static_cast<std::size_t>(r)], C = sc.C, S = sc.H ? sc.H * sc.W : 1;
  SyncGroup group(world, mode);
  BatchNormOptions opt;
  opt.channels = C;
  opt.fuse_relu = sc.relu;
  SyncBatchNorm bn("layer3.bn", opt, &group);
  for (std::int64_t c = 0; c < C; ++c) {
    bn.gamma()[c] = 1.0f + 0.1f * static_cast<float>(c);
    bn.beta()[c] = 0.05f * static_cast<float>(c) - 0.2f;
  }
  const std::vector<std::int64_t> shape = sc.H ? std::vector<std::int64_t>{n, C, sc.H, sc.W}
                                               : std::vector<std::int64_t>{n, C};
  const auto xl = round_to_float(make_data(101, first, n, C, S, 2.0, 3.0));
  const auto dyl = round_to_float(make_data(202, first, n, C, S, 0.0, 1.0));
  const Tensor x = to_tensor(xl, shape, sc.layout), dy = to_tensor(dyl, shape, sc.layout);
  Tensor y, dx;
  // Local statistics on an empty rank: PyTorch's rule (empty in, empty out, running statistics as they
  // were, the batch counted). Caught, not thrown: the group's collective below must still run.
  const bool empty_local = mode.kind == SyncMode::kLocal && n == 0;
  try {
    bn.forward(x, y, true);
    bn.backward(x, dy, dx);
  } catch (const Error& e) {
    if (!empty_local) throw;
    why += std::string("empty local batch: ") + e.what() + "\n";
    return false;
  }
  // dγ/dβ are local contributions: the trainer sums them over ranks; do the same over the group.
  std::vector<double> dparams(static_cast<std::size_t>(2 * C));
  for (std::int64_t c = 0; c < C; ++c) {
    dparams[static_cast<std::size_t>(c)] = bn.dgamma()[c];
    dparams[static_cast<std::size_t>(C + c)] = bn.dbeta()[c];
  }
  if (group.comm()) group.comm()->allreduce_sum(dparams.data(), dparams.size(), "test.dparams");
  if (empty_local) {
    const auto Cs = static_cast<std::size_t>(C);
    const bool ok = y.shape() == shape && dx.shape() == shape && bn.running_mean() == std::vector<float>(Cs, 0.0f) &&
                    bn.running_var() == std::vector<float>(Cs, 1.0f) && bn.num_batches_tracked() == 1 &&
                    dparams == std::vector<double>(dparams.size(), 0.0);
    if (!ok) why += "empty local batch: expected an empty output, untouched running stats, the batch counted\n";
    return ok;
  }

  // Reference over the group's concatenated batch.
  const auto gx = round_to_float(make_data(101, group_first, group_n, C, S, 2.0, 3.0));
  const auto gdy = round_to_float(make_data(202, group_first, group_n, C, S, 0.0, 1.0));
  std::vector<double> gamma(C), beta(C), rm(C, 0.0), rv(C, 1.0);
  for (std::int64_t c = 0; c < C; ++c) {
    gamma[c] = bn.gamma()[c];
    beta[c] = bn.beta()[c];
  }
  RefConfig cfg;
  cfg.relu = sc.relu;
  const RefResult ref = reference_bn(gx, gdy, group_n, C, S, gamma, beta, rm, rv, cfg);
  const auto off = static_cast<std::ptrdiff_t>((first - group_first) * C * S);
  const auto len = static_cast<std::ptrdiff_t>(n * C * S);
  const std::vector<double> ry(ref.y.begin() + off, ref.y.begin() + off + len);
  const std::vector<double> rdx(ref.dx.begin() + off, ref.dx.begin() + off + len);
  const std::vector<double> dg(dparams.begin(), dparams.begin() + C), db(dparams.begin() + C, dparams.end());
  ::testing::AssertionResult checks[] = {
      near(from_tensor(y), ry, 1e-5, 1e-6, "y"),
      near(to_double(bn.running_mean()), ref.running_mean, 1e-5, 1e-6, "running mean"),
      near(to_double(bn.running_var()), ref.running_var, 1e-5, 1e-6, "running var"),
      near(from_tensor(dx), rdx, 1e-5, 1e-6, "dx"),
      near(dg, ref.dgamma, 1e-5, 1e-6, "sum over ranks of dgamma"),
      near(db, ref.dbeta, 1e-5, 1e-6, "sum over ranks of dbeta"),
  };
  bool ok = true;
  for (auto& c : checks)
    if (!c) {
      ok = false;
      why += std::string(c.message()) + "\n";
    }
  if (bn.last_group_count() != static_cast<double>(group_n * S)) {
    ok = false;
    why += "group count " + std::to_string(bn.last_group_count()) + " != " + std::to_string(group_n * S) + "\n";
  }
  return ok;
}

void check_mode(const SyncMode& mode, const Scenario& sc) {
  std::string why;
  const bool ok = run_and_compare(world(), mode, sc, why);
  EXPECT_TRUE(ok) << "mode " << mode.str() << ": " << why;
  EXPECT_TRUE(all_ranks(world(), ok)) << "another rank failed";
}

TEST(SyncBnMpi, SyncEqualsConcatenatedBatchUneven) {
  const int P = world().size();
  for (Layout layout : {Layout::kPlanar, Layout::kChannelsLast})
    for (bool relu : {false, true}) check_mode(parse_sync_mode("sync"), {uneven_split(P), layout, relu, 12, 5, 3});
  check_mode(parse_sync_mode("sync"), {uneven_split(P), Layout::kPlanar, false, 20, 0, 0});  // (N, C)
}

TEST(SyncBnMpi, SyncEqualsConcatenatedBatchEven) {
  check_mode(parse_sync_mode("sync"), {even_split(world().size()), Layout::kPlanar, false, 16, 4, 4});
  if (world().size() == 3) check_mode(parse_sync_mode("sync"), {{11, 11, 10}, Layout::kPlanar, false, 8, 3, 3});
}

TEST(SyncBnMpi, GroupsOfTwoAreIndependentPairs) {
  if (world().size() % 2 != 0) GTEST_SKIP() << "sync:2 needs an even world size";
  for (Layout layout : {Layout::kPlanar, Layout::kChannelsLast})
    check_mode(parse_sync_mode("sync:2"), {uneven_split(world().size()), layout, false, 12, 5, 3});
}

TEST(SyncBnMpi, LocalEqualsPerRankBatchNorm) {
  for (Layout layout : {Layout::kPlanar, Layout::kChannelsLast})
    check_mode(parse_sync_mode("local"), {uneven_split(world().size()), layout, false, 12, 5, 3});
}

TEST(SyncBnMpi, GroupSizeMustDivideWorld) {
  const int P = world().size();
  std::string msg;
  try {
    SyncGroup g(world(), parse_sync_mode("sync:" + std::to_string(P + 1)));
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("does not divide the world size " + std::to_string(P)), std::string::npos) << msg;
}

// Exactly one all-reduce per layer in forward and one in backward, counted by the communicator; eval
// forward communicates not at all.
TEST(SyncBnMpi, OneCollectivePerLayerPerDirection) {
  auto comm = world().split(0, world().rank(), "test.count");
  SyncGroup group(*comm, parse_sync_mode("sync"));
  BatchNormOptions opt;
  opt.channels = 8;
  SyncBatchNorm a("a.bn", opt, &group), b("b.bn", opt, &group);
  const std::vector<std::int64_t> shape = {3, 8, 4, 4};
  const Tensor x = to_tensor(make_data(1, 3 * world().rank(), 3, 8, 16, 0, 1), shape, Layout::kPlanar);
  Tensor y1, y2, d1, d2;
  const auto base = comm->stats();
  a.forward(x, y1, true);
  const auto after_a = comm->stats();
  b.forward(y1, y2, true);
  const auto after_fwd = comm->stats();
  b.backward(y1, x, d2);
  const auto after_b = comm->stats();
  a.backward(x, d2, d1);
  const auto after_bwd = comm->stats();
  a.forward(x, y1, false);
  b.forward(y1, y2, false);
  const auto after_eval = comm->stats();
  EXPECT_EQ(after_a.allreduces - base.allreduces, 1u);
  EXPECT_EQ(after_fwd.allreduces - base.allreduces, 2u);
  EXPECT_EQ(after_b.allreduces - after_fwd.allreduces, 1u);
  EXPECT_EQ(after_bwd.allreduces - after_fwd.allreduces, 2u);
  EXPECT_EQ(after_bwd.collectives - base.collectives, 4u);  // nothing else either
  EXPECT_EQ(after_eval.collectives, after_bwd.collectives);
  // Message size O(C), independent of the world size: 3 + 2C doubles each way.
  EXPECT_EQ(after_bwd.bytes - base.bytes, 4u * sizeof(double) * (3 + 2 * 8));
}

// The global variance keeps its accuracy across ranks at large offsets and tiny variance.
TEST(SyncBnMpi, GlobalVarianceNumerics) {
  const int P = world().size(), r = world().rank();
  const auto split = uneven_split(P);
  std::int64_t first = 0, total = 0;
  for (int q = 0; q < P; ++q) {
    if (q < r) first += split[static_cast<std::size_t>(q)];
    total += split[static_cast<std::size_t>(q)];
  }
  const std::int64_t n = split[static_cast<std::size_t>(r)], C = 4, S = 49;
  bool ok = true;
  std::string why;
  struct Data {
    double mean, sd;
  };
  // mean/std = 1e3 and 1e4; then channels whose variance is far below eps (1e-10 and 4e-12).
  for (Data d : {Data{1e3, 1.0}, Data{1e4, 1.0}, Data{-1e-3, 1e-5}, Data{0.02, 2e-6}}) {
    {
      const double mean = d.mean, sd = d.sd;
      BatchNormOptions opt;
      opt.channels = C;
      SyncGroup group(world(), parse_sync_mode("sync"));
      SyncBatchNorm bn("num.bn", opt, &group);
      const auto xl = round_to_float(make_data(77, first, n, C, S, mean, sd));
      Tensor y;
      bn.forward(to_tensor(xl, {n, C, 7, 7}, Layout::kPlanar), y, true);
      const auto gx = round_to_float(make_data(77, 0, total, C, S, mean, sd));
      const std::vector<double> ones(C, 1.0), zeros(C, 0.0);
      const RefResult ref = reference_bn(gx, gx, total, C, S, ones, zeros, zeros, ones, RefConfig{});
      for (std::int64_t c = 0; c < C; ++c) {
        const double rel = std::fabs(bn.batch_var()[c] - ref.var[c]) / ref.var[c];
        if (!(rel <= 1e-6)) {
          ok = false;
          why += "mean " + std::to_string(mean) + " std " + std::to_string(sd) + " channel " + std::to_string(c) +
                 ": relative variance error " + std::to_string(rel) + "\n";
        }
      }
    }
  }
  EXPECT_TRUE(ok) << why;
  EXPECT_TRUE(all_ranks(world(), ok));
}

// Every rank builds the same two layers (C = 8 and C = 16) but rank 1 calls the other one first:
// every rank gets an error naming the layer it ran, well within the collective timeout.
TEST(SyncBnMpi, LayerOrderMismatchIsReportedOnEveryRank) {
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  for (std::int64_t other_c : {8, 16}) {
    auto comm = world().split(0, world().rank(), "test.mismatch");
    comm->set_timeout(20.0);
    SyncGroup group(*comm, parse_sync_mode("sync"));
    BatchNormOptions o1, o2;
    o1.channels = 8;
    o2.channels = other_c;
    SyncBatchNorm first("block1.bn", o1, &group), second("block2.bn", o2, &group);
    const bool odd = world().rank() == 1;
    SyncBatchNorm& bn = odd ? second : first;
    const std::int64_t C = bn.options().channels;
    const Tensor x = to_tensor(make_data(5, 0, 4, C, 9, 0, 1), {4, C, 3, 3}, Layout::kPlanar);
    Tensor y;
    std::string msg;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      bn.forward(x, y, true);
    } catch (const Error& e) {
      msg = e.what();
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const bool ok = msg.find("'" + bn.name() + "'") != std::string::npos &&
                    msg.find("not in the same layer") != std::string::npos && secs < 20.0;
    EXPECT_TRUE(ok) << "C " << other_c << ": message '" << msg << "' after " << secs << " s";
    EXPECT_TRUE(all_ranks(world(), ok));
  }
}

// One rank rejects its input (wrong channel count): it reports the precise cause; its peers, still in
// the collective, get the tag-check error naming the layer - nobody waits for the timeout.
TEST(SyncBnMpi, RejectedInputFailsTheGroupPromptly) {
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto comm = world().split(0, world().rank(), "test.reject");
  comm->set_timeout(20.0);
  SyncGroup group(*comm, parse_sync_mode("sync"));
  BatchNormOptions opt;
  opt.channels = 6;
  SyncBatchNorm bn("stem.bn", opt, &group);
  const bool bad = world().rank() == world().size() - 1;
  const std::int64_t c = bad ? 5 : 6;
  const Tensor x = to_tensor(make_data(5, 0, 2, c, 4, 0, 1), {2, c, 2, 2}, Layout::kPlanar);
  Tensor y;
  std::string msg;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    bn.forward(x, y, true);
  } catch (const Error& e) {
    msg = e.what();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string expect = bad ? "input has 5 channels, the layer expects 6" : "not in the same layer";
  const bool ok = msg.find("'stem.bn'") != std::string::npos && msg.find(expect) != std::string::npos && secs < 10;
  EXPECT_TRUE(ok) << "message '" << msg << "' after " << secs << " s";
  EXPECT_TRUE(all_ranks(world(), ok));
}

}  // namespace
}  // namespace syncbn::test
