// Gradient buckets that overlap the backward pass (grad_buckets.h).
#include "syncbn/grad_buckets.h"

#include <algorithm>
#include <string>

#include "syncbn/error.h"

namespace syncbn {

std::vector<GradBucket> reverse_buckets(std::int64_t total, std::int64_t first_max, std::int64_t max) {
  SBN_CHECK(total >= 0 && first_max > 0 && max > 0, "gradient buckets: total " + std::to_string(total) +
                                                        ", sizes " + std::to_string(first_max) + " and " +
                                                        std::to_string(max) + " (must be > 0)");
  std::vector<GradBucket> out;
  for (std::int64_t end = total; end > 0;) {
    const std::int64_t n = std::min(end, out.empty() ? first_max : max);
    out.push_back({end - n, n});
    end -= n;
  }
  return out;
}

BucketSchedule::BucketSchedule(const std::vector<std::pair<std::int64_t, std::int64_t>>& params,
                               std::vector<GradBucket> buckets)
    : params_(params), buckets_(std::move(buckets)) {
  std::sort(params_.begin(), params_.end());
  param_buckets_.resize(params_.size());
  bucket_params_.assign(buckets_.size(), 0);
  for (std::size_t p = 0; p < params_.size(); ++p) {
    const auto [off, size] = params_[p];
    SBN_CHECK(size >= 0 && (p == 0 || off >= params_[p - 1].first + params_[p - 1].second),
              "gradient buckets: parameters overlap at offset " + std::to_string(off));
    for (std::size_t b = 0; b < buckets_.size(); ++b)
      if (off < buckets_[b].offset + buckets_[b].count && buckets_[b].offset < off + size) {
        param_buckets_[p].push_back(static_cast<int>(b));
        ++bucket_params_[b];
      }
  }
  reset();
}

void BucketSchedule::complete(std::int64_t offset) {
  const auto it = std::lower_bound(params_.begin(), params_.end(), std::make_pair(offset, std::int64_t{-1}));
  SBN_CHECK(it != params_.end() && it->first == offset,
            "gradient buckets: no parameter at flat offset " + std::to_string(offset));
  const auto p = static_cast<std::size_t>(it - params_.begin());
  if (done_[p]) return;
  done_[p] = 1;
  for (int b : param_buckets_[p]) --pending_[static_cast<std::size_t>(b)];
}

std::vector<int> BucketSchedule::take_ready() {
  std::vector<int> out;
  while (next_ < static_cast<int>(buckets_.size()) && pending_[static_cast<std::size_t>(next_)] == 0)
    out.push_back(next_++);
  return out;
}

std::vector<int> BucketSchedule::take_rest() {
  std::vector<int> out;
  while (next_ < static_cast<int>(buckets_.size())) out.push_back(next_++);
  return out;
}

void BucketSchedule::reset() {
  pending_ = bucket_params_;
  done_.assign(params_.size(), 0);
  next_ = 0;
}

}  // namespace syncbn
