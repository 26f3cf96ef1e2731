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
#include "syncbn/cuda/bn_tiling.h"
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

// One scenario's inputs: x and dy on the device in dtype dt, `shift` elements into their allocations (to
// misalign on purpose), the same dtype-rounded values in fp32 for the CPU kernels, a workspace, the pivot.
struct KernelCase {
  const Scenario& sc;
  DType dt;
  cudaStream_t s;
  int sms;
  BnGeometry g;
  std::int64_t C = 0, n = 0, numel = 0;
  DeviceTensor xd, dyd, yd, dxd;
  Tensor xf, dyf;
  DeviceArray<double> wsd;
  cuda::BnWorkspace ws;
  std::vector<double> pivot;  // (C)
  double tag = 777;

  KernelCase(const Scenario& scenario, DType dtype, cudaStream_t stream, int sm_count)
      : sc(scenario), dt(dtype), s(stream), sms(sm_count), g(bn_geometry(sc.shape, sc.layout, "gpu test")),
        C(sc.shape[1]), n(g.per_channel()), numel(g.numel()), xf(sc.shape, sc.layout), dyf(sc.shape, sc.layout) {
    std::int64_t S = 1;
    for (std::size_t i = 2; i < sc.shape.size(); ++i) S *= sc.shape[i];
    std::vector<std::int64_t> padded = {numel + sc.shift};
    for (DeviceTensor* t : {&xd, &dyd, &yd, &dxd}) t->resize(padded, Layout::kPlanar, dt);
    // Data as the device holds it: upload fp32, read back the dtype-rounded values.
    const Tensor xh = to_tensor(make_data(41, 0, sc.shape[0], C, S, sc.mean, sc.std), sc.shape, sc.layout);
    const Tensor dyh = to_tensor(make_data(42, 0, sc.shape[0], C, S, 0.0, 1.0), sc.shape, sc.layout);
    DeviceTensor tmp;
    cuda::copy_to_device(xh, dt, tmp, s);
    SBN_CUDA_CHECK(cudaMemcpyAsync(at(xd), tmp.data(), tmp.bytes(), cudaMemcpyDeviceToDevice, s), "test");
    cuda::copy_to_device(dyh, dt, tmp, s);
    SBN_CUDA_CHECK(cudaMemcpyAsync(at(dyd), tmp.data(), tmp.bytes(), cudaMemcpyDeviceToDevice, s), "test");
    const std::vector<double> xr = round_to_dtype(as_double(xh), dt), dr = round_to_dtype(as_double(dyh), dt);
    for (std::int64_t i = 0; i < numel; ++i) {
      xf[i] = static_cast<float>(xr[static_cast<std::size_t>(i)]);
      dyf[i] = static_cast<float>(dr[static_cast<std::size_t>(i)]);
    }
    wsd.resize(std::max<std::size_t>(cuda::bn_workspace_doubles(g, sms), 1), "test workspace");
    ws.data = wsd.data();
    ws.doubles = wsd.size();
    ws.sm_count = sms;
    pivot.resize(static_cast<std::size_t>(C));
    for (std::size_t c = 0; c < pivot.size(); ++c) pivot[c] = sc.mean + 0.5 * static_cast<double>(c % 3);
  }
  // The first element of t's data (after the slack).
  char* at(DeviceTensor& t) const { return static_cast<char*>(t.data()) + sc.shift * cuda::dtype_size(dt); }
};

using HostBuffers = BnLayerBuffers<std::vector<double>, std::vector<float>>;
using DeviceBuffers = BnLayerBuffers<DeviceArray<double>, DeviceArray<float>>;

// The combines' arrays on the host (the CPU kernels' reference), as a layer with running statistics
// 0.25 / 1.5 and the given pivot.
HostBuffers host_buffers(const std::vector<double>& pivot) {
  const std::size_t CC = pivot.size();
  HostBuffers h;
  h.pivot = pivot;
  for (auto* v : {&h.mean, &h.var, &h.invstd}) v->assign(CC, 0.0);
  for (auto* v : {&h.gamma, &h.beta, &h.hi, &h.a, &h.b, &h.k1, &h.k0}) v->assign(CC, 0.0f);
  h.running_mean.assign(CC, 0.25f);
  h.running_var.assign(CC, 1.5f);
  for (std::size_t c = 0; c < CC; ++c) {
    h.gamma[c] = 0.9f + 0.05f * static_cast<float>(c % 5);
    h.beta[c] = 0.1f * static_cast<float>(c % 3) - 0.1f;
  }
  return h;
}

// Their device twins, uploaded from the host values before any combine ran; the message and status words.
struct DeviceArrays : DeviceBuffers {
  DeviceArray<double> msg, count, expected;
  DeviceArray<int> status;
  DeviceArrays(const HostBuffers& h, cudaStream_t s) {
    const std::size_t CC = h.pivot.size();
    pivot = upload(h.pivot, s);
    gamma = upload(h.gamma, s);
    beta = upload(h.beta, s);
    running_mean = upload(h.running_mean, s);
    running_var = upload(h.running_var, s);
    for (auto* d : {&mean, &var, &invstd}) d->resize(CC, "test");
    for (auto* d : {&hi, &a, &b, &k1, &k0}) d->resize(CC, "test");
    msg.resize(static_cast<std::size_t>(bn_msg_size(static_cast<std::int64_t>(CC))), "test message");
    for (auto* d : {&count, &expected}) d->resize(1, "test");
    status.resize(1, "test");
    SBN_CUDA_CHECK(cudaMemsetAsync(status.data(), 0, sizeof(int), s), "test");
  }
};

// ---- stats: the message's header exactly, mean and variance within fp32-partial tolerance; cpu_msg gets
// the CPU's message.
bool check_stats(KernelCase& k, DeviceArrays& d, std::vector<double>& cpu_msg, std::string& why) {
  bool ok = true;
  const std::int64_t C = k.C;
  cpu_msg.assign(static_cast<std::size_t>(bn_msg_size(C)), 0.0);
  cpu::bn_stats(k.xf.data(), k.g, k.pivot.data(), k.tag, cpu_msg.data());
  cuda::bn_stats(k.at(k.xd), k.dt, k.g, d.pivot.data(), k.tag, d.msg.data(), k.ws, k.s);
  const std::vector<double> gpu_msg = download(d.msg, cpu_msg.size(), k.s);
  for (int h = 0; h < kMsgHeader; ++h)
    if (gpu_msg[static_cast<std::size_t>(h)] != cpu_msg[static_cast<std::size_t>(h)]) {
      ok = false;
      why += "stats header " + std::to_string(h) + "\n";
    }
  for (std::int64_t c = 0; c < C && k.n > 0; ++c) {
    double m0, v0, m1, v1;
    const auto i1 = static_cast<std::size_t>(kMsgHeader + c), i2 = static_cast<std::size_t>(kMsgHeader + C + c);
    bn_moments(cpu_msg[i1], cpu_msg[i2], cpu_msg[kMsgCount], k.pivot[static_cast<std::size_t>(c)], &m0, &v0);
    bn_moments(gpu_msg[i1], gpu_msg[i2], gpu_msg[kMsgCount], k.pivot[static_cast<std::size_t>(c)], &m1, &v1);
    const double sd = std::sqrt(v0);
    if (!(std::fabs(m1 - m0) <= 1e-5 * sd + 1e-12 * std::fabs(m0) && std::fabs(v1 - v0) <= 1e-5 * v0 + 1e-30)) {
      ok = false;
      why += "stats channel " + std::to_string(c) + ": mean " + std::to_string(m1) + " vs " + std::to_string(m0) +
             ", var " + std::to_string(v1) + " vs " + std::to_string(v0) + "\n";
      break;
    }
  }
  return ok;
}

// ---- combine on the CPU's message (h holds cpu::bn_combine's outputs): every device output bit-identical
bool check_combine(KernelCase& k, const std::vector<double>& cpu_msg, HostBuffers& h, DeviceArrays& d,
                   std::string& why) {
  const std::size_t CC = h.pivot.size();
  const BnCombineArgs ga = bn_combine_args(d.arrays(k.C), 0, 1, k.tag, 1e-5, BnRunningUpdate::of(true, 0.1, 0));
  auto cmsg_d = upload(cpu_msg, k.s);
  cuda::BnDeviceReport rep;
  rep.status = d.status.data();
  rep.count = d.count.data();
  cuda::bn_combine(cmsg_d.data(), ga, cuda::BnRunningCounter{}, rep, k.s);
  const cudaStream_t s = k.s;
  const bool combine_same = download(d.mean, CC, s) == h.mean && download(d.var, CC, s) == h.var &&
                            download(d.invstd, CC, s) == h.invstd && download(d.hi, CC, s) == h.hi &&
                            download(d.a, CC, s) == h.a && download(d.b, CC, s) == h.b &&
                            download(d.running_mean, CC, s) == h.running_mean &&
                            download(d.running_var, CC, s) == h.running_var && download(d.pivot, CC, s) == h.pivot &&
                            download(d.status, 1, s)[0] == kBnOk && download(d.count, 1, s)[0] == cpu_msg[kMsgCount];
  if (!combine_same) why += "bn_combine: device outputs differ from cpu::bn_combine\n";
  // The elementwise passes get the CPU's coefficients, so their outputs must match bit for bit.
  cuda::copy_to_device(h.hi, d.hi.data(), s);
  cuda::copy_to_device(h.a, d.a.data(), s);
  cuda::copy_to_device(h.b, d.b.data(), s);
  return combine_same;
}

// The device tensor t (data after the slack) on the host, through the staging tensor `view`.
Tensor device_result(KernelCase& k, DeviceTensor& t, DeviceTensor& view) {
  SBN_CUDA_CHECK(cudaMemcpyAsync(view.data(), k.at(t), view.bytes(), cudaMemcpyDeviceToDevice, k.s), "test");
  return cuda::copy_to_host(view, k.s);
}

// Element by element equality with the CPU result rounded to the dtype; the first mismatch goes to why.
bool same_as_cpu(const Tensor& got, const Tensor& cpu, KernelCase& k, const char* what, std::string& why) {
  const std::vector<double> want = round_to_dtype(as_double(cpu), k.dt);
  for (std::int64_t i = 0; i < k.numel; ++i)
    if (static_cast<double>(got[i]) != want[static_cast<std::size_t>(i)]) {
      why += std::string(what) + ": element " + std::to_string(i) + " got " + std::to_string(got[i]) + " want " +
             std::to_string(want[static_cast<std::size_t>(i)]) + "\n";
      return false;
    }
  return true;
}

// ---- backward reduce (+ dγ, dβ accumulate onto non-zero values): sums within tolerance; cpu_bmsg gets
// the CPU's message.
bool check_backward_reduce(KernelCase& k, bool relu, HostBuffers& h, DeviceArrays& d, std::vector<double>& cpu_bmsg,
                           std::string& why) {
  bool ok = true;
  const cudaStream_t s = k.s;
  const std::size_t CC = h.pivot.size();
  cpu_bmsg.assign(static_cast<std::size_t>(bn_msg_size(k.C)), 0.0);
  std::vector<float> dg(CC, 0.5f), db(CC, -0.25f);
  cpu::bn_backward_reduce(k.dyf.data(), k.xf.data(), k.g, h.hi.data(), h.a.data(), h.b.data(), relu, h.mean.data(),
                          h.invstd.data(), k.tag + 1, cpu_bmsg.data(), dg.data(), db.data());
  auto dg_d = upload(std::vector<float>(CC, 0.5f), s), db_d = upload(std::vector<float>(CC, -0.25f), s);
  cuda::copy_to_device(h.mean, d.mean.data(), s);
  cuda::copy_to_device(h.invstd, d.invstd.data(), s);
  cuda::bn_backward_reduce(k.at(k.dyd), k.at(k.xd), k.dt, k.g, d.hi.data(), d.a.data(), d.b.data(), relu,
                           d.mean.data(), d.invstd.data(), k.tag + 1, d.msg.data(), dg_d.data(), db_d.data(), k.ws, s);
  const std::vector<double> gpu_bmsg = download(d.msg, cpu_bmsg.size(), s);
  const std::vector<float> dg_g = download(dg_d, CC, s), db_g = download(db_d, CC, s);
  for (int hd = 0; hd < kMsgHeader; ++hd)
    if (gpu_bmsg[static_cast<std::size_t>(hd)] != cpu_bmsg[static_cast<std::size_t>(hd)]) {
      ok = false;
      why += "backward header " + std::to_string(hd) + "\n";
    }
  // Scale of the sums: n values of |dy| ~ 1 and |x − hi| ~ std.
  const double sa = static_cast<double>(k.n), sb = static_cast<double>(k.n) * 4 * k.sc.std;
  const std::vector<double>& mean = h.mean;
  const std::vector<double>& invstd = h.invstd;
  const std::vector<float>& hi = h.hi;
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
  return ok;
}

// ---- backward combine on the CPU's message (h.k1, h.k0 hold cpu::bn_backward_combine's): device k1, k0
// bit-identical; then the device gets the CPU's k1, k0.
bool check_backward_combine(KernelCase& k, const std::vector<double>& cpu_msg, const std::vector<double>& cpu_bmsg,
                            HostBuffers& h, DeviceArrays& d, std::string& why) {
  const cudaStream_t s = k.s;
  const std::size_t CC = h.pivot.size();
  const BnBackwardCombineArgs gb = bn_backward_combine_args(d.arrays(k.C), 0, 1, k.tag + 1, cpu_msg[kMsgCount]);
  auto bmsg_d = upload(cpu_bmsg, s);
  auto expect_d = upload(std::vector<double>{cpu_msg[kMsgCount]}, s);
  cuda::BnDeviceReport rep;
  rep.status = d.status.data();
  rep.count = d.count.data();
  rep.expected = d.expected.data();
  cuda::bn_backward_combine(bmsg_d.data(), gb, expect_d.data(), rep, s);
  bool ok = true;
  if (download(d.k1, CC, s) != h.k1 || download(d.k0, CC, s) != h.k0 || download(d.status, 1, s)[0] != kBnOk) {
    ok = false;
    why += "bn_backward_combine: device outputs differ from cpu::bn_backward_combine\n";
  }
  cuda::copy_to_device(h.k1, d.k1.data(), s);
  cuda::copy_to_device(h.k0, d.k0.data(), s);
  return ok;
}

// Every kernel of one scenario against its CPU twin; returns this rank's verdict with the reasons.
bool run_scenario(const Scenario& sc, DType dt, bool relu, cudaStream_t s, int sms, std::string& why) {
  KernelCase k(sc, dt, s, sms);
  HostBuffers h = host_buffers(k.pivot);
  DeviceArrays d(h, s);
  std::vector<double> cpu_msg, cpu_bmsg;
  bool ok = check_stats(k, d, cpu_msg, why);
  if (k.n < 2) return ok;

  const BnRunningUpdate momentum = BnRunningUpdate::of(true, 0.1, 0);
  if (cpu::bn_combine(cpu_msg.data(), bn_combine_args(h.arrays(k.C), 0, 1, k.tag, 1e-5, momentum)) != kBnOk) {
    why += "cpu combine failed\n";
    return false;
  }
  ok &= check_combine(k, cpu_msg, h, d, why);

  // ---- normalize, with the CPU's coefficients: bit-identical to the CPU output rounded to the dtype
  Tensor y_cpu(sc.shape, sc.layout);
  cpu::bn_normalize(k.xf.data(), k.g, h.hi.data(), h.a.data(), h.b.data(), relu, false, y_cpu.data());
  cuda::bn_normalize(k.at(k.xd), dt, k.g, d.hi.data(), d.a.data(), d.b.data(), relu, k.at(k.yd), sms, s);
  DeviceTensor view;
  view.resize(sc.shape, sc.layout, dt);
  ok &= same_as_cpu(device_result(k, k.yd, view), y_cpu, k, "normalize", why);

  ok &= check_backward_reduce(k, relu, h, d, cpu_bmsg, why);

  if (cpu::bn_backward_combine(cpu_bmsg.data(), bn_backward_combine_args(h.arrays(k.C), 0, 1, k.tag + 1,
                                                                          cpu_msg[kMsgCount])) != kBnOk) {
    why += "cpu backward combine failed\n";
    return false;
  }
  ok &= check_backward_combine(k, cpu_msg, cpu_bmsg, h, d, why);

  // ---- elemt, with the CPU's coefficients: bit-identical as normalize
  Tensor dx_cpu(sc.shape, sc.layout);
  cpu::bn_backward_elemt(k.dyf.data(), k.xf.data(), k.g, h.hi.data(), h.a.data(), h.b.data(), relu, h.k1.data(),
                         h.k0.data(), false, dx_cpu.data());
  cuda::bn_backward_elemt(k.at(k.dyd), k.at(k.xd), dt, k.g, d.hi.data(), d.a.data(), d.b.data(), relu, d.k1.data(),
                          d.k0.data(), k.at(k.dxd), sms, s);
  ok &= same_as_cpu(device_result(k, k.dxd, view), dx_cpu, k, "backward_elemt", why);
  return ok;
}

// Host only (no device): channels-last reductions use at most kMaxRowsReduceVec lanes, so bf16/fp16 stats
// get 8-byte vectors (4 channels of accumulators per thread, ≤ 64 registers, 4 blocks per SM) while the
// elementwise passes and planar reductions keep 16-byte ones. Fails if the cap is dropped: the launchers
// have no channels-last reduction kernel wider than the cap (launch_tiled's nullptr overload throws).
TEST(GpuKernels, TwoByteChannelsLastReductionsUseFourLanes) {
  using cuda::BnPass;
  for (int elem : {2, 4}) {
    const cuda::BnTile red = cuda::bn_plan(BnPass::kReduce, 4096, 256, 1, true, elem, 0, 132);
    const cuda::BnTile elt = cuda::bn_plan(BnPass::kElementwise, 4096, 256, 1, true, elem, 0, 132);
    const cuda::BnTile planar = cuda::bn_plan(BnPass::kReduce, 32, 256, 56 * 56, false, elem, 0, 132);
    EXPECT_EQ(red.vec, 4) << elem << "-byte channels-last reduction";
    EXPECT_EQ(red.unroll, 4);
    EXPECT_EQ(red.tx * red.vec, cuda::kMaxTileChannels);  // a full 128-channel tile per block
    EXPECT_EQ(elt.vec, 16 / elem) << elem << "-byte channels-last elementwise pass";
    EXPECT_EQ(planar.vec, 16 / elem) << elem << "-byte planar reduction";
  }
  EXPECT_EQ(cuda::bn_pick_vec(784, 0, 2, cuda::kMaxRowsReduceVec), 4);
  EXPECT_EQ(cuda::bn_pick_vec(784, 0, 2), 8);
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
  DeviceBuffers bn;  // γ, β absent: 1, 0
  for (auto* d : {&bn.mean, &bn.var, &bn.invstd, &bn.pivot}) d->resize(C, "test");
  for (auto* d : {&bn.hi, &bn.a, &bn.b, &bn.running_mean, &bn.running_var, &bn.k1, &bn.k0}) d->resize(C, "test");
  DeviceArray<float>& rm = bn.running_mean;
  cuda::copy_to_device(std::vector<float>(C, 7.0f), rm.data(), st.s);
  cuda::copy_to_device(std::vector<float>(C, 7.0f), bn.running_var.data(), st.s);
  cuda::copy_to_device(std::vector<double>(C, 0.0), bn.pivot.data(), st.s);
  auto status = upload(std::vector<int>{0}, st.s);
  auto count = upload(std::vector<double>{-1}, st.s);
  const BnCombineArgs args = bn_combine_args(bn.arrays(C), 0, 1, 5, 1e-5, BnRunningUpdate::of(true, 0.5, 0));
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
  const BnBackwardCombineArgs bargs = bn_backward_combine_args(bn.arrays(C), 0, 1, 5, 0);  // count: `expected`
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
  DeviceBuffers bn;  // γ, β absent: 1, 0
  for (auto* d : {&bn.mean, &bn.var, &bn.invstd, &bn.pivot}) d->resize(C, "test");
  for (auto* d : {&bn.hi, &bn.a, &bn.b}) d->resize(C, "test");
  DeviceArray<double>& pivot = bn.pivot;
  cuda::copy_to_device(std::vector<double>(C, 0.0), pivot.data(), st.s);
  bn.running_mean = upload(std::vector<float>(C, 100.0f), st.s);
  bn.running_var = upload(std::vector<float>(C, 100.0f), st.s);
  DeviceArray<float>& rm = bn.running_mean;
  auto counter = upload(std::vector<std::int64_t>{0}, st.s);
  auto status = upload(std::vector<int>{0}, st.s);
  // Cumulative: k comes from the device counter, not from the 0 given here.
  const BnCombineArgs args = bn_combine_args(bn.arrays(C), 0, 1, 3, 1e-5, BnRunningUpdate::of(true, std::nullopt, 0));
  cuda::BnRunningCounter ctr;
  ctr.batches_tracked = counter.data();
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
