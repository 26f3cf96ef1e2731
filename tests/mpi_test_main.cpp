// GoogleTest main for every syncbn test binary, run under mpiexec with 1..4 ranks.
// Rank 0 prints gtest's usual output; other ranks print only their failures, prefixed with the rank.
// The exit code is combined over ranks: the run fails if any rank failed a test.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "syncbn/mpi_communicator.h"
#include "test_util.h"

namespace syncbn::test {
namespace {
MpiCommunicator* g_world = nullptr;  // lives for the whole test run, owned by main

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }

 private:
  int rank_;
};
}  // namespace

Communicator& world() { return *g_world; }

}  // namespace syncbn::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  syncbn::MpiRuntime mpi(&argc, &argv);
  int rc = 0;
  {
    syncbn::MpiCommunicator world(MPI_COMM_WORLD);
    // Tests must never hang: any collective stuck for this long fails instead (ctest's TIMEOUT is the
    // outer bound).
    world.set_timeout(30.0);
    syncbn::test::g_world = &world;
    if (world.rank() != 0) {
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new syncbn::test::RankFailurePrinter(world.rank()));
    }
    const int mine = RUN_ALL_TESTS();
    int any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (world.rank() == 0 && any && !mine) std::fprintf(stderr, "[rank 0] a test failed on another rank\n");
    rc = any ? 1 : 0;
  }
  return rc;
}
