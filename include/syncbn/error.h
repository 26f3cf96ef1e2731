// One error type and one policy for the whole library.
//
// Library code throws syncbn::Error; only main() decides what to do with it (in a multi-rank program:
// agree on failure, report once, and MPI_Abort if a peer may still be waiting in a collective).
// Messages have the form "what failed: why (file:line)"; whoever reports an error prefixes
// "[rank R@host]" (see run_main() in app.h), and the communicator puts rank and host in its own errors
// because a timeout is only useful if it says who was waiting.
#pragma once

#include <stdexcept>
#include <string>

namespace syncbn {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Builds the message and throws. Out of line so the macros stay small at every call site.
[[noreturn]] void throw_error(const std::string& what, const char* file, int line);

}  // namespace syncbn

// SBN_CHECK(cond, msg): throws syncbn::Error with msg (a std::string expression) when cond is false.
#define SBN_CHECK(cond, msg)                                   \
  do {                                                         \
    if (!(cond)) ::syncbn::throw_error((msg), __FILE__, __LINE__); \
  } while (0)

// SBN_FAIL(msg): unconditional throw.
#define SBN_FAIL(msg) ::syncbn::throw_error((msg), __FILE__, __LINE__)
