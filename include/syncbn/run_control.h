// What keeps a training job's run directory and its stop requests sane on a cluster:
//  - StopSignals: SIGTERM (Slurm/Kubernetes before a kill, mpirun on Ctrl-C), SIGINT and SIGUSR1 set a
//    flag; the trainer agrees on it at the next step boundary inside the step's existing all-reduce,
//    saves a checkpoint and exits with kExitStopped. A second SIGINT (Ctrl-C twice) ends the process
//    at once; a repeated SIGTERM does not (a scheduler and mpirun may both deliver one).
//  - RunDirLock: one job per --run-dir. Rank 0 holds flock() on <run_dir>/.lock for the job's lifetime;
//    a second job fails naming the holder (pid, host, start time) instead of overwriting the first.
//  - remove_stale_temporaries: a write interrupted by a kill leaves "<name>.tmp.<pid>"; the next job
//    that holds the lock removes them.
#pragma once

#include <csignal>
#include <string>

namespace syncbn {

// Exit code of a job stopped by SIGTERM/SIGINT/SIGUSR1 after saving its checkpoint (EX_TEMPFAIL:
// "try again later"); launch/slurm.sbatch requeues on it.
constexpr int kExitStopped = 75;

// Installs the handlers for the object's lifetime (restores the previous ones after).
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
