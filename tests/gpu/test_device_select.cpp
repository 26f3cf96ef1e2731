// choose_device (include/syncbn/cuda/device_select.h) on mocked device lists: needs no GPU, never skips.
// Each case is one node: every local rank's visible device UUIDs, in that rank's CUDA ordinal order.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "syncbn/cuda/device_select.h"

namespace syncbn::cuda {
namespace {

// A node whose local rank r has global rank 10 + r and sees `lists[r]`.
std::vector<RankDevices> node_of(const std::vector<std::vector<std::string>>& lists) {
  std::vector<RankDevices> node;
  for (std::size_t r = 0; r < lists.size(); ++r) node.push_back({10 + static_cast<int>(r), lists[r]});
  return node;
}

// Every local rank's ordinal, or -1 where choose_device refuses.
std::vector<int> ordinals(const std::vector<RankDevices>& node, bool allow_sharing) {
  std::vector<int> out;
  for (std::size_t r = 0; r < node.size(); ++r)
    out.push_back(choose_device(node, static_cast<int>(r), allow_sharing, "nodeA").ordinal);
  return out;
}

const std::vector<std::string> kFour = {"GPU-a", "GPU-b", "GPU-c", "GPU-d"};

TEST(DeviceSelect, EachRankSeesItsOwnGpuUsesOrdinalZero) {
  // Slurm --gpus-per-task=1 / Kubernetes / CUDA_VISIBLE_DEVICES per rank: every rank's device is its 0.
  const auto node = node_of({{"GPU-a"}, {"GPU-b"}, {"GPU-c"}, {"GPU-d"}});
  EXPECT_EQ(ordinals(node, false), (std::vector<int>{0, 0, 0, 0}));
  for (int r = 0; r < 4; ++r) EXPECT_FALSE(choose_device(node, r, false, "nodeA").shared);
}

TEST(DeviceSelect, AllRanksSeeTheSameGpusUseLocalRankModCount) {
  EXPECT_EQ(ordinals(node_of({kFour, kFour, kFour, kFour}), false), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(ordinals(node_of({kFour, kFour}), false), (std::vector<int>{0, 1}));
  // Eight ranks on four devices: only with sharing, then local rank mod 4.
  const auto eight = node_of(std::vector<std::vector<std::string>>(8, kFour));
  EXPECT_EQ(ordinals(eight, true), (std::vector<int>{0, 1, 2, 3, 0, 1, 2, 3}));
  EXPECT_TRUE(choose_device(eight, 5, true, "nodeA").shared);
}

TEST(DeviceSelect, TwoGpusSharedByFourRanksIsRefusedNamingBothRanks) {
  const std::vector<std::string> two = {"GPU-a", "GPU-b"};
  const auto node = node_of({two, two, two, two});
  // Local ranks 0 and 2 land on GPU-a, 1 and 3 on GPU-b: each refusal names its pair (global ranks).
  for (int r = 0; r < 4; ++r) {
    const DeviceChoice c = choose_device(node, r, false, "nodeA");
    EXPECT_EQ(c.ordinal, -1);
    const std::string pair = r % 2 == 0 ? "ranks 10 and 12" : "ranks 11 and 13";
    EXPECT_NE(c.error.find(pair), std::string::npos) << c.error;
    EXPECT_NE(c.error.find(kSharedDeviceRefusal), std::string::npos) << c.error;
    EXPECT_NE(c.error.find(r % 2 == 0 ? "GPU-a" : "GPU-b"), std::string::npos) << c.error;
    EXPECT_NE(c.error.find("nodeA"), std::string::npos) << c.error;
  }
  EXPECT_EQ(ordinals(node, true), (std::vector<int>{0, 1, 0, 1}));
}

TEST(DeviceSelect, MixedVisibility) {
  // Ranks 0 and 2 share two devices, rank 1 has its own, rank 3 sees one of the shared pair plus another.
  const std::vector<std::string> ab = {"GPU-a", "GPU-b"};
  const auto node = node_of({ab, {"GPU-c"}, ab, {"GPU-b", "GPU-d"}});
  EXPECT_EQ(ordinals(node, false), (std::vector<int>{0, 0, 1, 1}));  // a, c, b, d: all distinct
  // Interleaved groups: round-robin within each group, not by local rank (0 and 2 would collide).
  const auto interleaved = node_of({ab, {"GPU-c", "GPU-d"}, ab, {"GPU-c", "GPU-d"}});
  EXPECT_EQ(ordinals(interleaved, false), (std::vector<int>{0, 0, 1, 1}));
  // The rank with fewer choices chooses first: rank 1 (only GPU-a) gets it, rank 0 takes GPU-b.
  EXPECT_EQ(ordinals(node_of({ab, {"GPU-a"}}), false), (std::vector<int>{1, 0}));
  // Two ranks whose only device is the same one: refused on both, naming both.
  const auto same = node_of({{"GPU-a"}, {"GPU-c"}, {"GPU-a"}});
  EXPECT_EQ(ordinals(same, false), (std::vector<int>{-1, 0, -1}));
  EXPECT_NE(choose_device(same, 2, false, "nodeA").error.find("ranks 10 and 12"), std::string::npos);
}

TEST(DeviceSelect, NoDeviceIsAnErrorForThatRankOnly) {
  const auto node = node_of({{}, {"GPU-a"}});
  const DeviceChoice none = choose_device(node, 0, false, "nodeA");
  EXPECT_EQ(none.ordinal, -1);
  EXPECT_NE(none.error.find("no CUDA device visible to rank 10 on nodeA"), std::string::npos) << none.error;
  EXPECT_EQ(choose_device(node, 1, false, "nodeA").ordinal, 0);
  EXPECT_EQ(choose_device(node_of({{}}), 0, true, "nodeA").ordinal, -1);
  EXPECT_EQ(choose_device(node, 2, false, "nodeA").ordinal, -1);  // out of range: refused, not a crash
}

}  // namespace
}  // namespace syncbn::cuda
