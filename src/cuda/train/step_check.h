// The end-of-step check of the GPU model (TrainModel::last_step(), train_model.h), decided on the device
// so that a step keeps its one host wait (check()):
//
//   grad_check:    every thread finds its first NaN/Inf in the all-reduced flat gradient (grad_first_bad),
//                  a warp minimum, one atomicMin per warp into GradCheck::first_bad: the flat index of the
//                  first non-finite gradient, hence (offsets follow the parameter order) its parameter;
//   sgd_step:      skips the update of every element unless step_commits() (gradients zeroed either way);
//   bn_state_restore: every BatchNorm layer's running mean/var, pivot and num_batches_tracked back to
//                  their copy from the step's first forward (bn_state_save) unless step_commits();
//   step_finish:   one thread: the verdict (step_verdict) and the fp16 loss-scale update.
//
// The reduced gradients are bitwise the same on every rank (a NaN or Inf on one rank reaches every sum),
// so every rank reaches the same verdict with no collective of its own. What a thread does is here, as
// host+device functions, so tests/gpu/test_gpu_train.cpp runs it on the CPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "loss_scale.h"

namespace syncbn::cuda::train {

constexpr unsigned long long kNoBadGradient = ~0ull;

// The device word of a step's check. Reset (all bits set) before grad_check; read by check().
struct GradCheck {
  unsigned long long first_bad = kNoBadGradient;  // smallest flat index of a NaN/Inf reduced gradient
  int outcome = 0;                                // a StepVerdict, written by step_finish
  int pad = 0;
};

// The order of StepResult::Outcome.
enum StepVerdict : int { kStepCommitted = 0, kStepSkipped = 1, kStepNonFinite = 2 };

// The step keeps its update and its running statistics iff no reduced gradient is NaN/Inf.
SBN_HD bool step_commits(const GradCheck& check) { return check.first_bad == kNoBadGradient; }

// A non-finite gradient is a skipped step only under fp16 loss scaling with room to back off (scale above
// its minimum: the overflow may be the scale's doing); at the minimum scale, or without loss scaling
// (fp32/bf16: nothing to back off), it is a real non-finite gradient.
SBN_HD int step_verdict(bool commits, const LossScaleState* scale, const LossScaleConfig& config) {
  if (commits) return kStepCommitted;
  return scale != nullptr && scale->scale > config.min_scale ? kStepSkipped : kStepNonFinite;
}

// After the update: records the verdict, and with loss scaling moves the scale (backs off on a skipped
// step, counts a good one). A non-finite step leaves the scale as it was: nothing of it is kept.
SBN_HD void step_finish(GradCheck* check, LossScaleState* scale, const LossScaleConfig& config) {
  const int verdict = step_verdict(step_commits(*check), scale, config);
  check->outcome = verdict;
  if (scale != nullptr && verdict != kStepNonFinite) {
    scale->found_inf = verdict == kStepSkipped;
    loss_scale_update(scale, config);
  }
}

// The first NaN/Inf among grad[start], grad[start + stride], ... below n (one grid-stride thread), or
// kNoBadGradient.
SBN_HD unsigned long long grad_first_bad(const float* grad, std::int64_t n, std::int64_t start, std::int64_t stride) {
  for (std::int64_t e = start; e < n; e += stride)
    if (!std::isfinite(grad[e])) return static_cast<unsigned long long>(e);
  return kNoBadGradient;
}

// A BatchNorm layer's running state (the layer's device arrays) and its copy from the step's first
// forward (the model's).
struct BnStateLink {
  float* running_mean = nullptr;          // (C)
  float* running_var = nullptr;           // (C)
  double* pivot = nullptr;                // (C)
  std::int64_t* batches_tracked = nullptr;  // (1)
  float* saved_mean = nullptr;            // (C)
  float* saved_var = nullptr;             // (C)
  double* saved_pivot = nullptr;          // (C)
  std::int64_t* saved_tracked = nullptr;  // (1)
  std::int64_t channels = 0;
};

// Element i ∈ [0, C] of a layer's state (channel i; i == C: the counter), live → copy.
SBN_HD void bn_state_save_element(const BnStateLink& k, std::int64_t i) {
  if (i < k.channels) {
    k.saved_mean[i] = k.running_mean[i];
    k.saved_var[i] = k.running_var[i];
    k.saved_pivot[i] = k.pivot[i];
  } else {
    *k.saved_tracked = *k.batches_tracked;
  }
}

// Element i ∈ [0, C] of a layer's state back from the copy when the step does not commit.
SBN_HD void bn_state_restore_element(const BnStateLink& k, std::int64_t i, const GradCheck& check) {
  if (step_commits(check)) return;
  if (i < k.channels) {
    k.running_mean[i] = k.saved_mean[i];
    k.running_var[i] = k.saved_var[i];
    k.pivot[i] = k.saved_pivot[i];
  } else {
    *k.batches_tracked = *k.saved_tracked;
  }
}

}  // namespace syncbn::cuda::train
