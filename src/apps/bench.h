// syncbn-bench internals shared by the CPU benchmark (syncbn_bench.cpp) and the CUDA one
// (bench_cuda.cpp, CUDA builds only).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "syncbn/communicator.h"
#include "syncbn/tensor.h"

namespace syncbn {
class Log0;
}

namespace syncbn::bench {

struct BenchShape {
  std::vector<std::int64_t> dims;  // logical (N, C[, H, W])
  Layout layout = Layout::kPlanar;
  std::string str() const;
};

struct BenchOptions {
  std::vector<BenchShape> shapes;
  int reps = 30;
  int warmup = 5;
  bool relu = false;
  bool kernels = true;  // per-kernel bandwidth table
  bool layer = true;    // one SyncBN layer at the world size, compute vs communication
  std::string json_path;  // JSON lines go here when set
  std::string comm = "nccl";                // --device cuda: nccl | mpi (the staged communicator)
  std::string dtypes = "fp32,bf16,fp16";    // --device cuda: activation dtypes of the kernel table
  bool convs = false;                       // --convs: only the convnet's oneDNN convolution table
  std::int64_t conv_batch = 64;             // its batch (the throughput benchmark's, per process)
};

// Collected JSON lines (one object per line) and the table printed as the benchmark runs.
struct BenchReport {
  std::vector<std::string> json;
};

// Medians of one shape's layer benchmark on this rank, in seconds: the synced layer's forward+backward,
// the part of it inside its all-reduces, and the same layer without communication.
struct LayerTimes {
  double total = 0, comm = 0, local = 0;
};

// The layer table's row for `shape` (communication maximum over the ranks) and one JSON line per rank
// (device "cpu" or "cuda"). Collective over `world`.
void report_layer(const BenchShape& shape, const char* device, const LayerTimes& mine, Communicator& world,
                  BenchReport& report, const Log0& log);

// The default convnet's fp32 3x3 convolutions on oneDNN, NHWC (as the trainer runs them) vs oneDNN's
// own layout, forward / backward-data / backward-weights (bench_convs.cpp). Per rank, no collectives.
void conv_bench(const BenchOptions& opt, BenchReport& report, const Log0& log);

// CUDA benchmark (kernels vs device copy, NCCL all-reduce latency, layer split); throws in CPU builds.
void run_cuda_bench(const BenchOptions& opt, Communicator& world, BenchReport& report);

}  // namespace syncbn::bench
