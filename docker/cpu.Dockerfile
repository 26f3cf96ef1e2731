# syncbn CPU image: the trainer and benchmark on the CPU path (Open MPI over TCP/shared memory), an
# sshd on port 2222 so that mpirun on one container starts ranks in the others, and Fashion-MNIST.
# Build from the repository root (see docs/CLUSTER.md):
#   docker build -f docker/cpu.Dockerfile -t syncbn:cpu .
# Build arguments:
#   BASE_IMAGE     Debian-like base with apt (debian:bookworm-slim; the container test passes a
#                  debootstrap-made bookworm base)
#   SBN_CPU_ARCH   -march for the kernels. x86-64-v3 (AVX2, FMA, BMI2: Haswell/Zen 1 and newer) is
#                  where the SyncBN kernels' 8-wide fp32 loops pay off; use x86-64-v2 (SSE4.2 only)
#                  for older or AVX-masking virtual CPUs. Never "native": the image runs elsewhere.
#   BUILD_JOBS     parallel compile jobs
#   SBN_USER       root (default) or a user name (e.g. mpiuser) to run sshd and the ranks as non-root
#   SBN_UID        that user's uid
#   SBN_SSH_PORT   sshd and ssh client port
#   SBN_SSH_KEYS   image: a key pair baked in, all containers of the image trust each other (keep the
#                  image private); none: mount keys at run time (Kubernetes MPIJob does)
ARG BASE_IMAGE=debian:bookworm-slim

# ---- builder: compilers and -dev packages from scripts/setup.sh, then only the CPU targets ----------
FROM ${BASE_IMAGE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
COPY scripts/setup.sh /tmp/sbn/setup.sh
RUN /tmp/sbn/setup.sh && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
ARG SBN_CPU_ARCH=x86-64-v3
ARG BUILD_JOBS=2
ARG SBN_TARGETS="syncbn-train syncbn-bench"
RUN SBN_CPU_ARCH="${SBN_CPU_ARCH}" BUILD_JOBS="${BUILD_JOBS}" SBN_TARGETS="${SBN_TARGETS}" \
    SBN_ENABLE_CUDA=OFF OUT=/out bash docker/build-in-image.sh

# ---- runtime: shared libraries found by ldd in the builder, Open MPI launcher, sshd, data ----------
FROM ${BASE_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
COPY --from=builder /out/ /opt/syncbn/
COPY docker/install-runtime.sh docker/entrypoint.sh docker/cluster-run.sh docker/ssh-setup.sh /opt/syncbn/docker/
RUN bash /opt/syncbn/docker/install-runtime.sh
ARG SBN_USER=root
ARG SBN_UID=1000
ARG SBN_SSH_PORT=2222
ARG SBN_SSH_KEYS=image
RUN SBN_USER="${SBN_USER}" SBN_UID="${SBN_UID}" SBN_SSH_PORT="${SBN_SSH_PORT}" SBN_SSH_KEYS="${SBN_SSH_KEYS}" \
    bash /opt/syncbn/docker/ssh-setup.sh \
 && install -m 0755 /opt/syncbn/docker/entrypoint.sh /usr/local/bin/sbn-entrypoint \
 && install -m 0755 /opt/syncbn/docker/cluster-run.sh /usr/local/bin/sbn-cluster-run \
 && install -d -m 0777 /runs

# Open MPI inside containers: mpirun as root is allowed (root mode), and the shared-memory transport
# copies through the buffer (single-copy CMA needs ptrace rights a container does not have). A signalled
# mpirun (pod deletion) gives the ranks 10 s, not 1 s, from SIGTERM to SIGKILL to save a checkpoint
# (launch/common.sh explains the sequence).
ENV OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_btl_vader_single_copy_mechanism=none \
    OMPI_MCA_odls_base_sigkill_timeout=10
USER ${SBN_USER}
WORKDIR /runs
EXPOSE ${SBN_SSH_PORT}
ENTRYPOINT ["/usr/local/bin/sbn-entrypoint"]
CMD ["sshd"]
