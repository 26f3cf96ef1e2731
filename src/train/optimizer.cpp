#include "syncbn/optimizer.h"

#include <cmath>
#include <sstream>

namespace syncbn {

Sgd::Sgd(ParamStore& params, double momentum, double weight_decay, bool nesterov, bool decay_norm_bias)
    : params_(params), momentum_(momentum), weight_decay_(weight_decay), nesterov_(nesterov) {
  decay_.assign(static_cast<std::size_t>(params.total()), 0.0f);
  for (const auto& p : params.all())
    if (p.decay || decay_norm_bias)
      std::fill(decay_.begin() + p.offset, decay_.begin() + p.offset + p.size, static_cast<float>(weight_decay));
  buf_.assign(static_cast<std::size_t>(params.total()), 0.0f);
}

void Sgd::step(double lr) {
  float* w = params_.values().data();
  const float* g = params_.grads().data();
  float* b = buf_.data();
  const float* wd = decay_.data();
  const float mu = static_cast<float>(momentum_), eta = static_cast<float>(lr);
  const std::int64_t n = params_.total();
  if (nesterov_) {
    for (std::int64_t i = 0; i < n; ++i) {
      const float gi = g[i] + wd[i] * w[i];
      b[i] = mu * b[i] + gi;
      w[i] -= eta * (gi + mu * b[i]);
    }
  } else {
    for (std::int64_t i = 0; i < n; ++i) {
      const float gi = g[i] + wd[i] * w[i];
      b[i] = mu * b[i] + gi;
      w[i] -= eta * b[i];
    }
  }
}

double learning_rate(const TrainConfig& cfg, std::int64_t step, std::int64_t steps_per_epoch, std::int64_t total_steps) {
  if (step < cfg.warmup_steps) return cfg.lr * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup_steps);
  if (cfg.lr_schedule == "constant") return cfg.lr;
  if (cfg.lr_schedule == "cosine") {
    const double span = static_cast<double>(std::max<std::int64_t>(total_steps - cfg.warmup_steps, 1));
    const double t = std::min(1.0, static_cast<double>(step - cfg.warmup_steps) / span);
    return cfg.lr * 0.5 * (1.0 + std::cos(3.141592653589793 * t));
  }
  // step decay at epoch milestones (default: 50% and 75% of the epochs)
  std::vector<double> milestones;
  if (cfg.lr_steps.empty()) {
    milestones = {0.5 * static_cast<double>(cfg.epochs), 0.75 * static_cast<double>(cfg.epochs)};
  } else {
    std::stringstream ss(cfg.lr_steps);
    std::string item;
    while (std::getline(ss, item, ',')) milestones.push_back(std::stod(item));
  }
  const double epoch = static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(steps_per_epoch, 1));
  double lr = cfg.lr;
  for (double m : milestones)
    if (epoch >= m) lr *= cfg.lr_gamma;
  return lr;
}

}  // namespace syncbn
