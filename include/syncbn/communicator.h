// Communicator: the collectives SyncBN and the trainer need, behind one interface with an MPI
// implementation (host memory, always built) and an NCCL implementation (device memory, CUDA builds).
//
// Invariants every implementation keeps:
//  - Collectives are issued in the same order on every rank of the communicator; a rank that is in a
//    different collective is caught by the callers' tag checks (SyncBN) or by the collective timeout.
//  - A collective that does not finish within timeout() throws syncbn::Error naming the operation, the
//    caller's label, this rank and its host. The communicator is unusable afterwards (a peer may still
//    be inside that collective); main() then aborts the job. Timeout <= 0 waits forever.
//  - stats() counts every collective issued, so tests can assert "exactly one all-reduce per layer".
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace syncbn {

enum class MemorySpace { kHost, kDevice };

struct CommStats {
  std::uint64_t collectives = 0;  // every collective call, of any kind
  std::uint64_t allreduces = 0;   // allreduce_sum calls
  std::uint64_t bytes = 0;        // payload bytes of all collectives
  double seconds = 0.0;           // wall time spent inside collectives (issue to completion)
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank and size among the ranks sharing this node (MPI_Comm_split_type SHARED).
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
  virtual const std::string& host() const = 0;
  // Where the buffers passed to the collectives live.
  virtual MemorySpace memory() const = 0;

  // In-place element-wise sum over all ranks. `label` names the caller ("bn1.forward") in errors.
  virtual void allreduce_sum(double* buf, std::size_t count, const char* label) = 0;
  virtual void allreduce_sum(float* buf, std::size_t count, const char* label) = 0;
  // Copies `bytes` bytes from `root` to every rank.
  virtual void broadcast(void* buf, std::size_t bytes, int root, const char* label) = 0;
  virtual void barrier(const char* label) = 0;
  // True on every rank iff `flag` is true on at least one: how ranks agree on a failure.
  virtual bool any(bool flag, const char* label) = 0;
  // True on every rank iff every rank passed the same value (e.g. a checkpoint hash).
  virtual bool all_equal(std::uint64_t value, const char* label) = 0;
  // Sub-communicators of the ranks with the same color, ordered by key (collective over this one).
  virtual std::unique_ptr<Communicator> split(int color, int key, const char* label) = 0;

  // ---- Non-blocking sum (the gradient buckets that overlap the backward, grad_buckets.h): start, then
  // test() between other work, which also progresses it, then wait(). The buffer is not touched by the
  // caller until the request completes. Requests are issued in the same order on every rank, like any
  // collective, and other collectives may be issued while some are pending. The deadline (timeout())
  // counts from the start and is enforced by wait(). stats() count a request once, when it completes;
  // its seconds are those spent inside start/test/wait (what the caller was held up), not its lifetime.
  // The defaults complete the sum inside start (a blocking allreduce_sum): no overlap, same results.
  using Request = int;  // a handle from start_allreduce_sum, valid until wait() returned
  virtual Request start_allreduce_sum(float* buf, std::size_t count, const char* label);
  // True once the request has completed (wait() then returns at once); never blocks.
  virtual bool test(Request request);
  // Returns once the request has completed, releasing the handle, or throws the collective timeout.
  // Every started request is waited for.
  virtual void wait(Request request);

  // Seconds a collective may take before it is reported as hung; <= 0 disables the deadline.
  void set_timeout(double seconds) { timeout_s_ = seconds; }
  double timeout() const { return timeout_s_; }

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = CommStats{}; }

  // "[rank R@host]" for messages.
  std::string origin() const;

 protected:
  CommStats stats_;
  double timeout_s_ = kDefaultTimeoutSeconds;

 public:
  // Generous: a collective legitimately waits for the slowest rank's whole step (a large model's
  // forward on a loaded node); a real hang is still reported instead of waiting for the job's walltime.
  static constexpr double kDefaultTimeoutSeconds = 600.0;
};

}  // namespace syncbn
