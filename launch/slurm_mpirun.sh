#!/usr/bin/env bash
# mpirun inside a Slurm allocation (salloc, or the body of an sbatch script): Open MPI reads the
# allocation from Slurm's environment, so no host list is needed.
#   salloc -N 2 --ntasks-per-node=4 launch/slurm_mpirun.sh --epochs 1
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
. launch/common.sh

if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "error: not inside a Slurm allocation: run it under salloc or sbatch" >&2
  exit 2
fi
: "${NP:=${SLURM_NTASKS:-1}}"
: "${THREADS:=${SLURM_CPUS_PER_TASK:-1}}"
: "${BUILD_DIR:=build}"
: "${RUN_DIR:=runs/slurm-${SLURM_JOB_ID}}"
: "${MPIRUN:=mpirun}"

bin="$PWD/$BUILD_DIR/src/apps/syncbn-train"
sbn_require_binary "$bin"
sbn_mpirun_flags "$NP"
sbn_run_mpi "$MPIRUN" "${MPIRUN_FLAGS[@]}" "$bin" --norm sync --run-dir "$RUN_DIR" --threads "$THREADS" "$@"
