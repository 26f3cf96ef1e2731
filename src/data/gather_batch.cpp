// gather_batch: copy (and optionally augment) the samples of a micro-batch into contiguous buffers.
#include <algorithm>
#include <cstring>
#include <string>

#include "rng.h"
#include "syncbn/data.h"
#include "syncbn/error.h"

namespace syncbn {

namespace {

constexpr int kPad = 4;  // crop padding on every side, as in the usual CIFAR-10 recipe

void check_index(const Dataset& ds, std::int64_t k, std::int64_t index) {
  if (index < 0 || index >= ds.size())
    SBN_FAIL("gather_batch: index " + std::to_string(index) + " (batch position " + std::to_string(k) +
             ") is outside [0, " + std::to_string(ds.size()) + ") of " + ds.name);
}

// One augmented sample: out(c, y, x) = padded(c, y + dy − 4, x' + dx − 4) with x' = flip ? W−1−x : x,
// where `padded` is 0 outside the image.
void crop_flip_sample(const float* src, std::int64_t C, std::int64_t H, std::int64_t W, const AugmentDraw& d,
                      float* out) {
  const std::int64_t oy = d.dy - kPad, ox = d.dx - kPad;
  // Output columns whose source column is inside the image: x + ox ∈ [0, W) (before the flip).
  const std::int64_t x0 = std::max<std::int64_t>(0, -ox), x1 = std::min<std::int64_t>(W, W - ox);
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = 0; y < H; ++y) {
      float* row = out + (c * H + y) * W;
      const std::int64_t sy = y + oy;
      if (sy < 0 || sy >= H || x1 <= x0) {
        std::fill(row, row + W, 0.f);
        continue;
      }
      const float* srow = src + (c * H + sy) * W;
      if (!d.flip) {
        std::fill(row, row + x0, 0.f);
        std::memcpy(row + x0, srow + x0 + ox, static_cast<std::size_t>(x1 - x0) * sizeof(float));
        std::fill(row + x1, row + W, 0.f);
      } else {
        // Window column j goes to output column W−1−j.
        std::fill(row, row + W, 0.f);
        for (std::int64_t j = x0; j < x1; ++j) row[W - 1 - j] = srow[j + ox];
      }
    }
}

}  // namespace

AugmentDraw augment_draw(const Augment& augment, std::int64_t sample_index) {
  using namespace data_detail;
  SplitMix64 g(hash2(hash2(hash2(kDomainAugment, augment.seed), static_cast<std::uint64_t>(augment.epoch)),
                     static_cast<std::uint64_t>(sample_index)));
  AugmentDraw d;
  d.dy = static_cast<int>(bounded(g, 2 * kPad + 1));
  d.dx = static_cast<int>(bounded(g, 2 * kPad + 1));
  d.flip = (g() >> 63) != 0;
  return d;
}

void gather_batch(const Dataset& ds, const std::int64_t* indices, std::int64_t count, const Augment* augment,
                  float* images, std::int32_t* labels) {
  const std::int64_t S = ds.sample_floats();
  SBN_CHECK(static_cast<std::int64_t>(ds.images.size()) == ds.size() * S,
            "gather_batch: " + ds.name + " holds " + std::to_string(ds.images.size()) + " floats, expected " +
                std::to_string(ds.size()) + " samples x " + std::to_string(S));
  SBN_CHECK(count >= 0, "gather_batch: negative count " + std::to_string(count));
  if (augment && augment->crop_flip) {
    for (std::int64_t k = 0; k < count; ++k) {
      const std::int64_t i = indices[k];
      check_index(ds, k, i);
      crop_flip_sample(ds.images.data() + i * S, ds.channels, ds.height, ds.width, augment_draw(*augment, i),
                       images + k * S);
      labels[k] = ds.labels[static_cast<std::size_t>(i)];
    }
    return;
  }
  // Runs of consecutive indices (evaluation walks the set in order) go in one memcpy.
  std::int64_t k = 0;
  while (k < count) {
    const std::int64_t first = indices[k];
    check_index(ds, k, first);
    std::int64_t run = 1;
    while (k + run < count && indices[k + run] == first + run) ++run;
    check_index(ds, k + run - 1, first + run - 1);
    std::memcpy(images + k * S, ds.images.data() + first * S, static_cast<std::size_t>(run * S) * sizeof(float));
    std::memcpy(labels + k, ds.labels.data() + first, static_cast<std::size_t>(run) * sizeof(std::int32_t));
    k += run;
  }
}

}  // namespace syncbn
