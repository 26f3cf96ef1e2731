// The normalization slot of the models: SyncBatchNorm (sync, sync:K, local), GroupNorm, or nothing,
// each optionally followed by ReLU (fused into the normalization pass).
//
// GroupNorm (Wu & He, 2018) normalizes each sample over groups of C/G channels × H·W: no batch
// statistics, so no communication and no dependence on the per-rank batch. Statistics are accumulated in
// double around the group's first value (the same shifted-sum idea as SyncBN's kernels).
#include <algorithm>
#include <cmath>

#include "syncbn/error.h"
#include "syncbn/nn.h"

namespace syncbn {
namespace {

// SyncBatchNorm in the model: gamma/beta live in the ParamStore (copied in before forward, gradients
// added out after backward - C floats each way), everything else in the layer. pool_k > 0: the k×k max
// pooling that follows is fused in (SyncBatchNorm::forward_pool): the module's output is the pooled one,
// in `pool_out` (bf16 where the next layer reads bf16, see make_norm_pool).
class BatchNormModule final : public Module {
 public:
  BatchNormModule(const NormPlan& plan, ParamStore& store, SyncGroup* group, std::int64_t pool_k = 0,
                  ElementType pool_out = ElementType::kF32)
      : plan_(plan),
        store_(store),
        gamma_(plan.gamma.index),
        beta_(plan.beta.index),
        pool_k_(pool_k),
        pool_out_(pool_out) {
    SBN_CHECK(!plan.synced() || group, plan.name + ": a synced BatchNorm needs a sync group");
    bn_ = std::make_unique<SyncBatchNorm>(plan.name, plan.batchnorm_options(), plan.synced() ? group : nullptr);
  }

  void forward(const Tensor& x, Tensor& y, bool training) override {
    const std::int64_t C = bn_->options().channels;
    std::copy(store_.value(gamma_), store_.value(gamma_) + C, bn_->gamma().begin());
    std::copy(store_.value(beta_), store_.value(beta_) + C, bn_->beta().begin());
    if (pool_k_) {
      bn_->forward_pool(x, y, pool_k_, training, pool_out_);
    } else {
      bn_->forward(x, y, training);
    }
  }

  void backward(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx) override {
    Tensor scratch;
    if (pool_k_) {
      bn_->backward_pool(x, dy, dx ? *dx : scratch);
    } else {
      bn_->backward(x, dy, dx ? *dx : scratch);
    }
    const std::int64_t C = bn_->options().channels;
    if (store_.fp64_grads()) {
      double* dg = store_.grad64(gamma_);
      double* db = store_.grad64(beta_);
      for (std::int64_t c = 0; c < C; ++c) {
        dg[c] += bn_->dgamma64()[static_cast<std::size_t>(c)];
        db[c] += bn_->dbeta64()[static_cast<std::size_t>(c)];
      }
    } else {
      float* dg = store_.grad(gamma_);
      float* db = store_.grad(beta_);
      for (std::int64_t c = 0; c < C; ++c) {
        dg[c] += bn_->dgamma()[c];
        db[c] += bn_->dbeta()[c];
      }
    }
    std::fill(bn_->dgamma().begin(), bn_->dgamma().end(), 0.0f);
    std::fill(bn_->dbeta().begin(), bn_->dbeta().end(), 0.0f);
    std::fill(bn_->dgamma64().begin(), bn_->dgamma64().end(), 0.0);
    std::fill(bn_->dbeta64().begin(), bn_->dbeta64().end(), 0.0);
  }

  void buffers(std::vector<BufferRef>& out) override {
    const std::int64_t C = bn_->options().channels;
    BufferRef rm{bn_->name() + ".running_mean", bn_->running_mean().data(), nullptr, nullptr, C};
    BufferRef rv{bn_->name() + ".running_var", bn_->running_var().data(), nullptr, nullptr, C};
    BufferRef pv{bn_->name() + ".pivot", nullptr, bn_->pivot().data(), nullptr, C};
    BufferRef nb{bn_->name() + ".num_batches_tracked", nullptr, nullptr, &bn_->num_batches_tracked(), 1};
    out.insert(out.end(), {rm, rv, pv, nb});
  }
  void sync_bns(std::vector<SyncBatchNorm*>& out) override { out.push_back(bn_.get()); }
  // The plan's two ops, as the unfused modules print them.
  std::string describe() const override {
    return syncbn::describe(plan_) + (pool_k_ ? " -> maxpool" + std::to_string(pool_k_) : "");
  }

 private:
  NormPlan plan_;
  ParamStore& store_;
  int gamma_ = -1, beta_ = -1;
  std::int64_t pool_k_ = 0;
  ElementType pool_out_ = ElementType::kF32;
  std::unique_ptr<SyncBatchNorm> bn_;
};

// GroupNorm over NHWC (N, C, H, W) or (N, C) activations. Per sample, the loops run over positions with
// all C channels innermost (contiguous in NHWC, so they vectorize): per-channel double sums around the
// sample's first values, combined into group sums with the same shift algebra as SyncBN (bn_math.h);
// then per-channel coefficients make the output and the input gradient one fma pass each.
class GroupNorm final : public Module {
 public:
  GroupNorm(const NormPlan& plan, ParamStore& store)
      : name_(plan.name),
        C_(plan.channels),
        G_(plan.spec.gn_groups),
        eps_(plan.spec.eps),
        relu_(plan.relu),
        store_(store),
        gamma_(plan.gamma.index),
        beta_(plan.beta.index) {
    const auto C = static_cast<std::size_t>(C_);
    s1_.resize(C);
    s2_.resize(C);
    ca_.resize(C);
    cb_.resize(C);
    cd_.resize(C);
  }

  void forward(const Tensor& x, Tensor& y, bool) override {
    check(x);
    const std::int64_t N = x.dim(0), S = x.numel() / std::max<std::int64_t>(N * C_, 1), Cg = C_ / G_;
    y.resize(x.shape(), x.layout());
    mean_.resize(static_cast<std::size_t>(N * G_));
    invstd_.resize(static_cast<std::size_t>(N * G_));
    const float* gamma = store_.value(gamma_);
    const float* beta = store_.value(beta_);
    const double M = static_cast<double>(S * Cg);
    for (std::int64_t n = 0; n < N; ++n) {
      const float* xs = x.data() + n * S * C_;
      channel_sums(xs, S, nullptr, nullptr);
      for (std::int64_t g = 0; g < G_; ++g) {
        // Move every channel's sums (around its own first value) to the group's first channel's.
        const double K = xs[g * Cg];
        double S1 = 0, S2 = 0;
        for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          double t1 = 0, t2 = 0;
          bn_shift_to_pivot(s1_[static_cast<std::size_t>(c)], s2_[static_cast<std::size_t>(c)], static_cast<double>(S),
                            xs[c], K, &t1, &t2);
          S1 += t1;
          S2 += t2;
        }
        double mean = 0, var = 0;
        bn_moments(S1, S2, M, K, &mean, &var);
        const double invstd = 1.0 / std::sqrt(var + eps_);
        mean_[static_cast<std::size_t>(n * G_ + g)] = mean;
        invstd_[static_cast<std::size_t>(n * G_ + g)] = invstd;
        for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {  // y = a·x + b per channel
          const double a = gamma[c] * invstd;
          ca_[static_cast<std::size_t>(c)] = static_cast<float>(a);
          cb_[static_cast<std::size_t>(c)] = static_cast<float>(beta[c] - a * mean);
        }
      }
      float* ys = y.data() + n * S * C_;
      const float* a = ca_.data();
      const float* b = cb_.data();
      for (std::int64_t s = 0; s < S; ++s) {
        const float* xp = xs + s * C_;
        float* yp = ys + s * C_;
        if (relu_) {
#pragma omp simd
          for (std::int64_t c = 0; c < C_; ++c) yp[c] = std::max(std::fma(a[c], xp[c], b[c]), 0.0f);
        } else {
#pragma omp simd
          for (std::int64_t c = 0; c < C_; ++c) yp[c] = std::fma(a[c], xp[c], b[c]);
        }
      }
    }
  }

  void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx) override {
    const std::int64_t N = x.dim(0), S = x.numel() / std::max<std::int64_t>(N * C_, 1), Cg = C_ / G_;
    if (dx) dx->resize(x.shape(), x.layout());
    const float* gamma = store_.value(gamma_);
    dgamma_acc_.assign(static_cast<std::size_t>(C_), 0.0);
    dbeta_acc_.assign(static_cast<std::size_t>(C_), 0.0);
    const double M = static_cast<double>(S * Cg);
    for (std::int64_t n = 0; n < N; ++n) {
      const float* xs = x.data() + n * S * C_;
      const float* ys = y.data() + n * S * C_;
      const float* gs = dy.data() + n * S * C_;
      // Per channel: A_c = Σdy', B_c = Σdy'·(x − k_c) (dy' = dy gated by the fused ReLU).
      channel_sums(xs, S, gs, relu_ ? ys : nullptr);
      for (std::int64_t g = 0; g < G_; ++g) {
        const double mean = mean_[static_cast<std::size_t>(n * G_ + g)];
        const double invstd = invstd_[static_cast<std::size_t>(n * G_ + g)];
        double sum_g = 0, sum_gx = 0;  // Σ g'·γ and Σ g'·γ·x̂ over the group
        for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const auto i = static_cast<std::size_t>(c);
          const double A = s1_[i];
          const double Bx = (s2_[i] + (static_cast<double>(xs[c]) - mean) * A) * invstd;  // Σdy'·x̂
          dgamma_acc_[i] += Bx;
          dbeta_acc_[i] += A;
          sum_g += gamma[c] * A;
          sum_gx += gamma[c] * Bx;
        }
        // dx = invstd·(γ·dy' − sum_g/M − x̂·sum_gx/M) = a·dy' + b·x + d per channel.
        for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const auto i = static_cast<std::size_t>(c);
          const double b = -invstd * invstd * sum_gx / M;
          ca_[i] = static_cast<float>(invstd * gamma[c]);
          cb_[i] = static_cast<float>(b);
          cd_[i] = static_cast<float>(-invstd * sum_g / M - b * mean);
        }
      }
      if (!dx) continue;
      float* ds = dx->data() + n * S * C_;
      const float* a = ca_.data();
      const float* b = cb_.data();
      const float* d = cd_.data();
      for (std::int64_t s = 0; s < S; ++s) {
        const float* xp = xs + s * C_;
        const float* gp = gs + s * C_;
        const float* yp = ys + s * C_;
        float* out = ds + s * C_;
#pragma omp simd
        for (std::int64_t c = 0; c < C_; ++c) {
          const float g = (!relu_ || yp[c] > 0.0f) ? gp[c] : 0.0f;
          out[c] = std::fma(a[c], g, std::fma(b[c], xp[c], d[c]));
        }
      }
    }
    for (std::int64_t c = 0; c < C_; ++c) {
      const std::size_t i = static_cast<std::size_t>(c);
      if (store_.fp64_grads()) {
        store_.grad64(gamma_)[c] += dgamma_acc_[i];
        store_.grad64(beta_)[c] += dbeta_acc_[i];
      } else {
        store_.grad(gamma_)[c] += static_cast<float>(dgamma_acc_[i]);
        store_.grad(beta_)[c] += static_cast<float>(dbeta_acc_[i]);
      }
    }
  }

  std::string describe() const override { return "gn" + std::to_string(G_) + (relu_ ? "+relu" : ""); }

 private:
  // One sample's per-channel sums over its S positions, in double, vectorized across channels:
  //  - forward (dy null): s1_ = Σ(x − k), s2_ = Σ(x − k)², k = the sample's first position;
  //  - backward: s1_ = Σdy', s2_ = Σdy'·(x − k) with dy' = dy where y > 0 (relu_ is passed as y).
  void channel_sums(const float* xs, std::int64_t S, const float* dy, const float* y) {
    double* s1 = s1_.data();
    double* s2 = s2_.data();
    std::fill(s1_.begin(), s1_.end(), 0.0);
    std::fill(s2_.begin(), s2_.end(), 0.0);
    const float* k = xs;
    for (std::int64_t s = 0; s < S; ++s) {
      const float* xp = xs + s * C_;
      if (!dy) {
#pragma omp simd
        for (std::int64_t c = 0; c < C_; ++c) {
          const double d = static_cast<double>(xp[c]) - static_cast<double>(k[c]);
          s1[c] += d;
          s2[c] += d * d;
        }
      } else {
        const float* gp = dy + s * C_;
        const float* yp = y ? y + s * C_ : nullptr;
#pragma omp simd
        for (std::int64_t c = 0; c < C_; ++c) {
          const double g = (!yp || yp[c] > 0.0f) ? static_cast<double>(gp[c]) : 0.0;
          s1[c] += g;
          s2[c] += g * (static_cast<double>(xp[c]) - static_cast<double>(k[c]));
        }
      }
    }
  }

  void check(const Tensor& x) const {
    SBN_CHECK((x.rank() == 2 || (x.rank() == 4 && x.layout() == Layout::kChannelsLast)) && x.dim(1) == C_,
              name_ + ": expects (N, " + std::to_string(C_) + ") or NHWC (N, " + std::to_string(C_) +
                  ", H, W), got " + syncbn::describe(x.shape(), x.layout()));
  }
  std::string name_;
  std::int64_t C_, G_;
  double eps_;
  bool relu_;
  ParamStore& store_;
  int gamma_ = -1, beta_ = -1;
  std::vector<double> mean_, invstd_;          // (N, G) of the last forward
  std::vector<double> dgamma_acc_, dbeta_acc_;  // (C) this backward's parameter gradients
  std::vector<double> s1_, s2_;                 // (C) per-channel sums of one sample
  std::vector<float> ca_, cb_, cd_;             // (C) per-channel coefficients of one sample
};

class Identity final : public Module {
 public:
  void forward(const Tensor& x, Tensor& y, bool) override { y = x; }
  void backward(const Tensor&, const Tensor&, const Tensor& dy, Tensor* dx) override {
    if (dx) *dx = dy;
  }
  std::string describe() const override { return "identity"; }
};

}  // namespace

ModulePtr make_norm(const NormPlan& plan, ParamStore& store, SyncGroup* group) {
  switch (plan.spec.kind) {
    case NormKind::kBatchNorm: return std::make_unique<BatchNormModule>(plan, store, group);
    case NormKind::kGroupNorm: return std::make_unique<GroupNorm>(plan, store);
    case NormKind::kNone: break;
  }
  if (plan.relu) return make_relu();
  return std::make_unique<Identity>();
}

ModulePtr make_norm_pool(const NormPlan& plan, std::int64_t k, ParamStore& store, SyncGroup* group,
                         ElementType out) {
  SBN_CHECK(plan.batchnorm() && k >= 1, plan.name + ": only BatchNorm fuses a max pooling (k >= 1), got " +
                                            describe(plan) + " with k = " + std::to_string(k));
  return std::make_unique<BatchNormModule>(plan, store, group, k, out);
}

ModulePtr make_norm(const std::string& name, std::int64_t channels, const NormSpec& spec, bool relu,
                    ParamStore& store, SyncGroup* group) {
  return make_norm(plan_norm(store, name, channels, spec, relu), store, group);
}

}  // namespace syncbn
