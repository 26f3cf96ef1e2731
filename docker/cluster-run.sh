#!/usr/bin/env bash
# Runs one MPI job across a compose cluster (docker/compose.yaml) from its head container: finds the
# worker containers by their service name, waits (bounded) until each accepts ssh, then runs
#   mpirun -np <nodes*slots> -H <head>:<slots>,<worker1>:<slots>,... <command>
# Installed as /usr/local/bin/sbn-cluster-run. Usage: sbn-cluster-run syncbn-train --dataset ...
# Scale: one head plus SBN_NUM_WORKERS workers, SBN_SLOTS ranks on each (1 per GPU, or per socket).
set -euo pipefail

: "${SBN_WORKER_SERVICE:=worker}"  # DNS name that resolves to every worker (the compose service)
: "${SBN_WORKER_HOSTS:=}"          # or an explicit comma-separated list of worker hosts
: "${SBN_NUM_WORKERS:=2}"          # how many workers to wait for
: "${SBN_SLOTS:=1}"                # ranks per container
: "${SBN_HEAD_RANKS:=1}"           # 1: the head runs SBN_SLOTS ranks too; 0: workers only
: "${SBN_WAIT:=120}"               # seconds to wait for the workers (DNS, then sshd)
: "${SBN_MPIRUN_ARGS:=--bind-to none}"  # extra mpirun arguments (word-split)

[ $# -gt 0 ] || { echo "usage: sbn-cluster-run COMMAND [ARGS...]" >&2; exit 2; }
deadline=$((SECONDS + SBN_WAIT))

if [ -n "$SBN_WORKER_HOSTS" ]; then
  IFS=, read -r -a workers <<<"$SBN_WORKER_HOSTS"
else
  # Docker's DNS answers the service name with one address per running replica.
  while :; do
    mapfile -t workers < <(getent ahostsv4 "$SBN_WORKER_SERVICE" | awk '{print $1}' | sort -u -V)
    [ "${#workers[@]}" -ge "$SBN_NUM_WORKERS" ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: '$SBN_WORKER_SERVICE' resolves to ${#workers[@]} of $SBN_NUM_WORKERS workers after ${SBN_WAIT}s" >&2
      exit 1
    fi
    sleep 1
  done
fi

for w in "${workers[@]}"; do
  until ssh "$w" true 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: worker $w does not accept ssh after ${SBN_WAIT}s (sshd running? keys?)" >&2
      exit 1
    fi
    sleep 1
  done
done

hosts=()
if [ "$SBN_HEAD_RANKS" = 1 ]; then hosts+=("$(hostname):$SBN_SLOTS"); fi
for w in "${workers[@]}"; do hosts+=("$w:$SBN_SLOTS"); done
np=$((${#hosts[@]} * SBN_SLOTS))
hostlist=$(IFS=,; echo "${hosts[*]}")
# shellcheck disable=SC2206  # SBN_MPIRUN_ARGS is a list of words by design
cmd=(mpirun -np "$np" -H "$hostlist" $SBN_MPIRUN_ARGS "$@")
echo "# sbn-cluster-run: ${cmd[*]}"
exec "${cmd[@]}"
