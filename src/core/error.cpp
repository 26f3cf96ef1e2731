#include "syncbn/error.h"

#include <cstdlib>
#include <cstring>

namespace syncbn {

void throw_error(const std::string& what, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  throw Error(what, std::string(base ? base + 1 : file) + ":" + std::to_string(line));
}

std::string error_message(const std::exception& e) {
  std::string out = e.what();
  const auto* err = dynamic_cast<const Error*>(&e);
  const char* debug = std::getenv("SBN_DEBUG");
  if (err && !err->where().empty() && debug && *debug && std::strcmp(debug, "0") != 0)
    out += " (" + err->where() + ")";
  return out;
}

}  // namespace syncbn
