// CudaSyncBatchNorm: the device twin of syncbn::SyncBatchNorm (sync_batchnorm.h) — same modes (through
// SyncGroup), same semantics, same tags and messages, the same host steps (BnLayerHost, bn_layer.h) — on
// device tensors and a CUDA stream.
//
//  - Training forward does exactly ONE all-reduce (count, shifted sums, tags) and backward exactly ONE,
//    both stream-ordered NCCL collectives on the layer's stream; eval uses running statistics and never
//    communicates. Uneven and empty local batches are exact (counts travel in the message).
//  - Nothing in forward() or backward() synchronises the host or copies device → host: the tag, count
//    and batch checks are made on the device (bn_combine, bn_backward_combine) into a status word, and
//    check() — at the end of the step, its natural sync point — reads it and throws the same errors as
//    the CPU layer (throw_bn_status); the GPU model instead points every layer's status at its one
//    step-status array (set_status_slot) and decodes them all after its one wait (check_step_status). So a step can be captured in a CUDA graph (after
//    one eager step with the same shapes: that is when buffers are allocated).
//  - An empty batch with local statistics (decided on the host from the shape: no peers, nothing to
//    count on the device) follows PyTorch like the CPU layer: empty output, running statistics untouched,
//    num_batches_tracked + 1 (bn_local_empty_batch, bn_count_batch).
//  - Activations x, y, dy, dx are fp32, bf16 or fp16 (one dtype per call; outputs take the input's);
//    parameters, running statistics and saved statistics are fp32 / double, as on the CPU.
//  - Host-side input errors (wrong shape or channel count) are detected on the host before any launch;
//    the layer then still takes part in its group's all-reduce with tag 0 so that the peers' tag checks
//    fail (at their check()) instead of their collective hanging, and throws the precise cause.
//
// Gradients: dgamma/dbeta accumulate (+=) this rank's LOCAL contribution (the trainer all-reduces them);
// dx is the exact gradient of the group-batch normalization.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "syncbn/bn_layer.h"
#include "syncbn/cuda/bn_kernels.h"
#include "syncbn/cuda/device.h"
#include "syncbn/cuda/device_communicator.h"
#include "syncbn/cuda/nccl_communicator.h"  // the default group communicator, for the layer's users
#include "syncbn/sync_batchnorm.h"

namespace syncbn::cuda {

// Host copy of a layer's trainable and running state (for checkpoints and tests).
struct CudaBnState {
  std::vector<float> gamma, beta, dgamma, dbeta, running_mean, running_var;  // (C) each
  std::vector<double> pivot;                                                // (C)
  std::int64_t num_batches_tracked = 0;
};

class CudaSyncBatchNorm : public BnLayerHost {
 public:
  // `group`: the layer's sync group (null or local mode: local statistics); a group communicator must
  // be a DeviceCommunicator (NcclCommunicator, or StagedCommunicator: host-synchronous collectives). `stream`: where every kernel and collective of the layer is
  // enqueued (the current device must be the communicator's). Allocates the parameters (γ = 1, β = 0,
  // running mean 0, running var 1) synchronously.
  CudaSyncBatchNorm(std::string name, const BatchNormOptions& options, SyncGroup* group, cudaStream_t stream);
  ~CudaSyncBatchNorm() override;

  // y = BN(x) for x of shape (N, C), (N, C, L) or (N, C, H, W); y is resized to x's shape, layout, dtype.
  void forward(const DeviceTensor& x, DeviceTensor& y, bool training);
  // dx from dy (x must be the forward's input; dy in x's dtype). Accumulates dgamma/dbeta.
  void backward(const DeviceTensor& x, const DeviceTensor& dy, DeviceTensor& dx);

  // PreciseBN, as SyncBatchNorm (README "PreciseBN"): while a pass is open, training forwards also add
  // their input's sums to a device accumulator (stream-ordered: bn_stats around the pass's pivot, then
  // bn_population_add) and move no running statistics. finish_population waits for the stream, sums the
  // accumulators over `world` (a host communicator: one MPI all-reduce) and writes the running statistics.
  void begin_population();
  void finish_population(Communicator& world);

  // End of step: waits for the layer's stream (through the communicator's watchdog, so a hung collective
  // is reported instead of waiting forever), then throws syncbn::Error if a forward or backward of this
  // step failed a device-side check, with the CPU layer's message. Clears the status. Also accumulates
  // comm_seconds().
  void check();
  // The GPU model's one-wait step (src/cuda/train/step_status.h): the layer writes its status words to
  // `slot` (device memory, a BnStepStatus, zeroed by the owner at each step's start) instead of its own
  // array, and the owner decodes them with check_step_status() after its one wait; null: back to its own.
  void set_status_slot(BnStepStatus* slot);
  // Folds the timing events of the collectives enqueued since the last fold into comm_seconds(); only
  // once the stream has passed them (after a wait), since it reads them without waiting.
  void fold_timing();

  // name(), options(), group(), reset_comm_seconds(): BnLayerHost.
  cudaStream_t stream() const { return stream_; }

  // Device parameters and buffers, (C) each.
  float* gamma() { return bn_.gamma.data(); }
  float* beta() { return bn_.beta.data(); }
  float* dgamma() { return dgamma_.data(); }
  float* dbeta() { return dbeta_.data(); }
  float* running_mean() { return bn_.running_mean.data(); }
  float* running_var() { return bn_.running_var.data(); }
  double* pivot() { return bn_.pivot.data(); }
  std::int64_t* batches_tracked() { return batches_tracked_.data(); }  // (1) num_batches_tracked

  // Synchronous host copies (outside a step).
  CudaBnState state();
  void set_state(const CudaBnState& state);
  // Statistics of the last training forward's first (or only) batch: group mean, biased variance, count.
  std::vector<double> batch_mean();
  std::vector<double> batch_var();
  double last_group_count();

  // comm_seconds() (BnLayerHost): device seconds spent in this layer's collectives (from stream reaching
  // the all-reduce to its end: includes waiting for the slowest peer), accumulated by check(); not
  // measured inside graph captures.

 private:
  // The constructor, after the device query (made first, so that a missing device is the error reported).
  CudaSyncBatchNorm(int sm_count, std::string name, const BatchNormOptions& options, SyncGroup* group,
                    cudaStream_t stream);
  void size_buffers(const BnGeometry& g, std::int64_t batches) override;
  void reduce_zero_message(const char* phase) override;
  void size_message();
  void reduce(const char* phase);
  BnWorkspace workspace();
  // PreciseBN: enqueues the pivot (first batch) and this forward's sums into pop_acc_.
  void accumulate_population(const DeviceTensor& x, const BnCall& call);

  DeviceCommunicator* comm_ = nullptr;  // group() as the device communicator it must be (null: local)
  cudaStream_t stream_;
  int sm_count_;

  // Parameters, running statistics, pivot (C) and the forward's saved statistics and coefficients
  // (chunks·C: one block of C per BN batch, see BnLayerHost::batch).
  BnLayerBuffers<DeviceArray<double>, DeviceArray<float>> bn_;
  DeviceArray<float> dgamma_, dbeta_;          // (C)
  DeviceArray<std::int64_t> batches_tracked_;  // (1)
  std::int64_t chunks_ = 0;                    // BN batches the per-batch buffers hold
  DeviceArray<double> counts_;                 // (chunks) group count per BN batch, from the forward combine
  DeviceArray<double> msg_;                    // the all-reduce buffer: message_doubles()
  DeviceArray<double> ws_;                     // reduction partials
  DeviceArray<BnStepStatus> status_;           // (1) the layer's own status words
  BnStepStatus* status_dev_ = nullptr;         // where the combines report: status_ or the owner's slot
  PinnedBuffer status_host_;                   // BnStepStatus, copied back by check()

  // Timing of the collectives of the current step (event pairs around each), folded in by check().
  std::vector<cudaEvent_t> events_;
  std::size_t events_used_ = 0;

  // PreciseBN pass: pivot P (C), acc [n, Σ(x−P) (C), Σ(x−P)² (C)], bn_stats message, pivot to restore.
  DeviceArray<double> pop_pivot_, pop_acc_, pop_msg_, pop_saved_pivot_;
};

}  // namespace syncbn::cuda
