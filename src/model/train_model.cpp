// PlannedTrainModel (train_model.h): what the CPU and GPU models share.
#include "syncbn/train_model.h"

#include <algorithm>

#include "syncbn/error.h"

namespace syncbn {

PlannedTrainModel::PlannedTrainModel(const ModelSpec& spec, std::uint64_t seed)
    : spec_(spec), plan_(plan_network(spec, params_)) {
  params_.init_params(seed);
}

std::string PlannedTrainModel::describe_network() const { return spec_.arch + ": " + plan_.describe(); }

StepResult PlannedTrainModel::verdict(std::int64_t first_nonfinite) const {
  if (first_nonfinite < 0) return {};
  const int p = params_.param_at(first_nonfinite);
  return {StepResult::Outcome::kNonFinite,
          p >= 0 ? params_.info(p).name : "(flat gradient index " + std::to_string(first_nonfinite) + ")"};
}

std::vector<StateArray> PlannedTrainModel::state_arrays(float* params, float* momentum,
                                                        const std::vector<BufferRef>& buffers) const {
  SBN_CHECK(buffers.size() == plan_.buffers.size(), "model state: " + std::to_string(buffers.size()) +
                                                        " buffers, the plan has " +
                                                        std::to_string(plan_.buffers.size()));
  const auto total = static_cast<std::size_t>(params_.total());
  std::vector<StateArray> out;
  out.push_back({"params", params, total * sizeof(float)});
  out.push_back({"momentum", momentum, total * sizeof(float)});
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    const BufferRef& b = buffers[i];
    SBN_CHECK(b.name == plan_.buffers[i].name && b.size == plan_.buffers[i].size,
              "model state: buffer '" + b.name + "' where the plan has '" + plan_.buffers[i].name + "'");
    const auto n = static_cast<std::size_t>(b.size);
    if (b.f32) {
      out.push_back({"buffer:" + b.name, b.f32, n * sizeof(float), StateType::kF32});
    } else if (b.f64) {
      out.push_back({"buffer:" + b.name, b.f64, n * sizeof(double), StateType::kF64});
    } else {
      out.push_back({"buffer:" + b.name, b.i64, n * sizeof(std::int64_t), StateType::kI64});
    }
  }
  return out;
}

std::vector<std::pair<std::int64_t, std::int64_t>> PlannedTrainModel::buckets(std::int64_t total,
                                                                              std::size_t elem_bytes,
                                                                              std::size_t max_bytes) {
  const auto per = static_cast<std::int64_t>(std::max<std::size_t>(max_bytes / elem_bytes, 1));
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  for (std::int64_t off = 0; off < total; off += per) out.emplace_back(off, std::min(per, total - off));
  return out;
}

}  // namespace syncbn
