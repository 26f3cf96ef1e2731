// CIFAR-10, binary version (cifar-10-binary.tar.gz): data_batch_1..5.bin (train, 10000 records each)
// and test_batch.bin, each a plain sequence of 3073-byte records: 1 label byte, then the 32x32 red,
// green and blue planes (row-major) — already the planar (C, H, W) layout we store.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "input_file.h"
#include "readers.h"
#include "syncbn/error.h"

namespace syncbn::data_detail {
namespace {

constexpr std::int64_t kC = 3, kH = 32, kW = 32;
constexpr std::int64_t kPixels = kC * kH * kW;  // 3072
constexpr std::int64_t kRecord = 1 + kPixels;   // 3073
// The format has no header, so a file's size is bounded here: the real batches hold 10000 records; we
// accept up to the whole dataset (60000) in one file. Reading stops one byte past the bound, so a gzip
// bomb costs at most that much memory and inflate time.
constexpr std::int64_t kMaxRecordsPerFile = 60000;

// Appends the records of one file to `split`.
void read_cifar10_file(const std::string& path, RawSplit& split) {
  InputFile f(path);
  constexpr auto kMaxBytes = static_cast<std::uint64_t>(kMaxRecordsPerFile * kRecord);
  std::vector<std::uint8_t> bytes;
  const std::uint64_t size = f.compressed() || f.file_size() <= kMaxBytes ? f.read_append(bytes, kMaxBytes + 1)
                                                                           : f.file_size();
  if (size > kMaxBytes)
    SBN_FAIL(path + ": more than " + std::to_string(kMaxBytes) + " bytes" + (f.compressed() ? " decompressed" : "") +
             ", the most accepted in one file (" + std::to_string(kMaxRecordsPerFile) +
             " records of 3073 bytes; a CIFAR-10 batch file holds 10000)");
  SBN_CHECK(size > 0, path + ": empty file, expected 3073-byte CIFAR-10 records");
  if (size % kRecord != 0)
    SBN_FAIL(path + ": size " + std::to_string(size) + " bytes is not a multiple of the " + std::to_string(kRecord) +
             "-byte CIFAR-10 record (1 label byte + 3x32x32 pixel bytes): " + std::to_string(size / kRecord) +
             " records and " + std::to_string(size % kRecord) + " bytes left over");
  const std::int64_t records = static_cast<std::int64_t>(size) / kRecord;
  const std::size_t old = split.pixels.size();
  split.pixels.resize(old + static_cast<std::size_t>(records * kPixels));
  for (std::int64_t r = 0; r < records; ++r) {
    const std::uint8_t* rec = bytes.data() + r * kRecord;
    if (rec[0] >= kNumClasses)
      SBN_FAIL(path + ": label " + std::to_string(rec[0]) + " of record " + std::to_string(r) + " (byte offset " +
               std::to_string(r * kRecord) + ") is out of range [0, " + std::to_string(kNumClasses) + ")");
    split.labels.push_back(rec[0]);
    std::copy(rec + 1, rec + kRecord, split.pixels.begin() + static_cast<std::ptrdiff_t>(old + r * kPixels));
  }
}

}  // namespace

std::string resolve_cifar10_dir(const std::string& dir) {
  std::error_code ec;
  const auto has_batches = [&](const std::string& d) {
    return std::filesystem::is_regular_file(join_path(d, "data_batch_1.bin"), ec) ||
           std::filesystem::is_regular_file(join_path(d, "data_batch_1.bin.gz"), ec);
  };
  if (has_batches(dir)) return dir;
  const std::string sub = join_path(dir, "cifar-10-batches-bin");
  if (std::filesystem::is_directory(sub, ec)) return sub;
  SBN_FAIL(join_path(dir, "data_batch_1.bin") + ": not found (nor " + sub +
           "/): expected the CIFAR-10 binary version (data_batch_1..5.bin, test_batch.bin)");
}

RawSplit read_cifar10_split(const std::string& dir, bool train) {
  RawSplit s;
  s.channels = kC;
  s.height = kH;
  s.width = kW;
  std::vector<std::string> names;
  if (train) {
    for (int k = 1; k <= 5; ++k) names.push_back("data_batch_" + std::to_string(k) + ".bin");
  } else {
    names.push_back("test_batch.bin");
  }
  // Locate every file first: a missing batch is reported before any of them is read.
  std::vector<std::string> paths;
  for (const auto& name : names)
    paths.push_back(find_data_file(dir, name, std::string("CIFAR-10 ") + (train ? "train" : "test") + " batch"));
  s.pixels.reserve(static_cast<std::size_t>((train ? 50000 : 10000) * kPixels));
  for (const auto& p : paths) read_cifar10_file(p, s);
  s.source = train ? join_path(dir, "data_batch_{1..5}.bin") : paths.front();
  return s;
}

}  // namespace syncbn::data_detail
