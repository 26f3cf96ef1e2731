// Every trainer layer: forward against a naive double-precision reference (where the layer computes
// something non-trivial), and backward (input and parameter gradients) against central finite
// differences of L = Σ w·y. Layers with ReLUs have kinks; a probe whose forward and backward one-sided
// differences disagree straddles one and is skipped (at most 5% of the probes may be).
// A fused norm+ReLU couples a whole channel through the batch statistics, so one parameter moves many
// pre-activations at once and a finite difference straddles kinks too often to be a sharp test: those
// modules are checked for exact agreement with norm-then-ReLU, whose parts are finite-difference checked.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <functional>
#include <random>

#include "syncbn/error.h"
#include "syncbn/model.h"
#include "syncbn/nn.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

void fill(Tensor& t, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, scale);
  for (std::int64_t i = 0; i < t.numel(); ++i) t[i] = d(gen);
}

double weighted_sum(const Tensor& y, const Tensor& w) {
  double s = 0;
  for (std::int64_t i = 0; i < y.numel(); ++i) s += static_cast<double>(y[i]) * w[i];
  return s;
}

struct FdResult {
  int probes = 0, skipped = 0, failed = 0;
  std::string first_failure;
};

// Compares analytic gradients with finite differences for up to `max_probes` entries of `v` (the input
// or a parameter array). loss() recomputes L; analytic[i] is dL/dv[i].
void fd_check(float* v, std::int64_t n, const std::vector<float>& analytic, const std::function<double()>& loss,
              const std::string& what, FdResult& r, int max_probes = 40, float h = 2e-3f) {
  double scale = 1e-3;
  for (float a : analytic) scale = std::max(scale, static_cast<double>(std::fabs(a)));
  const std::int64_t stride = std::max<std::int64_t>(1, n / max_probes);
  for (std::int64_t i = 0; i < n; i += stride) {
    const float keep = v[i];
    const double l0 = loss();
    v[i] = keep + h;
    const double lp = loss();
    v[i] = keep - h;
    const double lm = loss();
    v[i] = keep;
    ++r.probes;
    const double tol = 1e-2 * scale + 2e-3;
    // One-sided differences agree to O(h·curvature) on smooth ground; a kink inside [x − h, x + h]
    // separates them by the jump in slope (a symmetric difference would just average the two slopes).
    if (std::fabs((lp - l0) / h - (l0 - lm) / h) > tol) {
      ++r.skipped;
      continue;
    }
    const double fd = (lp - lm) / (2.0 * h);
    if (std::fabs(fd - analytic[static_cast<std::size_t>(i)]) > tol) {
      if (!r.failed)
        r.first_failure = what + "[" + std::to_string(i) + "]: analytic " + std::to_string(analytic[i]) +
                          ", finite difference " + std::to_string(fd);
      ++r.failed;
    }
  }
}

// Full check of a module: dL/dx and dL/dparams.
// Composite checks (blocks, whole networks) pass `composite`: BatchNorm parameters and biases are skipped
// there (each of their elements moves every ReLU input of a channel at once, so a finite difference
// nearly always straddles kinks; they are verified at module level), and up to 30% of the probes may be
// kink crossings.
void check_module(Module& m, ParamStore& store, Tensor x, bool check_dx, const std::string& name, float h = 2e-3f,
                  bool composite = false) {
  Tensor y;
  m.forward(x, y, true);
  Tensor w(y.shape(), y.layout());
  fill(w, 99);
  store.zero_grads();
  Tensor dx;
  m.backward(x, y, w, check_dx ? &dx : nullptr);
  const std::vector<float> grads = store.grads();
  auto loss = [&] {
    Tensor yy;
    m.forward(x, yy, true);
    return weighted_sum(yy, w);
  };
  FdResult r;
  if (check_dx) {
    std::vector<float> adx(dx.data(), dx.data() + dx.numel());
    fd_check(x.data(), x.numel(), adx, loss, name + " dx", r, 40, h);
  }
  for (const auto& p : store.all()) {
    if (composite && (p.name.find(".bn") != std::string::npos || p.name.find(".bias") != std::string::npos)) continue;
    std::vector<float> ag(grads.begin() + p.offset, grads.begin() + p.offset + p.size);
    fd_check(store.values().data() + p.offset, p.size, ag, loss, name + " " + p.name, r, 20, h);
  }
  EXPECT_EQ(r.failed, 0) << name << ": " << r.failed << " of " << r.probes << " probes wrong; first: " << r.first_failure;
  const int budget = composite ? r.probes * 3 / 10 : r.probes / 20 + 1;
  EXPECT_LE(r.skipped, budget) << name << ": too many kink crossings (" << r.skipped << " of " << r.probes << ")";
  EXPECT_GE(r.probes - r.skipped, composite ? 40 : 1) << name << ": too few verified probes";
}

std::vector<double> to_logical(const Tensor& t) { return from_tensor(t); }

// ---- forward references ---------------------------------------------------------------------------

// Direct convolution in double over logical (N, C, H, W) with weights OIHW.
std::vector<double> conv_ref(const std::vector<double>& x, const float* w, const float* b, std::int64_t N,
                             std::int64_t C, std::int64_t H, std::int64_t W, const ConvSpec& s, std::int64_t& Ho,
                             std::int64_t& Wo) {
  Ho = (H + 2 * s.pad - s.kernel) / s.stride + 1;
  Wo = (W + 2 * s.pad - s.kernel) / s.stride + 1;
  std::vector<double> y(static_cast<std::size_t>(N * s.out * Ho * Wo), 0.0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < s.out; ++o)
      for (std::int64_t i = 0; i < Ho; ++i)
        for (std::int64_t j = 0; j < Wo; ++j) {
          double acc = b ? b[o] : 0.0;
          for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t ki = 0; ki < s.kernel; ++ki)
              for (std::int64_t kj = 0; kj < s.kernel; ++kj) {
                const std::int64_t hi = i * s.stride + ki - s.pad, wj = j * s.stride + kj - s.pad;
                if (hi < 0 || hi >= H || wj < 0 || wj >= W) continue;
                acc += x[static_cast<std::size_t>(((n * C + c) * H + hi) * W + wj)] *
                       w[((o * C + c) * s.kernel + ki) * s.kernel + kj];
              }
          y[static_cast<std::size_t>(((n * s.out + o) * Ho + i) * Wo + j)] = acc;
        }
  return y;
}

struct ConvCase {
  ConvSpec spec;
  std::int64_t N, H, W;
  Layout in_layout;
};

TEST(Conv2d, ForwardMatchesDirectConvolutionAndGradientsMatchFiniteDifferences) {
  const ConvCase cases[] = {
      // oneDNN path (8+ input channels)
      {{8, 5, 3, 1, 1, true}, 2, 5, 6, Layout::kChannelsLast},    // 3x3 same, bias
      {{16, 8, 3, 2, 1, false}, 2, 7, 7, Layout::kChannelsLast},  // stride 2
      {{8, 16, 1, 2, 0, false}, 3, 6, 6, Layout::kChannelsLast},  // 1x1 projection shortcut
      // im2col + sgemm path (fewer than 8 input channels)
      {{3, 5, 3, 1, 1, true}, 2, 5, 6, Layout::kChannelsLast},    // 3x3 same, bias
      {{4, 6, 3, 2, 1, false}, 2, 7, 7, Layout::kChannelsLast},   // stride 2
      {{4, 6, 1, 2, 0, false}, 2, 6, 6, Layout::kChannelsLast},   // 1x1 projection shortcut
      {{1, 8, 3, 1, 1, false}, 3, 8, 8, Layout::kPlanar},         // network input, 1 channel
      {{3, 16, 3, 1, 1, false}, 2, 8, 8, Layout::kPlanar},        // network input, 3 channels (NCHW)
  };
  CpuContext ctx;
  for (const ConvCase& c : cases) {
    ParamStore store;
    auto conv = make_conv2d("conv", c.spec, store, ctx);
    store.finalize();
    store.init_params(7);
    if (c.spec.bias) std::fill_n(store.values().data() + store.info(1).offset, c.spec.out, 0.25f);
    Tensor x({c.N, c.spec.in, c.H, c.W}, c.in_layout);
    fill(x, 3);
    Tensor y;
    conv->forward(x, y, true);
    std::int64_t Ho = 0, Wo = 0;
    const auto ref = conv_ref(to_logical(x), store.value(0), c.spec.bias ? store.value(1) : nullptr, c.N, c.spec.in,
                              c.H, c.W, c.spec, Ho, Wo);
    ASSERT_EQ(y.shape(), (std::vector<std::int64_t>{c.N, c.spec.out, Ho, Wo}));
    EXPECT_EQ(y.layout(), Layout::kChannelsLast);
    EXPECT_TRUE(near(to_logical(y), ref, 1e-5, 1e-5, "conv forward " + conv->describe()));
    check_module(*conv, store, x, c.in_layout == Layout::kChannelsLast, "conv " + conv->describe());
  }
}

TEST(Linear, ForwardAndGradients) {
  ParamStore store;
  auto fc = make_linear("fc", 12, 5, true, false, store);
  store.finalize();
  store.init_params(3);
  std::fill_n(store.values().data() + store.info(1).offset, 5, 0.5f);
  Tensor x({4, 3, 2, 2}, Layout::kChannelsLast);  // flattened to 12 features per sample
  fill(x, 4);
  Tensor y;
  fc->forward(x, y, true);
  ASSERT_EQ(y.shape(), (std::vector<std::int64_t>{4, 5}));
  for (std::int64_t n = 0; n < 4; ++n)
    for (std::int64_t o = 0; o < 5; ++o) {
      double acc = 0.5;
      for (std::int64_t i = 0; i < 12; ++i) acc += static_cast<double>(x[n * 12 + i]) * store.value(0)[o * 12 + i];
      EXPECT_NEAR(y[n * 5 + o], acc, 1e-5);
    }
  check_module(*fc, store, x, true, "linear");
}

TEST(Pooling, MaxPoolAndGlobalAverage) {
  // Distinct, well separated values: no ties, no kinks within the finite-difference step.
  Tensor x({2, 3, 5, 4}, Layout::kChannelsLast);
  std::vector<int> perm(static_cast<std::size_t>(x.numel()));
  for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int>(i);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(5));
  for (std::int64_t i = 0; i < x.numel(); ++i) x[i] = 0.1f * static_cast<float>(perm[static_cast<std::size_t>(i)]);
  ParamStore none;
  none.finalize();
  auto mp = make_maxpool(2);
  Tensor y;
  mp->forward(x, y, true);
  ASSERT_EQ(y.shape(), (std::vector<std::int64_t>{2, 3, 2, 2}));  // 5x4 → 2x2 (floor)
  const auto xl = to_logical(x), yl = to_logical(y);
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < 3; ++c)
      for (std::int64_t i = 0; i < 2; ++i)
        for (std::int64_t j = 0; j < 2; ++j) {
          double m = -1e30;
          for (int a = 0; a < 2; ++a)
            for (int b = 0; b < 2; ++b) m = std::max(m, xl[static_cast<std::size_t>(((n * 3 + c) * 5 + 2 * i + a) * 4 + 2 * j + b)]);
          EXPECT_EQ(yl[static_cast<std::size_t>(((n * 3 + c) * 2 + i) * 2 + j)], m);
        }
  check_module(*mp, none, x, true, "maxpool");
  auto gap = make_global_avgpool();
  gap->forward(x, y, true);
  ASSERT_EQ(y.shape(), (std::vector<std::int64_t>{2, 3}));
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < 3; ++c) {
      double s = 0;
      for (std::int64_t k = 0; k < 20; ++k) s += xl[static_cast<std::size_t>((n * 3 + c) * 20 + k)];
      EXPECT_NEAR(y[n * 3 + c], s / 20, 1e-5);
    }
  check_module(*gap, none, x, true, "global-avgpool");
  auto flat = make_flatten();
  check_module(*flat, none, x, true, "flatten");
  Tensor r({3, 7});
  fill(r, 8);
  for (std::int64_t i = 0; i < r.numel(); ++i) r[i] += r[i] > 0 ? 0.1f : -0.1f;  // away from the kink
  auto relu = make_relu();
  check_module(*relu, none, r, true, "relu");
}

TEST(Norms, GradientsOfEveryNormalization) {
  for (const std::string kind : {"local", "sync", "groupnorm", "none"}) {
    for (bool nhwc : {true, false}) {
      ParamStore store;
      SyncGroup group(world(), parse_sync_mode("sync"));
      NormSpec spec = parse_norm(kind);
      spec.gn_groups = 3;
      auto norm = make_norm("n", 6, spec, false, store, &group);
      store.finalize();
      store.init_params(1);
      Tensor x = nhwc ? Tensor({3, 6, 3, 2}, Layout::kChannelsLast) : Tensor({5, 6});
      fill(x, 11, 2.0f);
      if (kind == "sync" && world().size() > 1) continue;  // single-rank check; MPI suites cover sync
      check_module(*norm, store, x, true, kind + (nhwc ? " NHWC" : " NC"));
    }
  }
}

// GroupNorm forward against a plain double computation: per sample and group of C/G channels, over H·W.
TEST(Norms, GroupNormForwardMatchesReference) {
  for (auto [N, C, G, H, W] : {std::tuple<int, int, int, int, int>{3, 12, 3, 4, 5}, {2, 8, 8, 3, 3}, {4, 6, 1, 1, 1}}) {
    NormSpec spec = parse_norm("groupnorm");
    spec.gn_groups = G;
    ParamStore store;
    auto gn = make_norm("gn", C, spec, false, store);
    store.finalize();
    store.init_params(3);
    for (int c = 0; c < C; ++c) {
      store.value(0)[c] = 0.5f + 0.1f * static_cast<float>(c);   // gamma
      store.value(1)[c] = -0.2f + 0.05f * static_cast<float>(c);  // beta
    }
    Tensor x = H * W > 1 ? Tensor({N, C, H, W}, Layout::kChannelsLast) : Tensor({N, C});
    fill(x, 17, 3.0f);
    for (std::int64_t i = 0; i < x.numel(); ++i) x[i] += 10.0f;  // an offset: exercises the shifted sums
    Tensor y;
    gn->forward(x, y, true);
    const auto xl = to_logical(x), yl = to_logical(y);
    std::vector<double> ref(xl.size());
    const int S = H * W, Cg = C / G;
    for (int n = 0; n < N; ++n)
      for (int g = 0; g < G; ++g) {
        long double sum = 0, ss = 0;
        for (int c = g * Cg; c < (g + 1) * Cg; ++c)
          for (int p = 0; p < S; ++p) sum += xl[static_cast<std::size_t>((n * C + c) * S + p)];
        const long double mean = sum / (S * Cg);
        for (int c = g * Cg; c < (g + 1) * Cg; ++c)
          for (int p = 0; p < S; ++p) {
            const long double d = xl[static_cast<std::size_t>((n * C + c) * S + p)] - mean;
            ss += d * d;
          }
        const long double invstd = 1.0L / std::sqrt(ss / (S * Cg) + 1e-5L);
        for (int c = g * Cg; c < (g + 1) * Cg; ++c)
          for (int p = 0; p < S; ++p) {
            const std::size_t i = static_cast<std::size_t>((n * C + c) * S + p);
            ref[i] = static_cast<double>((xl[i] - mean) * invstd * store.value(0)[c] + store.value(1)[c]);
          }
      }
    EXPECT_TRUE(near(yl, ref, 1e-5, 1e-6, "groupnorm y, G=" + std::to_string(G)));
  }
}

// Fused ReLU (BatchNorm's normalize pass, GroupNorm's) equals the norm followed by ReLU, forward and
// backward, bit for bit up to rounding.
TEST(Norms, FusedReluEqualsSeparateRelu) {
  for (const std::string kind : {"local", "groupnorm"}) {
    for (std::int64_t C : {4, 16}) {
      NormSpec spec = parse_norm(kind);
      spec.gn_groups = 2;
      ParamStore s1, s2;
      auto fused = make_norm("n", C, spec, true, s1);
      auto plain = make_norm("n", C, spec, false, s2);
      s1.finalize();
      s2.finalize();
      s1.init_params(2);
      s2.init_params(2);
      auto relu = make_relu();
      Tensor x({3, C, 3, 3}, Layout::kChannelsLast), w({3, C, 3, 3}, Layout::kChannelsLast);
      fill(x, 1);
      fill(w, 2);
      Tensor y1, y2, r2, dx1, dr, dx2;
      fused->forward(x, y1, true);
      plain->forward(x, y2, true);
      relu->forward(y2, r2, true);
      const std::string at = kind + " C=" + std::to_string(C);
      EXPECT_TRUE(near(to_logical(y1), to_logical(r2), 0, 1e-7, "forward " + at));
      fused->backward(x, y1, w, &dx1);
      relu->backward(y2, r2, w, &dr);
      plain->backward(x, y2, dr, &dx2);
      EXPECT_TRUE(near(to_logical(dx1), to_logical(dx2), 1e-5, 1e-6, "dx " + at));
      EXPECT_TRUE(near({s1.grads().begin(), s1.grads().end()}, {s2.grads().begin(), s2.grads().end()}, 1e-5, 1e-6,
                       "dgamma, dbeta " + at));
    }
  }
}

// --bn-momentum none reaches the layer as no momentum: running statistics are the cumulative average
// of the batches' statistics (PyTorch's momentum=None), here after three batches of known means.
TEST(Norms, NegativeMomentumIsTheCumulativeAverage) {
  NormSpec spec = parse_norm("local");
  spec.momentum = std::nullopt;
  ParamStore store;
  auto bn = make_norm("n", 2, spec, false, store);
  store.finalize();
  store.init_params(1);
  double expected[2] = {0, 0};
  for (int b = 0; b < 3; ++b) {
    Tensor x({4, 2}), y;
    for (int i = 0; i < 4; ++i)
      for (int c = 0; c < 2; ++c) x[i * 2 + c] = static_cast<float>(10 * b + c + i);  // mean 10b + c + 1.5
    bn->forward(x, y, true);
    for (int c = 0; c < 2; ++c) expected[c] += (10.0 * b + c + 1.5) / 3;
  }
  std::vector<BufferRef> bufs;
  bn->buffers(bufs);
  const BufferRef* mean = nullptr;
  for (const auto& b : bufs)
    if (b.name.find("running_mean") != std::string::npos) mean = &b;
  ASSERT_NE(mean, nullptr);
  for (int c = 0; c < 2; ++c) EXPECT_NEAR(mean->f32[c], expected[c], 1e-5) << "channel " << c;
}

TEST(Residual, BlockGradients) {
  CpuContext ctx;
  for (const std::string kind : {"local", "groupnorm", "none"}) {
    for (auto [in, out, stride] : {std::tuple<int, int, int>{4, 4, 1}, {4, 6, 2}}) {
      ParamStore store;
      NormSpec spec = parse_norm(kind);
      spec.gn_groups = 2;
      auto block = make_residual_block("b", in, out, stride, spec, store, ctx);
      store.finalize();
      store.init_params(5);
      Tensor x({3, in, 6, 6}, Layout::kChannelsLast);
      fill(x, 21);
      // Small steps: one weight moves a whole channel of ReLU inputs (through the norm), so larger steps
      // straddle kinks on most probes.
      check_module(*block, store, x, true, "residual " + kind + " " + std::to_string(in) + "->" + std::to_string(out),
                   3e-4f, true);
    }
  }
}

TEST(Loss, SoftmaxCrossEntropy) {
  Tensor z({4, 5}), dz;
  fill(z, 31, 2.0f);
  const std::int32_t labels[] = {0, 3, 4, 1};
  std::int64_t correct = -1;
  const double L = softmax_cross_entropy(z, labels, 1.0f, dz, &correct);
  double ref = 0;
  std::int64_t right = 0;
  for (int n = 0; n < 4; ++n) {
    double m = -1e30, s = 0;
    int arg = 0;
    for (int k = 0; k < 5; ++k)
      if (z[n * 5 + k] > m) m = z[n * 5 + k], arg = k;
    for (int k = 0; k < 5; ++k) s += std::exp(static_cast<double>(z[n * 5 + k]));
    ref += std::log(s) - z[n * 5 + labels[n]];
    right += arg == labels[n];
  }
  EXPECT_NEAR(L, ref, 1e-9 * std::fabs(ref) + 1e-12);
  EXPECT_EQ(correct, right);
  FdResult r;
  std::vector<float> a(dz.data(), dz.data() + dz.numel());
  Tensor scratch;
  fd_check(z.data(), z.numel(), a, [&] { return softmax_cross_entropy(z, labels, 1.0f, scratch, nullptr); }, "dz", r,
           20, 1e-3f);
  EXPECT_EQ(r.failed, 0) << r.first_failure;
  const std::int32_t bad[] = {0, 3, 5, 1};
  EXPECT_THROW(softmax_cross_entropy(z, bad, 1.0f, dz, nullptr), Error);
}

// The two networks end to end (small widths): shapes, and gradients of a few parameters of each layer.
TEST(Models, ConvnetAndResnetGradients) {
  CpuContext ctx;
  for (const std::string arch : {"convnet", "resnet"}) {
    ModelSpec spec;
    spec.arch = arch;
    spec.width = 4;
    spec.depth = 1;
    spec.norm = parse_norm("local");
    if (arch == "resnet") spec.in_channels = 3, spec.height = spec.width_px = 32;
    auto model = build_model(spec, ctx, 1);
    Tensor x({3, spec.in_channels, spec.height, spec.width_px}, Layout::kPlanar);
    fill(x, 41);
    Tensor y;
    model->net->forward(x, y, true);
    ASSERT_EQ(y.shape(), (std::vector<std::int64_t>{3, 10})) << arch;
    check_module(*model->net, model->params, x, false, arch, 3e-4f, true);
  }
}

// The network plan is the checkpoint contract: its signature is the text checkpoints of every earlier
// version carry (this literal is what the pre-plan code wrote for this spec), its parameter layout is
// the one the CPU model computes in, and the model's description is the layers'.
TEST(Models, PlanKeepsTheCheckpointSignatureAndLayout) {
  ModelSpec spec;
  spec.width = 2;
  spec.norm = parse_norm("sync:2");
  ParamStore ps;
  const NetPlan plan = plan_network(spec, ps);
  EXPECT_EQ(plan.signature,
            "convnet;in=1x28x28;classes=10;norm=sync;conv1.weight[2x1x3x3];conv1.bn.weight[2];conv1.bn.bias[2];"
            "conv2.weight[4x2x3x3];conv2.bn.weight[4];conv2.bn.bias[4];conv3.weight[8x4x3x3];conv3.bn.weight[8];"
            "conv3.bn.bias[8];fc1.weight[16x72];fc1.bn.weight[16];fc1.bn.bias[16];fc2.weight[10x16];fc2.bias[10];"
            "conv1.bn.running_mean(2);conv1.bn.running_var(2);conv1.bn.pivot(2);conv1.bn.num_batches_tracked(1);"
            "conv2.bn.running_mean(4);conv2.bn.running_var(4);conv2.bn.pivot(4);conv2.bn.num_batches_tracked(1);"
            "conv3.bn.running_mean(8);conv3.bn.running_var(8);conv3.bn.pivot(8);conv3.bn.num_batches_tracked(1);"
            "fc1.bn.running_mean(16);fc1.bn.running_var(16);fc1.bn.pivot(16);fc1.bn.num_batches_tracked(1)");
  EXPECT_EQ(plan.describe(),
            "conv3x3(1->2) -> bn[sync:2]+relu -> maxpool2 -> conv3x3(2->4) -> bn[sync:2]+relu -> maxpool2 -> "
            "conv3x3(4->8) -> bn[sync:2]+relu -> maxpool2 -> flatten -> fc(72->16) -> bn[sync:2]+relu -> fc(16->10)");
  // 16-float aligned offsets in registration order: weight, then bias, layer by layer.
  std::int64_t at = 0;
  for (const ParamInfo& p : ps.all()) {
    EXPECT_EQ(p.offset, (at + 15) / 16 * 16) << p.name;
    at = p.offset + p.size;
  }
  EXPECT_EQ(ps.total(), at);
  spec.norm = parse_norm("local");
  CpuContext ctx;
  const auto model = build_model(spec, ctx, 3);
  EXPECT_EQ(model->net->describe(), model->plan.describe());
  EXPECT_THROW(plan_network(spec, ps), Error);  // a store that already holds parameters
  spec.arch = "vgg";
  ParamStore fresh;
  EXPECT_THROW(plan_network(spec, fresh), Error);
}

}  // namespace
}  // namespace syncbn::test
