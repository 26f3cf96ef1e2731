// Synthetic 10-class images: per-class smooth templates, per-sample jitter, contrast, brightness and
// noise. Integer arithmetic only (rng.h), so the data is bitwise the same on every platform; sample i
// of a split depends only on (seed, split, i), so train/test sizes do not change the samples.
#include <algorithm>
#include <vector>

#include "readers.h"
#include "rng.h"

namespace syncbn::data_detail {
namespace {

constexpr int kGrid = 5;  // control points per side of a template: smooth, yet clearly distinct shapes
// Difficulty knobs, tuned so that a nearest-class-mean classifier is well above chance but far from
// perfect on 1x28x28 (see the Synthetic.IsLearnable test): a small CNN then has something to learn.
constexpr int kClassWeight = 48;  // /256: strength of the class-specific part of a template
constexpr int kDistractor = 96;   // /256: max weight of another class's template mixed into a sample
constexpr int kNoise = 64;        // per-pixel uniform noise in [-kNoise, kNoise]
constexpr int kJitter = 3;        // max shift in pixels (translation: what convolutions are good at)

// A (H, W) field bilinearly interpolated from a kGrid x kGrid grid of bytes, in 8.8 fixed point.
void upsample(const int (&grid)[kGrid][kGrid], std::int64_t H, std::int64_t W, int* out) {
  const auto coord = [](std::int64_t i, std::int64_t n, int& cell, int& frac) {
    const std::int64_t f = n > 1 ? i * (kGrid - 1) * 256 / (n - 1) : 0;  // position in grid units ×256
    cell = static_cast<int>(std::min<std::int64_t>(f >> 8, kGrid - 2));
    frac = static_cast<int>(f - std::int64_t{cell} * 256);
  };
  for (std::int64_t y = 0; y < H; ++y) {
    int gy, wy;
    coord(y, H, gy, wy);
    for (std::int64_t x = 0; x < W; ++x) {
      int gx, wx;
      coord(x, W, gx, wx);
      const int top = grid[gy][gx] * (256 - wx) + grid[gy][gx + 1] * wx;
      const int bottom = grid[gy + 1][gx] * (256 - wx) + grid[gy + 1][gx + 1] * wx;
      out[y * W + x] = (top * (256 - wy) + bottom * wy) >> 16;
    }
  }
}

// Templates (10, C, H, W) in [0, 255]: a base shared by all classes plus a weaker class part, so
// classes differ by a fraction of the pixel range and the per-sample variation matters.
std::vector<int> make_templates(std::uint64_t seed, std::int64_t C, std::int64_t H, std::int64_t W) {
  const std::int64_t plane = H * W;
  std::vector<int> tpl(static_cast<std::size_t>(kNumClasses * C * plane));
  std::vector<int> base(static_cast<std::size_t>(plane)), part(static_cast<std::size_t>(plane));
  const std::uint64_t key = hash2(kDomainSynthetic, seed);
  for (std::int64_t c = 0; c < C; ++c) {
    int grid[kGrid][kGrid];
    SplitMix64 gb(hash2(key, static_cast<std::uint64_t>(c)));
    for (auto& row : grid)
      for (int& v : row) v = static_cast<int>(bounded(gb, 256));
    upsample(grid, H, W, base.data());
    for (std::int64_t k = 0; k < kNumClasses; ++k) {
      SplitMix64 gk(hash2(hash2(key, 1000 + static_cast<std::uint64_t>(k)), static_cast<std::uint64_t>(c)));
      for (auto& row : grid)
        for (int& v : row) v = static_cast<int>(bounded(gk, 256));
      upsample(grid, H, W, part.data());
      int* t = tpl.data() + (k * C + c) * plane;
      for (std::int64_t p = 0; p < plane; ++p)
        t[p] = std::clamp(base[p] + (part[p] - 128) * kClassWeight / 256, 0, 255);
    }
  }
  return tpl;
}

}  // namespace

RawSplit make_synthetic_split(std::uint64_t seed, bool train, std::int64_t count, std::int64_t C, std::int64_t H,
                              std::int64_t W) {
  RawSplit s;
  s.source = std::string("synthetic(seed ") + std::to_string(seed) + (train ? ", train)" : ", test)");
  s.channels = C;
  s.height = H;
  s.width = W;
  const std::vector<int> tpl = make_templates(seed, C, H, W);
  const std::int64_t plane = H * W, sample = C * plane;
  s.pixels.resize(static_cast<std::size_t>(count * sample));
  s.labels.resize(static_cast<std::size_t>(count));
  // Jitter up to kJitter pixels, less on tiny images so the object stays mostly in view.
  const std::int64_t jy = std::min<std::int64_t>(kJitter, H / 8), jx = std::min<std::int64_t>(kJitter, W / 8);
  const std::uint64_t key = hash2(hash2(kDomainSynthetic + 1, seed), train ? 1 : 2);
  for (std::int64_t i = 0; i < count; ++i) {
    SplitMix64 g(hash2(key, static_cast<std::uint64_t>(i)));
    const auto label = static_cast<std::int64_t>(bounded(g, kNumClasses));
    // Another class's template blended in: classes overlap, so no single pixel decides the class.
    const auto other = (label + 1 + static_cast<std::int64_t>(bounded(g, kNumClasses - 1))) % kNumClasses;
    const int mix = static_cast<int>(bounded(g, kDistractor + 1));
    const std::int64_t dy = static_cast<std::int64_t>(bounded(g, 2 * jy + 1)) - jy;
    const std::int64_t dx = static_cast<std::int64_t>(bounded(g, 2 * jx + 1)) - jx;
    const int contrast = 48 + static_cast<int>(bounded(g, 33));    // /64: 0.75 .. 1.25
    const int brightness = static_cast<int>(bounded(g, 33)) - 16;  // -16 .. 16
    s.labels[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(label);
    std::uint8_t* out = s.pixels.data() + i * sample;
    for (std::int64_t c = 0; c < C; ++c) {
      const int* t = tpl.data() + (label * C + c) * plane;
      const int* u = tpl.data() + (other * C + c) * plane;
      for (std::int64_t y = 0; y < H; ++y) {
        const std::int64_t sy = std::clamp<std::int64_t>(y + dy, 0, H - 1);  // edge replicate
        for (std::int64_t x = 0; x < W; ++x) {
          const std::int64_t sx = std::clamp<std::int64_t>(x + dx, 0, W - 1);
          const int noise = static_cast<int>(bounded(g, 2 * kNoise + 1)) - kNoise;
          const int blended = (t[sy * W + sx] * (256 - mix) + u[sy * W + sx] * mix) / 256;
          const int v = 128 + (blended - 128) * contrast / 64 + brightness + noise;
          out[(c * H + y) * W + x] = static_cast<std::uint8_t>(std::clamp(v, 0, 255));
        }
      }
    }
  }
  return s;
}

}  // namespace syncbn::data_detail
