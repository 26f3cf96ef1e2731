// SyncBatchNorm: the CPU layer, BnLayerHost's steps (bn_layer.h) over the CPU kernels (bn_kernels.h),
// host vectors and the group's Communicator. Local statistics are blocked by channels (see forward).
#include "syncbn/sync_batchnorm.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "syncbn/error.h"

namespace syncbn {
namespace {

// Calls f with t's elements from `offset` on, typed by its dtype (const float* or const Bf16*).
template <class F>
void with_elements(const Tensor& t, std::int64_t offset, F&& f) {
  if (t.dtype() == ElementType::kBF16) {
    f(t.bf16() + offset);
  } else {
    f(t.data() + offset);
  }
}

template <class F>
void with_elements(Tensor& t, std::int64_t offset, F&& f) {
  if (t.dtype() == ElementType::kBF16) {
    f(t.bf16() + offset);
  } else {
    f(t.data() + offset);
  }
}

// t's elements typed as `like` (dx is resized to x's dtype).
float* elements_like(Tensor& t, const float*) { return t.data(); }
Bf16* elements_like(Tensor& t, const Bf16*) { return t.bf16(); }

}  // namespace

SyncBatchNorm::SyncBatchNorm(std::string name, const BatchNormOptions& options, SyncGroup* group)
    : BnLayerHost(std::move(name), options, group) {
  const auto C = static_cast<std::size_t>(opt_.channels);
  bn_.gamma.assign(C, 1.0f);
  bn_.beta.assign(C, 0.0f);
  dgamma_.assign(C, 0.0f);
  dbeta_.assign(C, 0.0f);
  dgamma64_.assign(C, 0.0);
  dbeta64_.assign(C, 0.0);
  bn_.running_mean.assign(C, 0.0f);
  bn_.running_var.assign(C, 1.0f);
  bn_.pivot.assign(C, 0.0);
  local_pivot_.assign(C, 0.0);
  if (sync_group_) sync_group_->reserve_channels(opt_.channels);
  SyncBatchNorm::size_buffers(BnGeometry{}, 1);
}

// ---- helpers ----------------------------------------------------------------------------------

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

void SyncBatchNorm::size_buffers(const BnGeometry& /*g*/, std::int64_t batches) {
  if (batches == chunks_) return;
  chunks_ = batches;
  const auto n = static_cast<std::size_t>(batches * opt_.channels);
  for (auto* v : {&bn_.mean, &bn_.var, &bn_.invstd}) v->assign(n, 0.0);
  for (auto* v : {&bn_.hi, &bn_.a, &bn_.b, &bn_.k1, &bn_.k0}) v->assign(n, 0.0f);
  if (opt_.renorm)
    for (auto* v : {&bn_.renorm_r, &bn_.renorm_d}) v->assign(n, 0.0);
  counts_.assign(static_cast<std::size_t>(batches), 0.0);
}

void SyncBatchNorm::size_message() {
  // Resized once, on the first call after the group's last layer was built.
  const std::size_t len = message_doubles();
  if (msg_.size() != len) msg_.assign(len, 0.0);
}

void SyncBatchNorm::reduce_zero_message(const char* phase) {
  std::fill(msg_.begin(), msg_.end(), 0.0);
  reduce(phase);
}

void SyncBatchNorm::reduce(const char* phase) {
  const auto t0 = std::chrono::steady_clock::now();
  group_->allreduce_sum(msg_.data(), msg_.size(), label(phase));
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- forward ----------------------------------------------------------------------------------

void SyncBatchNorm::forward(const Tensor& x, Tensor& y, bool training) {
  SBN_CHECK(x.dtype() == ElementType::kF32, who() + ": bf16 input; only the fused BN+pool pass reads bf16 activations");
  pool_ = {};
  forward_impl(x, y, training);
}

void SyncBatchNorm::forward_pool(const Tensor& x, Tensor& y, std::int64_t k, bool training, ElementType out) {
  // Checked before the collective steps: the shape past N is the same on every rank, so either every rank
  // of the group throws here or none does.
  SBN_CHECK(k >= 1 && k <= kMaxPoolWindow, who() + " fused max-pool: window " + std::to_string(k) + " outside [1, " +
                                               std::to_string(kMaxPoolWindow) + "]");
  SBN_CHECK(x.rank() == 4 && x.layout() == Layout::kChannelsLast && x.dim(2) / k > 0 && x.dim(3) / k > 0,
            who() + " fused max-pool " + std::to_string(k) + ": expects an NHWC input of at least " +
                std::to_string(k) + "x" + std::to_string(k) + ", got " + describe(x.shape(), x.layout()));
  pool_ = {k, x.dim(2), x.dim(3)};
  pool_out_ = out;
  pool_scratch_.resize(static_cast<std::size_t>(cpu::bn_pool_scratch_floats(opt_.channels)));
  forward_impl(x, y, training);
}

std::int64_t SyncBatchNorm::pooled_offset(std::int64_t offset) const {
  const std::int64_t plane = pool_.height * pool_.width * opt_.channels;
  return offset / plane * pool_.out_height() * pool_.out_width() * opt_.channels;
}

void SyncBatchNorm::normalize_batch(const Tensor& x, Tensor& y, const BnCallBatch& b, bool stream,
                                    cpu::ChannelRange range) {
  const auto p = static_cast<std::size_t>(b.block);
  const float* xk = x.data() + b.offset;
  if (!pool_.k) {
    cpu::bn_normalize(xk, b.geometry, &bn_.hi[p], &bn_.a[p], &bn_.b[p], opt_.fuse_relu, stream, y.data() + b.offset,
                      range);
    return;
  }
  const std::int64_t q = pooled_offset(b.offset);
  with_elements(x, b.offset, [&](const auto* xe) {
    with_elements(y, q, [&](auto* ye) {
      cpu::bn_normalize_pool(xe, b.geometry, pool_, &bn_.hi[p], &bn_.a[p], &bn_.b[p], opt_.fuse_relu, ye,
                             pool_arg_.data() + q, range);
    });
  });
}

void SyncBatchNorm::forward_impl(const Tensor& x, Tensor& y, bool training) {
  size_message();
  const BnCall call = begin_forward({x.shape(), x.layout()}, training);
  const std::int64_t C = opt_.channels;
  if (pool_.k) {
    y.resize({x.dim(0), C, pool_.out_height(), pool_.out_width()}, Layout::kChannelsLast, pool_out_);
    pool_arg_.resize(static_cast<std::size_t>(y.numel()));
  } else {
    y.resize(x.shape(), x.layout());
  }
  const bool stream = x.numel() * static_cast<std::int64_t>(sizeof(float)) >= opt_.stream_threshold_bytes;
  const float* gamma = opt_.affine ? bn_.gamma.data() : nullptr;
  const float* beta = opt_.affine ? bn_.beta.data() : nullptr;

  for (std::int64_t k = 0; k < batch_count(); ++k) {
    const BnCallBatch b = batch(call, k);
    const auto p = static_cast<std::size_t>(b.block);
    if (b.kind == BnCallBatch::kRunning) {
      // Eval with running statistics: constants, no reduction, no communication.
      for (std::int64_t c = 0; c < C; ++c) {
        const double mean = bn_.running_mean[c];
        const double invstd = 1.0 / std::sqrt(static_cast<double>(bn_.running_var[c]) + opt_.eps);
        bn_.mean[p + c] = mean;
        bn_.var[p + c] = bn_.running_var[c];
        bn_.invstd[p + c] = invstd;
        bn_forward_coefs(mean, invstd, gamma ? gamma[c] : 1.0, beta ? beta[c] : 0.0, &bn_.hi[p + c],
                         &bn_.a[p + c], &bn_.b[p + c]);
      }
    } else if (b.kind == BnCallBatch::kEmpty) {
      // PyTorch's empty batch: nothing to normalize, running statistics untouched, the batch counted.
      counts_[static_cast<std::size_t>(k)] = 0;
      if (k == 0) group_count_ = 0;
      if (call.update) ++num_batches_tracked_;
      continue;
    } else {
      forward_batch(x, y, call, b, k, stream);
      continue;
    }
    normalize_batch(x, y, b, stream, {});
  }
  if (population_open() && call.batch_stats) accumulate_population(x, call);
}

void SyncBatchNorm::forward_batch(const Tensor& x, Tensor& y, const BnCall& call, const BnCallBatch& b,
                                  std::int64_t k, bool stream) {
  const std::int64_t C = opt_.channels;
  Communicator* comm = call.comm;
  // Synced statistics combine sums from several ranks around a common pivot (the group's previous
  // mean); local ones need no common pivot, so they use the batch's own first values (exact, and
  // independent of history: local BN on P ranks, ghost batches and accumulation then agree bit for bit).
  double* pivot = comm ? bn_.pivot.data() : local_pivot_.data();
  BnLayerArrays arrays = bn_.arrays(C);
  arrays.pivot = pivot;
  const BnCombineArgs args = combine_args(arrays, k, call, num_batches_tracked_);
  // Synced: one pass over every channel, the all-reduce, then normalize. Local: no all-reduce in
  // between, so an L2-sized block of channels goes through stats, combine and normalize before the
  // next block: normalize reads the block from cache, and the forward reads x from memory once.
  const std::int64_t block = comm ? C : local_block_channels(b.geometry, 1);
  for (std::int64_t c0 = 0; c0 < C; c0 += block) {
    const cpu::ChannelRange range{c0, std::min(C, c0 + block)};
    with_elements(x, b.offset, [&](const auto* xe) {
      if (!comm) cpu::bn_first_values(xe, b.geometry, local_pivot_.data(), range);
      cpu::bn_stats(xe, b.geometry, pivot, fwd_tag_, msg_.data(), range);
    });
    if (comm) reduce("forward");
    const BnStatus st = cpu::bn_combine(msg_.data(), args, range);
    counts_[static_cast<std::size_t>(k)] = msg_[kMsgCount];
    if (k == 0) group_count_ = msg_[kMsgCount];
    check_status(st, "forward", msg_[kMsgCount], 0);
    normalize_batch(x, y, b, stream, range);
  }
  if (call.update) ++num_batches_tracked_;
}

// ---- population pass (PreciseBN) ---------------------------------------------------------------

void SyncBatchNorm::begin_population() {
  const auto C = static_cast<std::size_t>(opt_.channels);
  open_population();
  pop_pivot_.assign(C, 0.0);
  pop_acc_.assign(1 + 2 * C, 0.0);
  pop_msg_.assign(static_cast<std::size_t>(bn_msg_size(opt_.channels)), 0.0);
  pop_saved_pivot_ = bn_.pivot;
}

void SyncBatchNorm::accumulate_population(const Tensor& x, const BnCall& call) {
  const std::int64_t C = opt_.channels;
  // The pivot: the first batch mean (the group's when synced), rounded (bn_population_pivot).
  if (population_pivot_due(call))
    for (std::int64_t c = 0; c < C; ++c) pop_pivot_[c] = bn_population_pivot(bn_.mean[c]);
  if (call.geometry.per_channel() == 0) return;
  // Sums of the whole input around P: bn_stats' local shift keeps them exact whatever the offset.
  with_elements(x, 0, [&](const auto* xe) {
    cpu::bn_stats(xe, call.geometry, pop_pivot_.data(), 0.0, pop_msg_.data());
  });
  pop_acc_[0] += pop_msg_[kMsgCount];
  for (std::int64_t i = 0; i < 2 * C; ++i) pop_acc_[1 + i] += pop_msg_[kMsgHeader + i];
}

void SyncBatchNorm::finish_population(Communicator& world) {
  bn_.pivot = pop_saved_pivot_;
  close_population(world, pop_pivot_.data(), pop_acc_.data(),
                   opt_.track_running_stats ? bn_.running_mean.data() : nullptr, bn_.running_var.data());
}

// ---- backward ---------------------------------------------------------------------------------

void SyncBatchNorm::backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  SBN_CHECK(!pool_.k, who() + " backward: the last forward was forward_pool; its gradient goes to backward_pool");
  SBN_CHECK(x.dtype() == ElementType::kF32 && dy.dtype() == ElementType::kF32,
            who() + " backward: bf16 tensors; only the fused BN+pool pass reads bf16 activations");
  backward_impl(x, dy, dx);
}

void SyncBatchNorm::backward_pool(const Tensor& x, const Tensor& dy, Tensor& dx) {
  SBN_CHECK(pool_.k, who() + " backward_pool: the last forward was not forward_pool");
  const std::vector<std::int64_t> pooled{x.rank() == 4 ? x.dim(0) : -1, opt_.channels, pool_.out_height(),
                                         pool_.out_width()};
  SBN_CHECK(dy.shape() == pooled && dy.layout() == Layout::kChannelsLast && x.rank() == 4 &&
                x.dim(2) == pool_.height && x.dim(3) == pool_.width,
            who() + " backward_pool: gradient " + describe(dy.shape(), dy.layout()) + " is not the pooled output of " +
                describe(x.shape(), x.layout()));
  SBN_CHECK(dy.dtype() == pool_out_, who() + " backward_pool: the gradient's dtype is not the pooled output's");
  backward_impl(x, dy, dx);
}

void SyncBatchNorm::backward_impl(const Tensor& x, const Tensor& dy, Tensor& dx) {
  size_message();
  // A pooled dy was checked by backward_pool; it stands for a full-size gradient of x's shape.
  const BnInputDesc xd{x.shape(), x.layout()};
  const BnCall call = begin_backward(xd, pool_.k ? xd : BnInputDesc{dy.shape(), dy.layout()});
  const std::int64_t C = opt_.channels;
  dx.resize(x.shape(), x.layout(), x.dtype());
  const bool stream = x.numel() * static_cast<std::int64_t>(sizeof(float)) >= opt_.stream_threshold_bytes;
  float* dgamma = opt_.affine ? dgamma_.data() : nullptr;
  float* dbeta = opt_.affine ? dbeta_.data() : nullptr;

  for (std::int64_t k = 0; k < batch_count(); ++k) {
    const BnCallBatch b = batch(call, k);
    const auto p = static_cast<std::size_t>(b.block);
    if (b.kind == BnCallBatch::kEmpty) continue;  // forward's empty batch
    const float* xk = x.data() + b.offset;
    const std::int64_t q = pool_.k ? pooled_offset(b.offset) : b.offset;
    const float* dyk = dy.data() + q;
    const std::uint8_t* argk = pool_.k ? pool_arg_.data() + q : nullptr;
    const BnRenormFactors renorm = renorm_factors(bn_.arrays(C), k, call);  // none: plain BN's dγ
    // As in forward: synced statistics need the all-reduce between the two passes; local ones go block
    // by block of channels, so elemt reads x and dy from cache.
    const std::int64_t block = call.comm ? C : local_block_channels(b.geometry, 2);
    for (std::int64_t c0 = 0; c0 < C; c0 += block) {
      const cpu::ChannelRange range{c0, std::min(C, c0 + block)};
      if (pool_.k) {
        with_elements(x, b.offset, [&](const auto* xe) {
          with_elements(dy, q, [&](const auto* dye) {
            cpu::bn_backward_reduce_pool(dye, argk, pool_, xe, b.geometry, &bn_.hi[p], &bn_.a[p], &bn_.b[p],
                                         opt_.fuse_relu, &bn_.mean[p], &bn_.invstd[p], bwd_tag_, msg_.data(), dgamma,
                                         dbeta, pool_scratch_.data(), range, renorm);
          });
        });
      } else {
        cpu::bn_backward_reduce(dyk, xk, b.geometry, &bn_.hi[p], &bn_.a[p], &bn_.b[p], opt_.fuse_relu,
                                &bn_.mean[p], &bn_.invstd[p], bwd_tag_, msg_.data(), dgamma, dbeta, range, renorm);
      }
      if (opt_.affine) {  // the local sums, before the all-reduce replaces them with the group's
        for (std::int64_t c = range.begin; c < range.end; ++c) {
          const double A = msg_[static_cast<std::size_t>(kMsgHeader + c)];
          const double B = msg_[static_cast<std::size_t>(kMsgHeader + C + c)];
          dbeta64_[static_cast<std::size_t>(c)] += A;
          double& dg = dgamma64_[static_cast<std::size_t>(c)];
          const double invstd = bn_.invstd[p + c];
          dg += bn_dgamma(A, B, bn_.mean[p + c], bn_.hi[p + c], renorm.r ? renorm.r[c] * invstd : invstd);
          if (renorm.d) dg += renorm.d[c] * A;  // Batch Renormalization: Σdy'·(x̂·r + d), see bn_dgamma
        }
      }
      if (b.kind == BnCallBatch::kBatchStats) {
        if (call.comm) reduce("backward");
        const BnBackwardCombineArgs args =
            backward_combine_args(bn_.arrays(C), k, call, counts_[static_cast<std::size_t>(k)]);
        const BnStatus st = cpu::bn_backward_combine(msg_.data(), args, range);
        check_status(st, "backward", msg_[kMsgCount], args.expected_count);
      } else {
        // Statistics were constants (running stats): dx = a·dy'.
        std::fill(&bn_.k1[p + range.begin], &bn_.k1[p + range.end], 0.0f);
        std::fill(&bn_.k0[p + range.begin], &bn_.k0[p + range.end], 0.0f);
      }
      if (pool_.k) {
        with_elements(x, b.offset, [&](const auto* xe) {
          with_elements(dy, q, [&](const auto* dye) {
            cpu::bn_backward_elemt_pool(dye, argk, pool_, xe, b.geometry, &bn_.hi[p], &bn_.a[p], &bn_.b[p],
                                        opt_.fuse_relu, &bn_.k1[p], &bn_.k0[p], stream,
                                        elements_like(dx, xe) + b.offset, range);
          });
        });
      } else {
        cpu::bn_backward_elemt(dyk, xk, b.geometry, &bn_.hi[p], &bn_.a[p], &bn_.b[p], opt_.fuse_relu, &bn_.k1[p],
                               &bn_.k0[p], stream, dx.data() + b.offset, range);
      }
    }
  }
}

}  // namespace syncbn
