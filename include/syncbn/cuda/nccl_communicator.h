// NcclCommunicator: the Communicator on device memory, over NCCL, bootstrapped over MPI (DESIGN.md §5).
//
// Start-up (collective over the bootstrap MPI communicator, every step agreed so that all ranks fail
// together with the lowest failing rank's message):
//   1. select_device: the node's ranks exchange their visible devices' UUIDs and choose by the rules of
//      device_select.h (own device → its ordinal 0; a shared list → local rank mod its length); two ranks
//      on one device is an error naming both unless sharing is asked for (NcclOptions::allow_sharing,
//      SBN_GPU_SHARING=1);
//   2. cudaSetDevice(device); rank 0 ncclGetUniqueId → MPI broadcast;
//   3. ncclCommInitRankConfig with blocking = 0, polled against the timeout.
//
// Collectives (allreduce_sum, broadcast on device buffers) are stream-ordered: they return once enqueued.
// The Communicator-interface calls use this communicator's stream; the overloads taking a cudaStream_t
// enqueue on the caller's stream (what CudaSyncBatchNorm does, so no events are needed around them).
// Every rank must issue its collectives in the same order (NCCL matches them by order).
//
// Hang and error detection (the collective timeout of communicator.h): a watchdog thread follows each
// collective through two CUDA events around it. Once the stream has reached the collective (first event
// complete), the collective must finish within timeout(); otherwise, or when ncclCommGetAsyncError reports
// an error, the watchdog calls ncclCommAbort (which also releases the stuck kernels) and records a message
// naming rank, host, operation and label. The next call on this communicator (or synchronize(),
// raise_if_failed()) throws it as syncbn::Error, and main() then ends the job (app.h: MPI_Abort). The
// watchdog never calls MPI (MPI_THREAD_FUNNELED) and runs in the relaxed stream-capture mode, so its event
// queries never invalidate a global-mode capture made by another thread. Collectives captured into a CUDA
// graph are not watched (events cannot be queried inside a capture): synchronize() has a deadline of its
// own (timeout()), which bounds a hung collective inside a replayed graph.
//
// Host-side operations go through the MPI communicator this one was bootstrapped from (a duplicate of
// it), because their inputs and results live on the host: any(), all_equal(), barrier() (a host barrier:
// it does not wait for queued device work; call synchronize() first for that), and allreduce_sum /
// broadcast when the buffer is host memory (detected with cudaPointerGetAttributes), which also makes
// run_agreed() and other host-buffer callers work with this communicator unchanged. Those are
// synchronous like the MPI communicator's.
//
// stats(): every call counted like MpiCommunicator (collectives, allreduces, payload bytes); `seconds` is
// the device time of completed watched collectives (between the two events: includes waiting for the
// slowest peer) plus the wall time of host-side operations, folded in at each call and synchronize().
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <functional>
#include <memory>
#include <string>

#include "syncbn/communicator.h"
#include "syncbn/cuda/device_communicator.h"
#include "syncbn/mpi_communicator.h"

namespace syncbn::cuda {

struct NcclOptions {
  // Let the ranks of a node share its devices round-robin when it has more ranks than devices. NCCL
  // refuses two ranks of one communicator on one GPU ("Duplicate GPU detected"), so sharing ranks are
  // presented to NCCL as separate hosts (NCCL_HOSTID = host:local_rank, unless already set), which sends
  // their traffic through the network (socket) transport: correct but slow, for tests and debugging.
  bool allow_sharing = false;
  // Stream of the Communicator-interface collectives. Null: the communicator creates its own
  // (non-blocking) stream, shared with the communicators split from it.
  cudaStream_t stream = nullptr;

  // allow_sharing from SBN_GPU_SHARING=1.
  static NcclOptions from_env();
};

// The CUDA device ordinal of this rank (device_select.h; with a shared device and allow_sharing it sets
// NCCL_HOSTID, see NcclOptions). Collective over `host` (an allgather over the node's ranks) and agreed:
// when any rank has no device, or two ranks would share one, every rank throws AgreedError with the lowest
// failing rank's message. Does not set the device.
int select_device(MpiCommunicator& host, const NcclOptions& options);

class NcclCommunicator final : public DeviceCommunicator {
 public:
  // Collective over `bootstrap`, which need not outlive this communicator (host operations use a
  // duplicate of it). Takes bootstrap's timeout.
  explicit NcclCommunicator(MpiCommunicator& bootstrap, const NcclOptions& options = NcclOptions::from_env());
  // Flushes and destroys the NCCL communicator (ncclCommFinalize, bounded wait, ncclCommDestroy); aborts
  // it instead after a failure or during exception unwinding (peers may be gone).
  ~NcclCommunicator() override;

  int rank() const override;
  int size() const override;
  int local_rank() const override;
  int local_size() const override;
  const std::string& host() const override;
  MemorySpace memory() const override { return MemorySpace::kDevice; }

  // Device buffers: stream-ordered on stream(). Host buffers: synchronous, over MPI.
  void allreduce_sum(double* buf, std::size_t count, const char* label) override;
  void allreduce_sum(float* buf, std::size_t count, const char* label) override;
  void broadcast(void* buf, std::size_t bytes, int root, const char* label) override;
  // Host-side (MPI), see the file comment.
  void barrier(const char* label) override;
  bool any(bool flag, const char* label) override;
  bool all_equal(std::uint64_t value, const char* label) override;
  // ncclCommSplit (and the matching MPI split for the host side); same rank order as MPI: by key, then
  // by rank here. color must be ≥ 0.
  std::unique_ptr<Communicator> split(int color, int key, const char* label) override;

  // Stream-ordered in-place sum of a DEVICE buffer, enqueued on `stream`.
  void allreduce_sum(double* buf, std::size_t count, const char* label, cudaStream_t stream) override;
  void allreduce_sum(float* buf, std::size_t count, const char* label, cudaStream_t stream) override;

  // Waits until the work queued so far on `stream` is done (cudaStreamQuery, polled with a yield), polling
  // the watchdog: throws its failure (timeout, NCCL error) if it reports one first; past timeout() (0:
  // never) aborts the communicator and throws an Error naming `label` and the timeout.
  void synchronize(cudaStream_t stream, const char* label) override;
  void synchronize(const char* label) { synchronize(stream(), label); }
  // Throws the recorded failure, if any (cheap: an atomic load).
  void raise_if_failed(const char* label);

  int device() const override;
  cudaStream_t stream() const override;
  ncclComm_t handle() const;
  MpiCommunicator& host_comm() override;

 private:
  struct State;
  explicit NcclCommunicator(std::unique_ptr<State> state);
  // Issues one watched collective on `stream` (see the file comment); `issue` makes the NCCL call.
  void device_collective(const char* op, const char* label, std::size_t bytes, bool allreduce, cudaStream_t stream,
                         const std::function<ncclResult_t(ncclComm_t)>& issue);
  void check_usable(const char* op, const char* label);
  void count_host_op(double seconds, std::size_t bytes, bool allreduce);

  std::unique_ptr<State> s_;
};

}  // namespace syncbn::cuda
