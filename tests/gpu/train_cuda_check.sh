#!/usr/bin/env bash
# train_cuda_check.sh MPIEXEC... SYNCBN_TRAIN : syncbn-train on the GPU end to end (ctest gpu_train_cli_*),
# a few steps of a small resnet on synthetic CIFAR-shaped data.
# With a usable device: --device cuda trains in fp32 and bf16 and names the device in the rank table, and
# --device auto picks cuda. Without one: --device cuda fails fast with exactly one "error: ... no CUDA
# device" line (every rank agrees, rank 0 reports) and no MPI abort, and --device auto trains on the CPU.
# More ranks on a node than devices (np2 on a one-GPU machine): the clean "would share one CUDA device"
# refusal of --device cuda is a SKIP (exit 77), with or without SBN_REQUIRE_GPU. SBN_REQUIRE_GPU=1: the
# no-device outcome is a failure.
set -uo pipefail
# shellcheck source=SCRIPTDIR/cuda_check_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cuda_check_lib.sh"
common=(--dataset synthetic --synthetic-shape 3x32x32 --synthetic-train 256 --synthetic-test 64 --global-batch 32
        --max-steps 3 --log-every 1 --warmup-steps 1 --model resnet --width 4 --depth 1)
run() { run_logged 240 "$@"; }

run "$@" --device cuda "${common[@]}"
if [ "$rc" -eq 0 ]; then
  grep -q "device cuda" "$out" || fail "the header does not say 'device cuda'"
  grep -Eq "cuda:[0-9]+ .*\(PCI " "$out" || fail "the rank table does not name the GPU"
  grep -q "final test accuracy" "$out" || fail "no final evaluation"
  run "$@" --device cuda --precision bf16 "${common[@]}"
  [ "$rc" -eq 0 ] || fail "--precision bf16 failed"
  run "$@" --device auto "${common[@]}"
  if [ "$rc" -ne 0 ] || ! grep -q "device cuda" "$out"; then fail "--device auto did not pick the GPU"; fi
  echo "OK: trained on the GPU (fp32, bf16); --device auto picks cuda"
  exit 0
fi
skip_if_shared_device_refusal
if [ "${SBN_REQUIRE_GPU:-0}" = "1" ]; then fail "SBN_REQUIRE_GPU=1 and --device cuda failed"; fi
check_no_device_error
run "$@" --device auto "${common[@]}"
[ "$rc" -eq 0 ] || fail "--device auto failed without a GPU"
grep -q "device cpu" "$out" || fail "--device auto did not fall back to the CPU"
echo "OK: no device -> --device cuda: one clear error line, exit 1; --device auto: trained on the CPU"
