#include "syncbn/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "syncbn/error.h"

namespace syncbn {

void AlignedFree::operator()(float* p) const { std::free(p); }

namespace {
std::int64_t count_of(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    SBN_CHECK(d >= 0, "tensor dimension " + std::to_string(d) + " is negative");
    n *= d;
  }
  return n;
}
}  // namespace

Tensor::Tensor(std::vector<std::int64_t> shape, Layout layout, ElementType dtype) {
  resize(shape, layout, dtype);
}

Tensor::Tensor(const Tensor& other) {
  resize(other.shape_, other.layout_, other.dtype_);
  if (numel_) std::memcpy(data(), other.data(), static_cast<std::size_t>(numel_) * element_size());
}

Tensor& Tensor::operator=(const Tensor& other) {
  if (this != &other) {
    resize(other.shape_, other.layout_, other.dtype_);
    if (numel_) std::memcpy(data(), other.data(), static_cast<std::size_t>(numel_) * element_size());
  }
  return *this;
}

void Tensor::resize(const std::vector<std::int64_t>& shape, Layout layout, ElementType dtype) {
  const std::int64_t n = count_of(shape);
  const std::size_t element = dtype == ElementType::kBF16 ? sizeof(Bf16) : sizeof(float);
  const std::size_t need = static_cast<std::size_t>(n) * element;
  if (static_cast<std::int64_t>(need) > capacity_) {
    // Round up to whole 64-byte lines so vector loops may touch the last line's padding.
    const std::size_t bytes = (need + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    data_.reset(static_cast<float*>(p));
    capacity_ = static_cast<std::int64_t>(bytes);
  }
  shape_ = shape;
  layout_ = layout;
  dtype_ = dtype;
  numel_ = n;
}

void Tensor::zero() {
  if (numel_) std::memset(data(), 0, static_cast<std::size_t>(numel_) * element_size());
}

std::string describe(const std::vector<std::int64_t>& shape, Layout layout) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  s += ")";
  if (shape.size() == 4) s += layout == Layout::kChannelsLast ? " NHWC" : " NCHW";
  return s;
}

}  // namespace syncbn
