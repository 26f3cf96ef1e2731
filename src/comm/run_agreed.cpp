#include "syncbn/run_agreed.h"

#include <string>
#include <vector>

namespace syncbn {

void run_agreed(Communicator& comm, const char* label, const std::function<void()>& fn) {
  std::string why;
  bool failed = false;
  try {
    fn();
  } catch (const std::exception& e) {
    failed = true;
    why = error_message(e);  // no source location unless SBN_DEBUG=1 (error.h)
  }
  if (!comm.any(failed, label)) return;
  // Find the lowest failing rank and broadcast its message, so that rank 0 can report it once.
  std::vector<double> flags(static_cast<std::size_t>(comm.size()), 0.0);
  flags[static_cast<std::size_t>(comm.rank())] = failed ? 1.0 : 0.0;
  comm.allreduce_sum(flags.data(), flags.size(), label);
  int root = 0;
  while (flags[static_cast<std::size_t>(root)] == 0.0) ++root;
  if (comm.size() > 1 && comm.rank() == root && why.rfind("[rank ", 0) != 0) why = comm.origin() + " " + why;
  double len = static_cast<double>(why.size());
  comm.broadcast(&len, sizeof len, root, label);
  why.resize(static_cast<std::size_t>(len));
  comm.broadcast(why.data(), why.size(), root, label);
  throw AgreedError(why);
}

}  // namespace syncbn
