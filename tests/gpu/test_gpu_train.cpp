// Training on the GPU (src/cuda/train, docs/GPU.md "Training on the GPU").
//
// Host tests (no GPU needed: they never skip):
//  - the network plan (net_plan.h) the GPU model builds is the CPU model's: for convnet/resnet × every
//    norm its slots are the CPU model's parameters (names, offsets, sizes), it describes the network as
//    the CPU model does, lists the CPU model's buffers, and gives the same store (layout, initial values
//    for a seed) and signature; a store that already holds parameters is refused;
//  - the fp16 loss-scale state machine (loss_scale.h: the code the device runs);
//  - the step check (step_check.h): fp16 overflow skips and restores the BatchNorm running state until the
//    scale reaches its minimum, where it is non-finite; fp32 never skips; the grid's first bad gradient
//    is the CPU check's, and names a parameter;
//  - the per-element code of the training kernels (train_thread.h), run on the CPU over every index and
//    compared with the CPU layers: max pooling (bit-exact, ties, odd sizes, bf16), average pooling
//    (bit-exact), GroupNorm forward/backward, cross-entropy, SGD (incl. unscaling), layout maps;
//  - the refusals that need no device: --grad-accum fp64, and no device → one agreed, clear error.
//  - the loop's step contract on the CPU model: null per-micro-batch sums, then step_totals() after
//    check() bit-identical to the per-micro-batch sums (the GPU model's one-wait step needs it).
//  - a whole step as a CUDA graph: the rules of capture and replay (step_graph.h: an eager step first, no
//    open step, one micro-batch, no staged communicator, one checked replay at a time), and the step
//    status read split into the copy (in the graph) and the wait (check()): one copy per step either way.
// GPU tests (skip without one device per rank; SBN_REQUIRE_GPU=1 makes that a failure), at np 1..4:
//  - CudaTrainModel vs the CPU model on the same global batch (convnet width 4, resnet width 4 depth 1;
//    norm sync, sync:2, local, groupnorm, none; fp32): signature, initial parameters, loss within 1e-4,
//    gradients within 1e-3 after one train_micro, parameters after one reduce_and_update;
//  - bf16 / fp16: loss close to the fp32 CPU loss; fp16: an injected inf skips the step on every rank,
//    halves the scale, leaves the parameters alone; the next step trains;
//  - the step contract: NaN input (fp32), overflow (fp16), overflow at the minimum scale: last_step()
//    says so on every rank, parameters, momentum and every BatchNorm buffer bitwise unchanged;
//  - checkpoints: the GPU state() has the CPU model's names and sizes, and a CPU state loaded into the
//    GPU model evaluates to the CPU model's loss.
//  - one host wait per optimizer step (2 micro-batches, null sums, set_micro_batches): host_waits and
//    status reads +1 per step, step_totals() equal to the per-micro-batch sums; gradient buckets that
//    overlap the backward give the parameters of the after-backward all-reduce; a bad label is the
//    step's error at check() (host tests of the protocols: test_step_status.cpp).
//  - a whole training step captured in GLOBAL capture mode (while the communicator's watchdog polls a
//    pending collective) and replayed on new batches and learning rates: losses, parameters, momentum and BatchNorm buffers
//    those of eager steps (bitwise at np 1, 1e-6 relative with more ranks), one host wait per replay, and
//    eager steps after the replays still agree (an eval batch just before the capture, too).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <thread>
#include <utility>

#include "gpu_test_util.h"
#include "syncbn/app.h"
#include "syncbn/cpu_train_model.h"
#include "syncbn/cuda/device.h"
#include "cuda/train/cuda_train_model.h"
#include "cuda/train/loss_scale.h"
#include "cuda/train/step_check.h"
#include "cuda/train/step_graph.h"
#include "cuda/train/step_status.h"
#include "cuda/train/train_thread.h"
#include "syncbn/cuda/train_model.h"
#include "syncbn/model.h"
#include "syncbn/net_plan.h"
#include "syncbn/optimizer.h"
#include "syncbn/sampler.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

using cuda::DType;
namespace tr = cuda::train;

MpiCommunicator& mpi_world() { return dynamic_cast<MpiCommunicator&>(world()); }

std::vector<double> as_double(const float* p, std::size_t n) { return std::vector<double>(p, p + n); }
std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// ---- model specs ------------------------------------------------------------------------------------

struct Case {
  std::string arch, norm;  // norm: the --norm text (sync, sync:2, local, groupnorm, none)
  std::string str() const { return arch + "/" + norm; }
};

ModelSpec spec_of(const Case& c) {
  ModelSpec s;
  s.arch = c.arch;
  s.width = 4;
  s.depth = 1;
  if (c.arch == "resnet") {
    s.in_channels = 3;
    s.height = s.width_px = 32;
  }
  s.norm = parse_norm(c.norm);
  s.norm.gn_groups = 2;
  return s;
}

TrainConfig config_of(const Case& c, const std::string& precision) {
  TrainConfig cfg;
  cfg.model = c.arch;
  cfg.width = 4;
  cfg.depth = 1;
  cfg.norm = c.norm;
  cfg.gn_groups = 2;
  cfg.precision = precision;
  cfg.seed = 7;
  return cfg;
}

// The CPU model of `spec` (its own sync group over the MPI world for the synced modes).
struct CpuModel {
  std::unique_ptr<SyncGroup> group;
  CpuContext ctx;
  std::unique_ptr<Model> model;
  CpuModel(ModelSpec spec, const std::string& norm, std::uint64_t seed) {
    if (spec.norm.communicates()) group = std::make_unique<SyncGroup>(world(), parse_sync_mode(norm));
    model = build_model(spec, ctx, seed, group.get());
  }
};

// ---- host: the parameter layout mapping -----------------------------------------------------------

TEST(GpuTrainPlan, ClaimsEveryCpuParameterAndDescribesTheSameNetwork) {
  for (const std::string arch : {"convnet", "resnet"}) {
    for (const std::string norm : {"sync", "local", "groupnorm", "none"}) {
      for (std::int64_t depth : {1, 2}) {
        ModelSpec spec = spec_of({arch, norm});
        spec.depth = depth;
        spec.width = 8;
        CpuModel cpu(spec, norm, 3);
        NetPlan plan;
        ParamStore planned;
        ASSERT_NO_THROW(plan = plan_network(spec, planned)) << arch << "/" << norm;
        EXPECT_EQ(plan.describe(), cpu.model->net->describe()) << arch << "/" << norm;
        // Every slot is the CPU parameter of that name, at its offset.
        std::vector<int> seen(cpu.model->params.all().size(), 0);
        auto visit = [&](const ParamSlot& s, const std::string& name) {
          if (!s.present()) return;
          const ParamInfo& p = cpu.model->params.info(s.index);
          EXPECT_EQ(p.name, name);
          EXPECT_EQ(p.offset, s.offset) << name;
          EXPECT_EQ(p.size, s.size) << name;
          ++seen[static_cast<std::size_t>(s.index)];
        };
        auto conv = [&](const ConvPlan& c) {
          visit(c.weight, c.name + ".weight");
          visit(c.bias, c.name + ".bias");
          EXPECT_EQ(c.bias.present(), norm == "none") << c.name;
        };
        auto nrm = [&](const NormPlan& n) {
          visit(n.gamma, n.name + ".weight");
          visit(n.beta, n.name + ".bias");
        };
        for (const OpPlan& o : plan.ops) {
          if (o.kind == OpKind::kConv) conv(o.conv);
          if (o.kind == OpKind::kNorm) nrm(o.norm);
          if (o.kind == OpKind::kLinear) {
            visit(o.linear.weight, o.linear.name + ".weight");
            visit(o.linear.bias, o.linear.name + ".bias");
          }
          if (o.kind == OpKind::kBlock) {
            conv(o.block.conv1), nrm(o.block.n1), conv(o.block.conv2), nrm(o.block.n2);
            if (o.block.shortcut) conv(o.block.sc_conv), nrm(o.block.sc_norm);
          }
        }
        for (std::size_t i = 0; i < seen.size(); ++i)
          EXPECT_EQ(seen[i], 1) << arch << "/" << norm << ": " << cpu.model->params.all()[i].name;
        // The CPU model's buffers are the BatchNorm layers' four arrays, in the plan's norm order.
        std::vector<std::string> names;
        for (const NormPlan* n : norm_layers(plan))
          if (n->batchnorm())
            for (const char* f : {".running_mean", ".running_var", ".pivot", ".num_batches_tracked"})
              names.push_back(n->name + f);
        std::vector<std::string> cpu_names;
        for (const BufferRef& b : cpu.model->buffers) cpu_names.push_back(b.name);
        EXPECT_EQ(names, cpu_names) << arch << "/" << norm;
      }
    }
  }
}

TEST(GpuTrainPlan, GivesTheCpuModelsStoreAndSignature) {
  for (const std::string arch : {"convnet", "resnet"}) {
    for (const std::string norm : {"sync", "local", "groupnorm", "none"}) {
      const ModelSpec spec = spec_of({arch, norm});
      CpuModel cpu(spec, norm, 5);
      ParamStore ps;
      const NetPlan plan = plan_network(spec, ps);
      ps.init_params(5);
      EXPECT_EQ(plan.signature, cpu.model->signature) << arch << "/" << norm;
      ASSERT_EQ(ps.all().size(), cpu.model->params.all().size()) << arch << "/" << norm;
      for (std::size_t i = 0; i < ps.all().size(); ++i) {
        const ParamInfo &a = ps.all()[i], &b = cpu.model->params.all()[i];
        EXPECT_TRUE(a.name == b.name && a.shape == b.shape && a.offset == b.offset && a.decay == b.decay &&
                    a.init == b.init && a.fan_in == b.fan_in)
            << arch << "/" << norm << ": " << a.name;
      }
      EXPECT_EQ(ps.values(), cpu.model->params.values()) << arch << "/" << norm;
    }
  }
  ParamStore used;
  used.add("stray.weight", {3}, true, ParamInit::kZeros);
  try {
    plan_network(spec_of({"convnet", "sync"}), used);
    ADD_FAILURE() << "a store that holds parameters was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already holds parameters"), std::string::npos) << e.what();
  }
}

// ---- host: loss scaling -------------------------------------------------------------------------------

TEST(GpuLossScale, HalvesAndSkipsOnOverflowGrowsAfterIntervalAndClamps) {
  tr::LossScaleConfig c;
  c.interval = 3;
  tr::LossScaleState s = tr::loss_scale_initial(c);
  EXPECT_EQ(s.scale, 65536.0f);
  s.found_inf = 1;
  tr::loss_scale_update(&s, c);
  EXPECT_EQ(s.scale, 32768.0f);
  EXPECT_EQ(s.skipped, 1);
  EXPECT_EQ(s.found_inf, 0) << "the update clears the flag for the next step";
  for (int i = 0; i < 2; ++i) tr::loss_scale_update(&s, c);
  EXPECT_EQ(s.scale, 32768.0f) << "two good steps of an interval of three";
  EXPECT_EQ(s.good_steps, 2);
  s.found_inf = 1;
  tr::loss_scale_update(&s, c);  // an overflow resets the run of good steps
  EXPECT_EQ(s.scale, 16384.0f);
  EXPECT_EQ(s.good_steps, 0);
  for (int i = 0; i < 3; ++i) tr::loss_scale_update(&s, c);
  EXPECT_EQ(s.scale, 32768.0f);
  EXPECT_EQ(s.good_steps, 0);
  EXPECT_EQ(s.steps, 7);
  EXPECT_EQ(s.skipped, 2);
  // Clamps.
  tr::LossScaleState low = s;
  low.scale = c.min_scale;
  low.found_inf = 1;
  tr::loss_scale_update(&low, c);
  EXPECT_EQ(low.scale, c.min_scale);
  tr::LossScaleState high = s;
  high.scale = c.max_scale;
  high.good_steps = c.interval - 1;
  tr::loss_scale_update(&high, c);
  EXPECT_EQ(high.scale, c.max_scale);
}

// ---- host: the step check (step_check.h: the code the device runs) -----------------------------------

// A layer's running state on the host, linked like the device arrays.
struct HostBnState {
  std::vector<float> mean, var, saved_mean, saved_var;
  std::vector<double> pivot, saved_pivot;
  std::int64_t tracked = 0, saved_tracked = -1;
  explicit HostBnState(std::int64_t C)
      : mean(static_cast<std::size_t>(C)), var(static_cast<std::size_t>(C)), saved_mean(mean.size()),
        saved_var(mean.size()), pivot(mean.size()), saved_pivot(mean.size()) {}
  tr::BnStateLink link() {
    return {mean.data(),       var.data(),       pivot.data(),       &tracked, saved_mean.data(),
            saved_var.data(), saved_pivot.data(), &saved_tracked, static_cast<std::int64_t>(mean.size())};
  }
};

// A forward of the step moving the running state (to NaN, as an fp16 overflow in the activations would).
void poison(HostBnState& s) {
  for (float& v : s.mean) v = std::numeric_limits<float>::quiet_NaN();
  for (float& v : s.var) v += 1.0f;
  for (double& v : s.pivot) v = std::numeric_limits<double>::infinity();
  ++s.tracked;
}

// The device sequence of reduce_and_update after the all-reduce, run on the host: restore (predicated),
// then step_finish. Returns the verdict.
int finish_step(tr::GradCheck& check, tr::LossScaleState* scale, const tr::LossScaleConfig& c, HostBnState& bn) {
  const tr::BnStateLink k = bn.link();
  for (std::int64_t i = 0; i <= k.channels; ++i) tr::bn_state_restore_element(k, i, check);
  tr::step_finish(&check, scale, c);
  return check.outcome;
}

TEST(GpuStepCheck, Fp16OverflowSkipsAndRestoresRunningStatsUntilTheMinimumScaleThenIsNonFinite) {
  tr::LossScaleConfig c;
  tr::LossScaleState s = tr::loss_scale_initial(c);
  HostBnState bn(5);
  for (std::size_t i = 0; i < bn.mean.size(); ++i) {
    bn.mean[i] = 0.25f * static_cast<float>(i);
    bn.var[i] = 1.0f + static_cast<float>(i);
    bn.pivot[i] = 0.5 * static_cast<double>(i);
  }
  bn.tracked = 7;
  int skipped = 0;
  for (int step = 0; step < 40; ++step) {
    SCOPED_TRACE("overflow step " + std::to_string(step) + ", scale " + std::to_string(s.scale));
    const tr::BnStateLink k = bn.link();
    for (std::int64_t i = 0; i <= k.channels; ++i) tr::bn_state_save_element(k, i);  // the step's first forward
    const std::vector<float> mean = bn.mean, var = bn.var;
    const std::vector<double> pivot = bn.pivot;
    const std::int64_t tracked = bn.tracked;
    poison(bn);
    tr::GradCheck check;
    check.first_bad = 3;  // an inf in the reduced gradient
    const float scale_before = s.scale;
    const tr::LossScaleState state_before = s;
    const int verdict = finish_step(check, &s, c, bn);
    // Either way of not committing, the running state is the step's first forward's, bit for bit.
    EXPECT_EQ(std::memcmp(bn.mean.data(), mean.data(), mean.size() * sizeof(float)), 0);
    EXPECT_EQ(bn.var, var);
    EXPECT_EQ(bn.pivot, pivot);
    EXPECT_EQ(bn.tracked, tracked);
    if (scale_before > c.min_scale) {
      EXPECT_EQ(verdict, tr::kStepSkipped);
      EXPECT_EQ(s.scale, std::max(scale_before * c.backoff, c.min_scale));
      EXPECT_EQ(s.skipped, ++skipped);
      EXPECT_EQ(s.found_inf, 0);
    } else {
      // At the minimum scale the overflow is not the scale's doing: non-finite, and the scale stays.
      EXPECT_EQ(verdict, tr::kStepNonFinite);
      EXPECT_EQ(s.scale, c.min_scale);
      EXPECT_EQ(s.steps, state_before.steps);
      EXPECT_EQ(s.skipped, state_before.skipped);
      break;
    }
  }
  EXPECT_EQ(skipped, 16) << "2^16 halves to the minimum 1 in 16 skipped steps";
}

TEST(GpuStepCheck, CommittedStepKeepsRunningStatsAndFp32NeverSkips) {
  tr::LossScaleConfig c;
  HostBnState bn(3);
  const tr::BnStateLink k = bn.link();
  for (std::int64_t i = 0; i <= k.channels; ++i) tr::bn_state_save_element(k, i);
  poison(bn);
  const HostBnState moved = bn;
  // Finite gradients: the step commits, the running state keeps this step's updates, fp16 counts a good step.
  tr::GradCheck good;
  tr::LossScaleState s = tr::loss_scale_initial(c);
  EXPECT_EQ(finish_step(good, &s, c, bn), tr::kStepCommitted);
  EXPECT_EQ(std::memcmp(bn.mean.data(), moved.mean.data(), bn.mean.size() * sizeof(float)), 0);
  EXPECT_EQ(bn.tracked, moved.tracked);
  EXPECT_EQ(s.good_steps, 1);
  EXPECT_EQ(s.skipped, 0);
  // fp32/bf16 (no loss scale): any non-finite gradient is non-finite, and the running state comes back.
  tr::GradCheck bad;
  bad.first_bad = 0;
  EXPECT_EQ(finish_step(bad, nullptr, c, bn), tr::kStepNonFinite);
  EXPECT_EQ(bn.tracked, moved.tracked - 1);
  EXPECT_EQ(bn.var, bn.saved_var);
  EXPECT_TRUE(tr::step_commits(tr::GradCheck{}));
  EXPECT_FALSE(tr::step_commits(bad));
}

// grad_check's threads (grad_first_bad over a grid-stride slice each, then the minimum over the grid)
// find the CPU check's element, whose parameter names the step's kNonFinite.
TEST(GpuStepCheck, GridFindsTheFirstNonFiniteGradientInParameterOrder) {
  CpuModel cpu(spec_of({"resnet", "sync"}), "sync", 3);
  ParamStore& ps = cpu.model->params;
  const std::int64_t n = ps.total();
  std::mt19937 gen(11);
  for (int trial = 0; trial < 20; ++trial) {
    ps.zero_grads();
    const int bads = trial == 0 ? 0 : 1 + static_cast<int>(gen() % 4);
    for (int b = 0; b < bads; ++b)
      ps.grads()[gen() % static_cast<std::uint32_t>(n)] =
          b % 2 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
    for (const std::int64_t threads : {std::int64_t{256}, std::int64_t{3 * 256}, n + 5}) {
      unsigned long long first = tr::kNoBadGradient;
      for (std::int64_t t = 0; t < threads; ++t)
        first = std::min(first, tr::grad_first_bad(ps.grads().data(), n, t, threads));
      const std::int64_t cpu_first = ps.first_nonfinite_grad();
      EXPECT_EQ(first == tr::kNoBadGradient ? -1 : static_cast<std::int64_t>(first), cpu_first)
          << "trial " << trial << ", " << threads << " threads";
      if (cpu_first >= 0) {
        EXPECT_GE(ps.param_at(cpu_first), 0) << "a bad gradient in the padding";
      }
    }
  }
}

// ---- host: the kernels' per-element code vs the CPU layers ------------------------------------------

Tensor random_nhwc(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::uint32_t seed, float quantum) {
  Tensor t({N, C, H, W}, Layout::kChannelsLast);
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const float v = d(gen);
    t[i] = quantum > 0 ? std::round(v / quantum) * quantum : v;  // quantized: many ties
  }
  return t;
}

template <class T>
std::vector<T> to_dtype(const Tensor& t) {
  std::vector<T> out(static_cast<std::size_t>(t.numel()));
  for (std::int64_t i = 0; i < t.numel(); ++i) cuda::from_float(t[i], &out[static_cast<std::size_t>(i)]);
  return out;
}

template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = cuda::to_float(v[i]);
  return out;
}

template <class T>
void check_maxpool(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, float quantum) {
  Tensor x = random_nhwc(N, C, H, W, 11, quantum);
  std::vector<T> xt = to_dtype<T>(x);
  for (std::int64_t i = 0; i < x.numel(); ++i) x[i] = cuda::to_float(xt[static_cast<std::size_t>(i)]);  // as the device holds it
  ModulePtr pool = make_maxpool(2);
  Tensor y, dx;
  pool->forward(x, y, true);
  Tensor dy = random_nhwc(N, C, H / 2, W / 2, 12, 0);
  std::vector<T> dyt = to_dtype<T>(dy);
  for (std::int64_t i = 0; i < dy.numel(); ++i) dy[i] = cuda::to_float(dyt[static_cast<std::size_t>(i)]);
  pool->backward(x, y, dy, &dx);
  const tr::PoolGeom g{N, C, H, W, H / 2, W / 2};
  std::vector<T> ye(static_cast<std::size_t>(y.numel())), dxe(static_cast<std::size_t>(x.numel()));
  std::vector<std::uint8_t> arg(ye.size());
  for (std::int64_t e = 0; e < y.numel(); ++e) tr::maxpool2x2_forward_element(xt.data(), ye.data(), arg.data(), e, g);
  for (std::int64_t e = 0; e < x.numel(); ++e) tr::maxpool2x2_backward_element(dyt.data(), arg.data(), dxe.data(), e, g);
  EXPECT_EQ(widen(ye), as_double(y.data(), static_cast<std::size_t>(y.numel())));
  EXPECT_EQ(widen(dxe), as_double(dx.data(), static_cast<std::size_t>(dx.numel())))
      << "gradient routing (first maximum on ties) differs";
}

TEST(GpuTrainThread, MaxPoolMatchesCpuBitForBitIncludingTiesAndOddSizes) {
  check_maxpool<float>(3, 5, 7, 9, 0.5f);   // quantized: ties everywhere; odd H, W: leftover rows/columns
  check_maxpool<float>(2, 16, 8, 8, 0.0f);
  check_maxpool<__nv_bfloat16>(2, 6, 6, 5, 0.25f);
  check_maxpool<__half>(2, 6, 5, 6, 0.0f);
}

TEST(GpuTrainThread, GlobalAvgPoolMatchesCpuBitForBit) {
  const std::int64_t N = 3, C = 7, H = 5, W = 6, S = H * W;
  Tensor x = random_nhwc(N, C, H, W, 21, 0), y, dx;
  ModulePtr pool = make_global_avgpool();
  pool->forward(x, y, true);
  Tensor dy({N, C});
  for (std::int64_t i = 0; i < dy.numel(); ++i) dy[i] = 0.1f * static_cast<float>(i % 13) - 0.5f;
  pool->backward(x, y, dy, &dx);
  std::vector<float> ye(static_cast<std::size_t>(N * C)), dxe(static_cast<std::size_t>(x.numel()));
  for (std::int64_t e = 0; e < N * C; ++e) tr::avgpool_forward_element(x.data(), ye.data(), e, S, C);
  for (std::int64_t e = 0; e < x.numel(); ++e) tr::avgpool_backward_element(dy.data(), dxe.data(), e, S, C);
  EXPECT_EQ(as_double(ye), as_double(y.data(), ye.size()));
  EXPECT_EQ(as_double(dxe), as_double(dx.data(), dxe.size()));
}

// GroupNorm: the kernels' three steps with their own per-element code (column reductions emulated in
// double, in row order), against the CPU layer.
void check_group_norm(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, std::int64_t G, bool relu,
                      float mean_offset) {
  ParamStore ps;
  NormSpec ns = parse_norm("groupnorm");
  ns.gn_groups = G;
  ModulePtr gn = make_norm("gn", C, ns, relu, ps);
  ps.finalize();
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  for (std::int64_t c = 0; c < C; ++c) {
    ps.values()[static_cast<std::size_t>(ps.info(0).offset + c)] = u(gen);
    ps.values()[static_cast<std::size_t>(ps.info(1).offset + c)] = u(gen) - 1.0f;
  }
  const float* gamma = ps.value(0);
  const float* beta = ps.value(1);
  const bool four_d = H > 0;
  Tensor x = four_d ? random_nhwc(N, C, H, W, 31, 0) : Tensor({N, C});
  if (!four_d)
    for (std::int64_t i = 0; i < x.numel(); ++i) x[i] = std::sin(0.7f * static_cast<float>(i));
  for (std::int64_t i = 0; i < x.numel(); ++i) x[i] += mean_offset;
  Tensor y, dx, dy(x.shape(), x.layout());
  for (std::int64_t i = 0; i < dy.numel(); ++i) dy[i] = std::cos(0.3f * static_cast<float>(i));
  gn->forward(x, y, true);
  gn->backward(x, y, dy, &dx);

  const tr::GnGeom q{N, four_d ? H * W : 1, C, G};
  const auto NC = static_cast<std::size_t>(N * C);
  std::vector<double> sa(NC), sb(NC), mean(static_cast<std::size_t>(N * G)), invstd(mean.size());
  std::vector<float> ca(NC), cb(NC), cd(NC), ye(static_cast<std::size_t>(x.numel())), dxe(ye.size());
  auto channel_sums = [&](const float* dyp, const float* yp) {
    for (std::int64_t j = 0; j < N * C; ++j) {
      double a = 0, b = 0;
      for (std::int64_t s = 0; s < q.S; ++s) tr::gn_channel_sums_term(x.data(), dyp, yp, q, s, j, &a, &b);
      sa[static_cast<std::size_t>(j)] = a;
      sb[static_cast<std::size_t>(j)] = b;
    }
  };
  channel_sums(nullptr, nullptr);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t g = 0; g < G; ++g)
      tr::gn_group_forward(x.data(), sa.data(), sb.data(), gamma, beta, q, n, g, 1e-5, mean.data(), invstd.data(),
                           ca.data(), cb.data());
  for (std::int64_t e = 0; e < x.numel(); ++e) tr::gn_forward_element(x.data(), ca.data(), cb.data(), relu, q, e, ye.data());
  channel_sums(dy.data(), relu ? ye.data() : nullptr);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t g = 0; g < G; ++g)
      tr::gn_group_backward(x.data(), sa.data(), sb.data(), gamma, mean.data(), invstd.data(), q, n, g, ca.data(),
                            cb.data(), cd.data());
  std::vector<double> dg(static_cast<std::size_t>(C), 0.0), db(dg.size(), 0.0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c) {
      dg[static_cast<std::size_t>(c)] += sb[static_cast<std::size_t>(n * C + c)];
      db[static_cast<std::size_t>(c)] += sa[static_cast<std::size_t>(n * C + c)];
    }
  for (std::int64_t e = 0; e < x.numel(); ++e)
    tr::gn_backward_element(x.data(), ye.data(), dy.data(), ca.data(), cb.data(), cd.data(), relu, q, e, dxe.data());
  const std::string what = "groupnorm N" + std::to_string(N) + " C" + std::to_string(C) + " G" + std::to_string(G) +
                           (relu ? " relu" : "") + " offset " + std::to_string(mean_offset);
  // y and dx come from fp32 coefficients a·x + b: an offset of |mean| ≫ std costs ~|a·mean|·2⁻²⁴ absolute
  // in either formulation, hence the offset-scaled absolute tolerance.
  const double atol = 1e-6 * (1.0 + std::fabs(mean_offset));
  EXPECT_TRUE(near(as_double(ye), as_double(y.data(), ye.size()), 1e-6, atol, what + " y"));
  EXPECT_TRUE(near(as_double(dxe), as_double(dx.data(), dxe.size()), 1e-5, atol, what + " dx"));
  EXPECT_TRUE(near(dg, as_double(ps.grad(0), dg.size()), 1e-5, 1e-6, what + " dgamma"));
  EXPECT_TRUE(near(db, as_double(ps.grad(1), db.size()), 1e-5, 1e-6, what + " dbeta"));
}

TEST(GpuTrainThread, GroupNormMatchesCpu) {
  check_group_norm(3, 8, 5, 7, 2, true, 0.0f);
  check_group_norm(2, 12, 4, 4, 4, false, 0.0f);   // Cg = 3
  check_group_norm(2, 6, 9, 9, 3, true, 100.0f);   // |mean| ≫ std: shifted sums
  check_group_norm(5, 32, 0, 0, 8, true, 0.0f);    // (N, C): after a fully connected layer
  check_group_norm(1, 4, 3, 3, 1, false, 0.0f);    // one group
}

TEST(GpuTrainThread, CrossEntropyMatchesCpu) {
  const std::int64_t N = 9, K = 10;
  Tensor z({N, K}), dz;
  for (std::int64_t i = 0; i < z.numel(); ++i) z[i] = 3.0f * std::sin(1.3f * static_cast<float>(i));
  z[2 * K + 4] = z[2 * K + 7] = 50.0f;  // tie for the maximum: the first one is the prediction
  std::vector<std::int32_t> labels(static_cast<std::size_t>(N));
  for (std::int64_t n = 0; n < N; ++n) labels[static_cast<std::size_t>(n)] = static_cast<std::int32_t>((3 * n + 1) % K);
  labels[2] = 4;
  const float grad_scale = 1.0f / 64.0f;
  std::int64_t correct = 0;
  const double total = softmax_cross_entropy(z, labels.data(), grad_scale, dz, &correct);
  std::vector<float> dze(static_cast<std::size_t>(N * K));
  double sum = 0;
  std::int64_t right = 0;
  for (std::int64_t n = 0; n < N; ++n) {
    std::int64_t arg = -1;
    sum += tr::cross_entropy_sample(z.data() + n * K, K, labels[static_cast<std::size_t>(n)], grad_scale,
                                    dze.data() + n * K, &arg);
    right += arg == labels[static_cast<std::size_t>(n)];
  }
  EXPECT_EQ(sum, total);
  EXPECT_EQ(right, correct);
  EXPECT_EQ(as_double(dze), as_double(dz.data(), dze.size()));
  // A loss scale multiplies the gradient exactly (powers of two).
  std::int64_t arg = 0;
  std::vector<float> scaled(static_cast<std::size_t>(K));
  tr::cross_entropy_sample(z.data(), K, labels[0], grad_scale * 1024.0, scaled.data(), &arg);
  for (std::int64_t k = 0; k < K; ++k) EXPECT_EQ(scaled[static_cast<std::size_t>(k)], 1024.0f * dz[k]);
}

TEST(GpuTrainThread, SgdMatchesCpuOptimizerAndUnscalesExactly) {
  for (const bool nesterov : {true, false}) {
    ParamStore ps;
    ps.add("w", {37}, true, ParamInit::kKaiming, 37);
    ps.add("b", {5}, false, ParamInit::kZeros);
    ps.finalize();
    ps.init_params(3);
    std::mt19937 gen(9);
    std::normal_distribution<float> d(0.0f, 0.1f);
    for (float& g : ps.grads()) g = d(gen);
    const std::vector<float> w0 = ps.values(), g0 = ps.grads();
    Sgd sgd(ps, 0.9, 5e-4, nesterov, false);
    for (float& b : sgd.momentum_buffer()) b = d(gen);
    const std::vector<float> b0 = sgd.momentum_buffer();
    sgd.step(0.05);
    // Per-element decay as Sgd builds it (0 on the alignment padding between parameters, too).
    std::vector<float> decay(ps.values().size(), 0.0f);
    for (const ParamInfo& p : ps.all())
      if (p.decay) std::fill(decay.begin() + p.offset, decay.begin() + p.offset + p.size, 5e-4f);
    for (const float scale : {1.0f, 4096.0f}) {
      std::vector<float> w = w0, g = g0, b = b0;
      for (float& v : g) v *= scale;  // as a loss-scaled gradient arrives
      for (std::size_t j = 0; j < w.size(); ++j)
        tr::sgd_element(&w[j], &g[j], &b[j], decay[j], 0.9f, 0.05f, nesterov, 1.0f / scale);
      const std::string what = std::string(nesterov ? "nesterov" : "momentum") + " scale " + std::to_string(scale);
      EXPECT_TRUE(near(as_double(w), as_double(ps.values()), 1e-6, 1e-7, what + " weights"));
      EXPECT_TRUE(near(as_double(b), as_double(sgd.momentum_buffer()), 1e-6, 1e-7, what + " momentum"));
      for (float v : g) EXPECT_EQ(v, 0.0f) << "the gradient is zeroed for the next step";
    }
  }
}

TEST(GpuTrainThread, LayoutMapsAreTheNhwcAndKrscBijections) {
  const std::int64_t N = 2, C = 3, H = 4, W = 5;
  std::vector<int> hit(static_cast<std::size_t>(N * C * H * W), 0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t w = 0; w < W; ++w)
        for (std::int64_t c = 0; c < C; ++c) {
          const std::int64_t e = ((n * H + h) * W + w) * C + c;
          const std::int64_t p = tr::nchw_index_of_nhwc(e, C, H, W);
          EXPECT_EQ(p, ((n * C + c) * H + h) * W + w);
          ++hit[static_cast<std::size_t>(p)];
        }
  for (int v : hit) EXPECT_EQ(v, 1);
  const std::int64_t O = 4, I = 3, K = 3;
  std::vector<int> taken(static_cast<std::size_t>(O * I * K * K), 0);
  for (std::int64_t o = 0; o < O; ++o)
    for (std::int64_t r = 0; r < K; ++r)
      for (std::int64_t s = 0; s < K; ++s)
        for (std::int64_t c = 0; c < I; ++c) {
          const std::int64_t e = ((o * K + r) * K + s) * I + c;
          const std::int64_t p = tr::oihw_index_of_krsc(e, I, K);
          EXPECT_EQ(p, ((o * I + c) * K + r) * K + s);
          ++taken[static_cast<std::size_t>(p)];
        }
  for (int v : taken) EXPECT_EQ(v, 1);
}

// ---- refusals that need no device ---------------------------------------------------------------------

std::string agreed_error(const std::function<void()>& fn, bool* agreed) {
  *agreed = false;
  try {
    fn();
  } catch (const AgreedError& e) {
    *agreed = true;
    return e.what();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(GpuTrainModel, RefusesFp64GradientAccumulationWithOneAgreedError) {
  const Case c{"convnet", "sync"};
  TrainConfig cfg = config_of(c, "fp32");
  cfg.grad_accum = "fp64";
  bool agreed = false;
  const std::string msg = agreed_error([&] { make_cuda_train_model(spec_of(c), cfg, world()); }, &agreed);
  EXPECT_TRUE(agreed) << msg;
  EXPECT_NE(msg.find("--grad-accum fp64 is not supported with --device cuda"), std::string::npos) << msg;
  EXPECT_TRUE(all_ranks(world(), agreed));
}

TEST(GpuTrainModel, WithoutDeviceEveryRankGetsTheSameClearError) {
  const bool has_device = cuda::visible_devices(nullptr) > 0;
  if (world().any(has_device, "test.has_device")) GTEST_SKIP() << "a CUDA device is visible: start-up is covered below";
  const Case c{"convnet", "sync"};
  bool agreed = false;
  const std::string msg = agreed_error([&] { make_cuda_train_model(spec_of(c), config_of(c, "fp32"), world()); }, &agreed);
  EXPECT_TRUE(agreed) << "not an agreed error: " << msg;
  EXPECT_NE(msg.find("--device cuda: no CUDA device visible on " + world().host()), std::string::npos) << msg;
  EXPECT_TRUE(all_ranks(world(), agreed));
}

// ---- GPU: the model against the CPU model ------------------------------------------------------------

constexpr std::int64_t kGlobalBatch = 12;

// This rank's slice of a deterministic global batch.
struct Batch {
  std::vector<float> images;
  std::vector<std::int32_t> labels;
  std::int64_t n = 0;
};

Batch batch_of(const ModelSpec& spec, std::uint32_t seed) {
  const Slice my = rank_slice(kGlobalBatch, world().size(), world().rank());
  const std::int64_t per = spec.in_channels * spec.height * spec.width_px;
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Batch b;
  b.n = my.count;
  for (std::int64_t i = 0; i < kGlobalBatch; ++i) {
    const bool mine = i >= my.first && i < my.first + my.count;
    for (std::int64_t j = 0; j < per; ++j) {
      const float v = u(gen);
      if (mine) b.images.push_back(v);
    }
    const auto label = static_cast<std::int32_t>(gen() % static_cast<std::uint32_t>(spec.classes));
    if (mine) b.labels.push_back(label);
  }
  return b;
}

// The CPU side of a comparison: CpuTrainModel's steps on the nn layers, so the gradients are visible.
struct CpuRef {
  CpuModel m;
  Tensor x, logits, dlogits;
  std::unique_ptr<Sgd> sgd;
  CpuRef(const ModelSpec& spec, const TrainConfig& cfg) : m(spec, cfg.norm, cfg.seed) {
    sgd = std::make_unique<Sgd>(m.model->params, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.decay_norm_bias);
  }
  double micro(const ModelSpec& spec, const Batch& b, float grad_scale, std::int64_t* correct) {
    x.resize({b.n, spec.in_channels, spec.height, spec.width_px}, Layout::kPlanar);
    if (b.n) std::memcpy(x.data(), b.images.data(), b.images.size() * sizeof(float));
    m.model->net->forward(x, logits, true);
    const double loss = softmax_cross_entropy(logits, b.labels.data(), grad_scale, dlogits, correct);
    m.model->net->backward(x, logits, dlogits, nullptr);
    return loss;
  }
  void step(double lr) {
    ParamStore& ps = m.model->params;
    world().allreduce_sum(ps.grads().data(), ps.grads().size(), "test.cpu.grads");
    sgd->step(lr);
    ps.zero_grads();
  }
};

// Per parameter: |gpu − cpu| ≤ rtol·(|cpu| + max|cpu| of that parameter), with a floor of rtol·10⁻³ of
// the largest value of any parameter (a parameter whose CPU values are all ~0 must not demand exact zeros).
::testing::AssertionResult params_near(const ParamStore& ps, const std::vector<float>& gpu, const float* cpu,
                                       double rtol, const std::string& what) {
  double global = 0;
  for (std::int64_t i = 0; i < ps.total(); ++i) global = std::max(global, std::fabs(static_cast<double>(cpu[i])));
  for (const ParamInfo& p : ps.all()) {
    double scale = 0;
    for (std::int64_t i = p.offset; i < p.offset + p.size; ++i)
      scale = std::max(scale, std::fabs(static_cast<double>(cpu[i])));
    const double atol = rtol * std::max(scale, 1e-3 * global);
    for (std::int64_t i = p.offset; i < p.offset + p.size; ++i) {
      const double ref = cpu[i], got = gpu[static_cast<std::size_t>(i)];
      if (!(std::fabs(got - ref) <= atol + rtol * std::fabs(ref)))
        return ::testing::AssertionFailure() << what << " " << p.name << "[" << i - p.offset << "]: gpu " << got
                                             << " cpu " << ref << " (bound " << atol << " + " << rtol << "|cpu|)";
    }
  }
  return ::testing::AssertionSuccess();
}

std::vector<Case> comparison_cases() {
  std::vector<Case> cases;
  for (const std::string arch : {"convnet", "resnet"}) {
    for (const std::string norm : {"sync", "local", "groupnorm", "none"}) cases.push_back({arch, norm});
    if (world().size() % 2 == 0) cases.push_back({arch, "sync:2"});
  }
  return cases;
}

TEST(GpuTrainModel, MatchesCpuModelLossGradientsAndOneStep) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  for (const Case& c : comparison_cases()) {
    SCOPED_TRACE(c.str());
    const ModelSpec spec = spec_of(c);
    const TrainConfig cfg = config_of(c, "fp32");
    CpuRef cpu(spec, cfg);
    tr::CudaTrainModel gpu(spec, cfg, mpi_world());
    EXPECT_EQ(gpu.signature(), cpu.m.model->signature);
    EXPECT_EQ(gpu.num_params(), cpu.m.model->params.total());
    EXPECT_EQ(gpu.num_syncbn_layers(), static_cast<int>(cpu.m.model->bns.size()));
    EXPECT_EQ(gpu.parameters_to_host(), cpu.m.model->params.values()) << "initial parameters differ";

    const Batch b = batch_of(spec, 17);
    const float grad_scale = 1.0f / static_cast<float>(kGlobalBatch);
    std::int64_t cpu_correct = 0, gpu_correct = 0;
    double sums[2] = {cpu.micro(spec, b, grad_scale, &cpu_correct), 0.0};
    gpu.train_micro(b.images.data(), b.labels.data(), b.n, grad_scale, &sums[1], &gpu_correct);
    world().allreduce_sum(sums, 2, "test.loss");
    EXPECT_NEAR(sums[1], sums[0], 1e-4 * std::fabs(sums[0])) << "global loss sum";
    const std::vector<float> g = gpu.gradients_to_host();
    EXPECT_TRUE(params_near(cpu.m.model->params, g, cpu.m.model->params.grads().data(), 1e-3, "gradient"));

    cpu.step(0.05);
    gpu.reduce_and_update(world(), 0.05);
    EXPECT_NO_THROW(gpu.check());
    const std::vector<float> w = gpu.parameters_to_host();
    EXPECT_TRUE(params_near(cpu.m.model->params, w, cpu.m.model->params.values().data(), 1e-4, "parameter after a step"));
    EXPECT_TRUE(all_ranks(world(), !HasFailure()));
  }
}

TEST(GpuTrainModel, HalfPrecisionLossesStayCloseToFp32) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  for (const std::string precision : {"bf16", "fp16"}) {
    for (const Case& c : {Case{"convnet", "sync"}, Case{"resnet", "local"}}) {
      SCOPED_TRACE(c.str() + " " + precision);
      const ModelSpec spec = spec_of(c);
      CpuRef cpu(spec, config_of(c, "fp32"));
      tr::CudaTrainModel gpu(spec, config_of(c, precision), mpi_world());
      const Batch b = batch_of(spec, 23);
      std::int64_t k0 = 0, k1 = 0;
      double sums[2] = {cpu.micro(spec, b, 1.0f / kGlobalBatch, &k0), 0.0};
      gpu.train_micro(b.images.data(), b.labels.data(), b.n, 1.0f / kGlobalBatch, &sums[1], &k1);
      world().allreduce_sum(sums, 2, "test.loss");
      EXPECT_NEAR(sums[1], sums[0], 3e-2 * std::fabs(sums[0]));
      gpu.reduce_and_update(world(), 0.05);
      EXPECT_NO_THROW(gpu.check());
      const tr::LossScaleState s = gpu.loss_scale();
      if (precision == "fp16") {  // the first step may legitimately overflow at S = 2^16 and back off
        EXPECT_LE(s.skipped, 1);
        EXPECT_EQ(s.scale, gpu.loss_scale_config().initial * (s.skipped ? gpu.loss_scale_config().backoff : 1.0f));
      } else {
        EXPECT_EQ(s.skipped, 0);
        EXPECT_EQ(s.scale, 1.0f);
      }
      EXPECT_TRUE(all_ranks(world(), !HasFailure()));
    }
  }
}

TEST(GpuTrainModel, Fp16OverflowSkipsTheStepOnEveryRankAndHalvesTheScale) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  const Case c{"convnet", "sync"};
  const ModelSpec spec = spec_of(c);
  tr::CudaTrainModel gpu(spec, config_of(c, "fp16"), mpi_world());
  const Batch b = batch_of(spec, 29);
  // A small gradient scale keeps the scaled fp16 gradients far from overflow (≤ 2^16·2^-12 = 16 at the
  // logits), so the only inf of this test is the injected one.
  const float grad_scale = 1.0f / 4096.0f;
  double loss = 0;
  std::int64_t correct = 0;
  gpu.train_micro(b.images.data(), b.labels.data(), b.n, grad_scale, &loss, &correct);
  const std::vector<float> before = gpu.parameters_to_host();
  if (world().rank() == 0) gpu.set_gradient(0, std::numeric_limits<float>::infinity());  // one rank overflows
  gpu.reduce_and_update(world(), 0.05);
  gpu.check();
  tr::LossScaleState s = gpu.loss_scale();
  EXPECT_EQ(s.skipped, 1);
  EXPECT_EQ(s.scale, gpu.loss_scale_config().initial * gpu.loss_scale_config().backoff);
  EXPECT_EQ(gpu.parameters_to_host(), before) << "a skipped step must not move the parameters";
  std::int64_t nonzero = 0;
  for (float g : gpu.gradients_to_host()) nonzero += g != 0.0f;
  EXPECT_EQ(nonzero, 0) << "a skipped step still clears the gradients";
  // The next step trains, with the halved scale.
  gpu.train_micro(b.images.data(), b.labels.data(), b.n, grad_scale, &loss, &correct);
  gpu.reduce_and_update(world(), 0.05);
  gpu.check();
  s = gpu.loss_scale();
  EXPECT_EQ(s.skipped, 1);
  EXPECT_EQ(s.good_steps, 1);
  EXPECT_NE(gpu.parameters_to_host(), before);
  EXPECT_NE(gpu.describe().find("dynamic loss scale 32768"), std::string::npos) << gpu.describe();
  EXPECT_TRUE(all_ranks(world(), !HasFailure()));
}

// Every checkpointed array's bytes (state_to_host first).
std::vector<std::vector<char>> state_bytes(TrainModel& m) {
  m.state_to_host();
  std::vector<std::vector<char>> out;
  for (const StateArray& a : m.state())
    out.emplace_back(static_cast<const char*>(a.data), static_cast<const char*>(a.data) + a.bytes);
  return out;
}

// The step contract on the device: fp32 with a NaN input on the last rank → kNonFinite naming conv1.weight;
// fp16 overflow → kSkipped; fp16 overflow at the minimum scale → kNonFinite. None of them moves the
// parameters, the momentum or any BatchNorm buffer (running mean/var, pivot, num_batches_tracked), on
// every rank; the next good step commits.
TEST(GpuTrainModel, NonCommittingStepsKeepNothingOnEveryRank) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  for (const std::string mode : {"fp32-nan-input", "fp16-overflow", "fp16-overflow-at-min-scale"}) {
    SCOPED_TRACE(mode);
    const Case c{"convnet", "sync"};
    const ModelSpec spec = spec_of(c);
    const bool fp16 = mode != "fp32-nan-input";
    tr::CudaTrainModel gpu(spec, config_of(c, fp16 ? "fp16" : "fp32"), mpi_world());
    const Batch b = batch_of(spec, 37);
    const float grad_scale = 1.0f / 4096.0f;  // far from fp16 overflow: the only inf is the injected one
    double loss = 0;
    std::int64_t correct = 0;
    gpu.train_micro(b.images.data(), b.labels.data(), b.n, grad_scale, &loss, &correct);
    gpu.reduce_and_update(world(), 0.05);
    gpu.check();
    EXPECT_EQ(gpu.last_step().outcome, StepResult::Outcome::kCommitted);
    if (mode == "fp16-overflow-at-min-scale") gpu.set_loss_scale(gpu.loss_scale_config().min_scale);
    const std::vector<std::vector<char>> before = state_bytes(gpu);

    Batch bad = b;
    if (mode == "fp32-nan-input" && world().rank() == 0 && !bad.images.empty())  // one rank only
      bad.images[0] = std::numeric_limits<float>::quiet_NaN();
    gpu.train_micro(bad.images.data(), bad.labels.data(), bad.n, grad_scale, &loss, &correct);
    if (fp16 && world().rank() == 0) gpu.set_gradient(0, std::numeric_limits<float>::infinity());
    gpu.reduce_and_update(world(), 0.05);
    gpu.check();
    const StepResult r = gpu.last_step();
    if (mode == "fp16-overflow") {
      EXPECT_EQ(r.outcome, StepResult::Outcome::kSkipped);
    } else {
      EXPECT_EQ(r.outcome, StepResult::Outcome::kNonFinite);
      EXPECT_EQ(r.nonfinite, "conv1.weight");
    }
    EXPECT_TRUE(state_bytes(gpu) == before) << "a step that did not commit moved the state";

    gpu.train_micro(b.images.data(), b.labels.data(), b.n, grad_scale, &loss, &correct);
    gpu.reduce_and_update(world(), 0.05);
    gpu.check();
    EXPECT_EQ(gpu.last_step().outcome, StepResult::Outcome::kCommitted);
    const std::vector<std::vector<char>> after = state_bytes(gpu);
    EXPECT_NE(after[0], before[0]) << "parameters";
    EXPECT_NE(after.back(), before.back()) << "the last BatchNorm buffer (num_batches_tracked)";
    EXPECT_TRUE(all_ranks(world(), !HasFailure()));
  }
}

TEST(GpuTrainModel, CheckpointStateIsTheCpuModelsAndLoadsAcrossDevices) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  for (const Case& c : {Case{"convnet", "sync"}, Case{"resnet", "groupnorm"}}) {
    SCOPED_TRACE(c.str());
    const ModelSpec spec = spec_of(c);
    const TrainConfig cfg = config_of(c, "fp32");
    std::unique_ptr<TrainModel> cpu = make_cpu_train_model(spec, cfg, world());
    tr::CudaTrainModel gpu(spec, cfg, mpi_world());
    // Train the CPU model one step, so parameters, momentum and running statistics are not initial.
    const Batch b = batch_of(spec, 31);
    double loss = 0;
    std::int64_t correct = 0;
    cpu->train_micro(b.images.data(), b.labels.data(), b.n, 1.0f / kGlobalBatch, &loss, &correct);
    cpu->reduce_and_update(world(), 0.05);
    cpu->state_to_host();
    gpu.state_to_host();
    const std::vector<StateArray> from = cpu->state(), to = gpu.state();
    // No ASSERT before the collectives that follow (the next case's set-up): a mismatch is recorded and
    // the copy skipped.
    bool same_layout = from.size() == to.size();
    for (std::size_t i = 0; same_layout && i < from.size(); ++i)
      same_layout = to[i].name == from[i].name && to[i].bytes == from[i].bytes;
    EXPECT_TRUE(same_layout) << "the GPU model's state() differs from the CPU model's (names or sizes)";
    if (same_layout) {
      for (std::size_t i = 0; i < from.size(); ++i) std::memcpy(to[i].data, from[i].data, from[i].bytes);
      gpu.state_from_host();
      gpu.state_to_host();
      for (std::size_t i = 0; i < from.size(); ++i)
        EXPECT_EQ(std::memcmp(to[i].data, from[i].data, from[i].bytes), 0) << from[i].name << " did not round-trip";
    }
    double l_cpu = 0, l_gpu = 0;
    std::int64_t k_cpu = 0, k_gpu = 0;
    cpu->evaluate(b.images.data(), b.labels.data(), b.n, &l_cpu, &k_cpu);
    gpu.evaluate(b.images.data(), b.labels.data(), b.n, &l_gpu, &k_gpu);
    EXPECT_NEAR(l_gpu, l_cpu, 1e-4 * std::fabs(l_cpu) + 1e-6);
    EXPECT_LE(std::abs(k_gpu - k_cpu), 1) << "predictions differ beyond a near-tie";
    EXPECT_TRUE(all_ranks(world(), !HasFailure()));
  }
}

// The TrainModel contract the loop now uses, on the CPU model (no device needed, never skips): null sums
// per micro-batch, then step_totals() after check() are exactly the per-micro-batch sums in order (the
// loop logs bit-identical losses), and the same gradients.
TEST(TrainModelStepTotals, CpuModelsStepTotalsAreThePerMicroBatchSums) {
  const Case c{"convnet", "sync"};
  const ModelSpec spec = spec_of(c);
  const TrainConfig cfg = config_of(c, "fp32");
  std::unique_ptr<TrainModel> a = make_cpu_train_model(spec, cfg, world()), b = make_cpu_train_model(spec, cfg, world());
  a->set_micro_batches(3);
  for (int step = 0; step < 2; ++step) {
    double loss = 0;
    std::int64_t correct = 0;
    for (std::uint32_t m = 0; m < 3; ++m) {
      const Batch x = batch_of(spec, 50 + m);
      a->train_micro(x.images.data(), x.labels.data(), x.n, 1.0f / (3.0f * kGlobalBatch), nullptr, nullptr);
      b->train_micro(x.images.data(), x.labels.data(), x.n, 1.0f / (3.0f * kGlobalBatch), &loss, &correct);
    }
    a->reduce_and_update(world(), 0.05);
    b->reduce_and_update(world(), 0.05);
    a->check();
    b->check();
    double total = -1;
    std::int64_t right = -1;
    a->step_totals(&total, &right);
    EXPECT_EQ(total, loss) << "step " << step << ": bit-identical to the loop's former sum";
    EXPECT_EQ(right, correct);
    b->step_totals(&total, &right);
    EXPECT_EQ(total, loss);
    a->check();  // a check with no step in between (the loop's after evaluation): nothing trained
    a->step_totals(&total, &right);
    EXPECT_EQ(total, 0.0);
    EXPECT_EQ(right, 0);
  }
  a->state_to_host();
  b->state_to_host();
  const std::vector<StateArray> sa = a->state(), sb = b->state();
  EXPECT_EQ(std::memcmp(sa[0].data, sb[0].data, sa[0].bytes), 0) << "the same parameters";
  EXPECT_TRUE(all_ranks(world(), !HasFailure()));
}

// Issue 11: the loop's way of training (null sums per micro-batch, set_micro_batches) waits for the
// device ONCE per optimizer step, whatever the number of micro-batches, and the step's Σ loss and #correct
// come with check(); with more than one rank the gradient buckets then overlap the last backward on their
// own NCCL communicator and stream and give the step of the plain after-backward all-reduce.
TEST(GpuTrainModel, OneHostWaitPerStepAndOverlappedBucketsGiveTheSameStep) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  for (const Case& c : {Case{"convnet", "sync"}, Case{"resnet", "sync"}}) {
    SCOPED_TRACE(c.str());
    const ModelSpec spec = spec_of(c);
    const TrainConfig cfg = config_of(c, "fp32");
    tr::CudaTrainModel overlap(spec, cfg, mpi_world()), plain(spec, cfg, mpi_world());
    overlap.set_micro_batches(2);
    const Batch b1 = batch_of(spec, 41), b2 = batch_of(spec, 43);
    const float grad_scale = 1.0f / (2.0f * kGlobalBatch);
    for (int step = 0; step < 2; ++step) {
      const std::int64_t waits = overlap.host_waits(), reads = overlap.status_reads();
      overlap.train_micro(b1.images.data(), b1.labels.data(), b1.n, grad_scale, nullptr, nullptr);
      overlap.train_micro(b2.images.data(), b2.labels.data(), b2.n, grad_scale, nullptr, nullptr);
      overlap.reduce_and_update(world(), 0.05);
      overlap.check();
      EXPECT_EQ(overlap.host_waits() - waits, 1) << "host waits in step " << step;
      EXPECT_EQ(overlap.status_reads() - reads, 1);
      double loss = 0, ref = 0;
      std::int64_t correct = -1, k = 0;
      overlap.step_totals(&loss, &correct);
      plain.train_micro(b1.images.data(), b1.labels.data(), b1.n, grad_scale, &ref, &k);
      plain.train_micro(b2.images.data(), b2.labels.data(), b2.n, grad_scale, &ref, &k);
      plain.reduce_and_update(world(), 0.05);
      plain.check();
      EXPECT_NEAR(loss, ref, 1e-9 * std::fabs(ref) + 1e-12) << "step_totals vs the per-micro-batch sums";
      EXPECT_EQ(correct, k);
      double plain_loss = 0;
      std::int64_t plain_correct = 0;
      plain.step_totals(&plain_loss, &plain_correct);
      EXPECT_NEAR(plain_loss, ref, 1e-9 * std::fabs(ref) + 1e-12);
      const std::vector<float> a = overlap.parameters_to_host(), p = plain.parameters_to_host();
      float worst = 0;
      for (std::size_t i = 0; i < a.size(); ++i)
        worst = std::max(worst, std::fabs(a[i] - p[i]) / (1e-3f + std::fabs(p[i])));
      EXPECT_LE(worst, 1e-5f) << "overlapped buckets moved the parameters differently (step " << step << ")";
    }
    // A third micro-batch in a step declared with two is refused once the all-reduce may have started.
    overlap.train_micro(b1.images.data(), b1.labels.data(), b1.n, grad_scale, nullptr, nullptr);
    overlap.train_micro(b2.images.data(), b2.labels.data(), b2.n, grad_scale, nullptr, nullptr);
    if (world().size() > 1) {
      EXPECT_THROW(overlap.train_micro(b1.images.data(), b1.labels.data(), b1.n, grad_scale, nullptr, nullptr), Error);
    }
    overlap.reduce_and_update(world(), 0.05);
    overlap.check();
    EXPECT_TRUE(all_ranks(world(), !HasFailure()));
  }
}

// A bad label no longer stops train_micro (no wait there): it is the step's error at check(), one line.
TEST(GpuTrainModel, BadLabelSurfacesAtTheStepsEnd) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  const Case c{"convnet", "local"};
  const ModelSpec spec = spec_of(c);
  tr::CudaTrainModel gpu(spec, config_of(c, "fp32"), mpi_world());
  Batch b = batch_of(spec, 47);
  if (!b.labels.empty()) b.labels[0] = static_cast<std::int32_t>(spec.classes) + 2;
  EXPECT_NO_THROW(gpu.train_micro(b.images.data(), b.labels.data(), b.n, 0.01f, nullptr, nullptr));
  gpu.reduce_and_update(world(), 0.05);
  std::string msg;
  try {
    gpu.check();
  } catch (const Error& e) {
    msg = e.what();
  }
  if (b.n > 0) {
    EXPECT_NE(msg.find("cross-entropy: label 12 outside [0, 10)"), std::string::npos) << msg;
  } else {
    EXPECT_EQ(msg, "");
  }
  EXPECT_TRUE(all_ranks(world(), !HasFailure()));
}

// ---- a whole step as a CUDA graph ---------------------------------------------------------------------

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(StepGraphRules, CaptureNeedsACheckedEagerStepOfItsSizeAClosedStepOneMicroBatchAndNccl) {
  tr::StepGraphState g;
  EXPECT_NE(error_of([&] { g.require_capturable(false, 1, false, 6); }).find("run one eager step"), std::string::npos);
  g.eager_micro(6);
  EXPECT_NE(error_of([&] { g.require_capturable(false, 1, false, 6); }).find("run one eager step"), std::string::npos)
      << "a micro-batch without its step's check() is not enough";
  g.eager_step_checked();
  EXPECT_EQ(error_of([&] { g.require_capturable(false, 0, false, 6); }), "");
  EXPECT_EQ(error_of([&] { g.require_capturable(false, 1, false, 6); }), "");
  // Another batch size has never run eagerly: its buffers and cuDNN algorithms are not set up.
  EXPECT_NE(error_of([&] { g.require_capturable(false, 1, false, 7); }).find("(7 samples)"), std::string::npos);
  EXPECT_NE(error_of([&] { g.require_capturable(true, 1, false, 6); }).find("a step is open"), std::string::npos);
  EXPECT_NE(error_of([&] { g.require_capturable(false, 2, false, 6); }).find("set_micro_batches(2)"), std::string::npos);
  EXPECT_NE(error_of([&] { g.require_capturable(false, 1, true, 6); }).find("--comm mpi"), std::string::npos);
}

TEST(StepGraphRules, OneCheckedReplayAtATime) {
  tr::StepGraphState g;
  EXPECT_NE(error_of([&] { g.replaying(); }).find("no step graph"), std::string::npos);
  g.eager_micro(4);
  g.eager_step_checked();
  g.captured();
  EXPECT_TRUE(g.has_graph());
  g.replaying();
  EXPECT_TRUE(g.pending());
  // Before check(): no second replay, no eager micro-batch, no new capture.
  EXPECT_NE(error_of([&] { g.replaying(); }).find("has not been checked"), std::string::npos);
  EXPECT_NE(error_of([&] { g.require_no_pending("train_micro"); }).find("train_micro: a replayed step"),
            std::string::npos);
  EXPECT_NE(error_of([&] { g.require_capturable(false, 1, false, 4); }).find("has not been checked"), std::string::npos);
  g.replay_checked();
  EXPECT_FALSE(g.pending());
  EXPECT_EQ(error_of([&] { g.require_no_pending("train_micro"); }), "");
  g.replaying();
  g.replay_checked();
  EXPECT_EQ(g.replays(), 2);
  g.released();
  EXPECT_NE(error_of([&] { g.replaying(); }).find("no step graph"), std::string::npos);
}

// The status read of a replayed step: the copy was the graph's, check() only waits; either way one read
// per step, and a reader whose fetch also waits cannot be split.
TEST(StepGraphRules, StatusReadSplitsIntoTheGraphsCopyAndCheckWait) {
  const tr::StepStatusLayout l = tr::step_status_layout(2);
  std::vector<char> dev(l.bytes, 0), host(l.bytes, 0);
  int copies = 0, waits = 0;
  tr::StepStatusReader r(
      l, host.data(),
      [&](void* to, std::size_t bytes) {
        ++copies;
        std::memcpy(to, dev.data(), bytes);
      },
      [&] { ++waits; });
  tr::StepCounters c;
  c.loss = 2.5;
  c.correct = 3;
  std::memcpy(dev.data() + l.counters, &c, sizeof c);
  EXPECT_EQ(r.read().counters.loss, 2.5);  // eager: copy + wait
  EXPECT_EQ(copies, 1);
  EXPECT_EQ(waits, 1);
  r.enqueue_copy();  // the capture
  EXPECT_EQ(copies, 2);
  EXPECT_EQ(waits, 1);
  c.loss = 4.0;  // what a replay's copy brought (the host buffer, written behind the reader's back)
  std::memcpy(host.data() + l.counters, &c, sizeof c);
  const tr::StepStatusView v = r.read_copied();  // check() after the replay: the wait only
  EXPECT_EQ(v.counters.loss, 4.0);
  EXPECT_EQ(v.counters.correct, 3.0);
  EXPECT_EQ(copies, 2);
  EXPECT_EQ(waits, 2);
  EXPECT_EQ(r.fetches(), 2);
  tr::StepStatusReader joined(l, host.data(), [](void*, std::size_t) {});
  EXPECT_NE(error_of([&] { joined.enqueue_copy(); }).find("separate"), std::string::npos);
  EXPECT_NE(error_of([&] { joined.read_copied(); }).find("separate"), std::string::npos);
}

// Every checkpointed array of two models (after state_to_host): bitwise, or within rtol of the larger
// magnitude of the array.
::testing::AssertionResult states_match(tr::CudaTrainModel& a, tr::CudaTrainModel& b, double rtol) {
  a.state_to_host();
  b.state_to_host();
  const std::vector<StateArray> sa = a.state(), sb = b.state();
  if (sa.size() != sb.size()) return ::testing::AssertionFailure() << "state sizes differ";
  for (std::size_t i = 0; i < sa.size(); ++i) {
    if (rtol == 0 || sa[i].type != StateType::kF32) {
      if (sa[i].bytes != sb[i].bytes || std::memcmp(sa[i].data, sb[i].data, sa[i].bytes) != 0)
        return ::testing::AssertionFailure() << sa[i].name << " differs bitwise";
      continue;
    }
    const auto* x = static_cast<const float*>(sa[i].data);
    const auto* y = static_cast<const float*>(sb[i].data);
    const std::size_t n = sa[i].bytes / sizeof(float);
    double scale = 0;
    for (std::size_t k = 0; k < n; ++k) scale = std::max(scale, static_cast<double>(std::fabs(x[k])));
    for (std::size_t k = 0; k < n; ++k)
      if (!(std::fabs(static_cast<double>(x[k]) - y[k]) <= rtol * std::max(scale, 1e-30)))
        return ::testing::AssertionFailure() << sa[i].name << "[" << k << "]: " << x[k] << " vs " << y[k];
  }
  return ::testing::AssertionSuccess();
}

// Issue 11: a whole training step (input copy, forward, loss, backward, gradient buckets — overlapping
// the backward on their own stream with > 1 rank —, step check, SGD, status copy) captured in GLOBAL
// mode, and replayed on new batches with a new learning rate each (read from device memory), against a
// model of the same seed that runs every step eagerly.
// During the capture a watched collective is pending on the model's communicator (held back by a host
// function), so its watchdog thread queries events while the capture is open: only its relaxed capture
// mode keeps that from invalidating a global-mode capture. Bitwise at np 1: the kernels are deterministic
// (fixed-order reductions, no floating-point atomics) and run with the same algorithms on the same data;
// with more ranks 1e-6 relative, as NCCL may run a captured all-reduce with another algorithm (buffer
// registration in graphs), which changes the summation order of the gradients and the SyncBN statistics.
TEST(CudaTrainModelGraph, GlobalModeStepReplayMatchesEager) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  const double rtol = world().size() == 1 ? 0.0 : 1e-6;
  constexpr int kSteps = 4;  // step 0 eager on both (the graphed model's warm-up), then kSteps − 1 replays
  for (const Case& c : {Case{"convnet", "sync"}, Case{"resnet", "sync"}}) {
    SCOPED_TRACE(c.str());
    const ModelSpec spec = spec_of(c);
    const TrainConfig cfg = config_of(c, "fp32");
    tr::CudaTrainModel eager(spec, cfg, mpi_world()), graphed(spec, cfg, mpi_world());
    eager.set_micro_batches(1);  // with > 1 rank the buckets overlap the backward (and are captured so)
    graphed.set_micro_batches(1);
    std::vector<Batch> batches;
    for (int k = 0; k <= kSteps; ++k) batches.push_back(batch_of(spec, 61 + static_cast<std::uint32_t>(k)));
    const float grad_scale = 1.0f / static_cast<float>(kGlobalBatch);
    // A learning rate that changes every step: the graph reads it from device memory (set_step_lr).
    const auto lr_of = [](int k) { return 0.05 * (1.0 + 0.25 * k); };
    const auto expect_same = [&](std::pair<double, std::int64_t> got, std::pair<double, std::int64_t> want,
                                 const std::string& what) {
      if (rtol == 0) {
        EXPECT_EQ(got.first, want.first) << what << ": loss";
      } else {
        EXPECT_NEAR(got.first, want.first, rtol * std::fabs(want.first)) << what << ": loss";
      }
      EXPECT_EQ(got.second, want.second) << what << ": #correct";
    };
    const auto eager_step = [&](tr::CudaTrainModel& m, const Batch& b, double lr) {
      m.train_micro(b.images.data(), b.labels.data(), b.n, grad_scale, nullptr, nullptr);
      m.reduce_and_update(world(), lr);
      m.check();
      double loss = 0;
      std::int64_t correct = 0;
      m.step_totals(&loss, &correct);
      return std::make_pair(loss, correct);
    };
    const Batch& b0 = batches[0];
    EXPECT_NE(error_of([&] { graphed.capture_step(b0.images.data(), b0.labels.data(), b0.n, grad_scale, lr_of(1)); })
                  .find("run one eager step"),
              std::string::npos);
    std::vector<std::pair<double, std::int64_t>> ref{eager_step(eager, b0, lr_of(0))};
    expect_same(eager_step(graphed, b0, lr_of(0)), ref[0], "warm-up step");
    // An eval batch (both models) converts the weight copies for the current parameters: the capture must
    // still hold the conversion (each replay changes the parameters).
    for (tr::CudaTrainModel* m : {&eager, &graphed}) {
      double eval_loss = 0;
      std::int64_t eval_correct = 0;
      m->evaluate(b0.images.data(), b0.labels.data(), b0.n, &eval_loss, &eval_correct);
    }
    for (int k = 1; k < kSteps; ++k) ref.push_back(eager_step(eager, batches[static_cast<std::size_t>(k)], lr_of(k)));

    // A watched collective held back 20 ms on the model's stream, pending while the capture is open.
    cuda::DeviceCommunicator& comm = graphed.communicator();
    cuda::DeviceArray<float> probe;
    probe.resize(4096, "graph.probe");
    SBN_CUDA_CHECK(cudaMemsetAsync(probe.data(), 0, probe.size() * sizeof(float), comm.stream()), "graph.probe");
    SBN_CUDA_CHECK(cudaLaunchHostFunc(
                       comm.stream(), [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(20)); }, nullptr),
                   "test delay");
    comm.allreduce_sum(probe.data(), probe.size(), "graph.probe", comm.stream());
    graphed.capture_step(b0.images.data(), b0.labels.data(), b0.n, grad_scale, lr_of(1), cudaStreamCaptureModeGlobal);
    comm.synchronize(comm.stream(), "graph.probe");
    ASSERT_TRUE(graphed.has_step_graph());

    for (int k = 1; k < kSteps; ++k) {
      const Batch& b = batches[static_cast<std::size_t>(k)];
      graphed.set_step_lr(lr_of(k));
      const std::int64_t waits = graphed.host_waits(), reads = graphed.status_reads();
      graphed.replay_step(b.images.data(), b.labels.data());
      EXPECT_THROW(graphed.replay_step(), Error) << "a second replay before check()";
      EXPECT_THROW(graphed.set_step_lr(0.1), Error) << "a new learning rate before check()";
      graphed.check();
      EXPECT_EQ(graphed.host_waits() - waits, 1) << "host waits of replay " << k;
      EXPECT_EQ(graphed.status_reads() - reads, 1);
      EXPECT_EQ(graphed.last_step().outcome, StepResult::Outcome::kCommitted);
      double loss = 0;
      std::int64_t correct = -1;
      graphed.step_totals(&loss, &correct);
      expect_same({loss, correct}, ref[static_cast<std::size_t>(k)], "replay " + std::to_string(k));
    }
    EXPECT_TRUE(states_match(graphed, eager, rtol)) << "after " << kSteps - 1 << " replays";
    // Eager again after the replays (the weight copies are converted anew), then the next batch.
    const Batch& last = batches[static_cast<std::size_t>(kSteps)];
    const auto e = eager_step(eager, last, lr_of(kSteps));
    expect_same(eager_step(graphed, last, lr_of(kSteps)), e, "eager step after the replays");
    EXPECT_TRUE(states_match(graphed, eager, rtol)) << "after an eager step that followed the replays";
    graphed.release_step_graph();
    EXPECT_FALSE(graphed.has_step_graph());
    EXPECT_TRUE(all_ranks(world(), !HasFailure()));
  }
}

}  // namespace
}  // namespace syncbn::test
