// syncbn-bench --device cuda: the GPU half of the benchmark (CUDA builds only).
//  1. Kernels: each SyncBN kernel's effective bandwidth (bytes that must move ÷ median device time, CUDA
//     events) beside a device-to-device copy of the same tensor measured in the same run, interleaved rep
//     by rep; L2 is flushed before every timed launch so the numbers are HBM numbers.
//     Each bandwidth is also given as a percentage of the device's peak memory bandwidth (memory clock ×
//     bus width × 2, from the device attributes).
//  2. All-reduce latency at SyncBN's message sizes (3 + 2C doubles, C = 64 … 2048), on the communicator of
//     --comm (nccl, or mpi: the staged communicator).
//  3. One CudaSyncBatchNorm layer (mode sync over the world) forward+backward: device time split into
//     compute and communication (the layer's own events around its two all-reduces), per rank; then each
//     SyncBN exchange (half the layer's communication) beside a bare all-reduce of the same message.
// Without a usable device (or with two ranks on one device, device_select.h) every rank agrees and rank 0
// prints one "error: ..." line (exit 1).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <sstream>

#include "bench.h"
#include "syncbn/app.h"
#include "syncbn/bench_util.h"
#include "syncbn/config.h"
#include "syncbn/cuda/bn_kernels.h"
#include "syncbn/cuda/device.h"
#include "syncbn/cuda/nccl_communicator.h"
#include "syncbn/cuda/staged_communicator.h"
#include "syncbn/cuda/sync_batchnorm.h"

namespace syncbn::bench {
namespace {

using cuda::DeviceArray;
using cuda::DeviceTensor;
using cuda::DType;

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// A pair of events per repetition, so reps run back to back without host waits.
class EventTimer {
 public:
  explicit EventTimer(int reps) : start_(static_cast<std::size_t>(reps)), stop_(static_cast<std::size_t>(reps)) {
    for (std::size_t i = 0; i < start_.size(); ++i) {
      SBN_CUDA_CHECK(cudaEventCreate(&start_[i]), "bench events");
      SBN_CUDA_CHECK(cudaEventCreate(&stop_[i]), "bench events");
    }
  }
  ~EventTimer() {
    for (std::size_t i = 0; i < start_.size(); ++i) {
      cudaEventDestroy(start_[i]);
      cudaEventDestroy(stop_[i]);
    }
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void begin(int rep, cudaStream_t s) { SBN_CUDA_CHECK(cudaEventRecord(start_[static_cast<std::size_t>(rep)], s), "bench"); }
  void end(int rep, cudaStream_t s) { SBN_CUDA_CHECK(cudaEventRecord(stop_[static_cast<std::size_t>(rep)], s), "bench"); }
  // Seconds of every rep (call after the stream is synchronized).
  std::vector<double> seconds() const {
    std::vector<double> out;
    for (std::size_t i = 0; i < start_.size(); ++i) {
      float ms = 0;
      SBN_CUDA_CHECK(cudaEventElapsedTime(&ms, start_[i], stop_[i]), "bench events");
      out.push_back(1e-3 * ms);
    }
    return out;
  }

 private:
  std::vector<cudaEvent_t> start_, stop_;
};

// Normal values; beyond 2^20 elements the first 2^20 repeat (a bandwidth benchmark does not care, and a
// tensor of 2^31 elements then fills in a second instead of a minute).
void fill_random(Tensor& t, std::uint32_t seed, float mean, float std) {
  constexpr std::int64_t kBlock = std::int64_t{1} << 20;
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(mean, std);
  const std::int64_t n = t.numel(), first = std::min(n, kBlock);
  for (std::int64_t i = 0; i < first; ++i) t[i] = dist(gen);
  for (std::int64_t i = first; i < n; i += kBlock)
    std::copy_n(t.data(), static_cast<std::size_t>(std::min(kBlock, n - i)), t.data() + i);
}

// Peak memory bandwidth of device `dev` in GB/s (1e9 bytes/s): memory clock (kHz) × bus width (bits) ×
// 2 (double data rate). 0 when the driver does not report them.
double peak_memory_gbs(int dev) {
  int clock_khz = 0, bus_bits = 0;
  SBN_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev), "bench memory clock");
  SBN_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev), "bench memory bus width");
  return 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) * 1e-9;
}

// --dtypes: "fp32,bf16" → {kF32, kBF16}.
std::vector<DType> parse_dtypes(const std::string& text) {
  std::vector<DType> out;
  std::stringstream ss(text);
  std::string name;
  while (std::getline(ss, name, ',')) out.push_back(cuda::parse_dtype(name));
  SBN_CHECK(!out.empty(), "--dtypes: no dtype given");
  return out;
}

// ---- 1. kernels ---------------------------------------------------------------------------------

// The device tensors and per-channel arrays of one (shape, dtype) kernel benchmark, as one BN batch of a
// layer with γ = 1, β = 0 (fixed seeds: every run times the same data).
struct DeviceKernelData {
  DeviceTensor x, dy, y, dx, copy_dst;
  BnGeometry g;
  BnLayerBuffers<DeviceArray<double>, DeviceArray<float>> bn;
  DeviceArray<double> msg, ws, count;
  DeviceArray<float> dgamma, dbeta;
  DeviceArray<int> status;
  cuda::BnWorkspace w;

  DeviceKernelData(const BenchShape& shape, DType dt, int sms, cudaStream_t s)
      : g(bn_geometry(shape.dims, shape.layout, "bench")) {
    Tensor xh(shape.dims, shape.layout), dyh(shape.dims, shape.layout);
    fill_random(xh, 1, 0.5f, 2.0f);
    fill_random(dyh, 2, 0.0f, 1.0f);
    cuda::copy_to_device(xh, dt, x, s);
    cuda::copy_to_device(dyh, dt, dy, s);
    y.resize(x.shape(), x.layout(), dt);
    dx.resize(x.shape(), x.layout(), dt);
    copy_dst.resize(x.shape(), x.layout(), dt);
    const auto CC = static_cast<std::size_t>(g.channels);
    msg.resize(static_cast<std::size_t>(bn_msg_size(g.channels)), "bench");
    ws.resize(std::max<std::size_t>(cuda::bn_workspace_doubles(g, sms), 1), "bench");
    for (auto* d : {&bn.pivot, &bn.mean, &bn.var, &bn.invstd}) d->resize(CC, "bench");
    for (auto* d : {&bn.gamma, &bn.beta, &bn.running_mean, &bn.running_var, &bn.hi, &bn.a, &bn.b, &bn.k1, &bn.k0,
                    &dgamma, &dbeta})
      d->resize(CC, "bench");
    count.resize(1, "bench");
    status.resize(1, "bench");
    cuda::copy_to_device(std::vector<double>(CC, 0.0), bn.pivot.data(), s);
    for (auto* d : {&bn.gamma, &bn.running_var}) cuda::copy_to_device(std::vector<float>(CC, 1.0f), d->data(), s);
    for (auto* d : {&bn.beta, &bn.running_mean, &dgamma, &dbeta})
      cuda::copy_to_device(std::vector<float>(CC, 0.0f), d->data(), s);
    SBN_CUDA_CHECK(cudaMemsetAsync(status.data(), 0, sizeof(int), s), "bench");
    w.data = ws.data();
    w.doubles = ws.size();
    w.sm_count = sms;
  }
  BnLayerArrays arrays() { return bn.arrays(g.channels); }
};

// Valid coefficients for the elementwise passes: one forward and backward (untimed), momentum 0.1, tags 1
// and 2.
void prime_coefficients(DeviceKernelData& d, DType dt, bool relu, cudaStream_t s) {
  auto& bn = d.bn;
  const BnCombineArgs ca = bn_combine_args(d.arrays(), 0, 1, 1, 1e-5, BnRunningUpdate::of(true, 0.1, 0));
  const BnBackwardCombineArgs ba = bn_backward_combine_args(d.arrays(), 0, 1, 2, 0);  // count: from d.count
  cuda::BnDeviceReport rep;
  rep.status = d.status.data();
  rep.count = d.count.data();
  cuda::bn_stats(d.x.data(), dt, d.g, bn.pivot.data(), 1, d.msg.data(), d.w, s);
  cuda::bn_combine(d.msg.data(), ca, cuda::BnRunningCounter{}, rep, s);
  cuda::bn_backward_reduce(d.dy.data(), d.x.data(), dt, d.g, bn.hi.data(), bn.a.data(), bn.b.data(), relu,
                           bn.mean.data(), bn.invstd.data(), 2, d.msg.data(), d.dgamma.data(), d.dbeta.data(), d.w, s);
  cuda::bn_backward_combine(d.msg.data(), ba, d.count.data(), rep, s);
}

// Median device seconds of each kernel and of the copy baseline.
struct DeviceKernelTimes {
  double copy, stats, norm, red, elemt;
};

// Times the copy and the four element kernels interleaved rep by rep, L2 flushed before every launch.
DeviceKernelTimes time_kernels(const BenchOptions& opt, DeviceKernelData& d, DType dt, DeviceArray<char>& flush,
                               int sms, cudaStream_t s) {
  const int reps = opt.reps;
  const BnGeometry& g = d.g;
  auto& bn = d.bn;
  EventTimer t_copy(reps), t_stats(reps), t_norm(reps), t_red(reps), t_elemt(reps);
  auto timed = [&](EventTimer* t, int r, const std::function<void()>& fn) {
    // Evict x, dy from L2 (untimed): the kernels must read HBM, as in a real step of a large model.
    SBN_CUDA_CHECK(cudaMemsetAsync(flush.data(), r & 0xff, flush.size(), s), "bench L2 flush");
    if (t) t->begin(r, s);
    fn();
    if (t) t->end(r, s);
  };
  for (int r = -opt.warmup; r < reps; ++r) {
    const bool keep = r >= 0;
    timed(keep ? &t_copy : nullptr, r, [&] {
      SBN_CUDA_CHECK(cudaMemcpyAsync(d.copy_dst.data(), d.x.data(), d.x.bytes(), cudaMemcpyDeviceToDevice, s),
                     "bench copy");
    });
    timed(keep ? &t_stats : nullptr, r,
          [&] { cuda::bn_stats(d.x.data(), dt, g, bn.pivot.data(), 1, d.msg.data(), d.w, s); });
    timed(keep ? &t_norm : nullptr, r, [&] {
      cuda::bn_normalize(d.x.data(), dt, g, bn.hi.data(), bn.a.data(), bn.b.data(), opt.relu, d.y.data(), sms, s);
    });
    timed(keep ? &t_red : nullptr, r, [&] {
      cuda::bn_backward_reduce(d.dy.data(), d.x.data(), dt, g, bn.hi.data(), bn.a.data(), bn.b.data(), opt.relu,
                               bn.mean.data(), bn.invstd.data(), 2, d.msg.data(), d.dgamma.data(), d.dbeta.data(), d.w,
                               s);
    });
    timed(keep ? &t_elemt : nullptr, r, [&] {
      cuda::bn_backward_elemt(d.dy.data(), d.x.data(), dt, g, bn.hi.data(), bn.a.data(), bn.b.data(), opt.relu,
                              bn.k1.data(), bn.k0.data(), d.dx.data(), sms, s);
    });
  }
  SBN_CUDA_CHECK(cudaStreamSynchronize(s), "bench");
  auto med = [](const EventTimer& t) {
    std::vector<double> v = t.seconds();
    return median(v);
  };
  return {med(t_copy), med(t_stats), med(t_norm), med(t_red), med(t_elemt)};
}

// The table's header lines: the device, the build, what is counted.
void log_kernel_header(const BenchOptions& opt, int dev, int sms, int l2, double peak, const Log0& log) {
  cudaDeviceProp prop{};
  SBN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev), "bench");
  log("# CUDA kernels on device %d (%s, %d SMs, L2 %.0f MB, sm_%d%d, peak memory bandwidth %.0f GB/s), built for "
      "%s; median of %d reps after %d warm-up; relu %s\n",
      dev, prop.name, sms, l2 / 1048576.0, prop.major, prop.minor, peak, SBN_CUDA_ARCHITECTURES, opt.reps,
      opt.warmup, opt.relu ? "fused" : "off");
  log("# bytes that must move per element (E = element size): stats E (read x), normalize 2E (read x, write y),\n"
      "# bwd_reduce 2E (read x, dy), bwd_elemt 3E (read x, dy, write dx); copy 2E (read + write). L2 is\n"
      "# flushed before every timed launch. GB/s = 1e9 bytes/s; %% = of the copy's bandwidth; pk = %% of peak.\n");
  log("%-24s %5s %9s %9s %9s %9s %9s %5s %5s %5s %5s %5s %5s %5s %5s %5s\n", "#shape", "dtype", "stats",
      "normalize", "bwd_red", "bwd_elemt", "copy", "st%", "no%", "br%", "be%", "stpk", "nopk", "brpk", "bepk", "cppk");
}

void kernel_bench(const BenchOptions& opt, cudaStream_t s, BenchReport& report, const Log0& log) {
  int dev = 0, l2 = 0;
  SBN_CUDA_CHECK(cudaGetDevice(&dev), "bench");
  SBN_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev), "bench");
  const int sms = cuda::current_sm_count();
  const double peak = peak_memory_gbs(dev);
  auto pk = [&](double gbs) { return peak > 0 ? 100 * gbs / peak : 0.0; };
  log_kernel_header(opt, dev, sms, l2, peak, log);
  DeviceArray<char> flush;
  flush.resize(static_cast<std::size_t>(std::max(l2, 1 << 20)) * 2, "bench L2 flush");
  for (const BenchShape& shape : opt.shapes) {
    for (DType dt : parse_dtypes(opt.dtypes)) {
      DeviceKernelData d(shape, dt, sms, s);
      prime_coefficients(d, dt, opt.relu, s);
      const DeviceKernelTimes t = time_kernels(opt, d, dt, flush, sms, s);
      const double n_bytes = static_cast<double>(d.x.bytes());
      const double copy_bw = 2 * n_bytes / t.copy * 1e-9;
      const double stats_bw = n_bytes / t.stats * 1e-9;
      const double norm_bw = 2 * n_bytes / t.norm * 1e-9;
      const double red_bw = 2 * n_bytes / t.red * 1e-9;
      const double elemt_bw = 3 * n_bytes / t.elemt * 1e-9;
      log("%-24s %5s %9.1f %9.1f %9.1f %9.1f %9.1f %5.0f %5.0f %5.0f %5.0f %5.0f %5.0f %5.0f %5.0f %5.0f\n",
          shape.str().c_str(), cuda::dtype_name(dt), stats_bw, norm_bw, red_bw, elemt_bw, copy_bw,
          100 * stats_bw / copy_bw, 100 * norm_bw / copy_bw, 100 * red_bw / copy_bw, 100 * elemt_bw / copy_bw,
          pk(stats_bw), pk(norm_bw), pk(red_bw), pk(elemt_bw), pk(copy_bw));
      report.json.push_back(
          "{\"kind\":\"kernel\",\"device\":\"cuda\",\"shape\":\"" + shape.str() + "\",\"dtype\":\"" +
          cuda::dtype_name(dt) + "\",\"relu\":" + (opt.relu ? "true" : "false") + ",\"stats_gbs\":" +
          fmt("%.2f", stats_bw) + ",\"normalize_gbs\":" + fmt("%.2f", norm_bw) + ",\"bwd_reduce_gbs\":" +
          fmt("%.2f", red_bw) + ",\"bwd_elemt_gbs\":" + fmt("%.2f", elemt_bw) + ",\"copy_gbs\":" + fmt("%.2f", copy_bw) +
          ",\"stats_ms\":" + fmt("%.4f", t.stats * 1e3) + ",\"normalize_ms\":" + fmt("%.4f", t.norm * 1e3) +
          ",\"bwd_reduce_ms\":" + fmt("%.4f", t.red * 1e3) + ",\"bwd_elemt_ms\":" + fmt("%.4f", t.elemt * 1e3) +
          ",\"peak_gbs\":" + fmt("%.1f", peak) + ",\"stats_pct_peak\":" + fmt("%.1f", pk(stats_bw)) +
          ",\"normalize_pct_peak\":" + fmt("%.1f", pk(norm_bw)) + ",\"bwd_reduce_pct_peak\":" +
          fmt("%.1f", pk(red_bw)) + ",\"bwd_elemt_pct_peak\":" + fmt("%.1f", pk(elemt_bw)) +
          ",\"copy_pct_peak\":" + fmt("%.1f", pk(copy_bw)) + ",\"elements\":" + std::to_string(d.x.numel()) +
          ",\"reps\":" + std::to_string(opt.reps) + "}");
    }
  }
}

// ---- 2. all-reduce latency ----------------------------------------------------------------------

// This rank's median device seconds of opt.reps back-to-back all-reduces of `count` doubles (after
// opt.warmup untimed ones) on the communicator's stream, and the slowest rank's median. Collective.
std::pair<double, double> time_allreduce(const BenchOptions& opt, cuda::DeviceCommunicator& comm, Communicator& world,
                                         double* buf, std::size_t count) {
  EventTimer t(opt.reps);
  comm.synchronize(comm.stream(), "bench.allreduce");
  world.barrier("bench.allreduce");
  for (int r = -opt.warmup; r < opt.reps; ++r) {
    if (r >= 0) t.begin(r, comm.stream());
    comm.allreduce_sum(buf, count, "bench.allreduce", comm.stream());
    if (r >= 0) t.end(r, comm.stream());
  }
  comm.synchronize(comm.stream(), "bench.allreduce");
  std::vector<double> secs = t.seconds();
  const double mine = median(secs);
  std::vector<double> all(static_cast<std::size_t>(world.size()), 0.0);
  all[static_cast<std::size_t>(world.rank())] = mine;
  world.allreduce_sum(all.data(), all.size(), "bench.allreduce.gather");
  return {mine, *std::max_element(all.begin(), all.end())};
}

void allreduce_bench(const BenchOptions& opt, cuda::DeviceCommunicator& comm, Communicator& world,
                     BenchReport& report, const Log0& log) {
  const int P = comm.size();
  log("# %s all-reduce of SyncBN messages (3 + 2C doubles) over %d rank(s): device time per call (stream\n"
      "# reaches the call -> call done, includes waiting for the slowest rank), median of %d back-to-back calls\n",
      opt.comm == "mpi" ? "staged (MPI)" : "NCCL", P, opt.reps);
  log("%-8s %9s %10s %10s\n", "#C", "bytes", "median_us", "max_rank_us");
  DeviceArray<double> buf;
  buf.resize(static_cast<std::size_t>(bn_msg_size(2048)), "bench all-reduce buffer");
  SBN_CUDA_CHECK(cudaMemsetAsync(buf.data(), 0, buf.size() * sizeof(double), comm.stream()), "bench");
  for (std::int64_t C = 64; C <= 2048; C *= 2) {
    const auto count = static_cast<std::size_t>(bn_msg_size(C));
    const auto [mine, worst] = time_allreduce(opt, comm, world, buf.data(), count);
    log("%-8lld %9zu %10.1f %10.1f\n", static_cast<long long>(C), count * sizeof(double), mine * 1e6, worst * 1e6);
    report.json.push_back("{\"kind\":\"allreduce\",\"device\":\"cuda\",\"comm\":\"" + opt.comm +
                          "\",\"channels\":" + std::to_string(C) + ",\"bytes\":" +
                          std::to_string(count * sizeof(double)) + ",\"world_size\":" + std::to_string(P) +
                          ",\"median_us\":" + fmt("%.2f", mine * 1e6) + ",\"max_rank_us\":" +
                          fmt("%.2f", worst * 1e6) + "}");
  }
}

// ---- 3. layer -----------------------------------------------------------------------------------

// Each shape's SyncBN exchange (half of the layer's communication: one all-reduce per direction) beside a
// bare all-reduce of the same message (3 + 2C doubles) on the same communicator: the difference is what
// the layer adds around its collective (launch order, events, waiting for the step's kernels).
struct ExchangeRow {
  std::int64_t channels;
  double exchange_s, bare_s, bare_max_s;
};

void log_exchanges(const BenchOptions& opt, const std::vector<ExchangeRow>& rows, int P, BenchReport& report,
                   const Log0& log) {
  log("\n# SyncBN exchange (the layer's comm / 2, median) beside a bare %s all-reduce of the same 3 + 2C doubles\n",
      opt.comm == "mpi" ? "staged (MPI)" : "NCCL");
  log("%-8s %9s %12s %10s %12s\n", "#C", "bytes", "exchange_us", "bare_us", "bare_max_us");
  for (const ExchangeRow& r : rows) {
    const auto bytes = static_cast<std::size_t>(bn_msg_size(r.channels)) * sizeof(double);
    log("%-8lld %9zu %12.1f %10.1f %12.1f\n", static_cast<long long>(r.channels), bytes, r.exchange_s * 1e6,
        r.bare_s * 1e6, r.bare_max_s * 1e6);
    report.json.push_back("{\"kind\":\"exchange\",\"device\":\"cuda\",\"comm\":\"" + opt.comm +
                          "\",\"channels\":" + std::to_string(r.channels) + ",\"bytes\":" + std::to_string(bytes) +
                          ",\"world_size\":" + std::to_string(P) + ",\"exchange_us\":" +
                          fmt("%.2f", r.exchange_s * 1e6) + ",\"bare_allreduce_us\":" + fmt("%.2f", r.bare_s * 1e6) +
                          ",\"bare_allreduce_max_us\":" + fmt("%.2f", r.bare_max_s * 1e6) + "}");
  }
}

void layer_bench(const BenchOptions& opt, cuda::DeviceCommunicator& comm, Communicator& world, cudaStream_t s,
                 BenchReport& report, const Log0& log) {
  const int P = world.size();
  log("# CudaSyncBatchNorm, mode sync over %d rank(s), fp32, training forward+backward, device time, median of %d\n"
      "# reps; comm = inside the layer's two all-reduces (includes waiting for the slowest rank);\n"
      "# local = the same layer without communication\n",
      P, opt.reps);
  log("%-20s %6s %9s %10s %9s %9s %9s\n", "#shape(per rank)", "ranks", "total_ms", "compute_ms", "comm_ms", "comm_max",
      "local_ms");
  std::vector<ExchangeRow> exchanges;
  for (const BenchShape& shape : opt.shapes) {
    Tensor xh(shape.dims, shape.layout), dyh(shape.dims, shape.layout);
    fill_random(xh, 10 + static_cast<std::uint32_t>(world.rank()), 0.5f, 2.0f);
    fill_random(dyh, 20 + static_cast<std::uint32_t>(world.rank()), 0.0f, 1.0f);
    DeviceTensor x, dy, y, dx;
    cuda::copy_to_device(xh, DType::kF32, x, s);
    cuda::copy_to_device(dyh, DType::kF32, dy, s);
    BatchNormOptions bo;
    bo.channels = shape.dims[1];
    bo.fuse_relu = opt.relu;
    SyncGroup group(comm, parse_sync_mode("sync"));
    cuda::CudaSyncBatchNorm synced("bench.sync", bo, &group, s);
    cuda::CudaSyncBatchNorm local("bench.local", bo, nullptr, s);
    EventTimer t_sync(opt.reps), t_local(opt.reps);
    std::vector<double> comm_s;
    for (int r = -opt.warmup; r < opt.reps; ++r) {
      comm.synchronize(s, "bench.layer");
      world.barrier("bench.layer");
      synced.reset_comm_seconds();
      if (r >= 0) t_sync.begin(r, s);
      synced.forward(x, y, true);
      synced.backward(x, dy, dx);
      if (r >= 0) t_sync.end(r, s);
      if (r >= 0) t_local.begin(r, s);
      local.forward(x, y, true);
      local.backward(x, dy, dx);
      if (r >= 0) t_local.end(r, s);
      synced.check();
      local.check();
      if (r >= 0) comm_s.push_back(synced.comm_seconds());
    }
    std::vector<double> tot = t_sync.seconds(), loc = t_local.seconds();
    const double comm_median = median(comm_s);
    report_layer(shape, "cuda", {median(tot), comm_median, median(loc)}, world, report, log);
    DeviceArray<double> buf;
    const auto count = static_cast<std::size_t>(bn_msg_size(bo.channels));
    buf.resize(count, "bench bare all-reduce buffer");
    SBN_CUDA_CHECK(cudaMemsetAsync(buf.data(), 0, count * sizeof(double), comm.stream()), "bench");
    const auto [bare, bare_max] = time_allreduce(opt, comm, world, buf.data(), count);
    exchanges.push_back({bo.channels, comm_median / 2, bare, bare_max});
  }
  log_exchanges(opt, exchanges, P, report, log);
}

}  // namespace

void run_cuda_bench(const BenchOptions& opt, Communicator& world, BenchReport& report) {
  const Log0 log(world);
  auto* mpi = dynamic_cast<MpiCommunicator*>(&world);
  SBN_CHECK(mpi != nullptr, "--device cuda: the benchmark needs the MPI world communicator to bootstrap NCCL");
  // Agree first (the same selection NcclCommunicator makes, device_select.h), so that without a device, or
  // with two ranks on one device, rank 0 prints one clear line and every rank exits 1.
  // --comm mpi: the staged communicator, whose ranks may share a device (local rank mod devices).
  std::unique_ptr<cuda::DeviceCommunicator> comm;
  if (opt.comm == "mpi") {
    run_agreed(*mpi, "bench.device", [&] { cuda::use_local_device(*mpi); });
    comm = std::make_unique<cuda::StagedCommunicator>(*mpi);
  } else {
    const cuda::NcclOptions nccl_options = cuda::NcclOptions::from_env();
    cuda::select_device(*mpi, nccl_options);
    comm = std::make_unique<cuda::NcclCommunicator>(*mpi, nccl_options);
  }
  cudaStream_t s = nullptr;
  SBN_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "bench stream");
  std::unique_ptr<CUstream_st, decltype(&cudaStreamDestroy)> stream_guard(s, &cudaStreamDestroy);
  if (opt.kernels) kernel_bench(opt, s, report, log);
  if (opt.layer) {
    if (opt.kernels) log("\n");
    allreduce_bench(opt, *comm, world, report, log);
    log("\n");
    layer_bench(opt, *comm, world, s, report, log);
  }
}

}  // namespace syncbn::bench
