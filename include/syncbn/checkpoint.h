// Checkpoints: model parameters, optimizer momentum, BN buffers, the step/epoch position (the sampler and
// augmentation are pure functions of seed, epoch and step, so the position is their whole state), and
// the configuration. One self-describing binary file with a checksum; rank 0 writes it to a temporary
// file, fsyncs and renames, so a crash never leaves a half-written checkpoint under the real name.
// On resume every rank reads the file and the ranks check they loaded identical bytes (hash agreement);
// a checkpoint of another model or configuration is refused, naming what differs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "syncbn/communicator.h"
#include "syncbn/train_model.h"

namespace syncbn {

struct TrainPosition {
  std::int64_t step = 0;   // optimizer steps done
  std::int64_t epoch = 0;  // epoch of the next step
  std::int64_t step_in_epoch = 0;
};

struct CheckpointMeta {
  std::string signature;    // Model::signature
  std::string fingerprint;  // TrainOptions::resume_fingerprint()
  std::string config_ini;   // the whole configuration, for the record
};

// Serializes model.state() and the position and writes atomically (temp file + fsync + rename). Call on
// one rank, after model.state_to_host().
void save_checkpoint(const std::string& path, TrainModel& model, const TrainPosition& pos, const CheckpointMeta& meta);

// Reads `path` on every rank of `comm`, checks that all ranks read the same bytes and that the
// checkpoint matches this run (signature and fingerprint), then fills model.state() (the caller then
// calls model.state_from_host()) and returns the position. Errors are agreed: every rank throws the
// same AgreedError.
TrainPosition load_checkpoint(const std::string& path, Communicator& comm, TrainModel& model,
                              const CheckpointMeta& expected);

// "<run_dir>/checkpoint-<step, 8 digits>.ckpt"
std::string checkpoint_path(const std::string& run_dir, std::int64_t step);
// The newest checkpoint in run_dir ("" if none).
std::string latest_checkpoint(const std::string& run_dir);

}  // namespace syncbn
