// The normalization slot of the models, typed: what --norm, --gn-groups, --ghost-batch, --bn-momentum,
// --bn-eps and the Batch Renormalization flags (--bn-renorm, --renorm-rmax, --renorm-dmax, --renorm-warmup) say. TrainOptions::validate() (train_config.h) parses those options once, through parse_norm();
// past validation no code compares norm-mode strings: the CPU and GPU models, the network plan and the
// trainer read the kind and the SyncMode, and the texts below are only printed (logs, metrics, the model's
// description) or compared as the checkpoint signature.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "syncbn/sync_batchnorm.h"

namespace syncbn {

enum class NormKind {
  kBatchNorm,  // SyncBatchNorm: statistics per rank (local), over the world (sync) or groups (sync:K)
  kGroupNorm,  // GroupNorm: per-sample statistics, no communication
  kNone,       // no normalization (the convolutions get a bias instead)
};

struct NormSpec {
  NormKind kind = NormKind::kBatchNorm;
  SyncMode sync;                         // kBatchNorm: whose statistics (default: sync over the world)
  std::int64_t gn_groups = 8;            // kGroupNorm: groups (must divide the channels)
  std::int64_t ghost_batch = 0;          // kBatchNorm, local: samples per ghost batch (0: off)
  std::optional<double> momentum = 0.1;  // running-statistics momentum; nullopt: cumulative average
  double eps = 1e-5;                     // added to the variance (BatchNorm and GroupNorm)
  // Batch Renormalization (kBatchNorm; README "Batch Renormalization"): the final limits, reached by a
  // linear ramp from (r_max, d_max) = (1, 0) over the first renorm_warmup optimizer steps.
  bool renorm = false;
  double renorm_rmax = 3.0;            // ≥ 1
  double renorm_dmax = 5.0;            // ≥ 0
  std::int64_t renorm_warmup = 5000;   // optimizer steps; 0: the final limits from the first step
  // kBatchNorm (--fuse): the CPU model runs a norm(+ReLU) → max-pool pair as one fused pass
  // (NormPlan::fused_pool). Same numbers either way; not part of the signature.
  bool fuse_pool = true;

  bool batchnorm() const { return kind == NormKind::kBatchNorm; }
  // True when the layers' statistics need a sync group (sync, sync:K): their forward and backward are
  // collectives over it.
  bool communicates() const { return batchnorm() && sync.kind != SyncMode::kLocal; }
  // The --norm text: "sync", "sync:K", "local", "groupnorm" or "none"; with Batch Renormalization
  // "+renorm" appended ("local+renorm").
  std::string str() const;
  // The ";norm=" field of a model's signature: the --norm text, except that sync:K is "sync" (the text
  // checkpoints have carried since before the spec was typed; keep it, or they stop loading). Without
  // "+renorm": renormalization adds no parameter or buffer, so its checkpoints fit plain BN and back.
  std::string signature_text() const;
  // Batch Renormalization's limits for the optimizer step `step` (0-based): r_max = 1 + (renorm_rmax − 1)·t,
  // d_max = renorm_dmax·t with t = min(1, step / renorm_warmup). A function of the step alone, so a resumed
  // run uses the limits of an uninterrupted one. Not enabled unless renorm.
  BnRenormLimits renorm_limits(std::int64_t step) const;
};

// Parses a --norm text (sync | sync:K | local | groupnorm | none) into kind and sync mode, every other field
// at its default. Throws naming the text for anything else (sync:K through parse_sync_mode: K ≥ 1).
NormSpec parse_norm(const std::string& text);

}  // namespace syncbn
