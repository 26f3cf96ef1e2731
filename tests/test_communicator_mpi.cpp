// MpiCommunicator at np = 1..4: sums (exact by construction, nccl-tests style: small integers sum
// exactly in any order), broadcast, agreement helpers, split into groups, node-local ranks, statistics,
// and the collective timeout.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "syncbn/app.h"
#include "syncbn/mpi_communicator.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

TEST(Communicator, RanksAndNodeLocalRanks) {
  Communicator& w = world();
  EXPECT_GE(w.size(), 1);
  EXPECT_GE(w.rank(), 0);
  EXPECT_LT(w.rank(), w.size());
  EXPECT_GE(w.local_rank(), 0);
  EXPECT_LT(w.local_rank(), w.local_size());
  EXPECT_LE(w.local_size(), w.size());
  EXPECT_FALSE(w.host().empty());
  // All ranks of this test run on one machine: local rank == rank.
  std::vector<double> local(static_cast<std::size_t>(w.size()), 0.0);
  local[static_cast<std::size_t>(w.rank())] = w.local_rank();
  w.allreduce_sum(local.data(), local.size(), "test.local");
  for (int r = 0; r < w.size(); ++r) EXPECT_EQ(local[static_cast<std::size_t>(r)], r);
}

TEST(Communicator, AllreduceSumIsExact) {
  Communicator& w = world();
  const int P = w.size();
  std::vector<double> d(1001);
  std::vector<float> f(77);
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<double>(w.rank() + 1) * static_cast<double>(i);
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>((w.rank() + 1) * (i % 7));
  w.allreduce_sum(d.data(), d.size(), "test.d");
  w.allreduce_sum(f.data(), f.size(), "test.f");
  const double tri = P * (P + 1) / 2.0;
  bool ok = true;
  for (std::size_t i = 0; i < d.size(); ++i) ok &= d[i] == tri * static_cast<double>(i);
  for (std::size_t i = 0; i < f.size(); ++i) ok &= f[i] == static_cast<float>(tri * static_cast<double>(i % 7));
  EXPECT_TRUE(ok);
  w.allreduce_sum(d.data(), 0, "test.empty");  // zero-length is legal
}

TEST(Communicator, BroadcastBarrierAnyAllEqual) {
  Communicator& w = world();
  const int root = w.size() - 1;
  char text[32] = {};
  if (w.rank() == root) std::snprintf(text, sizeof text, "from %d", root);
  w.broadcast(text, sizeof text, root, "test.bcast");
  EXPECT_EQ(std::string(text), "from " + std::to_string(root));
  w.barrier("test.barrier");
  EXPECT_FALSE(w.any(false, "test.any0"));
  EXPECT_TRUE(w.any(w.rank() == root, "test.any1"));
  EXPECT_TRUE(w.all_equal(0xfeedbeefcafef00dull, "test.eq"));
  EXPECT_EQ(w.all_equal(w.rank() == root ? 1u : 2u, "test.neq"), w.size() == 1);
}

TEST(Communicator, SplitIntoConsecutiveGroups) {
  Communicator& w = world();
  const int K = w.size() % 2 == 0 ? 2 : 1;
  auto g = w.split(w.rank() / K, w.rank(), "test.split");
  EXPECT_EQ(g->size(), K);
  EXPECT_EQ(g->rank(), w.rank() % K);
  double v = w.rank();
  g->allreduce_sum(&v, 1, "test.group");
  const int first = w.rank() / K * K;
  double expect = 0;
  for (int r = first; r < first + K; ++r) expect += r;
  EXPECT_EQ(v, expect);
}

TEST(Communicator, StatisticsCountEveryCollective) {
  auto c = world().split(0, world().rank(), "test.stats");
  c->reset_stats();
  double v[3] = {1, 2, 3};
  c->allreduce_sum(v, 3, "a");
  c->barrier("b");
  c->any(false, "c");
  EXPECT_EQ(c->stats().collectives, 3u);
  EXPECT_EQ(c->stats().allreduces, 1u);
  EXPECT_GE(c->stats().bytes, 3 * sizeof(double));
}

// A rank that does not arrive: the others get a timeout error naming the operation and the label,
// within about the timeout. (The late rank joins afterwards so the pending request can drain; the end
// to end case, where it never comes and main() aborts the job, is the timeout_probe ctest.)
TEST(Communicator, MissingRankTimesOutWithAClearError) {
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto c = world().split(0, world().rank(), "test.timeout");
  const double timeout = 1.0;
  c->set_timeout(timeout);
  const bool late = world().rank() == world().size() - 1;
  double v = 1;
  std::string msg;
  double secs = 0;
  if (late) {
    std::this_thread::sleep_for(std::chrono::duration<double>(3 * timeout));
    try {
      c->allreduce_sum(&v, 1, "grad.bucket0");
    } catch (const Error& e) {
      msg = e.what();  // may time out too if the others already gave up: either way, no hang
    }
  } else {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      c->allreduce_sum(&v, 1, "grad.bucket0");
    } catch (const Error& e) {
      msg = e.what();
    }
    secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(msg.find("collective timeout"), std::string::npos) << msg;
    EXPECT_NE(msg.find("allreduce_sum(double) 'grad.bucket0'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[rank " + std::to_string(world().rank()) + "@"), std::string::npos) << msg;
    EXPECT_GE(secs, timeout * 0.9);
    EXPECT_LT(secs, timeout + 2.0);
    // A broken communicator refuses further use instead of mismatching collectives.
    std::string again;
    try {
      c->barrier("after");
    } catch (const Error& e) {
      again = e.what();
    }
    EXPECT_NE(again.find("unusable after a timeout"), std::string::npos) << again;
  }
  world().barrier("test.timeout.done");
}

// Non-blocking sums (the gradient buckets overlapping the backward): several in flight at once, with a
// blocking collective issued between them, tested and waited for out of order; exact sums, each request
// counted once in the statistics.
TEST(Communicator, NonBlockingSumsCompleteInAnyOrderWithOtherCollectivesBetween) {
  auto c = world().split(0, world().rank(), "test.nb");
  const int P = c->size();
  const float tri = static_cast<float>(P * (P + 1) / 2);
  std::vector<std::vector<float>> bufs = {std::vector<float>(3), std::vector<float>(70000), std::vector<float>(0),
                                          std::vector<float>(513)};
  for (auto& b : bufs)
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((c->rank() + 1) * (i % 5));
  c->reset_stats();
  std::vector<Communicator::Request> req;
  req.push_back(c->start_allreduce_sum(bufs[0].data(), bufs[0].size(), "nb0"));
  req.push_back(c->start_allreduce_sum(bufs[1].data(), bufs[1].size(), "nb1"));
  double v = 1;
  c->allreduce_sum(&v, 1, "between");  // a blocking collective while two are pending
  req.push_back(c->start_allreduce_sum(bufs[2].data(), bufs[2].size(), "nb2"));
  req.push_back(c->start_allreduce_sum(bufs[3].data(), bufs[3].size(), "nb3"));
  for (int spin = 0; spin < 1000 && !c->test(req[3]); ++spin) {
  }
  c->wait(req[3]);
  c->wait(req[1]);
  (void)c->test(req[0]);  // after a completed test, or none, wait still returns
  c->wait(req[0]);
  c->wait(req[2]);
  bool ok = v == P;
  for (auto& b : bufs)
    for (std::size_t i = 0; i < b.size(); ++i) ok &= b[i] == tri * static_cast<float>(i % 5);
  EXPECT_TRUE(ok);
  EXPECT_EQ(c->stats().collectives, 5u);
  EXPECT_EQ(c->stats().allreduces, 5u);
  EXPECT_EQ(c->stats().bytes, sizeof(double) + (3 + 70000 + 513) * sizeof(float));
  // A released handle is refused with a clear error (no MPI call: the ranks stay in step).
  std::string msg;
  try {
    c->wait(req[2]);
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("was not started or was already waited for"), std::string::npos) << msg;
  // Slots are reused: the next request gets a released handle back.
  float one = 1;
  const Communicator::Request again = c->start_allreduce_sum(&one, 1, "nb.again");
  EXPECT_LT(again, 4);
  c->wait(again);
  EXPECT_EQ(one, static_cast<float>(P));
}

// A started sum whose peer never comes: wait() gives the one-line collective timeout, counted from the
// start (time spent before the wait counts), and the communicator refuses further use.
TEST(Communicator, NonBlockingSumTimesOutFromItsStart) {
  if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto c = world().split(0, world().rank(), "test.nb.timeout");
  const double timeout = 1.0;
  c->set_timeout(timeout);
  const bool late = world().rank() == world().size() - 1;
  float v = 1;
  std::string msg;
  if (late) {
    std::this_thread::sleep_for(std::chrono::duration<double>(3 * timeout));
    try {
      c->wait(c->start_allreduce_sum(&v, 1, "gradient bucket"));
    } catch (const Error& e) {
      msg = e.what();  // may time out too if the others already gave up
    }
  } else {
    const auto t0 = std::chrono::steady_clock::now();
    const Communicator::Request r = c->start_allreduce_sum(&v, 1, "gradient bucket");
    std::this_thread::sleep_for(std::chrono::duration<double>(0.6 * timeout));  // "the backward" goes on
    EXPECT_FALSE(c->test(r));
    try {
      c->wait(r);
    } catch (const Error& e) {
      msg = e.what();
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(msg.find("collective timeout: allreduce_sum(float) 'gradient bucket'"), std::string::npos) << msg;
    EXPECT_GE(secs, timeout * 0.9);
    EXPECT_LT(secs, timeout + 1.0);  // from the start, not from the wait
    std::string again;
    try {
      (void)c->start_allreduce_sum(&v, 1, "after");
    } catch (const Error& e) {
      again = e.what();
    }
    EXPECT_NE(again.find("unusable after a timeout"), std::string::npos) << again;
  }
  world().barrier("test.nb.timeout.done");
}

TEST(Communicator, RunAgreedReportsTheLowestFailingRank) {
  Communicator& w = world();
  const int bad = w.size() - 1;
  std::string msg;
  try {
    run_agreed(w, "test.agree", [&] {
      if (w.rank() == bad) throw Error("bad value on this rank");
    });
  } catch (const AgreedError& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("bad value on this rank"), std::string::npos) << msg;
  if (w.size() > 1) {
    EXPECT_NE(msg.find("[rank " + std::to_string(bad) + "@"), std::string::npos) << msg;
  }
  // No failure: no throw.
  run_agreed(w, "test.agree.ok", [] {});
}

}  // namespace
}  // namespace syncbn::test
