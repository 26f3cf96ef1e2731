// syncbn-bench: measures the SyncBN kernels and layer.
//  - CPU kernels, forward and backward, single thread: effective bandwidth (bytes that must move ÷
//    median time) beside a triad over arrays of the same size measured in the same run (interleaved
//    repetitions, so both see the same machine state).
//  - One SyncBatchNorm layer (mode sync) at the current world size: forward+backward time split into
//    compute and communication, per rank.
//  - --convs: the default convnet's oneDNN convolutions, NHWC vs oneDNN's own layout (bench_convs.cpp).
// Output: a table on stdout ('#' lines are not data) and JSON lines (--json FILE).
#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <sstream>

#include "bench.h"
#include "syncbn/app.h"
#include "syncbn/bench_util.h"
#include "syncbn/bn_kernels.h"
#include "syncbn/config.h"
#include "syncbn/sync_batchnorm.h"

namespace po = boost::program_options;

namespace syncbn::bench {
namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::vector<BenchShape> parse_shapes(const std::string& text, const std::string& layout) {
  std::vector<BenchShape> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    BenchShape s;
    std::stringstream is(item);
    std::string d;
    while (std::getline(is, d, 'x')) {
      char* end = nullptr;
      const long long v = std::strtoll(d.c_str(), &end, 10);
      SBN_CHECK(!d.empty() && *end == '\0' && v > 0, "--shapes: bad dimension '" + d + "' in '" + item + "'");
      s.dims.push_back(v);
    }
    SBN_CHECK(s.dims.size() >= 2 && s.dims.size() <= 4,
              "--shapes: '" + item + "' must have 2 to 4 dimensions (NxC[xHxW])");
    const bool four = s.dims.size() == 4;
    if (layout == "nchw" || layout == "both" || !four) out.push_back(s);
    if (four && (layout == "nhwc" || layout == "both")) {
      s.layout = Layout::kChannelsLast;
      out.push_back(s);
    }
  }
  SBN_CHECK(!out.empty(), "--shapes: no shapes given");
  return out;
}

void fill_random(Tensor& t, std::uint32_t seed, float mean, float std) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(mean, std);
  for (std::int64_t i = 0; i < t.numel(); ++i) t[i] = dist(gen);
}

// STREAM triad a = b + s·c over n floats; 12 bytes per element counted (2 reads, 1 write).
__attribute__((noinline)) void triad(float* __restrict a, const float* __restrict b,
                                     const float* __restrict c, std::int64_t n) {
  const float s = 1.5f;
  for (std::int64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

// The tensors and per-channel arrays of one shape's kernel benchmark (fixed seeds: every run times the
// same data), as one BN batch of a layer with γ = 1, β = 0.
struct KernelData {
  Tensor x, y, dy, dx, ta, tb, tc;  // (dims): input, output and their gradients; triad arrays
  BnGeometry g;
  BnLayerBuffers<std::vector<double>, std::vector<float>> bn;
  std::vector<double> msg;
  std::vector<float> dgamma, dbeta;

  explicit KernelData(const BenchShape& s)
      : x(s.dims, s.layout), y(s.dims, s.layout), dy(s.dims, s.layout), dx(s.dims, s.layout), ta(s.dims), tb(s.dims),
        tc(s.dims), g(bn_geometry(s.dims, s.layout, "bench")) {
    fill_random(x, 1, 0.5f, 2.0f);
    fill_random(dy, 2, 0.0f, 1.0f);
    fill_random(tb, 3, 0.0f, 1.0f);
    fill_random(tc, 4, 0.0f, 1.0f);
    const std::size_t C = static_cast<std::size_t>(g.channels);
    msg.resize(static_cast<std::size_t>(bn_msg_size(g.channels)));
    for (auto* v : {&bn.pivot, &bn.mean, &bn.var, &bn.invstd}) v->assign(C, 0.0);
    for (auto* v : {&bn.gamma, &bn.running_var}) v->assign(C, 1.0f);
    for (auto* v : {&bn.beta, &bn.running_mean, &bn.hi, &bn.a, &bn.b, &bn.k1, &bn.k0, &dgamma, &dbeta})
      v->assign(C, 0.0f);
  }
};

// Medians of one shape's repetitions, in seconds.
struct KernelTimes {
  double forward, backward, both, triad;
};

// Times triad, forward (stats, combine, normalize) and backward (reduce, combine, elemt) interleaved rep by
// rep, so all three see the same machine state.
KernelTimes time_kernels(const BenchOptions& opt, KernelData& d) {
  const BnGeometry& g = d.g;
  auto& bn = d.bn;
  const std::int64_t n = d.x.numel();
  const BatchNormOptions layer;  // a default layer's eps, momentum and streaming threshold; one rank, tag 1
  const bool stream = n * 4 >= layer.stream_threshold_bytes;
  const BnCombineArgs ca =
      bn_combine_args(bn.arrays(g.channels), 0, 1, 1.0, layer.eps, BnRunningUpdate::of(true, layer.momentum, 0));
  const BnBackwardCombineArgs ba =
      bn_backward_combine_args(bn.arrays(g.channels), 0, 1, 1.0, static_cast<double>(g.per_channel()));
  auto forward = [&] {
    cpu::bn_stats(d.x.data(), g, bn.pivot.data(), 1.0, d.msg.data());
    SBN_CHECK(cpu::bn_combine(d.msg.data(), ca) == kBnOk, "bench: combine failed");
    cpu::bn_normalize(d.x.data(), g, bn.hi.data(), bn.a.data(), bn.b.data(), opt.relu, stream, d.y.data());
  };
  auto backward = [&] {
    cpu::bn_backward_reduce(d.dy.data(), d.x.data(), g, bn.hi.data(), bn.a.data(), bn.b.data(), opt.relu,
                            bn.mean.data(), bn.invstd.data(), 1.0, d.msg.data(), d.dgamma.data(), d.dbeta.data());
    SBN_CHECK(cpu::bn_backward_combine(d.msg.data(), ba) == kBnOk, "bench: backward combine failed");
    cpu::bn_backward_elemt(d.dy.data(), d.x.data(), g, bn.hi.data(), bn.a.data(), bn.b.data(), opt.relu,
                           bn.k1.data(), bn.k0.data(), stream, d.dx.data());
  };
  std::vector<double> tf, tbw, tt;
  for (int r = -opt.warmup; r < opt.reps; ++r) {
    double t0 = now_seconds();
    triad(d.ta.data(), d.tb.data(), d.tc.data(), n);
    double t1 = now_seconds();
    forward();
    double t2 = now_seconds();
    backward();
    double t3 = now_seconds();
    if (r >= 0) {
      tt.push_back(t1 - t0);
      tf.push_back(t2 - t1);
      tbw.push_back(t3 - t2);
    }
  }
  std::vector<double> tfb(tf.size());
  for (std::size_t i = 0; i < tf.size(); ++i) tfb[i] = tf[i] + tbw[i];
  return {median(tf), median(tbw), median(tfb), median(tt)};
}

void kernel_bench(const BenchOptions& opt, BenchReport& report, const Log0& log) {
  log("# CPU kernels: 1 thread, fp32, median of %d reps after %d warm-up; relu %s; %s build, -march=%s\n",
      opt.reps, opt.warmup, opt.relu ? "fused" : "off", SBN_BUILD_TYPE, SBN_CPU_ARCH);
  log("# bytes that must move per element: forward 12 (stats reads x; normalize reads x, writes y),\n"
      "# backward 20 (reduce reads x, dy; elemt reads x, dy, writes dx); triad 12 (a = b + s*c)\n");
  log("%-20s %7s %7s %7s %7s %9s %9s %9s %8s %6s\n", "#shape", "fwd_ms", "bwd_ms", "fb_ms", "fwd_GBs",
      "bwd_GBs", "fb_GBs", "triad_GBs", "fb/triad", "");
  for (const BenchShape& s : opt.shapes) {
    KernelData d(s);
    const KernelTimes t = time_kernels(opt, d);
    const double mf = t.forward, mb = t.backward, mfb = t.both, mt = t.triad;
    const double gb = 1e-9 * static_cast<double>(d.x.numel());
    const double fwd_bw = 12 * gb / mf, bwd_bw = 20 * gb / mb, fb_bw = 32 * gb / mfb, triad_bw = 12 * gb / mt;
    log("%-20s %7.3f %7.3f %7.3f %7.1f %9.1f %9.1f %9.1f %7.0f%%\n", s.str().c_str(), mf * 1e3, mb * 1e3,
        mfb * 1e3, fwd_bw, bwd_bw, fb_bw, triad_bw, 100 * fb_bw / triad_bw);
    report.json.push_back(
        "{\"kind\":\"kernel\",\"device\":\"cpu\",\"shape\":\"" + s.str() + "\",\"relu\":" +
        (opt.relu ? "true" : "false") + ",\"fwd_ms\":" + fmt("%.4f", mf * 1e3) + ",\"bwd_ms\":" +
        fmt("%.4f", mb * 1e3) + ",\"fwdbwd_ms\":" + fmt("%.4f", mfb * 1e3) + ",\"fwd_gbs\":" +
        fmt("%.2f", fwd_bw) + ",\"bwd_gbs\":" + fmt("%.2f", bwd_bw) + ",\"fwdbwd_gbs\":" + fmt("%.2f", fb_bw) +
        ",\"triad_gbs\":" + fmt("%.2f", triad_bw) + ",\"fwdbwd_over_triad\":" + fmt("%.3f", fb_bw / triad_bw) +
        ",\"reps\":" + std::to_string(opt.reps) + "}");
  }
}

void layer_bench(const BenchOptions& opt, Communicator& world, BenchReport& report, const Log0& log) {
  const int P = world.size();
  log("# SyncBatchNorm layer, mode sync over %d rank(s), training forward+backward, median of %d reps;\n"
      "# comm = time inside the layer's two all-reduces (includes waiting for the slowest rank)\n",
      P, opt.reps);
  log("%-20s %6s %9s %10s %9s %9s %9s\n", "#shape(per rank)", "ranks", "total_ms", "compute_ms", "comm_ms",
      "comm_max", "local_ms");
  for (const BenchShape& s : opt.shapes) {
    Tensor x(s.dims, s.layout), y, dy(s.dims, s.layout), dx;
    fill_random(x, 10 + static_cast<std::uint32_t>(world.rank()), 0.5f, 2.0f);
    fill_random(dy, 20 + static_cast<std::uint32_t>(world.rank()), 0.0f, 1.0f);
    BatchNormOptions bo;
    bo.channels = s.dims[1];
    bo.fuse_relu = opt.relu;
    SyncGroup group(world, parse_sync_mode("sync"));
    SyncBatchNorm synced("bench.sync", bo, &group);
    SyncBatchNorm local("bench.local", bo, nullptr);
    std::vector<double> tot, comm, loc;
    for (int r = -opt.warmup; r < opt.reps; ++r) {
      world.barrier("bench.layer");
      synced.reset_comm_seconds();
      double t0 = now_seconds();
      synced.forward(x, y, true);
      synced.backward(x, dy, dx);
      double t1 = now_seconds();
      local.forward(x, y, true);
      local.backward(x, dy, dx);
      double t2 = now_seconds();
      if (r >= 0) {
        tot.push_back(t1 - t0);
        comm.push_back(synced.comm_seconds());
        loc.push_back(t2 - t1);
      }
    }
    report_layer(s, "cpu", {median(tot), median(comm), median(loc)}, world, report, log);
  }
}

}  // namespace

void report_layer(const BenchShape& shape, const char* device, const LayerTimes& mine, Communicator& world,
                  BenchReport& report, const Log0& log) {
  const int P = world.size();
  const double mt = mine.total, mc = mine.comm, ml = mine.local;
  std::vector<double> per_rank(static_cast<std::size_t>(3 * P), 0.0);
  per_rank[static_cast<std::size_t>(3 * world.rank())] = mt;
  per_rank[static_cast<std::size_t>(3 * world.rank() + 1)] = mc;
  per_rank[static_cast<std::size_t>(3 * world.rank() + 2)] = ml;
  world.allreduce_sum(per_rank.data(), per_rank.size(), "bench.layer.gather");
  double comm_max = 0;
  for (int r = 0; r < P; ++r) comm_max = std::max(comm_max, per_rank[static_cast<std::size_t>(3 * r + 1)]);
  log("%-20s %6d %9.3f %10.3f %9.3f %9.3f %9.3f\n", shape.str().c_str(), P, mt * 1e3, (mt - mc) * 1e3, mc * 1e3,
      comm_max * 1e3, ml * 1e3);
  for (int r = 0; r < P; ++r) {
    const double t = per_rank[static_cast<std::size_t>(3 * r)], c = per_rank[static_cast<std::size_t>(3 * r + 1)];
    report.json.push_back("{\"kind\":\"layer\",\"device\":\"" + std::string(device) + "\",\"shape\":\"" +
                          shape.str() + "\",\"world_size\":" + std::to_string(P) + ",\"rank\":" +
                          std::to_string(r) + ",\"total_ms\":" + fmt("%.4f", t * 1e3) + ",\"compute_ms\":" +
                          fmt("%.4f", (t - c) * 1e3) + ",\"comm_ms\":" + fmt("%.4f", c * 1e3) + ",\"local_ms\":" +
                          fmt("%.4f", per_rank[static_cast<std::size_t>(3 * r + 2)] * 1e3) + "}");
  }
}

std::string BenchShape::str() const {
  std::string out;
  for (std::size_t i = 0; i < dims.size(); ++i) out += (i ? "x" : "") + std::to_string(dims[i]);
  if (dims.size() == 4) out += layout == Layout::kChannelsLast ? " NHWC" : " NCHW";
  return out;
}

#if !defined(SBN_BENCH_CUDA)
void run_cuda_bench(const BenchOptions&, Communicator&, BenchReport&) {
  SBN_FAIL("--device cuda: this syncbn was built without CUDA (configure with nvcc available)");
}
#endif

}  // namespace syncbn::bench

int main(int argc, char** argv) {
  using namespace syncbn;
  using namespace syncbn::bench;
  return mpi_main(argc, argv, [&](MpiCommunicator& world) {
    const Log0 log(world);
    po::options_description desc("syncbn-bench options");
    std::string shapes, layout, device, json;
    BenchOptions opt;
    bool kernels_only = false, layer_only = false, help = false;
    desc.add_options()
      ("help,h", po::bool_switch(&help), "show this help")
      ("device", po::value(&device)->default_value("cpu"), "cpu | cuda")
      ("shapes", po::value(&shapes)->default_value("32x64x28x28,8x64x28x28,256x256"),
       "comma-separated NxC[xHxW] shapes (per rank)")
      ("layout", po::value(&layout)->default_value("nchw"), "nchw | nhwc | both (for 4-d shapes)")
      ("reps", po::value(&opt.reps)->default_value(30), "timed repetitions (median reported)")
      ("warmup", po::value(&opt.warmup)->default_value(5), "untimed repetitions first")
      ("relu", po::bool_switch(&opt.relu), "fuse ReLU into normalize / gate dy in backward")
      ("kernels-only", po::bool_switch(&kernels_only), "only the per-kernel table")
      ("layer-only", po::bool_switch(&layer_only), "only the SyncBN layer table")
      ("json", po::value(&json)->default_value(""), "write JSON lines to this file")
      ("convs", po::bool_switch(&opt.convs),
       "only the convnet's fp32 oneDNN convolutions: NHWC (as trained) vs oneDNN's own layout, per direction")
      ("conv-batch", po::value(&opt.conv_batch)->default_value(64), "--convs: batch size")
      ("comm", po::value(&opt.comm)->default_value("nccl"),
       "--device cuda: nccl | mpi (device buffers staged through pinned host memory over MPI; ranks may "
       "share a GPU)")
      ("dtypes", po::value(&opt.dtypes)->default_value("fp32,bf16,fp16"),
       "--device cuda: comma-separated activation dtypes of the kernel table (fp32, bf16, fp16)");
    run_agreed(world, "bench.options", [&] {
      po::variables_map vm;
      po::store(po::parse_command_line(argc, argv, desc), vm);
      po::notify(vm);
      SBN_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda, got '" + device + "'");
      SBN_CHECK(layout == "nchw" || layout == "nhwc" || layout == "both",
                "--layout must be nchw, nhwc or both, got '" + layout + "'");
      SBN_CHECK(opt.reps >= 1 && opt.warmup >= 0, "--reps must be >= 1 and --warmup >= 0");
      SBN_CHECK(!(kernels_only && layer_only), "--kernels-only and --layer-only exclude each other");
      SBN_CHECK(opt.conv_batch >= 1, "--conv-batch must be >= 1");
      SBN_CHECK(!(opt.convs && (kernels_only || layer_only || device != "cpu")),
                "--convs is a CPU table of its own: without --kernels-only, --layer-only or --device cuda");
      SBN_CHECK(opt.comm == "nccl" || opt.comm == "mpi", "--comm must be nccl or mpi, got '" + opt.comm + "'");
      std::stringstream dts(opt.dtypes);
      for (std::string d; std::getline(dts, d, ',');)
        SBN_CHECK(d == "fp32" || d == "bf16" || d == "fp16", "--dtypes: '" + d + "' is not fp32, bf16 or fp16");
      opt.shapes = parse_shapes(shapes, layout);
    });
    if (help) {
      log("Usage: syncbn-bench [options]\n");
      if (log.enabled()) std::cout << desc << "\n";
      return 0;
    }
    opt.kernels = !layer_only;
    opt.layer = !kernels_only;
    opt.json_path = json;
    BenchReport report;
    if (opt.convs) {
      conv_bench(opt, report, log);
    } else if (device == "cuda") {
      run_cuda_bench(opt, world, report);
    } else {
      if (opt.kernels) kernel_bench(opt, report, log);
      if (opt.kernels && opt.layer) log("\n");
      if (opt.layer) layer_bench(opt, world, report, log);
    }
    if (!opt.json_path.empty() && world.rank() == 0) {
      std::string text;
      for (const auto& line : report.json) text += line + "\n";
      write_file_atomic(opt.json_path, text);
      log("# wrote %zu JSON lines to %s\n", report.json.size(), opt.json_path.c_str());
    }
    return 0;
  });
}
