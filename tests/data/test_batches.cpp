// gather_batch with and without augmentation, and the augmentation draws.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <numeric>

#include "data_test_util.h"
#include "syncbn/data.h"

namespace syncbn::test {
namespace {

// A dataset whose every value says where it comes from: 1 + sample·1000 + c·100 + y·10 + x (never 0,
// so zero padding is recognisable).
Dataset positional(std::int64_t n, std::int64_t C, std::int64_t H, std::int64_t W) {
  Dataset d;
  d.name = "positional";
  d.channels = C;
  d.height = H;
  d.width = W;
  d.num_classes = 10;
  for (std::int64_t i = 0; i < n; ++i) {
    d.labels.push_back(static_cast<std::int32_t>(i % 10));
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t y = 0; y < H; ++y)
        for (std::int64_t x = 0; x < W; ++x)
          d.images.push_back(static_cast<float>(1 + i * 1000 + c * 100 + y * 10 + x));
  }
  return d;
}

// Crop-and-flip augmentation drawn from `seed` and `epoch`.
Augment crop_flip(std::uint64_t seed, std::int64_t epoch = 0) {
  Augment a;
  a.crop_flip = true;
  a.seed = seed;
  a.epoch = epoch;
  return a;
}

// The batch of samples 0 .. n-1 in order.
std::vector<std::int64_t> first_samples(std::int64_t n) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  return idx;
}

// Independent reference of crop+flip: pad into an explicit (H+8, W+8) zero image, cut the window at
// (dy, dx), then mirror the window.
std::vector<float> reference_crop_flip(const float* src, std::int64_t C, std::int64_t H, std::int64_t W,
                                       const AugmentDraw& d) {
  const std::int64_t PH = H + 8, PW = W + 8;
  std::vector<float> padded(static_cast<std::size_t>(C * PH * PW), 0.f);
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = 0; y < H; ++y)
      for (std::int64_t x = 0; x < W; ++x)
        padded[static_cast<std::size_t>((c * PH + y + 4) * PW + x + 4)] = src[(c * H + y) * W + x];
  std::vector<float> out(static_cast<std::size_t>(C * H * W));
  for (std::int64_t c = 0; c < C; ++c)
    for (std::int64_t y = 0; y < H; ++y)
      for (std::int64_t x = 0; x < W; ++x) {
        const float v = padded[static_cast<std::size_t>((c * PH + y + d.dy) * PW + x + d.dx)];
        const std::int64_t ox = d.flip ? W - 1 - x : x;
        out[static_cast<std::size_t>((c * H + y) * W + ox)] = v;
      }
  return out;
}

TEST(GatherBatch, CopiesSamplesAndLabels) {
  const Dataset d = positional(20, 2, 3, 4);
  const std::int64_t S = d.sample_floats();
  // Runs (3,4,5), singles, repeats, reversed order.
  const std::vector<std::int64_t> idx = {3, 4, 5, 19, 0, 7, 7, 12, 11, 10, 13, 14};
  std::vector<float> img(idx.size() * static_cast<std::size_t>(S), -1.f);
  std::vector<std::int32_t> lab(idx.size(), -1);
  gather_batch(d, idx.data(), static_cast<std::int64_t>(idx.size()), nullptr, img.data(), lab.data());
  for (std::size_t k = 0; k < idx.size(); ++k) {
    EXPECT_EQ(lab[k], d.labels[static_cast<std::size_t>(idx[k])]) << k;
    EXPECT_EQ(0, std::memcmp(img.data() + k * static_cast<std::size_t>(S), d.images.data() + idx[k] * S,
                             static_cast<std::size_t>(S) * sizeof(float)))
        << "batch position " << k << " (sample " << idx[k] << ")";
  }
  // crop_flip = false is the same as no augmentation.
  Augment off;
  off.seed = 9;
  std::vector<float> img2(img.size());
  gather_batch(d, idx.data(), static_cast<std::int64_t>(idx.size()), &off, img2.data(), lab.data());
  EXPECT_EQ(img, img2);
}

TEST(GatherBatch, RejectsOutOfRangeIndices) {
  const Dataset d = positional(5, 1, 2, 2);
  std::vector<float> img(3 * 4);
  std::vector<std::int32_t> lab(3);
  const std::int64_t bad_end[] = {2, 3, 5};
  EXPECT_EQ(error_text([&] { gather_batch(d, bad_end, 3, nullptr, img.data(), lab.data()); }),
            "gather_batch: index 5 (batch position 2) is outside [0, 5) of positional");
  const std::int64_t negative[] = {-1};
  const Augment on = crop_flip(0);
  EXPECT_EQ(error_text([&] { gather_batch(d, negative, 1, &on, img.data(), lab.data()); }),
            "gather_batch: index -1 (batch position 0) is outside [0, 5) of positional");
}

TEST(Augment, DrawsCoverEveryCropAndFlipUniformly) {
  const Augment a = crop_flip(1);
  std::map<std::tuple<int, int, bool>, int> count;
  const int n = 81 * 2 * 200;
  for (int i = 0; i < n; ++i) {
    const AugmentDraw d = augment_draw(a, i);
    ASSERT_GE(d.dy, 0);
    ASSERT_LE(d.dy, 8);
    ASSERT_GE(d.dx, 0);
    ASSERT_LE(d.dx, 8);
    ++count[{d.dy, d.dx, d.flip}];
  }
  ASSERT_EQ(count.size(), 162u);  // 9 x 9 offsets x 2 flips
  for (const auto& [key, c] : count) {
    // Expected 200 each; binomial std ≈ 14: ±40% is > 5 sigma.
    EXPECT_GT(c, 120);
    EXPECT_LT(c, 280);
  }
}

TEST(Augment, PureFunctionOfSeedEpochAndIndex) {
  const Dataset d = positional(50, 3, 8, 8);
  const std::int64_t S = d.sample_floats();
  const Augment a = crop_flip(42, 3);
  const std::vector<std::int64_t> idx = first_samples(50);
  std::vector<float> full(50 * static_cast<std::size_t>(S)), again(full.size());
  std::vector<std::int32_t> lab(50);
  gather_batch(d, idx.data(), 50, &a, full.data(), lab.data());
  gather_batch(d, idx.data(), 50, &a, again.data(), lab.data());
  EXPECT_EQ(full, again);
  // The same sample in another batch, at another position: the same result.
  const std::int64_t some[] = {31, 7};
  std::vector<float> part(2 * static_cast<std::size_t>(S));
  gather_batch(d, some, 2, &a, part.data(), lab.data());
  EXPECT_TRUE(std::equal(part.begin(), part.begin() + S, full.begin() + 31 * S));
  EXPECT_TRUE(std::equal(part.begin() + S, part.end(), full.begin() + 7 * S));
  EXPECT_EQ(lab[0], d.labels[31]);
  // Another epoch or seed: different draws for most samples.
  Augment b = a;
  b.epoch = 4;
  Augment c = a;
  c.seed = 43;
  int same_epoch = 0, same_seed = 0;
  for (std::int64_t i = 0; i < 50; ++i) {
    const AugmentDraw x = augment_draw(a, i), y = augment_draw(b, i), z = augment_draw(c, i);
    same_epoch += x.dy == y.dy && x.dx == y.dx && x.flip == y.flip;
    same_seed += x.dy == z.dy && x.dx == z.dx && x.flip == z.flip;
  }
  EXPECT_LT(same_epoch, 5);  // 1/162 chance per sample
  EXPECT_LT(same_seed, 5);
}

TEST(Augment, MatchesAnIndependentPadCropFlip) {
  // Every draw occurs over 2000 samples; each output is checked against the explicit reference, and
  // values are either 0 (padding) or the source value of the right position (crop within bounds).
  const Dataset d = positional(2000, 2, 5, 6);
  const std::int64_t S = d.sample_floats();
  const Augment a = crop_flip(7);
  const std::vector<std::int64_t> idx = first_samples(2000);
  std::vector<float> out(idx.size() * static_cast<std::size_t>(S));
  std::vector<std::int32_t> lab(idx.size());
  gather_batch(d, idx.data(), 2000, &a, out.data(), lab.data());
  for (std::int64_t i = 0; i < 2000; ++i) {
    const AugmentDraw draw = augment_draw(a, i);
    const auto want = reference_crop_flip(d.images.data() + i * S, 2, 5, 6, draw);
    ASSERT_TRUE(std::equal(want.begin(), want.end(), out.begin() + i * S))
        << "sample " << i << " dy " << draw.dy << " dx " << draw.dx << " flip " << draw.flip;
    ASSERT_EQ(lab[static_cast<std::size_t>(i)], d.labels[static_cast<std::size_t>(i)]);
  }
}

// The first sample index whose draw is `want` (the draws are a pure function, so this is stable).
std::int64_t find_index(const Augment& a, AugmentDraw want) {
  for (std::int64_t i = 0; i < 100000; ++i) {
    const AugmentDraw d = augment_draw(a, i);
    if (d.dy == want.dy && d.dx == want.dx && d.flip == want.flip) return i;
  }
  return -1;
}

TEST(Augment, HandMadeExample) {
  // One 2x3 image, written out by hand:  1 2 3
  //                                      4 5 6
  const Augment a = crop_flip(2026);
  struct Case {
    AugmentDraw draw;
    std::vector<float> expect;
  };
  const std::vector<Case> cases = {
      {{4, 4, false}, {1, 2, 3, 4, 5, 6}},  // centred window: identity
      {{4, 4, true}, {3, 2, 1, 6, 5, 4}},   // pure flip
      {{4, 5, false}, {2, 3, 0, 5, 6, 0}},  // window one column right: image moves left
      {{3, 4, false}, {0, 0, 0, 1, 2, 3}},  // window one row up: image moves down
      {{4, 3, true}, {2, 1, 0, 5, 4, 0}},   // window one column left (image moves right), mirrored
      {{4, 5, true}, {0, 3, 2, 0, 6, 5}},   // window one column right (image moves left), mirrored
      {{0, 4, false}, {0, 0, 0, 0, 0, 0}},  // window entirely in the padding
  };
  for (const Case& c : cases) {
    const std::int64_t i = find_index(a, c.draw);
    ASSERT_GE(i, 0);
    Dataset d;
    d.name = "hand";
    d.channels = 1;
    d.height = 2;
    d.width = 3;
    d.num_classes = 10;
    d.images.assign(static_cast<std::size_t>((i + 1) * 6), 0.f);
    d.labels.assign(static_cast<std::size_t>(i + 1), 0);
    const float img[] = {1, 2, 3, 4, 5, 6};
    std::copy(img, img + 6, d.images.begin() + i * 6);
    d.labels[static_cast<std::size_t>(i)] = 4;
    std::vector<float> out(6, -1.f);
    std::int32_t label = -1;
    gather_batch(d, &i, 1, &a, out.data(), &label);
    EXPECT_EQ(out, c.expect) << "dy " << c.draw.dy << " dx " << c.draw.dx << " flip " << c.draw.flip;
    EXPECT_EQ(label, 4);
  }
}

}  // namespace
}  // namespace syncbn::test
