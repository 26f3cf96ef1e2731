// Datasets in memory: readers for IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary files, a synthetic
// learnable dataset, per-channel normalization, and batch gathering with deterministic augmentation.
//
// Invariants:
//  - Every rank loads the whole dataset itself and gets bitwise the same floats (the sampler decides
//    which rank uses which sample, see sampler.h), so nothing here communicates.
//  - Normalization statistics come from the TRAIN split only (raw pixel/255, double accumulation) and
//    are applied to both splits.
//  - Augmentation of a sample is a pure function of (seed, epoch, sample index): the result does not
//    depend on which rank or micro-batch handles the sample (DESIGN.md §4), and resume is bitwise.
// Every reader error is a syncbn::Error whose one-line message names the file and what is wrong.
// File formats, flags and defaults: docs/DATA.md.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace syncbn {

// A labelled image dataset in memory, normalized per channel.
struct Dataset {
  std::string name;  // e.g. "fashion-mnist/train"
  std::int64_t channels = 0, height = 0, width = 0;
  std::int64_t num_classes = 0;
  std::vector<float> images;         // (size, C, H, W) planar, normalized: (pixel/255 − mean_c) / std_c
  std::vector<std::int32_t> labels;  // (size), each in [0, num_classes)
  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
  std::int64_t sample_floats() const { return channels * height * width; }  // C·H·W
};

// At most this many pixel values in one split (4 GiB of 8-bit pixels, 16 GiB once normalized to floats,
// on every rank): a file header or synthetic size declaring more is refused before anything is allocated,
// which also keeps every size product (count x C x H x W) far inside int64.
inline constexpr std::int64_t kMaxSplitValues = std::int64_t{1} << 32;

struct DataOptions {
  std::string dataset = "fashion-mnist";  // fashion-mnist | mnist | cifar10 | synthetic
  std::string dir;                        // empty: the dataset's default (default_data_dir)
  std::int64_t synthetic_train = 8192;    // synthetic: sizes
  std::int64_t synthetic_test = 2048;
  std::string synthetic_shape = "1x28x28";  // synthetic: CxHxW (1x28x28 or 3x32x32 typical)
  std::uint64_t seed = 0;                   // synthetic data is a pure function of the seed
};

struct DataSplits {
  Dataset train, test;
  std::vector<float> mean, std;  // (C) per channel, of the TRAIN set's raw pixels/255, applied to both
};

// Loads train and test splits of opt.dataset. Throws syncbn::Error naming the file and the problem.
DataSplits load_dataset(const DataOptions& opt);

// Checks opt without touching the file system (dataset name, synthetic sizes and shape, a directory
// where the dataset has no default), so a CLI's validate() can reject bad flags before loading.
void validate_data_options(const DataOptions& opt);

// "fashion-mnist mnist cifar10 synthetic", for help texts.
std::string dataset_choices();

// The directory a dataset is read from when --data-dir is empty: "/usr/share/datasets/fashion-mnist",
// "/usr/share/datasets/mnist", "" (cifar10: none; synthetic: not read from disk).
std::string default_data_dir(const std::string& dataset);

// "CxHxW" (e.g. "3x32x32") → {C, H, W}; each in [1, 4096]. Throws naming the text.
std::array<std::int64_t, 3> parse_chw(const std::string& text);

// One line for the run's configuration table, e.g.
// "fashion-mnist: train 60000, test 10000, 1x28x28, 10 classes, mean [0.2860], std [0.3530]".
std::string describe(const DataSplits& data);

// ---- files -------------------------------------------------------------------------------------

// Opens `path` read-only (O_CLOEXEC) if it is a regular file, symbolic links followed, and never blocks:
// it is stat()ed first, so a FIFO (whose open for reading would wait for a writer), a device or a
// directory is refused without being opened. Returns the descriptor, or -1 with *why set to the reason:
// strerror's text ("No such file or directory", "Permission denied", ...) or "is a directory",
// "is a FIFO, not a regular file", "is a character device, not a regular file", ...
int open_regular_file(const std::string& path, std::string* why);

// ---- batches -----------------------------------------------------------------------------------

// Augmentation for CIFAR-10 style training (usable on any dataset): random crop with 4-pixel zero
// padding (zero in normalized space, i.e. the channel mean) + horizontal flip with probability 1/2.
// The crop offset and flip of a sample are a pure function of (seed, epoch, sample index).
struct Augment {
  bool crop_flip = false;
  std::uint64_t seed = 0;
  std::int64_t epoch = 0;
};

// What Augment does to one sample (exposed for tests and docs): the crop window starts at
// (dy, dx) ∈ [0, 8]² of the image padded by 4 on every side, then the window is flipped left-right if
// `flip`. dy = dx = 4 and flip = false is the identity.
struct AugmentDraw {
  int dy = 4, dx = 4;
  bool flip = false;
};
AugmentDraw augment_draw(const Augment& augment, std::int64_t sample_index);

// Copies samples indices[0..count) of ds into images (count, C, H, W) and labels (count); augment may
// be null (or have crop_flip false): then runs of consecutive indices are copied with one memcpy.
// Throws if an index is outside [0, ds.size()).
void gather_batch(const Dataset& ds, const std::int64_t* indices, std::int64_t count, const Augment* augment,
                  float* images, std::int32_t* labels);

}  // namespace syncbn
