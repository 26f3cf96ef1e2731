// Fully connected layer on cuBLAS: y = x·Wᵀ + b, x (N, in) (or any (N, ...) flattened in memory order,
// which for NHWC activations is the CPU model's flatten order), W (out, in) in the ParamStore.
//
// Row-major matrices are column-major transposes, so with W's bytes as a column-major (in × out) matrix:
//   forward  yᵀ (out × N)  = (W as in×out)ᵀ · xᵀ (in × N)            gemm(T, N, out, N, in)
//   dW       dWᵀ (in × out) += xᵀ (in × N) · dy (N × out)             gemm(N, T, in, out, N), beta = 1
//   dx       dxᵀ (in × N)  = (W as in×out) · dyᵀ (out × N)           gemm(N, N, in, N, out)
// All with fp32 compute (CUBLAS_COMPUTE_32F: no TF32, no reduced-precision reductions, libs.h). The
// weight gradient is accumulated by the GEMM itself straight into the fp32 gradient array, also for
// bf16/fp16 operands (cuBLAS allows a wider C than A and B). For bf16/fp16 the weights are used as a
// rounded copy, refreshed on the first forward after the parameters change.
#include "layers.h"
#include "syncbn/error.h"

namespace syncbn::cuda::train {
namespace {

int as_int(std::int64_t v, const std::string& what) {
  SBN_CHECK(v >= 0 && v <= INT32_MAX, what + " " + std::to_string(v) + " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

class LinearLayer final : public Layer {
 public:
  LinearLayer(const LinearPlan& plan, NetContext& ctx) : p_(plan), ctx_(ctx) {
    if (ctx_.dtype != DType::kF32)
      w_work_.reserve(static_cast<std::size_t>(p_.in * p_.out) * dtype_size(ctx_.dtype), p_.name + " weights");
  }

  const DeviceTensor& forward(const DeviceTensor& x, bool) override {
    const std::int64_t N = x.rank() ? x.dim(0) : 0;
    SBN_CHECK(x.dtype() == ctx_.dtype && (N == 0 || (x.numel() % N == 0 && x.numel() / N == p_.in)),
              p_.name + ": expects " + std::to_string(p_.in) + " " + dtype_name(ctx_.dtype) + " features per sample, got " +
                  describe(x.shape(), x.layout()) + " " + dtype_name(x.dtype()));
    SBN_CHECK(x.rank() == 2 || x.layout() == Layout::kChannelsLast || x.dim(1) == 1,
              p_.name + ": expects (N, F) or NHWC activations (flattened in NHWC order, like the CPU model)");
    x_ = &x;
    y_.resize({N, p_.out}, Layout::kPlanar, ctx_.dtype, ctx_.launch.stream);
    if (N == 0) return y_;
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t t = cublas_dtype(ctx_.dtype);
    SBN_CUBLAS_CHECK(cublasGemmEx(ctx_.cublas, CUBLAS_OP_T, CUBLAS_OP_N, as_int(p_.out, p_.name), as_int(N, p_.name),
                                  as_int(p_.in, p_.name), &one, weights(), t, as_int(p_.in, p_.name), x.data(), t,
                                  as_int(p_.in, p_.name), &zero, y_.data(), t, as_int(p_.out, p_.name),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     p_.name + " forward (N = " + std::to_string(N) + ")");
    if (p_.bias.present()) add_bias(y_.data(), ctx_.dtype, N, p_.out, ctx_.values + p_.bias.offset, ctx_.launch);
    return y_;
  }

  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override {
    SBN_CHECK(x_ && dy.shape() == y_.shape() && dy.dtype() == ctx_.dtype,
              p_.name + ": backward's gradient " + describe(dy.shape(), dy.layout()) + " does not match the output " +
                  describe(y_.shape(), y_.layout()));
    const DeviceTensor& x = *x_;
    const std::int64_t N = y_.dim(0);
    if (need_dx) dx_.resize(x.shape(), x.layout(), ctx_.dtype, ctx_.launch.stream);
    if (N == 0) {
      grads_done(ctx_, {p_.weight, p_.bias});  // nothing to add: complete as they are
      return need_dx ? &dx_ : nullptr;
    }
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t t = cublas_dtype(ctx_.dtype);
    SBN_CUBLAS_CHECK(cublasGemmEx(ctx_.cublas, CUBLAS_OP_N, CUBLAS_OP_T, as_int(p_.in, p_.name), as_int(p_.out, p_.name),
                                  as_int(N, p_.name), &one, x.data(), t, as_int(p_.in, p_.name), dy.data(), t,
                                  as_int(p_.out, p_.name), &one, ctx_.grads + p_.weight.offset, CUDA_R_32F,
                                  as_int(p_.in, p_.name), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     p_.name + " weight gradient (N = " + std::to_string(N) + ")");
    if (p_.bias.present()) bias_grad(dy.data(), ctx_.dtype, N, p_.out, ctx_.grads + p_.bias.offset, ctx_.reduce_ws, ctx_.launch);
    grads_done(ctx_, {p_.weight, p_.bias});  // before the input gradient: its bucket may start meanwhile
    if (!need_dx) return nullptr;
    SBN_CUBLAS_CHECK(cublasGemmEx(ctx_.cublas, CUBLAS_OP_N, CUBLAS_OP_N, as_int(p_.in, p_.name), as_int(N, p_.name),
                                  as_int(p_.out, p_.name), &one, weights(), t, as_int(p_.in, p_.name), dy.data(), t,
                                  as_int(p_.out, p_.name), &zero, dx_.data(), t, as_int(p_.in, p_.name),
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     p_.name + " input gradient (N = " + std::to_string(N) + ")");
    return &dx_;
  }

 private:
  // W in the activation dtype: the fp32 parameters themselves, or the rounded copy.
  const void* weights() {
    const float* w = ctx_.values + p_.weight.offset;
    if (ctx_.dtype == DType::kF32) return w;
    if (w_version_ != ctx_.version) {
      cast_from_float(w, p_.in * p_.out, ctx_.dtype, w_work_.data(), ctx_.launch);
      w_version_ = ctx_.version;
    }
    return w_work_.data();
  }

  LinearPlan p_;
  NetContext& ctx_;
  DeviceBuffer w_work_;          // (out, in) in bf16/fp16
  std::uint64_t w_version_ = 0;
  const DeviceTensor* x_ = nullptr;
  DeviceTensor y_, dx_;
};

}  // namespace

std::unique_ptr<Layer> make_linear(const LinearPlan& plan, NetContext& ctx) {
  return std::make_unique<LinearLayer>(plan, ctx);
}

}  // namespace syncbn::cuda::train
