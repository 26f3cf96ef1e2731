#!/usr/bin/env bash
# Configures and builds syncbn in ./build (Release). Extra arguments go to cmake's configure step,
# e.g. scripts/build.sh -DSBN_ENABLE_CUDA=OFF or -DCMAKE_CUDA_ARCHITECTURES=90.
# Progress lines are filtered out; warnings, errors and the build summary are shown.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BUILD_DIR:=build}"
: "${BUILD_TYPE:=Release}"
: "${JOBS:=$(nproc)}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" "$@" | grep -E "syncbn:|Error|Warning" || true
log="$BUILD_DIR/build.log"
if ! cmake --build "$BUILD_DIR" -j"$JOBS" >"$log" 2>&1; then
  grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)' "$log" | tail -40
  echo "error: build failed; full log in $log" >&2
  exit 1
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
