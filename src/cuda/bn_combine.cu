// bn_combine, bn_backward_combine, bn_running_coefs, bn_count_batch (CUDA): the per-channel steps between
// the all-reduce and the elementwise pass.
//
// Invariants (as cpu::bn_combine / cpu::bn_backward_combine, bn_math.h for the formulas):
//  - The checks (tags agree; forward: group count ≥ 2; backward: count == the forward's) are made by
//    every thread on the same summed header, so the whole block agrees; on failure no output is touched
//    (running statistics stay as they were) and the status word gets the error if it still holds kBnOk.
//  - The status is never read here nor reset: the layer reads it once per step (no host sync).
//  - Batch Renormalization (args.renorm): r, d per channel from the running statistics as the thread read
//    them before its own channel's update (bn_combine_channel), written for the backward combine.
//  - A successful forward combine increments the device num_batches_tracked (when given) after every
//    thread has read it, so the cumulative factor 1/(k+1) is taken from the value before this batch.
//
// One block, a loop over channels: C is at most a few thousand, so the kernel is latency-bound
// (~3 µs: launch + one pass over a few KB); more blocks would only need a grid-wide barrier for the
// counter. Memory traffic: the message (3 + 2C doubles) and ~12 per-channel values: kilobytes.
#include "bn_launch.cuh"

namespace syncbn::cuda {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

__device__ __forceinline__ void report_status(const BnDeviceReport& report, BnStatus st) {
  if (st != kBnOk) atomicCAS(report.status, static_cast<int>(kBnOk), static_cast<int>(st));
}

__global__ void __launch_bounds__(detail::kChannelThreads)
    combine_kernel(const double* __restrict__ msg, const BnCombineArgs args, const BnRunningCounter counter,
                   const BnDeviceReport report) {
  const BnStatus st = bn_forward_status(msg, args.group_size, args.tag);
  if (threadIdx.x == 0) {
    if (report.count) *report.count = msg[kMsgCount];
    report_status(report, st);
  }
  if (st != kBnOk) return;  // uniform: every thread saw the same header
  BnRunningUpdate running = args.running;
  if (running.kind == BnRunningUpdate::kCumulative) running.batches_tracked = *counter.batches_tracked;
  const double factor = running.factor();
  for (std::int64_t c = threadIdx.x; c < args.arrays.channels; c += blockDim.x)
    bn_combine_channel(msg, args, factor, c);
  if (counter.batches_tracked) {
    __syncthreads();  // every thread has read the counter above
    if (threadIdx.x == 0) *counter.batches_tracked += 1;
  }
}

__global__ void count_batch_kernel(std::int64_t* batches_tracked) { *batches_tracked += 1; }

__global__ void __launch_bounds__(detail::kChannelThreads)
    backward_combine_kernel(const double* __restrict__ msg, const BnBackwardCombineArgs args,
                            const double* __restrict__ expected_count, const BnDeviceReport report) {
  const double expected = *expected_count;
  const BnStatus st = bn_backward_status(msg, args.group_size, args.tag, expected);
  if (threadIdx.x == 0) {
    if (report.count) *report.count = msg[kMsgCount];
    if (report.expected) *report.expected = expected;
    report_status(report, st);
  }
  if (st != kBnOk) return;
  for (std::int64_t c = threadIdx.x; c < args.arrays.channels; c += blockDim.x)
    bn_backward_combine_channel(msg, args, c);
}

__global__ void __launch_bounds__(detail::kChannelThreads)
    running_coefs_kernel(std::int64_t channels, const float* __restrict__ running_mean,
                         const float* __restrict__ running_var, double eps, const float* __restrict__ gamma,
                         const float* __restrict__ beta, double* mean, double* var, double* invstd, float* hi,
                         float* a, float* b) {
  for (std::int64_t c = threadIdx.x; c < channels; c += blockDim.x)
    bn_running_coefs_channel(running_mean, running_var, eps, gamma, beta, c, mean, var, invstd, hi, a, b);
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void bn_combine(const double* msg, const BnCombineArgs& args, const BnRunningCounter& counter,
                const BnDeviceReport& report, cudaStream_t stream) {
  const BnLayerArrays& arr = args.arrays;
  SBN_CHECK(msg && report.status && arr.mean && arr.var && arr.invstd && arr.hi && arr.a && arr.b,
            "bn_combine: null message, status or output pointer");
  SBN_CHECK(args.running.kind == BnRunningUpdate::kNone || (arr.running_mean && arr.running_var),
            "bn_combine: a running-statistics update without both running arrays");
  SBN_CHECK(args.running.kind != BnRunningUpdate::kCumulative || counter.batches_tracked,
            "bn_combine: a cumulative average without the device batch counter");
  SBN_CHECK(!args.renorm.enabled || (arr.running_mean && arr.running_var && arr.renorm_r && arr.renorm_d),
            "bn_combine: Batch Renormalization without the running statistics or the r, d arrays");
  combine_kernel<<<1, detail::kChannelThreads, 0, stream>>>(msg, args, counter, report);
  SBN_CUDA_LAUNCH_CHECK("bn_combine");
}

void bn_count_batch(std::int64_t* batches_tracked, cudaStream_t stream) {
  SBN_CHECK(batches_tracked, "bn_count_batch: null counter");
  count_batch_kernel<<<1, 1, 0, stream>>>(batches_tracked);
  SBN_CUDA_LAUNCH_CHECK("bn_count_batch");
}

void bn_backward_combine(const double* msg, const BnBackwardCombineArgs& args, const double* expected_count,
                         const BnDeviceReport& report, cudaStream_t stream) {
  const BnLayerArrays& arr = args.arrays;
  SBN_CHECK(msg && expected_count && report.status && arr.mean && arr.invstd && arr.hi && arr.k1 && arr.k0,
            "bn_backward_combine: null message, count, status or output pointer");
  SBN_CHECK(!args.renorm || arr.renorm_r, "bn_backward_combine: Batch Renormalization without the r array");
  backward_combine_kernel<<<1, detail::kChannelThreads, 0, stream>>>(msg, args, expected_count, report);
  SBN_CUDA_LAUNCH_CHECK("bn_backward_combine");
}

void bn_running_coefs(std::int64_t channels, const float* running_mean, const float* running_var, double eps,
                      const float* gamma, const float* beta, double* mean, double* var, double* invstd,
                      float* hi, float* a, float* b, cudaStream_t stream) {
  SBN_CHECK(channels > 0 && running_mean && running_var && mean && var && invstd && hi && a && b,
            "bn_running_coefs: no channels or a null pointer");
  running_coefs_kernel<<<1, detail::kChannelThreads, 0, stream>>>(channels, running_mean, running_var, eps, gamma,
                                                                  beta, mean, var, invstd, hi, a, b);
  SBN_CUDA_LAUNCH_CHECK("bn_running_coefs");
}

}  // namespace syncbn::cuda
