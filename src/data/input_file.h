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
  explicit InputFile(const std::string& path);  // throws "<path>: cannot open: <reason>"
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  // Reads up to n bytes into dst; returns fewer only at the end of the (decompressed) data. A damaged
  // or cut compressed stream throws "<path>: corrupt gzip data: <zlib's reason>".
  std::size_t read(void* dst, std::size_t n);
  // Appends up to `limit` bytes to out (growing it as data arrives, so a header that lies about the
  // size cannot make us allocate more than the file holds); returns how many were appended.
  std::uint64_t read_append(std::vector<std::uint8_t>& out, std::uint64_t limit);
  // Reads and discards the rest; returns its length (for "trailing garbage" messages).
  std::uint64_t skip_rest();

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* gz_ = nullptr;  // gzFile (kept opaque so users of this header need no zlib.h)
};

// The directory a dataset is read from must exist; throws "<dir>: data directory of <dataset> does not
// exist (set --data-dir)" or "... is not a directory".
void check_data_dir(const std::string& dir, const std::string& dataset);

// dir/name if it is a file, else dir/name.gz if that is; otherwise throws
// "<dir>/<name>: not found (nor <name>.gz) — <what>".
std::string find_data_file(const std::string& dir, const std::string& name, const std::string& what);

std::string join_path(const std::string& dir, const std::string& name);

}  // namespace syncbn::data_detail
