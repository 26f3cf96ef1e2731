# Sourced by the container tests (run_container_test.sh, run_fresh_test.sh): the machinery they share.
# Set ct_name (the test's name in SKIP/FAIL lines) before sourcing it.
#   ct_require CMD...       skip (exit 77) unless root, docker, debootstrap and CMD exist and TMPDIR has
#                           SBN_CT_MIN_FREE_GB free
#   ct_init                 a private temporary directory, a label for everything made, the cleanup traps
#   ct_start_engine         a running Docker engine if one answers, else a private dockerd (no iptables, no
#                           default bridge, overlay2; data-root and exec-root in the temporary directory)
#   ct_base_image IMAGE [PKG...]   debootstrap --variant=minbase (+ PKG), the host's Debian mirror and apt
#                           Acquire:: settings, slim dpkg excludes, no service starts; `docker import`
#   logged FILE CMD...      runs CMD against the deadline, output to FILE, its tail shown if CMD fails
# Everything made is removed on exit, also on failure or interrupt: containers and networks carrying the
# label, the images in ct_images (on a shared engine; a private one goes with its data-root), the dockerd
# started here with its leftover processes and mounts, the temporary directory.
# shellcheck shell=bash

: "${SBN_CT_SUITE:=bookworm}"         # Debian suite of the base image
: "${SBN_CT_MIRROR:=}"                # Debian mirror; empty: the host's apt source for the suite
: "${SBN_CT_OWN_DAEMON:=auto}"        # auto | 1 (always start a private dockerd)
: "${SBN_CT_DEADLINE:=1400}"          # seconds for the whole test; keep below the ctest TIMEOUT
: "${SBN_CT_MIN_FREE_GB:=4}"          # skip with less free space in TMPDIR (the engine's data-root)
: "${TMPDIR:=/tmp}"
: "${ct_name:=container test}"

t0=$SECONDS
deadline=$((SECONDS + SBN_CT_DEADLINE))
child=""
tmp=""
dockerd_pid=""
engine_ready=0
own_daemon=0
ct_images=()

log() { echo "# [$((SECONDS - t0))s] $*"; }
skip() { echo "SKIP: $ct_name: $*"; exit 77; }
fail() { echo "FAIL: $ct_name: $*" >&2; exit 1; }

# logged LOGFILE CMD...: echoes CMD, runs it with what is left of the deadline, output to LOGFILE, and
# shows the log's tail if CMD fails. CMD runs in the background and is waited for, so that a signal
# runs the cleanup at once (bash defers traps until a foreground command ends); cleanup ends it.
logged() {
  local file=$1 left=$((deadline - SECONDS)) rc=0
  shift
  [ "$left" -gt 10 ] || fail "deadline of ${SBN_CT_DEADLINE}s reached before: $*"
  echo "+ $* >$file 2>&1"
  timeout --kill-after=10 "$left" "$@" >"$file" 2>&1 &
  child=$!
  wait "$child" || rc=$?
  child=""
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$file" | sed 's/^/  | /'
    [ "$rc" -ne 124 ] || echo "  | (stopped at the test's deadline, SBN_CT_DEADLINE=${SBN_CT_DEADLINE}s)"
  fi
  return "$rc"
}

ct_cleanup() {
  local rc=$? pid mnt leftovers
  set +e
  trap - EXIT INT TERM HUP
  if [ -n "$child" ]; then
    kill -TERM "$child" 2>/dev/null
    wait "$child" 2>/dev/null
  fi
  if [ "$engine_ready" = 1 ]; then
    log "cleanup: containers, networks$([ "$own_daemon" = 1 ] || echo ", images")"
    timeout 60 docker ps -aq --filter "label=$label" | xargs -r timeout 60 docker rm -f >/dev/null
    timeout 60 docker network ls -q --filter "label=$label" | xargs -r timeout 60 docker network rm >/dev/null 2>&1
    if [ "$own_daemon" = 0 ] && [ ${#ct_images[@]} -gt 0 ]; then
      timeout 120 docker rmi -f "${ct_images[@]}" >/dev/null 2>&1
    fi
  fi
  if [ -n "$dockerd_pid" ]; then
    log "cleanup: stopping the dockerd this test started (pid $dockerd_pid)"
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$dockerd_pid" 2>/dev/null
    wait "$dockerd_pid" 2>/dev/null
  fi
  if [ -n "$tmp" ]; then
    # Processes this test started that outlived the steps above (containerd and shims of its dockerd, a
    # chroot of an interrupted debootstrap) name its private directory on their command line (listed
    # first: grep's own command line names it too).
    leftovers=$(grep -lsF -- "$tmp/" /proc/[0-9]*/cmdline | cut -d/ -f3)
    for pid in $leftovers; do
      if [ "$pid" != "$$" ] && kill -KILL "$pid" 2>/dev/null; then log "cleanup: killed leftover pid $pid"; fi
    done
    # Mounts left under the private directory (overlay layers, network namespaces, debootstrap's /proc).
    findmnt -rn -o TARGET | grep -F -- "$tmp/" | sort -r | while read -r mnt; do umount -l "$mnt"; done
    rm -rf --one-file-system "$tmp"
  fi
  log "cleanup: done (exit $rc)"
  exit "$rc"
}

# ct_init: the temporary directory, ids and the traps.
ct_init() {
  tmp=$(mktemp -d "$TMPDIR/sbn-ct.XXXXXX")
  id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
  label="sbn.container-test=$id"
  trap ct_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

# ct_require CMD...: the preconditions of any engine (skip, not fail, where none can run).
ct_require() {
  local c free_kb
  [ "$(id -u)" -eq 0 ] || skip "needs root (dockerd, debootstrap); run as root or see docs/CLUSTER.md"
  for c in docker debootstrap "$@"; do
    command -v "$c" >/dev/null || skip "'$c' not found (scripts/setup.sh --tests installs docker.io and debootstrap)"
  done
  free_kb=$(df -Pk "$TMPDIR" | awk 'NR == 2 {print $4}')
  [ "${free_kb:-0}" -ge $((SBN_CT_MIN_FREE_GB * 1024 * 1024)) ] ||
    skip "less than $SBN_CT_MIN_FREE_GB GB free in $TMPDIR ($((${free_kb:-0} / 1024)) MB)"
}

ct_start_engine() {
  local dockerd_cmd
  if [ "$SBN_CT_OWN_DAEMON" != 1 ] && timeout 10 docker info >/dev/null 2>&1; then
    log "using the running Docker engine (${DOCKER_HOST:-default socket})"
  else
    command -v dockerd >/dev/null || skip "no running Docker engine and no dockerd (apt-get install docker.io)"
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
    grep -qw overlay /proc/filesystems || skip "the kernel has no overlay filesystem (needed by overlay2)"
    own_daemon=1
    export DOCKER_HOST="unix://$tmp/docker.sock"
    echo '{}' >"$tmp/daemon.json"
    dockerd_cmd=(dockerd --config-file "$tmp/daemon.json" --host "$DOCKER_HOST" --data-root "$tmp/data"
                 --exec-root "$tmp/exec" --pidfile "$tmp/dockerd.pid" --iptables=false --ip-forward=false
                 --bridge=none --storage-driver=overlay2)
    echo "+ ${dockerd_cmd[*]} >$tmp/dockerd.log 2>&1 &"
    "${dockerd_cmd[@]}" >"$tmp/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 1 120); do
      timeout 5 docker info >/dev/null 2>&1 && break
      if ! kill -0 "$dockerd_pid" 2>/dev/null; then
        tail -n 15 "$tmp/dockerd.log" | sed 's/^/  | /'
        dockerd_pid=""
        skip "dockerd exited at start (log above): no container engine can run here"
      fi
      sleep 0.5
    done
    timeout 5 docker info >/dev/null 2>&1 || { tail -n 15 "$tmp/dockerd.log" | sed 's/^/  | /'; skip "dockerd did not answer within 60s"; }
    log "private dockerd up (pid $dockerd_pid, data in $tmp)"
  fi
  engine_ready=1
}

# ct_base_image IMAGE [PKG...]: a debootstrap minbase of SBN_CT_SUITE (plus PKG, installed by debootstrap
# itself), imported as IMAGE. apt inside uses the host's mirror and its Acquire:: settings; apt lists
# are removed (as in the official images: the first apt-get needs an update).
ct_base_image() {
  local image=$1 rootfs="$tmp/rootfs" pkgs include=()
  shift
  pkgs=$(IFS=,; echo "$*")
  if [ -z "$SBN_CT_MIRROR" ]; then
    # shellcheck disable=SC2016  # $(REPO_URI) is apt's format syntax, not the shell's
    SBN_CT_MIRROR=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
                    awk -v s="$SBN_CT_SUITE" '$2 == s {print $1; exit}' || true)
    : "${SBN_CT_MIRROR:=http://deb.debian.org/debian}"
  fi
  case "$SBN_CT_MIRROR" in https:*) pkgs="ca-certificates${pkgs:+,$pkgs}" ;; esac
  [ -z "$pkgs" ] || include=("--include=$pkgs")
  logged "$tmp/debootstrap.log" debootstrap --variant=minbase "${include[@]}" "$SBN_CT_SUITE" "$rootfs" "$SBN_CT_MIRROR" ||
    fail "debootstrap of $SBN_CT_SUITE from $SBN_CT_MIRROR failed"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
  # The host's apt network settings (proxy, a mirror whose Release files are past Valid-Until, ...).
  apt-config dump 2>/dev/null | grep -E '^Acquire::(https?::Proxy|Check-Valid-Until|Check-Date|Retries|ForceIPv4) ' \
    >"$rootfs/etc/apt/apt.conf.d/90sbn-host" || true
  # Like the official slim images: no docs, man pages or locales; no service starts during builds.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90sbn-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  echo "+ tar -C $rootfs -c . | docker import - $image"
  ct_images+=("$image")
  tar --numeric-owner -C "$rootfs" -c . |
    docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c "LABEL $label" - "$image" >/dev/null
  rm -rf --one-file-system "$rootfs"
  log "base image $image: $SBN_CT_SUITE minbase${pkgs:+ + $pkgs} from $SBN_CT_MIRROR"
}
