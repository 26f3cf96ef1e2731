// TrainModel: what the training loop (src/train/trainer.cpp) needs from a network, whatever device runs
// it. The loop owns the data, the sampler, the schedule, evaluation sharding, logging and checkpoint
// files; a TrainModel owns the parameters, the optimizer state, the layers and where they compute.
// Implementations: CpuTrainModel (src/train/cpu_train_model.cpp, oneDNN + our CPU kernels) and the CUDA
// one (src/cuda/train/, cuDNN/cuBLAS + our CUDA kernels), chosen at run time by --device.
//
// Invariants the loop relies on (DESIGN.md §4):
//  - train_micro() accumulates parameter gradients; reduce_and_update() SUM-all-reduces them over the
//    world in a few large buckets, applies the optimizer and zeroes them. Each sample's loss gradient is
//    scaled by grad_scale = 1/B (global batch), so the sum over ranks is the global batch's gradient.
//  - A rank with no samples still calls train_micro() (n = 0) when the normalization communicates, so
//    its peers are never left waiting in a SyncBN all-reduce.
//  - state() lists every array a bitwise resume needs, as host memory, in a fixed order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "syncbn/communicator.h"
#include "syncbn/net_plan.h"
#include "syncbn/param_store.h"

namespace syncbn {

// One array of the checkpointed state, in host memory (valid between state_to_host() and the next
// training call, or before state_from_host()).
enum class StateType { kF32, kF64, kI64 };
struct StateArray {
  std::string name;  // "param:conv1.weight", "momentum", "buffer:conv1.bn.running_mean", ...
  void* data = nullptr;
  std::size_t bytes = 0;
  StateType type = StateType::kF32;  // element type: checkpoints refuse non-finite floating-point state
};

// What became of one optimizer step (TrainModel::last_step()). The checks run on the all-reduced
// gradients, which are bitwise the same on every rank (a NaN or Inf on any rank reaches every rank's
// sum), so every rank reaches the same outcome without a collective of its own.
struct StepResult {
  enum class Outcome {
    kCommitted,  // parameters, optimizer state and BN running statistics moved
    kSkipped,    // fp16 loss-scale overflow: nothing moved (running statistics restored), training goes on
    kNonFinite,  // a reduced gradient is NaN/Inf: nothing moved; the trainer stops with an error
  };
  Outcome outcome = Outcome::kCommitted;
  std::string nonfinite;  // kNonFinite: the first parameter (in parameter order) with a non-finite gradient
};

class TrainModel {
 public:
  virtual ~TrainModel() = default;

  // "convnet: conv3x3(1->32) -> bn[sync]+relu -> ...", the device it runs on, parameter count.
  virtual std::string describe() const = 0;
  virtual std::string device() const = 0;
  virtual std::int64_t num_params() const = 0;
  virtual int num_syncbn_layers() const = 0;
  // Architecture plus the names and shapes of every parameter and buffer: equal iff checkpoints fit.
  virtual std::string signature() const = 0;

  // Forward, softmax cross-entropy and backward of n samples: images host (n, C, H, W) fp32 planar,
  // labels host (n). Accumulates parameter gradients. The loop passes null loss_sum/correct and reads the
  // step's sums with step_totals() after check(): a device model then does not wait for the device per
  // micro-batch. Non-null, they receive this micro-batch's Σ loss and #correct (added), at the cost of a
  // host wait on a device (tests).
  virtual void train_micro(const float* images, const std::int32_t* labels, std::int64_t n, float grad_scale,
                           double* loss_sum, std::int64_t* correct) = 0;
  // Σ loss and #correct over every train_micro() of the step the last check() ended (0 if none ran).
  virtual void step_totals(double* loss_sum, std::int64_t* correct) const = 0;
  // The number of train_micro() calls of every step from now on (the loop's --accum; 0, the default:
  // unknown). A model then starts the gradient all-reduce during the last one's backward (bucket by
  // bucket, overlapping it: the GPU model with NCCL, the CPU model with fp32 gradients and more than one
  // rank); a step with more calls than that is an error there. A rank may make fewer
  // (no samples, local statistics): its all-reduce then starts in reduce_and_update.
  virtual void set_micro_batches(std::int64_t count) { (void)count; }
  // Gradient all-reduce over `world`, then - only if every reduced gradient is finite - the optimizer
  // update with learning rate lr and the BN running-statistics updates of this step's forwards; else
  // nothing of the step is kept (last_step() says which). Gradients are zeroed either way. Returns the
  // seconds spent in the gradient all-reduce.
  virtual double reduce_and_update(Communicator& world, double lr) = 0;
  // Eval-mode forward (running statistics, no communication) of n samples: adds Σ loss and #correct.
  virtual void evaluate(const float* images, const std::int32_t* labels, std::int64_t n, double* loss_sum,
                        std::int64_t* correct) = 0;
  // Seconds spent in SyncBN collectives since the last call.
  virtual double take_syncbn_comm_seconds() = 0;
  // Local BN: every rank adopts the average over ranks of the running statistics (README).
  virtual void average_running_stats(Communicator& world) = 0;

  // ---- PreciseBN (README "PreciseBN"): begin_bn_population(), then population_forward() for each of this
  // rank's slices of the batches (also with n = 0 when the normalization communicates), then
  // finish_bn_population(world) on every rank. The forwards run in training mode without loss or backward
  // and move no running statistics; finish sets every BN layer's running mean and unbiased variance to the
  // statistics of all the values it saw on all ranks (ONE world all-reduce per layer).
  virtual void begin_bn_population() = 0;
  virtual void population_forward(const float* images, const std::int32_t* labels, std::int64_t n) = 0;
  virtual void finish_bn_population(Communicator& world) = 0;

  // ---- Batch Renormalization (--bn-renorm): the limits r_max ≥ 1, d_max ≥ 0 every BatchNorm layer
  // renormalizes with from the next training forward on (the trainer sets each step's, NormSpec::renorm_limits).
  // Only for a model whose norm spec has renorm; throws otherwise.
  virtual void set_renorm_limits(double rmax, double dmax) = 0;

  // Ends a step: raises deferred errors (a device model's status array: a bad label, the BN layers'
  // status words) and makes step_totals() and last_step() this step's. A device waits here, once.
  virtual void check() = 0;
  // The outcome of the last reduce_and_update(); valid after check() (a device reads it at that wait).
  virtual StepResult last_step() const = 0;

  // Checkpointed state as host arrays; state_to_host() before reading them (save), state_from_host()
  // after writing them (load).
  virtual std::vector<StateArray> state() = 0;
  virtual void state_to_host() {}
  virtual void state_from_host() {}
};

// What every device's TrainModel shares, written once: the network plan (net_plan.h) and its host
// parameter store (the layout; the CPU model computes in it, the GPU model mirrors it on the device),
// hence the signature, the parameter count and the description; the checkpoint state's names and order;
// the gradient buckets; and the naming of a non-finite step.
class PlannedTrainModel : public TrainModel {
 public:
  std::string signature() const override { return plan_.signature; }
  std::int64_t num_params() const override { return params_.total(); }

 protected:
  // Plans spec's network and sets the initial parameter values from `seed`.
  PlannedTrainModel(const ModelSpec& spec, std::uint64_t seed);

  // "convnet: conv3x3(1->32) -> bn[sync]+relu -> ...".
  std::string describe_network() const;
  // The step's verdict from the reduced gradients' first NaN/Inf (flat index; -1: none): committed, or
  // non-finite naming the parameter.
  StepResult verdict(std::int64_t first_nonfinite) const;
  // The checkpointed arrays, in the order and with the names every checkpoint has: "params" and
  // "momentum" (`total` floats each), then "buffer:<name>" for each of the plan's buffers.
  std::vector<StateArray> state_arrays(float* params, float* momentum, const std::vector<BufferRef>& buffers) const;
  // The gradient all-reduce's buckets over `total` elements of `elem_bytes` each: [offset, count) pairs of
  // at most `max_bytes`, in order (few collectives, bounded message size).
  static std::vector<std::pair<std::int64_t, std::int64_t>> buckets(std::int64_t total, std::size_t elem_bytes,
                                                                    std::size_t max_bytes);

  ModelSpec spec_;
  ParamStore params_;
  NetPlan plan_;
};

}  // namespace syncbn
