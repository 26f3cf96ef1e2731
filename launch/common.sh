# Sourced by the launch scripts: flags every mpirun invocation here needs, and how a job is stopped.
#   sbn_mpirun_flags NP  → fills the array MPIRUN_FLAGS (and calls sbn_container_env)
#   sbn_run_mpi CMD...   → echoes and runs a job launcher (mpirun, srun); a stop signal to this script
#                          reaches every rank at once (see below); returns the job's exit status and
#                          leaves the first stop signal received in SBN_STOP_SIGNAL (TERM, INT, USR1, HUP)
# - root: Open MPI refuses to run as root without --allow-run-as-root;
# - more ranks than cores on one node: --oversubscribe, and ranks that yield when idle instead of
#   spinning (a spinning waiter starves the rank it waits for);
# - the environment that matters on clusters is passed to every rank: NCCL_*, UCX_*, SBN_*,
#   CUDA_VISIBLE_DEVICES, the thread count (Open MPI passes OMPI_MCA_* itself);
# - stopping: syncbn-train stops at the next step on SIGTERM, SIGINT or SIGUSR1, saves a checkpoint
#   into --run-dir and exits 75 (rerun with --resume latest). mpirun forwards SIGUSR1 to every rank at
#   once, but on SIGTERM/SIGINT Open MPI 4 sends the ranks SIGCONT, waits odls_base_sigkill_timeout,
#   sends SIGTERM, waits the timeout again, then SIGKILL (default 1 s: no time to save). So
#   sbn_run_mpi turns SIGTERM/SIGINT/SIGUSR1/SIGHUP to this script into SIGUSR1 to mpirun (started in
#   a session of its own, so a terminal's Ctrl-C reaches only this script), and SBN_SIGKILL_TIMEOUT
#   (default 10 s) gives a rank that time to save when mpirun itself is signalled (Slurm signals every
#   process of a job; a Kubernetes launcher running mpirun directly). 2 x 10 s fits the usual 30 s
#   grace period. Its cost: mpirun waits 2 x the timeout before returning after any rank exits non-zero;
# - containers without the ptrace capability: Open MPI's single-copy shared-memory path (CMA) fails
#   there, floods the log with "Read -1, expected ..., errno = 1" and is ~10x slower; sbn_container_env
#   sets OMPI_MCA_btl_vader_single_copy_mechanism=none when CAP_SYS_PTRACE is not in the capability
#   bounding set (Docker's and Kubernetes' default). A value already set is kept (SBN_CMA=keep: never
#   set it).
# shellcheck shell=bash

: "${SBN_SIGKILL_TIMEOUT:=${OMPI_MCA_odls_base_sigkill_timeout:-10}}"

# Sets OMPI_MCA_btl_vader_single_copy_mechanism=none where CMA cannot work: CAP_SYS_PTRACE (bit 19) is
# missing from the bounding set, so no process here can have it (a container without --cap-add
# SYS_PTRACE). On a host the bounding set is full, also for non-root users, and CMA works.
sbn_container_env() {
  local bnd
  [ "${SBN_CMA:-auto}" = auto ] || return 0
  [ -z "${OMPI_MCA_btl_vader_single_copy_mechanism:-}" ] || return 0
  bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status 2>/dev/null || true)
  [ -n "$bnd" ] || return 0
  if (( (16#$bnd >> 19 & 1) == 0 )); then
    export OMPI_MCA_btl_vader_single_copy_mechanism=none
    echo "# launch: no CAP_SYS_PTRACE here (a container): OMPI_MCA_btl_vader_single_copy_mechanism=none (CMA cannot work)"
  fi
}

sbn_mpirun_flags() {
  local np=$1 cores
  MPIRUN_FLAGS=(-np "$np")
  [ "$(id -u)" -eq 0 ] && MPIRUN_FLAGS+=(--allow-run-as-root)
  cores=$(nproc)
  if [ "${SBN_OVERSUBSCRIBE:-auto}" = "yes" ] || { [ "${SBN_OVERSUBSCRIBE:-auto}" = "auto" ] && [ "$np" -gt "$cores" ] && [ -z "${HOSTS:-}${HOSTFILE:-}" ]; }; then
    MPIRUN_FLAGS+=(--oversubscribe --bind-to none -x OMPI_MCA_mpi_yield_when_idle=1)
  fi
  MPIRUN_FLAGS+=(--mca odls_base_sigkill_timeout "$SBN_SIGKILL_TIMEOUT")
  MPIRUN_FLAGS+=(-x OMP_NUM_THREADS="${THREADS:-1}")
  local var
  for var in $(compgen -e); do
    case "$var" in NCCL_*|UCX_*|SBN_*|CUDA_VISIBLE_DEVICES) MPIRUN_FLAGS+=(-x "$var") ;; esac
  done
  sbn_container_env
}

# Echoes the exact command, then runs it.
sbn_run() {
  echo "+ $*"
  "$@"
}

# sbn_run_mpi CMD...: like sbn_run, for a job launcher (mpirun and srun forward SIGUSR1 to every rank
# at once). CMD runs in the background and this shell waits for it, so that a signal runs the trap at
# once (bash runs traps only between foreground commands): the first SIGTERM/SIGINT/SIGUSR1/SIGHUP
# becomes SIGUSR1 to CMD (every rank stops at the next step and checkpoints), a second one SIGTERM.
# Returns CMD's exit status (75: stopped with a checkpoint).
sbn_run_mpi() {
  local rc sig
  SBN_STOP_SIGNAL=""
  sbn_job_name=${1##*/}
  echo "+ $*"
  # In a session of its own, so that a terminal's Ctrl-C reaches only this script, which forwards it
  # as SIGUSR1 (mpirun's own SIGINT handling would stop the ranks only after the timeout).
  if command -v setsid >/dev/null; then setsid "$@" & else "$@" & fi
  sbn_job_pid=$!
  sbn_job_signals=0
  for sig in TERM INT USR1 HUP; do
    # shellcheck disable=SC2064  # $sig is meant to expand now
    trap "sbn_forward_stop $sig" "$sig"
  done
  while :; do
    sbn_job_signalled=0
    rc=0
    wait "$sbn_job_pid" || rc=$?
    # A trapped signal ends `wait` early (status > 128) with the job still running: wait again.
    [ "$sbn_job_signalled" = 1 ] || break
  done
  trap - TERM INT USR1 HUP
  [ "$rc" -ne 75 ] || echo "# launch: the job stopped early and saved a checkpoint (exit 75): rerun with --resume latest"
  return "$rc"
}

sbn_forward_stop() {
  sbn_job_signalled=1
  sbn_job_signals=$((sbn_job_signals + 1))
  if [ "$sbn_job_signals" -eq 1 ]; then
    # shellcheck disable=SC2034  # read by the caller (launch/slurm.sbatch)
    SBN_STOP_SIGNAL=$1
    echo "# launch: SIG$1: SIGUSR1 to $sbn_job_name (pid $sbn_job_pid): every rank stops at the next step and saves a checkpoint" >&2
    kill -USR1 "$sbn_job_pid" 2>/dev/null || true
  else
    echo "# launch: SIG$1 again: SIGTERM to $sbn_job_name (pid $sbn_job_pid)" >&2
    kill -TERM "$sbn_job_pid" 2>/dev/null || true
  fi
}

sbn_require_binary() {
  [ -x "$1" ] || { echo "error: $1 not found; build first (scripts/build.sh)" >&2; exit 1; }
}
