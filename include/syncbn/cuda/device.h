// Device memory and device queries for the CUDA path: RAII allocations, a device tensor (shape, layout,
// activation dtype), pinned host words for end-of-step status reads, and synchronous host⇄device copies
// with dtype conversion for setup, tests and checkpoints (never inside a training step).
//
// Allocation policy (CUDA-graph friendly): buffers grow, never shrink; a layer that sees the same shapes
// every step allocates during its first step only. Growing while the stream is being captured is an
// error with a message saying to run one eager step before capturing (cudaMalloc/cudaFree are not
// capturable).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "syncbn/cuda/check.h"
#include "syncbn/cuda/dtype.h"
#include "syncbn/tensor.h"

namespace syncbn::cuda {

// ---- device queries -------------------------------------------------------------------------------

// Number of visible CUDA devices; 0 with `why` set when there is none or the driver is unusable (no
// driver, insufficient driver, CUDA_VISIBLE_DEVICES empty ...). Never throws.
int visible_devices(std::string* why);

// UUIDs of the visible devices in ordinal order, as nvidia-smi prints them ("GPU-xxxxxxxx-xxxx-..."); empty
// with `why` set when there is none (see visible_devices). Never throws. Input of device_select.h.
std::vector<std::string> visible_device_uuids(std::string* why);

// Multiprocessors of the current device (sizes the kernels' grids).
int current_sm_count();

// Whether `stream` is being captured into a CUDA graph (host query, no synchronisation).
bool is_capturing(cudaStream_t stream);

// ---- allocations ----------------------------------------------------------------------------------

// An owning device allocation. Contents are unspecified after allocation (no implicit memset: that
// would be a synchronising operation in the middle of a step).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Capacity ≥ bytes afterwards; reallocates (losing the contents) only to grow. `what` names the buffer
  // in errors; `stream` (optional) is checked for an ongoing capture before allocating.
  void reserve(std::size_t bytes, const std::string& what, cudaStream_t stream = nullptr);
  void* data() const { return ptr_; }
  std::size_t capacity() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// A typed device array of n elements (grows like DeviceBuffer).
template <class T>
class DeviceArray {
 public:
  void resize(std::size_t n, const std::string& what, cudaStream_t stream = nullptr) {
    buf_.reserve(n * sizeof(T), what, stream);
    n_ = n;
  }
  T* data() const { return static_cast<T*>(buf_.data()); }
  std::size_t size() const { return n_; }

 private:
  DeviceBuffer buf_;
  std::size_t n_ = 0;
};

// Page-locked host memory: the target of the end-of-step asynchronous status copy.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void reserve(std::size_t bytes, const std::string& what);
  void* data() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// ---- device tensor --------------------------------------------------------------------------------

// A device tensor: logical shape (N, C[, L | H, W]), layout as syncbn::Tensor, activation dtype.
class DeviceTensor {
 public:
  DeviceTensor() = default;
  DeviceTensor(const std::vector<std::int64_t>& shape, Layout layout, DType dtype);

  // Sets shape, layout and dtype; reallocates only to grow. Contents unspecified afterwards.
  void resize(const std::vector<std::int64_t>& shape, Layout layout, DType dtype, cudaStream_t stream = nullptr);

  void* data() { return buf_.data(); }
  const void* data() const { return buf_.data(); }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::int64_t dim(int i) const { return shape_[static_cast<std::size_t>(i)]; }
  int rank() const { return static_cast<int>(shape_.size()); }
  std::int64_t numel() const { return numel_; }
  std::size_t bytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }
  Layout layout() const { return layout_; }
  DType dtype() const { return dtype_; }

 private:
  std::vector<std::int64_t> shape_;
  Layout layout_ = Layout::kPlanar;
  DType dtype_ = DType::kF32;
  std::int64_t numel_ = 0;
  DeviceBuffer buf_;
};

// ---- synchronous copies (setup, tests, checkpoints; they wait for `stream`) ----------------------

// host fp32 → device in `dtype` (rounded to nearest-even); dev is resized to host's shape and layout.
void copy_to_device(const Tensor& host, DType dtype, DeviceTensor& dev, cudaStream_t stream);
// device (any dtype) → host fp32, same shape and layout.
Tensor copy_to_host(const DeviceTensor& dev, cudaStream_t stream);

// Typed arrays: n elements between host vectors and device pointers.
template <class T>
std::vector<T> copy_to_host(const T* dev, std::size_t n, cudaStream_t stream) {
  std::vector<T> out(n);
  if (n == 0) return out;
  SBN_CUDA_CHECK(cudaMemcpyAsync(out.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost, stream), "copy to host");
  SBN_CUDA_CHECK(cudaStreamSynchronize(stream), "copy to host");
  return out;
}

template <class T>
void copy_to_device(const std::vector<T>& host, T* dev, cudaStream_t stream) {
  if (host.empty()) return;
  SBN_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream),
                 "copy to device");
  SBN_CUDA_CHECK(cudaStreamSynchronize(stream), "copy to device");
}

}  // namespace syncbn::cuda
