#include "syncbn/trainer.h"


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
#include "syncbn/cpu_train_model.h"
#include "syncbn/optimizer.h"
#include "syncbn/sampler.h"
#if SBN_HAS_CUDA
#include "syncbn/cuda/train_model.h"
#endif

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

// --device auto: cuda when this build has the CUDA path and every rank sees a device, else cpu.
std::string resolve_device(const std::string& requested, Communicator& world) {
  if (requested != "auto") return requested;
#if SBN_HAS_CUDA
  const bool mine = cuda_device_available();
  return world.any(!mine, "device selection") ? "cpu" : "cuda";
#else
  (void)world;
  return "cpu";
#endif
}

}  // namespace

int run_training(const TrainOptions& options, MpiCommunicator& world) {
  const TrainConfig& cfg = options.config();
  const Log0 log(world);
  const int P = world.size(), rank = world.rank();
  world.set_timeout(cfg.comm_timeout);
  const auto t_start = std::chrono::steady_clock::now();
  const std::string device = resolve_device(cfg.device, world);
  run_agreed(world, "device", [&] {
    SBN_CHECK(device == "cpu" || SBN_HAS_CUDA, "--device cuda: this syncbn was built without CUDA (configure with nvcc available)");
    SBN_CHECK(device == "cuda" || cfg.precision == "fp32", "--precision " + cfg.precision + " needs --device cuda; the CPU path computes in fp32");
  });

  // Run directory (rank 0 writes; every rank agrees it worked).
  run_agreed(world, "run dir", [&] {
    if (rank == 0 && !cfg.run_dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(cfg.run_dir, ec);
      SBN_CHECK(!ec, "--run-dir " + cfg.run_dir + ": cannot create the directory (" + ec.message() + ")");
      write_file_atomic((std::filesystem::path(cfg.run_dir) / "config.ini").string(), options.to_ini());
    }
  });
  log("# syncbn-train %s | %d rank(s) | --norm %s | device %s, %lld thread(s) per rank | %s build\n", SBN_VERSION, P,
      cfg.norm.c_str(), device.c_str(), static_cast<long long>(cfg.threads), SBN_BUILD_TYPE);
  log("# configuration\n%s", options.table().c_str());

  // Data: every rank loads the files and validates them; a problem is reported once.
  DataSplits data;
  run_agreed(world, "data", [&] {
    data = load_dataset(data_options(cfg));
    SBN_CHECK(data.train.size() >= cfg.global_batch,
              "--global-batch " + std::to_string(cfg.global_batch) + " exceeds the training set (" +
                  std::to_string(data.train.size()) + " samples)");
  });
  log("# data: %s\n", describe(data).c_str());
  const Dataset& train = data.train;
  const bool augment = cfg.augment == "on" || (cfg.augment == "auto" && cfg.dataset == "cifar10");

  // Model (and, for the synced BN modes, its sync group, made by the model over its communicator).
  const bool batchnorm = cfg.norm != "groupnorm" && cfg.norm != "none";
  const bool communicating_norm = batchnorm && cfg.norm != "local";
  ModelSpec spec;
  spec.arch = cfg.model;
  spec.width = cfg.width;
  spec.depth = cfg.depth;
  spec.in_channels = train.channels;
  spec.height = train.height;
  spec.width_px = train.width;
  spec.classes = train.num_classes;
  spec.norm.kind = !batchnorm ? cfg.norm : cfg.norm == "local" ? "local" : "sync";
  spec.norm.gn_groups = cfg.gn_groups;
  spec.norm.ghost_batch = cfg.ghost_batch;
  if (cfg.bn_momentum == "none") spec.norm.momentum.reset();  // cumulative average
  else spec.norm.momentum = std::stod(cfg.bn_momentum);
  spec.norm.eps = cfg.bn_eps;
  std::unique_ptr<TrainModel> model;
  run_agreed(world, "model", [&] {
#if SBN_HAS_CUDA
    if (device == "cuda") {
      model = make_cuda_train_model(spec, cfg, world);
      return;
    }
#endif
    model = make_cpu_train_model(spec, cfg, world);
  });
  print_rank_table(world, log, model->device());
  log("# model %s\n# %.3f M parameters, %d SyncBN layers\n", model->describe().c_str(),
      static_cast<double>(model->num_params()) / 1e6, model->num_syncbn_layers());

  Sampler sampler(train.size(), cfg.global_batch, cfg.seed);
  const std::int64_t steps_per_epoch = sampler.steps_per_epoch();
  const std::int64_t total_steps = cfg.max_steps > 0 ? cfg.max_steps : cfg.epochs * steps_per_epoch;
  const std::int64_t micro = cfg.global_batch / cfg.accum_steps;
  const Slice my = rank_slice(micro, P, rank);
  const SyncMode mode = batchnorm ? parse_sync_mode(cfg.norm) : SyncMode{};
  const std::int64_t bn_batch = !batchnorm ? 0
                                : cfg.norm == "local" ? (cfg.ghost_batch ? cfg.ghost_batch : rank_slice(micro, P, 0).count)
                                : mode.kind == SyncMode::kSync ? micro
                                                               : micro * mode.group_size / P;
  log("# %lld steps/epoch, %lld steps; global batch %lld = %lld micro-batch(es) of %lld; rank %d takes %lld; "
      "BN batch %lld\n",
      static_cast<long long>(steps_per_epoch), static_cast<long long>(total_steps),
      static_cast<long long>(cfg.global_batch), static_cast<long long>(cfg.accum_steps), static_cast<long long>(micro),
      rank, static_cast<long long>(my.count), static_cast<long long>(bn_batch));

  // Resume.
  TrainPosition pos;
  std::int64_t resume_step = -1;
  const CheckpointMeta meta{model->signature(), options.resume_fingerprint(), options.to_ini()};
  if (!cfg.resume.empty()) {
    const std::string path = cfg.resume == "latest" ? latest_checkpoint(cfg.run_dir) : cfg.resume;
    if (path.empty()) {
      log("# --resume latest: no checkpoint in %s, starting from scratch\n", cfg.run_dir.c_str());
    } else {
      pos = load_checkpoint(path, world, *model, meta);
      model->state_from_host();
      resume_step = pos.step;
      log("# resumed from %s at step %lld (epoch %lld)\n", path.c_str(), static_cast<long long>(pos.step),
          static_cast<long long>(pos.epoch + 1));
    }
  }
  MetricsLog metrics(rank == 0 ? cfg.run_dir : "", resume_step);

  auto save = [&](std::int64_t step) {
    if (cfg.run_dir.empty()) return;
    if (batchnorm && !communicating_norm) model->average_running_stats(world);
    const std::string path = checkpoint_path(cfg.run_dir, step);
    model->state_to_host();
    run_agreed(world, "checkpoint save", [&] {
      if (rank == 0) save_checkpoint(path, *model, pos, meta);
    });
    log("# checkpoint %s\n", path.c_str());
  };
  // The 1-based epoch an optimizer step (1-based) belongs to.
  auto epoch_of = [&](std::int64_t step) { return step > 0 ? (step - 1) / steps_per_epoch + 1 : 1; };
  auto run_eval = [&](std::int64_t step) {
    if (batchnorm && !communicating_norm) model->average_running_stats(world);
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
  std::vector<float> images(static_cast<std::size_t>(std::max<std::int64_t>(my.count, 1) * train.sample_floats()));
  std::vector<std::int32_t> labels(static_cast<std::size_t>(std::max<std::int64_t>(my.count, 1)));
  double window_start = now_seconds();
  std::int64_t window_steps = 0;
  double window_comm = 0, window_grad = 0;
  EvalResult last_eval;
  bool evaluated_at_end = false;
  const std::int64_t end_step = cfg.stop_after > 0 ? std::min(cfg.stop_after, total_steps) : total_steps;
  while (pos.step < end_step) {
    const std::int64_t* batch = sampler.batch(pos.epoch, pos.step_in_epoch);
    const Augment aug{augment, cfg.seed, pos.epoch};
    double sums[2] = {0, 0};  // Σ loss, Σ correct over this rank's samples
    for (std::int64_t m = 0; m < cfg.accum_steps; ++m) {
      if (my.count == 0 && !communicating_norm) continue;  // nothing to compute, nobody waits for us here
      gather_batch(train, batch + m * micro + my.first, my.count, augment ? &aug : nullptr, images.data(), labels.data());
      std::int64_t correct = 0;
      model->train_micro(images.data(), labels.data(), my.count, 1.0f / static_cast<float>(cfg.global_batch), &sums[0],
                         &correct);
      sums[1] += static_cast<double>(correct);
    }
    // Sum gradients over ranks: each rank's loss is its share of the global mean, so the sum is the
    // gradient of the global batch's mean loss.
    const double lr = learning_rate(cfg, pos.step, steps_per_epoch, total_steps);
    const double grad_s = model->reduce_and_update(world, lr);
    world.allreduce_sum(sums, 2, "step loss");
    model->check();
    const double comm_s = model->take_syncbn_comm_seconds();
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
