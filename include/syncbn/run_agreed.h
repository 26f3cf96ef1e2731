// Agreeing on failure across the ranks of a communicator (STYLE.md §1): every rank runs the same step,
// and if it failed anywhere every rank throws the same AgreedError, so no rank is left waiting in a
// collective and rank 0 can report the failure once. Works over any Communicator whose collectives
// take host buffers (MPI, and NCCL's host-buffer path).
#pragma once

#include <functional>

#include "syncbn/communicator.h"
#include "syncbn/error.h"

namespace syncbn {

// Thrown on every rank by run_agreed(); the message is the one from the lowest failing rank.
class AgreedError : public Error {
 public:
  using Error::Error;
};

// Runs fn on every rank, then agrees: if fn threw on any rank, every rank throws AgreedError with the
// lowest failing rank's message (prefixed with its rank and host when the world has several ranks).
void run_agreed(Communicator& comm, const char* label, const std::function<void()>& fn);

}  // namespace syncbn
