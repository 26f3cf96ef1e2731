#!/usr/bin/env bash
# Installs syncbn's dependencies from Debian's registry. Idempotent: packages already installed are
# skipped and nothing is printed; safe as root with no terminal (DEBIAN_FRONTEND=noninteractive).
#   scripts/setup.sh                 build + run (compilers, CMake, Open MPI, Boost, BLAS, oneDNN, data)
#   scripts/setup.sh --tests         + what the test suite needs (GoogleTest, docker.io, debootstrap, ...)
#   scripts/setup.sh --bench         + what the benchmarks and plots need (PyTorch 1.13 CPU, matplotlib)
#   scripts/setup.sh --all           everything
# The CUDA toolkit, NCCL and cuDNN are not Debian packages: see README "GPU path".
set -euo pipefail

base=(
  build-essential cmake pkg-config git bc
  libopenmpi-dev openmpi-bin openssh-client
  libboost-program-options-dev
  libopenblas-dev libdnnl-dev zlib1g-dev
  dataset-fashion-mnist
  python3
)
tests=(libgtest-dev libgmock-dev libbenchmark-dev shellcheck docker.io debootstrap python3-torch python3-numpy)
bench=(python3-torch python3-numpy python3-matplotlib gnuplot-nox linux-perf)

want=("${base[@]}")
for arg in "$@"; do
  case "$arg" in
    --tests) want+=("${tests[@]}") ;;
    --bench) want+=("${bench[@]}") ;;
    --all) want+=("${tests[@]}" "${bench[@]}") ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "error: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    case " ${missing[*]-} " in *" $p "*) ;; *) missing+=("$p") ;; esac
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
