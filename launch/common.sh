# Sourced by the launch scripts: flags every mpirun invocation here needs.
#   sbn_mpirun_flags NP  → fills the array MPIRUN_FLAGS
# - root: Open MPI refuses to run as root without --allow-run-as-root;
# - more ranks than cores on one node: --oversubscribe, and ranks that yield when idle instead of
#   spinning (a spinning waiter starves the rank it waits for);
# - the environment that matters on clusters is passed to every rank: NCCL_*, OMPI_MCA_*, UCX_*, SBN_*,
#   and the thread count.
# shellcheck shell=bash

sbn_mpirun_flags() {
  local np=$1 cores
  MPIRUN_FLAGS=(-np "$np")
  [ "$(id -u)" -eq 0 ] && MPIRUN_FLAGS+=(--allow-run-as-root)
  cores=$(nproc)
  if [ "${SBN_OVERSUBSCRIBE:-auto}" = "yes" ] || { [ "${SBN_OVERSUBSCRIBE:-auto}" = "auto" ] && [ "$np" -gt "$cores" ] && [ -z "${HOSTS:-}${HOSTFILE:-}" ]; }; then
    MPIRUN_FLAGS+=(--oversubscribe --bind-to none -x OMPI_MCA_mpi_yield_when_idle=1)
  fi
  MPIRUN_FLAGS+=(-x OMP_NUM_THREADS="${THREADS:-1}")
  local var
  for var in $(compgen -e); do
    case "$var" in NCCL_*|UCX_*|SBN_*|CUDA_VISIBLE_DEVICES) MPIRUN_FLAGS+=(-x "$var") ;; esac
  done
}

# Echoes the exact command, then runs it.
sbn_run() {
  echo "+ $*"
  "$@"
}

sbn_require_binary() {
  [ -x "$1" ] || { echo "error: $1 not found; build first (scripts/build.sh)" >&2; exit 1; }
}
