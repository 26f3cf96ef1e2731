// StagedCommunicator: a DeviceCommunicator whose collectives stage device buffers through pinned host
// memory and run over MPI (docs/GPU.md, "The staged communicator"). What it is for: several ranks on
// one GPU (NCCL refuses two ranks of one communicator on one device), so the multi-rank SyncBN paths
// run on a one-GPU machine; and a fallback where NCCL is absent or broken (--comm mpi).
//
// Every collective on device memory is HOST-SYNCHRONOUS, by nature: enqueue device → pinned copy on the
// stream, wait for the stream, check that every rank issues the same operation and length (one small
// MPI reduction, so a mismatch is one error on every rank instead of a hang or a truncation), MPI
// all-reduce / broadcast on the pinned buffer (MpiCommunicator: deadline, timeout errors), then enqueue
// the copy back and wait again. Two host syncs and two MPI collectives per call: for tests and
// fallback, not for speed. It cannot be captured into a CUDA graph.
//
// The copies go through a Staging policy: cudaMemcpyAsync into pinned memory in production
// (cuda_staging), memcpy between host buffers in the tests (host_staging: "device" buffers are host
// memory, no GPU needed). Host-side operations (barrier, any, all_equal) go straight to MPI.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <string>

#include "syncbn/cuda/device_communicator.h"
#include "syncbn/mpi_communicator.h"

namespace syncbn::cuda {

// How staged collectives move bytes between "device" buffers and the host staging buffer.
class Staging {
 public:
  virtual ~Staging() = default;
  // A host buffer of at least `bytes` bytes (pinned in production), valid until the next call.
  virtual void* host_buffer(std::size_t bytes, const char* label) = 0;
  // Enqueue a copy device → host / host → device on `stream`.
  virtual void to_host(void* host, const void* dev, std::size_t bytes, cudaStream_t stream, const char* label) = 0;
  virtual void to_device(void* dev, const void* host, std::size_t bytes, cudaStream_t stream, const char* label) = 0;
  // Wait for the work queued on `stream`.
  virtual void wait(cudaStream_t stream, const char* label) = 0;
  // Whether `p` is a device buffer (to be staged) or host memory (reduced in place over MPI).
  virtual bool is_device(const void* p) = 0;
  // A fresh policy of the same kind (for split communicators: each owns its staging buffer).
  virtual std::unique_ptr<Staging> clone() const = 0;
  // The device this policy copies on; -1 for the host stand-ins.
  virtual int device() const = 0;
};

// cudaMemcpyAsync through pinned memory on the current device (fixed at construction).
std::unique_ptr<Staging> cuda_staging();
// Host-memory stand-ins for tests: every buffer counts as "device", copies are memcpy, waits are no-ops.
std::unique_ptr<Staging> host_staging();

// Makes device (node-local rank mod visible devices) current: ranks may share a device, which is what
// this communicator is for. Returns the device. Throws when no device is visible.
int use_local_device(const Communicator& world);

class StagedCommunicator final : public DeviceCommunicator {
 public:
  // Collective over `world` (duplicated: host operations use the duplicate; takes world's timeout).
  // `stream`: the stream of the Communicator-interface collectives; null with cuda_staging creates a
  // non-blocking stream on the current device, shared with the communicators split from this one.
  explicit StagedCommunicator(MpiCommunicator& world, std::unique_ptr<Staging> staging = cuda_staging(),
                              cudaStream_t stream = nullptr);
  ~StagedCommunicator() override;

  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }
  int local_rank() const override { return mpi_->local_rank(); }
  int local_size() const override { return mpi_->local_size(); }
  const std::string& host() const override { return mpi_->host(); }
  MemorySpace memory() const override { return MemorySpace::kDevice; }

  // Device buffers: staged on stream() (complete when they return). Host buffers: straight over MPI.
  void allreduce_sum(double* buf, std::size_t count, const char* label) override;
  void allreduce_sum(float* buf, std::size_t count, const char* label) override;
  // Staged sum of a device buffer after the work queued on `stream`; complete when it returns.
  void allreduce_sum(double* buf, std::size_t count, const char* label, cudaStream_t stream) override;
  void allreduce_sum(float* buf, std::size_t count, const char* label, cudaStream_t stream) override;
  // As allreduce_sum: staged on stream() for a device buffer, over MPI for a host one.
  void broadcast(void* buf, std::size_t bytes, int root, const char* label) override;
  // cudaStreamSynchronize: nothing of this communicator is ever left in flight on a stream.
  void synchronize(cudaStream_t stream, const char* label) override;

  // Host-side operations: straight over MPI (their inputs and results live on the host).
  void barrier(const char* label) override;
  bool any(bool flag, const char* label) override;
  bool all_equal(std::uint64_t value, const char* label) override;
  // MPI_Comm_split underneath; the result is a StagedCommunicator on the same device and stream.
  std::unique_ptr<Communicator> split(int color, int key, const char* label) override;

  int device() const override { return staging_->device(); }
  cudaStream_t stream() const override { return stream_; }
  MpiCommunicator& host_comm() override { return *mpi_; }

 private:
  struct Adopt {};
  StagedCommunicator(std::unique_ptr<MpiCommunicator> mpi, std::unique_ptr<Staging> staging,
                     std::shared_ptr<void> stream_owner, cudaStream_t stream, Adopt);
  template <class T>
  void staged_allreduce(T* buf, std::size_t count, const char* op, const char* label, cudaStream_t stream);
  // Every rank in the same operation with the same length, or Error on every rank.
  // `root` < 0: an all-reduce of `count` elements; else a broadcast of `count` bytes from `root`.
  void agree(const char* op, std::size_t count, int root, const char* label);
  // Counts one call in stats_ as ONE collective of `bytes` (its inner MPI calls are not counted here).
  void tally(double seconds, std::size_t bytes, bool allreduce);
  // The MPI communicator, with this communicator's timeout.
  MpiCommunicator& mpi();

  std::unique_ptr<MpiCommunicator> mpi_;
  std::unique_ptr<Staging> staging_;
  std::shared_ptr<void> stream_owner_;  // the created stream, shared with splits (null: caller's)
  cudaStream_t stream_ = nullptr;
};

}  // namespace syncbn::cuda
