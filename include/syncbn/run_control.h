// What keeps a training job's run directory and its stop requests sane on a cluster:
//  - StopSignals: SIGTERM (Slurm/Kubernetes before a kill, mpirun on Ctrl-C), SIGINT and SIGUSR1 set a
//    flag; the trainer agrees on it at the next step boundary inside the step's existing all-reduce,
//    saves a checkpoint and exits with kExitStopped. A second SIGINT (Ctrl-C twice) ends the process
//    at once; a repeated SIGTERM does not (a scheduler and mpirun may both deliver one).
//    The handler never runs on the thread that computes: oneDNN's JIT GEMM kernels (Debian's 2.x, up to
//    3.11.1: oneDNN issue #4845) point rsp into the heap while they run, so a signal frame pushed there
//    corrupts the heap ("free(): invalid pointer" in dnnl_sgemm, seen in CI as a SIGTERM'd rank that
//    aborted instead of saving). The constructing thread (and every thread it starts later: OpenMP's
//    pool, CUDA's) blocks the stop signals; one catcher thread leaves them open and sleeps, so the kernel
//    delivers each process-directed signal there (or to a thread MPI started before, which never runs
//    oneDNN either).
//  - RunDirLock: one job per --run-dir. Rank 0 holds flock() on <run_dir>/.lock for the job's lifetime;
//    a second job fails naming the holder (pid, host, start time) instead of overwriting the first.
//  - remove_stale_temporaries: a write interrupted by a kill leaves "<name>.tmp.<pid>"; the next job
//    that holds the lock removes them.
#pragma once

#include <csignal>
#include <string>
#include <thread>

namespace syncbn {

// Exit code of a job stopped by SIGTERM/SIGINT/SIGUSR1 after saving its checkpoint (EX_TEMPFAIL:
// "try again later"); launch/slurm.sbatch requeues on it.
constexpr int kExitStopped = 75;

// Installs the handlers and the catcher thread for the object's lifetime, and blocks the stop signals on
// the constructing thread; the destructor restores the previous handlers and mask. Signals sent to the
// process (kill, mpirun, Slurm) are seen; one raise()d on a thread that blocks them waits there until
// the object is gone.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The first stop signal received (SIGTERM, SIGINT or SIGUSR1), or 0.
  int pending() const;
  // "SIGTERM", "SIGINT", "SIGUSR1".
  static const char* name(int sig);

 private:
  struct sigaction old_[3];
  sigset_t old_mask_;
  int wake_[2] = {-1, -1};  // a pipe: the destructor writes to end the catcher's wait
  std::thread catcher_;
};

class RunDirLock {
 public:
  // Takes the lock on <run_dir>/.lock without waiting; throws syncbn::Error naming the run dir and the
  // holder when another process has it.
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

// Removes "*.tmp.<digits>" files left in run_dir by interrupted atomic writes; returns how many.
int remove_stale_temporaries(const std::string& run_dir);

}  // namespace syncbn
