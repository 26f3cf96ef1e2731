#!/usr/bin/env bash
# Configures and builds syncbn in ./build (Release). Extra arguments go to cmake's configure step,
# e.g. scripts/build.sh -DSBN_ENABLE_CUDA=OFF or -DCMAKE_CUDA_ARCHITECTURES=90.
# Progress lines are filtered out; warnings, errors and the build summary are shown. A failed configure
# or build prints cmake's or the compiler's own error and exits with cmake's status.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BUILD_DIR:=build}"
: "${BUILD_TYPE:=Release}"
: "${JOBS:=$(nproc)}"

mkdir -p "$BUILD_DIR"
conf_log="$BUILD_DIR/configure.log"
rc=0
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" "$@" >"$conf_log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  # cmake's own message: from its first "CMake Error" on (the rest of the log is the checks that passed).
  { if grep -q '^CMake Error' "$conf_log"; then sed -n '/^CMake Error/,$p' "$conf_log" | head -60
    else tail -n 40 "$conf_log"; fi; } >&2
  echo "error: cmake configure of $BUILD_DIR failed (exit $rc); full log in $conf_log" >&2
  exit "$rc"
fi
# syncbn's own status lines and cmake's warnings (each block up to the next "-- " status line).
awk '/^CMake (Deprecation )?Warning/ {w = 1} /^-- / {w = 0} w || /^-- syncbn:/' "$conf_log"

log="$BUILD_DIR/build.log"
rc=0
cmake --build "$BUILD_DIR" -j"$JOBS" >"$log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  # Without the progress lines; with parallel jobs the first error can be far from the end, so show
  # from a few lines before it, then the end of the log (make's summary of what failed).
  filtered=$(grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)' "$log" || true)
  first=$(grep -nE 'error|Error' <<<"$filtered" | head -n 1 | cut -d: -f1 || true)
  if [ -n "$first" ] && [ "$(wc -l <<<"$filtered")" -gt 60 ]; then
    sed -n "$((first > 5 ? first - 5 : 1)),$((first + 45))p" <<<"$filtered" >&2
    echo "  ..." >&2
    tail -n 10 <<<"$filtered" >&2
  else
    tail -n 60 <<<"$filtered" >&2
  fi
  echo "error: build failed (exit $rc); full log in $log" >&2
  exit "$rc"
fi
grep -iE 'warning' "$log" | head -20 || true
# The CUDA path: every .cu compiled by nvcc and the GPU library/app links are part of the build record.
grep -E "Building CUDA object|Linking CXX (static library|executable).*(syncbn_cuda|syncbn-train|syncbn-bench)" "$log" || true
cuda=$(grep -c "Building CUDA object" "$log" || true)
if [ "$cuda" -gt 0 ]; then
  echo "# build: $cuda CUDA sources compiled by nvcc; ptxas: $(grep -c 'Used [0-9]* registers' "$log" || true) kernel" \
       "reports, $(grep -c 'bytes spill stores' "$log" | tr -d ' ') spill lines, $(grep 'bytes spill stores' "$log" | grep -vc ' 0 bytes spill stores, 0 bytes spill loads' || true) with spills"
fi
for app in syncbn-train syncbn-bench; do
  bin="$BUILD_DIR/src/apps/$app"
  libs=$(ldd "$bin" 2>/dev/null | grep -oE 'lib(cudart|nccl|cublas|cudnn)\.so[.0-9]*' | sort -u | tr '\n' ' ' || true)
  [ -z "$libs" ] || echo "# build: $app links $libs"
done
echo "# build: $BUILD_DIR ($BUILD_TYPE) ready; log in $log"
