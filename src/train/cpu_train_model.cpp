#include "syncbn/cpu_train_model.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "syncbn/bench_util.h"
#include "syncbn/optimizer.h"

extern "C" void openblas_set_num_threads(int num_threads);  // OpenBLAS (the BLAS syncbn links)

namespace syncbn {
namespace {

// Gradients are summed in buckets of at most this many bytes: few collectives, bounded message size.
constexpr std::int64_t kBucketBytes = 8 << 20;

class CpuTrainModel final : public TrainModel {
 public:
  CpuTrainModel(const ModelSpec& spec, const TrainConfig& cfg, Communicator& world) : spec_(spec) {
    omp_set_num_threads(static_cast<int>(cfg.threads));
    openblas_set_num_threads(static_cast<int>(cfg.threads));
    if (spec_.norm.kind == "sync") {
      group_ = std::make_unique<SyncGroup>(world, parse_sync_mode(cfg.norm));
      spec_.norm.group = group_.get();
    }
    model_ = build_model(spec_, ctx_, cfg.seed);
    if (cfg.grad_accum == "fp64") model_->params.enable_fp64_grads();
    sgd_ = std::make_unique<Sgd>(model_->params, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.decay_norm_bias);
  }

  std::string describe() const override { return spec_.arch + ": " + model_->net->describe(); }
  std::string device() const override { return "cpu"; }
  std::int64_t num_params() const override { return model_->params.total(); }
  int num_syncbn_layers() const override { return static_cast<int>(model_->bns.size()); }
  std::string signature() const override { return model_->signature; }

  void train_micro(const float* images, const std::int32_t* labels, std::int64_t n, float grad_scale,
                   double* loss_sum, std::int64_t* correct) override {
    load_input(images, n);
    model_->net->forward(x_, logits_, true);
    std::int64_t right = 0;
    *loss_sum += softmax_cross_entropy(logits_, labels, grad_scale, dlogits_, &right);
    *correct += right;
    model_->net->backward(x_, logits_, dlogits_, nullptr);
  }

  double reduce_and_update(Communicator& world, double lr) override {
    ParamStore& ps = model_->params;
    const std::int64_t total = ps.total();
    const double t0 = now_seconds();
    if (ps.fp64_grads()) {
      constexpr std::int64_t kBucket = kBucketBytes / static_cast<std::int64_t>(sizeof(double));
      double* g64 = ps.grads64().data();
      for (std::int64_t off = 0; off < total; off += kBucket)
        world.allreduce_sum(g64 + off, static_cast<std::size_t>(std::min(kBucket, total - off)), "gradient bucket (fp64)");
      float* g = ps.grads().data();
      for (std::int64_t i = 0; i < total; ++i) g[i] = static_cast<float>(g64[i]);
    } else {
      constexpr std::int64_t kBucket = kBucketBytes / static_cast<std::int64_t>(sizeof(float));
      float* g = ps.grads().data();
      for (std::int64_t off = 0; off < total; off += kBucket)
        world.allreduce_sum(g + off, static_cast<std::size_t>(std::min(kBucket, total - off)), "gradient bucket");
    }
    const double seconds = now_seconds() - t0;
    sgd_->step(lr);
    ps.zero_grads();
    return seconds;
  }

  void evaluate(const float* images, const std::int32_t* labels, std::int64_t n, double* loss_sum,
                std::int64_t* correct) override {
    load_input(images, n);
    model_->net->forward(x_, logits_, false);
    std::int64_t right = 0;
    *loss_sum += softmax_cross_entropy(logits_, labels, 1.0f, dlogits_, &right);
    *correct += right;
  }

  double take_syncbn_comm_seconds() override {
    double s = 0;
    for (SyncBatchNorm* bn : model_->bns) {
      s += bn->comm_seconds();
      bn->reset_comm_seconds();
    }
    return s;
  }

  void average_running_stats(Communicator& world) override {
    std::vector<double> acc;
    for (SyncBatchNorm* bn : model_->bns) {
      acc.insert(acc.end(), bn->running_mean().begin(), bn->running_mean().end());
      acc.insert(acc.end(), bn->running_var().begin(), bn->running_var().end());
    }
    if (acc.empty()) return;
    world.allreduce_sum(acc.data(), acc.size(), "local BN running-stat average");
    std::size_t i = 0;
    for (SyncBatchNorm* bn : model_->bns) {
      for (float& v : bn->running_mean()) v = static_cast<float>(acc[i++] / world.size());
      for (float& v : bn->running_var()) v = static_cast<float>(acc[i++] / world.size());
    }
  }

  std::vector<StateArray> state() override {
    std::vector<StateArray> out;
    out.push_back({"params", model_->params.values().data(), model_->params.values().size() * sizeof(float)});
    out.push_back({"momentum", sgd_->momentum_buffer().data(), sgd_->momentum_buffer().size() * sizeof(float)});
    for (const BufferRef& b : model_->buffers) {
      const std::size_t elem = b.f32 ? sizeof(float) : b.f64 ? sizeof(double) : sizeof(std::int64_t);
      void* data = b.f32 ? static_cast<void*>(b.f32) : b.f64 ? static_cast<void*>(b.f64) : static_cast<void*>(b.i64);
      out.push_back({"buffer:" + b.name, data, static_cast<std::size_t>(b.size) * elem});
    }
    return out;
  }

 private:
  // The network input: planar (n, C, H, W), copied from the loop's gather buffer.
  void load_input(const float* images, std::int64_t n) {
    x_.resize({n, spec_.in_channels, spec_.height, spec_.width_px}, Layout::kPlanar);
    if (n) std::memcpy(x_.data(), images, static_cast<std::size_t>(x_.numel()) * sizeof(float));
  }

  ModelSpec spec_;
  std::unique_ptr<SyncGroup> group_;  // the synced BN modes' group (before the model: outlives its layers)
  CpuContext ctx_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Sgd> sgd_;
  Tensor x_, logits_, dlogits_;
};

}  // namespace

std::unique_ptr<TrainModel> make_cpu_train_model(const ModelSpec& spec, const TrainConfig& cfg, Communicator& world) {
  return std::make_unique<CpuTrainModel>(spec, cfg, world);
}

}  // namespace syncbn
