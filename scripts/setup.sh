#!/usr/bin/env bash
# Installs syncbn's build and run dependencies from Debian's registry.
# Idempotent: packages already present are skipped and nothing is printed for them; safe as root with no
# terminal (DEBIAN_FRONTEND=noninteractive). Run it as root or through sudo.
#   scripts/setup.sh            build + test + run dependencies
#   SBN_SETUP_EXTRA="docker.io debootstrap" scripts/setup.sh   also install extra packages
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libopenmpi-dev openmpi-bin
  libboost-program-options-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev libdnnl-dev
  dataset-fashion-mnist
  python3 python3-numpy
)
# shellcheck disable=SC2206
packages+=(${SBN_SETUP_EXTRA:-})

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
echo "# setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "# setup: done"
