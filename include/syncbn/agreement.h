// Start-up agreement: every rank of a job must train the same thing. An MPMD launch with different
// flags, a different --lr on one node or another copy of the dataset on one node would otherwise train
// divergent replicas and exit 0. Each check hashes what must be identical and compares it across ranks
// with one small collective (Communicator::all_equal); on a mismatch - which every rank sees, so every
// rank takes the same path and nothing hangs - a few more collectives find out which items and which
// ranks differ, and every rank throws the same AgreedError (app.h: rank 0 prints it once, exit 1).
//
// Which options must agree: ALL of TrainOptions::options() except the three below. Besides the maths
// (model, norm, batch, optimizer, seed, data selection) that covers every option that shapes the
// sequence of collectives - epochs, max-steps, stop-after, eval-every, log-every, save-every, run-dir,
// resume, device, precision - because a rank that differs there hangs or diverges later, far from the
// cause. A new option is covered by default. Allowed to differ, each because a difference changes
// neither a value that reaches the parameters nor the collective sequence:
//   threads       per-node core counts; every rank applies the same all-reduced gradients whatever its
//                 oneDNN thread count did to its local arithmetic
//   data-dir      nodes may keep the files in different places; agree_on_data compares the content
//   comm-timeout  only bounds how long a rank waits in a collective
// Floating-point options print as the shortest text that reads back exactly, so texts compare exactly.
// --device is compared as written: "auto" resolves with a collective only on the ranks that say auto.
//
// The build: version, git commit (config.h: SBN_GIT_COMMIT, cmake/GitCommit.cmake), build type, CUDA/NCCL
// support, CPU target (-march and the ISA it enabled: a per-node -march=native build can round the
// optimizer update differently, and replicas drift apart) and compiler.
//
// The data: per split, images and labels - counts, shapes, classes, the normalization statistics and a
// word-wise content hash (~30 ms for Fashion-MNIST's 55M floats on one core). Test images are hashed as
// the 8-bit pixel codes recovered from the floats, so another train file (hence other normalization
// statistics) is not also blamed on the test file.
//
// Messages (one line; at most 4 items with values, then the names of the rest; up to 3 distinct values
// per item; rank lists compressed by rank_list):
//   ranks disagree on --seed (rank 0: 1; rank 1: 2) — every rank must run the same options, build and data
//   ranks disagree on --lr (rank 0: 0.05; ranks 1, 8: 0.1; ranks 3-6: 0.2) — every rank must ...
//   ranks run different builds: git commit (rank 0: 3f2a...; ranks 1-4: 9c1b...) — every rank must ...
//   ranks disagree on the data: train images (/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz):
//     ranks 1, 3 differ from rank 0 — every rank must ...
// Every rank must call these functions in the same order (a rank that failed earlier never gets here:
// run_agreed agreed on that failure first).
#pragma once

#include <string>
#include <vector>

#include "syncbn/communicator.h"
#include "syncbn/data.h"
#include "syncbn/train_config.h"

namespace syncbn {

// The resolved options that affect the computation (all but the exempt ones above), and the build.
// One all_equal in the good case; throws AgreedError on every rank on a mismatch.
void agree_on_options(Communicator& world, const TrainOptions& options);

// The loaded dataset: split sizes, shapes, classes, normalization and a content hash of the arrays.
// One all_equal in the good case; throws AgreedError on every rank on a mismatch, naming the split and
// the files each rank read (`source`: the options the data was loaded with).
void agree_on_data(Communicator& world, const DataSplits& data, const DataOptions& source);

// "rank 3", "ranks 1, 3", "ranks 1-255", "ranks 1-3, 5, 9-12": ascending ranks with runs of three or
// more as ranges; beyond 8 runs "..., (N ranks)". Empty for an empty list.
std::string rank_list(const std::vector<int>& ranks);

}  // namespace syncbn
