#include "syncbn/error.h"

#include <cstring>

namespace syncbn {

void throw_error(const std::string& what, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  throw Error(what + " (" + (base ? base + 1 : file) + ":" + std::to_string(line) + ")");
}

}  // namespace syncbn
