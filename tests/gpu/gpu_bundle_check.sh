#!/usr/bin/env bash
# gpu_bundle_check.sh REPO BUILD : scripts/gpu_bundle.sh end to end (ctest gpu_bundle; fast xz level):
# the folder is at most 64 MiB; the payload holds the apps and gpu test binaries, the check scripts, the
# libraries a bare machine lacks (Open MPI, Boost, oneDNN) and a relocatable Open MPI, and NOT the
# libraries that machine provides (libcuda, NCCL, cuBLAS, cuDNN, glibc); and a bundled binary starts as
# an Open MPI singleton from the bundle alone (OPAL_PREFIX, isolated singleton, no orted).
set -uo pipefail
repo=$1 build=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
XZ_LEVEL=0 "$repo/scripts/gpu_bundle.sh" "$build" "$tmp/b" >"$tmp/log" 2>&1 || { cat "$tmp/log"; fail "gpu_bundle.sh failed"; }
tail -n 3 "$tmp/log"
tail -n 1 "$tmp/log" | grep -q "^bash $tmp/b/gpu_check.sh $tmp/b " || fail "the last line is not the command to run"
mib=$(du -sm "$tmp/b" | cut -f1)
[ "$mib" -le 64 ] || fail "bundle is $mib MiB"
tar -tJf "$tmp/b/payload.tar.xz" >"$tmp/list" || fail "payload.tar.xz unreadable"
for f in bin/syncbn-bench bin/syncbn-train bin/test_gpu tests/bench_cuda_check.sh \
         tests/cuda_check_lib.sh lib/libmpi.so.40 lib/libboost_program_options.so.1.74.0 lib/libdnnl.so.2 \
         ompi/bin/mpirun ompi/bin/orted ompi/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_ess_singleton.so; do
  grep -qx "$f" "$tmp/list" || fail "payload lacks $f"
done
if grep -E 'lib/(libcuda\.so|libnccl|libcublas|libcudnn|libc\.so|libm\.so)' "$tmp/list"; then fail "payload carries libraries the machine provides"; fi
mkdir "$tmp/u" && tar -xJf "$tmp/b/payload.tar.xz" -C "$tmp/u"
out=$(env LD_LIBRARY_PATH="$tmp/u/lib" OPAL_PREFIX="$tmp/u/ompi" \
      OMPI_MCA_ess_singleton_isolated=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      timeout 60 "$tmp/u/bin/test_device_select" 2>&1)
echo "$out" | tail -n 1
echo "$out" | grep -q "PASSED" || fail "a bundled binary did not run as a singleton from the bundle"
echo "OK: bundle ${mib} MiB with binaries, libraries and a relocatable Open MPI; singleton start from the bundle"
