#include "syncbn/cpu_train_model.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu_grad_overlap.h"
#include "syncbn/bench_util.h"
#include "syncbn/model.h"
#include "syncbn/optimizer.h"

extern "C" void openblas_set_num_threads(int num_threads);  // OpenBLAS (the BLAS syncbn links)

namespace syncbn {
namespace {

// Without the overlap (cpu_grad_overlap.h: fp64 gradients, one rank, SBN_GRAD_OVERLAP=0) gradients are
// summed after the backward in buckets of at most this many bytes: few collectives, bounded message size.
constexpr std::size_t kBucketBytes = std::size_t{8} << 20;

class CpuTrainModel final : public PlannedTrainModel {
 public:
  CpuTrainModel(const ModelSpec& spec, const TrainConfig& cfg, Communicator& world)
      : PlannedTrainModel(spec, cfg.seed) {
    omp_set_num_threads(static_cast<int>(cfg.threads));
    openblas_set_num_threads(static_cast<int>(cfg.threads));
    SBN_CHECK(cfg.precision == "fp32" || cfg.precision == "bf16",
              "--precision " + cfg.precision + " needs --device cuda; the CPU path computes in fp32 or bf16");
    ctx_.bf16 = cfg.precision == "bf16";
    if (spec_.norm.communicates()) group_ = std::make_unique<SyncGroup>(world, spec_.norm.sync);
    net_ = build_network(plan_, params_, ctx_, group_.get());
    if (cfg.grad_accum == "fp64") params_.enable_fp64_grads();
    // The bucket plans must match on every rank: a rank with another SBN_GRAD_OVERLAP would issue other
    // collectives. All ranks build the model together (run_agreed), so all see this answer and fail alike.
    const bool overlap = cpu_grad_overlap_enabled(params_.fp64_grads(), world.size());
    SBN_CHECK(world.all_equal(overlap ? 1 : 0, "gradient overlap"),
              "SBN_GRAD_OVERLAP differs across ranks: set it the same on every rank (or on none)");
    if (overlap) {
      overlap_ = std::make_unique<CpuGradOverlap>(plan_, net_.net->modules().size(), params_, params_.grads().data(),
                                                  world);
      net_.net->set_backward_hook([this](std::size_t k) { overlap_->module_done(k); });
    }
    sgd_ = std::make_unique<Sgd>(params_, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.decay_norm_bias);
  }

  std::string describe() const override {
    return describe_network() + (ctx_.bf16 ? " | bf16 conv/linear compute, bf16 activations into and out of the fused BN+pool" : "") +
           (overlap_ ? " | gradient all-reduce overlaps the backward (" + std::to_string(overlap_->buckets()) +
                           " buckets)"
                     : "");
  }
  std::string device() const override { return "cpu"; }
  int num_syncbn_layers() const override { return static_cast<int>(net_.bns.size()); }

  void train_micro(const float* images, const std::int32_t* labels, std::int64_t n, float grad_scale,
                   double* loss_sum, std::int64_t* correct) override {
    if (!step_open_) save_buffers();  // the step's first forward: what a non-committing step restores
    step_open_ = true;
    ++micro_in_step_;
    SBN_CHECK(micro_batches_ == 0 || micro_in_step_ <= micro_batches_,
              "train_micro: " + std::to_string(micro_in_step_) + " micro-batches in a step, set_micro_batches said " +
                  std::to_string(micro_batches_));
    // The last micro-batch's backward starts the gradient buckets as their layers finish.
    if (overlap_) overlap_->arm(micro_in_step_ == micro_batches_);
    load_input(images, n);
    net_.net->forward(x_, logits_, true);
    std::int64_t right = 0;
    const double loss = softmax_cross_entropy(logits_, labels, grad_scale, dlogits_, &right);
    open_loss_ += loss;  // the same additions, in the same order, as the loop made when it summed them
    open_correct_ += right;
    if (loss_sum) *loss_sum += loss;
    if (correct) *correct += right;
    net_.net->backward(x_, logits_, dlogits_, nullptr);
  }

  void step_totals(double* loss_sum, std::int64_t* correct) const override {
    *loss_sum = loss_;
    *correct = correct_;
  }

  void check() override {  // nothing deferred on the CPU: the step's sums become step_totals()
    loss_ = open_loss_;
    correct_ = open_correct_;
    open_loss_ = 0;
    open_correct_ = 0;
  }

  void set_micro_batches(std::int64_t count) override {
    SBN_CHECK(count >= 0, "set_micro_batches: negative count " + std::to_string(count));
    micro_batches_ = count;
  }

  double reduce_and_update(Communicator& world, double lr) override {
    ParamStore& ps = params_;
    const double t0 = now_seconds();
    double seconds = 0;
    if (overlap_) {
      seconds = overlap_->finish(world);
    } else if (ps.fp64_grads()) {
      double* g64 = ps.grads64().data();
      for (const auto& [off, n] : buckets(ps.total(), sizeof(double), kBucketBytes))
        world.allreduce_sum(g64 + off, static_cast<std::size_t>(n), "gradient bucket (fp64)");
      float* g = ps.grads().data();
      for (std::int64_t i = 0; i < ps.total(); ++i) g[i] = static_cast<float>(g64[i]);
    } else {
      float* g = ps.grads().data();
      for (const auto& [off, n] : buckets(ps.total(), sizeof(float), kBucketBytes))
        world.allreduce_sum(g + off, static_cast<std::size_t>(n), "gradient bucket");
    }
    if (!overlap_) seconds = now_seconds() - t0;
    // The step commits only if every reduced gradient is finite. The reduced gradients are the same on
    // every rank (a NaN or Inf anywhere reaches every sum), so every rank decides alike, no collective.
    last_ = verdict(ps.first_nonfinite_grad());
    if (last_.outcome == StepResult::Outcome::kCommitted) {
      sgd_->step(lr);
    } else if (step_open_) {
      restore_buffers();
    }
    step_open_ = false;
    micro_in_step_ = 0;
    ps.zero_grads();
    return seconds;
  }

  StepResult last_step() const override { return last_; }

  void evaluate(const float* images, const std::int32_t* labels, std::int64_t n, double* loss_sum,
                std::int64_t* correct) override {
    load_input(images, n);
    net_.net->forward(x_, logits_, false);
    std::int64_t right = 0;
    *loss_sum += softmax_cross_entropy(logits_, labels, 1.0f, dlogits_, &right);
    *correct += right;
  }

  double take_syncbn_comm_seconds() override {
    double s = 0;
    for (SyncBatchNorm* bn : net_.bns) {
      s += bn->comm_seconds();
      bn->reset_comm_seconds();
    }
    return s;
  }

  void average_running_stats(Communicator& world) override {
    std::vector<double> acc;
    for (SyncBatchNorm* bn : net_.bns) {
      acc.insert(acc.end(), bn->running_mean().begin(), bn->running_mean().end());
      acc.insert(acc.end(), bn->running_var().begin(), bn->running_var().end());
    }
    if (acc.empty()) return;
    world.allreduce_sum(acc.data(), acc.size(), "local BN running-stat average");
    std::size_t i = 0;
    for (SyncBatchNorm* bn : net_.bns) {
      for (float& v : bn->running_mean()) v = static_cast<float>(acc[i++] / world.size());
      for (float& v : bn->running_var()) v = static_cast<float>(acc[i++] / world.size());
    }
  }

  // ---- PreciseBN: training-mode forwards (no loss, no backward) while every layer's pass is open.
  void begin_bn_population() override {
    for (SyncBatchNorm* bn : net_.bns) bn->begin_population();
  }
  void population_forward(const float* images, const std::int32_t* /*labels*/, std::int64_t n) override {
    load_input(images, n);
    net_.net->forward(x_, logits_, true);
  }
  void finish_bn_population(Communicator& world) override {
    for (SyncBatchNorm* bn : net_.bns) bn->finish_population(world);
  }

  // ---- Batch Renormalization: every layer's limits for the next forwards.
  void set_renorm_limits(double rmax, double dmax) override {
    for (SyncBatchNorm* bn : net_.bns) bn->set_renorm_limits(rmax, dmax);
  }

  // A load between steps replaces the state: nothing of an open step is to be restored any more.
  void state_from_host() override {
    step_open_ = false;
    micro_in_step_ = 0;
  }

  std::vector<StateArray> state() override {
    return state_arrays(params_.values().data(), sgd_->momentum_buffer().data(), net_.buffers);
  }

 private:
  // The network input: planar (n, C, H, W), copied from the loop's gather buffer.
  void load_input(const float* images, std::int64_t n) {
    x_.resize({n, spec_.in_channels, spec_.height, spec_.width_px}, Layout::kPlanar);
    if (n) std::memcpy(x_.data(), images, static_cast<std::size_t>(x_.numel()) * sizeof(float));
  }

  // Every buffer (running mean/var, pivot, num_batches_tracked: Model::buffers) as the step's first
  // forward found it; restored when the step does not commit. A few KB: C values per array.
  void save_buffers() {
    saved_.resize(net_.buffers.size());
    for (std::size_t i = 0; i < saved_.size(); ++i) {
      const auto [data, bytes] = buffer_bytes(net_.buffers[i]);
      saved_[i].assign(static_cast<const char*>(data), static_cast<const char*>(data) + bytes);
    }
  }
  void restore_buffers() {
    for (std::size_t i = 0; i < saved_.size(); ++i)
      std::memcpy(buffer_bytes(net_.buffers[i]).first, saved_[i].data(), saved_[i].size());
  }
  static std::pair<void*, std::size_t> buffer_bytes(const BufferRef& b) {
    const auto n = static_cast<std::size_t>(b.size);
    if (b.f32) return {b.f32, n * sizeof(float)};
    if (b.f64) return {b.f64, n * sizeof(double)};
    return {b.i64, n * sizeof(std::int64_t)};
  }

  std::unique_ptr<SyncGroup> group_;  // the synced BN modes' group (before the network: outlives its layers)
  CpuContext ctx_;
  Network net_;
  std::unique_ptr<Sgd> sgd_;
  std::unique_ptr<CpuGradOverlap> overlap_;  // null: all-reduce after the backward
  std::int64_t micro_batches_ = 0;           // set_micro_batches (0: unknown, no overlap)
  std::int64_t micro_in_step_ = 0;           // train_micro calls since the last reduce_and_update
  Tensor x_, logits_, dlogits_;
  bool step_open_ = false;               // train_micro ran since the last reduce_and_update
  double open_loss_ = 0, loss_ = 0;      // Σ loss of the open step's micro-batches; of the last checked step
  std::int64_t open_correct_ = 0, correct_ = 0;  // #correct, the same
  std::vector<std::vector<char>> saved_;  // per Model::buffers entry: its bytes at the step's start
  StepResult last_;
};

}  // namespace

std::unique_ptr<TrainModel> make_cpu_train_model(const ModelSpec& spec, const TrainConfig& cfg, Communicator& world) {
  return std::make_unique<CpuTrainModel>(spec, cfg, world);
}

}  // namespace syncbn
