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
echo "# build: $BUILD_DIR ($BUILD_TYPE) ready; log in $log"
