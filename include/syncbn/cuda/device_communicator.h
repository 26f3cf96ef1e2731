// DeviceCommunicator: what the device code (CudaSyncBatchNorm, CudaTrainModel) needs from a communicator
// on device memory, so that it takes either implementation:
//  - NcclCommunicator (nccl_communicator.h): stream-ordered NCCL collectives, the production path;
//  - StagedCommunicator (staged_communicator.h): device buffers staged through pinned host memory and
//    MPI, host-synchronous; for several ranks on one GPU (which NCCL refuses) and builds without NCCL.
// Both keep communicator.h's invariants (same order on every rank, timeout(), stats()).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "syncbn/communicator.h"
#include "syncbn/mpi_communicator.h"

namespace syncbn::cuda {

class DeviceCommunicator : public Communicator {
 public:
  using Communicator::allreduce_sum;

  // In-place sum of a DEVICE buffer, ordered after the work already queued on `stream`: when it returns
  // the sum is enqueued (NCCL) or complete (staged); either way later work on `stream` sees it.
  virtual void allreduce_sum(double* buf, std::size_t count, const char* label, cudaStream_t stream) = 0;
  virtual void allreduce_sum(float* buf, std::size_t count, const char* label, cudaStream_t stream) = 0;

  // Waits until the work queued so far on `stream` is done; throws a recorded communicator failure
  // (timeout, NCCL error) instead of waiting forever.
  virtual void synchronize(cudaStream_t stream, const char* label) = 0;

  // The device this communicator's ranks use (-1: none, the host stand-ins of the tests), and the
  // stream of its Communicator-interface collectives.
  virtual int device() const = 0;
  virtual cudaStream_t stream() const = 0;

  // The MPI communicator of the same ranks, for host-side operations.
  virtual MpiCommunicator& host_comm() = 0;
};

}  // namespace syncbn::cuda
