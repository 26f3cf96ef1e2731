// The GPU model's step status (step_status.h): layout, decode, the reported failure, the one fetch.
#include "step_status.h"

#include <cstring>
#include <string>
#include <utility>

#include "syncbn/error.h"

namespace syncbn::cuda::train {

namespace {

constexpr std::size_t kAlign = 16;  // every part starts on a 16-byte boundary (doubles, 64-bit atomics)

std::size_t aligned(std::size_t at) { return (at + kAlign - 1) / kAlign * kAlign; }

template <class T>
T read_at(const void* bytes, std::size_t offset) {
  T v;
  std::memcpy(&v, static_cast<const char*>(bytes) + offset, sizeof v);
  return v;
}

}  // namespace

StepStatusLayout step_status_layout(int bn_layers) {
  SBN_CHECK(bn_layers >= 0, "step status: negative BatchNorm layer count " + std::to_string(bn_layers));
  StepStatusLayout l;
  l.bn_layers = bn_layers;
  l.counters = 0;
  l.bn = aligned(sizeof(StepCounters));
  l.reset_bytes = aligned(l.bn + static_cast<std::size_t>(bn_layers) * sizeof(BnStepStatus));
  l.check = l.reset_bytes;
  l.scale = aligned(l.check + sizeof(GradCheck));
  l.bytes = aligned(l.scale + sizeof(LossScaleState));
  return l;
}

StepStatusView decode_step_status(const void* bytes, const StepStatusLayout& layout) {
  StepStatusView v;
  v.counters = read_at<StepCounters>(bytes, layout.counters);
  v.bn.resize(static_cast<std::size_t>(layout.bn_layers));
  for (std::size_t i = 0; i < v.bn.size(); ++i)
    v.bn[i] = read_at<BnStepStatus>(bytes, layout.bn + i * sizeof(BnStepStatus));
  v.check = read_at<GradCheck>(bytes, layout.check);
  v.scale = read_at<LossScaleState>(bytes, layout.scale);
  return v;
}

StepFailure first_step_failure(const StepStatusView& status) {
  if (status.counters.status[0]) return {StepFailure::kLabel, -1};
  for (std::size_t i = 0; i < status.bn.size(); ++i)
    if (status.bn[i].forward != kBnOk || status.bn[i].backward != kBnOk)
      return {StepFailure::kBatchNorm, static_cast<int>(i)};
  return {};
}

std::string label_error(const StepCounters& counters, std::int64_t classes) {
  return "cross-entropy: label " + std::to_string(counters.status[1]) + " outside [0, " + std::to_string(classes) +
         ") (sample " + std::to_string(counters.status[2]) + " of this rank's batch)";
}

StepStatusReader::StepStatusReader(const StepStatusLayout& layout, void* host, Fetch fetch)
    : layout_(layout), host_(host), fetch_(std::move(fetch)) {}

StepStatusReader::StepStatusReader(const StepStatusLayout& layout, void* host, Fetch copy, Wait wait)
    : layout_(layout), host_(host), fetch_(std::move(copy)), wait_(std::move(wait)) {}

StepStatusView StepStatusReader::read() {
  fetch_(host_, layout_.bytes);
  if (wait_) wait_();
  ++fetches_;
  return decode_step_status(host_, layout_);
}

void StepStatusReader::require_split(const char* who) const {
  SBN_CHECK(static_cast<bool>(wait_), std::string("step status: ") + who +
                                          " needs a reader whose copy and wait are separate (its fetch also waits)");
}

void StepStatusReader::enqueue_copy() {
  require_split("enqueue_copy");
  fetch_(host_, layout_.bytes);
}

StepStatusView StepStatusReader::read_copied() {
  require_split("read_copied");
  wait_();
  ++fetches_;
  return decode_step_status(host_, layout_);
}

}  // namespace syncbn::cuda::train
