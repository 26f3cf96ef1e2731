// CUDA kernels against the CPU kernels on a real device, every layout, dtype, ReLU on/off, odd sizes
// (vector tails, 7×7 planes, C % 4 != 0, misaligned bases), empty and one-sample batches:
//  - bn_stats: the message's header exactly, its mean/variance within fp32-partial tolerance;
//  - bn_combine / bn_backward_combine on the CPU's message: every output bit-identical to the CPU's;
//  - bn_normalize / bn_backward_elemt with the CPU's coefficients: bit-identical to the CPU output
//    rounded to the dtype;
//  - bn_backward_reduce: sums and dγ/dβ within tolerance;
//  - device status words: sticky first error, counts, the cumulative running-stat counter.
// Skips without a device (see gpu_test_util.h). Each rank tests its own device independently.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "gpu_test_util.h"
#include "syncbn/cuda/bn_kernels.h"
#include "syncbn/cuda/device.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

using cuda::DeviceArray;
using cuda::DeviceTensor;
using cuda::DType;

// A stream for the test, destroyed at scope exit.
struct Stream {
  cudaStream_t s = nullptr;
  Stream() { SBN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "test stream"); }
  ~Stream() { cudaStreamDestroy(s); }
};

template <class T>
DeviceArray<T> upload(const std::vector<T>& v, cudaStream_t s) {
  DeviceArray<T> d;
  d.resize(std::max<std::size_t>(v.size(), 1), "test array");
  cuda::copy_to_device(v, d.data(), s);
  return d;
}

template <class T>
std::vector<T> download(const DeviceArray<T>& d, std::size_t n, cudaStream_t s) {
  return cuda::copy_to_host(d.data(), n, s);
}

std::vector<double> as_double(const Tensor& t) { return std::vector<double>(t.data(), t.data() + t.numel()); }

struct Scenario {
  std::vector<std::int64_t> shape;
  Layout layout;
  std::int64_t shift;  // elements into the allocation: odd values misalign the base
  double mean, std;
};

// Everything for one scenario; returns this rank's verdict with the reasons.
bool run_scenario(const Scenario& sc, DType dt, bool relu, cudaStream_t s, int sms, std::string& why) {
  const std::int64_t C = sc.shape[1];
  std::int64_t S = 1;
  for (std::size_t i = 2; i < sc.shape.size(); ++i) S *= sc.shape[i];
  const BnGeometry g = bn_geometry(sc.shape, sc.layout, "gpu test");
  const std::int64_t n = g.per_channel(), numel = g.numel();
  const auto CC = static_cast<std::size_t>(C);
  const std::size_t esz = cuda::dtype_size(dt);
  // Device tensors with `shift` elements of slack in front (to misalign on purpose).
  std::vector<std::int64_t> padded = {numel + sc.shift};
  DeviceTensor xd, dyd, yd, dxd;
  for (DeviceTensor* t : {&xd, &dyd, &yd, &dxd}) t->resize(padded, Layout::kPlanar, dt);
  auto at = [&](DeviceTensor& t) { return static_cast<char*>(t.data()) + sc.shift * esz; };
  // Data as the device holds it: upload fp32, read back the dtype-rounded values.
  const Tensor xh = to_tensor(make_data(41, 0, sc.shape[0], C, S, sc.mean, sc.std), sc.shape, sc.layout);
  const Tensor dyh = to_tensor(make_data(42, 0, sc.shape[0], C, S, 0.0, 1.0), sc.shape, sc.layout);
  {
    DeviceTensor tmp;
    cuda::copy_to_device(xh, dt, tmp, s);
    SBN_CUDA_CHECK(cudaMemcpyAsync(at(xd), tmp.data(), tmp.bytes(), cudaMemcpyDeviceToDevice, s), "test");
    cuda::copy_to_device(dyh, dt, tmp, s);
    SBN_CUDA_CHECK(cudaMemcpyAsync(at(dyd), tmp.data(), tmp.bytes(), cudaMemcpyDeviceToDevice, s), "test");
  }
  Tensor xf(sc.shape, sc.layout), dyf(sc.shape, sc.layout);
  {
    const std::vector<double> xr = round_to_dtype(as_double(xh), dt), dr = round_to_dtype(as_double(dyh), dt);
    for (std::int64_t i = 0; i < numel; ++i) {
      xf[i] = static_cast<float>(xr[static_cast<std::size_t>(i)]);
      dyf[i] = static_cast<float>(dr[static_cast<std::size_t>(i)]);
    }
  }
  cuda::BnWorkspace ws;
  DeviceArray<double> wsd;
  wsd.resize(std::max<std::size_t>(cuda::bn_workspace_doubles(g, sms), 1), "test workspace");
  ws.data = wsd.data();
  ws.doubles = wsd.size();
  ws.sm_count = sms;
  bool ok = true;
  const double tag = 777;

  // ---- stats
  std::vector<double> pivot(CC);
  for (std::size_t c = 0; c < CC; ++c) pivot[c] = sc.mean + 0.5 * static_cast<double>(c % 3);
  std::vector<double> cpu_msg(static_cast<std::size_t>(bn_msg_size(C)));
  cpu::bn_stats(xf.data(), g, pivot.data(), tag, cpu_msg.data());
  auto pivot_d = upload(pivot, s);
  DeviceArray<double> msg_d;
  msg_d.resize(cpu_msg.size(), "test message");
  cuda::bn_stats(at(xd), dt, g, pivot_d.data(), tag, msg_d.data(), ws, s);
  const std::vector<double> gpu_msg = download(msg_d, cpu_msg.size(), s);
  for (int h = 0; h < kMsgHeader; ++h)
    if (gpu_msg[static_cast<std::size_t>(h)] != cpu_msg[static_cast<std::size_t>(h)]) {
      ok = false;
      why += "stats header " + std::to_string(h) + "\n";
    }
  for (std::int64_t c = 0; c < C && n > 0; ++c) {
    double m0, v0, m1, v1;
    const auto i1 = static_cast<std::size_t>(kMsgHeader + c), i2 = static_cast<std::size_t>(kMsgHeader + C + c);
    bn_moments(cpu_msg[i1], cpu_msg[i2], cpu_msg[kMsgCount], pivot[static_cast<std::size_t>(c)], &m0, &v0);
    bn_moments(gpu_msg[i1], gpu_msg[i2], gpu_msg[kMsgCount], pivot[static_cast<std::size_t>(c)], &m1, &v1);
    const double sd = std::sqrt(v0);
    if (!(std::fabs(m1 - m0) <= 1e-5 * sd + 1e-12 * std::fabs(m0) && std::fabs(v1 - v0) <= 1e-5 * v0 + 1e-30)) {
      ok = false;
      why += "stats channel " + std::to_string(c) + ": mean " + std::to_string(m1) + " vs " + std::to_string(m0) +
             ", var " + std::to_string(v1) + " vs " + std::to_string(v0) + "\n";
      break;
    }
  }
  if (n < 2) return ok;

  // ---- combine (on the CPU's message): bit-identical outputs
  std::vector<float> gamma(CC), beta(CC);
  for (std::size_t c = 0; c < CC; ++c) {
    gamma[c] = 0.9f + 0.05f * static_cast<float>(c % 5);
    beta[c] = 0.1f * static_cast<float>(c % 3) - 0.1f;
  }
  std::vector<double> mean(CC), var(CC), invstd(CC), piv_cpu = pivot;
  std::vector<float> rm(CC, 0.25f), rv(CC, 1.5f), hi(CC), a(CC), b(CC);
  BnCombineArgs ca;
  ca.channels = C;
  ca.tag = tag;
  ca.factor = 0.1;
  ca.gamma = gamma.data();
  ca.beta = beta.data();
  ca.running_mean = rm.data();
  ca.running_var = rv.data();
  ca.pivot = piv_cpu.data();
  ca.mean = mean.data();
  ca.var = var.data();
  ca.invstd = invstd.data();
  ca.hi = hi.data();
  ca.a = a.data();
  ca.b = b.data();
  if (cpu::bn_combine(cpu_msg.data(), ca) != kBnOk) {
    why += "cpu combine failed\n";
    return false;
  }
  auto cmsg_d = upload(cpu_msg, s);
  auto gamma_d = upload(gamma, s), beta_d = upload(beta, s);
  auto rm_d = upload(std::vector<float>(CC, 0.25f), s), rv_d = upload(std::vector<float>(CC, 1.5f), s);
  DeviceArray<double> mean_d, var_d, invstd_d;
  DeviceArray<float> hi_d, a_d, b_d, k1_d, k0_d;
  for (auto* d : {&mean_d, &var_d, &invstd_d}) d->resize(CC, "test");
  for (auto* d : {&hi_d, &a_d, &b_d, &k1_d, &k0_d}) d->resize(CC, "test");
  DeviceArray<int> status_d;
  DeviceArray<double> count_d, expected_d;
  status_d.resize(1, "test");
  count_d.resize(1, "test");
  expected_d.resize(1, "test");
  SBN_CUDA_CHECK(cudaMemsetAsync(status_d.data(), 0, sizeof(int), s), "test");
  BnCombineArgs ga = ca;
  ga.gamma = gamma_d.data();
  ga.beta = beta_d.data();
  ga.running_mean = rm_d.data();
  ga.running_var = rv_d.data();
  ga.pivot = pivot_d.data();
  ga.mean = mean_d.data();
  ga.var = var_d.data();
  ga.invstd = invstd_d.data();
  ga.hi = hi_d.data();
  ga.a = a_d.data();
  ga.b = b_d.data();
  cuda::BnDeviceReport rep;
  rep.status = status_d.data();
  rep.count = count_d.data();
  cuda::bn_combine(cmsg_d.data(), ga, cuda::BnRunningCounter{}, rep, s);
  const bool combine_same = download(mean_d, CC, s) == mean && download(var_d, CC, s) == var &&
                            download(invstd_d, CC, s) == invstd && download(hi_d, CC, s) == hi &&
                            download(a_d, CC, s) == a && download(b_d, CC, s) == b && download(rm_d, CC, s) == rm &&
                            download(rv_d, CC, s) == rv && download(pivot_d, CC, s) == piv_cpu &&
                            download(status_d, 1, s)[0] == kBnOk && download(count_d, 1, s)[0] == cpu_msg[kMsgCount];
  if (!combine_same) {
    ok = false;
    why += "bn_combine: device outputs differ from cpu::bn_combine\n";
  }
  // The elementwise passes get the CPU's coefficients, so their outputs must match bit for bit.
  cuda::copy_to_device(hi, hi_d.data(), s);
  cuda::copy_to_device(a, a_d.data(), s);
  cuda::copy_to_device(b, b_d.data(), s);

  // ---- normalize
  Tensor y_cpu(sc.shape, sc.layout);
  cpu::bn_normalize(xf.data(), g, hi.data(), a.data(), b.data(), relu, false, y_cpu.data());
  cuda::bn_normalize(at(xd), dt, g, hi_d.data(), a_d.data(), b_d.data(), relu, at(yd), sms, s);
  DeviceTensor y_view;
  y_view.resize(sc.shape, sc.layout, dt);
  SBN_CUDA_CHECK(cudaMemcpyAsync(y_view.data(), at(yd), y_view.bytes(), cudaMemcpyDeviceToDevice, s), "test");
  const Tensor y_gpu = cuda::copy_to_host(y_view, s);
  const std::vector<double> y_want = round_to_dtype(as_double(y_cpu), dt);
  for (std::int64_t i = 0; i < numel; ++i)
    if (static_cast<double>(y_gpu[i]) != y_want[static_cast<std::size_t>(i)]) {
      ok = false;
      why += "normalize: element " + std::to_string(i) + " got " + std::to_string(y_gpu[i]) + " want " +
             std::to_string(y_want[static_cast<std::size_t>(i)]) + "\n";
      break;
    }

  // ---- backward reduce (+ dγ, dβ accumulate onto non-zero values)
  std::vector<double> cpu_bmsg(cpu_msg.size());
  std::vector<float> dg(CC, 0.5f), db(CC, -0.25f);
  cpu::bn_backward_reduce(dyf.data(), xf.data(), g, hi.data(), a.data(), b.data(), relu, mean.data(), invstd.data(),
                          tag + 1, cpu_bmsg.data(), dg.data(), db.data());
  auto dg_d = upload(std::vector<float>(CC, 0.5f), s), db_d = upload(std::vector<float>(CC, -0.25f), s);
  cuda::copy_to_device(mean, mean_d.data(), s);
  cuda::copy_to_device(invstd, invstd_d.data(), s);
  cuda::bn_backward_reduce(at(dyd), at(xd), dt, g, hi_d.data(), a_d.data(), b_d.data(), relu, mean_d.data(),
                           invstd_d.data(), tag + 1, msg_d.data(), dg_d.data(), db_d.data(), ws, s);
  const std::vector<double> gpu_bmsg = download(msg_d, cpu_msg.size(), s);
  const std::vector<float> dg_g = download(dg_d, CC, s), db_g = download(db_d, CC, s);
  for (int h = 0; h < kMsgHeader; ++h)
    if (gpu_bmsg[static_cast<std::size_t>(h)] != cpu_bmsg[static_cast<std::size_t>(h)]) {
      ok = false;
      why += "backward header " + std::to_string(h) + "\n";
    }
  // Scale of the sums: n values of |dy| ~ 1 and |x − hi| ~ std.
  const double sa = static_cast<double>(n), sb = static_cast<double>(n) * 4 * sc.std;
  for (std::size_t c = 0; c < CC; ++c) {
    const std::size_t ia = static_cast<std::size_t>(kMsgHeader) + c, ib = ia + CC;
    if (!(std::fabs(gpu_bmsg[ia] - cpu_bmsg[ia]) <= 1e-5 * sa && std::fabs(gpu_bmsg[ib] - cpu_bmsg[ib]) <= 1e-5 * sb &&
          std::fabs(db_g[c] - db[c]) <= 1e-5 * sa + 1e-6 * std::fabs(db[c]) &&
          std::fabs(dg_g[c] - dg[c]) <= 1e-5 * invstd[c] * (sb + std::fabs(mean[c] - hi[c]) * sa) + 1e-6 * std::fabs(dg[c]))) {
      ok = false;
      why += "backward sums channel " + std::to_string(c) + "\n";
      break;
    }
  }

  // ---- backward combine (on the CPU's message) and elemt
  std::vector<float> k1(CC), k0(CC);
  BnBackwardCombineArgs bc;
  bc.channels = C;
  bc.tag = tag + 1;
  bc.expected_count = cpu_msg[kMsgCount];
  bc.gamma = gamma.data();
  bc.mean = mean.data();
  bc.invstd = invstd.data();
  bc.hi = hi.data();
  bc.k1 = k1.data();
  bc.k0 = k0.data();
  if (cpu::bn_backward_combine(cpu_bmsg.data(), bc) != kBnOk) {
    why += "cpu backward combine failed\n";
    return false;
  }
  auto bmsg_d = upload(cpu_bmsg, s);
  auto expect_d = upload(std::vector<double>{cpu_msg[kMsgCount]}, s);
  BnBackwardCombineArgs gb = bc;
  gb.gamma = gamma_d.data();
  gb.mean = mean_d.data();
  gb.invstd = invstd_d.data();
  gb.hi = hi_d.data();
  gb.k1 = k1_d.data();
  gb.k0 = k0_d.data();
  rep.expected = expected_d.data();
  cuda::bn_backward_combine(bmsg_d.data(), gb, expect_d.data(), rep, s);
  if (download(k1_d, CC, s) != k1 || download(k0_d, CC, s) != k0 || download(status_d, 1, s)[0] != kBnOk) {
    ok = false;
    why += "bn_backward_combine: device outputs differ from cpu::bn_backward_combine\n";
  }
  cuda::copy_to_device(k1, k1_d.data(), s);
  cuda::copy_to_device(k0, k0_d.data(), s);
  Tensor dx_cpu(sc.shape, sc.layout);
  cpu::bn_backward_elemt(dyf.data(), xf.data(), g, hi.data(), a.data(), b.data(), relu, k1.data(), k0.data(), false,
                         dx_cpu.data());
  cuda::bn_backward_elemt(at(dyd), at(xd), dt, g, hi_d.data(), a_d.data(), b_d.data(), relu, k1_d.data(), k0_d.data(),
                          at(dxd), sms, s);
  SBN_CUDA_CHECK(cudaMemcpyAsync(y_view.data(), at(dxd), y_view.bytes(), cudaMemcpyDeviceToDevice, s), "test");
  const Tensor dx_gpu = cuda::copy_to_host(y_view, s);
  const std::vector<double> dx_want = round_to_dtype(as_double(dx_cpu), dt);
  for (std::int64_t i = 0; i < numel; ++i)
    if (static_cast<double>(dx_gpu[i]) != dx_want[static_cast<std::size_t>(i)]) {
      ok = false;
      why += "backward_elemt: element " + std::to_string(i) + " got " + std::to_string(dx_gpu[i]) + " want " +
             std::to_string(dx_want[static_cast<std::size_t>(i)]) + "\n";
      break;
    }
  return ok;
}

TEST(GpuKernels, MatchCpuKernelsAllLayoutsDtypesRelu) {
  SBN_GPU_TEST_PRELUDE(world(), false);
  Stream st;
  const int sms = cuda::current_sm_count();
  const std::vector<Scenario> scenarios = {
      {{5, 12, 7, 7}, Layout::kPlanar, 0, 2.0, 3.0},      {{3, 8, 28, 28}, Layout::kPlanar, 0, -1.0, 0.5},
      {{3, 8, 28, 28}, Layout::kPlanar, 1, 0.5, 2.0},     {{4, 12, 5, 3}, Layout::kChannelsLast, 0, 2.0, 3.0},
      {{2, 130, 3, 3}, Layout::kChannelsLast, 0, 0, 1},   {{3, 3, 4, 4}, Layout::kChannelsLast, 1, 1.0, 1.0},
      {{9, 20}, Layout::kPlanar, 0, 2.0, 3.0},            {{1, 2, 5000}, Layout::kPlanar, 0, 1.0, 2.0},
      {{0, 6, 4, 4}, Layout::kPlanar, 0, 0, 1},           {{1, 5, 1, 1}, Layout::kPlanar, 0, 0, 1},
      {{2, 16, 4, 4}, Layout::kPlanar, 0, 1000.0, 1.0},   {{32, 64, 28, 28}, Layout::kPlanar, 0, 0.5, 2.0},
      {{32, 64, 28, 28}, Layout::kChannelsLast, 0, 0.5, 2.0}, {{8, 2048, 7, 7}, Layout::kPlanar, 0, 0, 1},
      {{8, 2048, 7, 7}, Layout::kChannelsLast, 0, 0, 1},  {{256, 1000}, Layout::kPlanar, 0, 3.0, 1.0},
  };
  bool ok = true;
  std::string why;
  for (const Scenario& sc : scenarios)
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF16})
      for (bool relu : {false, true}) {
        std::string w;
        if (!run_scenario(sc, dt, relu, st.s, sms, w)) {
          ok = false;
          why += describe(sc.shape, sc.layout) + " shift " + std::to_string(sc.shift) + " " + cuda::dtype_name(dt) +
                 (relu ? " relu" : "") + ":\n" + w;
        }
      }
  EXPECT_TRUE(ok) << why;
}

// Status words: the first error of a step sticks (a later success does not clear it, a later error does
// not replace it); the counts are reported; nothing is touched on failure.
TEST(GpuKernels, DeviceStatusIsStickyAndOutputsUntouchedOnError) {
  SBN_GPU_TEST_PRELUDE(world(), false);
  Stream st;
  const std::int64_t C = 3;
  std::vector<double> good = {5, 25, 10, 1, 2, 3, 20, 30, 40};  // one rank, tag 5, n = 10
  std::vector<double> bad_tag = good, empty = good;
  bad_tag[1] = 26;
  empty[2] = 0;
  DeviceArray<double> mean, var, invstd, pivot;
  DeviceArray<float> hi, a, b, rm, rv;
  for (auto* d : {&mean, &var, &invstd, &pivot}) d->resize(C, "test");
  for (auto* d : {&hi, &a, &b, &rm, &rv}) d->resize(C, "test");
  cuda::copy_to_device(std::vector<float>(C, 7.0f), rm.data(), st.s);
  cuda::copy_to_device(std::vector<float>(C, 7.0f), rv.data(), st.s);
  cuda::copy_to_device(std::vector<double>(C, 0.0), pivot.data(), st.s);
  auto status = upload(std::vector<int>{0}, st.s);
  auto count = upload(std::vector<double>{-1}, st.s);
  BnCombineArgs args;
  args.channels = C;
  args.tag = 5;
  args.factor = 0.5;
  args.running_mean = rm.data();
  args.running_var = rv.data();
  args.pivot = pivot.data();
  args.mean = mean.data();
  args.var = var.data();
  args.invstd = invstd.data();
  args.hi = hi.data();
  args.a = a.data();
  args.b = b.data();
  cuda::BnDeviceReport rep;
  rep.status = status.data();
  rep.count = count.data();
  auto run = [&](const std::vector<double>& m) {
    auto md = upload(m, st.s);
    cuda::bn_combine(md.data(), args, cuda::BnRunningCounter{}, rep, st.s);
    SBN_CUDA_CHECK(cudaStreamSynchronize(st.s), "test");
  };
  run(bad_tag);
  EXPECT_EQ(download(status, 1, st.s)[0], kBnTagMismatch);
  EXPECT_EQ(download(rm, C, st.s), std::vector<float>(C, 7.0f)) << "running stats touched on error";
  run(good);
  EXPECT_EQ(download(status, 1, st.s)[0], kBnTagMismatch) << "a success cleared the error";
  EXPECT_NE(download(rm, C, st.s), std::vector<float>(C, 7.0f)) << "the good combine did not update";
  run(empty);
  EXPECT_EQ(download(status, 1, st.s)[0], kBnTagMismatch) << "a later error replaced the first";
  EXPECT_EQ(download(count, 1, st.s)[0], 0.0);
  cuda::copy_to_device(std::vector<int>{0}, status.data(), st.s);
  run(empty);
  EXPECT_EQ(download(status, 1, st.s)[0], kBnEmptyBatch);
  // Backward: count mismatch, with both counts reported.
  auto expected = upload(std::vector<double>{11}, st.s);
  auto seen = upload(std::vector<double>{0}, st.s), want = upload(std::vector<double>{0}, st.s);
  DeviceArray<float> k1, k0;
  k1.resize(C, "test");
  k0.resize(C, "test");
  BnBackwardCombineArgs bargs;
  bargs.channels = C;
  bargs.tag = 5;
  bargs.mean = mean.data();
  bargs.invstd = invstd.data();
  bargs.hi = hi.data();
  bargs.k1 = k1.data();
  bargs.k0 = k0.data();
  cuda::BnDeviceReport brep;
  auto bstatus = upload(std::vector<int>{0}, st.s);
  brep.status = bstatus.data();
  brep.count = seen.data();
  brep.expected = want.data();
  auto md = upload(good, st.s);
  cuda::bn_backward_combine(md.data(), bargs, expected.data(), brep, st.s);
  EXPECT_EQ(download(bstatus, 1, st.s)[0], kBnCountMismatch);
  EXPECT_EQ(download(seen, 1, st.s)[0], 10.0);
  EXPECT_EQ(download(want, 1, st.s)[0], 11.0);
}

// momentum = None: the factor 1/(k+1) comes from the device counter, which a successful combine
// increments; three combines give the cumulative average, like the CPU layer.
TEST(GpuKernels, CumulativeAverageUsesDeviceCounter) {
  SBN_GPU_TEST_PRELUDE(world(), false);
  Stream st;
  const std::int64_t C = 2;
  DeviceArray<double> mean, var, invstd, pivot;
  DeviceArray<float> hi, a, b;
  for (auto* d : {&mean, &var, &invstd, &pivot}) d->resize(C, "test");
  for (auto* d : {&hi, &a, &b}) d->resize(C, "test");
  cuda::copy_to_device(std::vector<double>(C, 0.0), pivot.data(), st.s);
  auto rm = upload(std::vector<float>(C, 100.0f), st.s), rv = upload(std::vector<float>(C, 100.0f), st.s);
  auto counter = upload(std::vector<std::int64_t>{0}, st.s);
  auto status = upload(std::vector<int>{0}, st.s);
  BnCombineArgs args;
  args.channels = C;
  args.tag = 3;
  args.factor = 0.0;  // enables updates; the value comes from the counter
  args.running_mean = rm.data();
  args.running_var = rv.data();
  args.pivot = pivot.data();
  args.mean = mean.data();
  args.var = var.data();
  args.invstd = invstd.data();
  args.hi = hi.data();
  args.a = a.data();
  args.b = b.data();
  cuda::BnRunningCounter ctr;
  ctr.batches_tracked = counter.data();
  ctr.cumulative = true;
  cuda::BnDeviceReport rep;
  rep.status = status.data();
  // Batch means 1, 2, 3 (n = 4, zero variance): cumulative mean 2.
  for (double m : {1.0, 2.0, 3.0}) {
    cuda::copy_to_device(std::vector<double>(C, 0.0), pivot.data(), st.s);
    auto msg = upload(std::vector<double>{3, 9, 4, 4 * m, 4 * m, 4 * m * m, 4 * m * m}, st.s);
    cuda::bn_combine(msg.data(), args, ctr, rep, st.s);
    SBN_CUDA_CHECK(cudaStreamSynchronize(st.s), "test");
  }
  EXPECT_EQ(download(counter, 1, st.s)[0], 3);
  EXPECT_EQ(download(status, 1, st.s)[0], kBnOk);
  for (float v : download(rm, C, st.s)) EXPECT_NEAR(v, 2.0f, 1e-6f);
}

TEST(GpuKernels, TooSmallWorkspaceIsAnError) {
  SBN_GPU_TEST_PRELUDE(world(), false);
  Stream st;
  DeviceTensor x({8, 64, 16, 16}, Layout::kPlanar, DType::kF32);
  DeviceArray<double> msg;
  msg.resize(static_cast<std::size_t>(bn_msg_size(64)), "test");
  cuda::BnWorkspace ws;  // empty
  ws.sm_count = cuda::current_sm_count();
  std::string what;
  try {
    cuda::bn_stats(x.data(), DType::kF32, bn_geometry(x.shape(), x.layout(), "t"), nullptr, 1, msg.data(), ws, st.s);
  } catch (const Error& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("bn_stats: workspace of 0 doubles"), std::string::npos) << what;
}

}  // namespace
}  // namespace syncbn::test
