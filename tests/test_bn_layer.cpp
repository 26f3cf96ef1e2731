// SyncBatchNorm on one rank against the double-precision reference: every layout, affine on/off, fused
// ReLU, running stats on/off, momentum or cumulative; finite differences; numerics at large offsets;
// the error messages. (Distributed properties: test_syncbn_mpi.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <random>

#include "syncbn/error.h"
#include "syncbn/sync_batchnorm.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

struct Case {
  std::vector<std::int64_t> shape;
  Layout layout;
  bool affine;
  bool relu;
  bool track;
  bool cumulative;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::string s;
  for (auto d : c.shape) s += std::to_string(d) + "x";
  s.pop_back();
  s += c.shape.size() == 4 ? (c.layout == Layout::kChannelsLast ? "_NHWC" : "_NCHW") : "";
  s += c.affine ? "_affine" : "_noaffine";
  s += c.relu ? "_relu" : "";
  s += c.track ? (c.cumulative ? "_cumulative" : "_momentum") : "_norunning";
  return s;
}

std::int64_t spatial_of(const std::vector<std::int64_t>& shape) {
  std::int64_t S = 1;
  for (std::size_t i = 2; i < shape.size(); ++i) S *= shape[i];
  return S;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

class LayerVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(LayerVsReference, TwoTrainingStepsMatch) {
  const Case& p = GetParam();
  const std::int64_t N = p.shape[0], C = p.shape[1], S = spatial_of(p.shape);
  BatchNormOptions opt;
  opt.channels = C;
  opt.affine = p.affine;
  opt.fuse_relu = p.relu;
  opt.track_running_stats = p.track;
  if (p.cumulative) opt.momentum.reset();
  SyncBatchNorm bn("bn", opt, nullptr);
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  std::vector<double> gamma(C, 1.0), beta(C, 0.0), rm(C), rv(C);
  for (std::int64_t c = 0; c < C; ++c) {
    if (p.affine) {
      bn.gamma()[c] = u(gen);
      bn.beta()[c] = u(gen) - 1.0f;
      gamma[c] = bn.gamma()[c];
      beta[c] = bn.beta()[c];
    }
    bn.running_mean()[c] = u(gen) - 1.0f;
    bn.running_var()[c] = u(gen);
  }
  Tensor y, dx;
  // Parameter gradients accumulate (+=) across steps, as in gradient accumulation.
  std::vector<double> dgamma_sum(C, 0.0), dbeta_sum(C, 0.0);
  for (int step = 0; step < 2; ++step) {
    rm = to_double(bn.running_mean());
    rv = to_double(bn.running_var());
    const auto xl = round_to_float(make_data(11 + step, 0, N, C, S, 0.3, 1.7));
    const auto dyl = round_to_float(make_data(23 + step, 0, N, C, S, 0.1, 1.0));
    const Tensor x = to_tensor(xl, p.shape, p.layout), dy = to_tensor(dyl, p.shape, p.layout);
    bn.forward(x, y, true);
    bn.backward(x, dy, dx);
    RefConfig cfg;
    cfg.relu = p.relu;
    cfg.track_running_stats = p.track;
    if (p.cumulative) cfg.momentum.reset();
    cfg.batches_tracked_before = step;
    const RefResult r = reference_bn(xl, dyl, N, C, S, gamma, beta, rm, rv, cfg);
    const std::string at = " (step " + std::to_string(step) + ")";
    EXPECT_TRUE(near(from_tensor(y), r.y, 1e-5, 1e-6, "y" + at));
    EXPECT_TRUE(near(bn.batch_mean(), r.mean, 1e-5, 1e-6, "saved mean" + at));
    std::vector<double> invstd(C);
    for (std::int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(bn.batch_var()[c] + opt.eps);
    EXPECT_TRUE(near(invstd, r.invstd, 1e-5, 0, "saved invstd" + at));
    EXPECT_TRUE(near(to_double(bn.running_mean()), r.running_mean, 1e-5, 1e-6, "running mean" + at));
    EXPECT_TRUE(near(to_double(bn.running_var()), r.running_var, 1e-5, 1e-6, "running var" + at));
    EXPECT_TRUE(near(from_tensor(dx), r.dx, 1e-5, 1e-6, "dx" + at));
    for (std::int64_t c = 0; c < C; ++c) {
      dgamma_sum[c] += r.dgamma[c];
      dbeta_sum[c] += r.dbeta[c];
    }
    if (p.affine) {
      EXPECT_TRUE(near(to_double(bn.dgamma()), dgamma_sum, 1e-5, 1e-6, "accumulated dgamma" + at));
      EXPECT_TRUE(near(to_double(bn.dbeta()), dbeta_sum, 1e-5, 1e-6, "accumulated dbeta" + at));
    } else {
      EXPECT_EQ(bn.dgamma(), std::vector<float>(C, 0.0f)) << "affine off: no parameter gradients";
    }
  }
  EXPECT_EQ(bn.num_batches_tracked(), p.track ? 2 : 0);
}

std::vector<Case> all_cases() {
  std::vector<Case> out;
  const std::vector<std::pair<std::vector<std::int64_t>, Layout>> shapes = {
      {{13, 21}, Layout::kPlanar},             // NC: rows of 21 channels (vector body + scalar tail)
      {{4, 19, 33}, Layout::kPlanar},          // NCL
      {{5, 21, 7, 9}, Layout::kPlanar},        // NCHW, planes of 63 (4W body, W step, tail)
      {{5, 21, 7, 9}, Layout::kChannelsLast},  // NHWC, 35 rows (4-row blocks + tail rows)
      {{2, 64, 5, 5}, Layout::kChannelsLast},  // NHWC, C a multiple of the vector width
  };
  for (const auto& [shape, layout] : shapes)
    for (bool affine : {true, false})
      for (bool relu : {false, true}) out.push_back({shape, layout, affine, relu, true, false});
  for (const auto& [shape, layout] : shapes) {
    out.push_back({shape, layout, true, false, false, false});  // no running stats
    out.push_back({shape, layout, true, false, true, true});    // cumulative average
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Layouts, LayerVsReference, ::testing::ValuesIn(all_cases()), case_name);

// Large tensors: non-temporal stores, and (local statistics) several L2-sized channel blocks in forward
// and backward (1.6 MB: blocks of 16-20 channels forward, 10-16 backward); same numbers.
TEST(LayerVsReferenceLarge, StreamingStoresAndChannelBlocksMatch) {
  for (Layout layout : {Layout::kPlanar, Layout::kChannelsLast}) {
    for (bool relu : {false, true}) {
      const std::vector<std::int64_t> shape = {8, 32, 40, 40};
      BatchNormOptions opt;
      opt.channels = 32;
      opt.fuse_relu = relu;
      opt.stream_threshold_bytes = 1024;  // force streaming
      SyncBatchNorm bn("bn", opt, nullptr);
      for (int c = 0; c < 32; ++c) {
        bn.gamma()[c] = 0.5f + 0.05f * static_cast<float>(c);
        bn.beta()[c] = 0.1f * static_cast<float>(c % 5) - 0.2f;
      }
      const auto xl = round_to_float(make_data(3, 0, 8, 32, 1600, -0.5, 2.0));
      const auto dyl = round_to_float(make_data(4, 0, 8, 32, 1600, 0.0, 1.0));
      const Tensor x = to_tensor(xl, shape, layout), dy = to_tensor(dyl, shape, layout);
      Tensor y, dx;
      bn.forward(x, y, true);
      bn.backward(x, dy, dx);
      std::vector<double> gamma(32), beta(32);
      for (int c = 0; c < 32; ++c) gamma[c] = bn.gamma()[c], beta[c] = bn.beta()[c];
      const std::vector<double> ones(32, 1.0), zeros(32, 0.0);
      RefConfig cfg;
      cfg.relu = relu;
      const RefResult r = reference_bn(xl, dyl, 8, 32, 1600, gamma, beta, zeros, ones, cfg);
      const std::string at = std::string(layout == Layout::kPlanar ? " NCHW" : " NHWC") + (relu ? " relu" : "");
      EXPECT_TRUE(near(from_tensor(y), r.y, 1e-5, 1e-6, "y" + at));
      EXPECT_TRUE(near(from_tensor(dx), r.dx, 1e-5, 1e-6, "dx" + at));
      EXPECT_TRUE(near(to_double(bn.running_var()), r.running_var, 1e-5, 1e-6, "running var" + at));
      EXPECT_TRUE(near(to_double(bn.dgamma()), r.dgamma, 1e-5, 1e-6, "dgamma" + at));
    }
  }
}

// Finite differences through the fp32 layer: L = Σ w·BN(x), so dL/dx = backward(dy = w).
TEST(LayerGradient, FiniteDifferencesAgreeWithBackward) {
  const std::vector<std::int64_t> shape = {3, 4, 3, 3};
  const std::int64_t N = 3, C = 4, S = 9;
  for (Layout layout : {Layout::kPlanar, Layout::kChannelsLast}) {
    BatchNormOptions opt;
    opt.channels = C;
    SyncBatchNorm bn("fd", opt, nullptr);
    for (std::int64_t c = 0; c < C; ++c) {
      bn.gamma()[c] = 0.5f + 0.3f * static_cast<float>(c);
      bn.beta()[c] = 0.1f * static_cast<float>(c);
    }
    const auto xl = round_to_float(make_data(5, 0, N, C, S, 0.2, 1.0));
    const auto wl = round_to_float(make_data(6, 0, N, C, S, 0.0, 1.0));
    Tensor x = to_tensor(xl, shape, layout);
    const Tensor w = to_tensor(wl, shape, layout);
    Tensor y, dx;
    auto loss = [&]() {
      Tensor yy;
      bn.forward(x, yy, true);
      double L = 0;
      for (std::int64_t i = 0; i < yy.numel(); ++i) L += static_cast<double>(w[i]) * yy[i];
      return L;
    };
    bn.forward(x, y, true);
    bn.backward(x, w, dx);
    const std::vector<float> dgamma = bn.dgamma(), dbeta = bn.dbeta();
    const float h = 1e-2f;
    double max_err = 0, max_grad = 0;
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const float keep = x[i];
      x[i] = keep + h;
      const double lp = loss();
      x[i] = keep - h;
      const double lm = loss();
      x[i] = keep;
      const double fd = (lp - lm) / (2.0 * static_cast<double>(h));
      max_err = std::max(max_err, std::fabs(fd - dx[i]));
      max_grad = std::max(max_grad, std::fabs(static_cast<double>(dx[i])));
    }
    EXPECT_LT(max_err, 2e-3 * max_grad + 1e-4) << "dx vs finite differences, max |dx| " << max_grad;
    for (std::int64_t c = 0; c < C; ++c) {
      for (int which = 0; which < 2; ++which) {
        float& p = which == 0 ? bn.gamma()[c] : bn.beta()[c];
        const float keep = p;
        p = keep + h;
        const double lp = loss();
        p = keep - h;
        const double lm = loss();
        p = keep;
        const double fd = (lp - lm) / (2.0 * static_cast<double>(h));
        const double an = which == 0 ? dgamma[c] : dbeta[c];
        EXPECT_NEAR(fd, an, 2e-3 * std::max(1.0, std::fabs(an))) << (which ? "dbeta" : "dgamma") << "[" << c << "]";
      }
    }
  }
}

// The reference's own backward against finite differences in double (so the oracle is checked too).
TEST(ReferenceGradient, FiniteDifferencesInDouble) {
  const std::int64_t N = 2, C = 3, S = 5;
  const auto x = make_data(8, 0, N, C, S, 0.5, 1.5);
  const auto w = make_data(9, 0, N, C, S, 0.0, 1.0);
  const std::vector<double> gamma = {0.7, 1.3, 0.9}, beta = {0.1, -0.2, 0.3}, rm(C, 0.0), rv(C, 1.0);
  for (bool relu : {false, true}) {
    RefConfig cfg;
    cfg.relu = relu;
    const RefResult r = reference_bn(x, w, N, C, S, gamma, beta, rm, rv, cfg);
    auto loss = [&](const std::vector<double>& xx) {
      const RefResult q = reference_bn(xx, w, N, C, S, gamma, beta, rm, rv, cfg);
      double L = 0;
      for (std::size_t i = 0; i < xx.size(); ++i) L += w[i] * q.y[i];
      return L;
    };
    const double h = 1e-6;
    for (std::size_t i = 0; i < x.size(); ++i) {
      auto xp = x, xm = x;
      xp[i] += h;
      xm[i] -= h;
      EXPECT_NEAR((loss(xp) - loss(xm)) / (2 * h), r.dx[i], 1e-6) << "element " << i << " relu " << relu;
    }
  }
}

// Global variance accuracy when |mean| ≫ std and when the variance is far below eps.
TEST(Numerics, VarianceAtLargeOffsetsAndTinyVariance) {
  struct Data {
    double mean, std;
  };
  for (Layout layout : {Layout::kPlanar, Layout::kChannelsLast}) {
    for (Data d : {Data{1e3, 1.0}, Data{1e4, 1.0}, Data{-2e4, 2.0}, Data{1e-3, 1e-7}, Data{0.5, 5e-5}}) {
      const std::vector<std::int64_t> shape = {16, 8, 14, 14};
      const std::int64_t C = 8, S = 196;
      BatchNormOptions opt;
      opt.channels = C;
      SyncBatchNorm bn("num", opt, nullptr);
      const auto xl = round_to_float(make_data(31, 0, 16, C, S, d.mean, d.std));
      const auto dyl = round_to_float(make_data(32, 0, 16, C, S, 0.0, 1.0));
      const Tensor x = to_tensor(xl, shape, layout);
      Tensor y, dx;
      bn.forward(x, y, true);
      bn.backward(x, to_tensor(dyl, shape, layout), dx);
      const std::vector<double> ones(C, 1.0), zeros(C, 0.0);
      const RefResult r = reference_bn(xl, dyl, 16, C, S, ones, zeros, zeros, ones, RefConfig{});
      for (std::int64_t c = 0; c < C; ++c) {
        const double rel = std::fabs(bn.batch_var()[c] - r.var[c]) / r.var[c];
        EXPECT_LE(rel, 1e-6) << "mean " << d.mean << " std " << d.std << " channel " << c << ": var "
                             << bn.batch_var()[c] << " ref " << r.var[c];
      }
      // y and dx stay accurate too: x − float(mean) is exact there and the rest of the mean (lo) is
      // carried in double into the coefficients.
      EXPECT_TRUE(near(from_tensor(y), r.y, 1e-5, 1e-6, "y at mean " + std::to_string(d.mean)));
      EXPECT_TRUE(near(from_tensor(dx), r.dx, 1e-5, 1e-6, "dx at mean " + std::to_string(d.mean)));
    }
  }
}

// Ghost batches: statistics per consecutive sub-batch, exactly as separate BN calls on the chunks.
TEST(GhostBatch, ChunksAreNormalizedSeparately) {
  const std::int64_t N = 10, C = 6, S = 4, g = 4;  // chunks of 4, 4, 2
  BatchNormOptions opt;
  opt.channels = C;
  opt.ghost_batch = g;
  SyncBatchNorm bn("ghost", opt, nullptr);
  const auto xl = round_to_float(make_data(41, 0, N, C, S, 1.0, 2.0));
  const auto dyl = round_to_float(make_data(42, 0, N, C, S, 0.0, 1.0));
  const std::vector<std::int64_t> shape = {N, C, 2, 2};
  Tensor y, dx;
  bn.forward(to_tensor(xl, shape, Layout::kPlanar), y, true);
  bn.backward(to_tensor(xl, shape, Layout::kPlanar), to_tensor(dyl, shape, Layout::kPlanar), dx);
  const auto yl = from_tensor(y), dxl = from_tensor(dx);
  std::vector<double> rm(C, 0.0), rv(C, 1.0);
  const std::vector<double> ones(C, 1.0), zeros(C, 0.0);
  for (std::int64_t s0 = 0, k = 0; s0 < N; s0 += g, ++k) {
    const std::int64_t n = std::min(g, N - s0);
    const auto b = static_cast<std::ptrdiff_t>(s0 * C * S), e = static_cast<std::ptrdiff_t>((s0 + n) * C * S);
    const std::vector<double> xc(xl.begin() + b, xl.begin() + e), dyc(dyl.begin() + b, dyl.begin() + e);
    const RefResult r = reference_bn(xc, dyc, n, C, S, ones, zeros, rm, rv, RefConfig{});
    EXPECT_TRUE(near({yl.begin() + b, yl.begin() + e}, r.y, 1e-5, 1e-6, "y chunk " + std::to_string(k)));
    EXPECT_TRUE(near({dxl.begin() + b, dxl.begin() + e}, r.dx, 1e-5, 1e-6, "dx chunk " + std::to_string(k)));
    rm = r.running_mean;
    rv = r.running_var;
  }
  EXPECT_TRUE(near(to_double(bn.running_mean()), rm, 1e-5, 1e-6, "running mean after 3 chunks"));
  EXPECT_EQ(bn.num_batches_tracked(), 3);
}

// Eval: running statistics, constants in backward.
TEST(EvalMode, UsesRunningStatistics) {
  const std::int64_t N = 3, C = 5, S = 6;
  BatchNormOptions opt;
  opt.channels = C;
  SyncBatchNorm bn("eval", opt, nullptr);
  for (std::int64_t c = 0; c < C; ++c) {
    bn.running_mean()[c] = 0.1f * static_cast<float>(c);
    bn.running_var()[c] = 1.0f + 0.5f * static_cast<float>(c);
    bn.gamma()[c] = 2.0f;
    bn.beta()[c] = -1.0f;
  }
  const auto xl = round_to_float(make_data(51, 0, N, C, S, 0.0, 1.0));
  const std::vector<std::int64_t> shape = {N, C, 2, 3};
  const Tensor x = to_tensor(xl, shape, Layout::kPlanar);
  Tensor y, dx;
  bn.forward(x, y, false);
  Tensor dy = x;  // any gradient
  bn.backward(x, dy, dx);
  const auto yl = from_tensor(y), dxl = from_tensor(dx);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t s = 0; s < S; ++s) {
        const std::size_t i = static_cast<std::size_t>((n * C + c) * S + s);
        const double invstd = 1.0 / std::sqrt(static_cast<double>(bn.running_var()[c]) + 1e-5);
        EXPECT_NEAR(yl[i], 2.0 * (xl[i] - bn.running_mean()[c]) * invstd - 1.0, 1e-5);
        EXPECT_NEAR(dxl[i], 2.0 * invstd * xl[i], 1e-5);
      }
  EXPECT_EQ(bn.num_batches_tracked(), 0);
}

// ---- empty batches with local statistics: PyTorch's behaviour ------------------------------------

// PyTorch 1.13, BatchNorm{1,2}d in training mode on an input with no values per channel ((0, C), (0, C, L),
// (0, C, H, W), or (N, C, 0, W)): returns an empty tensor of the input's shape, leaves running_mean and
// running_var untouched, and still increments num_batches_tracked (so with momentum=None the next batch's
// factor is 1/(k+1) counting the empty one); backward gives an empty dx and zero dγ/dβ. Eval mode and
// track_running_stats=False do not count.
TEST(EmptyBatch, LocalStatisticsGiveEmptyOutputAndCountTheBatch) {
  const std::vector<std::pair<std::vector<std::int64_t>, Layout>> inputs = {
      {{0, 3, 4, 4}, Layout::kPlanar}, {{0, 3, 4, 4}, Layout::kChannelsLast}, {{0, 3}, Layout::kPlanar},
      {{0, 3, 5}, Layout::kPlanar},    {{2, 3, 0, 4}, Layout::kPlanar},       {{2, 3, 0, 4}, Layout::kChannelsLast}};
  for (const auto& [shape, layout] : inputs) {
    for (std::int64_t ghost : {0, 2}) {
      const std::string what = describe(shape, layout) + " ghost " + std::to_string(ghost);
      BatchNormOptions opt;
      opt.channels = 3;
      opt.fuse_relu = true;
      opt.ghost_batch = ghost;
      SyncBatchNorm bn("conv1.bn", opt, nullptr);
      std::fill(bn.running_mean().begin(), bn.running_mean().end(), 0.5f);
      std::fill(bn.running_var().begin(), bn.running_var().end(), 2.0f);
      Tensor x(shape, layout), y, dx;
      ASSERT_NO_THROW(bn.forward(x, y, true)) << what;
      EXPECT_EQ(y.shape(), shape) << what;
      EXPECT_EQ(y.layout(), layout) << what;
      EXPECT_EQ(bn.running_mean(), std::vector<float>(3, 0.5f)) << what;
      EXPECT_EQ(bn.running_var(), std::vector<float>(3, 2.0f)) << what;
      EXPECT_EQ(bn.num_batches_tracked(), 1) << what;
      EXPECT_EQ(bn.last_group_count(), 0.0) << what;
      ASSERT_NO_THROW(bn.backward(x, Tensor(shape, layout), dx)) << what;
      EXPECT_EQ(dx.shape(), shape) << what;
      EXPECT_EQ(bn.dgamma(), std::vector<float>(3, 0.0f)) << what;
      EXPECT_EQ(bn.dbeta(), std::vector<float>(3, 0.0f)) << what;
      EXPECT_EQ(bn.dgamma64(), std::vector<double>(3, 0.0)) << what;
      bn.forward(x, y, false);  // eval: empty too, not counted
      EXPECT_EQ(bn.num_batches_tracked(), 1) << what;
    }
  }
  // momentum=None: the empty batch counts in the cumulative average. PyTorch: running_mean 0.5 and
  // running_var 2 → empty batch → a batch of ones (mean 1, var 0) gives 0.75 and 1, num_batches_tracked 2.
  BatchNormOptions opt;
  opt.channels = 3;
  opt.momentum = std::nullopt;
  SyncBatchNorm cumulative("fc1.bn", opt, nullptr);
  std::fill(cumulative.running_mean().begin(), cumulative.running_mean().end(), 0.5f);
  std::fill(cumulative.running_var().begin(), cumulative.running_var().end(), 2.0f);
  Tensor y, ones({4, 3, 4, 4});
  ASSERT_NO_THROW(cumulative.forward(Tensor({0, 3, 4, 4}), y, true));
  for (std::int64_t i = 0; i < ones.numel(); ++i) ones[i] = 1.0f;
  cumulative.forward(ones, y, true);
  EXPECT_EQ(cumulative.running_mean(), std::vector<float>(3, 0.75f));
  EXPECT_EQ(cumulative.running_var(), std::vector<float>(3, 1.0f));
  EXPECT_EQ(cumulative.num_batches_tracked(), 2);
  // No running statistics: empty out, nothing counted.
  opt.momentum = 0.1;
  opt.track_running_stats = false;
  SyncBatchNorm untracked("fc2.bn", opt, nullptr);
  ASSERT_NO_THROW(untracked.forward(Tensor({0, 3}), y, true));
  EXPECT_EQ(y.shape(), (std::vector<std::int64_t>{0, 3}));
  EXPECT_EQ(untracked.num_batches_tracked(), 0);
  // One value per channel stays an error, as in PyTorch.
  EXPECT_THROW(untracked.forward(Tensor({1, 3}), y, true), Error);
}

// ---- errors: each names the problem and the layer ------------------------------------------------

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown; expected one containing '" << parts.front() << "'";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message: " << e.what();
  }
}

TEST(LayerErrors, ClearMessages) {
  BatchNormOptions opt;
  opt.channels = 4;
  SyncBatchNorm bn("conv1.bn", opt, nullptr);
  Tensor y, dx;
  expect_error([&] { bn.forward(Tensor({2, 3, 4, 4}), y, true); },
               {"conv1.bn", "input has 3 channels, the layer expects 4"});
  expect_error([&] { bn.forward(Tensor({8}), y, true); }, {"conv1.bn", "unsupported input rank 1"});
  expect_error([&] { bn.forward(Tensor({2, 4, 2, 2, 2}), y, true); }, {"conv1.bn", "unsupported input rank 5"});
  expect_error([&] { bn.forward(Tensor({2, 4, 3}, Layout::kChannelsLast), y, true); },
               {"conv1.bn", "channels-last layout needs a rank-4 tensor"});
  expect_error([&] { bn.forward(Tensor({1, 4}), y, true); },
               {"conv1.bn", "expected more than 1 value per channel when training"});
  expect_error([&] { bn.forward(Tensor({1, 4, 1, 1}), y, true); }, {"conv1.bn", "more than 1 value per channel"});
  bn.forward(Tensor({2, 4, 1, 1}), y, false);  // eval with one value per channel is fine
  SyncBatchNorm fresh("head.bn", opt, nullptr);
  expect_error([&] { fresh.backward(Tensor({2, 4}), Tensor({2, 4}), dx); }, {"head.bn", "called before any forward"});
  fresh.forward(Tensor({2, 4}), y, true);
  expect_error([&] { fresh.backward(Tensor({2, 4}), Tensor({3, 4}), dx); }, {"head.bn", "does not match the input"});
}

TEST(LayerErrors, BadOptionsAndModes) {
  BatchNormOptions opt;
  opt.channels = 0;
  expect_error([&] { SyncBatchNorm("x.bn", opt, nullptr); }, {"x.bn", "channels must be positive"});
  opt.channels = 3;
  opt.momentum = 1.5;
  expect_error([&] { SyncBatchNorm("x.bn", opt, nullptr); }, {"x.bn", "momentum"});
  expect_error([] { parse_sync_mode("synced"); }, {"unknown sync mode 'synced'"});
  expect_error([] { parse_sync_mode("sync:0"); }, {"sync:0", "positive integer"});
  expect_error([] { parse_sync_mode("sync:two"); }, {"sync:two", "positive integer"});
  expect_error([] { parse_sync_mode("sync:"); }, {"positive integer"});
  EXPECT_EQ(parse_sync_mode("local").kind, SyncMode::kLocal);
  EXPECT_EQ(parse_sync_mode("sync").kind, SyncMode::kSync);
  EXPECT_EQ(parse_sync_mode("sync:4").group_size, 4);
  EXPECT_EQ(parse_sync_mode("sync:4").str(), "sync:4");
}

}  // namespace
}  // namespace syncbn::test
