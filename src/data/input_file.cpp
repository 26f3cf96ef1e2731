#include "input_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "syncbn/data.h"
#include "syncbn/error.h"

namespace syncbn {

namespace {

// What a non-regular file is, for messages.
std::string not_regular(mode_t mode) {
  if (S_ISDIR(mode)) return "is a directory";
  if (S_ISFIFO(mode)) return "is a FIFO, not a regular file";
  if (S_ISCHR(mode)) return "is a character device, not a regular file";
  if (S_ISBLK(mode)) return "is a block device, not a regular file";
  if (S_ISSOCK(mode)) return "is a socket, not a regular file";
  return "is not a regular file";
}

}  // namespace

int open_regular_file(const std::string& path, std::string* why) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    *why = std::strerror(errno);
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    *why = not_regular(st.st_mode);
    return -1;
  }
  // O_NONBLOCK: if a FIFO replaced the file since stat(), open still returns at once (and fstat refuses it).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    *why = std::strerror(errno);
    return -1;
  }
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    *why = S_ISREG(st.st_mode) ? std::strerror(errno) : not_regular(st.st_mode);
    ::close(fd);
    return -1;
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

}  // namespace syncbn

namespace syncbn::data_detail {

namespace fs = std::filesystem;

namespace {

gzFile as_gz(void* p) { return static_cast<gzFile>(p); }

// zlib prefixes its messages with the file's name, "<fd:N>" after gzdopen; ours start with the path.
std::string zlib_reason(gzFile gz, int* errnum) {
  const char* msg = gzerror(gz, errnum);
  std::string s = msg ? msg : "";
  const auto name_end = s.find(">: ");
  if (s.rfind("<fd:", 0) == 0 && name_end != std::string::npos) s.erase(0, name_end + 3);
  return s.empty() ? "unknown zlib error" : s;
}

}  // namespace

InputFile::InputFile(const std::string& path) : path_(path) {
  std::string why;
  const int fd = open_regular_file(path, &why);
  if (fd < 0) SBN_FAIL(path + ": cannot open: " + why);
  struct stat st {};
  if (::fstat(fd, &st) == 0) file_size_ = static_cast<std::uint64_t>(st.st_size);
  gzFile gz = gzdopen(fd, "rb");  // owns fd from here (gzclose_r closes it)
  if (!gz) {
    ::close(fd);
    SBN_FAIL(path + ": cannot open: out of memory");
  }
  gz_ = gz;
  // A large buffer: inflate then works on big chunks (the default 8 KiB costs ~20% on 47 MB files).
  // gzbuffer must come before the first read, and gzdirect's look at the magic bytes is one.
  gzbuffer(gz, 1u << 20);
  compressed_ = gzdirect(gz) == 0;
}

std::uint64_t InputFile::max_data_bytes() const {
  if (!compressed_) return file_size_;
  return file_size_ > UINT64_MAX / kMaxGzipRatio ? UINT64_MAX : file_size_ * kMaxGzipRatio;
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
    const std::string reason = zlib_reason(as_gz(gz_), &errnum);
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

std::uint64_t InputFile::skip_rest(std::uint64_t limit) {
  std::vector<unsigned char> sink(std::size_t{1} << 16);
  const std::uint64_t want_total = limit == UINT64_MAX ? limit : limit + 1;
  std::uint64_t total = 0;
  while (total < want_total) {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(sink.size(), want_total - total));
    const std::size_t got = read(sink.data(), want);
    total += got;
    if (got < want) break;
  }
  return total;
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
  // Something else by that name (a FIFO, a directory): say so, rather than "not found".
  for (const std::string& p : {plain, gz}) {
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0) SBN_FAIL(p + ": " + not_regular(st.st_mode) + ": " + what);
  }
  SBN_FAIL(plain + ": not found (nor " + name + ".gz): " + what);
}

}  // namespace syncbn::data_detail
