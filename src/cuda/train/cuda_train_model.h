// CudaTrainModel: the CUDA implementation of TrainModel (train_model.h) — the network of model.h on this
// rank's GPU. make_cuda_train_model() (syncbn/cuda/train_model.h) is how the loop makes one; tests use the
// class directly for its extra hooks (gradients, loss-scale state).
//
// What runs where (docs/GPU.md, "Training on the GPU"):
//  - activations NHWC on the device in the --precision dtype; convolutions on cuDNN, fully connected
//    layers on cuBLAS, BatchNorm on CudaSyncBatchNorm (one NCCL all-reduce per layer and direction for
//    sync / sync:K), the rest on our kernels (kernels.h);
//  - parameters, gradients, momentum and per-element weight decay in four flat fp32 device arrays in the
//    ParamStore layout (the CPU model's: same names, shapes, offsets and initial values for a seed), so
//    gradients are SUM-all-reduced in a few large NCCL buckets and state() is the CPU model's state;
//  - one CUDA stream for everything (the NcclCommunicator's), so every collective is stream-ordered and
//    issued in program order, the same on every rank.
//
// Host synchronisation, all of it:
//  - end of train_micro()/evaluate(): the batch's Σ loss and #correct (16 bytes) — the TrainModel
//    interface returns them per call (the loop's per-micro-batch `correct` counter is a local);
//  - check() (end of step): the SyncBN status words, the step's verdict (step_check.h), the fp16 loss
//    scale, the gradient all-reduce timing;
//  - the first step of a new shape: buffers and the cuDNN workspace grow (cudaFree waits for the device);
//  - outside the steps: state_to_host()/state_from_host()/average_running_stats() (checkpoints, eval).
// Nothing inside the forward and backward passes waits for the device.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "syncbn/cuda/device.h"
#include "syncbn/cuda/nccl_communicator.h"
#include "syncbn/cuda/staged_communicator.h"
#include "kernels.h"
#include "loss_scale.h"
#include "syncbn/net_plan.h"
#include "syncbn/mpi_communicator.h"
#include "syncbn/train_config.h"
#include "syncbn/train_model.h"

namespace syncbn::cuda::train {

struct NetContext;
class Layer;
class BatchNormLayer;
class CudnnHandle;
class CublasHandle;

class CudaTrainModel final : public PlannedTrainModel {
 public:
  // Collective over `world`: the device communicator (--comm nccl: NCCL, device = local rank,
  // SBN_GPU_SHARING policy; --comm mpi: the staged communicator, device = local rank mod devices), the
  // sync group's split for sync:K. Everything after those collectives is local, so a failure there
  // cannot leave peers waiting in one.
  CudaTrainModel(const ModelSpec& spec, const TrainConfig& cfg, MpiCommunicator& world);
  ~CudaTrainModel() override;
  CudaTrainModel(const CudaTrainModel&) = delete;
  CudaTrainModel& operator=(const CudaTrainModel&) = delete;

  std::string describe() const override;
  std::string device() const override { return device_; }
  int num_syncbn_layers() const override { return static_cast<int>(bns_.size()); }

  void train_micro(const float* images, const std::int32_t* labels, std::int64_t n, float grad_scale,
                   double* loss_sum, std::int64_t* correct) override;
  // The gradient all-reduce runs on this model's device communicator (the same ranks as `world`). Returns
  // the device seconds of the PREVIOUS step's all-reduce (measured with events, read at check()): the
  // current one has only been enqueued.
  double reduce_and_update(Communicator& world, double lr) override;
  void evaluate(const float* images, const std::int32_t* labels, std::int64_t n, double* loss_sum,
                std::int64_t* correct) override;
  double take_syncbn_comm_seconds() override;
  void average_running_stats(Communicator& world) override;
  // PreciseBN: stream-ordered training forwards; finish waits once per layer (outside any step).
  void begin_bn_population() override;
  void population_forward(const float* images, const std::int32_t* labels, std::int64_t n) override;
  void finish_bn_population(Communicator& world) override;
  // Batch Renormalization: every BatchNormLayer's CudaSyncBatchNorm (host values, read at its next combine).
  void set_renorm_limits(double rmax, double dmax) override;
  void check() override;
  // As of the last check(): committed; skipped (fp16 overflow above the minimum loss scale); or non-finite
  // with the first parameter whose reduced gradient is NaN/Inf. Either way of not committing, the device
  // restored the BatchNorm running state saved at the step's first forward and left the parameters and
  // momentum alone (step_check.h).
  StepResult last_step() const override { return last_; }

  std::vector<StateArray> state() override;
  void state_to_host() override;
  void state_from_host() override;

  // ---- for tests ----
  DType dtype() const { return dtype_; }
  const NetPlan& plan() const { return plan_; }
  // Synchronous host copies of the flat parameters and gradients (the BatchNorm layers' local γ/β
  // gradients are added into the flat array first, as reduce_and_update does).
  std::vector<float> parameters_to_host();
  std::vector<float> gradients_to_host();
  // Overwrites one element of the flat gradient (e.g. an inf, to exercise the fp16 overflow path).
  void set_gradient(std::int64_t index, float value);
  // The fp16 loss scale as of the last check() (fp32/bf16: scale 1, nothing skipped).
  LossScaleState loss_scale() const { return scale_host_; }
  const LossScaleConfig& loss_scale_config() const { return scale_cfg_; }
  // Sets the fp16 loss scale (e.g. to its minimum, where an overflow is non-finite instead of skipped).
  void set_loss_scale(float scale);

 private:
  struct StepCounters;  // device: Σ loss, #correct, label status

  // The constructor's steps after the collectives and the parameter definition, in this order.
  void init_parameters();
  void init_network();
  void init_step_check();
  void init_checkpoint_state();
  void init_loss_scale_and_events();

  void load_input(const float* images, const std::int32_t* labels, std::int64_t n);
  // Cross-entropy of the last forward's logits: dlogits (training), Σ loss and #correct on the device.
  void run_loss(const DeviceTensor& logits, std::int64_t n, float grad_scale, bool training);
  void read_counters(const char* label, double* loss_sum, std::int64_t* correct);
  // Waits for the stream through the communicator's watchdog (a hung collective is reported, not waited on).
  void sync(const char* label);
  // Synchronous copies on the step's stream (outside the steps: state, tests).
  void download(void* host, const void* dev, std::size_t bytes, const char* what);
  void upload(void* dev, const void* host, std::size_t bytes, const char* what);
  void scatter_bn_params();

  TrainConfig cfg_;
  DType dtype_;
  // Declaration order is destruction order reversed: the communicator (and its stream) outlive
  // everything that enqueues on it.
  std::unique_ptr<DeviceCommunicator> comm_;  // --comm: NcclCommunicator or StagedCommunicator
  std::unique_ptr<SyncGroup> group_;  // synced BN modes only
  cudaStream_t stream_ = nullptr;     // comm_->stream()
  int sm_count_ = 1;
  std::string device_;


  std::unique_ptr<CudnnHandle> cudnn_;
  std::unique_ptr<CublasHandle> cublas_;
  std::unique_ptr<NetContext> ctx_;
  DeviceArray<float> values_, grads_, momentum_, decay_;  // (total) each
  std::unique_ptr<Layer> net_;
  std::vector<BatchNormLayer*> bns_;
  DeviceArray<BnParamLink> bn_links_;

  // The step check (step_check.h): the device verdict, its pinned host copy (read by check()), the
  // BatchNorm state links and the copies the step's first forward saved (restored unless it commits).
  DeviceArray<GradCheck> check_;
  PinnedBuffer check_pinned_;
  DeviceArray<BnStateLink> bn_state_links_;
  DeviceArray<float> bn_saved_stats_;          // per layer: running mean (C), running var (C)
  DeviceArray<double> bn_saved_pivots_;        // per layer (C)
  DeviceArray<std::int64_t> bn_saved_tracked_;  // per layer (1)
  bool step_open_ = false;                     // train_micro ran since the last reduce_and_update
  StepResult last_;

  // fp16 dynamic loss scaling (loss_scale.h).
  bool loss_scaling_ = false;
  LossScaleConfig scale_cfg_;
  DeviceArray<LossScaleState> scale_;
  PinnedBuffer scale_pinned_;
  LossScaleState scale_host_;

  // Per micro-batch: the input (pinned staging → device → NHWC), labels, loss scratch and counters.
  PinnedBuffer images_pinned_, labels_pinned_, counters_pinned_;
  cudaEvent_t input_copied_ = nullptr;  // the staging buffers may be refilled once this completed
  DeviceArray<float> images_dev_;
  DeviceArray<std::int32_t> labels_dev_;
  DeviceTensor input_, dlogits_;
  DeviceArray<double> per_sample_;
  DeviceArray<StepCounters> counters_;

  // Gradient all-reduce timing: events around the buckets, read at check().
  cudaEvent_t grad_begin_ = nullptr, grad_end_ = nullptr;
  bool grad_timed_ = false;
  double last_grad_seconds_ = 0;

  // state(): host staging of the checkpointed arrays.
  std::vector<float> params_host_, momentum_host_;
  struct BnStaging {
    std::vector<float> running_mean, running_var;
    std::vector<double> pivot;
    std::int64_t num_batches_tracked = 0;
  };
  std::vector<BnStaging> bn_host_;  // per entry of bns_
  std::vector<StateArray> state_;
};

}  // namespace syncbn::cuda::train
