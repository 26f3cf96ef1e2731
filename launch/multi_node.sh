#!/usr/bin/env bash
# Training across several nodes with mpirun over ssh: HOSTS="node1:4,node2:4" (host:slots) or
# HOSTFILE=path (Open MPI hostfile: "node1 slots=4"). The binary and the data must exist at the same
# paths on every node (shared file system or identical images, see docker/). Pin the network with
# IFACE (both MPI's TCP transport and NCCL). ssh to every node must work without a prompt (keys and
# known_hosts in place): mpirun runs without a terminal (launch/common.sh, sbn_run_mpi).
#   HOSTS=localhost:2 launch/multi_node.sh --epochs 1          # works on one machine too
#   HOSTFILE=hosts.txt NP=16 IFACE=ib0 launch/multi_node.sh --device cuda
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
. launch/common.sh

: "${HOSTS:=}"                         # host:slots,host:slots
: "${HOSTFILE:=}"                      # or an Open MPI hostfile
: "${NP:=}"                            # ranks (default: the sum of the slots)
: "${IFACE:=}"                         # network interface for MPI's TCP BTL and NCCL (e.g. eth0, ib0)
: "${SSH_PORT:=}"                      # ssh port of the nodes (e.g. 2222 in the syncbn containers)
: "${THREADS:=1}"
: "${BUILD_DIR:=build}"
: "${RUN_DIR:=runs/multi-node}"
: "${MPIRUN:=mpirun}"

if [ -z "$HOSTS" ] && [ -z "$HOSTFILE" ]; then
  echo "error: set HOSTS=host1:slots,host2:slots or HOSTFILE=path (see the header of $0)" >&2
  exit 2
fi
if [ -z "$NP" ]; then
  if [ -n "$HOSTS" ]; then
    NP=0
    IFS=, read -ra entries <<<"$HOSTS"
    for e in "${entries[@]}"; do NP=$((NP + ${e##*:})); done
  else
    NP=$(awk '{for (i = 1; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); n += a[2] }} END { print n + 0 }' "$HOSTFILE")
  fi
fi
bin="$PWD/$BUILD_DIR/src/apps/syncbn-train"
sbn_require_binary "$bin"
sbn_mpirun_flags "$NP"
if [ -n "$HOSTS" ]; then MPIRUN_FLAGS+=(-H "$HOSTS"); else MPIRUN_FLAGS+=(--hostfile "$HOSTFILE"); fi
if [ -n "$IFACE" ]; then
  MPIRUN_FLAGS+=(--mca btl_tcp_if_include "$IFACE" --mca oob_tcp_if_include "$IFACE" -x NCCL_SOCKET_IFNAME="$IFACE")
fi
[ -n "$SSH_PORT" ] && MPIRUN_FLAGS+=(--mca plm_rsh_args "-p $SSH_PORT")
sbn_run_mpi "$MPIRUN" "${MPIRUN_FLAGS[@]}" "$bin" --norm sync --run-dir "$RUN_DIR" --threads "$THREADS" "$@"
