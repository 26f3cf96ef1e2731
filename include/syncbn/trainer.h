// The data-parallel training loop (DESIGN.md §4). Each optimizer step takes the next B indices of the
// epoch's global permutation; with --accum-steps K they form K consecutive micro-batches of B/K, and
// rank r of P takes the contiguous rank_slice of each micro-batch (uneven when P ∤ B/K; a rank may get
// none and still takes part in every collective). Each rank's loss is Σ(per-sample loss on its slice)/B,
// parameter gradients are SUM-all-reduced in a few large buckets: with sync BN the step is the same
// step as one process with batch B, for any P.
#pragma once

#include "syncbn/mpi_communicator.h"
#include "syncbn/train_config.h"

namespace syncbn {

// Runs a whole training job on this rank; returns the process exit code. Errors that every rank detects
// together (bad configuration, bad data, bad checkpoint) are thrown as AgreedError.
int run_training(const TrainOptions& options, MpiCommunicator& world);

}  // namespace syncbn
