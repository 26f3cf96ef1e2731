// IDX files (MNIST, Fashion-MNIST): a big-endian header (magic 0x000008DD: type 0x08 = unsigned byte,
// DD = number of dimensions; then one uint32 per dimension) followed by the raw bytes.
// Every header field and the exact data length are checked: a wrong file must fail loudly here, not
// train on garbage.
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "input_file.h"
#include "readers.h"
#include "syncbn/error.h"

namespace syncbn::data_detail {
namespace {

constexpr std::uint32_t kImagesMagic = 0x00000803;  // ubyte, 3 dims (count, rows, cols)
constexpr std::uint32_t kLabelsMagic = 0x00000801;  // ubyte, 1 dim (count)
constexpr std::uint32_t kMaxSide = 4096;            // larger "images" mean a corrupt header

std::uint32_t be32(const unsigned char* p) {
  return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 | p[3];
}

std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

// What a magic number says, so "bad magic" also tells what the file seems to be instead.
std::string decode_magic(std::uint32_t m) {
  if (m >> 16 != 0) return "not an IDX file";
  std::string type;
  switch ((m >> 8) & 0xff) {
    case 0x08:
      type = "ubyte";
      break;
    case 0x09:
      type = "sbyte";
      break;
    case 0x0B:
      type = "int16";
      break;
    case 0x0C:
      type = "int32";
      break;
    case 0x0D:
      type = "float32";
      break;
    case 0x0E:
      type = "float64";
      break;
    default:
      return "not an IDX file: unknown type code";
  }
  const unsigned dims = m & 0xff;
  return "IDX " + type + ", " + std::to_string(dims) + (dims == 1 ? " dim" : " dims");
}

void check_magic(const std::string& path, std::uint32_t magic, std::uint32_t expected, const char* expected_what) {
  if (magic == expected) return;
  std::string hint;
  if (expected == kImagesMagic && magic == kLabelsMagic) hint = ": a labels file?";
  if (expected == kLabelsMagic && magic == kImagesMagic) hint = ": an images file?";
  SBN_FAIL(path + ": bad magic " + hex32(magic) + " (" + decode_magic(magic) + hint + "), expected " + hex32(expected) +
           " (" + expected_what + ")");
}

// A header's declared data size must be possible before anything is read or allocated: within what a
// split may hold (kMaxSplitValues) and, for gzip, within what the file can inflate to at all (1032 x
// its size) - so a corrupt header, or a small gzip bomb behind a header declaring gigabytes, fails here
// instead of inflating into memory until std::bad_alloc. (A plain file is read only as far as it goes,
// and then reported with its real length.)
void check_declared_size(const InputFile& f, const std::string& declared, std::uint64_t bytes, std::size_t header) {
  const std::string& path = f.path();
  if (bytes > static_cast<std::uint64_t>(kMaxSplitValues))
    SBN_FAIL(path + ": bad header: " + declared + " = " + std::to_string(bytes) + " bytes, more than a split may hold (" +
             std::to_string(kMaxSplitValues) + ")");
  if (f.compressed() && bytes > f.max_data_bytes() - std::min<std::uint64_t>(f.max_data_bytes(), header))
    SBN_FAIL(path + ": truncated: header says " + declared + " = " + std::to_string(bytes) + " bytes after the " +
             std::to_string(header) + "-byte header, more than a " + std::to_string(f.file_size()) +
             "-byte gzip file can hold (deflate inflates at most " + std::to_string(kMaxGzipRatio) + ":1)");
}

// Nothing may follow the declared data; at most kTrailingBytesCounted + 1 bytes are read to say so.
void check_no_trailing_data(InputFile& f, const std::string& declared) {
  const std::uint64_t extra = f.skip_rest(kTrailingBytesCounted);
  if (extra == 0) return;
  const std::string amount = extra > kTrailingBytesCounted ? "more than " + std::to_string(kTrailingBytesCounted)
                                                           : std::to_string(extra);
  SBN_FAIL(f.path() + ": trailing garbage: " + amount + " bytes after the " + declared + " the header declares");
}

// Reads the `size`-byte header of an IDX file of `kind` into h. The magic is checked first, so a file of
// another format says so even when it is shorter than the header; then a short header is "truncated".
void read_idx_header(InputFile& f, unsigned char* h, std::size_t size, std::uint32_t magic, const std::string& kind,
                     const char* dims) {
  const std::size_t got = f.read(h, size);
  if (got >= 4) check_magic(f.path(), be32(h), magic, (kind + dims).c_str());
  if (got < size)
    SBN_FAIL(f.path() + ": truncated: " + std::to_string(got) + " bytes, shorter than the " + std::to_string(size) +
             "-byte header of " + kind);
}

struct IdxImages {
  std::int64_t count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;  // (count, rows, cols)
};

IdxImages read_idx_images(const std::string& path) {
  InputFile f(path);
  unsigned char h[16];
  read_idx_header(f, h, sizeof h, kImagesMagic, "IDX ubyte images", ", 3 dims");
  IdxImages im;
  im.count = be32(h + 4);
  im.rows = be32(h + 8);
  im.cols = be32(h + 12);
  SBN_CHECK(im.count >= 1, path + ": bad header: 0 images");
  SBN_CHECK(im.rows >= 1 && im.rows <= kMaxSide && im.cols >= 1 && im.cols <= kMaxSide,
            path + ": bad header: images of " + std::to_string(im.rows) + "x" + std::to_string(im.cols) +
                ", rows and columns must be in [1, " + std::to_string(kMaxSide) + "]");
  const std::string declared =
      std::to_string(im.count) + " images of " + std::to_string(im.rows) + "x" + std::to_string(im.cols);
  // count < 2^32 and rows, cols <= 4096: the product fits easily in 64 bits.
  const std::uint64_t expected = static_cast<std::uint64_t>(im.count * im.rows * im.cols);
  check_declared_size(f, declared, expected, sizeof h);
  const std::uint64_t data = f.read_append(im.pixels, expected);
  if (data < expected)
    SBN_FAIL(path + ": truncated: header says " + declared + " = " + std::to_string(expected) +
             " bytes after the 16-byte header, file has " + std::to_string(data));
  check_no_trailing_data(f, declared);
  return im;
}

std::vector<std::int32_t> read_idx_labels(const std::string& path) {
  InputFile f(path);
  unsigned char h[8];
  read_idx_header(f, h, sizeof h, kLabelsMagic, "IDX ubyte labels", ", 1 dim");
  const std::int64_t count = be32(h + 4);
  SBN_CHECK(count >= 1, path + ": bad header: 0 labels");
  const std::string declared = std::to_string(count) + " labels";
  check_declared_size(f, declared, static_cast<std::uint64_t>(count), sizeof h);
  std::vector<std::uint8_t> bytes;
  const std::uint64_t data = f.read_append(bytes, static_cast<std::uint64_t>(count));
  if (data < static_cast<std::uint64_t>(count))
    SBN_FAIL(path + ": truncated: header says " + std::to_string(count) + " labels = " + std::to_string(count) +
             " bytes after the 8-byte header, file has " + std::to_string(data));
  check_no_trailing_data(f, declared);
  std::vector<std::int32_t> labels(bytes.size());
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] >= kNumClasses)
      SBN_FAIL(path + ": label " + std::to_string(bytes[i]) + " of sample " + std::to_string(i) +
               " is out of range [0, " + std::to_string(kNumClasses) + ")");
    labels[i] = bytes[i];
  }
  return labels;
}

}  // namespace

RawSplit read_idx_split(const std::string& dir, const std::string& prefix, const std::string& what) {
  const std::string images_path = find_data_file(dir, prefix + "-images-idx3-ubyte", what + " images");
  const std::string labels_path = find_data_file(dir, prefix + "-labels-idx1-ubyte", what + " labels");
  IdxImages im = read_idx_images(images_path);
  std::vector<std::int32_t> labels = read_idx_labels(labels_path);
  if (static_cast<std::int64_t>(labels.size()) != im.count)
    SBN_FAIL(labels_path + ": " + std::to_string(labels.size()) + " labels, but " + images_path + " has " +
             std::to_string(im.count) + " images");
  RawSplit s;
  s.source = images_path;
  s.channels = 1;
  s.height = im.rows;
  s.width = im.cols;
  s.pixels = std::move(im.pixels);
  s.labels = std::move(labels);
  return s;
}

}  // namespace syncbn::data_detail
