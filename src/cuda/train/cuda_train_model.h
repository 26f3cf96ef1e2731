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
//  - one CUDA stream for the computation and the SyncBN collectives (the NcclCommunicator's), so they are
//    stream-ordered and issued in program order, the same on every rank; with NCCL and > 1 rank the
//    gradient buckets run on a communication stream of their own communicator (split from it), launched
//    during the last micro-batch's backward as their gradients complete and ordered by events
//    (grad_buckets.h); the optimizer's kernels wait for the last bucket.
//
// Host synchronisation, all of it:
//  - check() (end of step), ONE copy and ONE wait: the model's step-status array (step_status.h: the
//    step's Σ loss and #correct, the first bad label, every SyncBN layer's status words, the step's
//    verdict, the fp16 loss scale), then the collective timings from events; train_micro() with null
//    loss_sum/correct (the loop) does not wait;
//  - end of evaluate(): the batch's Σ loss and #correct (outside the steps; one wait per eval batch);
//  - train_micro() with non-null loss_sum/correct (tests): the micro-batch's sums;
//  - the first step of a new shape: buffers and the cuDNN workspace grow (cudaFree waits for the device);
//  - outside the steps: state_to_host()/state_from_host()/average_running_stats() (checkpoints, eval).
// Nothing inside the forward and backward passes waits for the device.
//
// A whole step as a CUDA graph (capture_step / replay_step, step_graph.h; docs/GPU.md "Whole-step CUDA
// graphs"): after one eager step of the same shapes, one micro-batch + reduce_and_update + the status copy
// are captured (any capture mode, global included: the watchdogs run in relaxed mode) and replayed; the
// host then calls check() as after an eager step (one wait, no copy of its own). The learning rate comes
// from device memory (copied in the graph from a pinned float that set_step_lr sets between replays);
// grad_scale and the batch size are fixed at capture; the input may change per replay (it is copied from
// the pinned staging buffer, which replay_step refills).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "syncbn/cuda/device.h"
#include "syncbn/cuda/nccl_communicator.h"
#include "syncbn/cuda/staged_communicator.h"
#include "kernels.h"
#include "grad_buckets.h"
#include "loss_scale.h"
#include "step_graph.h"
#include "step_status.h"
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
  void step_totals(double* loss_sum, std::int64_t* correct) const override;
  // With NCCL and more than one rank: the last micro-batch's backward launches the gradient buckets on
  // a communication stream as their gradients complete (grad_buckets.h). The staged communicator (--comm
  // mpi) is host-synchronous: its buckets are all-reduced after the backward, in reduce_and_update.
  void set_micro_batches(std::int64_t count) override;
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
  // Host waits for the device so far (every one goes through sync()), and reads of the step-status array
  // (one per check()): the one-wait-per-step contract, counted.
  std::int64_t host_waits() const { return host_waits_; }
  std::int64_t status_reads() const { return status_reader_ ? status_reader_->fetches() : 0; }
  // The device communicator (its stream is the model's): tests leave a watched collective pending on it.
  DeviceCommunicator& communicator() { return *comm_; }

  // ---- a whole step as a CUDA graph (see the top of this file) ----
  // Captures train_micro(images, labels, n, grad_scale) + reduce_and_update(lr) + the step-status copy
  // in `mode` on the model's stream, and instantiates it (replacing an earlier graph); nothing runs. Needs
  // an eager step of the same shapes checked before, no open step, set_micro_batches ≤ 1, --comm nccl
  // (StepGraphState says why not). With NCCL and > 1 rank and set_micro_batches(1) the graph holds the
  // buckets overlapping the backward on the communication stream (event fork/join). The graph holds the
  // addresses of the model's buffers: an eager call with larger shapes (they regrow) must be followed by
  // a new capture; release_step_graph() drops it.
  void capture_step(const float* images, const std::int32_t* labels, std::int64_t n, float grad_scale, double lr,
                    cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal);
  // Launches the captured step; images/labels (n of the capture) replace the staged batch first, null
  // replays the last one. check() must follow before the next replay or eager micro-batch.
  void replay_step(const float* images = nullptr, const std::int32_t* labels = nullptr);
  // The learning rate of the next replays (capture_step's lr until then); not while a replay is unchecked.
  void set_step_lr(double lr);
  void release_step_graph();
  bool has_step_graph() const { return graph_state_.has_graph(); }

 private:
  // The constructor's steps after the collectives and the parameter definition, in this order.
  void init_parameters();
  void init_network();
  void init_step_check();
  void init_checkpoint_state();
  void init_loss_scale_and_events();

  void load_input(const float* images, const std::int32_t* labels, std::int64_t n);
  // load_input's halves: the host copy into the pinned staging buffers (waits for the previous copy out of
  // them; grows them), and the stream's part (H2D copies, NHWC conversion), which a capture holds.
  void stage_input(const float* images, const std::int32_t* labels, std::int64_t n);
  void enqueue_input(std::int64_t n);
  // reduce_and_update's device work (enqueued; capturable with NCCL).
  void enqueue_update(double lr);
  // capture_step's body between begin and end of the capture.
  void capture_body(std::int64_t n, float grad_scale, double lr);
  // Cross-entropy of the last forward's logits: dlogits (training), Σ loss and #correct on the device.
  void run_loss(const DeviceTensor& logits, std::int64_t n, float grad_scale, bool training, StepCounters* counters);
  // Copies `counters` to host and waits (evaluate; train_micro's test path). Throws on a bad label.
  StepCounters read_counters(const char* label, const StepCounters* counters);
  // The step-status array's parts (device pointers into status_).
  StepCounters* step_counters() const;
  GradCheck* grad_check_word() const;
  LossScaleState* loss_scale_word() const;
  // Zeroes the counters and the BN statuses for the next step (stream-ordered).
  void reset_step_status();
  // Gradient buckets overlapping the backward (grad_buckets.h): set-up, the layers' grads_done listener,
  // and the launch of due buckets on the communication stream after an event on the compute stream.
  void init_gradient_overlap();
  void on_grads_done(std::initializer_list<ParamSlot> slots);
  void launch_buckets(const std::vector<int>& ids);
  // Adds the BatchNorm layers' local γ/β gradients not yet in the flat array into it (each layer once a
  // step: its bucket may be in flight afterwards).
  void gather_bn_grads();
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
  // NCCL, > 1 rank: the gradient buckets' own communicator (split from comm_: its collectives run on
  // comm_stream_ concurrently with the SyncBN ones on stream_, which one NCCL communicator must not do).
  std::unique_ptr<Communicator> grad_comm_;
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

  // The step-status array (step_status.h: counters, BN statuses, the step check's verdict, the loss
  // scale), its pinned host copy and its reader (check()'s one copy and wait).
  StepStatusLayout status_layout_;
  DeviceArray<double> status_;  // status_layout_.bytes, as doubles for alignment
  PinnedBuffer status_pinned_;
  std::unique_ptr<StepStatusReader> status_reader_;
  std::int64_t host_waits_ = 0;
  double step_loss_ = 0;            // step_totals() as of the last check()
  std::int64_t step_correct_ = 0;
  StepCounters micro_seen_;         // train_micro's test path: the step's counters it already reported
  // The step check (step_check.h): the BatchNorm state links and the copies the step's first forward
  // saved (restored unless it commits).
  DeviceArray<BnStateLink> bn_state_links_;
  DeviceArray<float> bn_saved_stats_;          // per layer: running mean (C), running var (C)
  DeviceArray<double> bn_saved_pivots_;        // per layer (C)
  DeviceArray<std::int64_t> bn_saved_tracked_;  // per layer (1)
  bool step_open_ = false;                     // train_micro ran since the last reduce_and_update
  StepResult last_;

  // fp16 dynamic loss scaling (loss_scale.h; the device state lives in the step-status array).
  bool loss_scaling_ = false;
  LossScaleConfig scale_cfg_;
  LossScaleState scale_host_;

  // Per micro-batch: the input (pinned staging → device → NHWC), labels, loss scratch; an eval batch's
  // counters.
  PinnedBuffer images_pinned_, labels_pinned_, counters_pinned_;
  cudaEvent_t input_copied_ = nullptr;  // the staging buffers may be refilled once this completed
  DeviceArray<float> images_dev_;
  DeviceArray<std::int32_t> labels_dev_;
  DeviceTensor input_, dlogits_;
  DeviceArray<double> per_sample_;
  DeviceArray<StepCounters> eval_counters_;

  // Gradient buckets overlapping the backward (grad_comm_ only).
  NcclCommunicator* grad_dev_comm_ = nullptr;  // grad_comm_ as what it is
  cudaStream_t comm_stream_ = nullptr;
  std::unique_ptr<BucketSchedule> schedule_;
  std::vector<cudaEvent_t> bucket_events_;   // per bucket: the compute stream's point its launch waits for
  cudaEvent_t grads_reduced_ = nullptr;      // the last bucket done: what the optimizer waits for
  std::int64_t micro_batches_ = 0;           // set_micro_batches
  std::int64_t micro_index_ = 0;             // train_micro calls in the open step
  bool overlap_now_ = false;                 // the running backward launches buckets
  std::vector<std::pair<std::int64_t, int>> bn_by_gamma_;  // (γ offset, index in bns_), sorted
  std::vector<char> bn_gathered_;            // per layer: its γ/β gradients joined the flat array this step

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

  // The whole-step graph (capture_step): its rules, the instantiated graph, the captured batch size.
  StepGraphState graph_state_;
  cudaGraphExec_t step_graph_ = nullptr;
  std::int64_t graph_n_ = 0;
  // The captured step's learning rate: the graph copies the pinned float to the device before its SGD.
  PinnedBuffer lr_pinned_;
  DeviceArray<float> lr_dev_;
  bool capturing_ = false;  // capture_step is running: the input is staged already, no timing events
};

}  // namespace syncbn::cuda::train
