// ParamStore (param_store.h): registration, alignment, the step's gradient checks, seeded initial values.
#include "syncbn/param_store.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>

#include "syncbn/error.h"

namespace syncbn {

int ParamStore::add(const std::string& name, const std::vector<std::int64_t>& shape, bool decay, ParamInit init,
                    std::int64_t fan_in) {
  SBN_CHECK(!final_, "ParamStore: parameter '" + name + "' added after finalize()");
  ParamInfo p;
  p.name = name;
  p.shape = shape;
  p.size = 1;
  for (auto d : shape) p.size *= d;
  // 16-float alignment for every parameter: vector loads in the optimizer and the layers.
  p.offset = (total_ + 15) / 16 * 16;
  p.decay = decay;
  p.init = init;
  p.fan_in = fan_in;
  total_ = p.offset + p.size;
  params_.push_back(p);
  return static_cast<int>(params_.size()) - 1;
}

void ParamStore::finalize() {
  values_.assign(static_cast<std::size_t>(total_), 0.0f);
  grads_.assign(static_cast<std::size_t>(total_), 0.0f);
  final_ = true;
}

void ParamStore::zero_grads() {
  std::fill(grads_.begin(), grads_.end(), 0.0f);
  std::fill(grads64_.begin(), grads64_.end(), 0.0);
}

std::int64_t ParamStore::first_nonfinite_grad() const {
  // Parameter by parameter (the padding between them is never a parameter). The common case, all finite,
  // is one branch-free pass the compiler vectorizes (|g| ≤ FLT_MAX is false for ±Inf and NaN); only a
  // parameter that has a bad element is searched for its first one.
  constexpr float kMax = std::numeric_limits<float>::max();
  for (const ParamInfo& p : params_) {
    const float* g = grads_.data() + p.offset;
    int bad = 0;
    for (std::int64_t i = 0; i < p.size; ++i) bad |= !(std::fabs(g[i]) <= kMax);
    if (!bad) continue;
    for (std::int64_t i = 0; i < p.size; ++i)
      if (!(std::fabs(g[i]) <= kMax)) return p.offset + i;
  }
  return -1;
}

int ParamStore::param_at(std::int64_t index) const {
  // Offsets increase with the parameter index: the last parameter starting at or before `index`.
  const auto it = std::upper_bound(params_.begin(), params_.end(), index,
                                   [](std::int64_t i, const ParamInfo& p) { return i < p.offset; });
  if (it == params_.begin()) return -1;
  const ParamInfo& p = *std::prev(it);
  return index < p.offset + p.size ? static_cast<int>(std::prev(it) - params_.begin()) : -1;
}

void ParamStore::enable_fp64_grads() {
  SBN_CHECK(final_, "ParamStore: enable_fp64_grads() before finalize()");
  fp64_ = true;
  grads64_.assign(static_cast<std::size_t>(total_), 0.0);
}

namespace {
// splitmix64: a tiny generator whose output is fixed by its definition (std::normal_distribution's is
// implementation-defined, so it could differ between standard libraries).
struct SplitMix64 {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }  // (0, 1)
  double normal() {  // Box-Muller
    const double u = uniform(), v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};
}  // namespace

void ParamStore::init_params(std::uint64_t seed) {
  SBN_CHECK(final_, "ParamStore: init_params() before finalize()");
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const ParamInfo& p = params_[i];
    float* v = values_.data() + p.offset;
    SplitMix64 gen{seed * 0x100000001b3ull + i};  // one stream per parameter: adding one doesn't shift others
    const double fan = static_cast<double>(std::max<std::int64_t>(p.fan_in, 1));
    for (std::int64_t j = 0; j < p.size; ++j) {
      switch (p.init) {
        case ParamInit::kKaiming: v[j] = static_cast<float>(gen.normal() * std::sqrt(2.0 / fan)); break;
        case ParamInit::kClassifier: v[j] = static_cast<float>(gen.normal() / std::sqrt(fan)); break;
        case ParamInit::kOnes: v[j] = 1.0f; break;
        case ParamInit::kZeros: v[j] = 0.0f; break;
      }
    }
  }
}

}  // namespace syncbn
