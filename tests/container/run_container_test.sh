#!/usr/bin/env bash
# Container test: builds the CPU image (docker/cpu.Dockerfile) from this source tree and runs ONE
# 2-rank MPI job across two containers, rank 0 in "head" and rank 1 in "worker", started by mpirun on
# the head over ssh (port 2222) on a user-defined bridge network. Then it checks what the job wrote.
#   Job: syncbn-train (synthetic data, convnet, sync BN, 20 steps) when the image has it, else the
#   syncbn-bench SyncBN layer table (SBN_CT_JOB=train|bench forces one).
#   Checks: the job map puts rank 0 on head and rank 1 on worker; train: every metrics.csv row has
#   world_size 2, the train loss decreases, the rank → host table names two different hosts;
#   bench: the layer table and both JSON rows say 2 ranks.
# Engine, base image and cleanup: tests/container/lib.sh (shared with run_fresh_test.sh): a running
# Docker engine if one answers (SBN_CT_OWN_DAEMON=auto), else its own dockerd; the base image is a
# debootstrap --variant=minbase imported with `docker import` (no registry is needed); apt inside the
# builds uses the host's Debian mirror and its Acquire:: settings. Everything it makes (containers,
# network, images, the dockerd it started, temporary files) is removed on exit, also on failure or
# interrupt. Exit 0 pass, 1 fail, 77 skip (not root, no docker/dockerd/debootstrap, no overlay
# filesystem, less than 4 GB in TMPDIR, or no engine started).
# Usage: tests/container/run_container_test.sh [SOURCE_DIR]     (ctest -L container runs it)
set -euo pipefail

: "${SBN_CT_SRC:=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}}"
: "${SBN_CT_CPU_ARCH:=}"              # -march of the image; empty: x86-64-v3 if this CPU has it, else v2
: "${SBN_CT_JOBS:=2}"                 # compile jobs inside the image build
: "${SBN_CT_JOB:=auto}"               # auto | train | bench
: "${SBN_CT_GIT_REF:=}"               # build this commit's sources; empty: the work tree as it is
: "${SBN_CT_STEPS:=20}"               # syncbn-train --max-steps
# Extra trainer flags: with the default 100-step warm-up a 20-step run barely moves the weights.
: "${SBN_CT_TRAIN_ARGS:=--warmup-steps 5}"
: "${SBN_CT_SSH_PORT:=2222}"
: "${SBN_CT_SHM:=256m}"               # --shm-size of each container
: "${SBN_CT_BUILDKIT:=0}"             # DOCKER_BUILDKIT for docker build (0: the classic builder)
# Shared with run_fresh_test.sh (defaults in lib.sh): SBN_CT_SUITE (bookworm), SBN_CT_MIRROR (the host's),
# SBN_CT_OWN_DAEMON (auto | 1), SBN_CT_DEADLINE (1400 s), SBN_CT_MIN_FREE_GB (4), TMPDIR.
ct_name="container test"
# shellcheck source=tests/container/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---- preconditions (skip, not fail, where no engine can run) -----------------------------------------
# The base, the builder stage and the image take about 2 GB under TMPDIR (the engine's data-root).
ct_require timeout tar
[ -f "$SBN_CT_SRC/docker/cpu.Dockerfile" ] || fail "no docker/cpu.Dockerfile under '$SBN_CT_SRC'"
ct_init
base_image="sbn-ct-base:$id"
builder_image="sbn-ct-builder:$id"
image="sbn-ct-cpu:$id"
net="sbn-ct-$id"
head="sbn-ct-$id-head"
worker="sbn-ct-$id-worker"

# ---- engine ------------------------------------------------------------------------------------------
ct_start_engine
export DOCKER_BUILDKIT="$SBN_CT_BUILDKIT"
t_engine=$((SECONDS - t0))

# ---- base image: debootstrap minbase, the host's mirror and apt network settings ---------------------
ct_base_image "$base_image"
t_base=$((SECONDS - t0))

# ---- CPU image -----------------------------------------------------------------------------------------
# The build context is the tree as git sees it (tracked and untracked-but-not-ignored files), so build
# directories and runs never enter it; a tree without git is copied without build*/, runs/, .git/.
# SBN_CT_GIT_REF=HEAD (or any commit) builds that commit's sources with the work tree's docker/ files.
ctx="$tmp/context"
mkdir -p "$ctx"
if [ -n "$SBN_CT_GIT_REF" ]; then
  echo "+ git -C $SBN_CT_SRC archive $SBN_CT_GIT_REF | tar -C $ctx -x"
  git -C "$SBN_CT_SRC" archive --format=tar "$SBN_CT_GIT_REF" | tar -C "$ctx" -xf -
  rm -rf "$ctx/docker"
  cp -a "$SBN_CT_SRC/docker" "$ctx/docker"
elif command -v git >/dev/null && git -C "$SBN_CT_SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$SBN_CT_SRC" && git ls-files -z --cached --others --exclude-standard |
     while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
     tar --null -T - -cf -) | tar -C "$ctx" -xf -
else
  tar -C "$SBN_CT_SRC" --exclude=./.git --exclude='./build*' --exclude=./runs -cf - . | tar -C "$ctx" -xf -
fi
if [ -z "$SBN_CT_CPU_ARCH" ]; then
  SBN_CT_CPU_ARCH=x86-64-v2
  if /lib64/ld-linux-x86-64.so.2 --help 2>/dev/null | grep -q '^ *x86-64-v3 (supported'; then SBN_CT_CPU_ARCH=x86-64-v3; fi
fi
build_args=(--build-arg "BASE_IMAGE=$base_image" --build-arg "SBN_CPU_ARCH=$SBN_CT_CPU_ARCH"
            --build-arg "BUILD_JOBS=$SBN_CT_JOBS")
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  if [ -n "${!v:-}" ]; then build_args+=(--build-arg "$v"); fi
done
build=(docker build --network host --force-rm -f "$ctx/docker/cpu.Dockerfile" "${build_args[@]}" --label "$label")
# The builder stage gets a tag of its own so that cleanup on a shared engine removes its layers too;
# the full build then reuses it from the cache.
ct_images+=("$image" "$builder_image")
logged "$tmp/build-builder.log" "${build[@]}" --target builder -t "$builder_image" "$ctx" ||
  fail "image build (builder stage) failed; log above"
grep -E '^# build-in-image' "$tmp/build-builder.log" || true
log "builder stage built"
t_builder=$((SECONDS - t0))
logged "$tmp/build.log" "${build[@]}" -t "$image" "$ctx" || fail "image build failed; log above"
log "image $image built (-march=$SBN_CT_CPU_ARCH, $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
t_image=$((SECONDS - t0))

# ---- two containers on a user-defined bridge network ------------------------------------------------
logged "$tmp/network.log" docker network create --driver bridge --label "$label" "$net" ||
  fail "docker network create failed"
subnet=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$net" | awk '{print $1}')
memlock=$(ulimit -H -l)
if [ "$memlock" = unlimited ]; then memlock=-1; else memlock=$((memlock * 1024)); fi
for role in head worker; do
  name=$head
  [ "$role" = worker ] && name=$worker
  # (a private dockerd has IP forwarding off, and docker run says so: containers on one bridge need none)
  logged "$tmp/run-$role.log" docker run -d --name "$name" --hostname "$role" --network "$net" \
    --network-alias "$role" --shm-size "$SBN_CT_SHM" --ulimit "memlock=$memlock" --label "$label" "$image" ||
    fail "docker run of the $role container failed"
done
# sshd in both (the job needs the worker's; the head's shows the image serves either role).
for pair in "$head worker" "$worker head"; do
  read -r from to <<<"$pair"
  for i in $(seq 1 60); do
    docker exec "$from" ssh -p "$SBN_CT_SSH_PORT" "$to" true 2>/dev/null && break
    [ "$i" -lt 60 ] || { docker logs "$worker" 2>&1 | tail -n 10; fail "ssh $to:$SBN_CT_SSH_PORT from $from does not answer"; }
    sleep 0.5
  done
done
log "containers up: head and worker on $net ($subnet), sshd on $SBN_CT_SSH_PORT"

# ---- one mpirun job, rank 0 on head, rank 1 on worker -----------------------------------------------
job=$SBN_CT_JOB
if [ "$job" = auto ]; then
  job=bench
  if docker exec "$head" test -x /usr/local/bin/syncbn-train; then job=train; fi
fi
run_dir=/runs/ct
for c in "$head" "$worker"; do docker exec "$c" mkdir -p "$run_dir"; done
case "$job" in
  train)
    # shellcheck disable=SC2206  # SBN_CT_TRAIN_ARGS is a list of words by design
    app=(syncbn-train --dataset synthetic --model convnet --global-batch 32 --max-steps "$SBN_CT_STEPS"
         --log-every 5 --norm sync --run-dir "$run_dir" $SBN_CT_TRAIN_ARGS) ;;
  bench) app=(syncbn-bench --layer-only --shapes 8x16x8x8 --reps 5 --json "$run_dir/bench.jsonl") ;;
  *) fail "SBN_CT_JOB must be auto, train or bench, got '$SBN_CT_JOB'" ;;
esac
log "job: $job ($(docker exec "$head" sed -n 's/^targets=//p' /opt/syncbn/BUILD_INFO) in the image)"
hosts_arg="head:1,worker:1"
mpirun=(mpirun -np 2 -H "$hosts_arg" --display-map --bind-to none --timeout 300
        --mca plm_rsh_args "-p $SBN_CT_SSH_PORT" --mca btl "self,tcp"
        --mca btl_tcp_if_include "$subnet" --mca oob_tcp_if_include "$subnet")
job_rc=0
logged "$tmp/job.log" docker exec "$head" "${mpirun[@]}" "${app[@]}" || job_rc=$?
[ "$job_rc" -ne 0 ] || cat "$tmp/job.log"
[ "$job_rc" -eq 0 ] || fail "the 2-rank job exited with $job_rc (log above)"
t_job=$((SECONDS - t0))

# ---- checks ------------------------------------------------------------------------------------------
# The job map (mpirun --display-map): the node each rank ran on.
map=$(awk '/Data for node:/ {node = $4} /Process rank:/ {for (i = 1; i < NF; i++) if ($i == "rank:") print $(i + 1), node}' \
        "$tmp/job.log" | sort -u)
if ! grep -qx '0 head' <<<"$map" || ! grep -qx '1 worker' <<<"$map"; then
  fail "the job map does not put rank 0 on head and rank 1 on worker: $(tr '\n' ';' <<<"$map")"
fi
mkdir -p "$tmp/run"
docker cp "$head:$run_dir/." "$tmp/run/"
case "$job" in
  train)
    for f in config.ini metrics.csv metrics.jsonl; do
      [ -s "$tmp/run/$f" ] || fail "the run directory has no $f"
    done
    # The rank → host table rank 0 prints: "# rank  host  local_rank" then "#    R  HOST  L" rows.
    hosts=$(awk '/^# *rank +host/ {t = 1; next} t && /^# +[0-9]+ +[^ ]+/ {print $2, $3; next} t {t = 0}' "$tmp/job.log" | sort -u)
    h0=$(awk '$1 == 0 {print $2}' <<<"$hosts")
    h1=$(awk '$1 == 1 {print $2}' <<<"$hosts")
    if [ -z "$h0" ] || [ -z "$h1" ]; then fail "no rank → host table with ranks 0 and 1 in the log"; fi
    [ "$h0" != "$h1" ] || fail "ranks 0 and 1 report the same host '$h0'"
    summary=$(awk -F, '
      NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i
                if (!("kind" in col) || !("loss" in col) || !("world_size" in col)) { print "metrics.csv header lacks kind/loss/world_size: " $0; exit 1 }
                next }
      NF == 0 { next }
      { rows++
        if ($col["world_size"] != 2) { print "row " NR " has world_size " $col["world_size"]; bad = 1 }
        if ($col["kind"] == "train") {
          loss[++n] = $col["loss"]
          if (loss[n] !~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/) { print "row " NR " has loss " loss[n]; bad = 1 } } }
      END { if (bad) exit 1
            if (n < 2) { print "fewer than 2 train rows"; exit 1 }
            # One logged step is one batch: compare the mean of the first and the second half of them.
            h = int(n / 2)
            for (i = 1; i <= h; i++) { a += loss[i]; b += loss[n + 1 - i] }
            a /= h; b /= h
            if (!(b < a)) { printf "train loss did not decrease: mean %.4f over the first %d logged steps, %.4f over the last %d\n", a, h, b, h; exit 1 }
            printf "%d rows, world_size 2 in all; train loss %s -> %s (mean %.4f -> %.4f) over %d logged steps\n", rows, loss[1], loss[n], a, b, n }' \
      "$tmp/run/metrics.csv") || fail "metrics.csv: $summary"
    log "metrics: $summary; rank 0 on '$h0', rank 1 on '$h1'"
    ;;
  bench)
    ranks=$(awk '$1 == "8x16x8x8" {print $3}' "$tmp/job.log")
    [ "$ranks" = 2 ] || fail "the layer table does not show 2 ranks (got '${ranks:-nothing}')"
    rows=$(grep -c '"kind":"layer".*"world_size":2,"rank":[01],' "$tmp/run/bench.jsonl" || true)
    [ "$rows" = 2 ] || fail "bench.jsonl: expected 2 layer rows with world_size 2, found $rows"
    log "bench: layer table over 2 ranks, JSON rows for ranks 0 and 1 (syncbn-train not in the image)"
    ;;
esac

log "timings: engine ${t_engine}s, base image $((t_base - t_engine))s, builder stage $((t_builder - t_base))s," \
    "runtime stage $((t_image - t_builder))s," \
    "containers+job $((t_job - t_image))s, total $((SECONDS - t0))s"
echo "PASS: container test ($job): one mpirun, rank 0 in container 'head', rank 1 in container 'worker'"
