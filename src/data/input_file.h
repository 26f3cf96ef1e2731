// Sequential reading of data files that may be gzip-compressed, and locating them (internal header).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace syncbn::data_detail {

// A file opened for sequential reading through zlib: gzip data (recognised by its magic bytes 1f 8b,
// whatever the file is called) is decompressed, anything else is read as is. Every error throws
// syncbn::Error naming the file.
class InputFile {
 public:
  // Throws "<path>: cannot open: <reason>"; only a regular file is opened (open_regular_file in data.h:
  // a FIFO or device named like a data file is refused, never waited on).
  explicit InputFile(const std::string& path);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  // Reads up to n bytes into dst; returns fewer only at the end of the (decompressed) data. A damaged
  // or cut compressed stream throws "<path>: corrupt gzip data: <zlib's reason>".
  std::size_t read(void* dst, std::size_t n);
  // Appends up to `limit` bytes to out (growing it as data arrives, so a header that lies about the
  // size cannot make us allocate more than the file holds); returns how many were appended.
  std::uint64_t read_append(std::vector<std::uint8_t>& out, std::uint64_t limit);
  // Reads and discards the rest, but at most limit + 1 bytes; returns how many it read (for "trailing
  // garbage" messages: more than `limit` means "more than limit bytes", so a gzip bomb behind a valid
  // header costs at most limit + 1 bytes of inflate).
  std::uint64_t skip_rest(std::uint64_t limit);

  const std::string& path() const { return path_; }
  bool compressed() const { return compressed_; }
  std::uint64_t file_size() const { return file_size_; }  // bytes on disk
  // The most (decompressed) bytes this file can yield: its size if plain, kMaxGzipRatio x its size if
  // gzip. A header declaring more is lying, and is refused before anything is read or allocated.
  std::uint64_t max_data_bytes() const;

 private:
  std::string path_;
  void* gz_ = nullptr;  // gzFile (kept opaque so users of this header need no zlib.h)
  bool compressed_ = false;
  std::uint64_t file_size_ = 0;
};

// deflate's maximum compression ratio (zlib's technical notes: 1032:1, reached by long runs of one byte).
inline constexpr std::uint64_t kMaxGzipRatio = 1032;

// How many bytes of trailing data a reader counts before it says "more than": bounded work on a file
// that continues (or inflates) far beyond what its header declares.
inline constexpr std::uint64_t kTrailingBytesCounted = std::uint64_t{1} << 20;

// The directory a dataset is read from must exist; throws "<dir>: data directory of <dataset> does not
// exist (set --data-dir)" or "... is not a directory".
void check_data_dir(const std::string& dir, const std::string& dataset);

// dir/name if it is a file, else dir/name.gz if that is; otherwise throws
// "<dir>/<name>: not found (nor <name>.gz) — <what>".
std::string find_data_file(const std::string& dir, const std::string& name, const std::string& what);

std::string join_path(const std::string& dir, const std::string& name);

}  // namespace syncbn::data_detail
