#!/usr/bin/env bash
# Image build step (runtime stage of docker/cpu.Dockerfile and docker/cuda.Dockerfile): installs what
# the executables staged in /opt/syncbn (docker/build-in-image.sh) need, and checks that they resolve.
#  - the packages in /opt/syncbn/runtime-packages.txt plus $SBN_RUNTIME_EXTRA, skipping installed ones
#    (CUDA images hold some of theirs, e.g. libnccl2, and apt refuses to touch a held package)
#  - /opt/syncbn/lib (libraries built from source) on the loader path
#  - ldd: every library resolves, except those in $SBN_LDD_ALLOW (the NVIDIA runtime injects libcuda)
#  - the executables linked into /usr/local/bin
set -euo pipefail

: "${SBN_RUNTIME_EXTRA:=openmpi-bin openssh-server openssh-client dataset-fashion-mnist}"
: "${SBN_LDD_ALLOW:=}"
export DEBIAN_FRONTEND=noninteractive

want=()
for p in $(cat /opt/syncbn/runtime-packages.txt) $SBN_RUNTIME_EXTRA; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then want+=("$p"); fi
done
if [ ${#want[@]} -gt 0 ]; then
  echo "# install-runtime: apt-get install ${want[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  rm -rf /var/lib/apt/lists/*
fi

echo /opt/syncbn/lib >/etc/ld.so.conf.d/syncbn.conf
ldconfig
for lib in $(ldd /opt/syncbn/bin/* | awk '$2 == "=>" && $3 == "not" {print $1}' | sort -u); do
  case " $SBN_LDD_ALLOW " in
    *" $lib "*) echo "# install-runtime: $lib is left to the container runtime" ;;
    *) echo "error: $lib, needed by the syncbn executables, is not in the image" >&2; exit 1 ;;
  esac
done
ln -sf /opt/syncbn/bin/* /usr/local/bin/
echo "# install-runtime: linked $(cd /opt/syncbn/bin && echo *) into /usr/local/bin"
