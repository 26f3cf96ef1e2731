#include "syncbn/sync_batchnorm.h"

#include <chrono>
#include <cstdlib>

#include "syncbn/error.h"

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

// ---- layer ------------------------------------------------------------------------------------

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

SyncBatchNorm::SyncBatchNorm(std::string name, const BatchNormOptions& options, SyncGroup* group)
    : name_(std::move(name)),
      opt_(options),
      sync_group_(group),
      group_(group ? group->comm() : nullptr),
      group_size_(group_ ? group_->size() : 1) {
  const std::string who = "SyncBatchNorm '" + name_ + "'";
  SBN_CHECK(opt_.channels > 0, who + ": channels must be positive, got " + std::to_string(opt_.channels));
  SBN_CHECK(opt_.eps > 0, who + ": eps must be positive");
  SBN_CHECK(!opt_.momentum || (*opt_.momentum >= 0 && *opt_.momentum <= 1),
            who + ": momentum must be in [0, 1]");
  SBN_CHECK(opt_.ghost_batch >= 0, who + ": ghost batch must be >= 0");
  SBN_CHECK(opt_.ghost_batch == 0 || group_ == nullptr,
            who + ": ghost batches need local statistics (mode local)");
  fwd_tag_ = bn_layer_tag(name_, "forward", opt_.channels);
  bwd_tag_ = bn_layer_tag(name_, "backward", opt_.channels);
  fwd_label_ = name_ + ".forward";
  bwd_label_ = name_ + ".backward";
  const auto C = static_cast<std::size_t>(opt_.channels);
  gamma_.assign(C, 1.0f);
  beta_.assign(C, 0.0f);
  dgamma_.assign(C, 0.0f);
  dbeta_.assign(C, 0.0f);
  dgamma64_.assign(C, 0.0);
  dbeta64_.assign(C, 0.0);
  running_mean_.assign(C, 0.0f);
  running_var_.assign(C, 1.0f);
  pivot_.assign(C, 0.0);
  local_pivot_.assign(C, 0.0);
  if (sync_group_) sync_group_->reserve_channels(opt_.channels);
  resize_chunks(1);
}

std::int64_t SyncBatchNorm::local_block_channels(const BnGeometry& g, int arrays) const {
  // Planar: blocks whose inputs (x; or x and dy) take about half of a 2 MB L2, so the second pass finds
  // them in cache; small tensors go in one block. Channels-last tensors are not blocked: a block would
  // be a slice of every row, and reading 64 of every C·4 bytes defeated the prefetchers (measured 2x
  // slower than two full passes).
  constexpr std::int64_t kBlockBytes = 1 << 20;
  const std::int64_t per_channel = g.per_channel() * static_cast<std::int64_t>(sizeof(float)) * arrays;
  if (g.channels_last || per_channel * g.channels <= kBlockBytes || per_channel == 0) return g.channels;
  return std::min(g.channels, std::max<std::int64_t>(1, kBlockBytes / per_channel));
}

void SyncBatchNorm::resize_chunks(std::int64_t chunks) {
  if (chunks == chunks_) return;
  chunks_ = chunks;
  const auto n = static_cast<std::size_t>(chunks * opt_.channels);
  for (auto* v : {&mean_, &var_, &invstd_}) v->assign(n, 0.0);
  for (auto* v : {&hi_, &a_, &b_, &k1_, &k0_}) v->assign(n, 0.0f);
  counts_.assign(static_cast<std::size_t>(chunks), 0.0);
}

BnGeometry SyncBatchNorm::validate(const Tensor& x, const char* phase) const {
  const std::string who = "SyncBatchNorm '" + name_ + "' " + phase;
  BnGeometry g = bn_geometry(x.shape(), x.layout(), who);
  SBN_CHECK(g.channels == opt_.channels,
            who + ": input has " + std::to_string(g.channels) + " channels, the layer expects " +
                std::to_string(opt_.channels) + " (input " + describe(x.shape(), x.layout()) + ")");
  return g;
}

void SyncBatchNorm::fail_collectively(const char* phase, const std::string& why) {
  // Still take part in the group's all-reduce, with a tag no layer uses (0): the peers' tag checks
  // fail and they report this layer too, instead of waiting for us until the timeout.
  if (group_) {
    std::fill(msg_.begin(), msg_.end(), 0.0);
    try {
      reduce(phase);
    } catch (const Error&) {
      // The collective itself failed; the input error below is the root cause to report.
    }
  }
  throw Error(why);
}

void SyncBatchNorm::size_message() {
  // The group's common message length (see SyncGroup): the kernels fill the first 3 + 2C doubles, the
  // padding stays zero. Resized once, on the first call after the group's last layer was built.
  const auto len = static_cast<std::size_t>(sync_group_ ? sync_group_->message_size() : bn_msg_size(opt_.channels));
  if (msg_.size() != len) msg_.assign(len, 0.0);
}

void SyncBatchNorm::reduce(const char* phase) {
  const auto t0 = std::chrono::steady_clock::now();
  group_->allreduce_sum(msg_.data(), msg_.size(), phase[0] == 'f' ? fwd_label_.c_str() : bwd_label_.c_str());
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void SyncBatchNorm::forward(const Tensor& x, Tensor& y, bool training) {
  Communicator* comm = training ? group_ : nullptr;  // eval never communicates
  size_message();
  BnGeometry g;
  try {
    g = validate(x, "forward");
  } catch (const Error& e) {
    if (comm) fail_collectively("forward", e.what());
    throw;
  }
  const std::int64_t C = opt_.channels;
  const std::int64_t N = x.rank() ? x.dim(0) : 0;
  const bool batch_stats = training || !opt_.track_running_stats;
  batches_ = bn_chunks(N, batch_stats ? opt_.ghost_batch : 0);
  resize_chunks(batches_.count);
  saved_batch_stats_ = batch_stats;
  saved_comm_ = comm;
  saved_samples_ = N;
  y.resize(x.shape(), x.layout());
  const bool stream = x.numel() * static_cast<std::int64_t>(sizeof(float)) >= opt_.stream_threshold_bytes;
  const float* gamma = opt_.affine ? gamma_.data() : nullptr;
  const float* beta = opt_.affine ? beta_.data() : nullptr;

  for (std::int64_t k = 0; k < batches_.count; ++k) {
    const auto [gk, off] = batches_.slice(g, N, k);
    const std::size_t p = static_cast<std::size_t>(k * C);
    if (!batch_stats) {
      // Eval with running statistics: constants, no reduction, no communication.
      for (std::int64_t c = 0; c < C; ++c) {
        const double mean = running_mean_[c];
        const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var_[c]) + opt_.eps);
        mean_[p + c] = mean;
        var_[p + c] = running_var_[c];
        invstd_[p + c] = invstd;
        bn_forward_coefs(mean, invstd, gamma ? gamma[c] : 1.0, beta ? beta[c] : 0.0, &hi_[p + c],
                         &a_[p + c], &b_[p + c]);
      }
    } else if (bn_local_empty_batch(gk, comm != nullptr)) {
      // PyTorch's empty batch: nothing to normalize, running statistics untouched, the batch counted.
      counts_[static_cast<std::size_t>(k)] = 0;
      if (k == 0) group_count_ = 0;
      if (training && opt_.track_running_stats) ++num_batches_tracked_;
      continue;
    } else {
      // Synced statistics combine sums from several ranks around a common pivot (the group's previous
      // mean); local ones need no common pivot, so they use the batch's own first values (exact, and
      // independent of history: local BN on P ranks, ghost batches and accumulation then agree bit for bit).
      double* pivot = comm ? pivot_.data() : local_pivot_.data();
      BnLayerArrays arrays;
      arrays.channels = C;
      arrays.gamma = gamma;
      arrays.beta = beta;
      arrays.running_mean = running_mean_.data();
      arrays.running_var = running_var_.data();
      arrays.pivot = pivot;
      arrays.mean = mean_.data();
      arrays.var = var_.data();
      arrays.invstd = invstd_.data();
      arrays.hi = hi_.data();
      arrays.a = a_.data();
      arrays.b = b_.data();
      const bool update = training && opt_.track_running_stats;
      const BnCombineArgs args = bn_combine_args(arrays, k, comm ? group_size_ : 1, fwd_tag_, opt_.eps,
                                                 BnRunningUpdate::of(update, opt_.momentum, num_batches_tracked_));
      // Synced: one pass over every channel, the all-reduce, then normalize. Local: no all-reduce in
      // between, so an L2-sized block of channels goes through stats, combine and normalize before the
      // next block: normalize reads the block from cache, and the forward reads x from memory once.
      const std::int64_t block = comm ? C : local_block_channels(gk, 1);
      for (std::int64_t c0 = 0; c0 < C; c0 += block) {
        const cpu::ChannelRange range{c0, std::min(C, c0 + block)};
        if (!comm) cpu::bn_first_values(x.data() + off, gk, local_pivot_.data(), range);
        cpu::bn_stats(x.data() + off, gk, pivot, fwd_tag_, msg_.data(), range);
        if (comm) reduce("forward");
        const BnStatus st = cpu::bn_combine(msg_.data(), args, range);
        counts_[static_cast<std::size_t>(k)] = msg_[kMsgCount];
        if (k == 0) group_count_ = msg_[kMsgCount];
        if (st != kBnOk) throw_bn_status(st, name_, "forward", comm ? group_size_ : 0, msg_[kMsgCount], 0);
        cpu::bn_normalize(x.data() + off, gk, &hi_[p], &a_[p], &b_[p], opt_.fuse_relu, stream, y.data() + off, range);
      }
      if (update) ++num_batches_tracked_;
      continue;
    }
    cpu::bn_normalize(x.data() + off, gk, &hi_[p], &a_[p], &b_[p], opt_.fuse_relu, stream, y.data() + off);
  }
}

void SyncBatchNorm::backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  Communicator* comm = saved_comm_;
  size_message();
  BnGeometry g;
  try {
    g = validate(x, "backward");
    SBN_CHECK(dy.shape() == x.shape() && dy.layout() == x.layout(),
              "SyncBatchNorm '" + name_ + "' backward: gradient " + describe(dy.shape(), dy.layout()) +
                  " does not match the input " + describe(x.shape(), x.layout()));
    SBN_CHECK(saved_samples_ >= 0, "SyncBatchNorm '" + name_ + "' backward: called before any forward");
    SBN_CHECK(x.dim(0) == saved_samples_,
              "SyncBatchNorm '" + name_ + "' backward: the input's batch (" + std::to_string(x.dim(0)) +
                  " samples) differs from the last forward's (" + std::to_string(saved_samples_) + ")");
  } catch (const Error& e) {
    if (comm) fail_collectively("backward", e.what());
    throw;
  }
  const std::int64_t C = opt_.channels;
  const std::int64_t N = x.dim(0);
  dx.resize(x.shape(), x.layout());
  const bool stream = x.numel() * static_cast<std::int64_t>(sizeof(float)) >= opt_.stream_threshold_bytes;
  float* dgamma = opt_.affine ? dgamma_.data() : nullptr;
  float* dbeta = opt_.affine ? dbeta_.data() : nullptr;

  for (std::int64_t k = 0; k < batches_.count; ++k) {
    const auto [gk, off] = batches_.slice(g, N, k);
    const std::size_t p = static_cast<std::size_t>(k * C);
    if (saved_batch_stats_ && bn_local_empty_batch(gk, comm != nullptr)) continue;  // forward's empty batch
    // As in forward: synced statistics need the all-reduce between the two passes; local ones go block
    // by block of channels, so elemt reads x and dy from cache.
    const std::int64_t block = comm ? C : local_block_channels(gk, 2);
    for (std::int64_t c0 = 0; c0 < C; c0 += block) {
      const cpu::ChannelRange range{c0, std::min(C, c0 + block)};
      cpu::bn_backward_reduce(dy.data() + off, x.data() + off, gk, &hi_[p], &a_[p], &b_[p], opt_.fuse_relu,
                              &mean_[p], &invstd_[p], bwd_tag_, msg_.data(), dgamma, dbeta, range);
      if (opt_.affine) {  // the local sums, before the all-reduce replaces them with the group's
        for (std::int64_t c = range.begin; c < range.end; ++c) {
          const double A = msg_[static_cast<std::size_t>(kMsgHeader + c)];
          const double B = msg_[static_cast<std::size_t>(kMsgHeader + C + c)];
          dbeta64_[static_cast<std::size_t>(c)] += A;
          dgamma64_[static_cast<std::size_t>(c)] +=
              invstd_[p + c] * (B - (mean_[p + c] - static_cast<double>(hi_[p + c])) * A);
        }
      }
      if (saved_batch_stats_) {
        if (comm) reduce("backward");
        BnLayerArrays arrays;
        arrays.channels = C;
        arrays.gamma = opt_.affine ? gamma_.data() : nullptr;
        arrays.mean = mean_.data();
        arrays.invstd = invstd_.data();
        arrays.hi = hi_.data();
        arrays.k1 = k1_.data();
        arrays.k0 = k0_.data();
        const BnBackwardCombineArgs args = bn_backward_combine_args(arrays, k, comm ? group_size_ : 1, bwd_tag_,
                                                                    counts_[static_cast<std::size_t>(k)]);
        const BnStatus st = cpu::bn_backward_combine(msg_.data(), args, range);
        if (st != kBnOk)
          throw_bn_status(st, name_, "backward", comm ? group_size_ : 0, msg_[kMsgCount], args.expected_count);
      } else {
        // Statistics were constants (running stats): dx = a·dy'.
        std::fill(&k1_[p + range.begin], &k1_[p + range.end], 0.0f);
        std::fill(&k0_[p + range.begin], &k0_[p + range.end], 0.0f);
      }
      cpu::bn_backward_elemt(dy.data() + off, x.data() + off, gk, &hi_[p], &a_[p], &b_[p], opt_.fuse_relu,
                             &k1_[p], &k0_[p], stream, dx.data() + off, range);
    }
  }
}

}  // namespace syncbn
