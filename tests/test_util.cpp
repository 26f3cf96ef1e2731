#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

namespace syncbn::test {

std::vector<double> make_data(std::uint64_t seed, std::int64_t first_sample, std::int64_t samples,
                              std::int64_t C, std::int64_t S, double mean, double std) {
  std::vector<double> out(static_cast<std::size_t>(samples * C * S));
  for (std::int64_t n = 0; n < samples; ++n) {
    // One generator per global sample: slices of the same batch agree whatever the split.
    std::mt19937_64 gen(seed * 1000003u + static_cast<std::uint64_t>(first_sample + n));
    std::normal_distribution<double> dist(0.0, 1.0);
    for (std::int64_t c = 0; c < C; ++c) {
      const double cm = mean * (1.0 + 0.1 * static_cast<double>(c % 5));  // channels differ
      const double cs = std * (1.0 + 0.25 * static_cast<double>(c % 3));
      for (std::int64_t s = 0; s < S; ++s) out[static_cast<std::size_t>((n * C + c) * S + s)] = cm + cs * dist(gen);
    }
  }
  return out;
}

namespace {
std::int64_t spatial(const std::vector<std::int64_t>& shape) {
  std::int64_t S = 1;
  for (std::size_t i = 2; i < shape.size(); ++i) S *= shape[i];
  return S;
}
// Memory index of logical (n, c, s).
std::int64_t mem_index(const Tensor& t, std::int64_t n, std::int64_t c, std::int64_t s) {
  const std::int64_t C = t.dim(1), S = spatial(t.shape());
  if (t.layout() == Layout::kChannelsLast) return (n * S + s) * C + c;
  return (n * C + c) * S + s;
}
}  // namespace

Tensor to_tensor(const std::vector<double>& logical, const std::vector<std::int64_t>& shape, Layout layout) {
  Tensor t(shape, layout);
  const std::int64_t N = shape[0], C = shape[1], S = spatial(shape);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t s = 0; s < S; ++s)
        t[mem_index(t, n, c, s)] = static_cast<float>(logical[static_cast<std::size_t>((n * C + c) * S + s)]);
  return t;
}

std::vector<double> from_tensor(const Tensor& t) {
  const std::int64_t N = t.dim(0), C = t.dim(1), S = spatial(t.shape());
  std::vector<double> out(static_cast<std::size_t>(N * C * S));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t s = 0; s < S; ++s) out[static_cast<std::size_t>((n * C + c) * S + s)] = t[mem_index(t, n, c, s)];
  return out;
}

std::vector<double> round_to_float(const std::vector<double>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i]);
  return out;
}

RefResult reference_bn(const std::vector<double>& x, const std::vector<double>& dy, std::int64_t N,
                       std::int64_t C, std::int64_t S, const std::vector<double>& gamma,
                       const std::vector<double>& beta, const std::vector<double>& running_mean0,
                       const std::vector<double>& running_var0, const RefConfig& cfg) {
  RefResult r;
  const auto idx = [&](std::int64_t n, std::int64_t c, std::int64_t s) {
    return static_cast<std::size_t>((n * C + c) * S + s);
  };
  const double M = static_cast<double>(N * S);
  r.y.assign(x.size(), 0.0);
  r.dx.assign(x.size(), 0.0);
  for (std::int64_t c = 0; c < C; ++c) {
    // Two passes in long double: the textbook definition, no shifts, no tricks.
    long double sum = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t s = 0; s < S; ++s) sum += x[idx(n, c, s)];
    const long double mean = sum / M;
    long double ss = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t s = 0; s < S; ++s) {
        const long double d = x[idx(n, c, s)] - mean;
        ss += d * d;
      }
    const long double var = ss / M;
    const long double invstd = 1.0L / std::sqrt(var + cfg.eps);
    r.mean.push_back(static_cast<double>(mean));
    r.var.push_back(static_cast<double>(var));
    r.invstd.push_back(static_cast<double>(invstd));
    const double f = cfg.momentum ? *cfg.momentum : 1.0 / static_cast<double>(cfg.batches_tracked_before + 1);
    if (cfg.track_running_stats) {
      r.running_mean.push_back((1 - f) * running_mean0[c] + f * static_cast<double>(mean));
      r.running_var.push_back((1 - f) * running_var0[c] + f * static_cast<double>(var) * M / (M - 1));
    } else {
      r.running_mean.push_back(running_mean0[c]);
      r.running_var.push_back(running_var0[c]);
    }
    // Forward, and the gradient of y wrt its pre-ReLU value.
    long double sum_g = 0, sum_gx = 0;
    std::vector<long double> g(static_cast<std::size_t>(N * S)), xhat(static_cast<std::size_t>(N * S));
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t s = 0; s < S; ++s) {
        const std::size_t i = idx(n, c, s);
        const std::size_t j = static_cast<std::size_t>(n * S + s);
        xhat[j] = (x[i] - mean) * invstd;
        const long double pre = gamma[c] * xhat[j] + beta[c];
        const bool pass = !cfg.relu || pre > 0;
        r.y[i] = static_cast<double>(pass ? pre : 0.0L);
        g[j] = pass ? dy[i] : 0.0L;
        sum_g += g[j];
        sum_gx += g[j] * xhat[j];
      }
    r.dbeta.push_back(static_cast<double>(sum_g));
    r.dgamma.push_back(static_cast<double>(sum_gx));
    // dx = γ·invstd·(g − mean(g) − x̂·mean(g·x̂))
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t s = 0; s < S; ++s) {
        const std::size_t j = static_cast<std::size_t>(n * S + s);
        r.dx[idx(n, c, s)] = static_cast<double>(gamma[c] * invstd * (g[j] - sum_g / M - xhat[j] * sum_gx / M));
      }
  }
  return r;
}

::testing::AssertionResult near(const std::vector<double>& got, const std::vector<double>& ref, double rtol,
                                double atol_scale, const std::string& what) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " != " << ref.size();
  double scale = 0;
  for (double v : ref) scale = std::max(scale, std::fabs(v));
  const double atol = atol_scale * scale;
  double max_err = 0, max_rel = 0;
  std::size_t bad = 0, first = got.size();
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - ref[i]);
    max_err = std::max(max_err, err);
    max_rel = std::max(max_rel, err / (atol + std::fabs(ref[i]) + 1e-300));
    if (!(err <= atol + rtol * std::fabs(ref[i]))) {
      if (first == got.size()) first = i;
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: %zu of %zu outside %.1e + %.1e|ref| (max abs err %.3e, scale %.3e); first at %zu: got %.9g ref %.9g",
                what.c_str(), bad, got.size(), atol, rtol, max_err, scale, first, got[first], ref[first]);
  return ::testing::AssertionFailure() << buf;
}

std::vector<std::int64_t> uneven_split(int P) {
  switch (P) {
    case 1: return {13};
    case 2: return {9, 4};
    case 3: return {4, 0, 3};
    case 4: return {7, 1, 0, 5};
    default: {
      std::vector<std::int64_t> s(static_cast<std::size_t>(P), 2);
      s[1] = 0;
      return s;
    }
  }
}

bool all_ranks(Communicator& comm, bool ok) { return !comm.any(!ok, "test.all_ranks"); }

}  // namespace syncbn::test
