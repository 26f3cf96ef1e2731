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
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "syncbn/bn_kernels.h"
#include "syncbn/communicator.h"
#include "syncbn/tensor.h"

namespace syncbn {

// --- modes ----------------------------------------------------------------------------------------

struct SyncMode {
  enum Kind { kLocal, kSync, kGroups } kind = kSync;
  int group_size = 0;  // kGroups: K
  std::string str() const;
};

// "local", "sync" or "sync:K" (K ≥ 1). Throws naming the text for anything else.
SyncMode parse_sync_mode(const std::string& text);

// The ranks a mode synchronizes over: none for local, the world for sync, the consecutive block of K
// ranks containing this one for sync:K (collective over `world`; throws if K ∤ size).
//
// Every SyncBN message in a group has the same length: that of the group's widest layer. Ranks that
// disagree on the layer order then exchange equally long messages whose tags disagree, which every rank
// reports cleanly; messages of different lengths would be an MPI truncation, which Open MPI's
// non-blocking collectives treat as fatal. The padding costs nothing measurable (the messages are
// latency-bound: a few hundred bytes to a few KB).
class SyncGroup {
 public:
  SyncGroup(Communicator& world, const SyncMode& mode);
  Communicator* comm() const { return comm_; }  // null: local
  const SyncMode& mode() const { return mode_; }

  // Called by each layer at construction (same model on every rank → same result everywhere).
  void reserve_channels(std::int64_t channels);
  // Doubles in every SyncBN message of this group.
  std::int64_t message_size() const { return bn_msg_size(max_channels_); }

 private:
  SyncMode mode_;
  std::unique_ptr<Communicator> owned_;
  Communicator* comm_ = nullptr;
  std::int64_t max_channels_ = 0;
};

// --- host-side logic shared by the CPU layer and the CUDA layer (include/syncbn/cuda/sync_batchnorm.h)

// The tag of a layer's messages: a small integer in [1, 2^20) identifying (layer name, phase, C); see
// bn_tags_agree. phase is "forward" or "backward".
double bn_layer_tag(const std::string& layer, const char* phase, std::int64_t channels);

// Throws the Error for a non-ok combine status, naming the layer and phase. group_size: ranks of the
// sync group, 0 for local statistics; count / forward_count explain kBnCountMismatch.
[[noreturn]] void throw_bn_status(BnStatus status, const std::string& layer, const char* phase, int group_size,
                                  double count, double forward_count);

// True when a training BN batch (one chunk) with LOCAL statistics has no values per channel. PyTorch
// (BatchNorm*d, 1.13) then returns an empty output, leaves the running statistics as they were and still
// counts the batch in num_batches_tracked; both layers do the same instead of failing. With synced
// statistics the group's count decides (it travels in the all-reduce): an empty rank is normal, an empty
// group is an error.
bool bn_local_empty_batch(const BnGeometry& chunk, bool synced);

// --- layer ----------------------------------------------------------------------------------------

struct BatchNormOptions {
  std::int64_t channels = 0;
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;  // nullopt: cumulative moving average (PyTorch momentum=None)
  bool affine = true;
  bool track_running_stats = true;
  bool fuse_relu = false;      // y = max(BN(x), 0) in the same pass; backward gates dy the same way
  std::int64_t ghost_batch = 0;  // > 0: statistics over consecutive sub-batches of this many samples
                                 // (local mode only)
  // Outputs at least this large are written with non-temporal stores (see stream_store.h).
  std::int64_t stream_threshold_bytes = 4 << 20;
};

class SyncBatchNorm {
 public:
  // `group` is the layer's sync group; null (or a local-mode group) means local statistics.
  SyncBatchNorm(std::string name, const BatchNormOptions& options, SyncGroup* group);

  // y = BN(x) for x of shape (N, C), (N, C, L) or (N, C, H, W) in x.layout(); y is resized to match.
  void forward(const Tensor& x, Tensor& y, bool training);
  // dx from dy; x must be the forward's input. Accumulates dgamma/dbeta.
  void backward(const Tensor& x, const Tensor& dy, Tensor& dx);

  const std::string& name() const { return name_; }
  const BatchNormOptions& options() const { return opt_; }
  Communicator* group() const { return group_; }  // null: local statistics

  // Parameters (C), their gradients (C), buffers (C). Affine off: gamma = 1, beta = 0, not trained.
  std::vector<float>& gamma() { return gamma_; }
  std::vector<float>& beta() { return beta_; }
  std::vector<float>& dgamma() { return dgamma_; }
  std::vector<float>& dbeta() { return dbeta_; }
  // The same local gradients in double (accumulated alongside; reset by the caller), for
  // ParamStore::enable_fp64_grads.
  std::vector<double>& dgamma64() { return dgamma64_; }
  std::vector<double>& dbeta64() { return dbeta64_; }
  std::vector<float>& running_mean() { return running_mean_; }
  std::vector<float>& running_var() { return running_var_; }
  std::int64_t& num_batches_tracked() { return num_batches_tracked_; }
  // The shift the next synced forward accumulates around (this group's previous batch mean; unused with
  // local statistics, which take each batch's first values); part of the state so that a resumed run
  // rounds exactly like an uninterrupted one.
  std::vector<double>& pivot() { return pivot_; }

  // Statistics of the last training forward's first (or only) batch: group mean and biased variance.
  const std::vector<double>& batch_mean() const { return mean_; }
  const std::vector<double>& batch_var() const { return var_; }
  double last_group_count() const { return group_count_; }

  // Seconds spent in this layer's collectives since the last reset (for "SyncBN communication ms").
  double comm_seconds() const { return comm_seconds_; }
  void reset_comm_seconds() { comm_seconds_ = 0; }

 private:
  BnGeometry validate(const Tensor& x, const char* phase) const;
  void fail_collectively(const char* phase, const std::string& why);
  void size_message();
  void reduce(const char* phase);
  void resize_chunks(std::int64_t chunks);
  // Channels per block for local statistics (see forward); `arrays` inputs are re-read per block.
  std::int64_t local_block_channels(const BnGeometry& g, int arrays) const;

  std::string name_;
  BatchNormOptions opt_;
  SyncGroup* sync_group_;
  Communicator* group_;
  int group_size_;
  double fwd_tag_, bwd_tag_;
  std::string fwd_label_, bwd_label_;

  std::vector<float> gamma_, beta_, dgamma_, dbeta_, running_mean_, running_var_;
  std::vector<double> dgamma64_, dbeta64_;
  std::int64_t num_batches_tracked_ = 0;
  std::vector<double> pivot_;
  std::vector<double> local_pivot_;  // scratch: the batch's first values (local statistics)

  // Saved by forward for backward, one block of C per chunk (ghost batches; 1 chunk otherwise).
  std::int64_t chunks_ = 0;  // chunks the buffers hold (batches_.count after a forward)
  BnChunks batches_;         // the last forward's BN batches
  bool saved_batch_stats_ = false;   // forward used batch statistics (backward differentiates them)
  Communicator* saved_comm_ = nullptr;  // the group forward reduced over (null: none)
  std::int64_t saved_samples_ = -1;   // forward's N; -1 before any forward
  std::vector<double> mean_, var_, invstd_, counts_;
  std::vector<float> hi_, a_, b_, k1_, k0_;
  std::vector<double> msg_;  // the all-reduce buffer, SyncGroup::message_size() doubles
  double group_count_ = 0;
  double comm_seconds_ = 0;
};

}  // namespace syncbn
