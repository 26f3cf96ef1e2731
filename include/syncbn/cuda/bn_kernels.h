// SyncBN kernels, CUDA implementation: the twins of the CPU kernels (syncbn/bn_kernels.h) with the same
// names, the same argument structs and the same decomposition
//
//   forward:  bn_stats → [one all-reduce of the message] → bn_combine → bn_normalize
//   backward: bn_backward_reduce → [one all-reduce] → bn_backward_combine → bn_backward_elemt
//
// and exactly the CPU message layout (bn_math.h). Differences, all for "no host synchronisation":
//  - every pointer is device memory and every launcher enqueues on `stream` and returns;
//  - the combines write their BnStatus to a device word (BnDeviceReport) instead of returning it: the
//    owner reads it at the end of the step (CudaSyncBatchNorm::check());
//  - the backward's expected count is a device pointer (the forward combine wrote it), and the
//    cumulative running-stat factor (momentum = None) comes from a device counter, so a captured CUDA
//    graph replays correctly.
// x, y, dy, dx are fp32, bf16 or fp16 (one dtype per call); statistics fp32/double as on the CPU.
// Every launch is checked (cudaGetLastError) and throws syncbn::Error naming the kernel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "syncbn/bn_kernels.h"
#include "syncbn/cuda/dtype.h"

namespace syncbn::cuda {

// Scratch of the two reductions (bn_stats, bn_backward_reduce): per-block partial sums.
struct BnWorkspace {
  double* data = nullptr;   // device, at least bn_workspace_doubles(g, sm_count) doubles
  std::size_t doubles = 0;
  int sm_count = 0;         // multiprocessors of the device: sizes the grids
};

// Workspace a reduction over geometry `g` needs on a device with `sm_count` multiprocessors (an upper
// bound over all pointer alignments, so it can be allocated once per layer and shape).
std::size_t bn_workspace_doubles(const BnGeometry& g, int sm_count);

// Where a CUDA combine reports, all device pointers. `status` is sticky: a combine writes it only when
// it finds an error and the word is still kBnOk, so the first error of a step survives later successes
// until the owner clears it.
struct BnDeviceReport {
  int* status = nullptr;       // (1) required
  double* count = nullptr;     // (1) out, optional: the group count n the combine saw
  double* expected = nullptr;  // (1) out, optional (backward): the forward count it compared n with
};

// The running-statistics counter of a layer (PyTorch's num_batches_tracked), on the device.
struct BnRunningCounter {
  // (1) incremented by a successful forward combine; may be null unless args.running is kCumulative,
  // whose k it then is (args.running.batches_tracked is not read).
  std::int64_t* batches_tracked = nullptr;
};

// ---- forward ----------------------------------------------------------------------------------

// Local sums of x around the pivot into msg (bn_msg_size(C) doubles), tagged with `tag`; pivot: (C) or
// null for K = 0. Two kernels: per-block fp32→double partials into the workspace, then a per-channel
// merge that writes the message.
void bn_stats(const void* x, DType dtype, const BnGeometry& g, const double* pivot, double tag, double* msg,
              const BnWorkspace& ws, cudaStream_t stream);

// Group statistics from the summed message (one block; C is at most a few thousand). Updates running
// stats as args.running says (kCumulative: k from `counter`).
void bn_combine(const double* msg, const BnCombineArgs& args, const BnRunningCounter& counter,
                const BnDeviceReport& report, cudaStream_t stream);

// An empty BN batch with local statistics (bn_local_empty_batch): num_batches_tracked += 1, nothing else
// (PyTorch counts the batch and leaves the running statistics alone). One thread.
void bn_count_batch(std::int64_t* batches_tracked, cudaStream_t stream);

// y = a·(x − hi) + b per channel, then max(y, 0) if relu; y in x's dtype.
void bn_normalize(const void* x, DType dtype, const BnGeometry& g, const float* hi, const float* a,
                  const float* b, bool relu, void* y, int sm_count, cudaStream_t stream);

// Eval mode: mean = running mean, var = running var, invstd and the forward coefficients (no reduction,
// no communication). CUDA-only: the CPU layer computes these inline.
void bn_running_coefs(std::int64_t channels, const float* running_mean, const float* running_var, double eps,
                      const float* gamma, const float* beta, double* mean, double* var, double* invstd,
                      float* hi, float* a, float* b, cudaStream_t stream);

// ---- backward ---------------------------------------------------------------------------------

// Local sums Σdy' and Σdy'·(x − hi) into msg, and dβ += Σdy', dγ += invstd·Σdy'·(x − mean) (local, as on
// the CPU) when dgamma/dbeta are not null; with `renorm` factors (device, Batch Renormalization)
// dγ += Σdy'·(x̂·r + d).
void bn_backward_reduce(const void* dy, const void* x, DType dtype, const BnGeometry& g, const float* hi,
                        const float* a, const float* b, bool relu, const double* mean, const double* invstd,
                        double tag, double* msg, float* dgamma, float* dbeta, const BnWorkspace& ws,
                        cudaStream_t stream, BnRenormFactors renorm = {});

// Input-gradient coefficients from the summed message; args.expected_count is ignored in favour of the
// device value *expected_count.
void bn_backward_combine(const double* msg, const BnBackwardCombineArgs& args, const double* expected_count,
                         const BnDeviceReport& report, cudaStream_t stream);

// dx = a·dy' + k1·(x − hi) + k0, in x's dtype.
void bn_backward_elemt(const void* dy, const void* x, DType dtype, const BnGeometry& g, const float* hi,
                       const float* a, const float* b, bool relu, const float* k1, const float* k0, void* dx,
                       int sm_count, cudaStream_t stream);

}  // namespace syncbn::cuda
