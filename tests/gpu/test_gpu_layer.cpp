// CudaSyncBatchNorm at np = 1..4 against the CPU SyncBatchNorm (itself tested against a double
// reference) on the same data, over NCCL and MPI respectively:
//  - sync over the world and sync:2, uneven and empty local batches (local: empty output, batch counted),
//    NCHW / NHWC / (N, C), ReLU, fp32, bf16 and fp16 activations: y, dx, local dγ/dβ, running stats, batch
//    statistics, group count, num_batches_tracked;
//  - exactly one all-reduce per layer per direction, eval never communicates;
//  - layer-order mismatch and rejected input reported on every rank (at check()), naming the layer;
//  - momentum = None (device counter), ghost batches;
//  - a CUDA graph of forward + backward replays exactly like eager steps.
// Skips without one CUDA device per rank (gpu_test_util.h).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <thread>
#include <vector>

#include "gpu_test_util.h"
#include "syncbn/cuda/sync_batchnorm.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

using cuda::CudaSyncBatchNorm;
using cuda::DeviceTensor;
using cuda::DType;
using cuda::NcclCommunicator;

MpiCommunicator& mpi_world() { return dynamic_cast<MpiCommunicator&>(world()); }

std::unique_ptr<NcclCommunicator> make_nccl() {
  return std::make_unique<NcclCommunicator>(mpi_world(), cuda::NcclOptions{});
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { SBN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "test stream"); }
  ~Stream() { cudaStreamDestroy(s); }
};

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

Tensor tensor_of(const std::vector<double>& values, const std::vector<std::int64_t>& shape, Layout layout) {
  return to_tensor(values, shape, layout);
}

struct Scenario {
  Layout layout;
  bool relu;
  std::int64_t C, H, W;  // H = 0: (N, C)
  DType dtype;
};

struct Outputs {
  std::vector<double> y, dx, dgamma, dbeta, running_mean, running_var, mean, var;
  double count = 0;
  std::int64_t tracked = -1;  // num_batches_tracked after the step
};

void init_params(std::vector<float>& gamma, std::vector<float>& beta) {
  for (std::size_t c = 0; c < gamma.size(); ++c) {
    gamma[c] = 1.0f + 0.1f * static_cast<float>(c);
    beta[c] = 0.05f * static_cast<float>(c) - 0.2f;
  }
}

// Tolerances by dtype: outputs are rounded to the dtype (1 ulp may flip with coefficients that differ in
// their last fp32 bits); statistics see identical data on both sides.
double out_rtol(DType dt) { return dt == DType::kF32 ? 1e-5 : dt == DType::kBF16 ? 8e-3 : 1e-3; }

// One training step of the CPU layer (MPI) and the GPU layer (NCCL) in `mode` on this rank's slice.
bool compare_step(NcclCommunicator& nccl, const SyncMode& mode, const Scenario& sc, cudaStream_t s, std::string& why) {
  const int P = world().size(), r = world().rank();
  const auto split = uneven_split(P);
  std::int64_t first = 0;
  for (int q = 0; q < r; ++q) first += split[static_cast<std::size_t>(q)];
  const std::int64_t n = split[static_cast<std::size_t>(r)], C = sc.C, S = sc.H ? sc.H * sc.W : 1;
  const std::vector<std::int64_t> shape = sc.H ? std::vector<std::int64_t>{n, C, sc.H, sc.W} : std::vector<std::int64_t>{n, C};
  const auto xl = round_to_dtype(make_data(101, first, n, C, S, 2.0, 3.0), sc.dtype);
  const auto dyl = round_to_dtype(make_data(202, first, n, C, S, 0.0, 1.0), sc.dtype);
  const Tensor x = tensor_of(xl, shape, sc.layout), dy = tensor_of(dyl, shape, sc.layout);
  BatchNormOptions opt;
  opt.channels = C;
  opt.fuse_relu = sc.relu;
  // Local statistics on an empty rank: both layers follow PyTorch (empty output, the batch counted).
  const bool empty_local = mode.kind == SyncMode::kLocal && n == 0;

  Outputs cpu, gpu;
  {
    SyncGroup group(world(), mode);
    SyncBatchNorm bn("layer3.bn", opt, &group);
    init_params(bn.gamma(), bn.beta());
    Tensor y, dx;
    bn.forward(x, y, true);
    bn.backward(x, dy, dx);
    cpu.y = from_tensor(y);
    cpu.dx = from_tensor(dx);
    if (!empty_local) {
      cpu.mean = bn.batch_mean();
      cpu.var = bn.batch_var();
    }
    cpu.count = bn.last_group_count();
    cpu.tracked = bn.num_batches_tracked();
    cpu.dgamma = as_double(bn.dgamma());
    cpu.dbeta = as_double(bn.dbeta());
    cpu.running_mean = as_double(bn.running_mean());
    cpu.running_var = as_double(bn.running_var());
  }
  {
    SyncGroup group(nccl, mode);
    CudaSyncBatchNorm bn("layer3.bn", opt, &group, s);
    cuda::CudaBnState st = bn.state();
    init_params(st.gamma, st.beta);
    bn.set_state(st);
    DeviceTensor xd, dyd, yd, dxd;
    cuda::copy_to_device(x, sc.dtype, xd, s);
    cuda::copy_to_device(dy, sc.dtype, dyd, s);
    bn.forward(xd, yd, true);
    bn.backward(xd, dyd, dxd);
    bn.check();
    gpu.y = from_tensor(cuda::copy_to_host(yd, s));
    gpu.dx = from_tensor(cuda::copy_to_host(dxd, s));
    if (!empty_local) {
      gpu.mean = bn.batch_mean();
      gpu.var = bn.batch_var();
    }
    gpu.count = bn.last_group_count();
    st = bn.state();
    gpu.tracked = st.num_batches_tracked;
    gpu.dgamma = as_double(st.dgamma);
    gpu.dbeta = as_double(st.dbeta);
    gpu.running_mean = as_double(st.running_mean);
    gpu.running_var = as_double(st.running_var);
  }
  const double rt = out_rtol(sc.dtype);
  ::testing::AssertionResult checks[] = {
      near(gpu.y, cpu.y, rt, rt / 2, "y"),
      near(gpu.dx, cpu.dx, rt, rt / 2, "dx"),
      near(gpu.dgamma, cpu.dgamma, 1e-4, 1e-5, "local dgamma"),
      near(gpu.dbeta, cpu.dbeta, 1e-4, 1e-5, "local dbeta"),
      near(gpu.running_mean, cpu.running_mean, 1e-5, 1e-6, "running mean"),
      near(gpu.running_var, cpu.running_var, 1e-5, 1e-6, "running var"),
      near(gpu.mean, cpu.mean, 1e-5, 1e-6, "batch mean"),
      near(gpu.var, cpu.var, 1e-5, 1e-6, "batch var"),
  };
  bool ok = true;
  for (auto& c : checks)
    if (!c) {
      ok = false;
      why += std::string(c.message()) + "\n";
    }
  if (gpu.tracked != cpu.tracked || cpu.tracked != 1) {
    ok = false;
    why += "num_batches_tracked " + std::to_string(gpu.tracked) + " (gpu), " + std::to_string(cpu.tracked) +
           " (cpu), expected 1\n";
  }
  if (gpu.count != cpu.count) {
    ok = false;
    why += "group count " + std::to_string(gpu.count) + " != " + std::to_string(cpu.count) + "\n";
  }
  return ok;
}

// Without a device the layer refuses to be built, with a CUDA error that says what to check.
// Runs where there is NO device.
TEST(CudaSyncBatchNorm, WithoutDeviceConstructionFailsClearly) {
  if (world().any(cuda::visible_devices(nullptr) > 0, "test.has_device")) GTEST_SKIP() << "a CUDA device is visible";
  BatchNormOptions opt;
  opt.channels = 4;
  std::string msg;
  try {
    CudaSyncBatchNorm bn("nodev.bn", opt, nullptr, nullptr);
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("cudaGetDevice"), std::string::npos) << msg;
  EXPECT_NE(msg.find("check nvidia-smi"), std::string::npos) << msg;
}

TEST(CudaSyncBatchNorm, EqualsCpuLayerSyncUnevenAllDtypes) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto nccl = make_nccl();
  Stream st;
  bool ok = true;
  std::string why;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16})
    for (Layout layout : {Layout::kPlanar, Layout::kChannelsLast})
      for (bool relu : {false, true}) {
        std::string w;
        if (!compare_step(*nccl, parse_sync_mode("sync"), {layout, relu, 12, 5, 3, dt}, st.s, w)) {
          ok = false;
          why += std::string(cuda::dtype_name(dt)) + (layout == Layout::kPlanar ? " NCHW" : " NHWC") +
                 (relu ? " relu" : "") + ":\n" + w;
        }
      }
  std::string w;
  if (!compare_step(*nccl, parse_sync_mode("sync"), {Layout::kPlanar, false, 20, 0, 0, DType::kF32}, st.s, w)) {
    ok = false;
    why += "(N, C):\n" + w;
  }
  EXPECT_TRUE(ok) << why;
  EXPECT_TRUE(all_ranks(world(), ok)) << "another rank failed";
}

TEST(CudaSyncBatchNorm, EqualsCpuLayerGroupsOfTwoAndLocal) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto nccl = make_nccl();
  Stream st;
  std::string why;
  bool ok = true;
  if (world().size() % 2 == 0)
    ok &= compare_step(*nccl, parse_sync_mode("sync:2"), {Layout::kChannelsLast, false, 12, 5, 3, DType::kF32}, st.s, why);
  ok &= compare_step(*nccl, parse_sync_mode("local"), {Layout::kPlanar, true, 12, 5, 3, DType::kBF16}, st.s, why);
  EXPECT_TRUE(ok) << why;
  EXPECT_TRUE(all_ranks(world(), ok)) << "another rank failed";
}

// Exactly one all-reduce per layer in forward and one in backward; eval communicates not at all.
TEST(CudaSyncBatchNorm, OneCollectivePerLayerPerDirection) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto nccl = make_nccl();
  Stream st;
  auto comm = nccl->split(0, world().rank(), "test.count");
  SyncGroup group(*comm, parse_sync_mode("sync"));
  BatchNormOptions opt;
  opt.channels = 8;
  CudaSyncBatchNorm a("a.bn", opt, &group, st.s), b("b.bn", opt, &group, st.s);
  DeviceTensor x, y1, y2, d1, d2;
  cuda::copy_to_device(to_tensor(make_data(1, 3 * world().rank(), 3, 8, 16, 0, 1), {3, 8, 4, 4}, Layout::kPlanar),
                       DType::kF32, x, st.s);
  const auto base = comm->stats();
  a.forward(x, y1, true);
  const auto after_a = comm->stats();
  b.forward(y1, y2, true);
  const auto after_fwd = comm->stats();
  b.backward(y1, x, d2);
  a.backward(x, d2, d1);
  const auto after_bwd = comm->stats();
  a.forward(x, y1, false);
  b.forward(y1, y2, false);
  const auto after_eval = comm->stats();
  a.check();
  b.check();
  EXPECT_EQ(after_a.allreduces - base.allreduces, 1u);
  EXPECT_EQ(after_fwd.allreduces - base.allreduces, 2u);
  EXPECT_EQ(after_bwd.allreduces - after_fwd.allreduces, 2u);
  EXPECT_EQ(after_bwd.collectives - base.collectives, 4u);
  EXPECT_EQ(after_eval.collectives, after_bwd.collectives);
  EXPECT_EQ(after_bwd.bytes - base.bytes, 4u * sizeof(double) * (3 + 2 * 8));
}

TEST(CudaSyncBatchNorm, EvalUsesRunningStatsLikeCpu) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto nccl = make_nccl();
  Stream st;
  SyncGroup cg(world(), parse_sync_mode("sync")), gg(*nccl, parse_sync_mode("sync"));
  BatchNormOptions opt;
  opt.channels = 6;
  opt.fuse_relu = true;
  SyncBatchNorm cpu("eval.bn", opt, &cg);
  CudaSyncBatchNorm gpu("eval.bn", opt, &gg, st.s);
  cuda::CudaBnState s = gpu.state();
  for (std::size_t c = 0; c < 6; ++c) {
    cpu.running_mean()[c] = s.running_mean[c] = 0.3f * static_cast<float>(c) - 1.0f;
    cpu.running_var()[c] = s.running_var[c] = 0.5f + static_cast<float>(c);
  }
  gpu.set_state(s);
  const Tensor x = to_tensor(make_data(3, 0, 4, 6, 9, 0.0, 2.0), {4, 6, 3, 3}, Layout::kPlanar);
  Tensor y;
  DeviceTensor xd, yd;
  cuda::copy_to_device(x, DType::kF32, xd, st.s);
  const auto before = nccl->stats();
  cpu.forward(x, y, false);
  gpu.forward(xd, yd, false);
  gpu.check();
  EXPECT_EQ(nccl->stats().collectives, before.collectives);
  EXPECT_EQ(from_tensor(cuda::copy_to_host(yd, st.s)), from_tensor(y));  // bit-identical (same coefficients)
}

// Rank 1 calls the other layer first: every rank's check() names the layer it ran; no hang.
TEST(CudaSyncBatchNorm, LayerOrderMismatchIsReportedOnEveryRank) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto nccl = make_nccl();
  Stream st;
  SyncGroup group(*nccl, parse_sync_mode("sync"));
  BatchNormOptions o1, o2;
  o1.channels = 8;
  o2.channels = 16;
  CudaSyncBatchNorm first("block1.bn", o1, &group, st.s), second("block2.bn", o2, &group, st.s);
  CudaSyncBatchNorm& bn = world().rank() == 1 ? second : first;
  const std::int64_t C = bn.options().channels;
  DeviceTensor x, y;
  cuda::copy_to_device(to_tensor(make_data(5, 0, 4, C, 9, 0, 1), {4, C, 3, 3}, Layout::kPlanar), DType::kF32, x, st.s);
  std::string msg;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    bn.forward(x, y, true);
    bn.check();
  } catch (const Error& e) {
    msg = e.what();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const bool ok = msg.find("'" + bn.name() + "'") != std::string::npos &&
                  msg.find("not in the same layer") != std::string::npos && secs < 20.0;
  EXPECT_TRUE(ok) << "message '" << msg << "' after " << secs << " s";
  EXPECT_TRUE(all_ranks(world(), ok));
}

// One rank rejects its input on the host: it reports the precise cause at once; its peers' check()
// reports the tag mismatch naming the layer.
TEST(CudaSyncBatchNorm, RejectedInputFailsTheGroupPromptly) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto nccl = make_nccl();
  Stream st;
  SyncGroup group(*nccl, parse_sync_mode("sync"));
  BatchNormOptions opt;
  opt.channels = 6;
  CudaSyncBatchNorm bn("stem.bn", opt, &group, st.s);
  const bool bad = world().rank() == world().size() - 1;
  const std::int64_t c = bad ? 5 : 6;
  DeviceTensor x, y;
  cuda::copy_to_device(to_tensor(make_data(5, 0, 2, c, 4, 0, 1), {2, c, 2, 2}, Layout::kPlanar), DType::kF32, x, st.s);
  std::string msg;
  try {
    bn.forward(x, y, true);
    bn.check();
  } catch (const Error& e) {
    msg = e.what();
  }
  const std::string expect = bad ? "input has 5 channels, the layer expects 6" : "not in the same layer";
  const bool ok = msg.find("'stem.bn'") != std::string::npos && msg.find(expect) != std::string::npos;
  EXPECT_TRUE(ok) << "message '" << msg << "'";
  EXPECT_TRUE(all_ranks(world(), ok));
}

// momentum = None: cumulative average through the device counter, three steps, as the CPU layer.
TEST(CudaSyncBatchNorm, CumulativeMomentumMatchesCpu) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto nccl = make_nccl();
  Stream st;
  SyncGroup cg(world(), parse_sync_mode("sync")), gg(*nccl, parse_sync_mode("sync"));
  BatchNormOptions opt;
  opt.channels = 4;
  opt.momentum = std::nullopt;
  SyncBatchNorm cpu("cma.bn", opt, &cg);
  CudaSyncBatchNorm gpu("cma.bn", opt, &gg, st.s);
  for (int step = 0; step < 3; ++step) {
    const Tensor x = to_tensor(make_data(60 + step, 2 * world().rank(), 2, 4, 9, step, 1.0 + step), {2, 4, 3, 3},
                               Layout::kPlanar);
    Tensor y;
    DeviceTensor xd, yd;
    cuda::copy_to_device(x, DType::kF32, xd, st.s);
    cpu.forward(x, y, true);
    gpu.forward(xd, yd, true);
    gpu.check();
  }
  const cuda::CudaBnState s = gpu.state();
  EXPECT_EQ(s.num_batches_tracked, cpu.num_batches_tracked());
  EXPECT_TRUE(near(as_double(s.running_mean), as_double(cpu.running_mean()), 1e-5, 1e-6, "running mean"));
  EXPECT_TRUE(near(as_double(s.running_var), as_double(cpu.running_var()), 1e-5, 1e-6, "running var"));
}

TEST(CudaSyncBatchNorm, GhostBatchesMatchCpu) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  Stream st;
  BatchNormOptions opt;
  opt.channels = 5;
  opt.ghost_batch = 2;
  SyncBatchNorm cpu("ghost.bn", opt, nullptr);
  CudaSyncBatchNorm gpu("ghost.bn", opt, nullptr, st.s);
  const Tensor x = to_tensor(make_data(8, 0, 5, 5, 12, 1.0, 2.0), {5, 5, 3, 4}, Layout::kChannelsLast);
  const Tensor dy = to_tensor(make_data(9, 0, 5, 5, 12, 0.0, 1.0), {5, 5, 3, 4}, Layout::kChannelsLast);
  Tensor y, dx;
  DeviceTensor xd, dyd, yd, dxd;
  cuda::copy_to_device(x, DType::kF32, xd, st.s);
  cuda::copy_to_device(dy, DType::kF32, dyd, st.s);
  cpu.forward(x, y, true);
  cpu.backward(x, dy, dx);
  gpu.forward(xd, yd, true);
  gpu.backward(xd, dyd, dxd);
  gpu.check();
  EXPECT_TRUE(near(from_tensor(cuda::copy_to_host(yd, st.s)), from_tensor(y), 1e-5, 1e-6, "y"));
  EXPECT_TRUE(near(from_tensor(cuda::copy_to_host(dxd, st.s)), from_tensor(dx), 1e-5, 1e-6, "dx"));
  EXPECT_TRUE(near(as_double(gpu.state().running_mean), as_double(cpu.running_mean()), 1e-5, 1e-6, "running mean"));
}

// forward + backward captured once (in `capture_mode`) into a CUDA graph and replayed: the same results as
// eager steps. Just before the capture a watched collective is left pending (held back by a host function)
// on the communicator's own stream and the capture is held open for several watchdog periods (2 ms), so the
// watchdog thread queries its events during the capture: harmless in thread-local mode, and in global mode (CUDA's default,
// PyTorch's) only because the watchdog runs in relaxed capture mode.
void expect_graph_replay_matches_eager(cudaStreamCaptureMode capture_mode) {
  auto nccl = make_nccl();
  Stream st;
  cuda::DeviceArray<double> probe;
  probe.resize(4096, "graph.probe");
  cuda::copy_to_device(std::vector<double>(probe.size(), 0.0), probe.data(), st.s);
  for (const char* mode : {"local", "sync"}) {
    SyncGroup group(*nccl, parse_sync_mode(mode));
    BatchNormOptions opt;
    opt.channels = 16;
    opt.fuse_relu = true;
    CudaSyncBatchNorm eager("graph.bn", opt, &group, st.s), graphed("graph.bn", opt, &group, st.s);
    const std::vector<std::int64_t> shape = {3, 16, 6, 6};
    DeviceTensor x, dy, ye, dxe, yg, dxg;
    cuda::copy_to_device(to_tensor(make_data(12, 3 * world().rank(), 3, 16, 36, 1.0, 2.0), shape, Layout::kChannelsLast),
                         DType::kBF16, x, st.s);
    cuda::copy_to_device(to_tensor(make_data(13, 3 * world().rank(), 3, 16, 36, 0.0, 1.0), shape, Layout::kChannelsLast),
                         DType::kBF16, dy, st.s);
    // Eager reference: three steps. Graphed: one eager warm-up step (allocations), then two replays.
    for (int i = 0; i < 3; ++i) {
      eager.forward(x, ye, true);
      eager.backward(x, dy, dxe);
      eager.check();
    }
    graphed.forward(x, yg, true);
    graphed.backward(x, dy, dxg);
    graphed.check();
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    // A watched collective held back 20 ms by a host function, so it is still pending during the capture.
    SBN_CUDA_CHECK(cudaLaunchHostFunc(
                       nccl->stream(), [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(20)); },
                       nullptr),
                   "test delay");
    nccl->allreduce_sum(probe.data(), probe.size(), "graph.probe");
    SBN_CUDA_CHECK(cudaStreamBeginCapture(st.s, capture_mode), "test capture");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    graphed.forward(x, yg, true);
    graphed.backward(x, dy, dxg);
    SBN_CUDA_CHECK(cudaStreamEndCapture(st.s, &graph), "test capture");
    nccl->synchronize("graph.probe");  // the eager probe completes before the replays' collectives
    SBN_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0), "test capture");
    for (int i = 0; i < 2; ++i) {
      SBN_CUDA_CHECK(cudaGraphLaunch(exec, st.s), "test replay");
      graphed.check();
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    const cuda::CudaBnState se = eager.state(), sg = graphed.state();
    EXPECT_EQ(from_tensor(cuda::copy_to_host(yg, st.s)), from_tensor(cuda::copy_to_host(ye, st.s))) << mode;
    EXPECT_EQ(from_tensor(cuda::copy_to_host(dxg, st.s)), from_tensor(cuda::copy_to_host(dxe, st.s))) << mode;
    EXPECT_EQ(sg.running_mean, se.running_mean) << mode;
    EXPECT_EQ(sg.running_var, se.running_var) << mode;
    EXPECT_EQ(sg.dgamma, se.dgamma) << mode;
    EXPECT_EQ(sg.num_batches_tracked, 3) << mode;
  }
}

TEST(CudaSyncBatchNorm, GraphReplayMatchesEagerSteps) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  expect_graph_replay_matches_eager(cudaStreamCaptureModeThreadLocal);
}

// Issue 11 item 2: a global-mode capture must survive the watchdog's event queries.
TEST(CudaSyncBatchNorm, GraphReplayGlobalCaptureModeMatchesEagerSteps) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  expect_graph_replay_matches_eager(cudaStreamCaptureModeGlobal);
}

}  // namespace
}  // namespace syncbn::test
