// Helpers of the GPU suite (tests/gpu): agreeing across ranks on whether a usable device exists, the
// skip-or-fail policy, and host emulation of the activation dtypes.
//
// Policy: without a usable CUDA device every GPU test SKIPs with the reason ("no CUDA device: ..."), on
// every rank alike (the decision is agreed over the world before any rank returns, so no rank is left
// in a collective); with SBN_REQUIRE_GPU=1 in the environment the same situation FAILs instead (for CI
// machines that do have GPUs).
#pragma once

#include <string>
#include <vector>

#include "syncbn/communicator.h"
#include "syncbn/cuda/dtype.h"

namespace syncbn::test {

// "" when every rank can run GPU tests, else (on every rank) why not. Collective over `world`.
// device_per_rank: the test needs a device of its own per rank of a node (NCCL refuses to put two
// ranks of one communicator on one GPU): the device is then chosen as the applications choose it
// (cuda::select_device: by UUID across the node's ranks, so ranks with one device each use their own).
// Otherwise ranks may share one: local_rank % devices. On success the current device is set.
std::string gpu_unavailable(Communicator& world, bool device_per_rank);

// SBN_REQUIRE_GPU=1: a missing GPU is a failure, not a skip.
bool gpu_required();

// Values as the device holds them in `dtype` (fp32 values rounded to nearest-even bf16/fp16).
std::vector<double> round_to_dtype(const std::vector<double>& v, cuda::DType dtype);

}  // namespace syncbn::test

// First statement of every GPU test body: skips (or fails under SBN_REQUIRE_GPU=1) on every rank alike.
#define SBN_GPU_TEST_PRELUDE(world, device_per_rank)                                              \
  do {                                                                                            \
    const std::string sbn_gpu_why_ = ::syncbn::test::gpu_unavailable((world), (device_per_rank)); \
    if (!sbn_gpu_why_.empty()) {                                                                  \
      if (::syncbn::test::gpu_required()) FAIL() << "SBN_REQUIRE_GPU=1 but " << sbn_gpu_why_;     \
      GTEST_SKIP() << sbn_gpu_why_;                                                               \
    }                                                                                             \
  } while (0)
