// What the readers produce before normalization, and the readers themselves (internal header).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "syncbn/data.h"

namespace syncbn::data_detail {

// A split as stored on disk: raw 8-bit pixels. Every supported format is 8-bit, which is also what
// lets normalization use exact per-channel histograms instead of summing 47M floats.
struct RawSplit {
  std::string source;  // the file(s) it came from, for messages
  std::int64_t channels = 0, height = 0, width = 0;
  std::vector<std::uint8_t> pixels;  // (n, C, H, W) planar
  std::vector<std::int32_t> labels;  // (n)
  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
};

inline constexpr std::int64_t kNumClasses = 10;  // every supported dataset has 10 classes

// MNIST / Fashion-MNIST: <dir>/<prefix>-images-idx3-ubyte[.gz] and <prefix>-labels-idx1-ubyte[.gz].
RawSplit read_idx_split(const std::string& dir, const std::string& prefix, const std::string& what);

// CIFAR-10 binary version: the 5 data_batch_K.bin (train) or test_batch.bin (test) in `dir` (already
// resolved to the directory holding them).
RawSplit read_cifar10_split(const std::string& dir, bool train);
// `dir` itself if it holds data_batch_1.bin[.gz], else dir/cifar-10-batches-bin if that is a directory;
// throws naming both otherwise.
std::string resolve_cifar10_dir(const std::string& dir);

// Synthetic: sample i of a split is a pure function of (seed, split, i) (not of the split's size).
RawSplit make_synthetic_split(std::uint64_t seed, bool train, std::int64_t count, std::int64_t C, std::int64_t H,
                              std::int64_t W);

}  // namespace syncbn::data_detail
