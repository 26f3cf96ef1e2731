// Batch Renormalization (--bn-renorm, bn_math.h), run at np = 1, 2, 3, 4:
//  (a) forward == a long-double reference of y = γ·(x̂·r + d) + β, with r and d clipped and not clipped;
//  (b) backward == the reference gradient with r, d constants, and == central finite differences of the
//      renormalized loss Σ dy·y with r, d held at the unperturbed batch's values;
//  (c) sync renorm over P ranks == one process on the group's whole batch, over steps that move the
//      running statistics (uneven and empty local batches, sync and sync:2);
//  (d) r_max = 1, d_max = 0 is plain BN bit for bit (local and sync), and eval is unchanged;
//  (e) the warm-up schedule (NormSpec::renorm_limits), the printed mode and the layer's option checks.
// MPI rule: no ASSERT before a collective; verdicts are combined with all_ranks().
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <string>

#include "syncbn/error.h"
#include "syncbn/norm_spec.h"
#include "syncbn/sync_batchnorm.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

using LD = long double;
using Vec = std::vector<double>;

// One layer's setting: affine parameters, running statistics before the step, limits.
struct RenormCase {
  Vec gamma, beta, rm, rv;  // (C)
  double rmax = 3, dmax = 5, eps = 1e-5, momentum = 0.1;
  bool relu = false;
};

struct RenormRef {
  Vec y, dx;                       // logical (N, C, S)
  Vec r, d;                        // (C)
  Vec dgamma, dbeta;               // (C)
  Vec running_mean, running_var;   // (C) after the update
};

// Two-pass moments of channel c of logical (N, C, S) data.
void moments(const Vec& x, std::int64_t N, std::int64_t C, std::int64_t S, std::int64_t c, LD* mean, LD* var) {
  LD s = 0, q = 0;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t i = 0; i < S; ++i) s += x[static_cast<std::size_t>((n * C + c) * S + i)];
  *mean = s / static_cast<LD>(N * S);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t i = 0; i < S; ++i) {
      const LD e = x[static_cast<std::size_t>((n * C + c) * S + i)] - *mean;
      q += e * e;
    }
  *var = q / static_cast<LD>(N * S);
}

LD clip(LD v, LD lo, LD hi) { return std::min(std::max(v, lo), hi); }

// The renormalized output (before any ReLU) with r and d GIVEN: the batch statistics are those of x, r and
// d constants. The function the finite differences differentiate.
Vec renorm_output(const Vec& x, std::int64_t N, std::int64_t C, std::int64_t S, const RenormCase& k, const Vec& r,
                  const Vec& d) {
  Vec y(x.size());
  for (std::int64_t c = 0; c < C; ++c) {
    LD mean = 0, var = 0;
    moments(x, N, C, S, c, &mean, &var);
    const LD sigma = std::sqrt(var + static_cast<LD>(k.eps));
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) {
        const auto j = static_cast<std::size_t>((n * C + c) * S + i);
        const LD xhat = (x[j] - mean) / sigma;
        y[j] = static_cast<double>(k.gamma[c] * (xhat * r[c] + d[c]) + k.beta[c]);
      }
  }
  return y;
}

// Training step of a renormalizing BN layer over the whole batch x, in long double, straight from the
// formulas of Ioffe (2017): r, d from the running statistics before the update, constants in backward.
RenormRef reference_renorm(const Vec& x, const Vec& dy, std::int64_t N, std::int64_t C, std::int64_t S,
                           const RenormCase& k) {
  RenormRef ref;
  const auto Cs = static_cast<std::size_t>(C);
  ref.r.resize(Cs), ref.d.resize(Cs), ref.dgamma.resize(Cs), ref.dbeta.resize(Cs);
  ref.running_mean.resize(Cs), ref.running_var.resize(Cs);
  for (std::int64_t c = 0; c < C; ++c) {
    LD mean = 0, var = 0;
    moments(x, N, C, S, c, &mean, &var);
    const LD sigma = std::sqrt(var + static_cast<LD>(k.eps)), sigma_run = std::sqrt(k.rv[c] + static_cast<LD>(k.eps));
    ref.r[c] = static_cast<double>(clip(sigma / sigma_run, 1.0L / k.rmax, k.rmax));
    ref.d[c] = static_cast<double>(clip((mean - k.rm[c]) / sigma_run, -k.dmax, k.dmax));
    const LD cnt = static_cast<LD>(N * S);
    ref.running_mean[c] = static_cast<double>((1 - k.momentum) * k.rm[c] + k.momentum * mean);
    ref.running_var[c] = static_cast<double>((1 - k.momentum) * k.rv[c] + k.momentum * var * cnt / (cnt - 1));
  }
  ref.y = renorm_output(x, N, C, S, k, ref.r, ref.d);
  ref.dx.resize(x.size());
  for (std::int64_t c = 0; c < C; ++c) {
    LD mean = 0, var = 0;
    moments(x, N, C, S, c, &mean, &var);
    const LD sigma = std::sqrt(var + static_cast<LD>(k.eps)), cnt = static_cast<LD>(N * S);
    LD sum_g = 0, sum_g_xhat = 0, db = 0, dg = 0;
    auto each = [&](const std::function<void(std::size_t, LD, LD)>& f) {
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t i = 0; i < S; ++i) {
          const auto j = static_cast<std::size_t>((n * C + c) * S + i);
          const LD g = (k.relu && ref.y[j] <= 0) ? 0.0L : static_cast<LD>(dy[j]);  // dy through the ReLU
          f(j, g, (x[j] - mean) / sigma);
        }
    };
    each([&](std::size_t, LD g, LD xhat) {
      db += g;
      dg += g * (xhat * ref.r[c] + ref.d[c]);
      sum_g += g * k.gamma[c] * ref.r[c];  // the x-path: plain BN with γ·r
      sum_g_xhat += g * k.gamma[c] * ref.r[c] * xhat;
    });
    each([&](std::size_t j, LD g, LD xhat) {
      ref.dx[j] = static_cast<double>((g * k.gamma[c] * ref.r[c] - sum_g / cnt - xhat * sum_g_xhat / cnt) / sigma);
    });
    ref.dbeta[c] = static_cast<double>(db);
    ref.dgamma[c] = static_cast<double>(dg);
  }
  if (k.relu)
    for (double& v : ref.y) v = std::max(v, 0.0);
  return ref;
}

// A renormalizing layer with the case's parameters, running statistics and limits.
BatchNormOptions renorm_options(std::int64_t C, const RenormCase& k) {
  BatchNormOptions o;
  o.channels = C;
  o.eps = k.eps;
  o.momentum = k.momentum;
  o.fuse_relu = k.relu;
  o.renorm = true;
  o.renorm_rmax = k.rmax;
  o.renorm_dmax = k.dmax;
  return o;
}

void load_case(SyncBatchNorm& bn, const RenormCase& k) {
  for (std::size_t c = 0; c < k.gamma.size(); ++c) {
    bn.gamma()[c] = static_cast<float>(k.gamma[c]);
    bn.beta()[c] = static_cast<float>(k.beta[c]);
    bn.running_mean()[c] = static_cast<float>(k.rm[c]);
    bn.running_var()[c] = static_cast<float>(k.rv[c]);
  }
}

Vec to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Running statistics relative to the batch's own, per channel c % 4: r clipped high and d low; r clipped low
// and d high; neither; r high only. `active` false: all within the limits (rmax 3, dmax 5).
RenormCase make_case(const Vec& x, std::int64_t N, std::int64_t C, std::int64_t S, bool active, bool relu) {
  RenormCase k;
  k.relu = relu;
  k.rmax = active ? 1.25 : 3.0;
  k.dmax = active ? 0.25 : 5.0;
  for (std::int64_t c = 0; c < C; ++c) {
    LD mean = 0, var = 0;
    moments(x, N, C, S, c, &mean, &var);
    const double m = static_cast<double>(mean), v = static_cast<double>(var), sd = std::sqrt(v);
    // Every value as the layer's fp32 arrays hold it, so the reference sees exactly the layer's inputs.
    k.gamma.push_back(static_cast<float>(0.8 + 0.15 * static_cast<double>(c)));
    k.beta.push_back(static_cast<float>(0.1 * static_cast<double>(c) - 0.2));
    const int kind = active ? static_cast<int>(c % 4) : 2;
    const double rv_scale[] = {0.25, 4.0, 1.1, 0.25}, rm_shift[] = {1.0, -1.0, 0.1, 0.05};
    k.rv.push_back(static_cast<float>(v * rv_scale[kind]));
    k.rm.push_back(static_cast<float>(m + sd * rm_shift[kind]));
  }
  return k;
}

struct Shape {
  std::vector<std::int64_t> dims;
  Layout layout;
};

std::int64_t spatial(const Shape& s) {
  std::int64_t S = 1;
  for (std::size_t i = 2; i < s.dims.size(); ++i) S *= s.dims[i];
  return S;
}

const Shape kShapes[] = {
    {{6, 4, 3}, Layout::kPlanar}, {{5, 8, 2, 3}, Layout::kPlanar}, {{5, 8, 2, 3}, Layout::kChannelsLast}, {{9, 4}, Layout::kPlanar}};

// ---- (a), (b): one layer against the reference -----------------------------------------------------

TEST(BnRenorm, ForwardAndBackwardMatchTheReference) {
  for (const Shape& sh : kShapes)
    for (bool active : {false, true})
      for (bool relu : {false, true}) {
        const std::int64_t N = sh.dims[0], C = sh.dims[1], S = spatial(sh);
        const Vec x = round_to_float(make_data(11, 0, N, C, S, 2.0, 3.0));
        const Vec dy = round_to_float(make_data(12, 0, N, C, S, 0.0, 1.0));
        const RenormCase k = make_case(x, N, C, S, active, relu);
        const RenormRef ref = reference_renorm(x, dy, N, C, S, k);
        int clipped = 0;
        for (std::int64_t c = 0; c < C; ++c)
          clipped += (std::fabs(ref.r[c] - 1.0 / k.rmax) < 1e-12 || std::fabs(ref.r[c] - k.rmax) < 1e-12) +
                     (std::fabs(std::fabs(ref.d[c]) - k.dmax) < 1e-12);
        EXPECT_EQ(clipped > 0, active) << "the case does not exercise what it claims";

        SyncBatchNorm bn("renorm.bn", renorm_options(C, k), nullptr);
        load_case(bn, k);
        const Tensor xt = to_tensor(x, sh.dims, sh.layout), dyt = to_tensor(dy, sh.dims, sh.layout);
        Tensor y, dx;
        bn.forward(xt, y, true);
        bn.backward(xt, dyt, dx);
        const std::string what = std::to_string(sh.dims.size()) + "d" + (active ? " clipped" : " unclipped") +
                                 (relu ? " relu" : "");
        EXPECT_TRUE(near(from_tensor(y), ref.y, 1e-5, 1e-6, what + ": y"));
        EXPECT_TRUE(near(to_double(bn.running_mean()), ref.running_mean, 1e-5, 1e-6, what + ": running mean"));
        EXPECT_TRUE(near(to_double(bn.running_var()), ref.running_var, 1e-5, 1e-6, what + ": running var"));
        EXPECT_TRUE(near(from_tensor(dx), ref.dx, 1e-5, 1e-6, what + ": dx"));
        EXPECT_TRUE(near(to_double(bn.dgamma()), ref.dgamma, 1e-5, 1e-6, what + ": dgamma"));
        EXPECT_TRUE(near(to_double(bn.dbeta()), ref.dbeta, 1e-5, 1e-6, what + ": dbeta"));
        EXPECT_TRUE(near(bn.dgamma64(), ref.dgamma, 1e-5, 1e-6, what + ": dgamma (double)"));
      }
}

// L = Σ dy·y(x, γ, β) with r, d fixed at the unperturbed batch's values: its central differences are the
// gradient Batch Renormalization defines (r and d constants), which the layer must reproduce.
TEST(BnRenorm, GradientsMatchFiniteDifferencesWithRAndDHeld) {
  for (bool active : {false, true}) {
    const std::int64_t N = 6, C = 4, S = 3;
    const Vec x = round_to_float(make_data(21, 0, N, C, S, 2.0, 3.0));
    const Vec dy = round_to_float(make_data(22, 0, N, C, S, 0.0, 1.0));
    RenormCase k = make_case(x, N, C, S, active, false);
    const RenormRef ref = reference_renorm(x, dy, N, C, S, k);
    auto loss = [&](const Vec& xv, const RenormCase& kv) {
      const Vec y = renorm_output(xv, N, C, S, kv, ref.r, ref.d);
      LD l = 0;
      for (std::size_t j = 0; j < y.size(); ++j) l += static_cast<LD>(dy[j]) * y[j];
      return l;
    };
    const double h = 1e-4;
    Vec fd_dx(x.size()), fd_dgamma(static_cast<std::size_t>(C)), fd_dbeta(static_cast<std::size_t>(C));
    for (std::size_t j = 0; j < x.size(); ++j) {
      Vec xp = x, xm = x;
      xp[j] += h, xm[j] -= h;
      fd_dx[j] = static_cast<double>((loss(xp, k) - loss(xm, k)) / (2 * h));
    }
    for (std::int64_t c = 0; c < C; ++c) {
      for (int param = 0; param < 2; ++param) {
        RenormCase kp = k, km = k;
        (param ? kp.beta : kp.gamma)[c] += h;
        (param ? km.beta : km.gamma)[c] -= h;
        (param ? fd_dbeta : fd_dgamma)[c] = static_cast<double>((loss(x, kp) - loss(x, km)) / (2 * h));
      }
    }
    SyncBatchNorm bn("renorm.fd", renorm_options(C, k), nullptr);
    load_case(bn, k);
    const Tensor xt = to_tensor(x, {N, C, S}, Layout::kPlanar), dyt = to_tensor(dy, {N, C, S}, Layout::kPlanar);
    Tensor y, dx;
    bn.forward(xt, y, true);
    bn.backward(xt, dyt, dx);
    const std::string what = active ? "clipped: " : "unclipped: ";
    EXPECT_TRUE(near(ref.dx, fd_dx, 1e-6, 1e-7, what + "reference dx vs finite differences"));
    EXPECT_TRUE(near(from_tensor(dx), fd_dx, 1e-4, 1e-5, what + "dx vs finite differences"));
    EXPECT_TRUE(near(to_double(bn.dgamma()), fd_dgamma, 1e-4, 1e-5, what + "dgamma vs finite differences"));
    EXPECT_TRUE(near(to_double(bn.dbeta()), fd_dbeta, 1e-4, 1e-5, what + "dbeta vs finite differences"));
  }
}

// ---- (c): world-size equivalence ------------------------------------------------------------------

// Three steps of a renormalizing layer in `mode` on this rank's slice of an uneven split, against one
// local layer (one process) on the whole batch of the rank's group. Cumulative running statistics: the
// first step clips (running statistics 0, 1 against data of mean ~2, std ~3), the later ones do not.
bool world_equivalence(const SyncMode& mode, bool relu, std::string& why) {
  Communicator& w = world();
  const int P = w.size(), rank = w.rank();
  const int K = mode.kind == SyncMode::kGroups ? mode.group_size : P;
  const std::vector<std::int64_t> split = uneven_split(P);
  std::int64_t first = 0, g_first = 0, g_n = 0;
  for (int q = 0; q < P; ++q) {
    const std::int64_t s = split[static_cast<std::size_t>(q)];
    first += q < rank ? s : 0;
    g_first += q < rank / K * K ? s : 0;
    g_n += q / K == rank / K ? s : 0;
  }
  const std::int64_t n = split[static_cast<std::size_t>(rank)], C = 5, H = 3, W = 2, S = H * W;
  BatchNormOptions opt;
  opt.channels = C;
  opt.momentum = std::nullopt;
  opt.fuse_relu = relu;
  opt.renorm = true;
  opt.renorm_rmax = 1.5;
  opt.renorm_dmax = 0.5;
  SyncGroup group(w, mode);
  SyncBatchNorm bn("renorm.sync", opt, &group), one("renorm.one", opt, nullptr);
  for (SyncBatchNorm* b : {&bn, &one})
    for (std::int64_t c = 0; c < C; ++c) {
      b->gamma()[c] = 1.0f + 0.2f * static_cast<float>(c);
      b->beta()[c] = 0.1f * static_cast<float>(c);
    }
  bool ok = true;
  for (std::uint64_t step = 0; step < 3; ++step) {
    const Vec gx = round_to_float(make_data(31 + step, g_first, g_n, C, S, 2.0, 3.0));
    const Vec gdy = round_to_float(make_data(41 + step, g_first, g_n, C, S, 0.0, 1.0));
    const auto off = static_cast<std::ptrdiff_t>((first - g_first) * C * S), len = static_cast<std::ptrdiff_t>(n * C * S);
    const Vec x(gx.begin() + off, gx.begin() + off + len), dy(gdy.begin() + off, gdy.begin() + off + len);
    Tensor y, dx, gy, gdx;
    for (SyncBatchNorm* b : {&bn, &one}) {
      std::fill(b->dgamma().begin(), b->dgamma().end(), 0.0f);
      std::fill(b->dbeta().begin(), b->dbeta().end(), 0.0f);
    }
    const Tensor xt = to_tensor(x, {n, C, H, W}, Layout::kPlanar), dyt = to_tensor(dy, {n, C, H, W}, Layout::kPlanar);
    bn.forward(xt, y, true);
    bn.backward(xt, dyt, dx);
    const Tensor gxt = to_tensor(gx, {g_n, C, H, W}, Layout::kPlanar);
    one.forward(gxt, gy, true);
    one.backward(gxt, to_tensor(gdy, {g_n, C, H, W}, Layout::kPlanar), gdx);
    Vec dparams = to_double(bn.dgamma());
    const Vec db = to_double(bn.dbeta());
    dparams.insert(dparams.end(), db.begin(), db.end());
    group.comm()->allreduce_sum(dparams.data(), dparams.size(), "test.renorm.dparams");
    Vec ref_params = to_double(one.dgamma());
    const Vec rdb = to_double(one.dbeta());
    ref_params.insert(ref_params.end(), rdb.begin(), rdb.end());
    const Vec ry = from_tensor(gy), rdx = from_tensor(gdx);
    const std::string at = "step " + std::to_string(step) + ": ";
    ::testing::AssertionResult checks[] = {
        near(from_tensor(y), Vec(ry.begin() + off, ry.begin() + off + len), 1e-5, 1e-6, at + "y"),
        near(from_tensor(dx), Vec(rdx.begin() + off, rdx.begin() + off + len), 1e-5, 1e-6, at + "dx"),
        near(to_double(bn.running_mean()), to_double(one.running_mean()), 1e-5, 1e-6, at + "running mean"),
        near(to_double(bn.running_var()), to_double(one.running_var()), 1e-5, 1e-6, at + "running var"),
        near(dparams, ref_params, 1e-5, 1e-6, at + "sum over the group of dgamma, dbeta"),
    };
    for (auto& c : checks)
      if (!c) {
        ok = false;
        why += std::string(c.message()) + "\n";
      }
  }
  return ok;
}

TEST(BnRenorm, SyncOverRanksEqualsOneProcessOnTheWholeBatch) {
  std::vector<SyncMode> modes = {parse_sync_mode("sync")};
  if (world().size() % 2 == 0) modes.push_back(parse_sync_mode("sync:2"));
  for (const SyncMode& mode : modes)
    for (bool relu : {false, true}) {
      std::string why;
      const bool ok = world_equivalence(mode, relu, why);
      EXPECT_TRUE(ok) << "mode " << mode.str() << (relu ? " relu" : "") << ": " << why;
      EXPECT_TRUE(all_ranks(world(), ok)) << "another rank failed";
    }
}

// ---- (d): limits (1, 0) are plain BN ----------------------------------------------------------------

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](T u, T v) {
           return std::memcmp(&u, &v, sizeof(T)) == 0;
         });
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * sizeof(float)) == 0;
}

TEST(BnRenorm, UnitLimitsArePlainBatchNormBitForBit) {
  const int rank = world().rank();
  for (const char* mode_text : {"local", "sync"})
    for (bool relu : {false, true}) {
      const SyncMode mode = parse_sync_mode(mode_text);
      SyncGroup group(world(), mode);
      BatchNormOptions plain;
      plain.channels = 6;
      plain.fuse_relu = relu;
      BatchNormOptions renorm = plain;
      renorm.renorm = true;
      renorm.renorm_rmax = 1.0;
      renorm.renorm_dmax = 0.0;
      SyncBatchNorm a("plain.bn", plain, &group), b("renorm.bn", renorm, &group);
      for (SyncBatchNorm* l : {&a, &b})
        for (std::int64_t c = 0; c < 6; ++c) {
          l->gamma()[c] = 0.5f + 0.25f * static_cast<float>(c);
          l->beta()[c] = 0.3f - 0.1f * static_cast<float>(c);
        }
      bool ok = true;
      std::string why;
      const std::int64_t n = 3 + rank % 2;
      for (std::uint64_t step = 0; step < 3; ++step) {
        const bool training = step < 2;  // then eval: running statistics, unchanged by renorm
        const Vec x = make_data(51 + step, 4 * rank, n, 6, 4, 1.5, 2.0);
        const Vec dy = make_data(61 + step, 4 * rank, n, 6, 4, 0.0, 1.0);
        const Tensor xt = to_tensor(x, {n, 6, 2, 2}, Layout::kChannelsLast), dyt = to_tensor(dy, {n, 6, 2, 2}, Layout::kChannelsLast);
        Tensor ya, yb, dxa, dxb;
        a.forward(xt, ya, training);
        b.forward(xt, yb, training);
        a.backward(xt, dyt, dxa);
        b.backward(xt, dyt, dxb);
        const bool same[] = {same_bits(ya, yb), same_bits(dxa, dxb), same_bits(a.dgamma(), b.dgamma()),
                             same_bits(a.dbeta(), b.dbeta()), same_bits(a.dgamma64(), b.dgamma64()),
                             same_bits(a.running_mean(), b.running_mean()), same_bits(a.running_var(), b.running_var()),
                             same_bits(a.pivot(), b.pivot())};
        const char* names[] = {"y", "dx", "dgamma", "dbeta", "dgamma (double)", "running mean", "running var", "pivot"};
        for (int i = 0; i < 8; ++i)
          if (!same[i]) {
            ok = false;
            why += "step " + std::to_string(step) + ": " + names[i] + " differs\n";
          }
      }
      EXPECT_TRUE(ok) << mode_text << (relu ? " relu" : "") << ": renorm with r_max = 1, d_max = 0 vs plain BN:\n" << why;
      EXPECT_TRUE(all_ranks(world(), ok)) << "another rank failed";
    }
}

// ---- (e): schedule, printed mode, option checks ---------------------------------------------------------

TEST(BnRenorm, WarmupScheduleIsLinearInTheStep) {
  NormSpec spec = parse_norm("local");
  spec.renorm = true;
  spec.renorm_warmup = 100;
  const std::pair<std::int64_t, std::pair<double, double>> expected[] = {
      {0, {1.0, 0.0}}, {25, {1.5, 1.25}}, {50, {2.0, 2.5}}, {100, {3.0, 5.0}}, {100000, {3.0, 5.0}}};
  for (const auto& [step, lim] : expected) {
    const BnRenormLimits l = spec.renorm_limits(step);
    EXPECT_TRUE(l.enabled);
    EXPECT_DOUBLE_EQ(l.rmax, lim.first) << "step " << step;
    EXPECT_DOUBLE_EQ(l.dmax, lim.second) << "step " << step;
  }
  spec.renorm_warmup = 0;
  EXPECT_EQ(spec.renorm_limits(0).rmax, 3.0);
  EXPECT_EQ(spec.renorm_limits(0).dmax, 5.0);
  spec.renorm = false;
  EXPECT_FALSE(spec.renorm_limits(10).enabled);
}

TEST(BnRenorm, PrintedModeAndSignature) {
  for (const char* text : {"local", "sync", "sync:2"}) {
    NormSpec spec = parse_norm(text);
    const std::string str = spec.str(), sig = spec.signature_text();
    EXPECT_EQ(str, text);  // without renorm: as before (checkpoint signatures keep loading)
    spec.renorm = true;
    EXPECT_EQ(spec.str(), std::string(text) + "+renorm");
    EXPECT_EQ(spec.signature_text(), sig) << "renorm adds no parameter or buffer";
  }
}

TEST(BnRenorm, OptionChecks) {
  BatchNormOptions o;
  o.channels = 4;
  o.renorm = true;
  o.track_running_stats = false;
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { SyncBatchNorm bn("a", o, nullptr); }).find("Batch Renormalization needs running statistics"),
            std::string::npos);
  o.track_running_stats = true;
  o.renorm_rmax = 0.5;
  EXPECT_NE(message([&] { SyncBatchNorm bn("b", o, nullptr); }).find("rmax >= 1 and dmax >= 0"), std::string::npos);
  o.renorm_rmax = 2;
  SyncBatchNorm bn("c", o, nullptr);
  EXPECT_NE(message([&] { bn.set_renorm_limits(2, -1); }).find("rmax >= 1 and dmax >= 0"), std::string::npos);
  EXPECT_EQ(message([&] { bn.set_renorm_limits(1, 0); }), "no error");
  BatchNormOptions plain;
  plain.channels = 4;
  SyncBatchNorm p("d", plain, nullptr);
  EXPECT_NE(message([&] { p.set_renorm_limits(2, 1); }).find("without renorm"), std::string::npos);
}

}  // namespace
}  // namespace syncbn::test
