#!/usr/bin/env bash
# Entrypoint of the syncbn images (installed as /usr/local/bin/sbn-entrypoint).
#   sbn-entrypoint [sshd]     run sshd in the foreground: an MPI node that mpirun reaches over ssh
#   sbn-entrypoint CMD ...    run CMD (mpirun on a launcher, a shell, syncbn-train for one rank)
# Before either it warns if this CPU cannot run the binaries (they are built for one x86-64 level).
# sshd sessions do not see the container's environment (ENV of the image, env of compose or the pod),
# so for sshd the variables that matter to the ranks (PATH, LD_LIBRARY_PATH and those starting with
# $SBN_ENV_PREFIXES) are handed to sshd as SetEnv: ranks started by mpirun over ssh see them.
# On a Kubernetes MPIJob launcher (K_MPI_JOB_ROLE=launcher) it waits, bounded, until every host in
# /etc/mpi/hostfile resolves: worker names appear in DNS a little after the pods start.
set -euo pipefail

: "${SBN_ENV_PREFIXES:=OMPI_ PRTE_ PMIX_ NCCL_ UCX_ SBN_ OMP_ CUDA_ NVIDIA_}"
: "${SBN_BUILD_INFO:=/opt/syncbn/BUILD_INFO}"
: "${SBN_HOSTFILE:=/etc/mpi/hostfile}"
: "${SBN_DNS_WAIT:=120}"

# The executables are compiled for one x86-64 level (BUILD_INFO cpu_arch); the dynamic loader knows
# which levels this CPU supports. Without this a too-old CPU dies later with "Illegal instruction".
check_cpu_level() {
  local arch loader
  arch=$(sed -n 's/^cpu_arch=//p' "$SBN_BUILD_INFO" 2>/dev/null || true)
  case "$arch" in x86-64-v[234]) ;; *) return 0 ;; esac
  for loader in /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2; do
    [ -x "$loader" ] || continue
    if ! "$loader" --help 2>/dev/null | grep -q "^ *$arch (supported"; then
      echo "# warning: the syncbn binaries in this image are built for -march=$arch, which this CPU" \
           "does not support; they will stop with 'Illegal instruction'. Rebuild the image with" \
           "--build-arg SBN_CPU_ARCH=x86-64-v2." >&2
    fi
    return 0
  done
}

wait_for_hostfile() {
  [ "${K_MPI_JOB_ROLE:-}" = launcher ] && [ -r "$SBN_HOSTFILE" ] || return 0
  local deadline=$((SECONDS + SBN_DNS_WAIT)) host hosts
  mapfile -t hosts < <(awk '!/^#/ && NF {sub(/:.*/, "", $1); print $1}' "$SBN_HOSTFILE")
  for host in "${hosts[@]}"; do
    until getent hosts "$host" >/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "error: worker '$host' from $SBN_HOSTFILE did not resolve within ${SBN_DNS_WAIT}s" >&2
        exit 1
      fi
      sleep 1
    done
  done
  echo "# sbn-entrypoint: all hosts in $SBN_HOSTFILE resolve"
}

run_sshd() {
  local setenv=() name prefix pass
  for name in $(compgen -e); do
    pass=0
    case "$name" in
      PATH | LD_LIBRARY_PATH) pass=1 ;;
      *) for prefix in $SBN_ENV_PREFIXES; do
           if [[ "$name" == "$prefix"* ]]; then pass=1; fi
         done ;;
    esac
    [ "$pass" = 1 ] || continue
    if [[ "${!name}" == *'"'* ]]; then
      echo "# sbn-entrypoint: $name contains a double quote; not passed to ssh sessions" >&2
      continue
    fi
    setenv+=("$name=\"${!name}\"")
  done
  local cmd=(/usr/sbin/sshd -D -e)
  if [ ${#setenv[@]} -gt 0 ]; then cmd+=(-o "SetEnv=${setenv[*]}"); fi
  echo "# sbn-entrypoint: ${cmd[*]}"
  exec "${cmd[@]}"
}

check_cpu_level
if [ $# -eq 0 ] || [ "$1" = sshd ]; then
  run_sshd
fi
wait_for_hostfile
exec "$@"
