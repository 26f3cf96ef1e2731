// End-to-end check of the collective timeout (ctest timeout_probe_*): rank 0 enters an all-reduce that
// the last rank never joins (it is stuck, sleeping). Expected: rank 0 reports a timeout naming the
// operation and label, main() aborts the job, mpiexec exits non-zero - within seconds, not never.
#include <chrono>
#include <thread>

#include "syncbn/app.h"

int main(int argc, char** argv) {
  return syncbn::mpi_main(argc, argv, [](syncbn::MpiCommunicator& world) {
    if (world.size() > 1 && world.rank() == world.size() - 1) {
      std::this_thread::sleep_for(std::chrono::minutes(10));  // the stuck rank; the abort ends it
      return 0;
    }
    double v = 1.0;
    world.allreduce_sum(&v, 1, "probe.allreduce");
    return 0;
  });
}
