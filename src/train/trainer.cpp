#include "syncbn/trainer.h"


#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "syncbn/agreement.h"
#include "syncbn/app.h"
#include "syncbn/bench_util.h"
#include "syncbn/checkpoint.h"
#include "syncbn/config.h"
#include "syncbn/data.h"
#include "syncbn/error.h"
#include "syncbn/metrics.h"
#include "syncbn/model_factory.h"
#include "syncbn/optimizer.h"
#include "syncbn/run_control.h"
#include "syncbn/sampler.h"

namespace syncbn {
namespace {

// Evaluation runs the test shard in batches of this many samples (eval mode: no communication).
constexpr std::int64_t kEvalBatch = 500;

std::string hms(double seconds) {
  const long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

// The rank → host/device table: every rank's host name, node-local rank and device, gathered with one
// all-reduce (each rank fills its own row; the rest are zeros).
void print_rank_table(Communicator& world, const Log0& log, const std::string& device) {
  constexpr int kHost = 48, kDev = 80, kRow = kHost + kDev + 1;
  const int P = world.size();
  std::vector<double> rows(static_cast<std::size_t>(P * kRow), 0.0);
  double* mine = rows.data() + static_cast<std::size_t>(world.rank() * kRow);
  for (int i = 0; i < kHost - 1 && i < static_cast<int>(world.host().size()); ++i)
    mine[i] = static_cast<unsigned char>(world.host()[static_cast<std::size_t>(i)]);
  for (int i = 0; i < kDev - 1 && i < static_cast<int>(device.size()); ++i)
    mine[kHost + i] = static_cast<unsigned char>(device[static_cast<std::size_t>(i)]);
  mine[kRow - 1] = world.local_rank();
  world.allreduce_sum(rows.data(), rows.size(), "rank table");
  auto text = [&](int r, int from, int len) {
    std::string out;
    for (int i = 0; i < len && rows[static_cast<std::size_t>(r * kRow + from + i)] != 0; ++i)
      out += static_cast<char>(rows[static_cast<std::size_t>(r * kRow + from + i)]);
    return out;
  };
  log("# rank  host                            local_rank  device\n");
  for (int r = 0; r < P; ++r)
    log("# %4d  %-31s %-11d %s\n", r, text(r, 0, kHost).c_str(),
        static_cast<int>(rows[static_cast<std::size_t>(r * kRow + kRow - 1)]), text(r, kHost, kDev).c_str());
}

struct EvalResult {
  double loss = 0, acc = 0;
};

EvalResult evaluate(TrainModel& model, const Dataset& test, Communicator& world) {
  const Slice shard = rank_slice(test.size(), world.size(), world.rank());
  std::vector<std::int64_t> idx;
  std::vector<float> images;
  std::vector<std::int32_t> labels;
  double sums[2] = {0, 0};  // loss, correct
  for (std::int64_t b = 0; b < shard.count; b += kEvalBatch) {
    const std::int64_t n = std::min(kEvalBatch, shard.count - b);
    idx.resize(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) idx[static_cast<std::size_t>(i)] = shard.first + b + i;
    images.resize(static_cast<std::size_t>(n * test.sample_floats()));
    labels.resize(static_cast<std::size_t>(n));
    gather_batch(test, idx.data(), n, nullptr, images.data(), labels.data());
    std::int64_t correct = 0;
    model.evaluate(images.data(), labels.data(), n, &sums[0], &correct);
    sums[1] += static_cast<double>(correct);
  }
  model.check();
  world.allreduce_sum(sums, 2, "eval sums");
  return {sums[0] / static_cast<double>(test.size()), sums[1] / static_cast<double>(test.size())};
}

// One training job on this rank: set-up (agreement, data, run dir, model, resume), then optimizer
// steps with logging, evaluation and checkpoints. Every decision that ends the job early (a stop
// signal, a failed metrics write, a non-finite step) is taken by every rank at the same step boundary:
// the flags travel inside the step's loss all-reduce, and the non-finite check reads the all-reduced
// gradients, so no collective is added and no rank is left waiting in one.
class TrainingRun {
 public:
  TrainingRun(const TrainOptions& options, MpiCommunicator& world)
      : options_(options), cfg_(options.config()), world_(world), log_(world), rank_(world.rank()) {}

  int run() {
    set_up();
    const std::int64_t end_step = cfg_.stop_after > 0 ? std::min(cfg_.stop_after, total_steps_) : total_steps_;
    bool evaluated_at_end = false;
    while (pos_.step < end_step) {
      const StepEnd end = train_step();
      if (end.stop_signal) return stop_on_signal();
      if (end.write_failed) fail_after_write_error();
      const bool epoch_end = pos_.step_in_epoch == 0;
      if (pos_.step % cfg_.log_every == 0 || pos_.step == total_steps_) log_progress(end);
      const bool eval_now = epoch_end || (cfg_.eval_every > 0 && pos_.step % cfg_.eval_every == 0);
      // Evaluation and checkpoints are kept out of the throughput window.
      const double t0 = now_seconds();
      if (eval_now || pos_.step == total_steps_) {
        last_eval_ = run_eval(pos_.step);
        evaluated_at_end = pos_.step == total_steps_;
      }
      if (cfg_.save_every > 0 && pos_.step % cfg_.save_every == 0 && pos_.step < end_step) save();
      window_.exclude(now_seconds() - t0);
    }
    if (!evaluated_at_end) last_eval_ = run_eval(pos_.step);
    if (world_.any(!write_error_.empty(), "metrics write")) fail_after_write_error();
    save();
    const double wall = now_seconds() - t_start_;
    if (pos_.step < total_steps_) {
      log_("stopped at step %lld of %lld (--stop-after); resume with --resume latest\n",
           static_cast<long long>(pos_.step), static_cast<long long>(total_steps_));
    }
    log_("final test accuracy %.2f%% (loss %.4f) after %lld steps, %.1f s%s\n", 100 * last_eval_.acc, last_eval_.loss,
         static_cast<long long>(pos_.step), wall, cfg_.precise_bn > 0 ? " (PreciseBN statistics)" : "");
    return 0;
  }

 private:
  // What every rank learned at the end of a step (the same on every rank).
  struct StepEnd {
    double loss = 0, acc = 0, lr = 0;
    bool stop_signal = false;   // some rank received SIGTERM/SIGINT/SIGUSR1
    bool write_failed = false;  // rank 0 could not write the metrics files
  };

  // ---- set-up ----
  void set_up() {
    world_.set_timeout(cfg_.comm_timeout);
    agree_on_options(world_, options_);  // before anything acts on them
    device_ = resolve_device(cfg_.device, world_);
    run_agreed(world_, "device", [&] {
      SBN_CHECK(device_ == "cuda" || cfg_.precision != "fp16", "--precision fp16 needs --device cuda; the CPU path computes in fp32 or bf16");
    });
    // Every rank must train the same thing (options and build agreed above); nothing is written before
    // the data agree too.
    run_agreed(world_, "data", [&] {
      data_ = load_dataset(data_options(cfg_));
      SBN_CHECK(data_.train.size() >= cfg_.global_batch,
                "--global-batch " + std::to_string(cfg_.global_batch) + " exceeds the training set (" +
                    std::to_string(data_.train.size()) + " samples)");
    });
    agree_on_data(world_, data_, data_options(cfg_));
    open_run_dir();
    log_("# syncbn-train %s (%s) | %d rank(s) | --norm %s | device %s, %lld thread(s) per rank | %s build\n",
         SBN_VERSION, SBN_GIT_COMMIT, world_.size(), cfg_.norm.c_str(), device_.c_str(), static_cast<long long>(cfg_.threads), SBN_BUILD_TYPE);
    log_("# configuration\n%s", options_.table().c_str());
    log_("# data: %s\n", describe(data_).c_str());
    build_model();
    plan_steps();
    resume();
    metrics_ = std::make_unique<MetricsLog>(rank_ == 0 ? cfg_.run_dir : "", resume_step_);
    const std::int64_t my_count = std::max<std::int64_t>(my_.count, 1);
    images_.resize(static_cast<std::size_t>(my_count * data_.train.sample_floats()));
    labels_.resize(static_cast<std::size_t>(my_count));
    window_ = RateWindow(now_seconds());
  }

  // Rank 0 creates the run directory, takes its lock (one job per run dir), clears what an interrupted
  // job left half-written and writes config.ini; every rank agrees it worked.
  void open_run_dir() {
    run_agreed(world_, "run dir", [&] {
      if (rank_ != 0 || cfg_.run_dir.empty()) return;
      std::error_code ec;
      std::filesystem::create_directories(cfg_.run_dir, ec);
      SBN_CHECK(!ec, "--run-dir " + cfg_.run_dir + ": cannot create the directory (" + ec.message() + ")");
      lock_ = std::make_unique<RunDirLock>(cfg_.run_dir);
      if (const int n = remove_stale_temporaries(cfg_.run_dir))
        log_("# run dir: removed %d temporary file(s) of an interrupted write\n", n);
      write_file_atomic((std::filesystem::path(cfg_.run_dir) / "config.ini").string(), options_.to_ini());
    });
  }

  void build_model() {
    const Dataset& train = data_.train;
    // ModelSpec's fields in order: arch, width, depth, in_channels, height, width_px, classes, norm.
    const ModelSpec spec{cfg_.model, cfg_.width, cfg_.depth,
                         train.channels, train.height, train.width, train.num_classes, norm_};
    run_agreed(world_, "model", [&] { model_ = make_train_model(device_, spec, cfg_, world_); });
    model_->set_micro_batches(cfg_.accum_steps);  // the model overlaps the last one's backward with its all-reduce
    print_rank_table(world_, log_, model_->device());
    log_("# model %s\n# %.3f M parameters, %d SyncBN layers\n", model_->describe().c_str(),
         static_cast<double>(model_->num_params()) / 1e6, model_->num_syncbn_layers());
  }

  void plan_steps() {
    const int P = world_.size();
    sampler_ = std::make_unique<Sampler>(data_.train.size(), cfg_.global_batch, cfg_.seed);
    steps_per_epoch_ = sampler_->steps_per_epoch();
    total_steps_ = cfg_.max_steps > 0 ? cfg_.max_steps : cfg_.epochs * steps_per_epoch_;
    micro_ = cfg_.global_batch / cfg_.accum_steps;
    my_ = rank_slice(micro_, P, rank_);
    const SyncMode& sync = norm_.sync;
    bn_batch_ = !norm_.batchnorm()              ? 0
                : sync.kind == SyncMode::kLocal ? (norm_.ghost_batch ? norm_.ghost_batch : rank_slice(micro_, P, 0).count)
                : sync.kind == SyncMode::kSync  ? micro_
                                                : micro_ * sync.group_size / P;
    log_("# %lld steps/epoch, %lld steps; global batch %lld = %lld micro-batch(es) of %lld; rank %d takes %lld; "
         "BN batch %lld\n",
         static_cast<long long>(steps_per_epoch_), static_cast<long long>(total_steps_),
         static_cast<long long>(cfg_.global_batch), static_cast<long long>(cfg_.accum_steps),
         static_cast<long long>(micro_), rank_, static_cast<long long>(my_.count), static_cast<long long>(bn_batch_));
  }

  void resume() {
    meta_ = CheckpointMeta{model_->signature(), options_.resume_fingerprint(), options_.to_ini()};
    if (cfg_.resume.empty()) return;
    const std::string path = cfg_.resume == "latest" ? latest_checkpoint(cfg_.run_dir) : cfg_.resume;
    if (path.empty()) {
      log_("# --resume latest: no checkpoint in %s, starting from scratch\n", cfg_.run_dir.c_str());
      return;
    }
    pos_ = load_checkpoint(path, world_, *model_, meta_);
    // Every rank read the same bytes (load_checkpoint agrees on that), so every rank decides alike.
    const bool fits = pos_.step >= 0 && pos_.epoch >= 0 && pos_.step_in_epoch >= 0 &&
                      pos_.step_in_epoch < steps_per_epoch_ && pos_.epoch * steps_per_epoch_ + pos_.step_in_epoch == pos_.step;
    if (!fits) {
      throw AgreedError("--resume " + path + ": its position (step " + std::to_string(pos_.step) + ", epoch " +
                        std::to_string(pos_.epoch + 1) + ", step " + std::to_string(pos_.step_in_epoch) +
                        " of the epoch) does not fit this dataset and batch (" + std::to_string(steps_per_epoch_) +
                        " steps per epoch): was the data changed?");
    }
    model_->state_from_host();
    resume_step_ = pos_.step;
    log_("# resumed from %s at step %lld (epoch %lld)\n", path.c_str(), static_cast<long long>(pos_.step),
         static_cast<long long>(pos_.epoch + 1));
  }

  // ---- one optimizer step ----
  StepEnd train_step() {
    const std::int64_t* batch = sampler_->batch(pos_.epoch, pos_.step_in_epoch);
    const bool augment = cfg_.augment == "on" || (cfg_.augment == "auto" && cfg_.dataset == "cifar10");
    const Augment aug{augment, cfg_.seed, pos_.epoch};
    // Batch Renormalization: this step's limits, a function of the step alone (so resuming is exact).
    if (norm_.renorm) {
      const BnRenormLimits limits = norm_.renorm_limits(pos_.step);
      model_->set_renorm_limits(limits.rmax, limits.dmax);
    }
    // Σ loss and Σ correct over this rank's samples, then the flags every rank must act on together.
    double sums[4] = {0, 0, 0, 0};
    for (std::int64_t m = 0; m < cfg_.accum_steps; ++m) {
      if (my_.count == 0 && !norm_.communicates()) continue;  // nothing to compute, nobody waits for us here
      gather_batch(data_.train, batch + m * micro_ + my_.first, my_.count, augment ? &aug : nullptr, images_.data(),
                   labels_.data());
      // No sums per micro-batch: a device model would have to wait for each (step_totals after check()).
      model_->train_micro(images_.data(), labels_.data(), my_.count, 1.0f / static_cast<float>(cfg_.global_batch),
                          nullptr, nullptr);
    }
    // Sum gradients over ranks: each rank's loss is its share of the global mean, so the sum is the
    // gradient of the global batch's mean loss. The model commits the step only if they are finite.
    StepEnd end;
    end.lr = learning_rate(cfg_, pos_.step, steps_per_epoch_, total_steps_);
    const double grad_s = model_->reduce_and_update(world_, end.lr);
    model_->check();  // the step's one host wait on a device: deferred errors, the verdict, the sums
    std::int64_t correct = 0;
    model_->step_totals(&sums[0], &correct);
    sums[1] = static_cast<double>(correct);
    sums[2] = stop_.pending() != 0 ? 1.0 : 0.0;
    sums[3] = write_error_.empty() ? 0.0 : 1.0;
    world_.allreduce_sum(sums, 4, "step loss");
    end.loss = sums[0] / static_cast<double>(cfg_.global_batch);
    end.acc = sums[1] / static_cast<double>(cfg_.global_batch);
    end.stop_signal = sums[2] > 0;
    end.write_failed = sums[3] > 0;
    const StepResult result = model_->last_step();
    if (result.outcome == StepResult::Outcome::kNonFinite) fail_non_finite("gradient of '" + result.nonfinite + "'", end.loss);
    if (!std::isfinite(end.loss)) fail_non_finite("loss", end.loss);
    ++pos_.step;
    if (++pos_.step_in_epoch == steps_per_epoch_) {
      pos_.step_in_epoch = 0;
      ++pos_.epoch;
    }
    window_.add_step(model_->take_syncbn_comm_seconds(), grad_s);
    return end;
  }

  // Every rank sees the same all-reduced gradients and loss, so every rank throws here together.
  [[noreturn]] void fail_non_finite(const std::string& what, double loss) {
    char l[32];
    std::snprintf(l, sizeof l, "%g", loss);
    throw AgreedError("step " + std::to_string(pos_.step + 1) + ": non-finite " + what + " (loss " + l +
                      "); the step was not applied and no checkpoint was written" +
                      (last_checkpoint_.empty() ? "" : " (last good: " + last_checkpoint_ + ")") +
                      ": lower --lr or check the data");
  }

  // ---- output ----
  void log_progress(const StepEnd& end) {
    const RateWindow::Rates r = window_.take(now_seconds(), cfg_.global_batch);
    const double eta = static_cast<double>(total_steps_ - pos_.step) * r.step_ms / 1e3;
    log_("epoch %lld step %lld/%lld loss %.4f acc %5.1f%% lr %.4f | %.0f img/s step %.1f ms syncbn-comm %.2f ms "
         "grad-comm %.2f ms | eta %s\n",
         static_cast<long long>(epoch_of(pos_.step)), static_cast<long long>(pos_.step),
         static_cast<long long>(total_steps_), end.loss, 100 * end.acc, end.lr, r.images_per_s, r.step_ms, r.comm_ms,
         r.grad_ms, hms(eta).c_str());
    write_metrics(metric_row("train", pos_.step, end.loss, end.acc, end.lr, r));
  }

  // A metrics row of `kind` at `step`: the measured values (rates: train rows only) and the run's context.
  MetricRow metric_row(const char* kind, std::int64_t step, double loss, double acc, double lr,
                       const RateWindow::Rates& r = {}) const {
    // MetricRow's fields in order (metrics.h).
    return MetricRow{kind, step, epoch_of(step), loss, acc, lr,
                     cfg_.norm, bn_batch_, cfg_.global_batch, world_.size(),
                     r.step_ms, r.comm_ms, r.images_per_s, r.grad_ms};
  }

  // Rank 0 writes; a failure (full disk) is remembered and agreed on at the next step boundary, where
  // the job saves what it can and stops with one error line.
  void write_metrics(const MetricRow& row) {
    metrics_->add(row);
    if (!write_error_.empty()) return;
    try {
      metrics_->flush();
    } catch (const std::exception& e) {
      write_error_ = e.what();
    }
  }

  [[noreturn]] void fail_after_write_error() {
    std::string saved;
    try {
      save();
      saved = last_checkpoint_.empty() ? "no --run-dir checkpoint" : "checkpoint " + last_checkpoint_ + " saved";
    } catch (const AgreedError& e) {
      saved = std::string("no checkpoint could be saved either: ") + e.what();
    }
    throw AgreedError("metrics: " + (write_error_.empty() ? std::string("rank 0 could not write the metrics files")
                                                          : write_error_) +
                      " at step " + std::to_string(pos_.step) + "; " + saved);
  }

  // The 1-based epoch an optimizer step (1-based) belongs to.
  std::int64_t epoch_of(std::int64_t step) const { return step > 0 ? (step - 1) / steps_per_epoch_ + 1 : 1; }

  EvalResult run_eval(std::int64_t step) {
    if (norm_.batchnorm() && !norm_.communicates()) model_->average_running_stats(world_);
    const EvalResult e = evaluate(*model_, data_.test, world_);
    log_("eval  epoch %lld step %lld: test loss %.4f acc %.2f%%\n", static_cast<long long>(epoch_of(step)),
         static_cast<long long>(step), e.loss, 100 * e.acc);
    write_metrics(metric_row("eval", step, e.loss, e.acc, 0));
    if (cfg_.precise_bn == 0) return e;
    // PreciseBN: the same weights once more, with the recomputed statistics (which then stay).
    recompute_bn_statistics(step);
    const EvalResult p = evaluate(*model_, data_.test, world_);
    log_("eval  epoch %lld step %lld: test loss %.4f acc %.2f%% (PreciseBN statistics of %lld batches)\n",
         static_cast<long long>(epoch_of(step)), static_cast<long long>(step), p.loss, 100 * p.acc,
         static_cast<long long>(cfg_.precise_bn));
    write_metrics(metric_row("eval-precise", step, p.loss, p.acc, 0));
    return p;
  }

  // ---- PreciseBN (README "PreciseBN") ----
  // Every BN layer's running statistics become the exact statistics of --precise-bn global training
  // batches, drawn by a sampler of their own seeded from (--seed, step): the training sampler does not
  // move, and a resumed run draws the same batches. Micro-batches and rank slices are those of a training
  // step, so each layer sees the inputs training gives it. Done once per step (evaluation, checkpoint).
  void recompute_bn_statistics(std::int64_t step) {
    if (precise_step_ == step) return;
    const std::uint64_t seed = cfg_.seed ^ (0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(step + 1));
    Sampler sampler(data_.train.size(), cfg_.global_batch, seed);
    const bool augment = cfg_.augment == "on" || (cfg_.augment == "auto" && cfg_.dataset == "cifar10");
    const Augment aug{augment, cfg_.seed, pos_.epoch};
    model_->begin_bn_population();
    for (std::int64_t k = 0; k < cfg_.precise_bn; ++k) {
      const std::int64_t* batch = sampler.batch(k / steps_per_epoch_, k % steps_per_epoch_);
      for (std::int64_t m = 0; m < cfg_.accum_steps; ++m) {
        if (my_.count == 0 && !norm_.communicates()) continue;  // as in train_step: nobody waits for us
        gather_batch(data_.train, batch + m * micro_ + my_.first, my_.count, augment ? &aug : nullptr,
                     images_.data(), labels_.data());
        model_->population_forward(images_.data(), labels_.data(), my_.count);
      }
    }
    model_->finish_bn_population(world_);  // every rank: one world all-reduce per layer
    precise_step_ = step;
  }

  // A checkpoint of the current position (rank 0 writes; agreed); its path is kept for messages.
  void save() {
    if (cfg_.run_dir.empty()) return;
    if (cfg_.precise_bn > 0) recompute_bn_statistics(pos_.step);  // PreciseBN: the checkpoint keeps them
    if (norm_.batchnorm() && !norm_.communicates()) model_->average_running_stats(world_);
    const std::string path = checkpoint_path(cfg_.run_dir, pos_.step);
    model_->state_to_host();
    run_agreed(world_, "checkpoint save", [&] {
      if (rank_ == 0) save_checkpoint(path, *model_, pos_, meta_);
    });
    last_checkpoint_ = path;
    log_("# checkpoint %s\n", path.c_str());
  }

  // SIGTERM/SIGINT/SIGUSR1 reached some rank: the step that just ended is kept, saved, and the job ends
  // with kExitStopped so that a scheduler can requeue it with --resume latest.
  int stop_on_signal() {
    save();
    const int sig = stop_.pending();
    log_("stopped by %s at step %lld of %lld: %s; resume with --resume latest\n",
         sig ? StopSignals::name(sig) : "a stop signal to another rank", static_cast<long long>(pos_.step),
         static_cast<long long>(total_steps_),
         cfg_.run_dir.empty() ? "nothing saved (no --run-dir)" : ("checkpoint " + last_checkpoint_).c_str());
    return kExitStopped;
  }

  const TrainOptions& options_;
  const TrainConfig& cfg_;
  MpiCommunicator& world_;
  const Log0 log_;
  const int rank_;
  const double t_start_ = now_seconds();
  StopSignals stop_;
  std::unique_ptr<RunDirLock> lock_;  // rank 0, with --run-dir: held until the job ends

  std::string device_;
  DataSplits data_;
  const NormSpec& norm_ = options_.norm();  // --norm & co., typed by TrainOptions::validate()
  std::unique_ptr<TrainModel> model_;
  std::unique_ptr<Sampler> sampler_;
  std::int64_t steps_per_epoch_ = 0, total_steps_ = 0, micro_ = 0, bn_batch_ = 0;
  Slice my_;
  TrainPosition pos_;
  std::int64_t resume_step_ = -1;
  CheckpointMeta meta_;
  std::string last_checkpoint_;
  std::unique_ptr<MetricsLog> metrics_;
  std::string write_error_;  // rank 0: the first failed metrics write
  std::vector<float> images_;
  std::vector<std::int32_t> labels_;
  RateWindow window_{0.0};
  EvalResult last_eval_;
  std::int64_t precise_step_ = -1;  // PreciseBN: the step whose statistics were last recomputed
};

}  // namespace

int run_training(const TrainOptions& options, MpiCommunicator& world) { return TrainingRun(options, world).run(); }

}  // namespace syncbn
