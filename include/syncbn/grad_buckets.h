// Gradient buckets that overlap the backward pass (PyTorch DDP's scheme), for both devices.
//
// The flat gradient is cut into buckets in REVERSE parameter order: bucket 0 holds the last elements,
// whose gradients the backward produces first. As the backward completes parameters (the GPU layers
// report it, NetContext::grads_done; the CPU model after each module of its Sequential), a bucket is due
// once every parameter overlapping it is complete, and the model starts its all-reduce while the backward
// goes on: on a communication stream after an event (GPU, NCCL), or as a non-blocking MPI all-reduce
// progressed between layers (CPU, Communicator::start_allreduce_sum).
//
// Launch order is bucket order, on every rank (a bucket that completes before an earlier one waits for
// it): the ranks run the same plan, and NCCL and MPI need the same collectives in the same order
// everywhere. Plain host code (host tests: tests/gpu/test_step_status.cpp; the CPU overlap end to end:
// tests/train/train_checks.py overlap).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace syncbn {

struct GradBucket {
  std::int64_t offset = 0;  // first element in the flat gradient
  std::int64_t count = 0;   // elements
};

// Buckets over `total` elements in reverse order: the first (the array's tail) of at most first_max
// elements (small, so the first all-reduce starts early, as DDP's first bucket), the others of at most
// `max`. Boundaries ignore parameters (a parameter may span two buckets). Covers [0, total) exactly.
std::vector<GradBucket> reverse_buckets(std::int64_t total, std::int64_t first_max, std::int64_t max);

// Which buckets are due as the backward completes parameters.
class BucketSchedule {
 public:
  // params: every parameter's (offset, size) in the flat array (any order, disjoint); buckets: as above.
  BucketSchedule(const std::vector<std::pair<std::int64_t, std::int64_t>>& params, std::vector<GradBucket> buckets);

  // Marks the parameter at `offset` complete (again: no effect); throws for an offset no parameter has.
  void complete(std::int64_t offset);
  // The buckets due now, in bucket order, marked launched: from the first unlaunched one on, each whose
  // parameters are all complete, stopping at the first that is not.
  std::vector<int> take_ready();
  // Every bucket not launched yet, in order, marked launched (the end of the backward: all are due).
  std::vector<int> take_rest();
  // The next step: nothing complete, nothing launched.
  void reset();

  const std::vector<GradBucket>& buckets() const { return buckets_; }
  int launched() const { return next_; }

 private:
  std::vector<std::pair<std::int64_t, std::int64_t>> params_;  // sorted by offset
  std::vector<GradBucket> buckets_;
  std::vector<std::vector<int>> param_buckets_;  // per parameter: the buckets it overlaps
  std::vector<int> bucket_params_;               // per bucket: how many parameters overlap it
  std::vector<int> pending_;                     // per bucket: overlapping parameters not yet complete
  std::vector<char> done_;                       // per parameter
  int next_ = 0;                                 // first bucket not launched
};

}  // namespace syncbn
