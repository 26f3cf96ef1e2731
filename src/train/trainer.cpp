#include "syncbn/trainer.h"

#include <omp.h>

extern "C" void openblas_set_num_threads(int num_threads);  // OpenBLAS (the BLAS syncbn links)

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "syncbn/app.h"
#include "syncbn/bench_util.h"
#include "syncbn/checkpoint.h"
#include "syncbn/config.h"
#include "syncbn/data.h"
#include "syncbn/error.h"
#include "syncbn/metrics.h"
#include "syncbn/model.h"
#include "syncbn/optimizer.h"
#include "syncbn/sampler.h"

namespace syncbn {
namespace {

// Gradients are summed in buckets of at most this many floats (8 MB): few collectives, bounded memory.
constexpr std::int64_t kBucketFloats = 2 << 20;
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

// The rank → host table: every rank's host name and node-local rank, gathered with one all-reduce
// (each rank fills its own row; the rest are zeros).
void print_rank_table(Communicator& world, const Log0& log) {
  constexpr int kLen = 64;
  const int P = world.size();
  std::vector<double> rows(static_cast<std::size_t>(P * (kLen + 1)), 0.0);
  double* mine = rows.data() + static_cast<std::size_t>(world.rank() * (kLen + 1));
  for (int i = 0; i < kLen - 1 && i < static_cast<int>(world.host().size()); ++i)
    mine[i] = static_cast<unsigned char>(world.host()[static_cast<std::size_t>(i)]);
  mine[kLen] = world.local_rank();
  world.allreduce_sum(rows.data(), rows.size(), "rank table");
  log("# rank  host                            local_rank\n");
  for (int r = 0; r < P; ++r) {
    std::string host;
    for (int i = 0; i < kLen && rows[static_cast<std::size_t>(r * (kLen + 1) + i)] != 0; ++i)
      host += static_cast<char>(rows[static_cast<std::size_t>(r * (kLen + 1) + i)]);
    log("# %4d  %-31s %d\n", r, host.c_str(), static_cast<int>(rows[static_cast<std::size_t>(r * (kLen + 1) + kLen)]));
  }
}

// In local BN mode every rank has its own running statistics; evaluation (and checkpoints) use their
// average over ranks, which every rank adopts (README "Normalization modes"). Running statistics never
// affect training steps, which normalize with batch statistics.
void average_running_stats(Model& model, Communicator& world) {
  std::vector<double> acc;
  for (SyncBatchNorm* bn : model.bns) {
    acc.insert(acc.end(), bn->running_mean().begin(), bn->running_mean().end());
    acc.insert(acc.end(), bn->running_var().begin(), bn->running_var().end());
  }
  if (acc.empty()) return;
  world.allreduce_sum(acc.data(), acc.size(), "local BN running-stat average");
  std::size_t i = 0;
  for (SyncBatchNorm* bn : model.bns) {
    for (float& v : bn->running_mean()) v = static_cast<float>(acc[i++] / world.size());
    for (float& v : bn->running_var()) v = static_cast<float>(acc[i++] / world.size());
  }
}

struct EvalResult {
  double loss = 0, acc = 0;
};

EvalResult evaluate(Model& model, const Dataset& test, Communicator& world) {
  const Slice shard = rank_slice(test.size(), world.size(), world.rank());
  Tensor x, logits, dlogits;
  std::vector<std::int64_t> idx;
  std::vector<std::int32_t> labels;
  double sums[2] = {0, 0};  // loss, correct
  for (std::int64_t b = 0; b < shard.count; b += kEvalBatch) {
    const std::int64_t n = std::min(kEvalBatch, shard.count - b);
    idx.resize(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) idx[static_cast<std::size_t>(i)] = shard.first + b + i;
    x.resize({n, test.channels, test.height, test.width}, Layout::kPlanar);
    labels.resize(static_cast<std::size_t>(n));
    gather_batch(test, idx.data(), n, nullptr, x.data(), labels.data());
    model.net->forward(x, logits, false);
    std::int64_t correct = 0;
    sums[0] += softmax_cross_entropy(logits, labels.data(), 1.0f, dlogits, &correct);
    sums[1] += static_cast<double>(correct);
  }
  world.allreduce_sum(sums, 2, "eval sums");
  return {sums[0] / static_cast<double>(test.size()), sums[1] / static_cast<double>(test.size())};
}

}  // namespace

int run_training(const TrainOptions& options, MpiCommunicator& world) {
  const TrainConfig& cfg = options.config();
  const Log0 log(world);
  const int P = world.size(), rank = world.rank();
  world.set_timeout(cfg.comm_timeout);
  omp_set_num_threads(static_cast<int>(cfg.threads));
  openblas_set_num_threads(static_cast<int>(cfg.threads));
  SBN_CHECK(cfg.device == "cpu", "--device cuda: GPU training is not available in this build yet; use --device cpu");
  const auto t_start = std::chrono::steady_clock::now();

  // Run directory (rank 0 writes; every rank agrees it worked).
  run_agreed(world, "run dir", [&] {
    if (rank == 0 && !cfg.run_dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(cfg.run_dir, ec);
      SBN_CHECK(!ec, "--run-dir " + cfg.run_dir + ": cannot create the directory (" + ec.message() + ")");
      write_file_atomic((std::filesystem::path(cfg.run_dir) / "config.ini").string(), options.to_ini());
    }
  });
  log("# syncbn-train %s | %d rank(s) | --norm %s | device cpu, %lld oneDNN thread(s) per rank | %s build\n",
      SBN_VERSION, P, cfg.norm.c_str(), static_cast<long long>(cfg.threads), SBN_BUILD_TYPE);
  log("# configuration\n%s", options.table().c_str());
  print_rank_table(world, log);

  // Data: every rank loads the files and validates them; a problem is reported once.
  DataSplits data;
  run_agreed(world, "data", [&] {
    DataOptions d;
    d.dataset = cfg.dataset;
    d.dir = cfg.data_dir;
    d.synthetic_train = cfg.synthetic_train;
    d.synthetic_test = cfg.synthetic_test;
    d.synthetic_shape = cfg.synthetic_shape;
    d.seed = cfg.seed;
    data = load_dataset(d);
    SBN_CHECK(data.train.size() >= cfg.global_batch,
              "--global-batch " + std::to_string(cfg.global_batch) + " exceeds the training set (" +
                  std::to_string(data.train.size()) + " samples)");
  });
  log("# data: %s\n", describe(data).c_str());
  const Dataset& train = data.train;
  const bool augment = cfg.augment == "on" || (cfg.augment == "auto" && cfg.dataset == "cifar10");

  // Model and sync group.
  const bool batchnorm = cfg.norm != "groupnorm" && cfg.norm != "none";
  std::unique_ptr<SyncGroup> group;
  if (batchnorm) group = std::make_unique<SyncGroup>(world, parse_sync_mode(cfg.norm));
  ModelSpec spec;
  spec.arch = cfg.model;
  spec.width = cfg.width;
  spec.depth = cfg.depth;
  spec.in_channels = train.channels;
  spec.height = train.height;
  spec.width_px = train.width;
  spec.classes = train.num_classes;
  spec.norm.kind = !batchnorm ? cfg.norm : cfg.norm == "local" ? "local" : "sync";
  spec.norm.group = group.get();
  spec.norm.gn_groups = cfg.gn_groups;
  spec.norm.ghost_batch = cfg.ghost_batch;
  spec.norm.momentum = cfg.bn_momentum == "none" ? -1.0 : std::stod(cfg.bn_momentum);
  spec.norm.eps = cfg.bn_eps;
  CpuContext ctx;
  std::unique_ptr<Model> model;
  run_agreed(world, "model", [&] { model = build_model(spec, ctx, cfg.seed); });
  const bool communicating_norm = batchnorm && cfg.norm != "local";
  log("# model %s: %s\n# %.3f M parameters, %zu SyncBN layers\n", cfg.model.c_str(), model->net->describe().c_str(),
      static_cast<double>(model->params.total()) / 1e6, model->bns.size());

  if (cfg.grad_accum == "fp64") model->params.enable_fp64_grads();
  Sgd sgd(model->params, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.decay_norm_bias);
  Sampler sampler(train.size(), cfg.global_batch, cfg.seed);
  const std::int64_t steps_per_epoch = sampler.steps_per_epoch();
  const std::int64_t total_steps = cfg.max_steps > 0 ? cfg.max_steps : cfg.epochs * steps_per_epoch;
  const std::int64_t micro = cfg.global_batch / cfg.accum_steps;
  const Slice my = rank_slice(micro, P, rank);
  const std::int64_t bn_batch = !batchnorm ? 0
                                : cfg.norm == "local" ? (cfg.ghost_batch ? cfg.ghost_batch : rank_slice(micro, P, 0).count)
                                : cfg.norm == "sync"  ? micro
                                                      : micro * group->mode().group_size / P;
  log("# %lld steps/epoch, %lld steps; global batch %lld = %lld micro-batch(es) of %lld; rank %d takes %lld; "
      "BN batch %lld\n",
      static_cast<long long>(steps_per_epoch), static_cast<long long>(total_steps),
      static_cast<long long>(cfg.global_batch), static_cast<long long>(cfg.accum_steps), static_cast<long long>(micro),
      rank, static_cast<long long>(my.count), static_cast<long long>(bn_batch));

  // Resume.
  TrainPosition pos;
  std::int64_t resume_step = -1;
  CheckpointMeta meta{model->signature, options.resume_fingerprint(), options.to_ini()};
  if (!cfg.resume.empty()) {
    const std::string path = cfg.resume == "latest" ? latest_checkpoint(cfg.run_dir) : cfg.resume;
    if (path.empty()) {
      log("# --resume latest: no checkpoint in %s, starting from scratch\n", cfg.run_dir.c_str());
    } else {
      pos = load_checkpoint(path, world, *model, sgd.momentum_buffer(), meta);
      resume_step = pos.step;
      log("# resumed from %s at step %lld (epoch %lld)\n", path.c_str(), static_cast<long long>(pos.step),
          static_cast<long long>(pos.epoch + 1));
    }
  }
  MetricsLog metrics(rank == 0 ? cfg.run_dir : "", resume_step);

  auto save = [&](std::int64_t step) {
    if (cfg.run_dir.empty()) return;
    if (!communicating_norm && batchnorm) average_running_stats(*model, world);
    const std::string path = checkpoint_path(cfg.run_dir, step);
    run_agreed(world, "checkpoint save", [&] {
      if (rank == 0) save_checkpoint(path, *model, sgd.momentum_buffer(), pos, meta);
    });
    log("# checkpoint %s\n", path.c_str());
  };
  // The 1-based epoch an optimizer step (1-based) belongs to.
  auto epoch_of = [&](std::int64_t step) { return step > 0 ? (step - 1) / steps_per_epoch + 1 : 1; };
  auto run_eval = [&](std::int64_t step) {
    if (batchnorm && !communicating_norm) average_running_stats(*model, world);
    const EvalResult e = evaluate(*model, data.test, world);
    log("eval  epoch %lld step %lld: test loss %.4f acc %.2f%%\n", static_cast<long long>(epoch_of(step)),
        static_cast<long long>(step), e.loss, 100 * e.acc);
    MetricRow row;
    row.kind = "eval";
    row.step = step;
    row.epoch = epoch_of(step);
    row.loss = e.loss;
    row.acc = e.acc;
    row.norm = cfg.norm;
    row.bn_batch = bn_batch;
    row.global_batch = cfg.global_batch;
    row.world_size = P;
    metrics.add(row);
    metrics.flush();
    return e;
  };

  // ---- the loop ----
  Tensor x, logits, dlogits;
  std::vector<std::int32_t> labels;
  double window_start = now_seconds();
  std::int64_t window_steps = 0;
  double window_comm = 0, window_grad = 0;
  EvalResult last_eval;
  bool evaluated_at_end = false;
  const std::int64_t end_step = cfg.stop_after > 0 ? std::min(cfg.stop_after, total_steps) : total_steps;
  while (pos.step < end_step) {
    const std::int64_t* batch = sampler.batch(pos.epoch, pos.step_in_epoch);
    Augment aug{augment, cfg.seed, pos.epoch};
    double sums[2] = {0, 0};  // Σ loss, Σ correct over this rank's samples
    for (SyncBatchNorm* bn : model->bns) bn->reset_comm_seconds();
    for (std::int64_t m = 0; m < cfg.accum_steps; ++m) {
      const std::int64_t* idx = batch + m * micro + my.first;
      if (my.count == 0 && !communicating_norm) continue;  // nothing to compute, nobody waits for us here
      x.resize({my.count, train.channels, train.height, train.width}, Layout::kPlanar);
      labels.resize(static_cast<std::size_t>(my.count));
      gather_batch(train, idx, my.count, augment ? &aug : nullptr, x.data(), labels.data());
      model->net->forward(x, logits, true);
      std::int64_t correct = 0;
      sums[0] += softmax_cross_entropy(logits, labels.data(), 1.0f / static_cast<float>(cfg.global_batch), dlogits,
                                       &correct);
      sums[1] += static_cast<double>(correct);
      model->net->backward(x, logits, dlogits, nullptr);
    }
    // Sum gradients over ranks: each rank's loss is its share of the global mean, so the sum is the
    // gradient of the global batch's mean loss.
    const double tg = now_seconds();
    const std::int64_t total = model->params.total();
    if (model->params.fp64_grads()) {
      double* g64 = model->params.grads64().data();
      for (std::int64_t off = 0; off < total; off += kBucketFloats / 2)
        world.allreduce_sum(g64 + off, static_cast<std::size_t>(std::min(kBucketFloats / 2, total - off)),
                            "gradient bucket (fp64)");
      float* g = model->params.grads().data();
      for (std::int64_t i = 0; i < total; ++i) g[i] = static_cast<float>(g64[i]);
    } else {
      float* grads = model->params.grads().data();
      for (std::int64_t off = 0; off < total; off += kBucketFloats)
        world.allreduce_sum(grads + off, static_cast<std::size_t>(std::min(kBucketFloats, total - off)),
                            "gradient bucket");
    }
    world.allreduce_sum(sums, 2, "step loss");
    const double grad_s = now_seconds() - tg;
    const double lr = learning_rate(cfg, pos.step, steps_per_epoch, total_steps);
    sgd.step(lr);
    model->params.zero_grads();
    double comm_s = 0;
    for (SyncBatchNorm* bn : model->bns) comm_s += bn->comm_seconds();
    ++pos.step;
    if (++pos.step_in_epoch == steps_per_epoch) {
      pos.step_in_epoch = 0;
      ++pos.epoch;
    }
    const double t1 = now_seconds();
    ++window_steps;
    window_comm += comm_s;
    window_grad += grad_s;
    const bool epoch_end = pos.step_in_epoch == 0;
    if (pos.step % cfg.log_every == 0 || pos.step == total_steps) {
      const double elapsed = t1 - window_start;
      const double ips = static_cast<double>(window_steps * cfg.global_batch) / elapsed;
      const double step_ms = 1e3 * elapsed / static_cast<double>(window_steps);
      const double loss = sums[0] / static_cast<double>(cfg.global_batch);
      const double acc = sums[1] / static_cast<double>(cfg.global_batch);
      const double eta = static_cast<double>(total_steps - pos.step) * elapsed / static_cast<double>(window_steps);
      log("epoch %lld step %lld/%lld loss %.4f acc %5.1f%% lr %.4f | %.0f img/s step %.1f ms syncbn-comm %.2f ms "
          "grad-comm %.2f ms | eta %s\n",
          static_cast<long long>(epoch_of(pos.step)), static_cast<long long>(pos.step),
          static_cast<long long>(total_steps), loss, 100 * acc, lr, ips, step_ms,
          1e3 * window_comm / static_cast<double>(window_steps), 1e3 * window_grad / static_cast<double>(window_steps),
          hms(eta).c_str());
      MetricRow row;
      row.kind = "train";
      row.step = pos.step;
      row.epoch = epoch_of(pos.step);
      row.loss = loss;
      row.acc = acc;
      row.lr = lr;
      row.norm = cfg.norm;
      row.bn_batch = bn_batch;
      row.global_batch = cfg.global_batch;
      row.world_size = P;
      row.step_ms = step_ms;
      row.comm_ms = 1e3 * window_comm / static_cast<double>(window_steps);
      row.images_per_s = ips;
      row.grad_comm_ms = 1e3 * window_grad / static_cast<double>(window_steps);
      metrics.add(row);
      metrics.flush();
      window_start = now_seconds();
      window_steps = 0;
      window_comm = window_grad = 0;
    }
    const bool eval_now = epoch_end || (cfg.eval_every > 0 && pos.step % cfg.eval_every == 0);
    if (eval_now || pos.step == total_steps) {
      last_eval = run_eval(pos.step);
      evaluated_at_end = pos.step == total_steps;
    }
    if (cfg.save_every > 0 && pos.step % cfg.save_every == 0 && pos.step < end_step) save(pos.step);
    if (eval_now) window_start = now_seconds();  // keep evaluation time out of the throughput
  }
  if (!evaluated_at_end) last_eval = run_eval(pos.step);
  save(pos.step);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (pos.step < total_steps) {
    log("stopped at step %lld of %lld (--stop-after); resume with --resume latest\n", static_cast<long long>(pos.step),
        static_cast<long long>(total_steps));
  }
  log("final test accuracy %.2f%% (loss %.4f) after %lld steps, %.1f s\n", 100 * last_eval.acc, last_eval.loss,
      static_cast<long long>(pos.step), wall);
  return 0;
}

}  // namespace syncbn
