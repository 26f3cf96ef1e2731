// Tensor: an owning, 64-byte aligned buffer of fp32 (or bf16) elements with a logical shape and a memory
// layout.
//
// The shape is always logical: (N, C), (N, C, L) or (N, C, H, W). The layout says how it is stored:
// kPlanar is row-major in that order (NC, NCL, NCHW); kChannelsLast stores (N, H, W, C) for rank 4
// (NHWC), the same bytes as planar for rank 2. resize() reuses capacity, so a layer that sees the same
// batch shape every step allocates once.
//
// The element type (dtype) is fp32 unless a layer that writes bf16 activations (--precision bf16: a
// convolution feeding a fused BN+pool, that pass feeding a convolution) says otherwise; data() is then the
// raw buffer and bf16() its typed view. A gradient has the dtype of its activation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace syncbn {

enum class Layout { kPlanar, kChannelsLast };
enum class ElementType { kF32, kBF16 };

// A bfloat16 value: the high half of an fp32's bits (8-bit exponent, 7-bit mantissa).
struct Bf16 {
  std::uint16_t bits;
};
inline float bf16_to_float(Bf16 v) {
  const std::uint32_t u = static_cast<std::uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
// Round to nearest even (oneDNN's conversion); a NaN stays a (quiet) NaN.
inline Bf16 float_to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return {static_cast<std::uint16_t>(nan ? (u >> 16) | 0x40u : rounded)};
}

struct AlignedFree {
  void operator()(float* p) const;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::vector<std::int64_t> shape, Layout layout = Layout::kPlanar,
                  ElementType dtype = ElementType::kF32);

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);

  // Sets shape and layout; reallocates only when the element count exceeds capacity. Contents are
  // unspecified afterwards (zero when newly allocated).
  void resize(const std::vector<std::int64_t>& shape, Layout layout = Layout::kPlanar,
              ElementType dtype = ElementType::kF32);
  void zero();

  // The elements as fp32 (the raw buffer when dtype() is kBF16).
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  Bf16* bf16() { return reinterpret_cast<Bf16*>(data_.get()); }
  const Bf16* bf16() const { return reinterpret_cast<const Bf16*>(data_.get()); }
  ElementType dtype() const { return dtype_; }
  std::size_t element_size() const { return dtype_ == ElementType::kBF16 ? sizeof(Bf16) : sizeof(float); }
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
  ElementType dtype_ = ElementType::kF32;
  std::int64_t numel_ = 0;
  std::int64_t capacity_ = 0;  // bytes
  std::unique_ptr<float[], AlignedFree> data_;
};

// "(32, 64, 28, 28) NHWC" for messages.
std::string describe(const std::vector<std::int64_t>& shape, Layout layout);

}  // namespace syncbn
