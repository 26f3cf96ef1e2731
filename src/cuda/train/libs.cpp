// cuDNN / cuBLAS error texts, handles and descriptors (libs.h).
#include "libs.h"

#include "syncbn/error.h"

namespace syncbn::cuda::train {

std::string cudnn_error_text(cudnnStatus_t code) {
  std::string out = cudnnGetErrorString(code);
#if CUDNN_MAJOR >= 9  // cudnnGetLastErrorString is new in cuDNN 9; libs.h admits cuDNN 8
  char last[512] = {0};
  cudnnGetLastErrorString(last, sizeof last);
  if (last[0]) out += " (cuDNN: " + std::string(last) + ")";
#endif
  return out;
}

std::string cublas_error_text(cublasStatus_t code) {
  return std::string(cublasGetStatusName(code)) + ": " + cublasGetStatusString(code);
}

cudnnDataType_t cudnn_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF32: return CUDNN_DATA_FLOAT;
    case DType::kBF16: return CUDNN_DATA_BFLOAT16;
    case DType::kF16: return CUDNN_DATA_HALF;
  }
  SBN_FAIL("unknown dtype " + std::to_string(static_cast<int>(dtype)));
}

cudaDataType_t cublas_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
  }
  SBN_FAIL("unknown dtype " + std::to_string(static_cast<int>(dtype)));
}

void check_cudnn_version() {
  const std::size_t runtime = cudnnGetVersion();
  // CUDNN_VERSION = major·10000 + minor·100 + patch since cuDNN 9 (major·1000 + ... before).
  const std::size_t major = runtime >= 90000 ? runtime / 10000 : runtime / 1000;
  SBN_CHECK(major == static_cast<std::size_t>(CUDNN_MAJOR),
            "cuDNN " + std::to_string(runtime) + " was loaded but syncbn was built with cuDNN " +
                std::to_string(CUDNN_MAJOR) + "." + std::to_string(CUDNN_MINOR) +
                " headers: the major versions must match (check LD_LIBRARY_PATH)");
}

// ---- handles ----------------------------------------------------------------------------------------

namespace {
constexpr std::size_t kCublasWorkspaceBytes = std::size_t{32} << 20;
}  // namespace

CudnnHandle::CudnnHandle(cudaStream_t stream) {
  SBN_CUDNN_CHECK(cudnnCreate(&h_), "creating the cuDNN handle");
  const cudnnStatus_t rc = cudnnSetStream(h_, stream);
  if (rc != CUDNN_STATUS_SUCCESS) {
    cudnnDestroy(h_);
    h_ = nullptr;
    SBN_CUDNN_CHECK(rc, "binding the cuDNN handle to the step's stream");
  }
}

CudnnHandle::~CudnnHandle() {
  if (h_) cudnnDestroy(h_);  // no throw from a destructor
}

CublasHandle::CublasHandle(cudaStream_t stream) {
  SBN_CUBLAS_CHECK(cublasCreate(&h_), "creating the cuBLAS handle");
  cublasStatus_t rc = cublasSetStream(h_, stream);
  // Reductions inside mixed-precision GEMMs in fp32 (the compute type), never in the bf16/fp16 output type.
  if (rc == CUBLAS_STATUS_SUCCESS)
    rc = cublasSetMathMode(h_, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                         CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
  if (rc == CUBLAS_STATUS_SUCCESS) rc = cublasSetPointerMode(h_, CUBLAS_POINTER_MODE_HOST);
  // After cublasSetStream, which resets the workspace to cuBLAS's own pool. 32 MiB: cuBLAS's recommendation
  // for Hopper (4 MiB suffice before it); the model's GEMMs are small.
  if (rc == CUBLAS_STATUS_SUCCESS) {
    try {
      workspace_.reserve(kCublasWorkspaceBytes, "cuBLAS workspace");
    } catch (...) {
      cublasDestroy(h_);
      h_ = nullptr;
      throw;
    }
    rc = cublasSetWorkspace(h_, workspace_.data(), workspace_.capacity());
  }
  if (rc != CUBLAS_STATUS_SUCCESS) {
    cublasDestroy(h_);
    h_ = nullptr;
    SBN_CUBLAS_CHECK(rc, "configuring the cuBLAS handle (stream, math mode, pointer mode, workspace)");
  }
}

CublasHandle::~CublasHandle() {
  if (h_) cublasDestroy(h_);
}

// ---- descriptors ------------------------------------------------------------------------------------

namespace {
int as_int(std::int64_t v, const char* what) {
  SBN_CHECK(v >= 0 && v <= INT32_MAX, std::string(what) + " " + std::to_string(v) + " exceeds cuDNN's int range");
  return static_cast<int>(v);
}
}  // namespace

TensorDesc::TensorDesc() { SBN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d_), "cuDNN tensor descriptor"); }
TensorDesc::~TensorDesc() {
  if (d_) cudnnDestroyTensorDescriptor(d_);
}
void TensorDesc::set_nhwc(DType dtype, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) {
  SBN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d_, CUDNN_TENSOR_NHWC, cudnn_dtype(dtype), as_int(n, "batch"),
                                             as_int(c, "channels"), as_int(h, "height"), as_int(w, "width")),
                  "cuDNN NHWC tensor (" + std::to_string(n) + ", " + std::to_string(c) + ", " + std::to_string(h) +
                      ", " + std::to_string(w) + ") " + dtype_name(dtype));
}

FilterDesc::FilterDesc() { SBN_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d_), "cuDNN filter descriptor"); }
FilterDesc::~FilterDesc() {
  if (d_) cudnnDestroyFilterDescriptor(d_);
}
void FilterDesc::set_krsc(DType dtype, std::int64_t out, std::int64_t in, std::int64_t k) {
  SBN_CUDNN_CHECK(cudnnSetFilter4dDescriptor(d_, cudnn_dtype(dtype), CUDNN_TENSOR_NHWC, as_int(out, "filters"),
                                             as_int(in, "channels"), as_int(k, "kernel"), as_int(k, "kernel")),
                  "cuDNN filter " + std::to_string(out) + "x" + std::to_string(in) + "x" + std::to_string(k) + "x" +
                      std::to_string(k) + " " + dtype_name(dtype));
}

ConvDesc::ConvDesc() { SBN_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d_), "cuDNN convolution descriptor"); }
ConvDesc::~ConvDesc() {
  if (d_) cudnnDestroyConvolutionDescriptor(d_);
}
void ConvDesc::set(std::int64_t pad, std::int64_t stride, cudnnMathType_t math) {
  SBN_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d_, as_int(pad, "padding"), as_int(pad, "padding"),
                                                  as_int(stride, "stride"), as_int(stride, "stride"), 1, 1,
                                                  CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                  "cuDNN convolution (pad " + std::to_string(pad) + ", stride " + std::to_string(stride) + ")");
  set_math(math);
}
void ConvDesc::set_math(cudnnMathType_t math) {
  SBN_CUDNN_CHECK(cudnnSetConvolutionMathType(d_, math), "cuDNN convolution math type");
}

}  // namespace syncbn::cuda::train
