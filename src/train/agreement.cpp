// Start-up agreement of the ranks (agreement.h): options and build, then the data.
//
// Every check is a list of items (label, this rank's value text, a 64-bit hash of the value). The good
// case folds the list into one hash and compares it with one all_equal. Only when that fails - on every
// rank alike - does agree() spend more collectives to say what differs:
//   1. rank 0 broadcasts its item labels (ranks of another build may have other options);
//   2. one allreduce_sum of a P x (items + 1) matrix of hashes (each rank fills its own row, as two exact
//      32-bit halves per double), so every rank knows every rank's hash of every item;
//   3. every rank groups the ranks that differ from rank 0 by value, identically, and the first rank of
//      each shown group broadcasts its value text for the message.
// All ranks run the same sequence of collectives with the same sizes, so the error path cannot hang.
#include "syncbn/agreement.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "syncbn/app.h"
#include "syncbn/config.h"
#include "syncbn/cuda/train_model.h"

namespace syncbn {
namespace {

constexpr std::size_t kMaxItemsShown = 4;   // items with values in one message; the rest by name
constexpr std::size_t kMaxNamesListed = 8;  // names of the items beyond those
constexpr std::size_t kMaxGroupsShown = 3;  // distinct differing values shown per item
constexpr std::size_t kMaxValueChars = 160;
constexpr const char* kTail = " — every rank must run the same options, build and data";

// Options that may differ between ranks; agreement.h says why for each.
const std::set<std::string> kMayDiffer = {"threads", "data-dir", "comm-timeout"};

// ---- hashing

constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15ull;

std::uint64_t mix64(std::uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::uint64_t fold(std::uint64_t h, std::uint64_t v) { return mix64(h ^ mix64(v + kMul)); }

// A word-wise streaming hash: 64 independent lanes of 32-bit words, x = (h ^ w)·odd, h = x ^ (x >> 15) -
// a bijection of h for every w, so one changed word always changes the result - folded into 64 bits at
// the end with the length. 32-bit lanes because their multiplies vectorize on every x86-64 level
// (SSE4.1, AVX2, AVX-512; 64-bit ones only with AVX-512DQ): it runs near memory bandwidth, ~30 ms for
// Fashion-MNIST's 188 MB of train floats. Not cryptographic: it tells another copy of a file, not an
// adversary.
class WordHash {
 public:
  explicit WordHash(std::uint64_t seed) : seed_(seed) {
    for (int l = 0; l < kLanes; ++l) h_[l] = static_cast<std::uint32_t>(seed) + static_cast<std::uint32_t>(l) * 0x9E3779B9u;
  }
  void update(const void* data, std::size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(data);
    total_ += bytes;
    if (fill_ > 0) {  // top up a partial block first
      const std::size_t take = std::min(bytes, kBlock - fill_);
      std::memcpy(buf_ + fill_, p, take);
      fill_ += take, p += take, bytes -= take;
      if (fill_ < kBlock) return;
      block(buf_);
      fill_ = 0;
    }
    for (; bytes >= kBlock; p += kBlock, bytes -= kBlock) block(p);
    std::memcpy(buf_, p, bytes);
    fill_ = bytes;
  }
  std::uint64_t finish() {
    if (fill_ > 0) {  // zero-padded; the length below tells "ab" from "ab\0"
      std::memset(buf_ + fill_, 0, kBlock - fill_);
      block(buf_);
    }
    std::uint64_t out = mix64(seed_ ^ total_);
    for (int l = 0; l < kLanes; ++l) out = fold(out, h_[l]);
    return out;
  }

 private:
  static constexpr int kLanes = 64;
  static constexpr std::size_t kBlock = kLanes * sizeof(std::uint32_t);
  void block(const unsigned char* p) {
    std::uint32_t w[kLanes];
    std::memcpy(w, p, sizeof w);
    for (int l = 0; l < kLanes; ++l) {
      const std::uint32_t x = (h_[l] ^ w[l]) * 0x85EBCA77u;
      h_[l] = x ^ (x >> 15);
    }
  }
  std::uint32_t h_[kLanes];
  unsigned char buf_[kBlock];
  std::size_t fill_ = 0;
  std::uint64_t total_ = 0;
  std::uint64_t seed_;
};

std::uint64_t hash_bytes(const void* data, std::size_t bytes, std::uint64_t seed) {
  WordHash h(seed);
  h.update(data, bytes);
  return h.finish();
}

std::uint64_t hash_text(const std::string& s) { return hash_bytes(s.data(), s.size(), 0x7465787400000000ull); }

template <class T>
std::uint64_t hash_array(const std::vector<T>& v, std::uint64_t seed) {
  return hash_bytes(v.data(), v.size() * sizeof(T), seed);
}

// ---- items

enum class Kind { kBuild, kOption, kData };

struct Item {
  Kind kind;
  std::string label;   // "git commit", "--lr", "train images"
  std::string shown;   // this rank's value for messages (data: the file it read)
  std::uint64_t hash;  // what is compared
};

// The instruction sets this translation unit was compiled for (-march): the same for the whole build.
constexpr const char kIsa[] = ""
#ifdef __AVX512F__
                              " avx512f"
#endif
#ifdef __AVX512BW__
                              " avx512bw"
#endif
#ifdef __AVX512VL__
                              " avx512vl"
#endif
#ifdef __AVX2__
                              " avx2"
#endif
#ifdef __FMA__
                              " fma"
#endif
#ifdef __AVX__
                              " avx"
#endif
#ifdef __SSE4_2__
                              " sse4.2"
#endif
#ifdef __aarch64__
                              " aarch64"
#endif
#ifdef __ARM_FEATURE_SVE
                              " sve"
#endif
#ifdef __ARM_FEATURE_FMA
                              " fma"
#endif
    ;

std::string cpu_target() {
  const std::string arch = SBN_CPU_ARCH, isa = kIsa;
  return (arch.empty() ? std::string("compiler default") : "-march=" + arch) + " (" +
         (isa.empty() ? std::string("baseline") : isa.substr(1)) + ")";
}

std::vector<Item> build_items() {
  const std::string gpu = gpu_build_description();
  const std::pair<const char*, std::string> build[] = {
      {"syncbn version", SBN_VERSION}, {"git commit", SBN_GIT_COMMIT}, {"build type", SBN_BUILD_TYPE},
      {"GPU support", gpu},            {"CPU target", cpu_target()},  {"compiler", __VERSION__},
  };
  std::vector<Item> items;
  for (const auto& [label, value] : build) items.push_back({Kind::kBuild, label, value, hash_text(value)});
  return items;
}

// The file a split's images or labels were read from, for messages only: the same lookup as the
// readers' (src/data: <dir>/<name>, else <name>.gz; CIFAR-10's batches in <dir> or cifar-10-batches-bin/).
std::string data_file(const DataOptions& src, bool train, bool labels) {
  if (src.dataset == "synthetic") return "synthetic, generated from --seed " + std::to_string(src.seed);
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path dir = src.dir.empty() ? default_data_dir(src.dataset) : src.dir;
  const auto found = [&](const fs::path& p) { return fs::is_regular_file(p, ec); };
  if (src.dataset == "cifar10") {
    if (!found(dir / "data_batch_1.bin") && !found(dir / "data_batch_1.bin.gz")) dir /= "cifar-10-batches-bin";
    return (dir / (train ? "data_batch_{1..5}.bin" : "test_batch.bin")).string();
  }
  const fs::path p = dir / (std::string(train ? "train" : "t10k") + (labels ? "-labels-idx1-ubyte" : "-images-idx3-ubyte"));
  return !found(p) && found(fs::path(p.string() + ".gz")) ? p.string() + ".gz" : p.string();
}

// 8-bit pixel codes back from normalized floats, (pixel/255 − mean_c) / std_c (data.h): x·255·std + 255·mean
// is within 1e-4 of the integer pixel in float arithmetic, so the +0.5 truncation recovers it exactly.
std::uint64_t hash_pixel_codes(const Dataset& d, const std::vector<float>& mean, const std::vector<float>& stdev) {
  const std::int64_t C = d.channels, plane = d.height * d.width;
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(plane));
  WordHash h(0x636f646573000000ull);
  for (std::int64_t i = 0; i < d.size(); ++i)
    for (std::int64_t c = 0; c < C; ++c) {
      const auto cc = static_cast<std::size_t>(c);
      const float a = 255.f * (cc < stdev.size() ? stdev[cc] : 1.f), b = 255.f * (cc < mean.size() ? mean[cc] : 0.f) + 0.5f;
      const float* x = d.images.data() + (i * C + c) * plane;
      for (std::int64_t k = 0; k < plane; ++k) {
        float v = x[k] * a + b;
        v = v > 0.f ? v : 0.f;  // also maps NaN to 0
        codes[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(v < 255.f ? v : 255.f);
      }
      h.update(codes.data(), codes.size());
    }
  return h.finish();
}

std::vector<Item> data_items(const DataSplits& data, const DataOptions* source) {
  std::vector<Item> items;
  for (const bool train : {true, false}) {
    const Dataset& d = train ? data.train : data.test;
    const std::string split = train ? "train" : "test";
    std::uint64_t shape = 0;
    for (const std::int64_t v : {d.size(), d.channels, d.height, d.width, d.num_classes})
      shape = fold(shape, static_cast<std::uint64_t>(v));
    // Train images: the floats themselves and the normalization statistics computed from them. Test
    // images: their pixel codes, which do not depend on the train statistics (agreement.h).
    std::uint64_t images = shape;
    if (train) {
      images = fold(images, hash_array(d.images, 1));
      images = fold(fold(images, hash_array(data.mean, 2)), hash_array(data.std, 3));
    } else {
      images = fold(images, hash_pixel_codes(d, data.mean, data.std));
    }
    const std::uint64_t labels = fold(shape, hash_array(d.labels, 4));
    items.push_back({Kind::kData, split + " images", source ? data_file(*source, train, false) : d.name, images});
    items.push_back({Kind::kData, split + " labels", source ? data_file(*source, train, true) : d.name, labels});
  }
  return items;
}

// ---- comparing

void broadcast_text(Communicator& world, std::string& text, int root, const char* label) {
  std::uint64_t len = text.size();
  world.broadcast(&len, sizeof len, root, label);
  text.resize(static_cast<std::size_t>(len));
  if (len > 0) world.broadcast(text.data(), text.size(), root, label);
}

std::string clip(std::string s) {
  if (s.size() > kMaxValueChars) s = s.substr(0, kMaxValueChars - 3) + "...";
  return s.empty() ? "''" : s;
}

// Ranks grouped by their hash of one item, those equal to rank 0's left out; groups in order of their
// lowest rank.
struct Group {
  std::uint64_t hash;
  std::vector<int> ranks;
};

// What every rank knows after the mismatch path's collectives: rank 0's item list (the reference), and
// every rank's hash of every item, plus one column for the items rank 0 does not have.
class Mismatch {
 public:
  Mismatch(Communicator& world, const std::vector<Item>& items, const char* label)
      : world_(world), label_(label) {
    for (const auto& it : items) mine_[it.label] = &it;
    share_labels(items);
    share_hashes(items);
  }

  // Per item that differs somewhere, the groups of ranks that differ from rank 0 (the same on every rank).
  std::vector<std::pair<std::size_t, std::vector<Group>>> differing() const {
    std::vector<std::pair<std::size_t, std::vector<Group>>> out;
    for (std::size_t j = 0; j < n_; ++j) {
      std::vector<Group> groups;
      for (std::size_t r = 1; r < P(); ++r) {
        const std::uint64_t h = hash_of(r, j);
        if (h == hash_of(0, j)) continue;
        auto g = std::find_if(groups.begin(), groups.end(), [&](const Group& x) { return x.hash == h; });
        if (g == groups.end()) g = groups.insert(groups.end(), Group{h, {}});
        g->ranks.push_back(static_cast<int>(r));
      }
      if (!groups.empty()) out.emplace_back(j, std::move(groups));
    }
    return out;
  }

  // One item's part of the message; broadcasts the value texts it shows (collective).
  void describe(std::size_t j, const std::vector<Group>& groups, std::string& build, std::string& options,
                std::string& data) {
    const Kind kind = j + 1 == n_ ? Kind::kOption : kinds_[j];
    const std::string v0 = value_of(j, 0);
    std::string values = "rank 0: " + v0;
    bool same_text = true;
    std::vector<int> rest, all_ranks;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      all_ranks.insert(all_ranks.end(), groups[g].ranks.begin(), groups[g].ranks.end());
      if (g >= kMaxGroupsShown) {
        rest.insert(rest.end(), groups[g].ranks.begin(), groups[g].ranks.end());
        continue;
      }
      const std::string v = value_of(j, groups[g].ranks.front());
      same_text = same_text && v == v0;
      // Data: a group shares the content, not necessarily the path; show its first rank's path.
      values += "; " + (kind == Kind::kData ? rank_list({groups[g].ranks.front()}) : rank_list(groups[g].ranks)) + ": " + v;
    }
    if (!rest.empty()) {
      std::sort(rest.begin(), rest.end());
      const std::size_t more = groups.size() - kMaxGroupsShown;
      values += "; " + std::to_string(more) + (more == 1 ? " other value on " : " other values on ") + rank_list(rest);
    }
    if (kind == Kind::kData) {
      std::sort(all_ranks.begin(), all_ranks.end());
      append(data, "; ", name(j) + " (" + (same_text ? v0 : values) + "): " + rank_list(all_ranks) +
                             (all_ranks.size() == 1 ? " differs" : " differ") + " from rank 0");
    } else {
      append(kind == Kind::kBuild ? build : options, ", ", name(j) + " (" + values + ")");
    }
  }

  std::string name(std::size_t j) const { return j + 1 == n_ ? "options unknown to rank 0" : names_[j]; }

  static void append(std::string& to, const std::string& sep, const std::string& what) {
    to += (to.empty() ? "" : sep) + what;
  }

 private:
  std::size_t P() const { return static_cast<std::size_t>(world_.size()); }

  // 1. Rank 0's item labels are the reference (ranks of another build may have other options).
  void share_labels(const std::vector<Item>& items) {
    std::string labels;
    for (const auto& it : items) labels += it.label + '\n';
    broadcast_text(world_, labels, 0, label_);
    for (std::size_t b = 0, e; (e = labels.find('\n', b)) != std::string::npos; b = e + 1)
      names_.push_back(labels.substr(b, e - b));
    kinds_.assign(names_.size(), Kind::kOption);  // only rank 0's matter (it prints)
    for (std::size_t j = 0; j < names_.size(); ++j)
      if (auto f = mine_.find(names_[j]); f != mine_.end()) kinds_[j] = f->second->kind;
    n_ = names_.size() + 1;
  }

  // 2. One allreduce_sum of a P x n matrix: each rank fills its own row with its hashes (as two exact
  //    32-bit halves per double); the last column hashes the items rank 0 does not have.
  void share_hashes(const std::vector<Item>& items) {
    constexpr std::uint64_t kAbsent = 0xAB5E47AB5E47AB5Eull;
    std::vector<std::uint64_t> row(n_, kAbsent);
    for (std::size_t j = 0; j + 1 < n_; ++j)
      if (auto f = mine_.find(names_[j]); f != mine_.end()) row[j] = f->second->hash;
    for (const auto& it : items)
      if (std::find(names_.begin(), names_.end(), it.label) == names_.end()) append(extra_, ", ", it.label);
    row[n_ - 1] = extra_.empty() ? 0 : hash_text(extra_);
    matrix_.assign(P() * n_ * 2, 0.0);
    double* my = matrix_.data() + static_cast<std::size_t>(world_.rank()) * n_ * 2;
    for (std::size_t j = 0; j < n_; ++j) {
      my[2 * j] = static_cast<double>(row[j] >> 32);
      my[2 * j + 1] = static_cast<double>(row[j] & 0xFFFFFFFFull);
    }
    world_.allreduce_sum(matrix_.data(), matrix_.size(), label_);
  }

  std::uint64_t hash_of(std::size_t r, std::size_t j) const {
    const double* m = matrix_.data() + (r * n_ + j) * 2;
    return (static_cast<std::uint64_t>(m[0]) << 32) | static_cast<std::uint64_t>(m[1]);
  }

  // Item j's value text on rank `root`, on every rank (collective).
  std::string value_of(std::size_t j, int root) {
    std::string text;
    if (world_.rank() == root) {
      if (j + 1 == n_) {
        text = extra_.empty() ? "(none)" : extra_;
      } else {
        auto f = mine_.find(names_[j]);
        text = f == mine_.end() ? "(not in this build)" : f->second->shown;
      }
    }
    broadcast_text(world_, text, root, label_);
    return clip(text);
  }

  Communicator& world_;
  const char* label_;
  std::map<std::string, const Item*> mine_;
  std::vector<std::string> names_;
  std::vector<Kind> kinds_;
  std::size_t n_ = 0;
  std::string extra_;  // this rank's items that rank 0 does not have
  std::vector<double> matrix_;
};

void agree(Communicator& world, const std::vector<Item>& items, const char* label) {
  std::uint64_t all = fold(0, items.size());
  for (const auto& it : items) all = fold(fold(all, hash_text(it.label)), it.hash);
  if (world.all_equal(all, label)) return;

  // 3. Every rank groups the ranks that differ from rank 0 by value, identically, and the first rank of
  //    each shown group broadcasts its value text for the message.
  Mismatch m(world, items, label);
  const auto differ = m.differing();
  if (differ.empty()) {  // only the label order differs (not possible within one build): say so anyway
    throw AgreedError("ranks disagree on the order of their start-up checks" + std::string(kTail));
  }
  std::string build, options, data;
  for (std::size_t k = 0; k < differ.size() && k < kMaxItemsShown; ++k)
    m.describe(differ[k].first, differ[k].second, build, options, data);
  std::string msg;
  if (!build.empty()) Mismatch::append(msg, "; ", "ranks run different builds: " + build);
  if (!options.empty()) Mismatch::append(msg, "; ", "ranks disagree on " + options);
  if (!data.empty()) Mismatch::append(msg, "; ", "ranks disagree on the data: " + data);
  if (differ.size() > kMaxItemsShown) {
    std::string more;
    for (std::size_t k = kMaxItemsShown; k < differ.size() && k < kMaxItemsShown + kMaxNamesListed; ++k)
      Mismatch::append(more, ", ", m.name(differ[k].first));
    if (differ.size() > kMaxItemsShown + kMaxNamesListed) more += ", ...";
    msg += " and " + std::to_string(differ.size() - kMaxItemsShown) + " more: " + more;
  }
  throw AgreedError(msg + kTail);
}

}  // namespace

std::string rank_list(const std::vector<int>& ranks) {
  if (ranks.empty()) return "";
  std::string out = ranks.size() == 1 ? "rank " : "ranks ";
  constexpr std::size_t kMaxRuns = 8;
  std::size_t runs = 0, i = 0;
  for (; i < ranks.size() && runs < kMaxRuns; ++runs) {
    std::size_t e = i;
    while (e + 1 < ranks.size() && ranks[e + 1] == ranks[e] + 1) ++e;
    if (runs > 0) out += ", ";
    if (e - i >= 2) {
      out += std::to_string(ranks[i]) + "-" + std::to_string(ranks[e]);
    } else {
      out += std::to_string(ranks[i]);
      if (e > i) out += ", " + std::to_string(ranks[e]);
    }
    i = e + 1;
  }
  if (i < ranks.size()) out += ", ... (" + std::to_string(ranks.size()) + " ranks)";
  return out;
}

void agree_on_options(Communicator& world, const TrainOptions& options) {
  std::vector<Item> items = build_items();
  for (const auto& o : options.options()) {
    if (kMayDiffer.count(o.name)) continue;
    // Values print as the shortest text that reads back exactly (config.cpp), so texts compare exactly.
    const std::string value = o.value();
    items.push_back({Kind::kOption, "--" + o.name, value, hash_text(value)});
  }
  agree(world, items, "agreement: options and build");
}

void agree_on_data(Communicator& world, const DataSplits& data, const DataOptions& source) {
  agree(world, data_items(data, &source), "agreement: data");
}

}  // namespace syncbn
