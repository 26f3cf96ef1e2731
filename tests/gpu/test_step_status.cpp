// Host tests of the GPU training step's protocols (issue 11), no device needed, never skip:
//  - the step-status array (src/cuda/train/step_status.h): layout, decode, which failure a step reports
//    (first failure wins, with the layer's own one-line error), one fetch (= one host wait) per read;
//  - the gradient buckets that overlap the backward (grad_buckets.h): reverse-order buckets, which bucket
//    is due after which parameters complete, launch order, on a real network plan;
//  - the SyncBN message size classes (bn_layer.h, bn_message_channels): bytes per step before and after
//    for the default convnet and a ResNet-50 channel list.
// The device side of the same contracts (one wait per optimizer step in CudaTrainModel, overlap giving
// the same parameters) is in test_gpu_train.cpp and needs a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cuda/train/grad_buckets.h"
#include "cuda/train/step_status.h"
#include "syncbn/bn_layer.h"
#include "syncbn/error.h"
#include "syncbn/net_plan.h"
#include "syncbn/norm_spec.h"
#include "syncbn/param_store.h"
#include "syncbn/sync_batchnorm.h"

namespace syncbn::cuda::train {
namespace {

// ---- step status -----------------------------------------------------------------------------------

template <class T>
void put(std::vector<char>& bytes, std::size_t offset, const T& v) {
  ASSERT_LE(offset + sizeof v, bytes.size());
  std::memcpy(bytes.data() + offset, &v, sizeof v);
}

TEST(StepStatus, LayoutPartsAreAlignedDisjointAndTheResetCoversCountersAndBatchNorms) {
  for (int layers : {0, 1, 3, 53}) {
    SCOPED_TRACE(layers);
    const StepStatusLayout l = step_status_layout(layers);
    EXPECT_EQ(l.bn_layers, layers);
    for (std::size_t off : {l.counters, l.bn, l.check, l.scale}) EXPECT_EQ(off % 16, 0u) << off;
    // [counters][BN × layers] | [check][scale], in this order, no overlap.
    EXPECT_EQ(l.counters, 0u);
    EXPECT_GE(l.bn, l.counters + sizeof(StepCounters));
    EXPECT_GE(l.reset_bytes, l.bn + layers * sizeof(BnStepStatus));
    EXPECT_LE(l.reset_bytes, l.check) << "the per-step reset must not clear the verdict";
    EXPECT_GE(l.scale, l.check + sizeof(GradCheck));
    EXPECT_LE(l.scale + sizeof(LossScaleState), l.bytes) << "the loss scale is kept across steps, but read";
    EXPECT_LT(l.bytes, 64 + 16 * 3 + layers * sizeof(BnStepStatus) + 64) << "one small copy per step";
  }
  EXPECT_THROW(step_status_layout(-1), Error);
}

TEST(StepStatus, DecodeReadsBackEveryPart) {
  const StepStatusLayout l = step_status_layout(3);
  std::vector<char> bytes(l.bytes, 0);
  StepCounters c;
  c.loss = 12.5;
  c.correct = 7;
  c.status[0] = 1;
  c.status[1] = 42;
  c.status[2] = 3;
  put(bytes, l.counters, c);
  BnStepStatus b;
  b.backward = kBnCountMismatch;
  b.backward_count = 5;
  b.backward_expected = 6;
  put(bytes, l.bn + 2 * sizeof(BnStepStatus), b);
  GradCheck g;
  g.first_bad = 99;
  g.outcome = kStepNonFinite;
  put(bytes, l.check, g);
  LossScaleState s;
  s.scale = 1024.0f;
  s.skipped = 2;
  put(bytes, l.scale, s);

  const StepStatusView v = decode_step_status(bytes.data(), l);
  EXPECT_EQ(v.counters.loss, 12.5);
  EXPECT_EQ(v.counters.correct, 7);
  EXPECT_EQ(v.counters.status[1], 42);
  ASSERT_EQ(v.bn.size(), 3u);
  EXPECT_EQ(v.bn[0].forward, kBnOk);
  EXPECT_EQ(v.bn[1].backward, kBnOk);
  EXPECT_EQ(v.bn[2].backward, kBnCountMismatch);
  EXPECT_EQ(v.bn[2].backward_expected, 6);
  EXPECT_EQ(v.check.first_bad, 99u);
  EXPECT_EQ(v.check.outcome, kStepNonFinite);
  EXPECT_EQ(v.scale.scale, 1024.0f);
  EXPECT_EQ(v.scale.skipped, 2);
}

TEST(StepStatus, FirstFailureWinsLabelThenLayersInNetworkOrder) {
  StepStatusView v;
  v.bn.resize(4);
  EXPECT_EQ(first_step_failure(v).kind, StepFailure::kNone);
  v.bn[3].forward = kBnTagMismatch;
  v.bn[1].backward = kBnCountMismatch;
  StepFailure f = first_step_failure(v);
  EXPECT_EQ(f.kind, StepFailure::kBatchNorm);
  EXPECT_EQ(f.layer, 1) << "the earliest layer in network order";
  v.bn[1].forward = kBnSingleSample;  // the same layer's forward and backward: check_step_status orders them
  EXPECT_EQ(first_step_failure(v).layer, 1);
  v.counters.status[0] = 1;  // a bad label: found by the loss, before any backward
  v.counters.status[1] = 11;
  v.counters.status[2] = 4;
  f = first_step_failure(v);
  EXPECT_EQ(f.kind, StepFailure::kLabel);
  EXPECT_EQ(label_error(v.counters, 10), "cross-entropy: label 11 outside [0, 10) (sample 4 of this rank's batch)");
}

// The message a layer's status gives, or "" (check_step_status returns).
std::string layer_error(const BnLayerHost& layer, const BnStepStatus& st) {
  try {
    layer.check_step_status(st);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(StepStatus, EachBatchNormFailureDecodesToTheLayersOneLineError) {
  BatchNormOptions o;
  o.channels = 4;
  const SyncBatchNorm bn("layer2.0.bn1", o, nullptr);
  const BnLayerHost& host = bn;
  EXPECT_EQ(layer_error(host, {}), "");
  struct Case {
    BnStepStatus st;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{kBnTagMismatch, 0, 0, 0}, "'layer2.0.bn1' forward: ranks of the sync group are not in the same layer"},
      {{kBnEmptyBatch, 0, 0, 0}, "'layer2.0.bn1' forward: the batch of this rank is empty"},
      {{kBnSingleSample, 0, 0, 0}, "'layer2.0.bn1' forward: expected more than 1 value per channel"},
      {{0, kBnTagMismatch, 0, 0}, "'layer2.0.bn1' backward: ranks of the sync group are not in the same layer"},
      {{0, kBnCountMismatch, 5, 6}, "'layer2.0.bn1' backward: the gradient covers 5 values per channel, the forward 6"},
      // Both phases failed: the forward's is the first failure and the one reported.
      {{kBnEmptyBatch, kBnCountMismatch, 5, 6}, "'layer2.0.bn1' forward: the batch of this rank is empty"},
  };
  for (const Case& c : cases) {
    const std::string msg = layer_error(host, c.st);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "got: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
}

// One fetch per read, of the whole array: the model's fetch is its one copy and one host wait per step.
// A step of any number of micro-batches makes one read (check()); train_micro makes none (the loop passes
// null sums), so waits per optimizer step == reads per check() == 1.
TEST(StepStatus, OneFetchPerReadOfTheWholeArray) {
  const StepStatusLayout l = step_status_layout(2);
  std::vector<char> device(l.bytes, 0), host(l.bytes, 0);
  int waits = 0;
  std::size_t fetched = 0;
  StepStatusReader reader(l, host.data(), [&](void* to, std::size_t bytes) {
    std::memcpy(to, device.data(), bytes);  // the copy, then the wait
    fetched = bytes;
    ++waits;
  });
  for (int step = 1; step <= 3; ++step) {
    // The "device" during a step of 4 micro-batches: the loss kernel adds, a layer reports.
    for (int micro = 0; micro < 4; ++micro) {
      StepCounters c = decode_step_status(device.data(), l).counters;
      c.loss += 1.5;
      c.correct += 2;
      put(device, l.counters, c);
    }
    if (step == 3) put(device, l.bn + sizeof(BnStepStatus), BnStepStatus{kBnTagMismatch, 0, 0, 0});
    EXPECT_EQ(waits, step - 1) << "no wait before the step's end";
    const StepStatusView v = reader.read();
    EXPECT_EQ(waits, step);
    EXPECT_EQ(reader.fetches(), step);
    EXPECT_EQ(fetched, l.bytes) << "one copy of the whole array";
    EXPECT_EQ(v.counters.loss, 6.0);
    EXPECT_EQ(v.counters.correct, 8.0);
    const StepFailure f = first_step_failure(v);
    EXPECT_EQ(f.kind, step == 3 ? StepFailure::kBatchNorm : StepFailure::kNone);
    std::fill(device.begin(), device.begin() + static_cast<std::ptrdiff_t>(l.reset_bytes), 0);  // the reset
  }
}

// ---- gradient buckets ---------------------------------------------------------------------------------

TEST(GradBuckets, ReverseBucketsCoverTheArrayTailFirst) {
  const std::vector<GradBucket> b = reverse_buckets(100, 8, 30);
  ASSERT_EQ(b.size(), 5u);
  EXPECT_EQ(b[0].offset, 92);
  EXPECT_EQ(b[0].count, 8);
  EXPECT_EQ(b[1].offset, 62);
  EXPECT_EQ(b[4].offset, 0);
  EXPECT_EQ(b[4].count, 2);
  std::int64_t covered = 0, end = 100;
  for (const GradBucket& g : b) {
    EXPECT_EQ(g.offset + g.count, end);
    end = g.offset;
    covered += g.count;
  }
  EXPECT_EQ(covered, 100);
  EXPECT_TRUE(reverse_buckets(0, 8, 30).empty());
  EXPECT_THROW(reverse_buckets(10, 0, 30), Error);
}

TEST(GradBuckets, ABucketIsDueOnlyOnceEveryOverlappingParameterIsCompleteAndInOrder) {
  // Parameters [0,10) [10,40) [40,45) [45,100); buckets (reverse) [92,100) [62,92) [32,62) [2,32) [0,2).
  BucketSchedule s({{0, 10}, {10, 30}, {40, 5}, {45, 55}}, reverse_buckets(100, 8, 30));
  EXPECT_TRUE(s.take_ready().empty());
  s.complete(45);  // covers buckets 0, 1 and part of 2
  EXPECT_EQ(s.take_ready(), (std::vector<int>{0, 1}));
  s.complete(0);  // bucket 4 is complete, but bucket 2 and 3 are not: launch order is bucket order
  EXPECT_TRUE(s.take_ready().empty());
  s.complete(40);
  EXPECT_TRUE(s.take_ready().empty()) << "bucket 2 also overlaps [10,40)";
  s.complete(10);
  s.complete(10);  // twice: no effect
  EXPECT_EQ(s.take_ready(), (std::vector<int>{2, 3, 4}));
  EXPECT_TRUE(s.take_rest().empty());
  EXPECT_EQ(s.launched(), 5);
  EXPECT_THROW(s.complete(11), Error);
  s.reset();
  EXPECT_EQ(s.launched(), 0);
  s.complete(45);
  EXPECT_EQ(s.take_ready(), (std::vector<int>{0, 1}));
  EXPECT_EQ(s.take_rest(), (std::vector<int>{2, 3, 4})) << "reduce_and_update launches what is left";
}

// On a real plan (a ResNet, its parameters in ParamStore order), completing the layers' parameters in
// reverse order (the backward's) launches every bucket exactly once, in order, each as soon as its last
// parameter is complete (not earlier, not later).
TEST(GradBuckets, OnAResnetPlanEveryBucketLaunchesOnceAfterItsParameters) {
  ModelSpec spec;
  spec.arch = "resnet";
  spec.width = 16;
  spec.depth = 2;
  spec.in_channels = 3;
  spec.height = spec.width_px = 32;
  spec.norm = parse_norm("sync");
  ParamStore params;
  plan_network(spec, params);
  std::vector<std::pair<std::int64_t, std::int64_t>> spans;
  for (const ParamInfo& p : params.all()) spans.emplace_back(p.offset, p.size);
  const std::int64_t total = params.total();
  BucketSchedule s(spans, reverse_buckets(total, total / 20 + 1, total / 6 + 1));
  ASSERT_GE(s.buckets().size(), 4u);
  std::vector<int> order;
  std::int64_t lowest_done = total;  // parameters from here on are complete
  for (std::size_t k = spans.size(); k-- > 0;) {
    s.complete(spans[k].first);
    lowest_done = spans[k].first;
    for (int b : s.take_ready()) {
      EXPECT_GE(s.buckets()[static_cast<std::size_t>(b)].offset, lowest_done) << "bucket " << b << " launched early";
      order.push_back(b);
    }
    // Complete is [lowest_done, total): the next bucket must not be complete yet (not launched late).
    if (s.launched() < static_cast<int>(s.buckets().size())) {
      EXPECT_LT(s.buckets()[static_cast<std::size_t>(s.launched())].offset, lowest_done) << "bucket launched late";
    }
  }
  EXPECT_TRUE(s.take_rest().empty());
  ASSERT_EQ(order.size(), s.buckets().size());
  for (std::size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], static_cast<int>(i));
}

// ---- SyncBN message size classes ----------------------------------------------------------------------

// Bytes of one step's SyncBN messages (forward + backward per layer) for a group of these layers.
std::int64_t step_bytes(const std::vector<std::int64_t>& channels, bool padded_to_widest) {
  const std::int64_t widest = *std::max_element(channels.begin(), channels.end());
  std::int64_t bytes = 0;
  for (std::int64_t c : channels)
    bytes += 2 * 8 * bn_msg_size(padded_to_widest ? widest : bn_message_channels(c, widest));
  return bytes;
}

// ResNet-50's 53 BatchNorm layers: stem 64; per stage (width w, blocks n): n·(w, w, 4w) + one shortcut 4w.
std::vector<std::int64_t> resnet50_channels() {
  std::vector<std::int64_t> c = {64};
  const std::int64_t widths[] = {64, 128, 256, 512}, blocks[] = {3, 4, 6, 3};
  for (int s = 0; s < 4; ++s) {
    for (int b = 0; b < blocks[s]; ++b) c.insert(c.end(), {widths[s], widths[s], 4 * widths[s]});
    c.push_back(4 * widths[s]);
  }
  return c;
}

TEST(SyncBnMessage, SizeClassesKeepNarrowLayersTogetherAndDropThePaddingToTheWidest) {
  EXPECT_EQ(bn_message_channels(8, 16), 16) << "capped at the group's widest";
  EXPECT_EQ(bn_message_channels(16, 16), 16);
  EXPECT_EQ(bn_message_channels(8, 512), 64) << "narrow layers share one class: their mismatch compares tags";
  EXPECT_EQ(bn_message_channels(64, 2048), 64);
  EXPECT_EQ(bn_message_channels(65, 2048), 128);
  EXPECT_EQ(bn_message_channels(100, 100), 100);
  EXPECT_EQ(bn_message_channels(2048, 2048), 2048);
  const std::vector<std::int64_t> r50 = resnet50_channels();
  ASSERT_EQ(r50.size(), 53u);
  for (std::int64_t c : r50) EXPECT_EQ(bn_message_channels(c, 2048), c) << "ResNet widths are their own class";
  EXPECT_EQ(8 * bn_msg_size(bn_message_channels(64, 2048)), 1048) << "~1 KB for a 64-channel layer";
  EXPECT_EQ(8 * bn_msg_size(2048), 32792) << "the old padding: 32.8 KB for every layer";
  // The figures of docs/GPU.md: bytes per step, before (padded to the widest) and after (size classes).
  const std::vector<std::int64_t> convnet = {32, 64, 128, 256};  // the default convnet (--width 32)
  const std::int64_t r50_old = step_bytes(r50, true), r50_new = step_bytes(r50, false);
  const std::int64_t cn_old = step_bytes(convnet, true), cn_new = step_bytes(convnet, false);
  std::printf("# SyncBN bytes per step: resnet50 %lld -> %lld, convnet %lld -> %lld\n", static_cast<long long>(r50_old),
              static_cast<long long>(r50_new), static_cast<long long>(cn_old), static_cast<long long>(cn_new));
  EXPECT_LT(r50_new * 3, r50_old) << "ResNet-50: at least 3x fewer bytes";
  EXPECT_LT(cn_new, cn_old);
}

}  // namespace
}  // namespace syncbn::cuda::train
