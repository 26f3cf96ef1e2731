// The host side shared by the CPU and CUDA SyncBN layers (bn_layer.h).
#include "syncbn/bn_layer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace syncbn {

// ---- modes ------------------------------------------------------------------------------------

std::string SyncMode::str() const {
  switch (kind) {
    case kLocal: return "local";
    case kSync: return "sync";
    case kGroups: return "sync:" + std::to_string(group_size);
  }
  return "?";
}

SyncMode parse_sync_mode(const std::string& text) {
  SyncMode m;
  if (text == "local") {
    m.kind = SyncMode::kLocal;
  } else if (text == "sync") {
    m.kind = SyncMode::kSync;
  } else if (text.rfind("sync:", 0) == 0) {
    const std::string k = text.substr(5);
    char* end = nullptr;
    const long v = k.empty() ? 0 : std::strtol(k.c_str(), &end, 10);
    SBN_CHECK(!k.empty() && end && *end == '\0' && v >= 1 && v <= 1 << 20,
              "sync mode '" + text + "': K in sync:K must be a positive integer");
    m.kind = SyncMode::kGroups;
    m.group_size = static_cast<int>(v);
  } else {
    SBN_FAIL("unknown sync mode '" + text + "'; expected local, sync or sync:K");
  }
  return m;
}

SyncGroup::SyncGroup(Communicator& world, const SyncMode& mode) : mode_(mode) {
  switch (mode.kind) {
    case SyncMode::kLocal: comm_ = nullptr; break;
    case SyncMode::kSync: comm_ = &world; break;
    case SyncMode::kGroups:
      SBN_CHECK(world.size() % mode.group_size == 0,
                "sync mode " + mode.str() + ": K = " + std::to_string(mode.group_size) +
                    " does not divide the world size " + std::to_string(world.size()));
      owned_ = world.split(world.rank() / mode.group_size, world.rank(), "sync group split");
      comm_ = owned_.get();
      break;
  }
}

void SyncGroup::reserve_channels(std::int64_t channels) { max_channels_ = std::max(max_channels_, channels); }

std::int64_t bn_message_channels(std::int64_t channels, std::int64_t max_channels) {
  std::int64_t c = kBnMessageMinChannels;
  while (c < channels) c *= 2;
  return std::max(channels, std::min(c, max_channels));
}

// ---- tags, statuses, empty batches ------------------------------------------------------------

double bn_layer_tag(const std::string& layer, const char* phase, std::int64_t channels) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  const std::string key = layer + "/" + phase + "/" + std::to_string(channels);
  for (unsigned char ch : key) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return static_cast<double>(1 + h % ((1u << 20) - 1));
}

void throw_bn_status(BnStatus status, const std::string& layer, const char* phase, int group_size,
                     double count, double forward_count) {
  const std::string who = "SyncBatchNorm '" + layer + "' " + phase;
  const std::string scope =
      group_size > 0 ? "the sync group (" + std::to_string(group_size) + " ranks)" : "this rank";
  switch (status) {
    case kBnTagMismatch:
      SBN_FAIL(who + ": ranks of the sync group are not in the same layer (tag check failed): a peer "
                     "runs a different layer or phase, or rejected its input; check that every rank "
                     "builds the same model and calls its layers in the same order");
    case kBnEmptyBatch:
      SBN_FAIL(who + ": the batch of " + scope + " is empty (global count 0)");
    case kBnSingleSample:
      SBN_FAIL(who + ": expected more than 1 value per channel when training, " + scope +
               " has 1 (a reduction count of 1 has no variance)");
    case kBnCountMismatch:
      SBN_FAIL(who + ": the gradient covers " + std::to_string(static_cast<long long>(count)) +
               " values per channel, the forward " + std::to_string(static_cast<long long>(forward_count)) +
               "; backward must follow its forward");
    case kBnOk: break;
  }
  SBN_FAIL(who + ": unexpected status " + std::to_string(static_cast<int>(status)));
}

bool bn_local_empty_batch(const BnGeometry& chunk, bool synced) { return !synced && chunk.per_channel() == 0; }


// ---- BnLayerHost ------------------------------------------------------------------------------

BnLayerHost::BnLayerHost(std::string name, const BatchNormOptions& options, SyncGroup* group)
    : name_(std::move(name)),
      opt_(options),
      sync_group_(group),
      group_(group ? group->comm() : nullptr),
      group_size_(group_ ? group_->size() : 1),
      fwd_tag_(bn_layer_tag(name_, "forward", opt_.channels)),
      bwd_tag_(bn_layer_tag(name_, "backward", opt_.channels)),
      fwd_label_(name_ + ".forward"),
      bwd_label_(name_ + ".backward") {
  const std::string who = this->who();
  SBN_CHECK(opt_.channels > 0, who + ": channels must be positive, got " + std::to_string(opt_.channels));
  SBN_CHECK(opt_.eps > 0, who + ": eps must be positive");
  SBN_CHECK(!opt_.momentum || (*opt_.momentum >= 0 && *opt_.momentum <= 1), who + ": momentum must be in [0, 1]");
  SBN_CHECK(opt_.ghost_batch >= 0, who + ": ghost batch must be >= 0");
  SBN_CHECK(opt_.ghost_batch == 0 || group_ == nullptr, who + ": ghost batches need local statistics (mode local)");
  SBN_CHECK(!opt_.renorm || opt_.track_running_stats, who + ": Batch Renormalization needs running statistics");
  if (opt_.renorm) set_renorm_limits(opt_.renorm_rmax, opt_.renorm_dmax);
}

void BnLayerHost::set_renorm_limits(double rmax, double dmax) {
  SBN_CHECK(opt_.renorm, who() + ": Batch Renormalization limits for a layer without renorm");
  SBN_CHECK(rmax >= 1.0 && dmax >= 0.0 && std::isfinite(rmax) && std::isfinite(dmax),
            who() + ": Batch Renormalization needs rmax >= 1 and dmax >= 0 (finite), got rmax " +
                std::to_string(rmax) + ", dmax " + std::to_string(dmax));
  renorm_limits_ = {true, rmax, dmax};
}

std::string BnLayerHost::who() const { return "SyncBatchNorm '" + name_ + "'"; }

std::size_t BnLayerHost::message_doubles() const {
  // The kernels fill the first 3 + 2C doubles; the padding up to the size class stays zero.
  return static_cast<std::size_t>(sync_group_ ? sync_group_->message_size(opt_.channels) : bn_msg_size(opt_.channels));
}

BnGeometry BnLayerHost::validate(const BnInputDesc& x, const char* phase) const {
  const std::string who = this->who() + " " + phase;
  BnGeometry g = bn_geometry(x.shape, x.layout, who);
  SBN_CHECK(g.channels == opt_.channels,
            who + ": input has " + std::to_string(g.channels) + " channels, the layer expects " +
                std::to_string(opt_.channels) + " (input " + describe(x.shape, x.layout) + ")");
  return g;
}

void BnLayerHost::check_gradient(const BnInputDesc& x, const BnInputDesc& dy) const {
  const std::string who = this->who() + " backward";
  SBN_CHECK(dy.shape == x.shape && dy.layout == x.layout,
            who + ": gradient " + describe(dy.shape, dy.layout) + " does not match the input " +
                describe(x.shape, x.layout));
  SBN_CHECK(!x.dtype || !dy.dtype || std::strcmp(x.dtype, dy.dtype) == 0,
            who + ": gradient dtype " + dy.dtype + " differs from the input's " + x.dtype);
  SBN_CHECK(saved_samples_ >= 0, who + ": called before any forward");
  SBN_CHECK(x.shape[0] == saved_samples_, who + ": the input's batch (" + std::to_string(x.shape[0]) +
                                              " samples) differs from the last forward's (" +
                                              std::to_string(saved_samples_) + ")");
}

void BnLayerHost::fail_collectively(const char* phase, const std::string& why) {
  if (group_) {
    try {
      reduce_zero_message(phase);
    } catch (const Error&) {
      // The collective itself failed; the input error below is the root cause to report.
    }
  }
  throw Error(why);
}

BnCall BnLayerHost::begin_forward(const BnInputDesc& x, bool training) {
  BnCall call;
  call.comm = training ? group_ : nullptr;  // eval never communicates
  call.geometry = checked(call.comm, "forward", [&] { return validate(x, "forward"); });
  call.samples = x.shape.empty() ? 0 : x.shape[0];
  call.batch_stats = training || !opt_.track_running_stats;
  call.update = training && opt_.track_running_stats && !pop_open_;  // a population pass moves nothing
  batches_ = bn_chunks(call.samples, call.batch_stats ? opt_.ghost_batch : 0);
  size_buffers(call.geometry, batches_.count);
  saved_batch_stats_ = call.batch_stats;
  saved_comm_ = call.comm;
  saved_samples_ = call.samples;
  return call;
}

BnCall BnLayerHost::begin_backward(const BnInputDesc& x, const BnInputDesc& dy) {
  BnCall call;
  call.comm = saved_comm_;  // backward reduces over the forward's group
  call.geometry = checked(call.comm, "backward", [&] {
    const BnGeometry g = validate(x, "backward");
    check_gradient(x, dy);
    return g;
  });
  call.samples = x.shape[0];
  call.batch_stats = saved_batch_stats_;
  return call;
}

BnCallBatch BnLayerHost::batch(const BnCall& call, std::int64_t k) const {
  const BnChunks::Slice s = batches_.slice(call.geometry, call.samples, k);
  BnCallBatch b;
  b.geometry = s.geometry;
  b.offset = s.offset;
  b.block = k * opt_.channels;
  if (!call.batch_stats) {
    b.kind = BnCallBatch::kRunning;
  } else if (bn_local_empty_batch(s.geometry, call.comm != nullptr)) {
    b.kind = BnCallBatch::kEmpty;
  } else {
    b.kind = BnCallBatch::kBatchStats;
  }
  return b;
}

BnCombineArgs BnLayerHost::combine_args(const BnLayerArrays& arrays, std::int64_t k, const BnCall& call,
                                        std::int64_t batches_tracked) const {
  BnLayerArrays a = arrays;
  if (!opt_.affine) a.gamma = a.beta = nullptr;
  return bn_combine_args(a, k, call.comm ? group_size_ : 1, fwd_tag_, opt_.eps,
                         BnRunningUpdate::of(call.update, opt_.momentum, batches_tracked),
                         renorm(call) ? renorm_limits_ : BnRenormLimits{});
}

BnBackwardCombineArgs BnLayerHost::backward_combine_args(const BnLayerArrays& arrays, std::int64_t k,
                                                         const BnCall& call, double expected_count) const {
  BnLayerArrays a = arrays;
  if (!opt_.affine) a.gamma = a.beta = nullptr;
  return bn_backward_combine_args(a, k, call.comm ? group_size_ : 1, bwd_tag_, expected_count, renorm(call));
}

BnRenormFactors BnLayerHost::renorm_factors(const BnLayerArrays& arrays, std::int64_t k, const BnCall& call) const {
  if (!renorm(call) || batch(call, k).kind != BnCallBatch::kBatchStats) return {};
  const BnLayerArrays a = arrays.batch(k);
  return {a.renorm_r, a.renorm_d};
}

void BnLayerHost::check_status(BnStatus status, const char* phase, double count, double forward_count) const {
  if (status != kBnOk) throw_bn_status(status, name_, phase, saved_comm_ ? group_size_ : 0, count, forward_count);
}

void BnLayerHost::check_step_status(const BnStepStatus& status) const {
  check_status(static_cast<BnStatus>(status.forward), "forward", 0, 0);
  check_status(static_cast<BnStatus>(status.backward), "backward", status.backward_count, status.backward_expected);
}

// ---- population pass (PreciseBN) ---------------------------------------------------------------

void BnLayerHost::open_population() {
  pop_open_ = true;
  pop_pivot_set_ = false;
}

bool BnLayerHost::population_pivot_due(const BnCall& call) {
  if (!pop_open_ || pop_pivot_set_ || !call.batch_stats) return false;
  if (batch(call, 0).kind != BnCallBatch::kBatchStats) return false;  // a local empty batch: no mean yet
  pop_pivot_set_ = true;
  return true;
}

void BnLayerHost::close_population(Communicator& world, const double* pivot, const double* acc, float* running_mean,
                                   float* running_var) {
  const std::string who = this->who() + " PreciseBN";
  SBN_CHECK(pop_open_, who + ": finish_population without begin_population");
  pop_open_ = false;
  const std::int64_t C = opt_.channels;
  const double tag = bn_layer_tag(name_, "population", C);
  // [tag, tag², n, S1 (C), S2 (C), P·S1 (C), n·P (C), n·P² (C)]: one message, one all-reduce.
  std::vector<double> msg(static_cast<std::size_t>(kMsgHeader + 5 * C), 0.0);
  msg[kMsgTag] = tag;
  msg[kMsgTag2] = tag * tag;
  msg[kMsgCount] = acc[0];
  double* t = msg.data() + kMsgHeader;
  for (std::int64_t c = 0; c < C; ++c)
    bn_population_terms(acc[0], acc[1 + c], acc[1 + C + c], pivot[c], &t[c], &t[C + c], &t[2 * C + c],
                        &t[3 * C + c], &t[4 * C + c]);
  world.allreduce_sum(msg.data(), msg.size(), (name_ + ".population").c_str());
  SBN_CHECK(bn_tags_agree(msg[kMsgTag], msg[kMsgTag2], world.size(), tag),
            who + ": the ranks are in different layers (the models differ)");
  const double n = msg[kMsgCount];
  SBN_CHECK(n >= 2, who + ": the population batches hold " + std::to_string(static_cast<long long>(n)) +
                        " value(s) per channel; at least 2 are needed");
  if (!running_mean) return;
  for (std::int64_t c = 0; c < C; ++c) {
    double mean = 0, var = 0;
    bn_population_moments(n, t[c], t[C + c], t[2 * C + c], t[3 * C + c], t[4 * C + c], &mean, &var);
    running_mean[c] = static_cast<float>(mean);
    running_var[c] = static_cast<float>(var);
  }
}

}  // namespace syncbn
