// --precision bf16 on the CPU (CpuContext::bf16, conv2d.cpp): the oneDNN convolutions against a
// double-precision reference of the fp32 operands, within bf16 tolerance (inputs, weights and output
// gradients rounded to 8 significant bits; fp32 accumulation), for the output, the input gradient and the
// weight and bias gradients (accumulated, +=, into the fp32 store); that the bf16 kernels really run (the
// result is further from the reference than fp32's); and a whole network's step against the fp32 one.
// bf16 activations: the BN kernels' statistics of bf16 input are the double statistics of its values; the
// fused BN+ReLU+pool pass over bf16 tensors is the fp32 pass over the same (widened) values with each bf16
// output rounded once; a convolution reading and writing bf16 activations is the fp32-activation one
// within bf16 rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "syncbn/bn_kernels.h"
#include "syncbn/model.h"
#include "syncbn/nn.h"
#include "syncbn/sync_batchnorm.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

void fill(Tensor& t, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (std::int64_t i = 0; i < t.numel(); ++i) t[i] = d(gen);
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double a : v) m = std::max(m, std::fabs(a));
  return m;
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

std::vector<double> as_double(const float* p, std::int64_t n) { return std::vector<double>(p, p + n); }

// Direct convolution in double over logical (N, C, H, W), weights OIHW, and its gradients for the
// output gradient dy (logical (N, O, Ho, Wo)).
struct ConvRef {
  std::vector<double> y, dx, dw, db;
};

ConvRef conv_ref(const std::vector<double>& x, const float* w, const float* b, const std::vector<double>& dy,
                 std::int64_t N, std::int64_t H, std::int64_t W, const ConvSpec& s) {
  const std::int64_t C = s.in, O = s.out, K = s.kernel;
  const std::int64_t Ho = (H + 2 * s.pad - K) / s.stride + 1, Wo = (W + 2 * s.pad - K) / s.stride + 1;
  ConvRef r;
  r.y.assign(static_cast<std::size_t>(N * O * Ho * Wo), 0.0);
  r.dx.assign(x.size(), 0.0);
  r.dw.assign(static_cast<std::size_t>(O * C * K * K), 0.0);
  r.db.assign(static_cast<std::size_t>(O), 0.0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t i = 0; i < Ho; ++i)
        for (std::int64_t j = 0; j < Wo; ++j) {
          const auto yi = static_cast<std::size_t>(((n * O + o) * Ho + i) * Wo + j);
          double acc = b ? b[o] : 0.0;
          const double g = dy[yi];
          r.db[static_cast<std::size_t>(o)] += g;
          for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t ki = 0; ki < K; ++ki)
              for (std::int64_t kj = 0; kj < K; ++kj) {
                const std::int64_t hi = i * s.stride + ki - s.pad, wj = j * s.stride + kj - s.pad;
                if (hi < 0 || hi >= H || wj < 0 || wj >= W) continue;
                const auto xi = static_cast<std::size_t>(((n * C + c) * H + hi) * W + wj);
                const auto wi = static_cast<std::size_t>(((o * C + c) * K + ki) * K + kj);
                acc += x[xi] * w[wi];
                r.dx[xi] += g * w[wi];
                r.dw[wi] += g * x[xi];
              }
          r.y[yi] = acc;
        }
  return r;
}

struct ConvResult {
  std::vector<double> y, dx, dw, db;
};

// One forward and two backwards (the gradients accumulate: dw, db are twice one backward's).
ConvResult run_conv(const ConvSpec& spec, bool bf16, std::int64_t N, std::int64_t H, std::int64_t W,
                    ParamStore& store, ConvRef* ref) {
  CpuContext ctx;
  ctx.bf16 = bf16;
  auto conv = make_conv2d("conv", spec, store, ctx);
  store.finalize();
  store.init_params(7);
  if (spec.bias) std::fill_n(store.value(1), spec.out, 0.25f);
  Tensor x({N, spec.in, H, W}, Layout::kChannelsLast);
  fill(x, 3);
  Tensor y, dx;
  conv->forward(x, y, true);
  Tensor dy(y.shape(), y.layout());
  fill(dy, 5);
  store.zero_grads();
  conv->backward(x, y, dy, &dx);
  conv->backward(x, y, dy, &dx);
  if (ref) {
    *ref = conv_ref(from_tensor(x), store.value(0), spec.bias ? store.value(1) : nullptr, from_tensor(dy), N, H, W,
                    spec);
  }
  ConvResult r{from_tensor(y), from_tensor(dx), as_double(store.grad(0), store.info(0).size), {}};
  if (spec.bias) r.db = as_double(store.grad(1), spec.out);
  for (double& v : r.dw) v /= 2;
  for (double& v : r.db) v /= 2;
  return r;
}

// bf16 rounds each operand to 8 significant bits (relative error ≤ 2^-9); sums of K products with
// random signs then err by about 2^-9·sqrt(K)·|term|, well under 1% of the largest output.
constexpr double kRtol = 1e-2, kAtolScale = 1e-2;

TEST(Bf16Conv, MatchesTheDoubleReferenceWithinBf16Tolerance) {
  struct Case {
    ConvSpec spec;
    std::int64_t N, H, W;
  };
  const Case cases[] = {
      {{16, 32, 3, 1, 1, true}, 4, 9, 9},    // 3x3 same, bias
      {{32, 16, 3, 2, 1, false}, 3, 9, 9},   // stride 2
      {{32, 64, 1, 2, 0, false}, 3, 8, 8},   // 1x1 projection shortcut
      {{8, 16, 1, 2, 0, false}, 3, 6, 6},    // 1x1, few channels (conv2d.cpp's jit_1x1 workaround at 2+ threads)
      {{64, 128, 3, 1, 1, false}, 2, 7, 7},  // the convnet's conv3 shape
  };
  for (const Case& c : cases) {
    const std::string what = "conv " + describe(c.spec) + (c.spec.stride > 1 ? " stride 2" : "");
    ParamStore s16, s32;
    ConvRef ref;
    const ConvResult b = run_conv(c.spec, true, c.N, c.H, c.W, s16, &ref);
    const ConvResult f = run_conv(c.spec, false, c.N, c.H, c.W, s32, nullptr);
    EXPECT_TRUE(near(b.y, ref.y, kRtol, kAtolScale, what + " y"));
    EXPECT_TRUE(near(b.dx, ref.dx, kRtol, kAtolScale, what + " dx"));
    EXPECT_TRUE(near(b.dw, ref.dw, kRtol, kAtolScale, what + " dW"));
    if (c.spec.bias) {
      EXPECT_TRUE(near(b.db, ref.db, kRtol, kAtolScale, what + " db"));
    }
    // The bf16 kernels ran: fp32 lands within ~1e-6 of the reference, bf16 two orders further.
    EXPECT_TRUE(near(f.y, ref.y, 1e-5, 1e-5, what + " y (fp32)"));
    EXPECT_GT(max_diff(b.y, ref.y), 1e-4 * max_abs(ref.y)) << what << ": bf16 output as exact as fp32's";
    EXPECT_GT(max_diff(b.dx, ref.dx), 1e-4 * max_abs(ref.dx)) << what << ": bf16 dx as exact as fp32's";
    EXPECT_GT(max_diff(b.dw, ref.dw), 1e-4 * max_abs(ref.dw)) << what << ": bf16 dW as exact as fp32's";
  }
}

// The network input's convolution (fewer than 8 input channels: im2col + sgemm) stays fp32.
TEST(Bf16Conv, InputLayerStaysFp32) {
  const ConvSpec spec{3, 16, 3, 1, 1, false};
  ParamStore s16;
  ConvRef ref;
  const ConvResult b = run_conv(spec, true, 2, 8, 8, s16, &ref);
  EXPECT_TRUE(near(b.y, ref.y, 1e-5, 1e-5, "input conv y"));
  EXPECT_TRUE(near(b.dw, ref.dw, 1e-5, 1e-5, "input conv dW"));
}

// The fully connected layer: y = x·Wᵀ + b and its gradients (dW and db accumulated twice), for row counts
// below, at and above the 16-row padding block.
TEST(Bf16Linear, MatchesTheDoubleReferenceWithinBf16Tolerance) {
  const std::int64_t in = 72, out = 24;
  for (const std::int64_t N : {5, 16, 37}) {
    const std::string what = "fc N=" + std::to_string(N);
    ParamStore store;
    CpuContext ctx;
    ctx.bf16 = true;
    auto fc = make_linear(plan_linear(store, "fc", in, out, true, false), store, &ctx);
    store.finalize();
    store.init_params(11);
    std::fill_n(store.value(1), out, 0.5f);
    Tensor x({N, in}), dy({N, out}), y, dx;
    fill(x, 12);
    fill(dy, 13);
    fc->forward(x, y, true);
    store.zero_grads();
    fc->backward(x, y, dy, &dx);
    fc->backward(x, y, dy, &dx);
    std::vector<double> ry(static_cast<std::size_t>(N * out)), rdx(static_cast<std::size_t>(N * in), 0.0),
        rdw(static_cast<std::size_t>(out * in), 0.0), rdb(static_cast<std::size_t>(out), 0.0);
    const float* w = store.value(0);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t o = 0; o < out; ++o) {
        double acc = 0.5;
        const double g = dy[n * out + o];
        rdb[static_cast<std::size_t>(o)] += 2 * g;
        for (std::int64_t i = 0; i < in; ++i) {
          acc += static_cast<double>(x[n * in + i]) * w[o * in + i];
          rdx[static_cast<std::size_t>(n * in + i)] += g * w[o * in + i];
          rdw[static_cast<std::size_t>(o * in + i)] += 2 * g * x[n * in + i];
        }
        ry[static_cast<std::size_t>(n * out + o)] = acc;
      }
    const std::vector<double> got_y = from_tensor(y), got_dw = as_double(store.grad(0), out * in);
    EXPECT_TRUE(near(got_y, ry, kRtol, kAtolScale, what + " y"));
    EXPECT_TRUE(near(from_tensor(dx), rdx, kRtol, kAtolScale, what + " dx"));
    EXPECT_TRUE(near(got_dw, rdw, kRtol, kAtolScale, what + " dW"));
    EXPECT_TRUE(near(as_double(store.grad(1), out), rdb, 1e-6, 1e-6, what + " db (fp32)"));
    EXPECT_GT(max_diff(got_y, ry), 1e-4 * max_abs(ry)) << what << ": bf16 output as exact as fp32's";
    EXPECT_GT(max_diff(got_dw, rdw), 1e-4 * max_abs(rdw)) << what << ": bf16 dW as exact as fp32's";
  }
}

// bf16 and fp32 models have one parameter layout and signature: their checkpoints load into each other.
TEST(Bf16Network, SameSignatureAsFp32) {
  ModelSpec spec;
  spec.width = 8;
  spec.norm = parse_norm("local");
  CpuContext c32, c16;
  c16.bf16 = true;
  const auto m32 = build_model(spec, c32, 5), m16 = build_model(spec, c16, 5);
  EXPECT_EQ(m16->signature, m32->signature);
  EXPECT_EQ(m16->params.total(), m32->params.total());
  EXPECT_EQ(m16->params.values(), m32->params.values());
}

// One training step of a whole network (convnet and resnet, BN statistics in double as in fp32): the bf16
// model's loss, logits and parameter gradients against the fp32 model's from the same initialization.
// Gradients are compared by relative L2 error per parameter, not elementwise: BatchNorm's backward makes
// each convolution's output gradient orthogonal (per channel) to the constant and to its normalized
// output, so a fresh network's weight gradient is a small remainder of large cancelling terms, and the
// bf16 rounding of the output gradient (2^-9 per element) shows up there as ~10-20% (measured 0.3-20%
// at batch 8; an error in a kernel's format or operands gives ~100%).
TEST(Bf16Network, StepMatchesFp32) {
  for (const std::string arch : {"convnet", "resnet"}) {
    ModelSpec spec;
    spec.arch = arch;
    spec.width = 16;
    spec.depth = 1;
    spec.norm = parse_norm("local");
    if (arch == "resnet") spec.in_channels = 3, spec.height = spec.width_px = 16;
    Tensor x({8, spec.in_channels, spec.height, spec.width_px}, Layout::kPlanar);
    fill(x, 41);
    const std::int32_t labels[] = {0, 1, 2, 3, 4, 5, 6, 7};
    double loss[2] = {0, 0};
    std::vector<double> logits[2], grads[2];
    std::vector<ParamInfo> params;
    for (int bf16 = 0; bf16 < 2; ++bf16) {
      CpuContext ctx;
      ctx.bf16 = bf16 == 1;
      auto model = build_model(spec, ctx, 1);
      Tensor y, dy;
      model->net->forward(x, y, true);
      model->params.zero_grads();
      loss[bf16] = softmax_cross_entropy(y, labels, 1.0f / 8, dy, nullptr) / 8;
      model->net->backward(x, y, dy, nullptr);
      logits[bf16] = from_tensor(y);
      grads[bf16] = as_double(model->params.grads().data(), model->params.total());
      params = model->params.all();
    }
    EXPECT_NEAR(loss[1], loss[0], 1e-2 * loss[0]) << arch;
    EXPECT_TRUE(near(logits[1], logits[0], 3e-2, 3e-2, arch + " logits"));
    EXPECT_NE(logits[1], logits[0]) << arch << ": the bf16 network computed exactly what fp32 did";
    for (const ParamInfo& p : params) {
      double err = 0, norm = 0;
      for (std::int64_t i = p.offset; i < p.offset + p.size; ++i) {
        const double g32 = grads[0][static_cast<std::size_t>(i)], g16 = grads[1][static_cast<std::size_t>(i)];
        err += (g16 - g32) * (g16 - g32);
        norm += g32 * g32;
      }
      EXPECT_LE(std::sqrt(err / norm), 0.35) << arch << " " << p.name << ": bf16 gradient too far from fp32's";
    }
  }
}

// ---- bf16 activations ------------------------------------------------------------------------------

// t (fp32) rounded to bf16, and the values of a bf16 tensor (widened, exact) as fp32 and as doubles.
Tensor to_bf16_tensor(const Tensor& t) {
  Tensor r(t.shape(), t.layout(), ElementType::kBF16);
  for (std::int64_t i = 0; i < t.numel(); ++i) r.bf16()[i] = float_to_bf16(t[i]);
  return r;
}

Tensor widened(const Tensor& t) {
  Tensor r(t.shape(), t.layout());
  for (std::int64_t i = 0; i < t.numel(); ++i) r[i] = bf16_to_float(t.bf16()[i]);
  return r;
}

// The logical values (from_tensor's order) of an fp32 or bf16 tensor.
std::vector<double> values(const Tensor& t) { return from_tensor(t.dtype() == ElementType::kF32 ? t : widened(t)); }

TEST(Bf16Activations, RoundingIsNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f).bits, 0x3F80);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);               // a tie: to even (down)
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);  // a tie: to even (up)
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.1f / 256)), 1.0f + 2.0f / 256);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-3.0f)), -3.0f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
}

// bn_stats of bf16 x: the same sums as of its widened values (bit for bit), and the double mean and
// variance of the bf16 values (two-pass reference) to 1e-9 relative. C = 19 has a scalar tail.
TEST(Bf16Activations, StatsAreTheDoubleStatisticsOfTheBf16Values) {
  for (const std::int64_t C : {19, 32}) {
    const std::int64_t N = 3, H = 5, W = 6, n = N * H * W;
    Tensor x32({N, C, H, W}, Layout::kChannelsLast);
    fill(x32, 21);
    for (std::int64_t i = 0; i < x32.numel(); ++i) x32[i] = 3.0f + 0.5f * x32[i];  // an offset mean
    const Tensor x16 = to_bf16_tensor(x32), xw = widened(x16);
    const BnGeometry g = bn_geometry(x16.shape(), x16.layout(), "test");
    std::vector<double> m16(static_cast<std::size_t>(bn_msg_size(C))), mw(m16.size()), f16(C), fw(C);
    cpu::bn_stats(x16.bf16(), g, nullptr, 1.0, m16.data());
    cpu::bn_stats(xw.data(), g, nullptr, 1.0, mw.data());
    cpu::bn_first_values(x16.bf16(), g, f16.data());
    cpu::bn_first_values(xw.data(), g, fw.data());
    EXPECT_EQ(m16, mw) << "C " << C;
    EXPECT_EQ(f16, fw) << "C " << C;
    for (std::int64_t c = 0; c < C; ++c) {
      double mean = 0, var = 0;
      for (std::int64_t r = 0; r < n; ++r) mean += xw[r * C + c];
      mean /= static_cast<double>(n);
      for (std::int64_t r = 0; r < n; ++r) var += (xw[r * C + c] - mean) * (xw[r * C + c] - mean);
      var /= static_cast<double>(n);
      const double S1 = m16[static_cast<std::size_t>(kMsgHeader + c)];
      const double S2 = m16[static_cast<std::size_t>(kMsgHeader + C + c)];
      const double got_mean = S1 / static_cast<double>(n), got_var = S2 / static_cast<double>(n) - got_mean * got_mean;
      EXPECT_NEAR(got_mean, mean, 1e-9 * std::fabs(mean)) << "C " << C << " channel " << c;
      EXPECT_NEAR(got_var, var, 1e-9 * var) << "C " << C << " channel " << c;
    }
  }
}

// The fused BN+ReLU+max-pool layer over bf16 tensors against the same layer over fp32 tensors holding the
// same values: statistics, running statistics, dγ, dβ identical; every bf16 output (pooled y, dx) the fp32
// one rounded once. For each mix the convnet uses: bf16 in and out, fp32 in (the input layer's output) and
// bf16 out, bf16 in and fp32 out (before flatten). Two training steps, then an eval step.
TEST(Bf16Activations, FusedPoolPassIsTheFp32PassRounded) {
  const std::int64_t N = 3, C = 24, H = 6, W = 7, k = 2;
  for (const auto& [in16, out16] : {std::pair{true, true}, std::pair{false, true}, std::pair{true, false}}) {
    const std::string what = std::string(in16 ? "bf16" : "fp32") + " in, " + (out16 ? "bf16" : "fp32") + " out";
    BatchNormOptions o;
    o.channels = C;
    o.fuse_relu = true;
    SyncBatchNorm ref("ref.bn", o, nullptr), bf("bf.bn", o, nullptr);
    for (SyncBatchNorm* bn : {&ref, &bf})
      for (std::int64_t c = 0; c < C; ++c) {
        bn->gamma()[static_cast<std::size_t>(c)] = 0.5f + 0.1f * static_cast<float>(c % 7);
        bn->beta()[static_cast<std::size_t>(c)] = 0.2f - 0.05f * static_cast<float>(c % 5);
      }
    for (int step = 0; step < 3; ++step) {
      const bool training = step < 2;
      const std::string at = what + ", step " + std::to_string(step);
      Tensor x32({N, C, H, W}, Layout::kChannelsLast), dy32({N, C, H / k, W / k}, Layout::kChannelsLast);
      fill(x32, 60 + step);
      fill(dy32, 70 + step);
      const Tensor x16 = to_bf16_tensor(x32), dy16 = to_bf16_tensor(dy32);
      const Tensor xw = widened(x16), dyw = widened(dy16);  // the values both layers see
      Tensor yr, dxr, yb, dxb;
      ref.forward_pool(xw, yr, k, training);
      bf.forward_pool(in16 ? x16 : xw, yb, k, training, out16 ? ElementType::kBF16 : ElementType::kF32);
      ref.backward_pool(xw, out16 ? dyw : dy32, dxr);
      bf.backward_pool(in16 ? x16 : xw, out16 ? dy16 : dy32, dxb);
      ASSERT_EQ(yb.dtype(), out16 ? ElementType::kBF16 : ElementType::kF32) << at;
      ASSERT_EQ(dxb.dtype(), in16 ? ElementType::kBF16 : ElementType::kF32) << at;
      const Tensor yr_out = out16 ? to_bf16_tensor(yr) : yr, dxr_out = in16 ? to_bf16_tensor(dxr) : dxr;
      EXPECT_EQ(values(yb), values(yr_out)) << at << ": pooled output";
      EXPECT_EQ(values(dxb), values(dxr_out)) << at << ": input gradient";
      EXPECT_EQ(bf.dgamma(), ref.dgamma()) << at;
      EXPECT_EQ(bf.dbeta(), ref.dbeta()) << at;
      EXPECT_EQ(bf.running_mean(), ref.running_mean()) << at;
      EXPECT_EQ(bf.running_var(), ref.running_var()) << at;
      EXPECT_EQ(bf.batch_mean(), ref.batch_mean()) << at;
    }
  }
  // The unfused layer takes fp32 only, and a pooled gradient must have the pooled output's dtype.
  BatchNormOptions o;
  o.channels = C;
  SyncBatchNorm bn("bn", o, nullptr);
  Tensor x32({N, C, H, W}, Layout::kChannelsLast), y, dx;
  fill(x32, 5);
  const Tensor x16 = to_bf16_tensor(x32);
  EXPECT_THROW(bn.forward(x16, y, true), Error);
  bn.forward_pool(x16, y, k, true, ElementType::kBF16);
  const Tensor dy32(y.shape(), y.layout());
  EXPECT_THROW(bn.backward_pool(x16, dy32, dx), Error);
}

// A convolution reading bf16 activations and writing bf16 ones (the convnet's conv2, conv3) against the
// same layer on the fp32 tensors of the same values (which converts them to the same bf16 operands): the
// output and input gradient within one bf16 rounding (the fp32 results rounded), the weight gradient (fp32,
// from the same bf16 operands) within fp32 accumulation-order noise.
TEST(Bf16Activations, ConvOnBf16TensorsMatchesFp32Tensors) {
  const ConvSpec spec{16, 32, 3, 1, 1, false};
  const std::int64_t N = 3, H = 8, W = 8;
  Tensor x32({N, spec.in, H, W}, Layout::kChannelsLast);
  fill(x32, 81);
  const Tensor x16 = to_bf16_tensor(x32), xw = widened(x16);
  std::vector<double> y[2], dx[2], dw[2];
  for (int b = 0; b < 2; ++b) {  // 0: fp32 activations, 1: bf16 activations
    ParamStore store;
    CpuContext ctx;
    ctx.bf16 = true;
    auto conv = make_conv2d(plan_conv(store, "conv", spec), store, ctx, b == 1);
    store.finalize();
    store.init_params(7);
    Tensor out, gx;
    conv->forward(b ? x16 : xw, out, true);
    ASSERT_EQ(out.dtype(), b ? ElementType::kBF16 : ElementType::kF32);
    Tensor dy32(out.shape(), out.layout());
    fill(dy32, 82);
    const Tensor dy16 = to_bf16_tensor(dy32), dyw = widened(dy16);
    store.zero_grads();
    conv->backward(b ? x16 : xw, out, b ? dy16 : dyw, &gx);
    ASSERT_EQ(gx.dtype(), b ? ElementType::kBF16 : ElementType::kF32);
    y[b] = values(out);
    dx[b] = values(gx);
    dw[b] = as_double(store.grad(0), store.info(0).size);
  }
  constexpr double kBf16Ulp = 1.0 / 128;  // relative spacing of bf16 values (8 significant bits)
  EXPECT_TRUE(near(y[1], y[0], kBf16Ulp, 1e-6, "conv y (bf16 activations)"));
  EXPECT_TRUE(near(dx[1], dx[0], kBf16Ulp, 1e-6, "conv dx (bf16 activations)"));
  EXPECT_TRUE(near(dw[1], dw[0], 1e-5, 1e-5, "conv dW (bf16 activations)"));
  EXPECT_NE(y[1], y[0]) << "the bf16 output was not rounded to bf16";
  // An fp32 gradient for a bf16 output is refused.
  ParamStore store;
  CpuContext ctx;
  ctx.bf16 = true;
  auto conv = make_conv2d(plan_conv(store, "conv", spec), store, ctx, true);
  store.finalize();
  Tensor out, gx;
  conv->forward(x16, out, true);
  const Tensor dy32(out.shape(), out.layout());
  EXPECT_THROW(conv->backward(x16, out, dy32, &gx), Error);
}

}  // namespace
}  // namespace syncbn::test
