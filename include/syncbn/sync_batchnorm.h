// SyncBatchNorm: batch normalization whose statistics are those of the whole sync group's batch.
//
// Modes: `local` (per-rank statistics, no communication), `sync` (all ranks), `sync:K` (consecutive
// groups of K ranks). Training forward does exactly ONE all-reduce (count, shifted sums, tags) and
// backward exactly ONE (the two gradient sums, tags); eval uses running statistics and never
// communicates. Uneven and empty local batches are exact because counts travel in the message. A rank
// that runs a different layer, or whose input is rejected, makes every rank of the group fail with the
// layer's name (tag check) instead of computing garbage or hanging.
//
// Gradients: dgamma/dbeta accumulate (+=) this rank's LOCAL contribution; summing them over ranks is
// the trainer's gradient all-reduce, like every other parameter. dx is the exact gradient of the
// group-batch normalization.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "syncbn/bn_kernels.h"
#include "syncbn/bn_layer.h"
#include "syncbn/communicator.h"
#include "syncbn/tensor.h"

namespace syncbn {

// Modes, groups, options, tags and the shared host steps of the layer: bn_layer.h.

class SyncBatchNorm : public BnLayerHost {
 public:
  // `group` is the layer's sync group; null (or a local-mode group) means local statistics.
  SyncBatchNorm(std::string name, const BatchNormOptions& options, SyncGroup* group);

  // y = BN(x) for x of shape (N, C), (N, C, L) or (N, C, H, W) in x.layout(); y is resized to match.
  void forward(const Tensor& x, Tensor& y, bool training);
  // dx from dy; x must be the forward's input. Accumulates dgamma/dbeta.
  void backward(const Tensor& x, const Tensor& dy, Tensor& dx);

  // BN (+ReLU) fused with a k×k max pooling (stride k, floor) of a channels-last (N, C, H, W) x: y is
  // (N, C, H/k, W/k), maxpool(forward(x)) bit for bit, and the full-size output is never written (the
  // window index of each maximum is kept for backward). Statistics, the one all-reduce per direction,
  // running statistics, ghost batches, Batch Renormalization and PreciseBN are forward's.
  // --precision bf16: x may be bf16 (read widened: the statistics are those of its bf16 values) and y is
  // written in `out` (kBF16: the fp32 result rounded once); forward() and backward() take fp32 only.
  void forward_pool(const Tensor& x, Tensor& y, std::int64_t k, bool training,
                    ElementType out = ElementType::kF32);
  // dx from dy, the gradient of forward_pool's pooled output (the last forward must be forward_pool of x):
  // the numbers of max-pool backward followed by backward(), without the full-size dy. Accumulates
  // dgamma/dbeta. dy has y's dtype, dx gets x's.
  void backward_pool(const Tensor& x, const Tensor& dy, Tensor& dx);

  // PreciseBN (README "PreciseBN"): begin_population() opens a pass in which training forwards also add
  // their input's per-channel sums (double, around a per-rank pivot) and move no running statistics;
  // finish_population() all-reduces them over `world` (ONE collective; every rank calls it, also one
  // whose forwards saw no samples) and sets the running mean and unbiased variance to the statistics of
  // all the values seen, identical on every rank. The pivot the pass's synced forwards moved is restored.
  void begin_population();
  void finish_population(Communicator& world);

  // name(), options(), group() (null: local statistics), comm_seconds(), reset_comm_seconds(): BnLayerHost.

  // Parameters (C), their gradients (C), buffers (C). Affine off: gamma = 1, beta = 0, not trained.
  std::vector<float>& gamma() { return bn_.gamma; }
  std::vector<float>& beta() { return bn_.beta; }
  std::vector<float>& dgamma() { return dgamma_; }
  std::vector<float>& dbeta() { return dbeta_; }
  // The same local gradients in double (accumulated alongside; reset by the caller), for
  // ParamStore::enable_fp64_grads.
  std::vector<double>& dgamma64() { return dgamma64_; }
  std::vector<double>& dbeta64() { return dbeta64_; }
  std::vector<float>& running_mean() { return bn_.running_mean; }
  std::vector<float>& running_var() { return bn_.running_var; }
  std::int64_t& num_batches_tracked() { return num_batches_tracked_; }
  // The shift the next synced forward accumulates around (this group's previous batch mean; unused with
  // local statistics, which take each batch's first values); part of the state so that a resumed run
  // rounds exactly like an uninterrupted one.
  std::vector<double>& pivot() { return bn_.pivot; }

  // Statistics of the last training forward's first (or only) batch: group mean and biased variance.
  const std::vector<double>& batch_mean() const { return bn_.mean; }
  const std::vector<double>& batch_var() const { return bn_.var; }
  double last_group_count() const { return group_count_; }

 private:
  void size_buffers(const BnGeometry& g, std::int64_t batches) override;
  void reduce_zero_message(const char* phase) override;
  void size_message();
  void reduce(const char* phase);
  // forward / backward with pool_ (k = 0: none) set by the public entry points.
  void forward_impl(const Tensor& x, Tensor& y, bool training);
  void backward_impl(const Tensor& x, const Tensor& dy, Tensor& dx);
  // BN batch b's output pass over channels `range`: normalize, or normalize and pool.
  void normalize_batch(const Tensor& x, Tensor& y, const BnCallBatch& b, bool stream, cpu::ChannelRange range);
  // The offset in the pooled output (and pool_arg_) of the sample at input element `offset`.
  std::int64_t pooled_offset(std::int64_t offset) const;
  // Batch statistics of BN batch b of a forward: stats, [all-reduce], combine, normalize.
  void forward_batch(const Tensor& x, Tensor& y, const BnCall& call, const BnCallBatch& b, std::int64_t k,
                     bool stream);
  // Channels per block for local statistics (see forward); `arrays` inputs are re-read per block.
  std::int64_t local_block_channels(const BnGeometry& g, int arrays) const;
  // PreciseBN: adds this forward's input sums to pop_acc_ (taking the pivot from its first batch mean).
  void accumulate_population(const Tensor& x, const BnCall& call);

  // Parameters, running statistics, pivot (C) and the forward's saved statistics and coefficients
  // (chunks·C: one block of C per BN batch, see BnLayerHost::batch).
  BnLayerBuffers<std::vector<double>, std::vector<float>> bn_;
  std::vector<float> dgamma_, dbeta_;        // (C)
  std::vector<double> dgamma64_, dbeta64_;  // (C)
  std::int64_t num_batches_tracked_ = 0;
  std::vector<double> local_pivot_;  // (C) scratch: the batch's first values (local statistics)
  std::int64_t chunks_ = 0;          // BN batches the per-batch buffers hold
  std::vector<double> counts_;       // (chunks) group count per BN batch, from the forward combine
  std::vector<double> msg_;          // the all-reduce buffer, message_doubles()
  double group_count_ = 0;
  BnPool pool_;                          // the last forward's pooling (k = 0: none)
  ElementType pool_out_ = ElementType::kF32;  // and its output's dtype
  std::vector<std::uint8_t> pool_arg_;   // (N, C, H/k, W/k) NHWC: window index of each maximum
  std::vector<float> pool_scratch_;      // bn_pool_scratch_floats(C)
  // PreciseBN pass: pivot P (C), acc [n, Σ(x−P) (C), Σ(x−P)² (C)], bn_stats scratch, pivot to restore.
  std::vector<double> pop_pivot_, pop_acc_, pop_msg_, pop_saved_pivot_;
};

}  // namespace syncbn
