#!/usr/bin/env bash
# Image build step (docker/cuda.Dockerfile builder): provides oneDNN 2.x (syncbn uses the 2.x primitive
# API, >= 2.6). The distribution's libdnnl-dev is used when its candidate is 2.6..2.x (Debian 12 ships
# 2.6.3); otherwise (Ubuntu 22.04 ships 2.2, 24.04 ships 3.1) oneDNN $ONEDNN_VERSION is built from its
# release tarball, CPU engine only, into /usr/local. The source download needs the network at build time.
set -euo pipefail

: "${ONEDNN_VERSION:=2.7.5}"
: "${ONEDNN_URL:=https://github.com/oneapi-src/oneDNN/archive/refs/tags/v${ONEDNN_VERSION}.tar.gz}"
: "${ONEDNN_SHA256:=}"  # checked when given
: "${BUILD_JOBS:=2}"

candidate=$(apt-cache policy libdnnl-dev 2>/dev/null | awk '/Candidate:/ {print $2}')
if dpkg --compare-versions "${candidate:-0}" ge 2.6 && dpkg --compare-versions "$candidate" lt 3; then
  echo "# onednn: apt-get install libdnnl-dev ($candidate)"
  apt-get install -y -qq --no-install-recommends libdnnl-dev >/dev/null
  exit 0
fi

echo "# onednn: the distribution offers libdnnl-dev '${candidate:-none}', not 2.6..2.x; building $ONEDNN_VERSION"
work=$(mktemp -d)
echo "# onednn: curl -fsSL $ONEDNN_URL"
curl -fsSL "$ONEDNN_URL" -o "$work/onednn.tar.gz"
if [ -n "$ONEDNN_SHA256" ]; then echo "$ONEDNN_SHA256  $work/onednn.tar.gz" | sha256sum -c -; fi
tar -C "$work" -xzf "$work/onednn.tar.gz"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n 1)
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr/local \
  -DDNNL_CPU_RUNTIME=OMP -DDNNL_GPU_RUNTIME=NONE -DDNNL_BUILD_TESTS=OFF -DDNNL_BUILD_EXAMPLES=OFF
cmake --build "$work/build" -j "$BUILD_JOBS"
cmake --install "$work/build"
ldconfig
rm -rf "$work"
echo "# onednn: $ONEDNN_VERSION installed in /usr/local"
