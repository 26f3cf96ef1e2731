#!/usr/bin/env bash
# gpu_bundle.sh — HERE (the build machine): packs what scripts/gpu_check.sh needs on a bare GPU machine
# (CUDA 13 driver and toolkit, Python with the NVIDIA NCCL/cuDNN/cuBLAS wheels, but no MPI, Boost or
# oneDNN) into one folder of at most 64 MiB, and prints the one command to run there.
#
#   scripts/gpu_bundle.sh [BUILD] [DEST]        (defaults: build, BUILD/gpu-bundle)
#
# DEST/gpu_check.sh      the check script (a copy; the repository's own works as well)
# DEST/payload.tar.xz    bin/     the apps and gpu test binaries, stripped
#                        tests/   the end-to-end check scripts (bench_cuda_check.sh, train_cuda_check.sh, lib)
#                        lib/     every shared library they load (ldd) that the machine lacks: Open MPI,
#                                 Boost.Program_options, oneDNN, OpenBLAS, hwloc, libevent, libstdc++, ...
#                                 and libcudart; NOT glibc, the driver (libcuda), NCCL, cuBLAS, cuDNN
#                                 (hundreds of MB; gpu_check.sh finds them in the wheels or the toolkit)
#                        ompi/    a relocatable Open MPI (OPAL_PREFIX): mpirun, orted, the MCA components
#                                 with their own libraries, the help texts — for runs of more than one rank
# gpu_check.sh unpacks the payload on first use. One rank needs no mpirun at all (singleton init with
# OMPI_MCA_ess_singleton_isolated=1, which gpu_check.sh sets). Fails if the folder exceeds 64 MiB.
set -euo pipefail

BUILD=${1:-build}
DEST=${2:-$BUILD/gpu-bundle}
: "${MAX_MIB:=64}"
: "${XZ_LEVEL:=3}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OMPI_LIBDIR=/usr/lib/x86_64-linux-gnu/openmpi/lib  # Debian's Open MPI (prefix /usr)

bins=(src/apps/syncbn-bench src/apps/syncbn-train tests/gpu/test_gpu tests/gpu/test_gpu_emulation
      tests/gpu/test_device_select tests/gpu/test_staged_comm)
for b in "${bins[@]}"; do [ -x "$BUILD/$b" ] || { echo "error: $BUILD/$b missing: build first"; exit 1; }; done
optional=(tests/gpu/test_gpu_train tests/gpu/test_step_status)  # only in builds with cuDNN
for b in "${optional[@]}"; do if [ -x "$BUILD/$b" ]; then bins+=("$b"); fi; done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/tests" "$stage/lib" "$stage/ompi/bin" "$stage/ompi/share"

echo "# binaries"
for b in "${bins[@]}"; do strip -o "$stage/bin/$(basename "$b")" "$BUILD/$b"; done
cp "$here"/tests/gpu/{bench_cuda_check.sh,train_cuda_check.sh,cuda_check_lib.sh} "$stage/tests/"

echo "# Open MPI (relocatable through OPAL_PREFIX)"
mkdir -p "$stage/ompi/lib/x86_64-linux-gnu/openmpi/lib"
cp -a "$OMPI_LIBDIR/openmpi3" "$stage/ompi/lib/x86_64-linux-gnu/openmpi/lib/"
cp -a /usr/share/openmpi "$stage/ompi/share/"
cp -L /usr/bin/orterun "$stage/ompi/bin/mpirun"
cp -L /usr/bin/orted "$stage/ompi/bin/orted"

# Shared libraries of `files` that the bare machine lacks (see the header for what stays out).
needed_libs() {
  ldd "$@" 2>/dev/null | awk '/=> \// {print $3}' | sort -u | grep -Ev \
    '/(libc|libm|libdl|libpthread|librt|libutil|libresolv|ld-linux-x86-64)\.so|/libcuda\.so|/libnccl|/libcublas|/libcudnn|/libnvrtc|/libnvJitLink' \
    || true
}
echo "# shared libraries"
mapfile -t libs < <(needed_libs "$stage"/bin/* "$stage"/ompi/bin/* "$stage"/ompi/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/*.so)
for l in "${libs[@]}"; do cp -L "$l" "$stage/lib/"; done
strip --strip-unneeded "$stage"/lib/*.so* 2>/dev/null || true

echo "# compressing (xz -$XZ_LEVEL)"
rm -rf "$DEST"
mkdir -p "$DEST"
tar -C "$stage" -cf - bin tests lib ompi | xz -T2 "-$XZ_LEVEL" >"$DEST/payload.tar.xz"
cp "$here/scripts/gpu_check.sh" "$DEST/gpu_check.sh"
mib=$(du -sm "$DEST" | cut -f1)
echo "# $DEST: ${mib} MiB (limit $MAX_MIB): ${#bins[@]} binaries, ${#libs[@]} libraries, Open MPI $(ompi_info --version 2>/dev/null | head -n 1 | awk '{print $NF}')"
[ "$mib" -le "$MAX_MIB" ] || { echo "error: $DEST is ${mib} MiB, over the ${MAX_MIB} MiB limit"; exit 1; }
echo "# on the GPU machine (repository root, $DEST carried there), one command:"
echo "bash $DEST/gpu_check.sh $DEST \"\${OUT:-.}/gpu-check\""
