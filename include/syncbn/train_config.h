// syncbn-train's configuration: every flag, its default and allowed values in one place, parsed with
// Boost.Program_options from the command line and an optional INI file (--config; command line wins),
// then validated as a whole. The same option list prints --help, the README's flag table
// (--help-markdown, checked by a test against README.md), the resolved-configuration table and
// config.ini, so none of them can drift from the parser.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "syncbn/data.h"
#include "syncbn/norm_spec.h"

namespace syncbn {

struct TrainConfig {
  // data
  std::string dataset = "fashion-mnist";
  std::string data_dir;
  std::int64_t synthetic_train = 8192, synthetic_test = 2048;
  std::string synthetic_shape = "1x28x28";
  std::string augment = "auto";  // auto (on for cifar10) | on | off
  // model
  std::string model = "convnet";
  std::int64_t width = 32;
  std::int64_t depth = 2;
  // normalization
  std::string norm = "sync";        // sync | sync:K | local | groupnorm | none (typed: TrainOptions::norm())
  std::int64_t gn_groups = 8;
  std::int64_t ghost_batch = 0;
  std::string bn_momentum = "0.1";  // a number in [0, 1], or "none" (cumulative average); typed: norm()
  double bn_eps = 1e-5;
  std::int64_t precise_bn = 0;      // PreciseBN: batches per recompute (0: off; README "PreciseBN")
  // Batch Renormalization (typed: norm().renorm*)
  bool bn_renorm = false;
  double renorm_rmax = 3.0;
  double renorm_dmax = 5.0;
  std::int64_t renorm_warmup = 5000;
  std::string fuse = "on";  // on | off: fused BN+ReLU+max-pool on the CPU (typed: norm().fuse_pool)
  // batching
  std::int64_t global_batch = 64;
  std::int64_t accum_steps = 1;
  std::string grad_accum = "fp32";  // fp32 | fp64
  // schedule and optimizer
  std::int64_t epochs = 3;
  std::int64_t max_steps = 0;
  std::int64_t stop_after = 0;
  double lr = 0.05;
  double momentum = 0.9;
  bool nesterov = true;
  double weight_decay = 5e-4;
  bool decay_norm_bias = false;
  std::int64_t warmup_steps = 100;
  std::string lr_schedule = "cosine";  // cosine | step | constant
  std::string lr_steps;                // step: comma-separated epochs (default: 50% and 75% of --epochs)
  double lr_gamma = 0.1;
  // evaluation, logging, checkpoints
  std::int64_t eval_every = 0;
  std::int64_t log_every = 50;
  std::string run_dir;
  std::int64_t save_every = 0;
  std::string resume;
  // runtime
  std::uint64_t seed = 1;
  std::int64_t threads = 1;
  double comm_timeout = 600;
  std::string device = "auto";      // auto (cuda when built with it and a device is visible) | cpu | cuda
  std::string precision = "fp32";  // fp32 | bf16 | fp16 (activations on the GPU; fp16 with loss scaling)
  std::string comm = "nccl";       // nccl | mpi: the GPU path's communicator (mpi: staged; no-op on the CPU)
};

// The data flags of a configuration as the data layer's options.
DataOptions data_options(const TrainConfig& cfg);

// One flag: name, group, help text (with units and allowed values), and its current value as text.
struct OptionInfo {
  std::string name, group, help;
  std::function<std::string()> value;
  bool resume_may_differ = false;  // may change between a checkpoint and the run resuming it
  // Set: the option is left out of the resume fingerprint while its value is this text (its default), so
  // checkpoints written before the option existed still resume.
  std::optional<std::string> fingerprint_unless;
};

// Outcome of parsing: run, or print help (text already produced) and exit 0.
struct ParseResult {
  bool help = false;
  std::string help_text;
};

class TrainOptions {
 public:
  TrainOptions();
  // Parses argv (and --config's INI file, which must be a readable regular file: a FIFO, a directory or
  // a read error is an error, never an empty configuration); throws syncbn::Error with a one-line
  // message on any unknown option, bad value (including a negative --seed) or unreadable file. Does not
  // validate ranges or combinations (validate() does).
  ParseResult parse(int argc, char** argv);
  // Rejects every bad value or combination with a one-line message naming the flag and the allowed
  // range: every number finite and within the bounds the code needs (no int64 product can overflow);
  // --resume FILE a regular file that can be opened (a FIFO would block its reader), --run-dir not an
  // existing non-directory. world_size matters for sync:K and the per-rank batch. On success, keeps the
  // normalization options typed (norm()).
  void validate(int world_size);

  // --norm, --gn-groups, --ghost-batch, --bn-momentum and --bn-eps as validate() parsed them: the one
  // place their texts are read. Throws when validate() has not succeeded since the last parse().
  const NormSpec& norm() const;

  TrainConfig& config() { return cfg_; }
  const TrainConfig& config() const { return cfg_; }
  const std::vector<OptionInfo>& options() const { return options_; }

  // "key = value" lines by group (config.ini), and the rank-0 table.
  std::string to_ini() const;
  std::string table() const;
  // The keys whose values must match between a checkpoint and a resuming run.
  std::string resume_fingerprint() const;

 private:
  TrainConfig cfg_;
  std::vector<OptionInfo> options_;
  std::optional<NormSpec> norm_;  // set by validate()
};

}  // namespace syncbn
