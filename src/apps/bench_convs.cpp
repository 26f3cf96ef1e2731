// syncbn-bench --convs: the default convnet's 3x3 convolutions (the part of an fp32 training step that
// is not ours), timed the way the trainer runs them (oneDNN, one thread, fp32, NHWC activations) and
// with oneDNN's own choice of activation layout (format any: its blocked nChw16c kernels), forward,
// backward-data and backward-weights. It answers whether a faster fp32 convolution exists on this
// machine for these shapes, which bounds what the rest of the step can gain (README "Training
// throughput"). Repetitions of the two layouts are interleaved, so both see the same machine state.
#include <dnnl.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "bench.h"
#include "syncbn/app.h"
#include "syncbn/bench_util.h"

namespace syncbn::bench {
namespace {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// One convolution's three primitives and their buffers, in one activation layout.
struct ConvCase {
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
  // Backward-data wants its weights in another blocked layout than forward (the trainer reorders them
  // for it too), hence two copies; the other operands share one layout per tensor.
  dnnl::memory src, weights, weights_bwd, dst, diff_src, diff_dst, diff_weights;
  std::string impl[3];

  ConvCase(const dnnl::engine& eng, std::int64_t n, std::int64_t ic, std::int64_t oc, std::int64_t hw,
           bool nhwc) {
    const dnnl::memory::dims src_d{n, ic, hw, hw}, w_d{oc, ic, 3, 3}, dst_d{n, oc, hw, hw}, one{1, 1};
    const tag act = nhwc ? tag::nhwc : tag::any;
    const dnnl::memory::desc src_md(src_d, dt::f32, act), dst_md(dst_d, dt::f32, act), w_md(w_d, dt::f32, tag::any);
    const auto alg = dnnl::algorithm::convolution_direct;
    dnnl::convolution_forward::primitive_desc fpd(
        {dnnl::prop_kind::forward_training, alg, src_md, w_md, dst_md, one, one, one}, eng);
    dnnl::convolution_backward_data::primitive_desc dpd({alg, src_md, w_md, dst_md, one, one, one}, eng, fpd);
    dnnl::convolution_backward_weights::primitive_desc wpd({alg, src_md, w_md, dst_md, one, one, one}, eng, fpd);
    fwd = dnnl::convolution_forward(fpd);
    bwd_data = dnnl::convolution_backward_data(dpd);
    bwd_weights = dnnl::convolution_backward_weights(wpd);
    src = filled(fpd.src_desc(), eng, 1);
    weights = filled(fpd.weights_desc(), eng, 2);
    weights_bwd = filled(dpd.weights_desc(), eng, 2);
    dst = filled(fpd.dst_desc(), eng, 3);
    diff_src = filled(dpd.diff_src_desc(), eng, 4);
    diff_dst = filled(wpd.diff_dst_desc(), eng, 5);
    diff_weights = filled(wpd.diff_weights_desc(), eng, 6);
    impl[0] = fpd.impl_info_str();
    impl[1] = dpd.impl_info_str();
    impl[2] = wpd.impl_info_str();
  }

  static dnnl::memory filled(const dnnl::memory::desc& md, const dnnl::engine& eng, int seed) {
    dnnl::memory m(md, eng);
    auto* p = static_cast<float*>(m.get_data_handle());
    const std::size_t n = md.get_size() / sizeof(float);
    for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<float>((i * 7 + seed) % 13) * 0.05f - 0.3f;
    return m;
  }

  // Runs direction d (0 forward, 1 backward-data, 2 backward-weights) once; returns its seconds.
  double run(dnnl::stream& s, int d) {
    const double t0 = now_seconds();
    if (d == 0) fwd.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}});
    if (d == 1)
      bwd_data.execute(s,
                       {{DNNL_ARG_DIFF_SRC, diff_src}, {DNNL_ARG_WEIGHTS, weights_bwd}, {DNNL_ARG_DIFF_DST, diff_dst}});
    if (d == 2)
      bwd_weights.execute(s,
                          {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights}, {DNNL_ARG_DIFF_DST, diff_dst}});
    s.wait();
    return now_seconds() - t0;
  }
};

}  // namespace

void conv_bench(const BenchOptions& opt, BenchReport& report, const Log0& log) {
  // The default convnet (--width 32) at the benchmark's batch of 64 per process: conv2 and conv3 (conv1,
  // one input channel, is im2col + sgemm in the trainer).
  struct Shape {
    std::int64_t ic, oc, hw;
  };
  const Shape shapes[] = {{32, 64, 14}, {64, 128, 7}};
  const std::int64_t n = opt.conv_batch;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  log("# oneDNN fp32 3x3 convolutions of the convnet, batch %lld, median of %d interleaved reps after %d\n"
      "# warm-up; GFLOP/s = 3 directions x 2*N*H*W*OC*IC*9 / (fwd + bwd_data + bwd_weights)\n",
      static_cast<long long>(n), opt.reps, opt.warmup);
  log("%-16s %-6s %8s %8s %8s %8s %8s  %s\n", "#conv", "layout", "fwd_ms", "bwdd_ms", "bwdw_ms", "sum_ms", "GFLOP/s",
      "kernels (fwd / bwd_data / bwd_weights)");
  for (const Shape& sh : shapes) {
    ConvCase cases[2] = {ConvCase(eng, n, sh.ic, sh.oc, sh.hw, true), ConvCase(eng, n, sh.ic, sh.oc, sh.hw, false)};
    std::vector<double> t[2][3];
    for (int r = 0; r < opt.warmup + opt.reps; ++r)
      for (int c = 0; c < 2; ++c)
        for (int d = 0; d < 3; ++d) {
          const double sec = cases[c].run(s, d);
          if (r >= opt.warmup) t[c][d].push_back(sec);
        }
    const double flop = 2.0 * static_cast<double>(n * sh.hw * sh.hw * sh.oc * sh.ic * 9);
    const std::string name = std::to_string(sh.ic) + "->" + std::to_string(sh.oc) + "@" + std::to_string(sh.hw) +
                             "x" + std::to_string(sh.hw);
    for (int c = 0; c < 2; ++c) {
      const double f = median(t[c][0]), bd = median(t[c][1]), bw = median(t[c][2]), sum = f + bd + bw;
      const char* layout = c == 0 ? "nhwc" : "any";
      log("%-16s %-6s %8.3f %8.3f %8.3f %8.3f %8.1f  %s / %s / %s\n", name.c_str(), layout, f * 1e3, bd * 1e3,
          bw * 1e3, sum * 1e3, 3 * flop / sum * 1e-9, cases[c].impl[0].c_str(), cases[c].impl[1].c_str(),
          cases[c].impl[2].c_str());
      char line[512];
      std::snprintf(line, sizeof line,
                    "{\"kind\":\"conv\",\"device\":\"cpu\",\"conv\":\"%s\",\"layout\":\"%s\",\"batch\":%lld,"
                    "\"fwd_ms\":%.4f,\"bwd_data_ms\":%.4f,\"bwd_weights_ms\":%.4f,\"gflops\":%.2f,\"reps\":%d}",
                    name.c_str(), layout, static_cast<long long>(n), f * 1e3, bd * 1e3, bw * 1e3,
                    3 * flop / sum * 1e-9, opt.reps);
      report.json.push_back(line);
    }
  }
}

}  // namespace syncbn::bench
