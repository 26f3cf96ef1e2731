// Test helpers: an independent double-precision BatchNorm reference written plainly (loops over the
// logical (N, C, S) index, two-pass statistics in long double), deterministic data, layout packing,
// tolerance comparison, and MPI-safe assertions.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "syncbn/communicator.h"
#include "syncbn/tensor.h"

namespace syncbn::test {

// The world communicator of the test process (created by mpi_test_main.cpp).
Communicator& world();

// Logical (N, C, S) data: value of sample n, channel c, position s as a pure function of the seed and
// the GLOBAL sample index, so every rank can build any slice of the same global batch.
std::vector<double> make_data(std::uint64_t seed, std::int64_t first_sample, std::int64_t samples,
                              std::int64_t C, std::int64_t S, double mean, double std);

// Packs logical (N, C, S) doubles into a fp32 tensor of `shape` (S = product of shape[2:]) in `layout`.
Tensor to_tensor(const std::vector<double>& logical, const std::vector<std::int64_t>& shape, Layout layout);
// And back to logical order, as doubles.
std::vector<double> from_tensor(const Tensor& t);
// The data a fp32 tensor actually holds: the logical values rounded to float (the reference's input).
std::vector<double> round_to_float(const std::vector<double>& v);

struct RefConfig {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;
  std::int64_t batches_tracked_before = 0;  // for momentum = nullopt
  bool relu = false;
  bool track_running_stats = true;
};

struct RefResult {
  std::vector<double> y, dx;           // logical (N, C, S)
  std::vector<double> mean, var;       // batch mean, biased variance (C)
  std::vector<double> invstd;          // (C)
  std::vector<double> running_mean, running_var;  // after the update (C)
  std::vector<double> dgamma, dbeta;   // (C)
};

// Training-mode BatchNorm forward and backward over the whole batch x (logical N, C, S).
RefResult reference_bn(const std::vector<double>& x, const std::vector<double>& dy, std::int64_t N,
                       std::int64_t C, std::int64_t S, const std::vector<double>& gamma,
                       const std::vector<double>& beta, const std::vector<double>& running_mean0,
                       const std::vector<double>& running_var0, const RefConfig& cfg);

// |got − ref| ≤ atol + rtol·|ref| elementwise, with atol = atol_scale·max|ref|. On failure the message
// has the max error and the first mismatch.
::testing::AssertionResult near(const std::vector<double>& got, const std::vector<double>& ref, double rtol,
                                double atol_scale, const std::string& what);

// Samples per rank for a world of P ranks: uneven, and with an empty rank where P ≥ 3 (7/1/0/5 at 4).
std::vector<std::int64_t> uneven_split(int P);

// For MPI tests: never ASSERT before a collective. Combine each rank's verdict first; returns true on
// every rank iff it held on every rank.
bool all_ranks(Communicator& comm, bool ok);

}  // namespace syncbn::test
