#include "syncbn/metrics.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "syncbn/bench_util.h"

namespace syncbn {

void RateWindow::add_step(double comm_s, double grad_s) {
  ++steps_;
  comm_ += comm_s;
  grad_ += grad_s;
}

RateWindow::Rates RateWindow::take(double now, std::int64_t global_batch) {
  Rates r;
  const double training = std::max(now - start_ - excluded_, 1e-9);
  if (steps_ > 0) {
    const auto n = static_cast<double>(steps_);
    r.step_ms = 1e3 * training / n;
    r.images_per_s = n * static_cast<double>(global_batch) / training;
    r.comm_ms = 1e3 * comm_ / n;
    r.grad_ms = 1e3 * grad_ / n;
  }
  *this = RateWindow(now);
  return r;
}

const char* MetricsLog::csv_header() {
  return "kind,step,epoch,loss,acc,lr,norm,bn_batch,global_batch,world_size,step_ms,comm_ms,images_per_s,grad_comm_ms";
}

MetricsLog::MetricsLog(const std::string& run_dir, std::int64_t resume_step) : dir_(run_dir) {
  if (dir_.empty() || resume_step < 0) return;
  // Keep what the interrupted run logged up to the checkpoint; drop what it logged after.
  std::ifstream csv(std::filesystem::path(dir_) / "metrics.csv"), json(std::filesystem::path(dir_) / "metrics.jsonl");
  std::string c, j;
  std::getline(csv, c);  // header
  while (std::getline(csv, c) && std::getline(json, j)) {
    const auto comma = c.find(',');
    if (comma == std::string::npos) break;
    const long long step = std::atoll(c.c_str() + comma + 1);
    if (step <= resume_step) rows_.emplace_back(c, j);
  }
}

void MetricsLog::add(const MetricRow& r) {
  if (dir_.empty()) return;
  char csv[512], json[768];
  std::snprintf(csv, sizeof csv, "%s,%lld,%lld,%.9g,%.6f,%.6g,%s,%lld,%lld,%lld,%.3f,%.3f,%.1f,%.3f", r.kind.c_str(),
                static_cast<long long>(r.step), static_cast<long long>(r.epoch), r.loss, r.acc, r.lr, r.norm.c_str(),
                static_cast<long long>(r.bn_batch), static_cast<long long>(r.global_batch),
                static_cast<long long>(r.world_size), r.step_ms, r.comm_ms, r.images_per_s, r.grad_comm_ms);
  std::snprintf(json, sizeof json,
                "{\"kind\":\"%s\",\"step\":%lld,\"epoch\":%lld,\"loss\":%.17g,\"acc\":%.17g,\"lr\":%.6g,\"norm\":\"%s\","
                "\"bn_batch\":%lld,\"global_batch\":%lld,\"world_size\":%lld,\"step_ms\":%.3f,\"comm_ms\":%.3f,"
                "\"images_per_s\":%.1f,\"grad_comm_ms\":%.3f}",
                r.kind.c_str(), static_cast<long long>(r.step), static_cast<long long>(r.epoch), r.loss, r.acc, r.lr,
                r.norm.c_str(), static_cast<long long>(r.bn_batch), static_cast<long long>(r.global_batch),
                static_cast<long long>(r.world_size), r.step_ms, r.comm_ms, r.images_per_s, r.grad_comm_ms);
  rows_.emplace_back(csv, json);
}

void MetricsLog::flush() {
  if (dir_.empty()) return;
  std::string csv = std::string(csv_header()) + "\n", json;
  for (const auto& [c, j] : rows_) {
    csv += c + "\n";
    json += j + "\n";
  }
  write_file_atomic((std::filesystem::path(dir_) / "metrics.csv").string(), csv);
  write_file_atomic((std::filesystem::path(dir_) / "metrics.jsonl").string(), json);
}

}  // namespace syncbn
