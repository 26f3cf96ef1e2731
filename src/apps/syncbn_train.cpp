// syncbn-train: data-parallel training with Synchronized BatchNorm (CPU path over MPI).
//   mpirun -np 2 syncbn-train --norm sync --run-dir runs/demo
// Everything is in the library (src/train); this is option parsing and the failure policy (app.h).
#include <cstdio>

#include "syncbn/app.h"
#include "syncbn/train_config.h"
#include "syncbn/trainer.h"

int main(int argc, char** argv) {
  return syncbn::mpi_main(argc, argv, [&](syncbn::MpiCommunicator& world) {
    syncbn::TrainOptions options;
    syncbn::ParseResult parsed;
    // Every rank parses the same argv; a bad option or value is reported once, by rank 0.
    syncbn::run_agreed(world, "options", [&] {
      parsed = options.parse(argc, argv);
      if (!parsed.help) options.validate(world.size());
    });
    // --help on some ranks only (an MPMD launch) still ends every rank here, not in the next collective.
    if (world.any(parsed.help, "options: --help")) {
      if (world.rank() == 0 && parsed.help) std::fputs(parsed.help_text.c_str(), stdout);
      return 0;
    }
    return syncbn::run_training(options, world);
  });
}
