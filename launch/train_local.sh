#!/usr/bin/env bash
# The main job: SyncBN training of the default convnet on Fashion-MNIST with NP MPI ranks on this
# machine (CPU path), printing the final test accuracy. Extra arguments go to syncbn-train, e.g.
#   launch/train_local.sh --epochs 1
#   NP=4 launch/train_local.sh --norm sync:2
# Single node; for several nodes see launch/multi_node.sh, for Slurm launch/slurm.sbatch.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${NP:=2}"                          # MPI ranks
: "${BUILD_DIR:=build}"
: "${RUN_DIR:=runs/fashion-sync-np${NP}}"
: "${THREADS:=1}"                      # oneDNN threads per rank
: "${MPIRUN:=mpirun}"

bin="$BUILD_DIR/src/apps/syncbn-train"
[ -x "$bin" ] || { echo "error: $bin not found; build first (scripts/build.sh)" >&2; exit 1; }

flags=(-np "$NP")
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
cores=$(nproc)
if [ "$NP" -gt "$cores" ]; then
  # More ranks than cores: allow it, and make waiting ranks yield instead of spinning.
  flags+=(--oversubscribe --bind-to none -x OMPI_MCA_mpi_yield_when_idle=1)
fi
flags+=(-x OMP_NUM_THREADS="$THREADS")

cmd=("$MPIRUN" "${flags[@]}" "$bin" --norm sync --run-dir "$RUN_DIR" --threads "$THREADS" "$@")
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
