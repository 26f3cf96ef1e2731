// The GPU model's step status (cuda_train_model.h): ONE device array per model holds everything the host
// must learn at a step's end, so check() reads it with ONE device → host copy and ONE host wait:
//
//   [StepCounters]         Σ loss, #correct of the step's micro-batches, the first bad label
//   [BnStepStatus × L]     every BatchNorm layer's status words (CudaSyncBatchNorm::set_status_slot)
//   [GradCheck]            the step's verdict (step_check.h)
//   [LossScaleState]       fp16 dynamic loss scaling (loss_scale.h), kept across steps
//
// The first two parts are zeroed at each step's first train_micro (one memset), the verdict before the
// gradient check, the scale never. train_micro() does not wait: the loop reads the step's Σ loss and
// #correct after check() (TrainModel::step_totals). Everything here is plain host code, so the protocol
// (layout, decode, which failure is reported, one fetch per read) has host tests (test_step_status.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "step_check.h"
#include "syncbn/bn_layer.h"

namespace syncbn::cuda::train {

// Device counters of the step's training micro-batches (cross_entropy adds each micro-batch's sums), or of
// one eval batch.
struct StepCounters {
  double loss = 0;     // Σ per-sample loss
  double correct = 0;  // #correct predictions
  int status[3] = {0, 0, 0};  // cross_entropy: bad label flag, the label, the sample (first bad one sticks)
  int pad = 0;
};

// Byte offsets of the parts of a model's status array with `bn_layers` BatchNorm layers.
struct StepStatusLayout {
  int bn_layers = 0;
  std::size_t counters = 0;     // StepCounters
  std::size_t bn = 0;           // BnStepStatus[bn_layers]
  std::size_t check = 0;        // GradCheck
  std::size_t scale = 0;        // LossScaleState
  std::size_t reset_bytes = 0;  // [0, reset_bytes): the counters and the BN statuses, zeroed per step
  std::size_t bytes = 0;        // the whole array (one copy)
};
StepStatusLayout step_status_layout(int bn_layers);

// A host copy of the array, decoded.
struct StepStatusView {
  StepCounters counters;
  std::vector<BnStepStatus> bn;  // per BatchNorm layer, network order
  GradCheck check;
  LossScaleState scale;
};
StepStatusView decode_step_status(const void* bytes, const StepStatusLayout& layout);

// Which failure of a step is reported: the first the step met. A bad label (found by the loss, before the
// micro-batch's backward), then the BatchNorm layers in network order (a layer's forward status before its
// backward one: check_step_status). One error per step, as the layers' own check() gave.
struct StepFailure {
  enum Kind { kNone, kLabel, kBatchNorm } kind = kNone;
  int layer = -1;  // kBatchNorm: the index in network order
};
StepFailure first_step_failure(const StepStatusView& status);

// "cross-entropy: label L outside [0, classes) (sample S of this rank's batch)".
std::string label_error(const StepCounters& counters, std::int64_t classes);

// The host side of the step's one wait. `fetch(host, bytes)` enqueues the copy of the whole device array
// into `host` and waits for it (the model: cudaMemcpyAsync on its stream, then the communicator's
// synchronize, so a hung collective is reported by its watchdog); read() calls it exactly once.
//
// With a separate `wait`, `fetch` only enqueues the copy, and the two halves can also run apart: a whole
// step captured as a CUDA graph (step_graph.h) holds the copy (enqueue_copy() during the capture), and
// check() after each replay only waits (read_copied()). read() is then fetch + wait.
class StepStatusReader {
 public:
  using Fetch = std::function<void(void* host, std::size_t bytes)>;
  using Wait = std::function<void()>;
  StepStatusReader(const StepStatusLayout& layout, void* host, Fetch fetch);
  StepStatusReader(const StepStatusLayout& layout, void* host, Fetch copy, Wait wait);
  StepStatusView read();
  // Enqueues the copy only (into a graph being captured); throws for a reader whose fetch also waits.
  void enqueue_copy();
  // Waits for a copy enqueued elsewhere (a replayed graph's) and decodes it: one read, one wait, no copy.
  StepStatusView read_copied();
  std::int64_t fetches() const { return fetches_; }  // reads so far (tests: one per step)

 private:
  void require_split(const char* who) const;
  StepStatusLayout layout_;
  void* host_;  // layout_.bytes of (pinned) host memory
  Fetch fetch_;
  Wait wait_;  // empty: fetch_ waits too
  std::int64_t fetches_ = 0;
};

}  // namespace syncbn::cuda::train
