// Pooling of the GPU model (NHWC): 2×2 max pooling with stride 2 (the convnet), and global average
// pooling (the resnet's head). Semantics and rounding are the CPU layers' (src/nn/module.cpp): the max
// keeps the first maximum of a window on ties and remembers its position (1 byte per output), backward
// writes every input element (the gradient at the remembered position, 0 elsewhere and in the rows and
// columns the floor division leaves out), so dx needs no clearing pass and no atomics.
//
// One thread per output element (forward) or input element (backward), consecutive threads on
// consecutive channels: every access of a warp is contiguous. Per element code: train_thread.h.
#include "train_launch.cuh"

namespace syncbn::cuda::train {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    maxpool_forward_kernel(const T* __restrict__ x, const PoolGeom g, I n, T* __restrict__ y,
                           std::uint8_t* __restrict__ arg) {
  SBN_GRID_STRIDE(I, e, n) maxpool2x2_forward_element(x, y, arg, e, g);
}

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    maxpool_backward_kernel(const T* __restrict__ dy, const std::uint8_t* __restrict__ arg, const PoolGeom g, I n,
                            T* __restrict__ dx) {
  SBN_GRID_STRIDE(I, e, n) maxpool2x2_backward_element(dy, arg, dx, e, g);
}

template <class T, class I>
__global__ void __launch_bounds__(kThreads) avgpool_forward_kernel(const T* __restrict__ x, I n, I S, I C, T* __restrict__ y) {
  SBN_GRID_STRIDE(I, e, n) avgpool_forward_element(x, y, e, S, C);
}

template <class T, class I>
__global__ void __launch_bounds__(kThreads) avgpool_backward_kernel(const T* __restrict__ dy, I n, I S, I C, T* __restrict__ dx) {
  SBN_GRID_STRIDE(I, e, n) avgpool_backward_element(dy, dx, e, S, C);
}

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void maxpool2x2_forward(const void* x, DType dtype, const PoolGeom& g, void* y, std::uint8_t* arg, const Launch& l) {
  const std::int64_t n = g.N * g.Ho * g.Wo * g.C;
  if (n == 0) return;
  SBN_ELEMENTWISE_LAUNCH(maxpool_forward_kernel, "maxpool2x2_forward", dtype, n, g.N * g.H * g.W * g.C, l,
                         static_cast<const T*>(x), g, static_cast<I>(n), static_cast<T*>(y), arg);
}

void maxpool2x2_backward(const void* dy, const std::uint8_t* arg, DType dtype, const PoolGeom& g, void* dx,
                         const Launch& l) {
  const std::int64_t n = g.N * g.H * g.W * g.C;
  if (n == 0) return;
  SBN_ELEMENTWISE_LAUNCH(maxpool_backward_kernel, "maxpool2x2_backward", dtype, n, n, l, static_cast<const T*>(dy),
                         arg, g, static_cast<I>(n), static_cast<T*>(dx));
}

void avgpool_forward(const void* x, DType dtype, std::int64_t N, std::int64_t S, std::int64_t C, void* y,
                     const Launch& l) {
  const std::int64_t n = N * C;
  if (n == 0 || S == 0) return;
  SBN_ELEMENTWISE_LAUNCH(avgpool_forward_kernel, "avgpool_forward", dtype, n, N * S * C, l, static_cast<const T*>(x),
                         static_cast<I>(n), static_cast<I>(S), static_cast<I>(C), static_cast<T*>(y));
}

void avgpool_backward(const void* dy, DType dtype, std::int64_t N, std::int64_t S, std::int64_t C, void* dx,
                      const Launch& l) {
  const std::int64_t n = N * S * C;
  if (n == 0) return;
  SBN_ELEMENTWISE_LAUNCH(avgpool_backward_kernel, "avgpool_backward", dtype, n, n, l, static_cast<const T*>(dy),
                         static_cast<I>(n), static_cast<I>(S), static_cast<I>(C), static_cast<T*>(dx));
}

}  // namespace syncbn::cuda::train
