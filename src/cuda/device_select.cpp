// choose_device: see include/syncbn/cuda/device_select.h for the rules.
#include "syncbn/cuda/device_select.h"

#include <algorithm>
#include <cstddef>
#include <numeric>

namespace syncbn::cuda {

namespace {

// Ordinal (index into node[r].uuids) of every local rank's device, -1 for a rank without devices.
std::vector<int> assign_all(const std::vector<RankDevices>& node) {
  std::vector<int> ordinal(node.size(), -1);
  std::vector<std::string> taken;
  // Most constrained first: a rank that sees fewer devices chooses before one with more to pick from.
  std::vector<std::size_t> order(node.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return node[a].uuids.size() < node[b].uuids.size(); });
  for (const std::size_t r : order) {
    const std::vector<std::string>& mine = node[r].uuids;
    if (mine.empty()) continue;
    for (std::size_t i = 0; i < mine.size() && ordinal[r] < 0; ++i) {
      bool used = false;
      for (const std::string& t : taken) used = used || t == mine[i];
      if (!used) ordinal[r] = static_cast<int>(i);
    }
    if (ordinal[r] < 0) {
      // Everything visible is taken: round-robin among the ranks with this very list.
      std::size_t peers = 0;
      for (std::size_t q = 0; q < r; ++q) peers += node[q].uuids == mine ? 1 : 0;
      ordinal[r] = static_cast<int>(peers % mine.size());
    }
    taken.push_back(mine[static_cast<std::size_t>(ordinal[r])]);
  }
  return ordinal;
}

}  // namespace

DeviceChoice choose_device(const std::vector<RankDevices>& node, int local_rank, bool allow_sharing,
                           const std::string& host) {
  DeviceChoice out;
  if (local_rank < 0 || static_cast<std::size_t>(local_rank) >= node.size()) {
    out.error = "device selection: local rank " + std::to_string(local_rank) + " out of range (" +
                std::to_string(node.size()) + " local ranks on " + host + ")";
    return out;
  }
  const auto me = static_cast<std::size_t>(local_rank);
  if (node[me].uuids.empty()) {
    out.error = "no CUDA device visible to rank " + std::to_string(node[me].rank) + " on " + host;
    return out;
  }
  const std::vector<int> ordinal = assign_all(node);
  const std::string& uuid = node[me].uuids[static_cast<std::size_t>(ordinal[me])];
  for (std::size_t q = 0; q < node.size(); ++q) {
    if (q == me || ordinal[q] < 0 || node[q].uuids[static_cast<std::size_t>(ordinal[q])] != uuid) continue;
    out.shared = true;
    if (allow_sharing) break;
    const std::size_t lo = q < me ? q : me, hi = q < me ? me : q;
    out.error = "ranks " + std::to_string(node[lo].rank) + " and " + std::to_string(node[hi].rank) + " on " + host +
                " " + kSharedDeviceRefusal + " (" + uuid + "; " + std::to_string(node.size()) +
                " ranks on the node): start at most one rank per visible device, give each rank its own device "
                "(CUDA_VISIBLE_DEVICES, --gpus-per-task=1), or set SBN_GPU_SHARING=1 to share devices "
                "round-robin (slow; for tests and debugging)";
    return out;
  }
  out.ordinal = ordinal[me];
  return out;
}

}  // namespace syncbn::cuda
