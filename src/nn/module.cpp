// Sequential and the simple elementwise/pooling layers (all NHWC, single-threaded,
// written as plain loops the compiler vectorizes across channels; they are memory-bound and small next
// to the convolutions).
#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>

#include "syncbn/error.h"
#include "syncbn/nn.h"

namespace syncbn {

// ---- Sequential ---------------------------------------------------------------------------------------

void Sequential::forward(const Tensor& x, Tensor& y, bool training) {
  acts_.resize(modules_.size());
  const Tensor* in = &x;
  for (std::size_t i = 0; i < modules_.size(); ++i) {
    modules_[i]->forward(*in, acts_[i], training);
    in = &acts_[i];
  }
  y = *in;
}

void Sequential::backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx) {
  (void)y;
  const Tensor* g = &dy;
  for (std::size_t k = modules_.size(); k-- > 0;) {
    const Tensor& in = k ? acts_[k - 1] : x;
    Tensor* out = k ? ((modules_.size() - k) % 2 ? &grad_a_ : &grad_b_) : dx;
    modules_[k]->backward(in, acts_[k], *g, out);
    if (hook_) hook_(k);
    g = out;
  }
}

void Sequential::buffers(std::vector<BufferRef>& out) {
  for (auto& m : modules_) m->buffers(out);
}

void Sequential::sync_bns(std::vector<SyncBatchNorm*>& out) {
  for (auto& m : modules_) m->sync_bns(out);
}

std::string Sequential::describe() const {
  std::string s;
  for (auto& m : modules_) s += (s.empty() ? "" : " -> ") + m->describe();
  return s;
}

namespace {

std::int64_t spatial(const Tensor& t) { return t.rank() == 4 ? t.dim(2) * t.dim(3) : 1; }

// ---- ReLU ---------------------------------------------------------------------------------------------

class ReLU final : public Module {
 public:
  void forward(const Tensor& x, Tensor& y, bool) override {
    y.resize(x.shape(), x.layout());
    const float* a = x.data();
    float* b = y.data();
    for (std::int64_t i = 0, n = x.numel(); i < n; ++i) b[i] = std::max(a[i], 0.0f);
  }
  void backward(const Tensor&, const Tensor& y, const Tensor& dy, Tensor* dx) override {
    if (!dx) return;
    dx->resize(dy.shape(), dy.layout());
    const float* o = y.data();
    const float* g = dy.data();
    float* d = dx->data();
    for (std::int64_t i = 0, n = dy.numel(); i < n; ++i) d[i] = o[i] > 0.0f ? g[i] : 0.0f;
  }
  std::string describe() const override { return "relu"; }
};

// ---- MaxPool (NHWC, k×k, stride k) ------------------------------------------------------------------

// Each output keeps the index of its maximum within the window (first maximum on ties); backward writes
// every input position of every window (gradient or 0), so dx needs no clearing pass and no scatter. The
// 2×2 case is branch-free across channels with a 32-bit index, the width of the float compares, so it
// vectorizes (with a byte index GCC fell back to branchy scalar code that mispredicted on every
// other comparison: 3x slower); other window sizes take the general loop.
class MaxPool final : public Module {
 public:
  explicit MaxPool(std::int64_t k) : k_(k) {
    SBN_CHECK(k >= 1 && k <= 15, "maxpool: window " + std::to_string(k) + " outside [1, 15]");
  }
  void forward(const Tensor& x, Tensor& y, bool) override {
    SBN_CHECK(x.rank() == 4 && x.layout() == Layout::kChannelsLast,
              "maxpool: expects an NHWC tensor, got " + syncbn::describe(x.shape(), x.layout()));
    const std::int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), Ho = H / k_, Wo = W / k_;
    SBN_CHECK(Ho > 0 && Wo > 0, "maxpool: input " + syncbn::describe(x.shape(), x.layout()) + " smaller than the window");
    y.resize({N, C, Ho, Wo}, Layout::kChannelsLast);
    arg_.resize(static_cast<std::size_t>(y.numel()));
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t ho = 0; ho < Ho; ++ho)
        for (std::int64_t wo = 0; wo < Wo; ++wo) {
          const std::int64_t cell = (n * Ho + ho) * Wo + wo;
          float* out = y.data() + cell * C;
          std::int32_t* arg = arg_.data() + cell * C;
          const float* base = x.data() + ((n * H + ho * k_) * W + wo * k_) * C;
          if (k_ == 2) {
            const float* p0 = base;
            const float* p1 = base + C;
            const float* p2 = base + W * C;
            const float* p3 = p2 + C;
#pragma omp simd
            for (std::int64_t c = 0; c < C; ++c) {
              // Arithmetic instead of branches or selects on bools, which GCC does not vectorize.
              const float a = p0[c], b = p1[c], d = p2[c], e = p3[c];
              const float top = std::max(a, b), bottom = std::max(d, e);  // std::max keeps the first on ties
              const std::int32_t top_arg = static_cast<std::int32_t>(b > a);
              const std::int32_t bottom_arg = 2 + static_cast<std::int32_t>(e > d);
              const std::int32_t second = static_cast<std::int32_t>(bottom > top);
              out[c] = std::max(top, bottom);
              arg[c] = top_arg + second * (bottom_arg - top_arg);
            }
            continue;
          }
          for (std::int64_t c = 0; c < C; ++c) {
            float m = base[c];
            std::int32_t best = 0;
            for (std::int64_t i = 0; i < k_; ++i)
              for (std::int64_t j = 0; j < k_; ++j) {
                const float v = base[(i * W + j) * C + c];
                if (v > m) m = v, best = static_cast<std::int32_t>(i * k_ + j);
              }
            out[c] = m;
            arg[c] = best;
          }
        }
  }
  void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx) override {
    if (!dx) return;
    dx->resize(x.shape(), x.layout());
    const std::int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), Ho = y.dim(2), Wo = y.dim(3);
    for (std::int64_t n = 0; n < N; ++n) {
      for (std::int64_t ho = 0; ho < Ho; ++ho)
        for (std::int64_t wo = 0; wo < Wo; ++wo) {
          const std::int64_t cell = (n * Ho + ho) * Wo + wo;
          const float* g = dy.data() + cell * C;
          const std::int32_t* arg = arg_.data() + cell * C;
          float* base = dx->data() + ((n * H + ho * k_) * W + wo * k_) * C;
          for (std::int64_t i = 0; i < k_; ++i)
            for (std::int64_t j = 0; j < k_; ++j) {
              float* d = base + (i * W + j) * C;
              const auto here = static_cast<std::int32_t>(i * k_ + j);
#pragma omp simd
              for (std::int64_t c = 0; c < C; ++c) d[c] = arg[c] == here ? g[c] : 0.0f;
            }
        }
      // Rows and columns left over by the floor division get no gradient.
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t w = (h < Ho * k_ ? Wo * k_ : 0); w < W; ++w)
          std::fill_n(dx->data() + ((n * H + h) * W + w) * C, C, 0.0f);
    }
  }
  std::string describe() const override { return "maxpool" + std::to_string(k_); }

 private:
  std::int64_t k_;
  std::vector<std::int32_t> arg_;  // per output element: index of the maximum in its window
};

// ---- Global average pool (NHWC → (N, C)) ----------------------------------------------------------------

class GlobalAvgPool final : public Module {
 public:
  void forward(const Tensor& x, Tensor& y, bool) override {
    SBN_CHECK(x.rank() == 4 && x.layout() == Layout::kChannelsLast, "global avgpool: expects an NHWC tensor");
    const std::int64_t N = x.dim(0), C = x.dim(1), S = spatial(x);
    y.resize({N, C});
    const float inv = 1.0f / static_cast<float>(S);
    for (std::int64_t n = 0; n < N; ++n) {
      float* out = y.data() + n * C;
      std::fill(out, out + C, 0.0f);
      for (std::int64_t s = 0; s < S; ++s) {
        const float* in = x.data() + (n * S + s) * C;
        for (std::int64_t c = 0; c < C; ++c) out[c] += in[c];
      }
      for (std::int64_t c = 0; c < C; ++c) out[c] *= inv;
    }
  }
  void backward(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx) override {
    if (!dx) return;
    const std::int64_t N = x.dim(0), C = x.dim(1), S = spatial(x);
    dx->resize(x.shape(), x.layout());
    const float inv = 1.0f / static_cast<float>(S);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t s = 0; s < S; ++s) {
        float* d = dx->data() + (n * S + s) * C;
        const float* g = dy.data() + n * C;
        for (std::int64_t c = 0; c < C; ++c) d[c] = g[c] * inv;
      }
  }
  std::string describe() const override { return "global-avgpool"; }
};

// ---- Flatten: NHWC (N, C, H, W) → (N, H·W·C) ------------------------------------------------------------

class Flatten final : public Module {
 public:
  void forward(const Tensor& x, Tensor& y, bool) override {
    SBN_CHECK(x.rank() == 2 || x.layout() == Layout::kChannelsLast || x.dim(1) == 1,
              "flatten: expects NHWC activations");
    y.resize({x.dim(0), x.numel() / std::max<std::int64_t>(x.dim(0), 1)});
    if (x.numel()) std::memcpy(y.data(), x.data(), static_cast<std::size_t>(x.numel()) * sizeof(float));
  }
  void backward(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx) override {
    if (!dx) return;
    dx->resize(x.shape(), x.layout());
    if (dy.numel()) std::memcpy(dx->data(), dy.data(), static_cast<std::size_t>(dy.numel()) * sizeof(float));
  }
  std::string describe() const override { return "flatten"; }
};

}  // namespace

ModulePtr make_relu() { return std::make_unique<ReLU>(); }
ModulePtr make_maxpool(std::int64_t k) { return std::make_unique<MaxPool>(k); }
ModulePtr make_global_avgpool() { return std::make_unique<GlobalAvgPool>(); }
ModulePtr make_flatten() { return std::make_unique<Flatten>(); }

// ---- loss ---------------------------------------------------------------------------------------------

double softmax_cross_entropy(const Tensor& logits, const std::int32_t* labels, float grad_scale, Tensor& dlogits,
                             std::int64_t* correct) {
  SBN_CHECK(logits.rank() == 2, "cross-entropy: logits must be (N, classes)");
  const std::int64_t N = logits.dim(0), K = logits.dim(1);
  dlogits.resize(logits.shape());
  double total = 0;
  std::int64_t right = 0;
  for (std::int64_t n = 0; n < N; ++n) {
    const float* z = logits.data() + n * K;
    float* g = dlogits.data() + n * K;
    const std::int32_t label = labels[n];
    SBN_CHECK(label >= 0 && label < K, "cross-entropy: label " + std::to_string(label) + " outside [0, " +
                                           std::to_string(K) + ")");
    // log-sum-exp around the max, in double: the loss is summed over the batch and logged.
    std::int64_t arg = 0;
    for (std::int64_t k = 1; k < K; ++k)
      if (z[k] > z[arg]) arg = k;
    const double zmax = z[arg];
    double sum = 0;
    for (std::int64_t k = 0; k < K; ++k) sum += std::exp(static_cast<double>(z[k]) - zmax);
    total += std::log(sum) + zmax - z[label];
    right += arg == label;
    for (std::int64_t k = 0; k < K; ++k) {
      const double p = std::exp(static_cast<double>(z[k]) - zmax) / sum;
      g[k] = static_cast<float>((p - (k == label ? 1.0 : 0.0)) * grad_scale);
    }
  }
  if (correct) *correct = right;
  return total;
}

}  // namespace syncbn
