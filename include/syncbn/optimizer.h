// SGD with momentum (optionally Nesterov) and decoupled-from-norm weight decay, PyTorch's semantics:
//   g = grad + wd·w (wd only on parameters marked decay), buf = μ·buf + g,
//   w -= lr·(g + μ·buf) with Nesterov, w -= lr·buf without.
// The learning-rate schedule: linear warm-up from 0, then cosine to 0, step decay, or constant.
#pragma once

#include <cstdint>
#include <vector>

#include "syncbn/param_store.h"
#include "syncbn/train_config.h"

namespace syncbn {

class Sgd {
 public:
  Sgd(ParamStore& params, double momentum, double weight_decay, bool nesterov, bool decay_norm_bias);
  // One update from the (already all-reduced) gradients in the store.
  void step(double lr);
  std::vector<float>& momentum_buffer() { return buf_; }

 private:
  ParamStore& params_;
  double momentum_, weight_decay_;
  bool nesterov_;
  std::vector<float> decay_;  // per element: weight decay factor (0 for norm parameters and biases)
  std::vector<float> buf_;
};

// Learning rate of optimizer step `step` (0-based) out of `total_steps`.
double learning_rate(const TrainConfig& cfg, std::int64_t step, std::int64_t steps_per_epoch, std::int64_t total_steps);

}  // namespace syncbn
