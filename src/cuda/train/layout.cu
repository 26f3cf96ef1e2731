// Layout and dtype conversions of the GPU model: the network input (planar fp32 → NHWC activations), conv
// weights (canonical OIHW fp32 → cuDNN's NHWC filter layout in the activation dtype, and the weight
// gradient back, accumulated), and fp32 → activation dtype casts of the fully connected weights.
//
// Why weights are converted at all: the ParamStore keeps one canonical fp32 layout (the optimizer, the
// gradient all-reduce and checkpoints see the same bytes as the CPU model), while cuDNN's fast NHWC
// kernels want NHWC filters in the data's own type. Weights are small (≤ a few MB): one conversion per
// layer per optimizer step, and one gradient scatter per layer per micro-batch, are noise next to the
// convolutions. Every element is read once and written once (coalesced on the written side).
#include "train_launch.cuh"

namespace syncbn::cuda::train {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    input_to_nhwc_kernel(const float* __restrict__ planar, I n, I C, I H, I W, T* __restrict__ out) {
  SBN_GRID_STRIDE(I, e, n) from_float(planar[nchw_index_of_nhwc(e, C, H, W)], &out[e]);
}

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    weights_to_krsc_kernel(const float* __restrict__ oihw, I n, I in, I k, T* __restrict__ krsc) {
  SBN_GRID_STRIDE(I, e, n) from_float(oihw[oihw_index_of_krsc(e, in, k)], &krsc[e]);
}

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    accumulate_krsc_grad_kernel(const T* __restrict__ krsc, I n, I in, I k, float* __restrict__ grad) {
  SBN_GRID_STRIDE(I, e, n) grad[oihw_index_of_krsc(e, in, k)] += to_float(krsc[e]);
}

template <class T>
__global__ void __launch_bounds__(kThreads) cast_kernel(const float* __restrict__ src, std::int64_t n, T* __restrict__ dst) {
  SBN_GRID_STRIDE(std::int64_t, e, n) from_float(src[e], &dst[e]);
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void input_to_nhwc(const float* planar, std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W, DType dtype,
                   void* nhwc, const Launch& l) {
  const std::int64_t n = N * C * H * W;
  if (n == 0) return;
  SBN_ELEMENTWISE_LAUNCH(input_to_nhwc_kernel, "input_to_nhwc", dtype, n, n, l, planar, static_cast<I>(n),
                         static_cast<I>(C), static_cast<I>(H), static_cast<I>(W), static_cast<T*>(nhwc));
}

void weights_to_krsc(const float* oihw, std::int64_t out, std::int64_t in, std::int64_t k, DType dtype, void* krsc,
                     const Launch& l) {
  const std::int64_t n = out * in * k * k;
  if (n == 0) return;
  SBN_ELEMENTWISE_LAUNCH(weights_to_krsc_kernel, "weights_to_krsc", dtype, n, n, l, oihw, static_cast<I>(n),
                         static_cast<I>(in), static_cast<I>(k), static_cast<T*>(krsc));
}

void accumulate_krsc_grad(const void* krsc, DType dtype, std::int64_t out, std::int64_t in, std::int64_t k,
                          float* grad_oihw, const Launch& l) {
  const std::int64_t n = out * in * k * k;
  if (n == 0) return;
  SBN_ELEMENTWISE_LAUNCH(accumulate_krsc_grad_kernel, "accumulate_krsc_grad", dtype, n, n, l,
                         static_cast<const T*>(krsc), static_cast<I>(n), static_cast<I>(in), static_cast<I>(k),
                         grad_oihw);
}

void cast_from_float(const float* src, std::int64_t n, DType dtype, void* dst, const Launch& l) {
  if (n == 0) return;
  detail::with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    cast_kernel<T><<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(src, n, static_cast<T*>(dst));
  });
  SBN_CUDA_LAUNCH_CHECK(std::string("cast_from_float ") + dtype_name(dtype));
}

}  // namespace syncbn::cuda::train
