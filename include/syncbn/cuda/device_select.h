// Choosing each rank's CUDA device from what the ranks of one node can see (docs/GPU.md "Device
// selection"). Pure host code, no CUDA or MPI calls: the caller gathers every local rank's visible device
// UUIDs (NcclCommunicator: an MPI allgather over the node's ranks) and this decides, so the rules are
// tested with mocked device lists (tests/gpu/test_device_select.cpp).
//
// Rules, the same on every rank of the node, applied to the ranks in order of how many devices they see
// (fewest first, then by local rank):
//   - a rank takes the first of its visible devices (in its own CUDA ordinal order) that no rank before it
//     has taken: ranks that each see their own device (Slurm --gpus-per-task=1, Kubernetes device
//     plugins, CUDA_VISIBLE_DEVICES per rank) use their device 0; ranks that all see the same n devices
//     use local rank mod n;
//   - when all of a rank's devices are taken it falls back to (its position among the ranks seeing the
//     same list) mod (the list's length), which then shares a device with another rank: an error naming
//     both ranks (NCCL refuses two ranks of one communicator on one GPU) unless sharing is allowed;
//   - a rank that sees no device is an error for that rank.
#pragma once

#include <string>
#include <vector>

namespace syncbn::cuda {

// One local rank's view: its global rank (for messages) and its visible devices' UUIDs, ordinal order.
struct RankDevices {
  int rank = 0;
  std::vector<std::string> uuids;
};

// The device chosen for one rank: `ordinal` (its CUDA device index), or -1 with `error` set.
struct DeviceChoice {
  int ordinal = -1;
  bool shared = false;  // allow_sharing and another local rank uses the same device
  std::string error;
};

// The substring every "two ranks on one device" refusal contains (the check scripts match it).
inline constexpr const char* kSharedDeviceRefusal = "would share one CUDA device in one NCCL communicator";

// Chooses the device of node[local_rank] (node: every local rank of the node, by local rank; host names
// the node in messages). Never throws.
DeviceChoice choose_device(const std::vector<RankDevices>& node, int local_rank, bool allow_sharing,
                           const std::string& host);

}  // namespace syncbn::cuda
