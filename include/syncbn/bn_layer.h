// What the CPU SyncBN layer (sync_batchnorm.h) and the CUDA one (cuda/sync_batchnorm.h) share on the
// host: sync modes and groups, the layer options, tags and status errors, and BnLayerHost, the host-side
// steps of a layer written once — option and input checks, the collective-failure protocol, the
// slicing of a batch into BN batches and the forward state that backward reads, the combine arguments.
// A device layer derives from BnLayerHost and supplies its tensors, buffers, kernels and communicator.
//
// Free of oneDNN, CUDA and the nn module headers: both libraries (syncbn, syncbn_cuda) build on it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "syncbn/bn_kernels.h"
#include "syncbn/communicator.h"
#include "syncbn/error.h"
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
// SyncBN messages come in size classes (bn_message_channels): a layer's message is padded to the next
// power of two of its channels, at least kBnMessageMinChannels and at most the group's widest layer.
// Ranks that disagree on the layer order then still exchange equally long messages whose tags disagree
// (every rank reports the layer cleanly) whenever the two layers share a class — always among the narrow
// layers, and for every pair of a ResNet's same-width layers. Messages of different classes (a layer-order
// mismatch between layers of different widths, which the start-up signature agreement and the static
// layer order leave to bugs) are a length mismatch: Open MPI's non-blocking collectives fail it as a
// truncation, NCCL's hang is turned into an error by the watchdog's collective timeout. Padding every
// message to the widest layer (the earlier choice) cost 32.8 KB per message in a ResNet-50 instead of
// ~1 KB for its 64-channel layers: the bytes matter at NVLink latencies (docs/GPU.md).
constexpr std::int64_t kBnMessageMinChannels = 64;
// The channels a message of a C-channel layer is sized for in a group whose widest layer has max_channels:
// min(max_channels, max(kBnMessageMinChannels, next power of two ≥ C)), never below C.
std::int64_t bn_message_channels(std::int64_t channels, std::int64_t max_channels);

class SyncGroup {
 public:
  SyncGroup(Communicator& world, const SyncMode& mode);
  Communicator* comm() const { return comm_; }  // null: local
  const SyncMode& mode() const { return mode_; }

  // Called by each layer at construction (same model on every rank → same result everywhere).
  void reserve_channels(std::int64_t channels);
  // Doubles in the SyncBN messages of this group's C-channel layers (their size class, see above).
  std::int64_t message_size(std::int64_t channels) const {
    return bn_msg_size(bn_message_channels(channels, max_channels_));
  }

 private:
  SyncMode mode_;
  std::unique_ptr<Communicator> owned_;
  Communicator* comm_ = nullptr;
  std::int64_t max_channels_ = 0;
};

// --- tags, statuses, empty batches ------------------------------------------------------------------

// The tag of a layer's messages: a small integer in [1, 2^20) identifying (layer name, phase, C); see
// bn_tags_agree. phase is "forward" or "backward".
double bn_layer_tag(const std::string& layer, const char* phase, std::int64_t channels);

// Throws the Error for a non-ok combine status, naming the layer and phase. group_size: ranks of the
// sync group, 0 for local statistics; count / forward_count explain kBnCountMismatch.
[[noreturn]] void throw_bn_status(BnStatus status, const std::string& layer, const char* phase, int group_size,
                                  double count, double forward_count);

// A device layer's status words of one step, written by its combine kernels (first error of each phase
// sticks) and read on the host at the step's end. Plain data: the GPU model keeps every layer's in its one
// step-status array (src/cuda/train/step_status.h), so a step has one device → host copy.
struct BnStepStatus {
  int forward = 0;                // BnStatus of the forward combines
  int backward = 0;               // BnStatus of the backward combines
  double backward_count = 0;      // the group count the failing backward saw
  double backward_expected = 0;   // the forward's count it expected
};

// True when a training BN batch (one chunk) with LOCAL statistics has no values per channel. PyTorch
// (BatchNorm*d, 1.13) then returns an empty output, leaves the running statistics as they were and still
// counts the batch in num_batches_tracked; both layers do the same instead of failing. With synced
// statistics the group's count decides (it travels in the all-reduce): an empty rank is normal, an empty
// group is an error.
bool bn_local_empty_batch(const BnGeometry& chunk, bool synced);

// --- layer options --------------------------------------------------------------------------------

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

  // Batch Renormalization (Ioffe 2017, bn_math.h; needs track_running_stats): training normalizes with
  // r ∈ [1/rmax, rmax] and |d| ≤ dmax from the running statistics. These are the layer's limits until
  // BnLayerHost::set_renorm_limits changes them (the trainer's warm-up does, every step).
  bool renorm = false;
  double renorm_rmax = 3.0;  // ≥ 1
  double renorm_dmax = 5.0;  // ≥ 0
};

// --- the shared host side of a layer ----------------------------------------------------------------

// What the host checks read of a layer input (a syncbn::Tensor or a cuda::DeviceTensor).
struct BnInputDesc {
  const std::vector<std::int64_t>& shape;
  Layout layout;
  const char* dtype = nullptr;  // the activation dtype's name; null: fp32 only (the CPU layer)
};

// One forward or backward call, as begin_forward / begin_backward resolved it.
struct BnCall {
  Communicator* comm = nullptr;  // the group the call all-reduces over; null: none (local, eval)
  BnGeometry geometry;           // the whole input
  std::int64_t samples = 0;      // N
  bool batch_stats = false;      // statistics of the batch (else the running ones, constants)
  bool update = false;           // forward: the combines move the running statistics
};

// BN batch k of a call (ghost batches; the whole input otherwise) and what the call does with it.
struct BnCallBatch {
  enum Kind {
    kRunning,     // normalize with the running statistics: no reduction, no communication
    kEmpty,       // an empty batch with local statistics (bn_local_empty_batch): skipped, counted
    kBatchStats,  // reduce, combine (after the all-reduce when synced), normalize
  };
  Kind kind = kRunning;
  BnGeometry geometry;       // the batch's slice of the input
  std::int64_t offset = 0;   // element offset of its first sample in the input
  std::int64_t block = 0;    // k·C: its block in the per-batch arrays (BnLayerArrays)
};

// The host-side steps of a SyncBN layer. The device layer keeps its buffers in BnLayerBuffers (one fill
// of BnLayerArrays) and supplies the two hooks below; forward() is then begin_forward, a loop over
// batch(call, k), the combines through combine_args / check_status; backward() the same with
// begin_backward and backward_combine_args.
class BnLayerHost {
 public:
  virtual ~BnLayerHost() = default;
  BnLayerHost(const BnLayerHost&) = delete;
  BnLayerHost& operator=(const BnLayerHost&) = delete;

  const std::string& name() const { return name_; }
  const BatchNormOptions& options() const { return opt_; }
  Communicator* group() const { return group_; }  // null: local statistics

  // Seconds spent in this layer's collectives since the last reset (for "SyncBN communication ms").
  double comm_seconds() const { return comm_seconds_; }
  void reset_comm_seconds() { comm_seconds_ = 0; }

  // Batch Renormalization's current limits (options().renorm only): rmax ≥ 1, dmax ≥ 0, else throws.
  // Read by the next training forward's combines.
  void set_renorm_limits(double rmax, double dmax);

  // PreciseBN (README "PreciseBN"): true between the device layer's begin_population() and
  // finish_population(). Training forwards then normalize with batch statistics as usual but move no
  // running statistics, counter or pivot, and add this rank's per-channel sums of their input.
  bool population_open() const { return pop_open_; }

 protected:
  // `group` is the layer's sync group; null (or a local-mode group) means local statistics. Checks the
  // options (throwing with the layer's name). The device layer reserves its channels in the group once
  // it is fully built (SyncGroup::reserve_channels).
  BnLayerHost(std::string name, const BatchNormOptions& options, SyncGroup* group);

  // ---- device hooks
  // Sizes the buffers for an input of geometry g in `batches` BN batches (called by begin_forward).
  virtual void size_buffers(const BnGeometry& g, std::int64_t batches) = 0;
  // Zeroes the message and all-reduces it over group() with `phase`'s label: the collective a layer
  // that rejects its input still takes part in (fail_collectively). May throw Error (then ignored).
  virtual void reduce_zero_message(const char* phase) = 0;

  // ---- one call
  // Checks x (failing collectively when the call communicates), slices it into BN batches, sizes the
  // buffers and saves what backward needs.
  BnCall begin_forward(const BnInputDesc& x, bool training);
  // Checks x and dy against each other and the last forward (failing collectively as forward did).
  BnCall begin_backward(const BnInputDesc& x, const BnInputDesc& dy);
  // BN batches of the last forward, and batch k of `call`.
  std::int64_t batch_count() const { return batches_.count; }
  BnCallBatch batch(const BnCall& call, std::int64_t k) const;

  // The combines' arguments for batch k, from the layer's arrays (gamma and beta dropped unless affine).
  BnCombineArgs combine_args(const BnLayerArrays& arrays, std::int64_t k, const BnCall& call,
                             std::int64_t batches_tracked) const;
  BnBackwardCombineArgs backward_combine_args(const BnLayerArrays& arrays, std::int64_t k, const BnCall& call,
                                              double expected_count) const;
  // Whether `call`'s batches are renormalized (Batch Renormalization on, batch statistics), and then batch
  // k's r, d in `arrays` for bn_backward_reduce's dγ (else none).
  bool renorm(const BnCall& call) const { return opt_.renorm && call.batch_stats; }
  BnRenormFactors renorm_factors(const BnLayerArrays& arrays, std::int64_t k, const BnCall& call) const;
  // Throws the layer's error for a non-ok status of `phase` (see throw_bn_status) in the last forward's
  // group; returns for kBnOk.
  void check_status(BnStatus status, const char* phase, double count, double forward_count) const;

 public:
  // Throws the layer's error for the first failure of a step's status words (forward before backward), as
  // check_status; returns if both are ok.
  void check_step_status(const BnStepStatus& status) const;

 protected:

  // "SyncBatchNorm 'name'", the prefix of the layer's errors.
  std::string who() const;
  // Doubles in the layer's all-reduce message: its size class in the group (see SyncGroup).
  std::size_t message_doubles() const;
  double tag(const char* phase) const { return phase[0] == 'f' ? fwd_tag_ : bwd_tag_; }
  const char* label(const char* phase) const { return phase[0] == 'f' ? fwd_label_.c_str() : bwd_label_.c_str(); }

  // ---- population pass (PreciseBN): the device layer keeps P (C) and acc = [n, s1 (C), s2 (C)] around P
  void open_population();
  // Whether this forward's first BN batch mean is to become the pivot P (the pass's first forward with
  // batch statistics on this rank); marks P as taken.
  bool population_pivot_due(const BnCall& call);
  // Sums [tag, tag², n, S1, S2, P·S1, n·P, n·P²] over `world` in ONE all-reduce, then writes the
  // population mean and unbiased variance (the same on every rank) into the host arrays (C) and closes
  // the pass. Throws (on every rank alike) if the ranks are in different layers or saw < 2 values.
  void close_population(Communicator& world, const double* pivot, const double* acc, float* running_mean,
                        float* running_var);

  const std::string name_;
  const BatchNormOptions opt_;
  SyncGroup* const sync_group_;
  Communicator* const group_;
  const int group_size_;
  const double fwd_tag_, bwd_tag_;
  bool saved_batch_stats_ = false;      // the last forward used batch statistics
  Communicator* saved_comm_ = nullptr;  // the group it reduced over (null: none)
  double comm_seconds_ = 0;

 private:
  BnGeometry validate(const BnInputDesc& x, const char* phase) const;
  void check_gradient(const BnInputDesc& x, const BnInputDesc& dy) const;
  // Takes part in the group's all-reduce with a tag no layer uses (0), so that the peers' tag checks
  // fail and they report this layer too instead of waiting for it, then throws `why`.
  [[noreturn]] void fail_collectively(const char* phase, const std::string& why);
  // Runs `checks` (returning the input's geometry); on an Error, fails collectively when `comm` is set.
  template <class Checks>
  BnGeometry checked(Communicator* comm, const char* phase, Checks&& checks) {
    try {
      return checks();
    } catch (const Error& e) {
      if (comm) fail_collectively(phase, e.what());
      throw;
    }
  }

  const std::string fwd_label_, bwd_label_;
  BnRenormLimits renorm_limits_;  // Batch Renormalization: enabled iff opt_.renorm; set_renorm_limits
  BnChunks batches_;                 // the last forward's BN batches
  std::int64_t saved_samples_ = -1;  // its N; -1 before any forward
  bool pop_open_ = false;            // a population pass is open
  bool pop_pivot_set_ = false;       // its pivot P was taken
};

}  // namespace syncbn
