// MPI implementation of Communicator on host memory, plus the process-wide MPI runtime.
//
// Collectives are non-blocking (MPI_Iallreduce, ...) completed by a test loop against the deadline, so
// a missing or misordered peer becomes an Error instead of a hang; start_allreduce_sum leaves its request
// to the caller's test()/wait(), with the same deadline. The communicator works on its own
// duplicate of the parent communicator (library traffic never matches user traffic) with
// MPI_ERRORS_RETURN, and every MPI call is checked.
#pragma once

#include <mpi.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "syncbn/communicator.h"

namespace syncbn {

// RAII for MPI_Init_thread / MPI_Finalize. Requests MPI_THREAD_FUNNELED: only the main thread calls MPI.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
};

// Ends every rank of the job with `code` (MPI_Abort on MPI_COMM_WORLD). Used by main() when a peer may
// still be waiting in a collective; never returns.
[[noreturn]] void abort_job(int code);

class MpiCommunicator final : public Communicator {
 public:
  // Duplicates `parent` (collective over it).
  explicit MpiCommunicator(MPI_Comm parent);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  const std::string& host() const override { return host_; }
  MemorySpace memory() const override { return MemorySpace::kHost; }

  void allreduce_sum(double* buf, std::size_t count, const char* label) override;
  void allreduce_sum(float* buf, std::size_t count, const char* label) override;
  void broadcast(void* buf, std::size_t bytes, int root, const char* label) override;
  void barrier(const char* label) override;
  bool any(bool flag, const char* label) override;
  bool all_equal(std::uint64_t value, const char* label) override;
  std::unique_ptr<Communicator> split(int color, int key, const char* label) override;
  Request start_allreduce_sum(float* buf, std::size_t count, const char* label) override;
  bool test(Request request) override;
  void wait(Request request) override;

  MPI_Comm handle() const { return comm_; }

 private:
  struct Adopt {};
  MpiCommunicator(MPI_Comm owned, Adopt);
  void init_from(MPI_Comm owned);
  using Clock = std::chrono::steady_clock;
  // A started non-blocking all-reduce (start_allreduce_sum); slots are reused once waited for.
  struct Pending {
    MPI_Request req = MPI_REQUEST_NULL;
    std::string label;
    std::size_t bytes = 0;
    Clock::time_point issued;
    double seconds = 0;  // spent inside start/test so far
    bool open = false;
  };
  // Waits for `req` until done or `issued` + timeout(); on timeout marks the communicator broken and
  // throws. Counts the collective in stats(): `bytes`, and the seconds of this call plus `extra_s`.
  void complete(MPI_Request* req, const char* op, const char* label, std::size_t bytes, Clock::time_point issued,
                double extra_s = 0);
  // complete() from now, for the blocking collectives.
  void wait(MPI_Request* req, const char* op, const char* label, std::size_t bytes);
  Pending& pending(Request request, const char* op);
  void check_usable(const char* op, const char* label) const;
  void allreduce_impl(void* buf, std::size_t count, MPI_Datatype type, std::size_t elem_bytes,
                      const char* op, const char* label);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::string host_;
  std::string broken_;  // non-empty once a collective timed out: what timed out
  std::vector<Pending> pending_;  // indexed by Request
};

}  // namespace syncbn
