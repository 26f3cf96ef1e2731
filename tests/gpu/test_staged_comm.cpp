// StagedCommunicator (staged_communicator.h) with host-memory stand-ins (host_staging: "device" buffers
// are host memory, copies are memcpy), so it runs at np 1..4 without a GPU and never skips. The oracle is
// MpiCommunicator: the staged sums must equal its sums bit for bit (same MPI reduction, same inputs).
// The last two tests need a device on every rank (ranks share it: that is the point) and skip without.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "syncbn/cuda/check.h"
#include "syncbn/cuda/staged_communicator.h"
#include "syncbn/cuda/sync_batchnorm.h"
#include "syncbn/error.h"
#include "syncbn/mpi_communicator.h"
#include "syncbn/sync_batchnorm.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

using cuda::StagedCommunicator;

MpiCommunicator& mpi_world() { return dynamic_cast<MpiCommunicator&>(world()); }

std::unique_ptr<StagedCommunicator> make_staged() {
  return std::make_unique<StagedCommunicator>(mpi_world(), cuda::host_staging());
}

// Rank-dependent values with full mantissas, so that a different summation would show in the bits.
template <class T>
std::vector<T> rank_values(std::size_t n, int rank, unsigned salt) {
  std::mt19937_64 gen(1000003u * static_cast<unsigned>(rank + 1) + salt);
  std::uniform_real_distribution<double> u(-3.0, 3.0);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(u(gen));
  return v;
}

// Staged sum (4-argument and Communicator-interface overloads) vs the MPI sum of the same input.
template <class T>
bool staged_equals_mpi(StagedCommunicator& staged, Communicator& mpi, std::size_t n, unsigned salt) {
  const std::vector<T> in = rank_values<T>(n, mpi.rank(), salt);
  std::vector<T> ref = in, dev = in, dev3 = in;
  mpi.allreduce_sum(ref.data(), n, "test.ref");
  staged.allreduce_sum(dev.data(), n, "test.staged", staged.stream());
  staged.allreduce_sum(dev3.data(), n, "test.staged3");
  return n == 0 || (std::memcmp(ref.data(), dev.data(), n * sizeof(T)) == 0 &&
                    std::memcmp(ref.data(), dev3.data(), n * sizeof(T)) == 0);
}

// One error message per rank from `f`, or "" when it did not throw.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(StagedComm, SumsEqualMpiBitwise) {
  auto staged = make_staged();
  EXPECT_EQ(staged->size(), world().size());
  EXPECT_EQ(staged->rank(), world().rank());
  EXPECT_EQ(staged->memory(), MemorySpace::kDevice);
  EXPECT_EQ(staged->device(), -1);
  bool ok = true;
  unsigned salt = 0;
  for (const std::size_t n : std::vector<std::size_t>{0, 1, 3, 64, 1001, 4099}) {
    ok &= staged_equals_mpi<double>(*staged, world(), n, ++salt);
    ok &= staged_equals_mpi<float>(*staged, world(), n, ++salt);
  }
  EXPECT_TRUE(ok);
  // Two sums per staged_equals_mpi call on the staged communicator, each one collective.
  EXPECT_EQ(staged->stats().allreduces, 24u);
  EXPECT_EQ(staged->stats().collectives, 24u);
}

TEST(StagedComm, BroadcastAndHostOperations) {
  auto staged = make_staged();
  const int root = staged->size() - 1;
  char text[32] = {};
  if (staged->rank() == root) std::snprintf(text, sizeof text, "from %d", root);
  staged->broadcast(text, sizeof text, root, "test.bcast");
  EXPECT_EQ(std::string(text), "from " + std::to_string(root));
  staged->barrier("test.barrier");
  EXPECT_TRUE(staged->any(staged->rank() == root, "test.any"));
  EXPECT_TRUE(staged->all_equal(42, "test.eq"));
  EXPECT_EQ(staged->stats().collectives, 4u);
}

// sync:2 groups: consecutive pairs (the last one short at odd np), as SyncGroup splits.
TEST(StagedComm, SplitIntoGroupsSumsWithinEachGroup) {
  auto staged = make_staged();
  const int r = world().rank();
  auto sub = staged->split(r / 2, r, "test.split");
  auto* group = dynamic_cast<StagedCommunicator*>(sub.get());
  ASSERT_NE(group, nullptr);  // local: every rank gets the same type
  auto mpi_sub = world().split(r / 2, r, "test.split.ref");
  EXPECT_EQ(group->size(), mpi_sub->size());
  EXPECT_EQ(group->rank(), r % 2);
  EXPECT_EQ(group->timeout(), staged->timeout());
  bool ok = true;
  for (const std::size_t n : std::vector<std::size_t>{0, 5, 300}) {
    ok &= staged_equals_mpi<double>(*group, *mpi_sub, n, 7u + static_cast<unsigned>(n));
    ok &= staged_equals_mpi<float>(*group, *mpi_sub, n, 9u + static_cast<unsigned>(n));
  }
  EXPECT_TRUE(ok);
}

// Different lengths on the ranks: one error on EVERY rank, naming the operation and the label, no hang;
// the communicator stays usable (the mismatch is found before the data moves).
TEST(StagedComm, LengthMismatchFailsOnEveryRank) {
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto staged = make_staged();
  staged->set_timeout(30.0);
  const bool odd = world().rank() == world().size() - 1;
  std::vector<double> d(odd ? 9 : 8, 1.0);
  const std::string msg = error_of([&] { staged->allreduce_sum(d.data(), d.size(), "bn1.forward", nullptr); });
  EXPECT_NE(msg.find("allreduce_sum(double) 'bn1.forward'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not all in the same collective"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[rank " + std::to_string(world().rank()) + "@"), std::string::npos) << msg;
  std::vector<float> f(3, 1.0f);
  const std::string type_msg = error_of([&] {
    if (odd) staged->allreduce_sum(f.data(), f.size(), "bn2.backward");
    else staged->allreduce_sum(d.data(), 3, "bn2.backward");
  });
  EXPECT_NE(type_msg.find("'bn2.backward'"), std::string::npos) << type_msg;
  d.assign(4, 1.0);
  staged->allreduce_sum(d.data(), d.size(), "after");
  EXPECT_EQ(d[3], static_cast<double>(world().size()));
}

// A missing rank: the others' staged collective times out with the label instead of hanging.
TEST(StagedComm, MissingRankTimesOutWithTheLabel) {
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto staged = make_staged();
  const double timeout = 1.0;
  staged->set_timeout(timeout);
  const bool late = world().rank() == world().size() - 1;
  if (late) std::this_thread::sleep_for(std::chrono::duration<double>(3 * timeout));
  double v = 1;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string msg = error_of([&] { staged->allreduce_sum(&v, 1, "grad.bucket0", nullptr); });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!late) {
    EXPECT_NE(msg.find("collective timeout"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'grad.bucket0'"), std::string::npos) << msg;
    EXPECT_LT(secs, timeout + 2.0);
  }
  world().barrier("test.staged.timeout.done");
}


// ---- with a device ----------------------------------------------------------------------------

// True on every rank iff every rank sees a device (then made current: local rank mod devices).
bool all_have_device() {
  std::string why;
  const bool none = world().any(cuda::visible_devices(&why) == 0, "test.device");
  if (!none) cuda::use_local_device(world());
  return !none;
}

TEST(StagedComm, DeviceBuffersThroughPinnedMemory) {
  if (!all_have_device()) GTEST_SKIP() << "no CUDA device on every rank";
  StagedCommunicator staged(mpi_world());
  EXPECT_GE(staged.device(), 0);
  const std::vector<double> in = rank_values<double>(777, world().rank(), 5u);
  std::vector<double> ref = in;
  world().allreduce_sum(ref.data(), ref.size(), "test.ref");
  cuda::DeviceArray<double> d;
  d.resize(in.size(), "test buffer", staged.stream());
  cuda::copy_to_device(in, d.data(), staged.stream());
  staged.allreduce_sum(d.data(), in.size(), "test.device");  // device pointer detected: staged
  const std::vector<double> got = cuda::copy_to_host(d.data(), in.size(), staged.stream());
  EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(double)), 0);
}

// The multi-rank SyncBN path on one GPU: uneven local batches (rank 0 empty), CudaSyncBatchNorm over a
// staged group vs the CPU layer over MPI on the same global batch.
TEST(StagedComm, CudaSyncBatchNormOverStagedGroup) {
  if (!all_have_device()) GTEST_SKIP() << "no CUDA device on every rank";
  const int r = world().rank();
  const auto local_n = [](int q) -> std::int64_t { return q == 1 ? 0 : q + 1; };  // rank 1 empty
  std::int64_t first = 0;
  for (int q = 0; q < r; ++q) first += local_n(q);
  const std::int64_t C = 3, S = 4, n = local_n(r);
  const Tensor x = to_tensor(make_data(11, first, n, C, S, 0.5, 2.0), {n, C, S}, Layout::kPlanar);
  BatchNormOptions opt;
  opt.channels = C;
  const SyncMode mode = parse_sync_mode("sync");
  SyncGroup cpu_group(world(), mode);
  SyncBatchNorm cpu("bn", opt, &cpu_group);
  Tensor y_ref;
  cpu.forward(x, y_ref, true);

  StagedCommunicator staged(mpi_world());
  SyncGroup gpu_group(staged, mode);
  cuda::CudaSyncBatchNorm gpu("bn", opt, &gpu_group, staged.stream());
  cuda::DeviceTensor dx, dy;
  cuda::copy_to_device(x, cuda::DType::kF32, dx, staged.stream());
  gpu.forward(dx, dy, true);
  gpu.check();
  const Tensor y = cuda::copy_to_host(dy, staged.stream());
  bool ok = y.numel() == y_ref.numel();
  for (std::int64_t i = 0; ok && i < y.numel(); ++i) ok = std::abs(y.data()[i] - y_ref.data()[i]) <= 1e-5;
  if (n > 0) ok &= gpu.last_group_count() == cpu.last_group_count();
  EXPECT_FALSE(world().any(!ok, "test.layer")) << "rank " << r << " differs from the CPU layer";
}

}  // namespace
}  // namespace syncbn::test
