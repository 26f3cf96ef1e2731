// The host-side rules of a whole training step captured as a CUDA graph (CudaTrainModel::capture_step,
// replay_step; docs/GPU.md "Whole-step CUDA graphs"). Plain host code: host tests in test_gpu_train.cpp.
//
// What the rules protect:
//  - capture only after an eager step was checked: buffers, the cuDNN algorithm choices and workspace,
//    the lazily loaded kernels are all set up by the first step of a shape, and none of that is capturable
//    (cudaMalloc/cudaFree, algorithm queries that synchronise);
//  - capture only between steps (no micro-batch of an open step), with at most one micro-batch per step
//    (the graph holds one train_micro + reduce_and_update) and a communicator that is stream-ordered (the
//    staged --comm mpi one waits on the host in every collective);
//  - one replay in flight at a time, each followed by check(): a replay writes the step-status array's copy
//    into the model's one pinned buffer and reads the input from the one pinned staging buffer, so the next
//    replay (or an eager micro-batch, which would add to the replay's counters) must wait for that check().
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "syncbn/error.h"

namespace syncbn::cuda::train {

class StepGraphState {
 public:
  // An eager training micro-batch of n samples ran (its shapes are set up: buffers, cuDNN algorithms).
  void eager_micro(std::int64_t n) { eager_sizes_.insert(n); }
  // check() of an eager step ran.
  void eager_step_checked() { ++eager_checked_; }
  // Throws the reason a capture of an n-sample step cannot start now; `staged` is the host-synchronous
  // --comm mpi communicator.
  void require_capturable(bool step_open, std::int64_t micro_batches, bool staged, std::int64_t n) const {
    SBN_CHECK(!staged, "capture_step: the staged communicator (--comm mpi) waits on the host in every collective and "
                       "cannot be captured into a CUDA graph; use --comm nccl");
    SBN_CHECK(eager_checked_ > 0 && eager_sizes_.count(n) > 0,
              "capture_step: run one eager step (train_micro, reduce_and_update, check) with the same shapes first (" +
                  std::to_string(n) + " samples): buffers, cuDNN algorithms and workspace are set up there");
    SBN_CHECK(!step_open, "capture_step: a step is open (train_micro ran without reduce_and_update)");
    SBN_CHECK(micro_batches <= 1, "capture_step: set_micro_batches(" + std::to_string(micro_batches) +
                                      ") declared; a captured step holds one micro-batch");
    SBN_CHECK(!pending_, "capture_step: the last replay has not been checked (call check() first)");
  }
  void captured() { graph_ = true; }
  void released() { graph_ = false; }
  bool has_graph() const { return graph_; }
  // Before a replay: a graph exists and the previous replay was checked.
  void replaying() {
    SBN_CHECK(graph_, "replay_step: no step graph (capture_step first)");
    SBN_CHECK(!pending_, "replay_step: the last replay has not been checked (call check() after each replay)");
    pending_ = true;
    ++replays_;
  }
  // Before an eager micro-batch (its counters would be added to the pending replay's).
  void require_no_pending(const char* who) const {
    SBN_CHECK(!pending_, std::string(who) + ": a replayed step has not been checked (call check() first)");
  }
  // A replay waits for check(), which then reads the status copy the graph made (no copy of its own).
  bool pending() const { return pending_; }
  void replay_checked() { pending_ = false; }
  std::int64_t replays() const { return replays_; }

 private:
  std::int64_t eager_checked_ = 0;
  std::set<std::int64_t> eager_sizes_;  // micro-batch sizes trained eagerly
  std::int64_t replays_ = 0;
  bool graph_ = false;
  bool pending_ = false;
};

}  // namespace syncbn::cuda::train
