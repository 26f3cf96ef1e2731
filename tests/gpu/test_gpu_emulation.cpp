// The CUDA path's host+device code, run on the CPU (no GPU needed: these tests never skip).
//
//  - Launch plans (bn_tiling.h): for many shapes, dtypes, alignments and SM counts, every (block,
//    thread) of the plan is walked with the kernels' own cursors: each element must be visited exactly
//    once, by an aligned vector that stays inside its row, attributed to the right channel, and the
//    reduction grids must fit the workspace bound.
//  - Dtype conversions: all 65536 bf16 and fp16 values round-trip; float → bf16/fp16 rounds to nearest,
//    ties to even (checked against the neighbours, not against another implementation).
//  - Kernels: the per-thread bodies of bn_thread.h are run for every thread of the real launch plan,
//    with the block and split reductions emulated in double, and compared with the CPU kernels
//    (src/cpu): statistics and backward sums within fp32-partial tolerance (mean and variance of the
//    message, also at mean/std = 1000), normalize and backward_elemt outputs BIT-EXACT, combines bit-exact,
//    device status logic (tags, counts) identical.
// What is not covered here: warp shuffles, shared memory, launch configuration, NCCL: that is the GPU
// suite (test_gpu_kernels.cpp, ...), which needs a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <type_traits>
#include <utility>

#include "syncbn/bn_kernels.h"
#include "syncbn/cuda/bn_thread.h"
#include "syncbn/cuda/bn_tiling.h"
#include "syncbn/sync_batchnorm.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

using cuda::BnPass;
using cuda::BnTile;
using cuda::kThreads;

std::uint64_t addr_of(const void* p) { return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p)); }

template <class T, class F>
void with_vec(int vec, F&& f) {
  if (!cuda::bn_with_vec<T>(vec, std::forward<F>(f))) {
    ADD_FAILURE() << "plan chose vector width " << vec << " for " << sizeof(T) << "-byte elements";
  }
}

// ---- launch plans -------------------------------------------------------------------------------

struct Geo {
  std::int64_t outer, channels, inner;
  bool channels_last;
  std::int64_t numel() const { return outer * channels * (channels_last ? 1 : inner); }
  std::int64_t channel_of(std::int64_t e) const { return channels_last ? e % channels : (e / inner) % channels; }
  std::string str() const {
    std::ostringstream s;
    s << (channels_last ? "rows " : "planar ") << outer << "x" << channels << "x" << (channels_last ? 1 : inner);
    return s.str();
  }
};

// Walks every thread of the plan; returns "" or the first violation.
std::string check_plan(const Geo& g, BnPass pass, int elem_bytes, std::uint64_t addr_bits, int sm_count) {
  const BnTile t = cuda::bn_plan(pass, g.outer, g.channels, g.inner, g.channels_last, elem_bytes, addr_bits, sm_count);
  std::ostringstream why;
  why << g.str() << (pass == BnPass::kReduce ? " reduce" : " elementwise") << " elem " << elem_bytes << "B addr%16="
      << addr_bits % 16 << " sms " << sm_count << ": ";
  const std::int64_t n = g.numel();
  if (n == 0) return t.grid_x == 0 && t.grid_y == 0 ? "" : why.str() + "empty tensor but a non-empty grid";
  if (t.tx * t.ty != kThreads || (t.tx & (t.tx - 1)) != 0) return why.str() + "bad block shape";
  const std::int64_t row = g.channels_last ? g.channels : g.inner;
  if (row % t.vec != 0) return why.str() + "vec does not divide the row";
  if (addr_bits % static_cast<std::uint64_t>(t.vec * elem_bytes) != 0) return why.str() + "vec misaligned";
  if (t.vec * elem_bytes > cuda::kMaxVecBytes) return why.str() + "vec wider than 16 bytes";
  if (t.unroll != cuda::bn_unroll(t.vec) || t.unroll * t.vec > cuda::kStepElems) return why.str() + "bad unroll";
  if (t.grid_x < 1 || t.grid_y < 1 || t.grid_y > cuda::kMaxGridY) return why.str() + "bad grid";
  if (g.channels_last && (t.tx > 32 || t.tx * t.vec > cuda::kMaxTileChannels)) return why.str() + "channel tile too wide";
  if (pass == BnPass::kReduce && t.grid_y > cuda::bn_max_splits(g.channels, g.channels_last, sm_count))
    return why.str() + "more splits than the workspace bound";
  std::vector<int> seen(static_cast<std::size_t>(n), 0);
  std::string bad;
  auto visit = [&](std::int64_t off, std::int64_t channel, bool per_lane_channel) {
    if (off % t.vec != 0 || off < 0 || off + t.vec > n) {
      bad = "vector at " + std::to_string(off) + " misaligned or out of range";
      return;
    }
    for (int j = 0; j < t.vec; ++j) {
      const std::int64_t e = off + j;
      const std::int64_t want = per_lane_channel ? channel + j : channel;
      if (g.channel_of(e) != want) bad = "element " + std::to_string(e) + " attributed to channel " + std::to_string(want);
      ++seen[static_cast<std::size_t>(e)];
    }
  };
  for (std::int64_t bx = 0; bx < t.grid_x && bad.empty(); ++bx)
    for (std::int64_t by = 0; by < t.grid_y && bad.empty(); ++by)
      for (int y = 0; y < t.ty; ++y)
        for (int x = 0; x < t.tx; ++x) {
          if (g.channels_last) {
            for (cuda::RowsCursor cur(t, bx, by, x, y); cur.ok(); cur.next())
              for (int u = 0; u < t.unroll; ++u)
                if (cur.valid(u)) visit(cur.offset(u), cur.c0, true);
          } else if (pass == BnPass::kReduce) {
            for (cuda::PlanarCursor cur(t, by, bx, x, y); cur.ok(); cur.next())
              for (int u = 0; u < t.unroll; ++u)
                if (cur.valid(u)) visit(cur.offset(u), bx, false);
          } else {
            for (cuda::PlanarCursor cur(t, bx, 0, x, y); cur.ok(); cur.next())
              for (int u = 0; u < t.unroll; ++u)
                if (cur.valid(u)) visit(cur.offset(u), cur.channel, false);
          }
        }
  if (!bad.empty()) return why.str() + bad;
  for (std::int64_t e = 0; e < n; ++e)
    if (seen[static_cast<std::size_t>(e)] != 1)
      return why.str() + "element " + std::to_string(e) + " visited " + std::to_string(seen[static_cast<std::size_t>(e)]) +
             " times";
  return "";
}

TEST(GpuEmulation, EveryElementVisitedOnceWithItsChannel) {
  const std::vector<Geo> geos = {
      {4, 12, 49, false},  {3, 8, 784, false},   {1, 2, 5000, false}, {2, 3, 1, false},    {7, 5, 6, false},
      {1, 1, 1, false},    {0, 4, 9, false},     {33, 2, 64, false},  {2, 4, 9000, false}, {4, 12, 1, true},
      {60, 130, 1, true},  {48, 3, 1, true},     {5, 257, 1, true},   {300, 64, 1, true},  {9, 20, 1, true},
      {1, 1, 1, true},     {0, 16, 1, true},     {1000, 8, 1, true},  {7, 2048, 1, true},
  };
  int checked = 0;
  for (const Geo& g : geos)
    for (BnPass pass : {BnPass::kReduce, BnPass::kElementwise})
      for (int elem : {4, 2})
        for (std::uint64_t addr : {std::uint64_t{0}, std::uint64_t{4}, std::uint64_t{2}, std::uint64_t{8}})
          for (int sms : {1, 7, 132}) {
            if (addr % static_cast<std::uint64_t>(elem) != 0) continue;  // elements are always aligned
            const std::string err = check_plan(g, pass, elem, addr, sms);
            EXPECT_EQ(err, "");
            ++checked;
          }
  EXPECT_GT(checked, 500);
}

TEST(GpuEmulation, VectorWidthFollowsRowLengthAndAlignment) {
  EXPECT_EQ(cuda::bn_pick_vec(784, 0, 4), 4);
  EXPECT_EQ(cuda::bn_pick_vec(784, 0, 2), 8);
  EXPECT_EQ(cuda::bn_pick_vec(49, 0, 4), 1);   // 7×7 planes: scalar accesses
  EXPECT_EQ(cuda::bn_pick_vec(130, 0, 4), 2);  // C % 4 == 2
  EXPECT_EQ(cuda::bn_pick_vec(12, 0, 2), 4);   // 12 % 8 != 0
  EXPECT_EQ(cuda::bn_pick_vec(784, 4, 4), 1);  // base off by one float
  EXPECT_EQ(cuda::bn_pick_vec(784, 8, 4), 2);
  EXPECT_EQ(cuda::bn_pick_vec(784, 8, 2), 4);
  EXPECT_EQ(cuda::bn_pick_vec(1, 0, 2), 1);
}

TEST(GpuEmulation, DivmodFastPathAgreesWithDivision) {
  std::mt19937_64 gen(7);
  const std::int64_t edges[] = {0, 1, 2, 3, 31, 32, 1 << 20, (std::int64_t{1} << 31) - 1, std::int64_t{1} << 31,
                                (std::int64_t{1} << 32) + 5, (std::int64_t{1} << 40) + 12345};
  auto check = [](std::int64_t a, std::int64_t b) {
    std::int64_t q = -1, r = -1;
    cuda::bn_divmod(a, b, &q, &r);
    return q == a / b && r == a % b;
  };
  for (std::int64_t a : edges)
    for (std::int64_t b : edges)
      if (b > 0) {
        EXPECT_TRUE(check(a, b)) << a << " / " << b;
      }
  for (int i = 0; i < 100000; ++i) {
    const auto a = static_cast<std::int64_t>(gen() >> (gen() % 63 + 1));
    const auto b = static_cast<std::int64_t>((gen() >> (gen() % 63 + 1)) | 1);
    ASSERT_TRUE(check(a, b)) << a << " / " << b;
  }
}

// ---- dtypes -------------------------------------------------------------------------------------

// Bit patterns through the raw structs cuda_bf16.h / cuda_fp16.h provide for this.
template <class T>
using Raw = std::conditional_t<std::is_same_v<T, __half>, __half_raw, __nv_bfloat16_raw>;

template <class T>
T from_bits(std::uint16_t b) {
  Raw<T> r;
  r.x = b;
  return T(r);
}

template <class T>
std::uint16_t bits_of(T v) {
  return static_cast<Raw<T>>(v).x;
}

template <class T>
void check_round_trip_and_rounding(const char* name) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const T v = from_bits<T>(static_cast<std::uint16_t>(b));
    const float f = cuda::to_float(v);
    T back;
    cuda::from_float(f, &back);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(cuda::to_float(back))) << name << " NaN pattern " << b;
    } else {
      ASSERT_EQ(bits_of(back), b) << name << " value " << f << " does not round-trip";
    }
  }
  // Random floats in the finite range: the result is a neighbour at least as close as the other one,
  // and exact ties go to the even mantissa.
  std::mt19937 gen(11);
  const float range = std::is_same_v<T, __half> ? 60000.0f : 1e30f;
  for (int i = 0; i < 200000; ++i) {
    float f = std::ldexp(std::uniform_real_distribution<float>(-1.0f, 1.0f)(gen),
                         std::uniform_int_distribution<int>(-30, std::is_same_v<T, __half> ? 15 : 99)(gen));
    if (i % 4 == 0) {  // an exact midpoint between two representable neighbours
      T a;
      cuda::from_float(f, &a);
      const std::uint16_t ab = bits_of(a);
      const float lo = cuda::to_float(a), hi = cuda::to_float(from_bits<T>(static_cast<std::uint16_t>(ab + 1)));
      if (std::isfinite(hi) && ((ab + 1) & 0x7fff) != 0) f = lo + (hi - lo) / 2;  // exact in float
    }
    if (!(std::fabs(f) < range)) continue;
    T r;
    cuda::from_float(f, &r);
    const std::uint16_t rb = bits_of(r);
    const double got = cuda::to_float(r);
    const double up = cuda::to_float(from_bits<T>(static_cast<std::uint16_t>(rb + 1)));
    const double down = (rb & 0x7fff) ? cuda::to_float(from_bits<T>(static_cast<std::uint16_t>(rb - 1))) : -got;
    const double err = std::fabs(f - got);
    ASSERT_LE(err, std::fabs(f - up)) << name << " " << f;
    ASSERT_LE(err, std::fabs(f - down)) << name << " " << f;
    if (err == std::fabs(f - up) || err == std::fabs(f - down)) {
      if (err > 0) {
        ASSERT_EQ(rb & 1, 0) << name << " tie at " << f << " not rounded to even";
      }
    }
  }
}

TEST(GpuEmulation, Bf16AndFp16ConversionsRoundToNearestEven) {
  check_round_trip_and_rounding<__nv_bfloat16>("bf16");
  check_round_trip_and_rounding<__half>("fp16");
  __nv_bfloat16 h;
  cuda::from_float(1.00390625f, &h);  // 1 + 2^-8: halfway between 1 and 1 + 2^-7
  EXPECT_EQ(cuda::to_float(h), 1.0f);
  cuda::from_float(1.01171875f, &h);  // 1 + 3·2^-8: halfway, rounds up to the even 1 + 2^-6
  EXPECT_EQ(cuda::to_float(h), 1.015625f);
}

// ---- kernels, emulated --------------------------------------------------------------------------

// A tensor in memory order in dtype T, optionally starting `shift` elements into its storage (to force
// misaligned base addresses), plus the fp32 values it holds (the CPU oracle's input).
template <class T>
struct HostData {
  std::vector<T> storage;
  std::int64_t shift = 0;
  std::vector<float> f;  // memory order
  T* data() { return storage.data() + shift; }
};

template <class T>
HostData<T> make_host(const Tensor& t, std::int64_t shift) {
  HostData<T> h;
  h.shift = shift;
  h.storage.resize(static_cast<std::size_t>(t.numel() + shift + 1));
  h.f.resize(static_cast<std::size_t>(t.numel()));
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    cuda::from_float(t[i], &h.storage[static_cast<std::size_t>(i + shift)]);
    h.f[static_cast<std::size_t>(i)] = cuda::to_float(h.storage[static_cast<std::size_t>(i + shift)]);
  }
  return h;
}

// The two launches of bn_stats / bn_backward_reduce with the block reductions done in double.
template <class T, bool kBackward, bool kRelu>
std::vector<double> emulate_reduce(const T* x, const T* dy, const BnGeometry& g, int sm_count, const double* pivot,
                                   const float* hi, const float* a, const float* b, const double* mean,
                                   const double* invstd, double tag, float* dgamma, float* dbeta) {
  const std::int64_t C = g.channels, n = g.per_channel();
  std::vector<double> msg(static_cast<std::size_t>(bn_msg_size(C)), -1.0);
  const std::uint64_t addr = addr_of(x) | (kBackward ? addr_of(dy) : 0);
  const BnTile t = cuda::bn_plan(BnPass::kReduce, g.outer, C, g.inner, g.channels_last, sizeof(T), addr, sm_count);
  const std::int64_t splits = n > 0 ? t.grid_y : 0;
  std::vector<double> ws(static_cast<std::size_t>(2 * splits * C), 0.0);
  if (n > 0) {
    with_vec<T>(t.vec, [&](auto v) {
      constexpr int V = decltype(v)::value;
      for (std::int64_t bx = 0; bx < t.grid_x; ++bx)
        for (std::int64_t by = 0; by < t.grid_y; ++by) {
          if (!g.channels_last) {
            double sa = 0, sb = 0;
            for (int y = 0; y < t.ty; ++y)
              for (int xx = 0; xx < t.tx; ++xx) {
                double s1 = 0, s2 = 0;
                if constexpr (kBackward) {
                  cuda::backward_thread_planar<T, V, kRelu>(dy, x, t, bx, by, xx, y, hi[bx], a[bx], b[bx], &s1, &s2);
                } else {
                  cuda::stats_thread_planar<T, V>(x, t, bx, by, xx, y, &s1, &s2);
                }
                sa += s1;
                sb += s2;
              }
            ws[static_cast<std::size_t>(cuda::bn_partial_index(by, 0, C, bx))] = sa;
            ws[static_cast<std::size_t>(cuda::bn_partial_index(by, 1, C, bx))] = sb;
          } else {
            std::vector<double> slot_a(static_cast<std::size_t>(t.tx * V), 0.0), slot_b(slot_a);
            for (int y = 0; y < t.ty; ++y)
              for (int xx = 0; xx < t.tx; ++xx) {
                double s1[V], s2[V];
                if constexpr (kBackward) {
                  cuda::backward_thread_rows<T, V, kRelu>(dy, x, t, bx, by, xx, y, hi, a, b, s1, s2);
                } else {
                  cuda::stats_thread_rows<T, V>(x, t, bx, by, xx, y, s1, s2);
                }
                for (int j = 0; j < V; ++j) {
                  slot_a[static_cast<std::size_t>(xx * V + j)] += s1[j];
                  slot_b[static_cast<std::size_t>(xx * V + j)] += s2[j];
                }
              }
            for (int s = 0; s < t.tx * V; ++s) {
              const std::int64_t c = bx * t.tx * V + s;
              if (c >= C) continue;
              ws[static_cast<std::size_t>(cuda::bn_partial_index(by, 0, C, c))] = slot_a[static_cast<std::size_t>(s)];
              ws[static_cast<std::size_t>(cuda::bn_partial_index(by, 1, C, c))] = slot_b[static_cast<std::size_t>(s)];
            }
          }
        }
    });
  }
  cuda::bn_write_header(msg.data(), tag, static_cast<double>(n));
  for (std::int64_t c = 0; c < C; ++c) {
    double s1 = 0, s2 = 0;
    if (n > 0) cuda::bn_sum_partials(ws.data(), splits, C, c, &s1, &s2);
    if constexpr (kBackward) {
      cuda::bn_backward_finish_channel(s1, s2, C, c, mean, hi, invstd, msg.data(), dgamma, dbeta);
    } else {
      const double k = n > 0 ? cuda::bn_local_shift(x, g.inner, g.channels_last, c) : 0.0;
      cuda::bn_stats_finish_channel(s1, s2, static_cast<double>(n), k, pivot, C, c, msg.data());
    }
  }
  return msg;
}

// Calls f(integral_constant V, tile, bx, by, tx, ty) for every thread of the elementwise launch plan
// over g, in block order; `addr`: the tensors' addresses or-ed (they decide the vector width).
template <class T, class F>
void for_each_elementwise_thread(const BnGeometry& g, std::uint64_t addr, int sm_count, F&& f) {
  if (g.numel() == 0) return;
  const BnTile t = cuda::bn_plan(BnPass::kElementwise, g.outer, g.channels, g.inner, g.channels_last, sizeof(T),
                                 addr, sm_count);
  with_vec<T>(t.vec, [&](auto v) {
    for (std::int64_t bx = 0; bx < t.grid_x; ++bx)
      for (std::int64_t by = 0; by < t.grid_y; ++by)
        for (int yy = 0; yy < t.ty; ++yy)
          for (int xx = 0; xx < t.tx; ++xx) f(v, t, bx, by, xx, yy);
  });
}

template <class T, bool kRelu>
void emulate_normalize(const T* x, const BnGeometry& g, int sm_count, const float* hi, const float* a, const float* b,
                       T* y) {
  for_each_elementwise_thread<T>(
      g, addr_of(x) | addr_of(y), sm_count,
      [&](auto v, const BnTile& t, std::int64_t bx, std::int64_t by, int xx, int yy) {
        constexpr int V = decltype(v)::value;
        if (g.channels_last) {
          cuda::normalize_thread_rows<T, V, kRelu>(x, y, t, bx, by, xx, yy, hi, a, b);
        } else {
          cuda::normalize_thread_planar<T, V, kRelu>(x, y, t, bx, xx, yy, hi, a, b);
        }
      });
}

template <class T, bool kRelu>
void emulate_elemt(const T* dy, const T* x, const BnGeometry& g, int sm_count, const float* hi, const float* a,
                   const float* b, const float* k1, const float* k0, T* dx) {
  for_each_elementwise_thread<T>(
      g, addr_of(x) | addr_of(dy) | addr_of(dx), sm_count,
      [&](auto v, const BnTile& t, std::int64_t bx, std::int64_t by, int xx, int yy) {
        constexpr int V = decltype(v)::value;
        if (g.channels_last) {
          cuda::elemt_thread_rows<T, V, kRelu>(dy, x, dx, t, bx, by, xx, yy, hi, a, b, k1, k0);
        } else {
          cuda::elemt_thread_planar<T, V, kRelu>(dy, x, dx, t, bx, xx, yy, hi, a, b, k1, k0);
        }
      });
}

struct Scenario {
  std::vector<std::int64_t> shape;
  Layout layout;
  std::int64_t shift;  // elements: misaligns every base pointer when odd
  double mean, std;
  std::string str() const {
    return describe(shape, layout) + " shift " + std::to_string(shift) + " mean " + std::to_string(mean);
  }
};

// Moments from a message around pivot K, for comparing two messages of the same data.
void moments(const std::vector<double>& msg, std::int64_t C, std::int64_t c, const double* pivot, double* mean,
             double* var) {
  bn_moments(msg[static_cast<std::size_t>(kMsgHeader + c)], msg[static_cast<std::size_t>(kMsgHeader + C + c)],
             msg[kMsgCount], pivot ? pivot[c] : 0.0, mean, var);
}

template <class T>
bool same_bits(const T* got, const std::vector<float>& ref_f, std::int64_t n, std::string& why, const char* what) {
  for (std::int64_t i = 0; i < n; ++i) {
    T want;
    cuda::from_float(ref_f[static_cast<std::size_t>(i)], &want);
    if (std::memcmp(&got[i], &want, sizeof(T)) != 0) {
      why += std::string(what) + ": element " + std::to_string(i) + " got " + std::to_string(cuda::to_float(got[i])) +
             " want " + std::to_string(cuda::to_float(want)) + "\n";
      return false;
    }
  }
  return true;
}

// One scenario's data in dtype T as the emulated device holds it (x, dy) and as the CPU kernels read it
// (x.f, dy.f: the same values in fp32), with the pivot and tag every step uses.
template <class T>
struct EmuCase {
  std::int64_t C = 0, n = 0, numel = 0;
  BnGeometry g;
  HostData<T> x, dy;
  std::vector<double> pivot;        // (C)
  std::vector<float> gamma, beta;   // (C)
  double tag = 12345;

  explicit EmuCase(const Scenario& sc) : C(sc.shape[1]), g(bn_geometry(sc.shape, sc.layout, "emulation")) {
    std::int64_t S = 1;
    for (std::size_t i = 2; i < sc.shape.size(); ++i) S *= sc.shape[i];
    const Tensor xt = to_tensor(make_data(31, 0, sc.shape[0], C, S, sc.mean, sc.std), sc.shape, sc.layout);
    const Tensor dyt = to_tensor(make_data(32, 0, sc.shape[0], C, S, 0.0, 1.0), sc.shape, sc.layout);
    x = make_host<T>(xt, sc.shift);
    dy = make_host<T>(dyt, sc.shift);
    n = g.per_channel();
    numel = g.numel();
    const auto CC = static_cast<std::size_t>(C);
    pivot.resize(CC);
    gamma.resize(CC);
    beta.resize(CC);
    for (std::size_t c = 0; c < CC; ++c) {
      pivot[c] = sc.mean + 0.25 * static_cast<double>(c % 3);
      gamma[c] = 1.0f + 0.1f * static_cast<float>(c % 4);
      beta[c] = 0.3f - 0.05f * static_cast<float>(c % 5);
    }
  }
};

using HostBuffers = BnLayerBuffers<std::vector<double>, std::vector<float>>;

// The per-channel arrays of a combine (one set for the CPU kernel, one for the emulated device): a layer
// with the given γ and β (empty: 1 and 0), running statistics 0.5 / 2.0 and the given pivot.
HostBuffers combine_buffers(const std::vector<double>& pivot, const std::vector<float>& gamma,
                            const std::vector<float>& beta) {
  const std::size_t C = pivot.size();
  HostBuffers o;
  o.pivot = pivot;
  o.gamma = gamma;
  o.beta = beta;
  for (auto* v : {&o.mean, &o.var, &o.invstd}) v->assign(C, 0.0);
  for (auto* v : {&o.hi, &o.a, &o.b, &o.k1, &o.k0}) v->assign(C, 0.0f);
  o.running_mean.assign(C, 0.5f);
  o.running_var.assign(C, 2.0f);
  return o;
}

// stats: the emulated reduction against cpu::bn_stats (header exact, moments within fp32-partial
// tolerance); leaves the CPU's message in cpu_msg.
template <class T>
bool check_stats(EmuCase<T>& e, int sm_count, std::vector<double>& cpu_msg, std::string& why) {
  const std::int64_t C = e.C;
  bool ok = true;
  cpu_msg.assign(static_cast<std::size_t>(bn_msg_size(C)), 0.0);
  cpu::bn_stats(e.x.f.data(), e.g, e.pivot.data(), e.tag, cpu_msg.data());
  const std::vector<double> emu_msg = emulate_reduce<T, false, false>(e.x.data(), nullptr, e.g, sm_count,
                                                                      e.pivot.data(), nullptr, nullptr, nullptr,
                                                                      nullptr, nullptr, e.tag, nullptr, nullptr);
  for (int h = 0; h < kMsgHeader; ++h)
    if (emu_msg[static_cast<std::size_t>(h)] != cpu_msg[static_cast<std::size_t>(h)]) {
      ok = false;
      why += "stats header entry " + std::to_string(h) + " differs\n";
    }
  if (e.n > 0) {
    double max_mean = 0, max_var = 0;
    for (std::int64_t c = 0; c < C; ++c) {
      double m0, v0, m1, v1;
      moments(cpu_msg, C, c, e.pivot.data(), &m0, &v0);
      moments(emu_msg, C, c, e.pivot.data(), &m1, &v1);
      const double sd = std::sqrt(v0);
      // fp32 partials of ≤ 64 values around a data value: errors ~1e-7 typical, 1e-5 bound.
      const double em = std::fabs(m1 - m0) / (sd + 1e-30), ev = std::fabs(v1 - v0) / (v0 + 1e-30);
      max_mean = std::max(max_mean, v0 > 0 ? em : std::fabs(m1 - m0) / (std::fabs(m0) + 1e-30));
      max_var = std::max(max_var, v0 > 0 ? ev : std::fabs(v1));
    }
    if (!(max_mean <= 1e-5 && max_var <= 1e-5)) {
      ok = false;
      why += "stats: mean error " + std::to_string(max_mean) + " std, variance error " + std::to_string(max_var) +
             " relative\n";
    }
  }
  return ok;
}

// combine: the device per-channel step vs cpu::bn_combine on the same (CPU) message, bit for bit; oc gets
// the CPU's outputs.
template <class T>
bool check_combine(const EmuCase<T>& e, const std::vector<double>& cpu_msg, HostBuffers& oc, HostBuffers& oe,
                   std::string& why) {
  const BnRunningUpdate momentum = BnRunningUpdate::of(true, 0.1, 0);
  const BnCombineArgs ac = bn_combine_args(oc.arrays(e.C), 0, 1, e.tag, 1e-5, momentum);
  const BnCombineArgs ae = bn_combine_args(oe.arrays(e.C), 0, 1, e.tag, 1e-5, momentum);
  const std::int64_t C = e.C;
  const BnStatus st_cpu = cpu::bn_combine(cpu_msg.data(), ac);
  const BnStatus st_emu = cuda::bn_forward_status(cpu_msg.data(), ae.group_size, ae.tag);
  if (st_emu == kBnOk)
    for (std::int64_t c = 0; c < C; ++c) bn_combine_channel(cpu_msg.data(), ae, ae.running.factor(), c);
  if (st_cpu != st_emu || oc.pivot != oe.pivot || oc.mean != oe.mean || oc.var != oe.var || oc.invstd != oe.invstd ||
      oc.running_mean != oe.running_mean || oc.running_var != oe.running_var || oc.hi != oe.hi || oc.a != oe.a ||
      oc.b != oe.b) {
    why += "combine: device step differs from cpu::bn_combine\n";
    return false;
  }
  return true;
}

// normalize: bit-exact against the CPU output rounded to T
template <class T>
bool check_normalize(EmuCase<T>& e, const Scenario& sc, bool relu, int sm_count, HostBuffers& oc,
                     std::string& why) {
  std::vector<float> y_cpu(static_cast<std::size_t>(e.numel));
  cpu::bn_normalize(e.x.f.data(), e.g, oc.hi.data(), oc.a.data(), oc.b.data(), relu, false, y_cpu.data());
  std::vector<T> y_store(static_cast<std::size_t>(e.numel + sc.shift + 1));
  T* y = y_store.data() + sc.shift;
  cuda::bn_with_flag(relu, [&](auto r) {
    emulate_normalize<T, decltype(r)::value>(e.x.data(), e.g, sm_count, oc.hi.data(), oc.a.data(), oc.b.data(), y);
  });
  return same_bits(y, y_cpu, e.numel, why, "normalize");
}

// backward reduce (+ local dγ, dβ): sums and parameter gradients within tolerance of the CPU's, scaled
// by Σ|dy'| and Σ|dy'·(x − hi)| of the channel; leaves the CPU's message in cpu_bmsg.
template <class T>
bool check_backward_reduce(EmuCase<T>& e, bool relu, int sm_count, HostBuffers& oc,
                           std::vector<double>& cpu_bmsg, std::string& why) {
  const std::int64_t C = e.C, numel = e.numel;
  const auto CC = static_cast<std::size_t>(C);
  const BnGeometry& g = e.g;
  bool ok = true;
  cpu_bmsg.assign(static_cast<std::size_t>(bn_msg_size(C)), 0.0);
  std::vector<float> dg_cpu(CC, 0.25f), db_cpu(CC, -0.5f), dg_emu(dg_cpu), db_emu(db_cpu);
  cpu::bn_backward_reduce(e.dy.f.data(), e.x.f.data(), g, oc.hi.data(), oc.a.data(), oc.b.data(), relu,
                          oc.mean.data(), oc.invstd.data(), e.tag + 1, cpu_bmsg.data(), dg_cpu.data(), db_cpu.data());
  std::vector<double> emu_bmsg;
  cuda::bn_with_flag(relu, [&](auto r) {
    emu_bmsg = emulate_reduce<T, true, decltype(r)::value>(e.x.data(), e.dy.data(), g, sm_count, nullptr,
                                                          oc.hi.data(), oc.a.data(), oc.b.data(), oc.mean.data(),
                                                          oc.invstd.data(), e.tag + 1, dg_emu.data(), db_emu.data());
  });
  for (int h = 0; h < kMsgHeader; ++h)
    if (emu_bmsg[static_cast<std::size_t>(h)] != cpu_bmsg[static_cast<std::size_t>(h)]) {
      ok = false;
      why += "backward header entry " + std::to_string(h) + " differs\n";
    }
  for (std::int64_t c = 0; c < C; ++c) {
    // Scales: Σ|dy'| and Σ|dy'·(x − hi)| of the channel, from the fp32 data.
    double sa = 0, sb = 0;
    for (std::int64_t el = 0; el < numel; ++el) {
      const std::int64_t ch = g.channels_last ? el % C : (el / g.inner) % C;
      if (ch != c) continue;
      const float xh = e.x.f[static_cast<std::size_t>(el)] - oc.hi[static_cast<std::size_t>(c)];
      const float gd = cuda::bn_gate<true>(e.dy.f[static_cast<std::size_t>(el)], xh, oc.a[static_cast<std::size_t>(c)],
                                           oc.b[static_cast<std::size_t>(c)]);
      const double gg = relu ? gd : e.dy.f[static_cast<std::size_t>(el)];
      sa += std::fabs(gg);
      sb += std::fabs(gg * xh);
    }
    const std::size_t ia = static_cast<std::size_t>(kMsgHeader + c), ib = static_cast<std::size_t>(kMsgHeader + C + c);
    const double ea = std::fabs(emu_bmsg[ia] - cpu_bmsg[ia]), eb = std::fabs(emu_bmsg[ib] - cpu_bmsg[ib]);
    const double lo = oc.mean[static_cast<std::size_t>(c)] - oc.hi[static_cast<std::size_t>(c)];
    const double tol_dg = 1e-5 * oc.invstd[static_cast<std::size_t>(c)] * (sb + std::fabs(lo) * sa) +
                          1e-6 * std::fabs(dg_cpu[static_cast<std::size_t>(c)]);
    const double tol_db = 1e-5 * sa + 1e-6 * std::fabs(db_cpu[static_cast<std::size_t>(c)]);
    if (!(ea <= 1e-5 * sa + 1e-300 && eb <= 1e-5 * sb + 1e-300) ||
        !(std::fabs(dg_emu[static_cast<std::size_t>(c)] - dg_cpu[static_cast<std::size_t>(c)]) <= tol_dg) ||
        !(std::fabs(db_emu[static_cast<std::size_t>(c)] - db_cpu[static_cast<std::size_t>(c)]) <= tol_db)) {
      ok = false;
      why += "backward sums channel " + std::to_string(c) + ": |dA| " + std::to_string(ea) + " of " +
             std::to_string(sa) + ", |dB| " + std::to_string(eb) + " of " + std::to_string(sb) + "\n";
      break;
    }
  }
  return ok;
}

// backward combine, bit for bit (into oc's and oe's k1, k0), then elemt bit-exact with the CPU's
// coefficients.
template <class T>
bool check_backward_combine_elemt(EmuCase<T>& e, const Scenario& sc, bool relu, int sm_count,
                                  const std::vector<double>& cpu_msg, const std::vector<double>& cpu_bmsg,
                                  HostBuffers& oc, HostBuffers& oe, std::string& why) {
  bool ok = true;
  // Both from the CPU's forward outputs; each writes its own k1, k0.
  BnLayerArrays cpu_arrays = oc.arrays(e.C), emu_arrays = cpu_arrays;
  emu_arrays.k1 = oe.k1.data();
  emu_arrays.k0 = oe.k0.data();
  const BnBackwardCombineArgs bc = bn_backward_combine_args(cpu_arrays, 0, 1, e.tag + 1, cpu_msg[kMsgCount]);
  const BnBackwardCombineArgs be = bn_backward_combine_args(emu_arrays, 0, 1, e.tag + 1, cpu_msg[kMsgCount]);
  const BnStatus bst_cpu = cpu::bn_backward_combine(cpu_bmsg.data(), bc);
  const BnStatus bst_emu = cuda::bn_backward_status(cpu_bmsg.data(), 1, e.tag + 1, cpu_msg[kMsgCount]);
  if (bst_emu == kBnOk)
    for (std::int64_t c = 0; c < e.C; ++c) bn_backward_combine_channel(cpu_bmsg.data(), be, c);
  if (bst_cpu != bst_emu || oc.k1 != oe.k1 || oc.k0 != oe.k0) {
    ok = false;
    why += "backward combine: device step differs from cpu::bn_backward_combine\n";
  }
  std::vector<float> dx_cpu(static_cast<std::size_t>(e.numel));
  cpu::bn_backward_elemt(e.dy.f.data(), e.x.f.data(), e.g, oc.hi.data(), oc.a.data(), oc.b.data(), relu,
                         oc.k1.data(), oc.k0.data(), false, dx_cpu.data());
  std::vector<T> dx_store(static_cast<std::size_t>(e.numel + sc.shift + 1));
  T* dx = dx_store.data() + sc.shift;
  cuda::bn_with_flag(relu, [&](auto r) {
    emulate_elemt<T, decltype(r)::value>(e.dy.data(), e.x.data(), e.g, sm_count, oc.hi.data(), oc.a.data(),
                                         oc.b.data(), oc.k1.data(), oc.k0.data(), dx);
  });
  ok &= same_bits(dx, dx_cpu, e.numel, why, "backward_elemt");
  return ok;
}

// One scenario in dtype T: stats, combine, normalize, backward reduce, backward combine, elemt — each
// emulated from the CPU's inputs and compared with the CPU's outputs.
template <class T>
bool run_scenario(const Scenario& sc, bool relu, int sm_count, std::string& why) {
  EmuCase<T> e(sc);
  std::vector<double> cpu_msg, cpu_bmsg;
  bool ok = check_stats(e, sm_count, cpu_msg, why);
  if (e.n < 2) return ok;  // combine would (rightly) refuse: no coefficients to go on with

  // The CPU's outputs and the emulated device's.
  HostBuffers oc = combine_buffers(e.pivot, e.gamma, e.beta), oe = combine_buffers(e.pivot, e.gamma, e.beta);
  ok &= check_combine(e, cpu_msg, oc, oe, why);
  ok &= check_normalize(e, sc, relu, sm_count, oc, why);
  ok &= check_backward_reduce(e, relu, sm_count, oc, cpu_bmsg, why);
  ok &= check_backward_combine_elemt(e, sc, relu, sm_count, cpu_msg, cpu_bmsg, oc, oe, why);
  return ok;
}

const std::vector<Scenario>& scenarios() {
  static const std::vector<Scenario> all = {
      {{5, 12, 7, 7}, Layout::kPlanar, 0, 2.0, 3.0},         // 7×7 planes: scalar accesses
      {{3, 8, 28, 28}, Layout::kPlanar, 0, -1.0, 0.5},       // vectorized planes
      {{3, 8, 28, 28}, Layout::kPlanar, 1, 0.5, 2.0},        // misaligned base: narrower vectors
      {{4, 12, 5, 3}, Layout::kChannelsLast, 0, 2.0, 3.0},   // NHWC, C = 12
      {{2, 130, 3, 3}, Layout::kChannelsLast, 0, 0.0, 1.0},  // NHWC, two channel tiles, C % 4 == 2
      {{3, 3, 4, 4}, Layout::kChannelsLast, 1, 1.0, 1.0},    // NHWC, C = 3, misaligned
      {{9, 20}, Layout::kPlanar, 0, 2.0, 3.0},               // (N, C): channels-last rows
      {{1, 2, 5000}, Layout::kPlanar, 0, 1.0, 2.0},          // (N, C, L): several segments per plane
      {{0, 6, 4, 4}, Layout::kPlanar, 0, 0.0, 1.0},          // empty local batch
      {{1, 5, 1, 1}, Layout::kPlanar, 0, 0.0, 1.0},          // one value per channel
      {{2, 16, 4, 4}, Layout::kPlanar, 0, 1000.0, 1.0},      // |mean| ≫ std
      {{70, 16, 2, 2}, Layout::kChannelsLast, 0, -1000.0, 1.0},
  };
  return all;
}

template <class T>
void run_all(const char* dtype) {
  for (const Scenario& sc : scenarios())
    for (bool relu : {false, true})
      for (int sms : {3, 132}) {
        std::string why;
        EXPECT_TRUE(run_scenario<T>(sc, relu, sms, why))
            << dtype << " " << sc.str() << " relu " << relu << " sms " << sms << ":\n" << why;
      }
}

TEST(GpuEmulation, KernelsMatchCpuFp32) { run_all<float>("fp32"); }
TEST(GpuEmulation, KernelsMatchCpuBf16) { run_all<__nv_bfloat16>("bf16"); }
TEST(GpuEmulation, KernelsMatchCpuFp16) { run_all<__half>("fp16"); }

// The device status logic: the same verdicts as the CPU combines for tags, empty and single batches,
// and backward count mismatches.
TEST(GpuEmulation, DeviceChecksAgreeWithCpuCombines) {
  const std::int64_t C = 2;
  std::vector<double> msg(static_cast<std::size_t>(bn_msg_size(C)), 0.0);
  auto set = [&](double tag_sum, double tag2_sum, double n) {
    msg[kMsgTag] = tag_sum;
    msg[kMsgTag2] = tag2_sum;
    msg[kMsgCount] = n;
    msg[3] = msg[4] = 1.0;
    msg[5] = msg[6] = 3.0;
  };
  HostBuffers out = combine_buffers(std::vector<double>(C, 0.0), {}, {});  // γ = 1, β = 0
  const BnLayerArrays arrays = out.arrays(C);
  const BnCombineArgs args = bn_combine_args(arrays, 0, 3, 7, 1e-5, BnRunningUpdate{});
  struct Case {
    double s, s2, n;
  };
  // agree; one rank with tag 0 (rejected input); different tags with equal sum; empty; single sample.
  for (Case k : {Case{21, 147, 10}, Case{14, 98, 10}, Case{21, 149, 10}, Case{21, 147, 0}, Case{21, 147, 1}}) {
    set(k.s, k.s2, k.n);
    EXPECT_EQ(cuda::bn_forward_status(msg.data(), 3, 7), cpu::bn_combine(msg.data(), args))
        << k.s << " " << k.s2 << " " << k.n;
  }
  for (double expected : {10.0, 11.0}) {
    set(21, 147, 10);
    const BnBackwardCombineArgs bargs = bn_backward_combine_args(arrays, 0, 3, 7, expected);
    EXPECT_EQ(cuda::bn_backward_status(msg.data(), 3, 7, expected), cpu::bn_backward_combine(msg.data(), bargs));
  }
}

// Eval coefficients: the device helper against the CPU layer's eval forward (bit-exact y).
TEST(GpuEmulation, RunningStatCoefficientsMatchCpuEval) {
  const std::int64_t C = 6;
  BatchNormOptions opt;
  opt.channels = C;
  SyncBatchNorm layer("eval.bn", opt, nullptr);
  for (std::int64_t c = 0; c < C; ++c) {
    layer.running_mean()[static_cast<std::size_t>(c)] = 0.3f * static_cast<float>(c) - 1.0f;
    layer.running_var()[static_cast<std::size_t>(c)] = 0.5f + static_cast<float>(c);
    layer.gamma()[static_cast<std::size_t>(c)] = 1.5f - 0.1f * static_cast<float>(c);
    layer.beta()[static_cast<std::size_t>(c)] = 0.2f * static_cast<float>(c);
  }
  const Tensor x = to_tensor(make_data(3, 0, 4, C, 9, 0.0, 2.0), {4, C, 3, 3}, Layout::kPlanar);
  Tensor y;
  layer.forward(x, y, false);
  std::vector<double> mean(C), var(C), invstd(C);
  std::vector<float> hi(C), a(C), b(C), ye(static_cast<std::size_t>(x.numel()));
  for (std::int64_t c = 0; c < C; ++c)
    cuda::bn_running_coefs_channel(layer.running_mean().data(), layer.running_var().data(), opt.eps,
                                   layer.gamma().data(), layer.beta().data(), c, mean.data(), var.data(), invstd.data(),
                                   hi.data(), a.data(), b.data());
  const BnGeometry g = bn_geometry(x.shape(), x.layout(), "eval");
  emulate_normalize<float, false>(x.data(), g, 5, hi.data(), a.data(), b.data(), ye.data());
  EXPECT_EQ(std::memcmp(ye.data(), y.data(), ye.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace syncbn::test
