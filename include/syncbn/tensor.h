// Tensor: an owning, 64-byte aligned fp32 buffer with a logical shape and a memory layout.
//
// The shape is always logical: (N, C), (N, C, L) or (N, C, H, W). The layout says how it is stored:
// kPlanar is row-major in that order (NC, NCL, NCHW); kChannelsLast stores (N, H, W, C) for rank 4
// (NHWC), the same bytes as planar for rank 2. resize() reuses capacity, so a layer that sees the same
// batch shape every step allocates once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace syncbn {

enum class Layout { kPlanar, kChannelsLast };

struct AlignedFree {
  void operator()(float* p) const;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::vector<std::int64_t> shape, Layout layout = Layout::kPlanar);

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);

  // Sets shape and layout; reallocates only when the element count exceeds capacity. Contents are
  // unspecified afterwards (zero when newly allocated).
  void resize(const std::vector<std::int64_t>& shape, Layout layout = Layout::kPlanar);
  void zero();

  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::int64_t dim(int i) const { return shape_[static_cast<std::size_t>(i)]; }
  int rank() const { return static_cast<int>(shape_.size()); }
  std::int64_t numel() const { return numel_; }
  Layout layout() const { return layout_; }
  float& operator[](std::int64_t i) { return data_.get()[i]; }
  float operator[](std::int64_t i) const { return data_.get()[i]; }

 private:
  std::vector<std::int64_t> shape_;
  Layout layout_ = Layout::kPlanar;
  std::int64_t numel_ = 0;
  std::int64_t capacity_ = 0;
  std::unique_ptr<float[], AlignedFree> data_;
};

// "(32, 64, 28, 28) NHWC" for messages.
std::string describe(const std::vector<std::int64_t>& shape, Layout layout);

}  // namespace syncbn
