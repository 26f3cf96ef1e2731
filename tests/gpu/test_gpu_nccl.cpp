// NcclCommunicator at np = 1..4, with MpiCommunicator as the oracle: sums exact by construction
// (nccl-tests style: small integers sum exactly in any order), device and host buffers, broadcast,
// agreement helpers, split into groups (same ranks as MPI's split), statistics, and the collective
// timeout of the watchdog. Skips without one CUDA device per rank (gpu_test_util.h).
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "gpu_test_util.h"
#include "syncbn/app.h"
#include "syncbn/bn_math.h"
#include "syncbn/cuda/device.h"
#include "syncbn/cuda/nccl_communicator.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

using cuda::DeviceArray;
using cuda::NcclCommunicator;

MpiCommunicator& mpi_world() { return dynamic_cast<MpiCommunicator&>(world()); }

std::unique_ptr<NcclCommunicator> make_nccl() {
  cuda::NcclOptions opt;  // no sharing: the prelude made sure every rank has a device
  return std::make_unique<NcclCommunicator>(mpi_world(), opt);
}

template <class T>
std::vector<T> device_sum(NcclCommunicator& c, const std::vector<T>& v, const char* label) {
  DeviceArray<T> d;
  d.resize(std::max<std::size_t>(v.size(), 1), "test buffer");
  cuda::copy_to_device(v, d.data(), c.stream());
  c.allreduce_sum(d.data(), v.size(), label);
  c.synchronize(label);
  return cuda::copy_to_host(d.data(), v.size(), c.stream());
}

// Start-up without a device: every rank fails alike (an AgreedError, so main() reports it once and exits
// cleanly) with the reason. Runs where there is NO device; elsewhere the tests below cover start-up.
TEST(NcclCommunicator, WithoutDeviceEveryRankGetsTheSameClearError) {
  const bool has_device = cuda::visible_devices(nullptr) > 0;
  if (world().any(has_device, "test.has_device")) GTEST_SKIP() << "a CUDA device is visible: start-up is covered below";
  std::string msg;
  bool agreed = false;
  try {
    NcclCommunicator c(mpi_world(), cuda::NcclOptions{});
  } catch (const AgreedError& e) {
    agreed = true;
    msg = e.what();
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_TRUE(agreed) << "not an agreed error: " << msg;
  EXPECT_NE(msg.find("no CUDA device visible on " + world().host()), std::string::npos) << msg;
  EXPECT_TRUE(all_ranks(world(), agreed));
}

TEST(NcclCommunicator, RanksMatchMpiAndDevicesAreLocalRanks) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto c = make_nccl();
  EXPECT_EQ(c->rank(), world().rank());
  EXPECT_EQ(c->size(), world().size());
  EXPECT_EQ(c->local_rank(), world().local_rank());
  EXPECT_EQ(c->host(), world().host());
  EXPECT_EQ(c->memory(), MemorySpace::kDevice);
  EXPECT_EQ(c->device(), world().local_rank());
}

TEST(NcclCommunicator, DeviceSumsEqualMpiSumsExactly) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto c = make_nccl();
  const int r = world().rank();
  std::vector<double> d(1001);
  std::vector<float> f(77);
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<double>(r + 1) * static_cast<double>(i);
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>((r + 1) * static_cast<int>(i % 7));
  std::vector<double> d_mpi = d;
  std::vector<float> f_mpi = f;
  world().allreduce_sum(d_mpi.data(), d_mpi.size(), "test.mpi.d");
  world().allreduce_sum(f_mpi.data(), f_mpi.size(), "test.mpi.f");
  EXPECT_EQ(device_sum(*c, d, "test.d"), d_mpi);
  EXPECT_EQ(device_sum(*c, f, "test.f"), f_mpi);
  // SyncBN's message sizes: 3 + 2C doubles.
  for (std::int64_t C : {64, 2048}) {
    std::vector<double> m(static_cast<std::size_t>(bn_msg_size(C)), static_cast<double>(r));
    std::vector<double> m_mpi = m;
    world().allreduce_sum(m_mpi.data(), m_mpi.size(), "test.mpi.msg");
    EXPECT_EQ(device_sum(*c, m, "test.msg"), m_mpi) << "C = " << C;
  }
  EXPECT_EQ(device_sum(*c, std::vector<double>{}, "test.empty"), std::vector<double>{});  // zero-length is legal
}

TEST(NcclCommunicator, HostBuffersGoThroughMpi) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto c = make_nccl();
  std::vector<double> v(5, static_cast<double>(world().rank() + 1));
  c->allreduce_sum(v.data(), v.size(), "test.host");  // host memory: synchronous, via MPI
  const double tri = world().size() * (world().size() + 1) / 2.0;
  for (double x : v) EXPECT_EQ(x, tri);
  // So generic host-side helpers work with this communicator unchanged.
  std::string msg;
  try {
    run_agreed(*c, "test.agree", [&] {
      if (c->rank() == c->size() - 1) throw Error("bad on the last rank");
    });
  } catch (const AgreedError& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("bad on the last rank"), std::string::npos) << msg;
}

TEST(NcclCommunicator, BroadcastBarrierAnyAllEqual) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto c = make_nccl();
  const int root = c->size() - 1;
  std::vector<float> v(33, static_cast<float>(c->rank()));
  DeviceArray<float> d;
  d.resize(v.size(), "test");
  cuda::copy_to_device(v, d.data(), c->stream());
  c->broadcast(d.data(), v.size() * sizeof(float), root, "test.bcast.device");
  c->synchronize("test.bcast.device");
  for (float x : cuda::copy_to_host(d.data(), v.size(), c->stream())) EXPECT_EQ(x, static_cast<float>(root));
  char text[24] = {};
  if (c->rank() == root) std::snprintf(text, sizeof text, "from %d", root);
  c->broadcast(text, sizeof text, root, "test.bcast.host");
  EXPECT_EQ(std::string(text), "from " + std::to_string(root));
  c->barrier("test.barrier");
  EXPECT_FALSE(c->any(false, "test.any0"));
  EXPECT_TRUE(c->any(c->rank() == root, "test.any1"));
  EXPECT_TRUE(c->all_equal(0xfeedbeefcafef00dull, "test.eq"));
  EXPECT_EQ(c->all_equal(c->rank() == root ? 1u : 2u, "test.neq"), c->size() == 1);
}

TEST(NcclCommunicator, SplitMatchesMpiSplit) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto c = make_nccl();
  const int K = c->size() % 2 == 0 ? 2 : 1;
  auto g = c->split(c->rank() / K, c->rank(), "test.split");
  auto m = world().split(world().rank() / K, world().rank(), "test.split.mpi");
  EXPECT_EQ(g->size(), m->size());
  EXPECT_EQ(g->rank(), m->rank());
  EXPECT_EQ(g->memory(), MemorySpace::kDevice);
  const std::vector<double> mine = {static_cast<double>(world().rank()), 1.0};
  std::vector<double> want = mine;
  m->allreduce_sum(want.data(), want.size(), "test.group.mpi");
  // The split's type is the same on every rank, so either all ranks run the collective or none does.
  auto* gn = dynamic_cast<NcclCommunicator*>(g.get());
  EXPECT_NE(gn, nullptr) << "split of an NcclCommunicator is not an NcclCommunicator";
  if (gn) {
    EXPECT_EQ(device_sum(*gn, mine, "test.group"), want);
  }
}

TEST(NcclCommunicator, StatisticsCountEveryCollective) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  auto c = make_nccl();
  c->reset_stats();
  DeviceArray<double> d;
  d.resize(3, "test");
  cuda::copy_to_device(std::vector<double>{1, 2, 3}, d.data(), c->stream());
  c->allreduce_sum(d.data(), 3, "a");
  c->barrier("b");
  c->any(false, "c");
  c->synchronize("d");
  EXPECT_EQ(c->stats().collectives, 3u);
  EXPECT_EQ(c->stats().allreduces, 1u);
  EXPECT_GE(c->stats().bytes, 3 * sizeof(double));
  EXPECT_GT(c->stats().seconds, 0.0);  // the device time of the all-reduce, folded in by synchronize()
}

// A rank that arrives late: the others' watchdog aborts the collective after the timeout and they get
// an error naming rank, operation and label — not a hang. (The late rank then hangs in its own
// collective until its watchdog fires too; the end to end "peer never comes" case is main()'s abort.)
TEST(NcclCommunicator, MissingRankTimesOutWithAClearError) {
  SBN_GPU_TEST_PRELUDE(world(), true);
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto c = make_nccl();
  const double timeout = 2.0;
  c->set_timeout(timeout);
  const bool late = world().rank() == world().size() - 1;
  DeviceArray<double> d;
  d.resize(1, "test");
  cuda::copy_to_device(std::vector<double>{1}, d.data(), c->stream());
  std::string msg;
  const auto t0 = std::chrono::steady_clock::now();
  if (late) std::this_thread::sleep_for(std::chrono::duration<double>(3 * timeout));
  try {
    c->allreduce_sum(d.data(), 1, "grad.bucket0");
    c->synchronize("grad.bucket0.wait");
  } catch (const Error& e) {
    msg = e.what();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!late) {
    EXPECT_NE(msg.find("collective timeout"), std::string::npos) << msg;
    EXPECT_NE(msg.find("allreduce_sum(double) 'grad.bucket0'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[rank " + std::to_string(world().rank()) + "@"), std::string::npos) << msg;
    EXPECT_GE(secs, timeout * 0.9);
    EXPECT_LT(secs, timeout + 3.0);
    std::string again;
    try {
      c->allreduce_sum(d.data(), 1, "after");
    } catch (const Error& e) {
      again = e.what();
    }
    EXPECT_NE(again.find("unusable"), std::string::npos) << again;
  } else {
    EXPECT_FALSE(msg.empty()) << "the late rank's collective cannot complete: its peers aborted";
  }
  world().barrier("test.timeout.done");
}

}  // namespace
}  // namespace syncbn::test
