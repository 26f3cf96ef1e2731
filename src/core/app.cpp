#include "syncbn/app.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace syncbn {

void Log0::operator()(const char* fmt, ...) const {
  if (!enabled_) return;
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stdout, fmt, args);
  va_end(args);
}

int mpi_main(int argc, char** argv, const std::function<int(MpiCommunicator& world)>& body) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  MpiRuntime mpi(&argc, &argv);
  int code = 0;
  std::string fatal;
  {
    std::unique_ptr<MpiCommunicator> world;
    try {
      world = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
      if (const char* t = std::getenv("SBN_COMM_TIMEOUT")) {
        // The same bounds as --comm-timeout: inf or 1e12 would overflow the deadline arithmetic.
        char* end = nullptr;
        const double s = std::strtod(t, &end);
        SBN_CHECK(*t != '\0' && *end == '\0' && s >= 0 && s <= 604800,
                  std::string("SBN_COMM_TIMEOUT must be a number of seconds in [0, 604800], got '") + t + "'");
        world->set_timeout(s);
      }
      code = body(*world);
    } catch (const AgreedError& e) {
      if (!world || world->rank() == 0) std::fprintf(stderr, "error: %s\n", e.what());
      code = 1;
    } catch (const std::exception& e) {
      // Communicator errors already say which rank; everything else gets the prefix here.
      const std::string what = error_message(e);
      fatal = (world && what.rfind("[rank ", 0) != 0 ? world->origin() + " " : std::string()) + what;
    }
    if (!fatal.empty()) {
      std::fprintf(stderr, "error: %s\n", fatal.c_str());
      abort_job(1);  // peers may be waiting in a collective: end them all
    }
  }
  return code;
}

}  // namespace syncbn
