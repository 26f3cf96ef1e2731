#include "input_file.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "syncbn/error.h"

namespace syncbn::data_detail {

namespace fs = std::filesystem;

namespace {

gzFile as_gz(void* p) { return static_cast<gzFile>(p); }

// zlib prefixes its messages with the path; ours already start with it.
std::string zlib_reason(gzFile gz, const std::string& path, int* errnum) {
  const char* msg = gzerror(gz, errnum);
  std::string s = msg ? msg : "";
  if (s.rfind(path + ": ", 0) == 0) s.erase(0, path.size() + 2);
  return s.empty() ? "unknown zlib error" : s;
}

}  // namespace

InputFile::InputFile(const std::string& path) : path_(path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) SBN_FAIL(path + ": cannot open: is a directory");
  errno = 0;
  gzFile gz = gzopen(path.c_str(), "rb");
  if (!gz) SBN_FAIL(path + ": cannot open: " + (errno ? std::strerror(errno) : "out of memory"));
  gz_ = gz;
  // A large buffer: inflate then works on big chunks (the default 8 KiB costs ~20% on 47 MB files).
  gzbuffer(gz, 1u << 20);
}

InputFile::~InputFile() {
  if (gz_) gzclose_r(as_gz(gz_));
}

std::size_t InputFile::read(void* dst, std::size_t n) {
  auto* out = static_cast<unsigned char*>(dst);
  std::size_t done = 0;
  while (done < n) {
    // gzread takes an unsigned and returns an int: read at most 1 GiB per call.
    const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - done, std::size_t{1} << 30));
    const int got = gzread(as_gz(gz_), out + done, chunk);
    int errnum = Z_OK;
    const std::string reason = zlib_reason(as_gz(gz_), path_, &errnum);
    // gzread returns the bytes it could decode from a cut stream and flags Z_BUF_ERROR ("unexpected
    // end of file"), so the error state is checked even when data came back.
    if (got < 0 || errnum != Z_OK) {
      if (errnum == Z_ERRNO) SBN_FAIL(path_ + ": read error: " + reason);
      SBN_FAIL(path_ + ": corrupt gzip data: " + reason);
    }
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  return done;
}

std::uint64_t InputFile::read_append(std::vector<std::uint8_t>& out, std::uint64_t limit) {
  // Geometric growth from 1 MiB: a few reallocations for a 47 MB file, and a small file (or a huge
  // `limit`) never pays for zero-filling memory it does not need.
  constexpr std::uint64_t kFirstStep = std::uint64_t{1} << 20;
  std::uint64_t total = 0;
  while (total < limit) {
    const std::uint64_t want = std::min(limit - total, std::max<std::uint64_t>(kFirstStep, out.size()));
    const std::size_t old = out.size();
    out.resize(old + want);
    const std::size_t got = read(out.data() + old, want);
    out.resize(old + got);
    total += got;
    if (got < want) break;
  }
  return total;
}

std::uint64_t InputFile::skip_rest() {
  std::vector<unsigned char> sink(std::size_t{1} << 16);
  std::uint64_t total = 0;
  for (;;) {
    const std::size_t got = read(sink.data(), sink.size());
    total += got;
    if (got < sink.size()) return total;
  }
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

void check_data_dir(const std::string& dir, const std::string& dataset) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (!fs::exists(st)) SBN_FAIL(dir + ": data directory of " + dataset + " does not exist (set --data-dir)");
  if (!fs::is_directory(st)) SBN_FAIL(dir + ": data directory of " + dataset + " is not a directory");
}

std::string find_data_file(const std::string& dir, const std::string& name, const std::string& what) {
  const std::string plain = join_path(dir, name);
  std::error_code ec;
  if (fs::is_regular_file(plain, ec)) return plain;
  const std::string gz = plain + ".gz";
  if (fs::is_regular_file(gz, ec)) return gz;
  SBN_FAIL(plain + ": not found (nor " + name + ".gz): " + what);
}

}  // namespace syncbn::data_detail
