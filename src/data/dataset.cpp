// load_dataset: pick the reader, then normalize both splits with the train split's statistics.
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "input_file.h"
#include "readers.h"
#include "syncbn/data.h"
#include "syncbn/error.h"

namespace syncbn {

using data_detail::RawSplit;

namespace {

constexpr std::array<const char*, 4> kDatasets = {"fashion-mnist", "mnist", "cifar10", "synthetic"};
constexpr std::int64_t kMaxSyntheticSample = std::int64_t{1} << 22;  // floats per synthetic image

// Per-channel mean and (population) std of pixel/255 over the whole split. 8-bit pixels make this a
// histogram: exact integer counts, then a two-pass sum in double over 256 bins instead of 47M floats.
void channel_stats(const RawSplit& s, std::vector<float>& mean, std::vector<float>& stdev) {
  const std::int64_t C = s.channels, plane = s.height * s.width;
  std::vector<std::array<std::int64_t, 256>> hist(static_cast<std::size_t>(C));
  for (auto& h : hist) h.fill(0);
  for (std::int64_t i = 0; i < s.size(); ++i)
    for (std::int64_t c = 0; c < C; ++c) {
      const std::uint8_t* p = s.pixels.data() + (i * C + c) * plane;
      auto& h = hist[static_cast<std::size_t>(c)];
      for (std::int64_t k = 0; k < plane; ++k) ++h[p[k]];
    }
  const double n = static_cast<double>(s.size() * plane);
  mean.assign(static_cast<std::size_t>(C), 0.f);
  stdev.assign(static_cast<std::size_t>(C), 0.f);
  for (std::int64_t c = 0; c < C; ++c) {
    const auto& h = hist[static_cast<std::size_t>(c)];
    double sum = 0;
    for (int v = 0; v < 256; ++v) sum += static_cast<double>(h[v]) * (v / 255.0);
    const double m = sum / n;
    double ss = 0;
    for (int v = 0; v < 256; ++v) ss += static_cast<double>(h[v]) * (v / 255.0 - m) * (v / 255.0 - m);
    const double sd = std::sqrt(ss / n);
    SBN_CHECK(sd > 0, s.source + ": channel " + std::to_string(c) +
                          " of the train images is constant: cannot normalize (std 0)");
    mean[static_cast<std::size_t>(c)] = static_cast<float>(m);
    stdev[static_cast<std::size_t>(c)] = static_cast<float>(sd);
  }
}

// (pixel/255 − mean_c) / std_c through a 256-entry table per channel, evaluated in double from the
// float mean/std that DataSplits reports (so a user of those values reproduces the images exactly).
Dataset normalize(RawSplit&& s, const std::string& name, const std::vector<float>& mean,
                  const std::vector<float>& stdev) {
  Dataset d;
  d.name = name;
  d.channels = s.channels;
  d.height = s.height;
  d.width = s.width;
  d.num_classes = data_detail::kNumClasses;
  d.labels = std::move(s.labels);
  const std::int64_t C = s.channels, plane = s.height * s.width;
  std::vector<std::array<float, 256>> lut(static_cast<std::size_t>(C));
  for (std::int64_t c = 0; c < C; ++c)
    for (int v = 0; v < 256; ++v)
      lut[static_cast<std::size_t>(c)][static_cast<std::size_t>(v)] =
          static_cast<float>((v / 255.0 - static_cast<double>(mean[static_cast<std::size_t>(c)])) /
                             static_cast<double>(stdev[static_cast<std::size_t>(c)]));
  d.images.resize(s.pixels.size());
  const std::int64_t n = d.size();
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t c = 0; c < C; ++c) {
      const std::uint8_t* p = s.pixels.data() + (i * C + c) * plane;
      float* out = d.images.data() + (i * C + c) * plane;
      const auto& t = lut[static_cast<std::size_t>(c)];
      for (std::int64_t k = 0; k < plane; ++k) out[k] = t[p[k]];
    }
  std::vector<std::uint8_t>().swap(s.pixels);  // the raw copy is no longer needed
  return d;
}

std::string shape_str(const RawSplit& s) {
  return std::to_string(s.channels) + "x" + std::to_string(s.height) + "x" + std::to_string(s.width);
}

}  // namespace

std::string dataset_choices() {
  std::string s;
  for (const char* d : kDatasets) s += (s.empty() ? "" : " ") + std::string(d);
  return s;
}

std::string default_data_dir(const std::string& dataset) {
  if (dataset == "fashion-mnist") return "/usr/share/datasets/fashion-mnist";
  if (dataset == "mnist") return "/usr/share/datasets/mnist";
  return "";
}

namespace {
constexpr const char* kShapeRule = "expected CxHxW with each of C, H, W in [1, 4096] (e.g. 1x28x28 or 3x32x32)";

bool try_parse_chw(const std::string& text, std::array<std::int64_t, 3>& v) {
  const char* p = text.c_str();
  for (int k = 0; k < 3; ++k) {
    if (*p < '0' || *p > '9') return false;  // strtol would accept signs and spaces
    char* end = nullptr;
    const long x = std::strtol(p, &end, 10);
    if (*end != (k < 2 ? 'x' : '\0') || x < 1 || x > 4096) return false;
    v[static_cast<std::size_t>(k)] = x;
    p = end + 1;
  }
  return true;
}
}  // namespace

std::array<std::int64_t, 3> parse_chw(const std::string& text) {
  std::array<std::int64_t, 3> v{};
  SBN_CHECK(try_parse_chw(text, v), "shape '" + text + "': " + kShapeRule);
  return v;
}

void validate_data_options(const DataOptions& opt) {
  bool known = false;
  for (const char* d : kDatasets) known = known || opt.dataset == d;
  SBN_CHECK(known, "unknown dataset '" + opt.dataset + "'; expected one of: " + dataset_choices());
  if (opt.dataset == "synthetic") {
    SBN_CHECK(opt.synthetic_train >= 1 && opt.synthetic_test >= 1,
              "synthetic dataset: --synthetic-train and --synthetic-test must be >= 1, got " +
                  std::to_string(opt.synthetic_train) + " and " + std::to_string(opt.synthetic_test));
    std::array<std::int64_t, 3> chw{};
    SBN_CHECK(try_parse_chw(opt.synthetic_shape, chw),
              "--synthetic-shape '" + opt.synthetic_shape + "': " + kShapeRule);
    const std::int64_t sample = chw[0] * chw[1] * chw[2];  // each <= 4096: no overflow
    SBN_CHECK(sample <= kMaxSyntheticSample, "--synthetic-shape '" + opt.synthetic_shape + "': more than " +
                                                 std::to_string(kMaxSyntheticSample) + " values per image");
    // count x sample is compared by division: the product itself may not fit in int64.
    const std::int64_t max_count = kMaxSplitValues / sample;
    for (const auto& [flag, count] : {std::pair<const char*, std::int64_t>{"--synthetic-train", opt.synthetic_train},
                                      {"--synthetic-test", opt.synthetic_test}})
      SBN_CHECK(count <= max_count, std::string(flag) + " must be in [1, " + std::to_string(max_count) +
                                        "] for --synthetic-shape " + opt.synthetic_shape + ", got " +
                                        std::to_string(count) + " (a split holds at most " +
                                        std::to_string(kMaxSplitValues) + " pixel values)");
  } else if (opt.dir.empty()) {
    SBN_CHECK(!default_data_dir(opt.dataset).empty(),
              "dataset " + opt.dataset +
                  " has no default directory: pass --data-dir DIR (the directory "
                  "holding data_batch_1.bin ... test_batch.bin, or cifar-10-batches-bin/)");
  }
}

DataSplits load_dataset(const DataOptions& opt) {
  validate_data_options(opt);
  RawSplit train, test;
  if (opt.dataset == "synthetic") {
    const auto chw = parse_chw(opt.synthetic_shape);
    train = data_detail::make_synthetic_split(opt.seed, true, opt.synthetic_train, chw[0], chw[1], chw[2]);
    test = data_detail::make_synthetic_split(opt.seed, false, opt.synthetic_test, chw[0], chw[1], chw[2]);
  } else {
    const std::string dir = opt.dir.empty() ? default_data_dir(opt.dataset) : opt.dir;
    data_detail::check_data_dir(dir, opt.dataset);
    if (opt.dataset == "cifar10") {
      const std::string bin = data_detail::resolve_cifar10_dir(dir);
      train = data_detail::read_cifar10_split(bin, true);
      test = data_detail::read_cifar10_split(bin, false);
    } else {
      train = data_detail::read_idx_split(dir, "train", opt.dataset + " train");
      test = data_detail::read_idx_split(dir, "t10k", opt.dataset + " test");
    }
  }
  if (test.channels != train.channels || test.height != train.height || test.width != train.width)
    SBN_FAIL(test.source + ": test images are " + shape_str(test) + " but the train images (" + train.source +
             ") are " + shape_str(train));
  DataSplits out;
  channel_stats(train, out.mean, out.std);
  out.train = normalize(std::move(train), opt.dataset + "/train", out.mean, out.std);
  out.test = normalize(std::move(test), opt.dataset + "/test", out.mean, out.std);
  return out;
}

std::string describe(const DataSplits& data) {
  const Dataset& t = data.train;
  std::string name = t.name.substr(0, t.name.rfind('/'));
  std::string s = name + ": train " + std::to_string(t.size()) + ", test " + std::to_string(data.test.size()) + ", " +
                  std::to_string(t.channels) + "x" + std::to_string(t.height) + "x" + std::to_string(t.width) + ", " +
                  std::to_string(t.num_classes) + " classes";
  const auto list = [](const std::vector<float>& v) {
    std::string r = "[";
    char buf[32];
    for (std::size_t c = 0; c < v.size(); ++c) {
      std::snprintf(buf, sizeof buf, "%s%.4f", c ? ", " : "", static_cast<double>(v[c]));
      r += buf;
    }
    return r + "]";
  };
  return s + ", mean " + list(data.mean) + ", std " + list(data.std);
}

}  // namespace syncbn
