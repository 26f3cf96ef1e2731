// syncbn-bench internals shared by the CPU benchmark (syncbn_bench.cpp) and the CUDA one
// (bench_cuda.cpp, CUDA builds only).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "syncbn/communicator.h"
#include "syncbn/tensor.h"

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
};

// Collected JSON lines (one object per line) and the table printed as the benchmark runs.
struct BenchReport {
  std::vector<std::string> json;
};

// CUDA benchmark (kernels vs device copy, NCCL all-reduce latency, layer split); throws in CPU builds.
void run_cuda_bench(const BenchOptions& opt, Communicator& world, BenchReport& report);

}  // namespace syncbn::bench
