// One error type and one policy for the whole library.
//
// Library code throws syncbn::Error; only main() decides what to do with it (in a multi-rank program:
// agree on failure, report once, and MPI_Abort if a peer may still be waiting in a collective).
// what() is the message users see, "what failed: why", with no source location: the SBN_CHECK/SBN_FAIL
// site ("file.cpp:line") is kept apart in where(), and error_message() adds it when SBN_DEBUG=1.
// Whoever reports an error prefixes "[rank R@host]" (see mpi_main() in app.h), and the communicator puts
// rank and host in its own errors because a timeout is only useful if it says who was waiting.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>
#include <utility>

namespace syncbn {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, std::string where = {})
      : std::runtime_error(what), where_(std::move(where)) {}
  // "file.cpp:123" of the check that threw, "" when not thrown by SBN_CHECK/SBN_FAIL.
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

// Builds the message and throws. Out of line so the macros stay small at every call site.
[[noreturn]] void throw_error(const std::string& what, const char* file, int line);

// The text to report for e: e.what(), followed by " (file.cpp:line)" when e is a syncbn::Error with a
// location and the environment sets SBN_DEBUG to a value other than "" or "0" (for developers; user-facing
// errors carry no source locations).
std::string error_message(const std::exception& e);

}  // namespace syncbn

// SBN_CHECK(cond, msg): throws syncbn::Error with msg (a std::string expression) when cond is false.
#define SBN_CHECK(cond, msg)                                   \
  do {                                                         \
    if (!(cond)) ::syncbn::throw_error((msg), __FILE__, __LINE__); \
  } while (0)

// SBN_FAIL(msg): unconditional throw.
#define SBN_FAIL(msg) ::syncbn::throw_error((msg), __FILE__, __LINE__)
