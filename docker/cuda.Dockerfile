# syncbn CUDA image: the trainer and benchmark with the CUDA/NCCL path (one rank per GPU), Open MPI for
# launch and the CPU path, sshd on port 2222, Fashion-MNIST. Needs the NVIDIA container toolkit to run
# (docker run --gpus all, compose.gpu.yaml, or nvidia.com/gpu in Kubernetes).
# Build from the repository root (see docs/CLUSTER.md):
#   docker build -f docker/cuda.Dockerfile -t syncbn:cuda .
# Build arguments:
#   BASE_IMAGE           CUDA devel image with apt and NVIDIA's apt repository configured (nvcc, NCCL)
#   RUNTIME_IMAGE        the matching CUDA runtime image (cudart; NCCL is installed from the same repo)
#   CUDA_ARCHITECTURES   GPU architectures to compile for (80: A100, 90: H100; add 86/89 for RTX cards)
#   SBN_CPU_ARCH         -march for the CPU code, as in cpu.Dockerfile (x86-64-v3; x86-64-v2 for old CPUs)
#   ONEDNN_VERSION       oneDNN 2.x built from source when the distribution has no 2.6..2.x libdnnl-dev
#                        (Ubuntu 24.04 ships 3.1, 22.04 ships 2.2); see docker/onednn.sh
#   NCCL_PACKAGE         NCCL development package, installed when the base image lacks it ("" to skip)
#   SBN_ENABLE_CUDA      ON (default); OFF builds the same image without the CUDA path
#   SBN_LDD_ALLOW        libraries the image may lack because the NVIDIA runtime injects them
#   SBN_RUNTIME_EXTRA    packages added to the runtime stage besides the libraries' own
#   BUILD_JOBS, SBN_USER, SBN_UID, SBN_SSH_PORT, SBN_SSH_KEYS: as in cpu.Dockerfile
ARG BASE_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04
ARG RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

# ---- builder ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
ARG BUILD_JOBS=4
ARG ONEDNN_VERSION=2.7.5
COPY docker/onednn.sh /tmp/sbn/onednn.sh
ARG NCCL_PACKAGE=libnccl-dev
# The devel images ship NCCL and hold it: install libnccl-dev from NVIDIA's repository only if absent.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      build-essential cmake pkg-config ca-certificates curl \
      libopenmpi-dev openmpi-bin openssh-client libboost-program-options-dev \
      libopenblas-dev zlib1g-dev >/dev/null \
 && if [ -n "${NCCL_PACKAGE}" ] && ! dpkg-query -W "${NCCL_PACKAGE}" >/dev/null 2>&1; then \
      apt-get install -y -qq --no-install-recommends "${NCCL_PACKAGE}" >/dev/null; fi \
 && ONEDNN_VERSION="${ONEDNN_VERSION}" BUILD_JOBS="${BUILD_JOBS}" bash /tmp/sbn/onednn.sh \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
ARG SBN_CPU_ARCH=x86-64-v3
ARG CUDA_ARCHITECTURES="80;90"
ARG SBN_ENABLE_CUDA=ON
ARG SBN_TARGETS="syncbn-train syncbn-bench"
RUN SBN_CPU_ARCH="${SBN_CPU_ARCH}" BUILD_JOBS="${BUILD_JOBS}" SBN_TARGETS="${SBN_TARGETS}" \
    SBN_ENABLE_CUDA="${SBN_ENABLE_CUDA}" OUT=/out \
    bash docker/build-in-image.sh -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}"

# ---- runtime ---------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
ARG SBN_LDD_ALLOW="libcuda.so.1 libnvidia-ml.so.1"
ARG SBN_RUNTIME_EXTRA="openmpi-bin openssh-server openssh-client dataset-fashion-mnist"
COPY --from=builder /out/ /opt/syncbn/
COPY docker/install-runtime.sh docker/entrypoint.sh docker/cluster-run.sh docker/ssh-setup.sh /opt/syncbn/docker/
RUN SBN_LDD_ALLOW="${SBN_LDD_ALLOW}" SBN_RUNTIME_EXTRA="${SBN_RUNTIME_EXTRA}" bash /opt/syncbn/docker/install-runtime.sh
ARG SBN_USER=root
ARG SBN_UID=1000
ARG SBN_SSH_PORT=2222
ARG SBN_SSH_KEYS=image
RUN SBN_USER="${SBN_USER}" SBN_UID="${SBN_UID}" SBN_SSH_PORT="${SBN_SSH_PORT}" SBN_SSH_KEYS="${SBN_SSH_KEYS}" \
    bash /opt/syncbn/docker/ssh-setup.sh \
 && install -m 0755 /opt/syncbn/docker/entrypoint.sh /usr/local/bin/sbn-entrypoint \
 && install -m 0755 /opt/syncbn/docker/cluster-run.sh /usr/local/bin/sbn-cluster-run \
 && install -d -m 0777 /runs

# As in cpu.Dockerfile, plus: NCCL's bootstrap and socket transport avoid loopback and docker bridges
# unless NCCL_SOCKET_IFNAME is set at run time (name the cluster NIC there, e.g. in compose.gpu.yaml).
ENV OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_btl_vader_single_copy_mechanism=none \
    OMPI_MCA_odls_base_sigkill_timeout=10 \
    NCCL_SOCKET_IFNAME=^lo,docker \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER ${SBN_USER}
WORKDIR /runs
EXPOSE ${SBN_SSH_PORT}
ENTRYPOINT ["/usr/local/bin/sbn-entrypoint"]
CMD ["sshd"]
