// The CPU model's gradient all-reduce overlapping the backward (grad_buckets.h): the flat fp32 gradient
// in reverse-order buckets, each started as a non-blocking all-reduce (Communicator::start_allreduce_sum)
// as soon as the backward has completed every parameter in it, and progressed after each module of the
// network's Sequential; reduce_and_update() starts the rest and waits for all before the step check.
// Only in the step's last micro-batch: earlier ones still add to the gradients.
//
// The sums are bitwise those of one all-reduce after the backward: MPI sums element-wise, so bucket
// boundaries do not change a value (test: train_checks.py "overlap"; SBN_GRAD_OVERLAP=0 turns it off).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "syncbn/communicator.h"
#include "syncbn/grad_buckets.h"
#include "syncbn/net_plan.h"

namespace syncbn {

class CpuGradOverlap {
 public:
  // `plan` built as `modules` top-level modules (build_network: a BatchNorm with a fused pool is one
  // module for two ops); `grads` the flat fp32 gradient of `total` elements; `comm` the gradient
  // communicator (the world).
  CpuGradOverlap(const NetPlan& plan, std::size_t modules, const ParamStore& params, float* grads,
                 Communicator& comm);

  // The step's last micro-batch begins (on) or ended without starting all (off: nothing more starts
  // from the hook).
  void arm(bool on) { armed_ = on; }
  // After module k's backward: complete its parameters, start the due buckets, progress the started ones.
  void module_done(std::size_t k);
  // Starts every bucket not started yet and waits for all (bucket order); returns the seconds spent in
  // the all-reduce since the step's first bucket started (inside start/test/wait calls) and resets.
  double finish(Communicator& comm);
  std::size_t buckets() const { return schedule_.buckets().size(); }

 private:
  void start(const std::vector<int>& ids);

  Communicator& comm_;
  float* grads_;
  BucketSchedule schedule_;
  std::vector<std::vector<std::int64_t>> module_params_;  // per module: offsets of its parameters
  std::vector<Communicator::Request> requests_;          // per started bucket, in bucket order
  std::size_t tested_ = 0;  // buckets before this one completed (known from test())
  double seconds_ = 0;      // inside start/test this step
  bool armed_ = false;
};

// Whether the CPU model overlaps its gradient all-reduce: fp32 gradients, more than one rank, and not
// turned off with SBN_GRAD_OVERLAP=0 (the same on every rank: the bucket plan must match).
bool cpu_grad_overlap_enabled(bool fp64_grads, int world_size);

}  // namespace syncbn
