// Dynamic loss scaling for --precision fp16 (Micikevicius et al. 2018; PyTorch's GradScaler policy).
//
// fp16 has 5 exponent bits: gradients below 6·10⁻⁸ flush to zero. The loss gradient is therefore
// multiplied by a scale S (a power of two, so scaling and unscaling are exact), every activation gradient
// carries the factor S, and the parameter gradients are divided by S after the all-reduce (inside the
// optimizer kernel). If any summed gradient is inf or NaN the step is skipped (parameters, momentum and
// BatchNorm running statistics untouched, gradients zeroed) and S is halved; after `interval` good steps
// in a row S doubles. At the minimum S an inf/NaN is not the scale's doing: the step is non-finite and
// training stops (step_check.h has the verdict).
//
// The state lives on the device and is updated by a one-thread kernel at the end of each step, so no host
// synchronisation is needed: the loss kernel and the optimizer read S from device memory in stream order.
// Every rank takes the same decision because it inspects the all-reduced (identical) gradients: an
// overflow on one rank makes the sum non-finite everywhere. The host reads the state at the end of a step
// (check()) for reporting only. The update rule below is the one the kernel runs (host+device), so it is
// unit-tested on the CPU.
#pragma once

#include <cstdint>

#include "syncbn/bn_math.h"  // SBN_HD

namespace syncbn::cuda::train {

struct LossScaleConfig {
  float initial = 65536.0f;   // 2^16, PyTorch's default
  float growth = 2.0f;
  float backoff = 0.5f;
  int interval = 2000;        // good steps before growing
  float min_scale = 1.0f;     // never below 1 (below it, scaling would only lose range)
  float max_scale = 16777216.0f;  // 2^24: far above any useful value, keeps S finite
};

struct LossScaleState {
  float scale = 1.0f;
  int found_inf = 0;             // set by the gradient check of the current step, cleared by the update
  int good_steps = 0;            // finite steps since the last change of scale
  std::int64_t steps = 0;        // updates so far
  std::int64_t skipped = 0;      // steps skipped because of inf/NaN gradients
};

SBN_HD LossScaleState loss_scale_initial(const LossScaleConfig& c) {
  LossScaleState s;
  s.scale = c.initial;
  return s;
}

// End of a step: account for found_inf (already set or not by this step's gradient check) and move S.
SBN_HD void loss_scale_update(LossScaleState* s, const LossScaleConfig& c) {
  ++s->steps;
  if (s->found_inf) {
    ++s->skipped;
    s->good_steps = 0;
    const float next = s->scale * c.backoff;
    s->scale = next < c.min_scale ? c.min_scale : next;
  } else if (++s->good_steps >= c.interval) {
    s->good_steps = 0;
    const float next = s->scale * c.growth;
    s->scale = next > c.max_scale ? c.max_scale : next;
  }
  s->found_inf = 0;
}

}  // namespace syncbn::cuda::train
