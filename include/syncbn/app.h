// What every syncbn executable's main() shares: MPI start-up, the failure policy and rank-0 output.
//
// Failure policy (STYLE.md §1): an error every rank detected at the same point (run_agreed) is printed
// once by rank 0 as a single "error: ..." line and every rank exits 1 cleanly - no rank is left in a
// collective. Any other escaping error is printed by the rank that hit it ("error: [rank R@host] ...")
// and the job is ended with MPI_Abort, because its peers may be waiting in a collective. Neither line
// names a source location unless SBN_DEBUG=1 (error_message() in error.h).
#pragma once

#include <cstdarg>
#include <functional>
#include <string>

#include "syncbn/communicator.h"
#include "syncbn/error.h"
#include "syncbn/mpi_communicator.h"
#include "syncbn/run_agreed.h"

namespace syncbn {

// Rank-0 output: printf-style lines on stdout, nothing on other ranks. Lines that are not data start
// with '#' by convention of the callers (nccl-tests style) so outputs stay machine-parseable.
class Log0 {
 public:
  explicit Log0(const Communicator& comm) : enabled_(comm.rank() == 0) {}
  explicit Log0(bool enabled) : enabled_(enabled) {}
  void operator()(const char* fmt, ...) const __attribute__((format(printf, 2, 3)));
  bool enabled() const { return enabled_; }

 private:
  bool enabled_;
};

// main() wrapper: MPI_Init_thread, a world communicator, line-buffered stdout, then body(world); maps
// errors per the policy above. Returns the process exit code.
int mpi_main(int argc, char** argv, const std::function<int(MpiCommunicator& world)>& body);

}  // namespace syncbn
