// SBN_CUDA_CHECK / SBN_NCCL_CHECK: the CUDA and NCCL members of the one error policy (error.h, STYLE.md §1).
//
//   SBN_CUDA_CHECK(call, context)   throws syncbn::Error unless `call` returns cudaSuccess
//   SBN_NCCL_CHECK(call, context)   throws syncbn::Error unless `call` returns ncclSuccess
//   SBN_CUDA_LAUNCH_CHECK(context)  after every kernel launch: cudaGetLastError()
//
// `context` is a std::string expression saying who called and why; callers that know their rank pass
// Communicator::origin() ("[rank R@host]") at its front, so the message reads
//   "[rank 3@node7] bn1.forward: ncclAllReduce(...) failed: ncclSystemError: ... hint: ... (file.cpp:42)".
// NCCL messages carry a hint naming the usual cause (nccl_hint) and NCCL's own last error text.
// A CUDA error reported by a launch check may come from earlier asynchronous work on the device (CUDA
// errors are sticky); the message says so for the errors that are.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string>

#include "syncbn/error.h"

namespace syncbn::cuda {

// "cudaErrorInvalidValue: invalid argument", plus a note for the sticky (context-corrupting) errors.
std::string cuda_error_text(cudaError_t code);

// "ncclSystemError: unhandled system error (<NCCL's last error>); hint: <what usually causes it>".
// `comm` may be null (NCCL then reports its most recent error of any communicator).
std::string nccl_error_text(ncclResult_t code, ncclComm_t comm);

// What to check first for an NCCL error code (e.g. ncclSystemError → NCCL_SOCKET_IFNAME, /dev/shm).
const char* nccl_hint(ncclResult_t code);

}  // namespace syncbn::cuda

#define SBN_CUDA_CHECK(call, context)                                                                \
  do {                                                                                               \
    const cudaError_t sbn_cuda_rc_ = (call);                                                         \
    if (sbn_cuda_rc_ != cudaSuccess)                                                                 \
      ::syncbn::throw_error(std::string(context) + ": " #call " failed: " +                         \
                                ::syncbn::cuda::cuda_error_text(sbn_cuda_rc_),                       \
                            __FILE__, __LINE__);                                                     \
  } while (0)

#define SBN_CUDA_LAUNCH_CHECK(context) SBN_CUDA_CHECK(cudaGetLastError(), std::string(context) + " (kernel launch)")

#define SBN_NCCL_CHECK(call, context)                                                                \
  do {                                                                                               \
    const ncclResult_t sbn_nccl_rc_ = (call);                                                        \
    if (sbn_nccl_rc_ != ncclSuccess)                                                                 \
      ::syncbn::throw_error(std::string(context) + ": " #call " failed: " +                         \
                                ::syncbn::cuda::nccl_error_text(sbn_nccl_rc_, nullptr),              \
                            __FILE__, __LINE__);                                                     \
  } while (0)
