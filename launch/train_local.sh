#!/usr/bin/env bash
# The main job: SyncBN training of the default convnet on Fashion-MNIST with NP MPI ranks on this
# machine (CPU path; --device auto picks the GPUs in a CUDA build on a GPU node), printing the final
# test accuracy. Single node; several nodes: launch/multi_node.sh; Slurm: launch/slurm.sbatch.
#   launch/train_local.sh                       # NP=2, 3 epochs (~2 minutes on 2 cores)
#   NP=4 launch/train_local.sh --norm sync:2 --epochs 1
#   NP=8 THREADS=4 BIND=socket launch/train_local.sh --device cuda --precision bf16
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
. launch/common.sh

: "${NP:=2}"                          # MPI ranks on this node
: "${THREADS:=1}"                      # oneDNN threads per rank (CPU path)
: "${BIND:=}"                          # mpirun --bind-to (core, socket, none); empty: Open MPI's default
: "${BUILD_DIR:=build}"
: "${RUN_DIR:=runs/fashion-sync-np${NP}}"
: "${MPIRUN:=mpirun}"

bin="$BUILD_DIR/src/apps/syncbn-train"
sbn_require_binary "$bin"
sbn_mpirun_flags "$NP"
[ -n "$BIND" ] && MPIRUN_FLAGS+=(--bind-to "$BIND")
sbn_run_mpi "$MPIRUN" "${MPIRUN_FLAGS[@]}" "$bin" --norm sync --run-dir "$RUN_DIR" --threads "$THREADS" "$@"
