// cuDNN and cuBLAS for the GPU model: the error-check macros (the CUDA members of the one error policy,
// check.h), RAII handles and descriptors, and the dtype mappings.
//
//   SBN_CUDNN_CHECK(call, context)   throws syncbn::Error unless `call` returns CUDNN_STATUS_SUCCESS; the
//                                    message has cuDNN's status name and (cuDNN >= 9) its last error text
//   SBN_CUBLAS_CHECK(call, context)  throws unless CUBLAS_STATUS_SUCCESS
//
// We use cuDNN's legacy convolution API (cudnnConvolutionForward / BackwardData / BackwardFilter with the
// _v7 heuristics): deprecated in cuDNN 9 but complete and stable there (docs/GPU.md, "Training on the
// GPU"); its deprecation warnings are opt-in (CUDNN_WARN_DEPRECATED), so the build stays warning-free.
#pragma once

#include <cublas_v2.h>
#include <cudnn.h>

#include <cstdint>
#include <string>

#include "syncbn/cuda/check.h"
#include "syncbn/cuda/device.h"
#include "syncbn/cuda/dtype.h"

static_assert(CUDNN_MAJOR >= 8, "syncbn's GPU trainer needs cuDNN >= 8 (the _v7 algorithm heuristics, NHWC, bf16)");

namespace syncbn::cuda::train {

// "CUDNN_STATUS_NOT_SUPPORTED (cuDNN: <last error text>)".
std::string cudnn_error_text(cudnnStatus_t code);
// "CUBLAS_STATUS_INVALID_VALUE: an invalid numeric value was used as an argument".
std::string cublas_error_text(cublasStatus_t code);

cudnnDataType_t cudnn_dtype(DType dtype);
cudaDataType_t cublas_dtype(DType dtype);

// cuDNN's runtime version against the headers we compiled with: the major versions must agree (their
// ABIs differ), else a clear error instead of undefined behaviour.
void check_cudnn_version();

// ---- RAII ----------------------------------------------------------------------------------------------

// A cuDNN handle bound to `stream` (the current device at construction is the handle's device).
class CudnnHandle {
 public:
  explicit CudnnHandle(cudaStream_t stream);
  ~CudnnHandle();
  CudnnHandle(const CudnnHandle&) = delete;
  CudnnHandle& operator=(const CudnnHandle&) = delete;
  cudnnHandle_t get() const { return h_; }

 private:
  cudnnHandle_t h_ = nullptr;
};

// A cuBLAS handle bound to `stream`, scalars from host memory, no TF32 (full fp32 products for fp32
// data: --precision fp32 means fp32).
class CublasHandle {
 public:
  explicit CublasHandle(cudaStream_t stream);
  ~CublasHandle();
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return h_; }

 private:
  // The handle's own workspace (cublasSetWorkspace): cuBLAS then never allocates on a GEMM, so GEMMs can
  // be captured into a CUDA graph (a whole step: CudaTrainModel::capture_step). Freed after the handle.
  DeviceBuffer workspace_;
  cublasHandle_t h_ = nullptr;
};

// An NHWC tensor descriptor (n, c, h, w) of `dtype`.
class TensorDesc {
 public:
  TensorDesc();
  ~TensorDesc();
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  void set_nhwc(DType dtype, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w);
  cudnnTensorDescriptor_t get() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

// A filter descriptor: out × in × k × k weights stored KRSC (CUDNN_TENSOR_NHWC), `dtype`.
class FilterDesc {
 public:
  FilterDesc();
  ~FilterDesc();
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
  void set_krsc(DType dtype, std::int64_t out, std::int64_t in, std::int64_t k);
  cudnnFilterDescriptor_t get() const { return d_; }

 private:
  cudnnFilterDescriptor_t d_ = nullptr;
};

// A 2-d cross-correlation (what PyTorch and oneDNN call convolution), fp32 accumulation.
class ConvDesc {
 public:
  ConvDesc();
  ~ConvDesc();
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
  void set(std::int64_t pad, std::int64_t stride, cudnnMathType_t math);
  void set_math(cudnnMathType_t math);
  cudnnConvolutionDescriptor_t get() const { return d_; }

 private:
  cudnnConvolutionDescriptor_t d_ = nullptr;
};

}  // namespace syncbn::cuda::train

#define SBN_CUDNN_CHECK(call, context)                                                                 \
  do {                                                                                                 \
    const cudnnStatus_t sbn_cudnn_rc_ = (call);                                                        \
    if (sbn_cudnn_rc_ != CUDNN_STATUS_SUCCESS)                                                         \
      ::syncbn::throw_error(std::string(context) + ": " #call " failed: " +                           \
                                ::syncbn::cuda::train::cudnn_error_text(sbn_cudnn_rc_),                \
                            __FILE__, __LINE__);                                                       \
  } while (0)

#define SBN_CUBLAS_CHECK(call, context)                                                                \
  do {                                                                                                 \
    const cublasStatus_t sbn_cublas_rc_ = (call);                                                      \
    if (sbn_cublas_rc_ != CUBLAS_STATUS_SUCCESS)                                                       \
      ::syncbn::throw_error(std::string(context) + ": " #call " failed: " +                           \
                                ::syncbn::cuda::train::cublas_error_text(sbn_cublas_rc_),              \
                            __FILE__, __LINE__);                                                       \
  } while (0)
