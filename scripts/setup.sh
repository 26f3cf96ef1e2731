#!/usr/bin/env bash
# Installs syncbn's dependencies from Debian 12's registry with apt-get. Idempotent: when everything is
# installed it prints nothing and changes nothing. Runs as root as it is (a minimal Debian has no sudo),
# through sudo otherwise; safe with no terminal (DEBIAN_FRONTEND=noninteractive).
#   scripts/setup.sh                 build + run (compilers, CMake, git, Open MPI, Boost, BLAS, oneDNN, data)
#   scripts/setup.sh --tests         + what the test suite uses (GoogleTest, python3, bc, docker.io, debootstrap)
#   scripts/setup.sh --bench         + what the benchmarks and plots use (PyTorch 1.13 CPU, matplotlib, perf)
#   scripts/setup.sh --dev           + shellcheck (the shell scripts are kept shellcheck-clean)
#   scripts/setup.sh --all           everything
# The CUDA toolkit, NCCL and cuDNN are not Debian packages: see README "GPU path".
set -euo pipefail

# python3: launch/grad_accum.sh's summary table. openssh-client: Open MPI's mpirun wants an ssh agent
# even for a single node.
base=(
  build-essential cmake git ca-certificates
  libopenmpi-dev openmpi-bin openssh-client
  libboost-program-options-dev
  libopenblas-dev libdnnl-dev zlib1g-dev
  dataset-fashion-mnist
  python3
)
# GoogleTest (the suites), python3 (tests/train/train_checks.py), bc (tests/expect_fail.sh), docker.io and
# debootstrap (the container and fresh-machine tests). No test imports PyTorch or NumPy.
tests=(libgtest-dev python3 bc docker.io debootstrap)
bench=(python3-torch python3-numpy python3-matplotlib gnuplot-nox linux-perf)
dev=(shellcheck)

want=("${base[@]}")
for arg in "$@"; do
  case "$arg" in
    --tests) want+=("${tests[@]}") ;;
    --bench) want+=("${bench[@]}") ;;
    --dev) want+=("${dev[@]}") ;;
    --all) want+=("${tests[@]}" "${bench[@]}" "${dev[@]}") ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "error: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
  echo "error: no apt-get/dpkg: this script installs Debian 12 packages; elsewhere install the equivalents of:" >&2
  echo "  ${want[*]}" >&2
  exit 1
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    case " ${missing[*]-} " in *" $p "*) ;; *) missing+=("$p") ;; esac
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

# Root installs directly; anyone else through sudo (sudo resets the environment, hence `env`).
as_root=(env DEBIAN_FRONTEND=noninteractive)
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "error: installing packages needs root, and there is no sudo. Run this script as root" >&2
    echo "  (e.g. su -c '$0${*:+ $*}'), or have an administrator run:" >&2
    echo "  apt-get update && apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  as_root=(sudo "${as_root[@]}")
fi
echo "# setup: installing ${missing[*]}"
log=$(mktemp "${TMPDIR:-/tmp}/sbn-setup.XXXXXX")
trap 'rm -f "$log"' EXIT
for step in "apt-get update" "apt-get install -y --no-install-recommends ${missing[*]}"; do
  # shellcheck disable=SC2086  # $step is a command line of plain words by construction
  if ! "${as_root[@]}" $step >"$log" 2>&1; then
    tail -n 25 "$log" >&2
    echo "error: '$step' failed (output above)" >&2
    exit 1
  fi
done
echo "# setup: done"
