// SBN_MPI_CHECK(call, context): runs an MPI call and throws syncbn::Error with the MPI error string if it
// does not return MPI_SUCCESS. `context` (a std::string) says who was calling, e.g. origin() + label.
// Communicators that use it set MPI_ERRORS_RETURN, otherwise MPI aborts before we can report.
#pragma once

#include <mpi.h>

#include <string>

#include "syncbn/error.h"

namespace syncbn {
std::string mpi_error_string(int code);
}  // namespace syncbn

#define SBN_MPI_CHECK(call, context)                                                    \
  do {                                                                                  \
    const int sbn_mpi_rc_ = (call);                                                     \
    if (sbn_mpi_rc_ != MPI_SUCCESS)                                                     \
      ::syncbn::throw_error(std::string(context) + ": " #call " failed: " +             \
                                ::syncbn::mpi_error_string(sbn_mpi_rc_),                \
                            __FILE__, __LINE__);                                        \
  } while (0)
