// MPI implementation of Communicator on host memory, plus the process-wide MPI runtime.
//
// Collectives are non-blocking (MPI_Iallreduce, ...) completed by a test loop against the deadline, so
// a missing or misordered peer becomes an Error instead of a hang. The communicator works on its own
// duplicate of the parent communicator (library traffic never matches user traffic) with
// MPI_ERRORS_RETURN, and every MPI call is checked.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

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

  MPI_Comm handle() const { return comm_; }

 private:
  struct Adopt {};
  MpiCommunicator(MPI_Comm owned, Adopt);
  void init_from(MPI_Comm owned);
  // Waits for `req` until done or the deadline; on timeout marks the communicator broken and throws.
  void wait(MPI_Request* req, const char* op, const char* label, std::size_t bytes);
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
};

}  // namespace syncbn
