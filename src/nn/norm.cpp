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
// added out after backward - C floats each way), everything else in the layer.
class BatchNormModule final : public Module {
 public:
  BatchNormModule(const std::string& name, std::int64_t channels, const NormSpec& spec, bool relu,
                  ParamStore& store)
      : store_(store) {
    BatchNormOptions opt;
    opt.channels = channels;
    opt.eps = spec.eps;
    opt.momentum = spec.momentum;
    opt.fuse_relu = relu;
    opt.ghost_batch = spec.ghost_batch;
    SyncGroup* group = spec.kind == "local" ? nullptr : spec.group;
    SBN_CHECK(spec.kind == "local" || group, name + ": a synced BatchNorm needs a sync group");
    bn_ = std::make_unique<SyncBatchNorm>(name, opt, group);
    gamma_ = store.add(name + ".weight", {channels}, false, ParamInit::kOnes);
    beta_ = store.add(name + ".bias", {channels}, false, ParamInit::kZeros);
    mode_ = spec.kind == "local" ? "local" : group->mode().str();
  }

  void forward(const Tensor& x, Tensor& y, bool training) override {
    const std::int64_t C = bn_->options().channels;
    std::copy(store_.value(gamma_), store_.value(gamma_) + C, bn_->gamma().begin());
    std::copy(store_.value(beta_), store_.value(beta_) + C, bn_->beta().begin());
    bn_->forward(x, y, training);
  }

  void backward(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx) override {
    Tensor scratch;
    bn_->backward(x, dy, dx ? *dx : scratch);
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
  std::string describe() const override {
    return "bn[" + mode_ + "]" + (bn_->options().fuse_relu ? "+relu" : "");
  }

 private:
  ParamStore& store_;
  std::unique_ptr<SyncBatchNorm> bn_;
  int gamma_ = -1, beta_ = -1;
  std::string mode_;
};

// GroupNorm over NHWC (N, C, H, W) or (N, C) activations.
class GroupNorm final : public Module {
 public:
  GroupNorm(const std::string& name, std::int64_t channels, std::int64_t groups, double eps, bool relu,
            ParamStore& store)
      : name_(name), C_(channels), G_(groups), eps_(eps), relu_(relu), store_(store) {
    SBN_CHECK(groups > 0 && channels % groups == 0,
              name + ": --gn-groups " + std::to_string(groups) + " must divide the channel count " +
                  std::to_string(channels));
    gamma_ = store.add(name + ".weight", {channels}, false, ParamInit::kOnes);
    beta_ = store.add(name + ".bias", {channels}, false, ParamInit::kZeros);
  }

  void forward(const Tensor& x, Tensor& y, bool) override {
    check(x);
    const std::int64_t N = x.dim(0), S = x.numel() / std::max<std::int64_t>(N * C_, 1), Cg = C_ / G_;
    y.resize(x.shape(), x.layout());
    mean_.resize(static_cast<std::size_t>(N * G_));
    invstd_.resize(static_cast<std::size_t>(N * G_));
    const float* gamma = store_.value(gamma_);
    const float* beta = store_.value(beta_);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t g = 0; g < G_; ++g) {
        const float* base = x.data() + n * S * C_ + g * Cg;
        const double k = base[0];
        double s1 = 0, s2 = 0;
        for (std::int64_t s = 0; s < S; ++s)
          for (std::int64_t c = 0; c < Cg; ++c) {
            const double d = base[s * C_ + c] - k;
            s1 += d;
            s2 += d * d;
          }
        const double M = static_cast<double>(S * Cg), m1 = s1 / M;
        const double var = std::max(s2 / M - m1 * m1, 0.0);
        const double mean = k + m1, invstd = 1.0 / std::sqrt(var + eps_);
        mean_[static_cast<std::size_t>(n * G_ + g)] = mean;
        invstd_[static_cast<std::size_t>(n * G_ + g)] = invstd;
        float* out = y.data() + n * S * C_ + g * Cg;
        for (std::int64_t s = 0; s < S; ++s)
          for (std::int64_t c = 0; c < Cg; ++c) {
            const std::int64_t ch = g * Cg + c;
            const float v = static_cast<float>((base[s * C_ + c] - mean) * invstd) * gamma[ch] + beta[ch];
            out[s * C_ + c] = relu_ ? std::max(v, 0.0f) : v;
          }
      }
  }

  void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx) override {
    const std::int64_t N = x.dim(0), S = x.numel() / std::max<std::int64_t>(N * C_, 1), Cg = C_ / G_;
    if (dx) dx->resize(x.shape(), x.layout());
    const float* gamma = store_.value(gamma_);
    dgamma_acc_.assign(static_cast<std::size_t>(C_), 0.0);
    dbeta_acc_.assign(static_cast<std::size_t>(C_), 0.0);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t g = 0; g < G_; ++g) {
        const std::size_t i = static_cast<std::size_t>(n * G_ + g);
        const double mean = mean_[i], invstd = invstd_[i];
        const std::int64_t off = n * S * C_ + g * Cg;
        // g' = dy (gated by the fused ReLU) · γ; dx = invstd·(g' − mean(g') − x̂·mean(g'·x̂)).
        double sum_g = 0, sum_gx = 0;
        for (std::int64_t s = 0; s < S; ++s)
          for (std::int64_t c = 0; c < Cg; ++c) {
            const std::int64_t j = off + s * C_ + c, ch = g * Cg + c;
            const double d = (relu_ && y.data()[j] <= 0.0f) ? 0.0 : dy.data()[j];
            const double xhat = (x.data()[j] - mean) * invstd;
            dgamma_acc_[static_cast<std::size_t>(ch)] += d * xhat;
            dbeta_acc_[static_cast<std::size_t>(ch)] += d;
            sum_g += d * gamma[ch];
            sum_gx += d * gamma[ch] * xhat;
          }
        if (!dx) continue;
        const double M = static_cast<double>(S * Cg);
        for (std::int64_t s = 0; s < S; ++s)
          for (std::int64_t c = 0; c < Cg; ++c) {
            const std::int64_t j = off + s * C_ + c, ch = g * Cg + c;
            const double d = (relu_ && y.data()[j] <= 0.0f) ? 0.0 : dy.data()[j];
            const double xhat = (x.data()[j] - mean) * invstd;
            dx->data()[j] = static_cast<float>(invstd * (d * gamma[ch] - sum_g / M - xhat * sum_gx / M));
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
  std::vector<double> mean_, invstd_;  // (N, G) of the last forward
  std::vector<double> dgamma_acc_, dbeta_acc_;
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

ModulePtr make_norm(const std::string& name, std::int64_t channels, const NormSpec& spec, bool relu,
                    ParamStore& store) {
  if (spec.kind == "sync" || spec.kind == "local")
    return std::make_unique<BatchNormModule>(name, channels, spec, relu, store);
  if (spec.kind == "groupnorm")
    return std::make_unique<GroupNorm>(name, channels, spec.gn_groups, spec.eps, relu, store);
  SBN_CHECK(spec.kind == "none", "unknown normalization '" + spec.kind + "'");
  if (relu) return make_relu();
  return std::make_unique<Identity>();
}

}  // namespace syncbn
