#include "syncbn/cuda/device.h"

#include <cstdio>
#include <utility>

#include "syncbn/cuda/bn_thread.h"  // to_float / from_float: the kernels' own dtype conversions

namespace syncbn::cuda {

// ---- device queries -------------------------------------------------------------------------------

int visible_devices(std::string* why) {
  int n = 0;
  const cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc != cudaSuccess) {
    cudaGetLastError();  // not sticky, but leave no trace for the next check
    if (why) *why = "cudaGetDeviceCount: " + cuda_error_text(rc);
    return 0;
  }
  if (n == 0 && why) *why = "cudaGetDeviceCount reports 0 devices (CUDA_VISIBLE_DEVICES empty?)";
  return n;
}

std::vector<std::string> visible_device_uuids(std::string* why) {
  std::vector<std::string> out;
  const int n = visible_devices(why);
  for (int d = 0; d < n; ++d) {
    cudaDeviceProp prop{};
    const cudaError_t rc = cudaGetDeviceProperties(&prop, d);
    if (rc != cudaSuccess) {
      cudaGetLastError();
      if (why) *why = "cudaGetDeviceProperties(" + std::to_string(d) + "): " + cuda_error_text(rc);
      return {};
    }
    const auto* b = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
    char text[48];
    std::snprintf(text, sizeof text, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                  b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    out.emplace_back(text);
  }
  return out;
}

int current_sm_count() {
  int dev = 0, sms = 0;
  SBN_CUDA_CHECK(cudaGetDevice(&dev), "querying the current device");
  SBN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "querying the SM count");
  return sms;
}

bool is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  SBN_CUDA_CHECK(cudaStreamIsCapturing(stream, &st), "querying stream capture");
  return st != cudaStreamCaptureStatusNone;
}

// ---- allocations ----------------------------------------------------------------------------------

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);  // no throw from a destructor; a failure here means the context is gone
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reserve(std::size_t bytes, const std::string& what, cudaStream_t stream) {
  if (bytes <= bytes_) return;
  if (stream && is_capturing(stream))
    SBN_FAIL(what + ": needs " + std::to_string(bytes) + " bytes of device memory while the stream is being "
             "captured into a CUDA graph; run one eager step with the same shapes before capturing");
  if (ptr_) {
    SBN_CUDA_CHECK(cudaFree(ptr_), what + ": freeing " + std::to_string(bytes_) + " bytes");
    ptr_ = nullptr;
    bytes_ = 0;
  }
  SBN_CUDA_CHECK(cudaMalloc(&ptr_, bytes), what + ": allocating " + std::to_string(bytes) + " bytes");
  bytes_ = bytes;
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_) cudaFreeHost(ptr_);
}

void PinnedBuffer::reserve(std::size_t bytes, const std::string& what) {
  if (bytes <= bytes_) return;
  if (ptr_) {
    SBN_CUDA_CHECK(cudaFreeHost(ptr_), what + ": freeing pinned memory");
    ptr_ = nullptr;
    bytes_ = 0;
  }
  SBN_CUDA_CHECK(cudaMallocHost(&ptr_, bytes), what + ": allocating " + std::to_string(bytes) + " pinned bytes");
  bytes_ = bytes;
}

// ---- device tensor --------------------------------------------------------------------------------

DeviceTensor::DeviceTensor(const std::vector<std::int64_t>& shape, Layout layout, DType dtype) {
  resize(shape, layout, dtype);
}

void DeviceTensor::resize(const std::vector<std::int64_t>& shape, Layout layout, DType dtype, cudaStream_t stream) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    SBN_CHECK(d >= 0, "device tensor: negative dimension in " + describe(shape, layout));
    n *= d;
  }
  buf_.reserve(static_cast<std::size_t>(n) * dtype_size(dtype), "device tensor " + describe(shape, layout), stream);
  shape_ = shape;
  layout_ = layout;
  dtype_ = dtype;
  numel_ = n;
}

// ---- copies ---------------------------------------------------------------------------------------

namespace {

template <class T>
std::vector<T> narrow(const float* src, std::int64_t n) {
  std::vector<T> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) from_float(src[i], &out[static_cast<std::size_t>(i)]);
  return out;
}

template <class T>
void widen(const std::vector<T>& src, float* dst) {
  for (std::size_t i = 0; i < src.size(); ++i) dst[i] = to_float(src[i]);
}

}  // namespace

void copy_to_device(const Tensor& host, DType dtype, DeviceTensor& dev, cudaStream_t stream) {
  dev.resize(host.shape(), host.layout(), dtype, stream);
  const std::int64_t n = host.numel();
  switch (dtype) {
    case DType::kF32: {
      std::vector<float> v(host.data(), host.data() + n);
      copy_to_device(v, static_cast<float*>(dev.data()), stream);
      break;
    }
    case DType::kBF16: copy_to_device(narrow<__nv_bfloat16>(host.data(), n), static_cast<__nv_bfloat16*>(dev.data()), stream); break;
    case DType::kF16: copy_to_device(narrow<__half>(host.data(), n), static_cast<__half*>(dev.data()), stream); break;
  }
}

Tensor copy_to_host(const DeviceTensor& dev, cudaStream_t stream) {
  Tensor out(dev.shape(), dev.layout());
  const auto n = static_cast<std::size_t>(dev.numel());
  switch (dev.dtype()) {
    case DType::kF32: widen(copy_to_host(static_cast<const float*>(dev.data()), n, stream), out.data()); break;
    case DType::kBF16: widen(copy_to_host(static_cast<const __nv_bfloat16*>(dev.data()), n, stream), out.data()); break;
    case DType::kF16: widen(copy_to_host(static_cast<const __half*>(dev.data()), n, stream), out.data()); break;
  }
  return out;
}

}  // namespace syncbn::cuda
