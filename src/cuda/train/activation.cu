// Elementwise activation kernels of the GPU model: ReLU (for --norm none; the norms fuse theirs), the
// residual join max(a + b, 0), and a plain sum (input gradients of a residual block's two branches).
//
// Memory-bound maps: one read per input and one write per element, fp32 arithmetic, one rounding to the
// activation dtype at the end; grid-stride loops over ≤ 8 blocks per SM. Formulas: train_thread.h (the
// CPU layers' operations, so fp32 results equal the CPU's bit for bit).
#include "train_launch.cuh"

namespace syncbn::cuda::train {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(kThreads) relu_forward_kernel(const T* __restrict__ x, std::int64_t n, T* __restrict__ y) {
  SBN_GRID_STRIDE(std::int64_t, e, n) from_float(apply_relu(to_float(x[e])), &y[e]);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    relu_backward_kernel(const T* __restrict__ y, const T* __restrict__ dy, std::int64_t n, T* __restrict__ dx) {
  SBN_GRID_STRIDE(std::int64_t, e, n) from_float(relu_grad(to_float(y[e]), to_float(dy[e])), &dx[e]);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    add_relu_kernel(const T* __restrict__ a, const T* __restrict__ b, std::int64_t n, T* __restrict__ y) {
  SBN_GRID_STRIDE(std::int64_t, e, n) from_float(apply_relu(to_float(a[e]) + to_float(b[e])), &y[e]);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    add_kernel(const T* __restrict__ a, const T* __restrict__ b, std::int64_t n, T* __restrict__ out) {
  SBN_GRID_STRIDE(std::int64_t, e, n) from_float(to_float(a[e]) + to_float(b[e]), &out[e]);
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void relu_forward(const void* x, DType dtype, std::int64_t n, void* y, const Launch& l) {
  if (n == 0) return;
  detail::with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    relu_forward_kernel<T><<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(static_cast<const T*>(x), n,
                                                                                        static_cast<T*>(y));
  });
  SBN_CUDA_LAUNCH_CHECK(std::string("relu_forward ") + dtype_name(dtype));
}

void relu_backward(const void* y, const void* dy, DType dtype, std::int64_t n, void* dx, const Launch& l) {
  if (n == 0) return;
  detail::with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    relu_backward_kernel<T><<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(
        static_cast<const T*>(y), static_cast<const T*>(dy), n, static_cast<T*>(dx));
  });
  SBN_CUDA_LAUNCH_CHECK(std::string("relu_backward ") + dtype_name(dtype));
}

void add_relu_forward(const void* a, const void* b, DType dtype, std::int64_t n, void* y, const Launch& l) {
  if (n == 0) return;
  detail::with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    add_relu_kernel<T><<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), n, static_cast<T*>(y));
  });
  SBN_CUDA_LAUNCH_CHECK(std::string("add_relu_forward ") + dtype_name(dtype));
}

void add_tensors(const void* a, const void* b, DType dtype, std::int64_t n, void* out, const Launch& l) {
  if (n == 0) return;
  detail::with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    add_kernel<T><<<detail::elementwise_blocks(n, l), kThreads, 0, l.stream>>>(
        static_cast<const T*>(a), static_cast<const T*>(b), n, static_cast<T*>(out));
  });
  SBN_CUDA_LAUNCH_CHECK(std::string("add_tensors ") + dtype_name(dtype));
}

}  // namespace syncbn::cuda::train
