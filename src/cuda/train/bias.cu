// Bias of convolutions and fully connected layers: y (rows, C) += b, and db += Σ_rows dy.
//
// (Convolutions have a bias only with --norm none: a norm's shift makes it redundant, as on the CPU.)
// The gradient is a deterministic column reduction (train_launch.cuh): double partials per block of rows,
// added in a fixed order, then accumulated into the fp32 gradient.
#include "train_launch.cuh"

namespace syncbn::cuda::train {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

template <class T, class I>
__global__ void __launch_bounds__(kThreads) add_bias_kernel(T* __restrict__ y, I n, I C, const float* __restrict__ bias) {
  SBN_GRID_STRIDE(I, e, n) from_float(to_float(y[e]) + bias[e % C], &y[e]);
}

// One column-reduction term: dy (rows, C) at (r, c).
template <class T>
struct BiasGradOp {
  const T* dy;
  std::int64_t C;
  __device__ void operator()(std::int64_t r, std::int64_t c, double* a, double*) const {
    *a += static_cast<double>(to_float(dy[r * C + c]));
  }
};

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void add_bias(void* y, DType dtype, std::int64_t rows, std::int64_t C, const float* bias, const Launch& l) {
  const std::int64_t n = rows * C;
  if (n == 0) return;
  SBN_ELEMENTWISE_LAUNCH(add_bias_kernel, "add_bias", dtype, n, n, l, static_cast<T*>(y), static_cast<I>(n),
                         static_cast<I>(C), bias);
}

void bias_grad(const void* dy, DType dtype, std::int64_t rows, std::int64_t C, float* grad, ReduceWorkspace& ws,
               const Launch& l) {
  detail::with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    detail::column_reduce(BiasGradOp<T>{static_cast<const T*>(dy), C}, rows, C, detail::AddToFloats{grad, nullptr}, ws, l,
                          "bias_grad");
  });
}

}  // namespace syncbn::cuda::train
