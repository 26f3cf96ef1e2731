#!/usr/bin/env bash
# Builds syncbn inside an image's builder stage (docker/cpu.Dockerfile, docker/cuda.Dockerfile) and
# stages what the runtime stage needs under $OUT:
#   $OUT/bin/                   the executables that exist among $SBN_TARGETS
#   $OUT/launch/                the repository's launch/ scripts (empty if it has none)
#   $OUT/BUILD_INFO             key=value lines: cpu_arch, cuda, targets, build_type
#   $OUT/runtime-packages.txt   the packages owning every shared library the executables load
#                               (derived with ldd + dpkg -S, so a new link dependency needs no edit here)
#   $OUT/lib/                   libraries the executables load that no package owns (built from source)
# Targets that the source tree does not define yet are skipped with a note, so one Dockerfile serves
# before and after a target lands; an existing target that fails to build fails the image.
# Usage: docker/build-in-image.sh [extra cmake configure arguments...]   (run from the source root)
set -euo pipefail

: "${SRC:=$PWD}"
: "${BUILD:=/tmp/sbn-build}"
: "${OUT:=/out}"
: "${BUILD_TYPE:=Release}"
: "${BUILD_JOBS:=2}"
: "${SBN_CPU_ARCH:=x86-64-v3}"
: "${SBN_ENABLE_CUDA:=OFF}"
: "${SBN_TARGETS:=syncbn-train syncbn-bench}"

configure=(cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DSBN_ENABLE_CUDA="$SBN_ENABLE_CUDA"
           -DSBN_CPU_ARCH="$SBN_CPU_ARCH" -DSBN_BUILD_TESTS=OFF "$@")
echo "# build-in-image: ${configure[*]}"
"${configure[@]}"

# `--target help` lists the targets this tree defines (Makefile and Ninja generators alike).
defined=$(cmake --build "$BUILD" --target help)
targets=()
for t in $SBN_TARGETS; do
  if grep -Eq "(^|[ .])${t}(:| |\$)" <<<"$defined"; then
    targets+=("$t")
  else
    echo "# build-in-image: target '$t' is not defined in this source tree; skipped"
  fi
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "error: none of the targets '$SBN_TARGETS' is defined in $SRC" >&2
  exit 1
fi
build=(cmake --build "$BUILD" -j "$BUILD_JOBS" --target "${targets[@]}")
echo "# build-in-image: ${build[*]}"
"${build[@]}"

mkdir -p "$OUT/bin" "$OUT/launch"
for t in "${targets[@]}"; do
  exe=$(find "$BUILD" -type f -name "$t" -perm -u+x | head -n 1)
  [ -n "$exe" ] || { echo "error: built target '$t' but found no executable named '$t' in $BUILD" >&2; exit 1; }
  install -m 0755 "$exe" "$OUT/bin/$t"
done
if [ -d "$SRC/launch" ]; then cp -a "$SRC/launch/." "$OUT/launch/"; fi
{
  echo "cpu_arch=$SBN_CPU_ARCH"
  echo "cuda=$SBN_ENABLE_CUDA"
  echo "build_type=$BUILD_TYPE"
  echo "targets=${targets[*]}"
} >"$OUT/BUILD_INFO"

# Runtime packages: for each library ldd resolves, the package that ships it. ldd may report a path
# through the merged-/usr symlinks (/lib/...) or an alternatives link, so the /usr-toggled path and
# the real path are tried as well. A library no package owns but built into /usr/local or /opt (oneDNN
# from source, docker/onednn.sh) is copied to $OUT/lib. Libraries ldd cannot resolve here (libcuda.so.1,
# which the NVIDIA container runtime injects at run time) are listed and left out.
owner() {
  local p
  for p in "$1" "${1/#\/lib\//\/usr\/lib\/}" "${1/#\/usr\/lib\//\/lib\/}" "$(readlink -f "$1")"; do
    if dpkg-query -S "$p" >/dev/null 2>&1; then
      dpkg-query -S "$p" | head -n 1 | cut -d: -f1 | cut -d, -f1
      return 0
    fi
  done
  return 1
}
mkdir -p "$OUT/lib"
: >"$OUT/runtime-packages.txt"
while read -r soname path; do
  if pkg=$(owner "$path"); then
    echo "$pkg" >>"$OUT/runtime-packages.txt"
  elif [[ "$(readlink -f "$path")" == /usr/local/* || "$(readlink -f "$path")" == /opt/* ]]; then
    echo "# build-in-image: $soname is not from a package; copied from $path"
    cp -L "$path" "$OUT/lib/$soname"
  else
    echo "error: no installed package owns $path (needed by the syncbn executables)" >&2
    exit 1
  fi
done < <(ldd "$OUT"/bin/* | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u)
missing=$(ldd "$OUT"/bin/* | awk '$2 == "=>" && $3 == "not" {print $1}' | sort -u | tr '\n' ' ')
if [ -n "$missing" ]; then echo "# build-in-image: not resolvable at build time (provided at run time?): $missing"; fi
sort -u -o "$OUT/runtime-packages.txt" "$OUT/runtime-packages.txt"
echo "# build-in-image: built ${targets[*]} (-march=$SBN_CPU_ARCH, CUDA $SBN_ENABLE_CUDA);" \
     "runtime packages: $(tr '\n' ' ' <"$OUT/runtime-packages.txt")"
