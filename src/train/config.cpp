#include <boost/program_options.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>
#include <type_traits>

#include "syncbn/config.h"
#include "syncbn/data.h"
#include "syncbn/error.h"
#include "syncbn/norm_spec.h"
#include "syncbn/sampler.h"
#include "syncbn/train_config.h"

namespace po = boost::program_options;

namespace syncbn {
namespace {

std::string text_of(const std::string& v) { return v; }
std::string text_of(bool v) { return v ? "true" : "false"; }
// The shortest %g text that reads back as exactly v: config.ini, the resume fingerprint and the ranks'
// agreement compare these texts, so 0.05 and 0.0500000001 must not print alike.
std::string text_of(double v) {
  char buf[40];
  for (int digits = 6; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v || !std::isfinite(v)) break;
  }
  return buf;
}
template <class T>
std::string text_of(T v) {
  return std::to_string(v);
}

// Upper bounds of the numeric options, where the code needs one (each with its reason). Sizes of data
// are bounded by the data layer (kMaxSplitValues: a split has at most 2^32 values, so at most 2^32 samples).
constexpr std::int64_t kMaxSamples = kMaxSplitValues;  // --global-batch, --ghost-batch
constexpr std::int64_t kMaxEpochs = 1000000;           // epochs x steps/epoch (<= 2^32) stays far inside int64
constexpr std::int64_t kMaxSteps = 1000000000;         // steps x global batch (<= 2^32) fits int64
constexpr std::int64_t kMaxThreads = 1024;             // libgomp crashes near 10^6 threads; 1024 is plenty
constexpr std::int64_t kMaxGroups = 4096;              // --gn-groups divides --width <= 4096
constexpr std::int64_t kMaxPreciseBatches = 100000;    // --precise-bn: forwards of a global batch per evaluation
constexpr double kMaxCommTimeout = 604800;             // one week (1e12 s overflowed the deadline arithmetic)
constexpr std::size_t kMaxConfigBytes = std::size_t{1} << 20;  // an INI of flags is a few KiB

// The --config file's text. stat() before open: a FIFO would block the open forever, and a directory
// or an unreadable file must be an error, not an empty configuration.
std::string read_config_file(const std::string& path) {
  std::string why;
  const int fd = open_regular_file(path, &why);
  SBN_CHECK(fd >= 0, "--config " + path + ": cannot read the file (" + why + ")");
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const int err = got < 0 ? errno : 0;
      ::close(fd);
      SBN_CHECK(err == 0, "--config " + path + ": cannot read the file (" + std::strerror(err) + ")");
      return text;
    }
    text.append(buf, static_cast<std::size_t>(got));
    if (text.size() > kMaxConfigBytes) {
      ::close(fd);
      SBN_FAIL("--config " + path + ": more than " + std::to_string(kMaxConfigBytes) +
               " bytes: not an INI file of syncbn-train options");
    }
  }
}

// Boost parses "-1" into an unsigned option as 2^64 - 1: refuse a sign on every unsigned option.
void reject_negative_unsigned(const po::parsed_options& parsed, const std::vector<std::string>& unsigned_names) {
  for (const auto& o : parsed.options) {
    if (std::find(unsigned_names.begin(), unsigned_names.end(), o.string_key) == unsigned_names.end()) continue;
    for (const auto& v : o.value) {
      const auto first = v.find_first_not_of(" \t");
      SBN_CHECK(first == std::string::npos || v[first] != '-',
                "--" + o.string_key + " must be an integer in [0, " +
                    std::to_string(std::numeric_limits<std::uint64_t>::max()) + "], got '" + v + "'");
    }
  }
}

// Whether a resumed run may give an option another value than the checkpointed run (run length, output
// and runtime options) or must give the same (everything that shapes the computation). kFixedWhenSet: as
// kFixed, but left out of the fingerprint while at its default, for options that came after checkpoints
// were written (those checkpoints, whose runs had the default, still resume).
enum class Resume { kFixed, kMayChange, kFixedWhenSet };

// The option list, built once: Boost descriptions per group plus our OptionInfo records.
struct Registry {
  std::vector<std::pair<std::string, po::options_description>> groups;
  std::vector<OptionInfo>* infos;
  std::vector<std::string> unsigned_names;  // options whose text must not start with '-'

  po::options_description& group(const std::string& name) {
    for (auto& g : groups)
      if (g.first == name) return g.second;
    groups.emplace_back(name, po::options_description(name + " options"));
    return groups.back().second;
  }

  template <class T>
  void add(const char* group_name, const char* names, T* field, Resume resume, const std::string& help) {
    std::string long_name = names;
    const auto comma = long_name.find(',');
    if (comma != std::string::npos) long_name = long_name.substr(0, comma);
    auto* sem = po::value<T>(field)->default_value(*field, text_of(*field));
    if constexpr (std::is_same_v<T, bool>) sem->implicit_value(true, "true");
    group(group_name).add_options()(names, sem, help.c_str());
    if constexpr (std::is_unsigned_v<T> && !std::is_same_v<T, bool>) unsigned_names.push_back(long_name);
    infos->push_back({long_name, group_name, help, [field] { return text_of(*field); },
                      resume == Resume::kMayChange,
                      resume == Resume::kFixedWhenSet ? std::optional<std::string>(text_of(*field)) : std::nullopt});
  }
};

void check_positive(std::int64_t v, const char* flag, std::int64_t max) {
  SBN_CHECK(v > 0 && v <= max, std::string("--") + flag + " must be a positive integer in [1, " + std::to_string(max) +
                                   "], got " + std::to_string(v));
}
void check_non_negative(std::int64_t v, const char* flag, std::int64_t max) {
  SBN_CHECK(v >= 0 && v <= max, std::string("--") + flag + " must be an integer in [0, " + std::to_string(max) +
                                    "], got " + std::to_string(v));
}

// Batch Renormalization's options, checked, into `norm` (a BatchNorm mode already parsed into it).
void checked_renorm(const TrainConfig& c, NormSpec& norm) {
  SBN_CHECK(!c.bn_renorm || norm.batchnorm(),
            "--bn-renorm renormalizes BatchNorm statistics: it needs --norm local, sync or sync:K, not " + c.norm);
  SBN_CHECK(std::isfinite(c.renorm_rmax) && c.renorm_rmax >= 1,
            "--renorm-rmax must be a finite number >= 1, got " + text_of(c.renorm_rmax));
  SBN_CHECK(std::isfinite(c.renorm_dmax) && c.renorm_dmax >= 0,
            "--renorm-dmax must be a finite number >= 0, got " + text_of(c.renorm_dmax));
  check_non_negative(c.renorm_warmup, "renorm-warmup", kMaxSteps);
  norm.renorm = c.bn_renorm;
  norm.renorm_rmax = c.renorm_rmax;
  norm.renorm_dmax = c.renorm_dmax;
  norm.renorm_warmup = c.renorm_warmup;
}

// The normalization options, checked and typed: the one place the texts of --norm and --bn-momentum
// are parsed (TrainOptions::norm() hands the result to the trainer and the models).
NormSpec checked_norm(const TrainConfig& c, int world_size) {
  NormSpec norm = parse_norm(c.norm);  // throws for an unknown text, sync:0, sync:x
  if (norm.batchnorm() && norm.sync.kind == SyncMode::kGroups)
    SBN_CHECK(world_size % norm.sync.group_size == 0, "--norm " + c.norm + ": K = " + std::to_string(norm.sync.group_size) +
                                                          " does not divide the world size " + std::to_string(world_size));
  check_positive(c.gn_groups, "gn-groups", kMaxGroups);
  if (norm.kind == NormKind::kGroupNorm)
    SBN_CHECK(c.width % c.gn_groups == 0, "--gn-groups " + std::to_string(c.gn_groups) +
                                              " must divide --width " + std::to_string(c.width));
  check_non_negative(c.ghost_batch, "ghost-batch", kMaxSamples);
  SBN_CHECK(c.ghost_batch == 0 || (norm.batchnorm() && !norm.communicates()),
            "--ghost-batch needs --norm local (ghost batches are per-rank statistics)");
  SBN_CHECK(c.ghost_batch != 1, "--ghost-batch 1 leaves one value per channel: BN needs at least 2");
  if (c.bn_momentum == "none") {
    norm.momentum.reset();  // cumulative average
  } else {
    char* end = nullptr;
    const double m = std::strtod(c.bn_momentum.c_str(), &end);
    SBN_CHECK(!c.bn_momentum.empty() && *end == '\0' && m >= 0 && m <= 1,
              "--bn-momentum must be a number in [0, 1] or none, got '" + c.bn_momentum + "'");
    norm.momentum = m;
  }
  SBN_CHECK(std::isfinite(c.bn_eps) && c.bn_eps > 0, "--bn-eps must be positive and finite, got " + text_of(c.bn_eps));
  norm.gn_groups = c.gn_groups;
  norm.ghost_batch = c.ghost_batch;
  norm.eps = c.bn_eps;
  SBN_CHECK(c.fuse == "on" || c.fuse == "off", "--fuse must be on or off, got '" + c.fuse + "'");
  norm.fuse_pool = c.fuse == "on";
  checked_renorm(c, norm);
  return norm;
}

// Every BN batch (a sync group's share of a micro-batch, or a ghost batch) needs 2+ samples; a rank with
// no samples in local mode just has nothing to normalize. --global-batch and --accum-steps already checked.
void check_bn_batches(const TrainConfig& c, const NormSpec& norm, int world_size) {
  if (!norm.batchnorm()) return;
  const std::int64_t micro = c.global_batch / c.accum_steps;
  const int group = norm.sync.kind == SyncMode::kLocal    ? 1
                    : norm.sync.kind == SyncMode::kGroups ? norm.sync.group_size
                                                          : world_size;
  for (int g0 = 0; g0 < world_size; g0 += group) {
    std::int64_t n = 0;
    for (int r = g0; r < g0 + group; ++r) n += rank_slice(micro, world_size, r).count;
    const std::string who = group == 1 ? "rank " + std::to_string(g0) : "sync group of ranks " + std::to_string(g0) +
                                                                            ".." + std::to_string(g0 + group - 1);
    SBN_CHECK(n != 1 && (n != 0 || group == 1),
              "--global-batch " + std::to_string(c.global_batch) + " / --accum-steps " + std::to_string(c.accum_steps) +
                  " over " + std::to_string(world_size) + " ranks gives the " + who + " " + std::to_string(n) +
                  " sample(s) per micro-batch: BatchNorm needs at least 2 per sync group");
    if (c.ghost_batch > 0 && n % c.ghost_batch == 1)
      SBN_FAIL("--ghost-batch " + std::to_string(c.ghost_batch) + " splits the " + std::to_string(n) + " samples of " +
               who + " into a last ghost batch of 1 sample: BatchNorm needs at least 2");
  }
}

// The table's last groups, output and runtime (register_options, below, ends with them).
void register_output_options(Registry& reg, TrainConfig& c) {
  reg.add("Output", "eval-every", &c.eval_every, Resume::kMayChange,
          "also evaluate every N optimizer steps (0: at the end of each epoch only)");
  reg.add("Output", "log-every", &c.log_every, Resume::kMayChange,
          "progress line and metrics row every N optimizer steps");
  reg.add("Output", "run-dir", &c.run_dir, Resume::kMayChange,
          "directory for config.ini, metrics.csv, metrics.jsonl and checkpoints (empty: none)");
  reg.add("Output", "save-every", &c.save_every, Resume::kMayChange,
          "checkpoint every N optimizer steps into --run-dir (0: only at the end when --run-dir is set)");
  reg.add("Output", "resume", &c.resume, Resume::kMayChange,
          "resume from a checkpoint file, or 'latest' (the newest in --run-dir)");
  reg.add("Runtime", "seed", &c.seed, Resume::kFixed,
          "seed of the initialization, the sampler, augmentation and synthetic data (0 .. 2^64-1)");
  reg.add("Runtime", "threads", &c.threads, Resume::kMayChange,
          "oneDNN threads per rank (1 .. 1024)");
  reg.add("Runtime", "comm-timeout", &c.comm_timeout, Resume::kMayChange,
          "seconds a collective may take before the job is aborted as hung (0: never; at most 604800, a week)");
  reg.add("Runtime", "device", &c.device, Resume::kMayChange,
          "auto | cpu | cuda: auto = cuda when this build has the CUDA path and every rank sees a GPU");
  reg.add("Runtime", "precision", &c.precision, Resume::kFixed,
          "fp32 | bf16 | fp16: activation precision on the GPU (fp16 with dynamic loss scaling); on the CPU fp32, or "
          "bf16: bf16 convolutions and linear layers (fp32 accumulation, master weights and gradients) and bf16 "
          "activations between a convolution and a fused BN+pool and into the next convolution (BN statistics in "
          "double); needs AVX-512, fast with AVX512-BF16 or AMX");
  reg.add("Runtime", "comm", &c.comm, Resume::kMayChange,
          "nccl | mpi: the GPU path's communicator; mpi stages device buffers through host memory over MPI "
          "(host-synchronous; lets ranks share a GPU); the CPU path always uses MPI and ignores it");
}

// Every flag of syncbn-train, in --help order: group, name, field, whether a resumed run may change it,
// help text. One table, one row shape: the help text stays on one line, however long.
void register_options(Registry& reg, TrainConfig& c) {
  reg.add("Data", "dataset", &c.dataset, Resume::kFixed,
          "fashion-mnist | mnist | cifar10 | synthetic");
  reg.add("Data", "data-dir", &c.data_dir, Resume::kFixed,
          "dataset directory (default: /usr/share/datasets/fashion-mnist for fashion-mnist, /usr/share/datasets/mnist for mnist; required for cifar10)");
  reg.add("Data", "synthetic-train", &c.synthetic_train, Resume::kFixed,
          "synthetic: training samples");
  reg.add("Data", "synthetic-test", &c.synthetic_test, Resume::kFixed,
          "synthetic: test samples");
  reg.add("Data", "synthetic-shape", &c.synthetic_shape, Resume::kFixed,
          "synthetic: image shape CxHxW (1x28x28 or 3x32x32)");
  reg.add("Data", "augment", &c.augment, Resume::kFixed,
          "auto | on | off: random crop (pad 4) + horizontal flip; auto = on for cifar10");
  reg.add("Model", "model", &c.model, Resume::kFixed,
          "convnet (conv-norm-ReLU-pool x3, fc-norm-ReLU, fc) | resnet (3 stages of residual blocks)");
  reg.add("Model", "width", &c.width, Resume::kFixed,
          "channels of the first conv/stage (then 2x, 4x; convnet hidden fc 8x)");
  reg.add("Model", "depth", &c.depth, Resume::kFixed,
          "resnet: residual blocks per stage");
  reg.add("Normalization", "norm", &c.norm, Resume::kFixed,
          "sync (SyncBN over all ranks) | sync:K (groups of K consecutive ranks) | local (per-rank BN) | groupnorm | none");
  reg.add("Normalization", "gn-groups", &c.gn_groups, Resume::kFixed,
          "groupnorm: groups (must divide --width)");
  reg.add("Normalization", "ghost-batch", &c.ghost_batch, Resume::kFixed,
          "local: BN statistics over consecutive sub-batches of this many samples within a rank (0: off)");
  reg.add("Normalization", "bn-momentum", &c.bn_momentum, Resume::kFixed,
          "running-statistics momentum in [0, 1], or none (cumulative average)");
  reg.add("Normalization", "bn-eps", &c.bn_eps, Resume::kFixed,
          "BN/GN epsilon added to the variance");
  reg.add("Normalization", "precise-bn", &c.precise_bn, Resume::kMayChange,
          "PreciseBN: before each evaluation and checkpoint, set BN running statistics to the exact statistics of N global training batches, and evaluate with both (0: off; at most 100000)");
  // Batch Renormalization (README "Batch Renormalization").
  reg.add("Normalization", "bn-renorm", &c.bn_renorm, Resume::kFixedWhenSet,
          "Batch Renormalization (Ioffe 2017) with --norm local, sync or sync:K: y = gamma*(xhat*r + d) + beta with "
          "r = clip(sigma_B/sigma_run, 1/r_max, r_max), d = clip((mu_B - mu_run)/sigma_run, -d_max, d_max) from the "
          "running statistics, constants in backward (true | false)");
  reg.add("Normalization", "renorm-rmax", &c.renorm_rmax, Resume::kFixedWhenSet,
          "--bn-renorm: final r_max (>= 1), reached linearly from 1 over --renorm-warmup steps");
  reg.add("Normalization", "renorm-dmax", &c.renorm_dmax, Resume::kFixedWhenSet,
          "--bn-renorm: final d_max (>= 0), reached linearly from 0 over --renorm-warmup steps");
  reg.add("Normalization", "renorm-warmup", &c.renorm_warmup, Resume::kFixedWhenSet,
          "--bn-renorm: optimizer steps of the linear ramp of r_max from 1 and d_max from 0 (0: the final limits from the first step)");
  reg.add("Normalization", "fuse", &c.fuse, Resume::kMayChange,
          "on | off: the CPU model runs each BatchNorm+ReLU -> max-pool pair as one fused pass (same numbers, "
          "fewer bytes moved); off runs them separately, for comparisons. The GPU path always runs them separately");
  reg.add("Batching", "global-batch,b", &c.global_batch, Resume::kFixed,
          "samples per optimizer step over all ranks (B)");
  reg.add("Batching", "accum-steps", &c.accum_steps, Resume::kFixed,
          "micro-batches per optimizer step (B/K samples each, globally; must divide B); BN statistics are per micro-batch");
  reg.add("Batching", "grad-accum", &c.grad_accum, Resume::kFixed,
          "fp32 | fp64: parameter-gradient accumulation; fp64 (OpenBLAS DGEMM, double all-reduce) makes results independent of the world size up to double rounding, at roughly twice the step time");
  reg.add("Optimization", "epochs,e", &c.epochs, Resume::kMayChange,
          "training epochs (the last partial batch of an epoch is dropped)");
  reg.add("Optimization", "max-steps", &c.max_steps, Resume::kMayChange,
          "stop after this many optimizer steps (0: run --epochs; wins over --epochs)");
  reg.add("Optimization", "stop-after", &c.stop_after, Resume::kMayChange,
          "end this run after this many optimizer steps (counted from 0, the schedule still follows --max-steps/--epochs), saving a checkpoint to resume from: for time-limited allocations (0: off)");
  reg.add("Optimization", "lr", &c.lr, Resume::kFixed,
          "peak learning rate (per global batch)");
  reg.add("Optimization", "momentum", &c.momentum, Resume::kFixed,
          "SGD momentum in [0, 1)");
  reg.add("Optimization", "nesterov", &c.nesterov, Resume::kFixed,
          "Nesterov momentum (true | false)");
  reg.add("Optimization", "weight-decay", &c.weight_decay, Resume::kFixed,
          "L2 weight decay (not applied to norm parameters and biases)");
  reg.add("Optimization", "decay-norm-bias", &c.decay_norm_bias, Resume::kFixed,
          "also decay norm parameters and biases (true | false)");
  reg.add("Optimization", "warmup-steps", &c.warmup_steps, Resume::kFixed,
          "linear learning-rate warm-up from 0 over this many steps");
  reg.add("Optimization", "lr-schedule", &c.lr_schedule, Resume::kFixed,
          "cosine | step | constant (after warm-up)");
  reg.add("Optimization", "lr-steps", &c.lr_steps, Resume::kFixed,
          "step: comma-separated epochs at which lr *= lr-gamma (default: 50% and 75% of --epochs)");
  reg.add("Optimization", "lr-gamma", &c.lr_gamma, Resume::kFixed,
          "step: factor in (0, 1]");
  register_output_options(reg, c);
}

// Parses argv, then --config's INI file (the command line wins), into the fields `all` points at.
void store_options(int argc, char** argv, const po::options_description& all, const Registry& reg) {
  po::variables_map vm;
  try {
    // A flag given twice keeps its last value (so a wrapper's default can be overridden by appending
    // the flag): drop earlier occurrences before storing.
    po::parsed_options parsed = po::command_line_parser(argc, argv).options(all).run();
    std::vector<po::option> kept;
    for (auto it = parsed.options.rbegin(); it != parsed.options.rend(); ++it)
      if (std::none_of(kept.begin(), kept.end(), [&](const po::option& o) { return o.string_key == it->string_key; }))
        kept.insert(kept.begin(), *it);
    parsed.options = kept;
    reject_negative_unsigned(parsed, reg.unsigned_names);
    po::store(parsed, vm);
    if (vm.count("config")) {
      std::istringstream in(read_config_file(vm["config"].as<std::string>()));
      const po::parsed_options from_file = po::parse_config_file(in, all);
      reject_negative_unsigned(from_file, reg.unsigned_names);
      po::store(from_file, vm);  // stored second: the command line wins
    }
    po::notify(vm);
  } catch (const po::error& e) {
    SBN_FAIL(std::string(e.what()) + " (see --help)");
  }
}

// README.md's flag table (readme_flags checks it against this).
std::string markdown_table(const std::vector<OptionInfo>& options) {
  std::string t = "| flag | default | meaning |\n|---|---|---|\n";
  for (const auto& o : options) {
    std::string v = o.value(), text;
    for (char ch : o.help) text += ch == '|' ? std::string("\\|") : std::string(1, ch);
    t += "| `--" + o.name + "` | " + (v.empty() ? "" : "`" + v + "`") + " | " + text + " |\n";
  }
  return t;
}

}  // namespace

DataOptions data_options(const TrainConfig& cfg) {
  // DataOptions' fields in order (data.h).
  return DataOptions{cfg.dataset, cfg.data_dir, cfg.synthetic_train, cfg.synthetic_test, cfg.synthetic_shape, cfg.seed};
}

TrainOptions::TrainOptions() = default;

ParseResult TrainOptions::parse(int argc, char** argv) {
  options_.clear();
  norm_.reset();  // validate() types the new values
  Registry reg;
  reg.infos = &options_;
  TrainConfig& c = cfg_;
  std::string config_file;
  bool help = false, help_markdown = false;
  reg.group("General").add_options()
      ("help,h", po::bool_switch(&help), "show this help and exit")
      ("help-markdown", po::bool_switch(&help_markdown), "print the flag table of README.md and exit")
      ("config,c", po::value(&config_file)->value_name("FILE"),
       "read options from an INI file (key = value, same names as the flags); the command line wins");
  register_options(reg, c);
  po::options_description all("syncbn-train: data-parallel training with Synchronized BatchNorm");
  for (auto& g : reg.groups) all.add(g.second);
  store_options(argc, argv, all, reg);
  ParseResult r;
  if (help) {
    std::ostringstream os;
    os << "Usage: mpirun -np P syncbn-train [options]\n\n" << all << "\n";
    r.help = true;
    r.help_text = os.str();
  } else if (help_markdown) {
    r.help = true;
    r.help_text = markdown_table(options_);
  }
  return r;
}

void TrainOptions::validate(int world_size) {
  const TrainConfig& c = cfg_;
  norm_.reset();
  validate_data_options(data_options(c));
  SBN_CHECK(c.augment == "auto" || c.augment == "on" || c.augment == "off",
            "--augment must be auto, on or off, got '" + c.augment + "'");
  SBN_CHECK(c.model == "convnet" || c.model == "resnet", "unknown --model '" + c.model + "'; expected convnet or resnet");
  SBN_CHECK(c.width >= 1 && c.width <= 4096, "--width must be in [1, 4096], got " + std::to_string(c.width));
  SBN_CHECK(c.depth >= 1 && c.depth <= 64, "--depth must be in [1, 64], got " + std::to_string(c.depth));
  const NormSpec norm = checked_norm(c, world_size);  // normalization
  // Batching.
  check_positive(c.global_batch, "global-batch", kMaxSamples);
  check_positive(c.accum_steps, "accum-steps", kMaxSamples);
  SBN_CHECK(c.global_batch % c.accum_steps == 0, "--accum-steps " + std::to_string(c.accum_steps) +
                                                     " does not divide --global-batch " + std::to_string(c.global_batch));
  SBN_CHECK(c.grad_accum == "fp32" || c.grad_accum == "fp64",
            "--grad-accum must be fp32 or fp64, got '" + c.grad_accum + "'");
  check_bn_batches(c, norm, world_size);
  // PreciseBN (README "PreciseBN"): population statistics of BatchNorm layers only.
  check_non_negative(c.precise_bn, "precise-bn", kMaxPreciseBatches);
  SBN_CHECK(c.precise_bn == 0 || norm.batchnorm(),
            "--precise-bn recomputes BatchNorm statistics: it needs --norm sync, sync:K or local, not " + c.norm);
  // Schedule.
  check_positive(c.epochs, "epochs", kMaxEpochs);
  check_non_negative(c.max_steps, "max-steps", kMaxSteps);
  check_non_negative(c.stop_after, "stop-after", kMaxSteps);
  SBN_CHECK(std::isfinite(c.lr) && c.lr > 0, "--lr must be positive and finite, got " + text_of(c.lr));
  SBN_CHECK(c.momentum >= 0 && c.momentum < 1, "--momentum must be in [0, 1), got " + text_of(c.momentum));
  SBN_CHECK(std::isfinite(c.weight_decay) && c.weight_decay >= 0,
            "--weight-decay must be finite and >= 0, got " + text_of(c.weight_decay));
  check_non_negative(c.warmup_steps, "warmup-steps", kMaxSteps);
  SBN_CHECK(c.lr_schedule == "cosine" || c.lr_schedule == "step" || c.lr_schedule == "constant",
            "--lr-schedule must be cosine, step or constant, got '" + c.lr_schedule + "'");
  if (!c.lr_steps.empty()) {
    std::stringstream ss(c.lr_steps);
    std::string item;
    long prev = 0;
    while (std::getline(ss, item, ',')) {
      char* end = nullptr;
      const long e = std::strtol(item.c_str(), &end, 10);
      SBN_CHECK(!item.empty() && *end == '\0' && e > prev && e <= kMaxEpochs,
                "--lr-steps must be increasing epochs in [1, " + std::to_string(kMaxEpochs) +
                    "] separated by commas, got '" + c.lr_steps + "'");
      prev = e;
    }
  }
  SBN_CHECK(c.lr_gamma > 0 && c.lr_gamma <= 1, "--lr-gamma must be in (0, 1], got " + text_of(c.lr_gamma));
  // Output.
  check_non_negative(c.eval_every, "eval-every", kMaxSteps);
  check_positive(c.log_every, "log-every", kMaxSteps);
  check_non_negative(c.save_every, "save-every", kMaxSteps);
  SBN_CHECK(c.save_every == 0 || !c.run_dir.empty(), "--save-every needs --run-dir");
  SBN_CHECK(c.resume != "latest" || !c.run_dir.empty(), "--resume latest needs --run-dir");
  // Paths, checked before anything opens them: a FIFO given as the checkpoint would block its reader
  // forever. (--resume latest is resolved in the run dir by the trainer; data files by the data layer.)
  if (!c.resume.empty() && c.resume != "latest") {
    std::string why;
    const int fd = open_regular_file(c.resume, &why);
    if (fd >= 0) ::close(fd);
    SBN_CHECK(fd >= 0, "--resume " + c.resume + ": cannot open the checkpoint (" + why + ")");
  }
  if (!c.run_dir.empty()) {
    struct stat st {};
    SBN_CHECK(::stat(c.run_dir.c_str(), &st) != 0 || S_ISDIR(st.st_mode),
              "--run-dir " + c.run_dir + ": exists and is not a directory");
  }
  // Runtime.
  check_positive(c.threads, "threads", kMaxThreads);
  SBN_CHECK(c.comm_timeout >= 0 && c.comm_timeout <= kMaxCommTimeout,
            "--comm-timeout must be in [0, " + text_of(kMaxCommTimeout) + "] seconds (0: never; " +
                text_of(kMaxCommTimeout) + " = one week), got " + text_of(c.comm_timeout));
  SBN_CHECK(c.device == "auto" || c.device == "cpu" || c.device == "cuda",
            "--device must be auto, cpu or cuda, got '" + c.device + "'");
  SBN_CHECK(c.precision == "fp32" || c.precision == "bf16" || c.precision == "fp16",
            "--precision must be fp32, bf16 or fp16, got '" + c.precision + "'");
  SBN_CHECK(c.comm == "nccl" || c.comm == "mpi", "--comm must be nccl or mpi, got '" + c.comm + "'");
  norm_ = norm;
}

const NormSpec& TrainOptions::norm() const {
  SBN_CHECK(norm_.has_value(), "TrainOptions::norm() before a successful validate()");
  return *norm_;
}

std::string TrainOptions::to_ini() const {
  std::string out = "# syncbn-train configuration (load with --config)\n";
  std::string group;
  for (const auto& o : options_) {
    if (o.group != group) {
      group = o.group;
      out += "\n# " + group + "\n";
    }
    out += o.name + " = " + o.value() + "\n";
  }
  return out;
}

std::string TrainOptions::table() const {
  std::string out;
  std::string group;
  for (const auto& o : options_) {
    if (o.group != group) {
      group = o.group;
      out += "# " + group + "\n";
    }
    char line[256];
    std::snprintf(line, sizeof line, "#   %-18s %s\n", o.name.c_str(), o.value().empty() ? "-" : o.value().c_str());
    out += line;
  }
  return out;
}

std::string TrainOptions::resume_fingerprint() const {
  std::string out;
  for (const auto& o : options_) {
    if (o.resume_may_differ) continue;
    const std::string v = o.value();
    if (o.fingerprint_unless && v == *o.fingerprint_unless) continue;  // Resume::kFixedWhenSet at its default
    out += o.name + "=" + v + "\n";
  }
  return out;
}

}  // namespace syncbn
