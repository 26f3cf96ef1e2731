// metrics.csv and metrics.jsonl in the run directory: one row per logged step and per evaluation.
// Rows are kept in memory and both files are rewritten atomically (temp + rename) at every flush, so a
// reader never sees a half-written line; on resume the rows up to the resumed step are kept.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace syncbn {

struct MetricRow {
  std::string kind;  // "train" or "eval"
  std::int64_t step = 0, epoch = 0;
  double loss = 0, acc = 0, lr = 0;
  std::string norm;
  std::int64_t bn_batch = 0, global_batch = 0, world_size = 0;
  double step_ms = 0, comm_ms = 0;         // step wall time; time in SyncBN collectives (rank 0)
  double images_per_s = 0, grad_comm_ms = 0;
};

// Throughput of the steps since the last report, with the time spent outside training (evaluation,
// checkpoints) excluded, so the first report after an evaluation is not inflated or deflated by it.
class RateWindow {
 public:
  explicit RateWindow(double now) : start_(now) {}
  // One optimizer step ended; comm_s / grad_s: its seconds in SyncBN and gradient all-reduces.
  void add_step(double comm_s, double grad_s);
  // `seconds` of the window were not training.
  void exclude(double seconds) { excluded_ += seconds; }
  struct Rates {
    double step_ms = 0, images_per_s = 0, comm_ms = 0, grad_ms = 0;  // per step / per second of training
  };
  // The window's rates at time `now` (global_batch images per step); starts a new window at `now`.
  Rates take(double now, std::int64_t global_batch);

 private:
  double start_, excluded_ = 0, comm_ = 0, grad_ = 0;
  std::int64_t steps_ = 0;
};

class MetricsLog {
 public:
  // Empty run_dir: rows are dropped. resume_step >= 0: keep existing rows with step <= resume_step.
  MetricsLog(const std::string& run_dir, std::int64_t resume_step);
  void add(const MetricRow& row);
  void flush();  // call on one rank

  static const char* csv_header();

 private:
  std::string dir_;
  std::vector<std::pair<std::string, std::string>> rows_;  // (csv line, json line)
};

}  // namespace syncbn
