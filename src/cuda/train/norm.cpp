// The normalization slot of the GPU network (a NormPlan, net_plan.h): CudaSyncBatchNorm for sync, sync:K and
// local (fused ReLU), our GroupNorm kernels, or for --norm none a ReLU or nothing.
#include "layers.h"
#include "syncbn/error.h"

namespace syncbn::cuda::train {

// ---- BatchNorm ----------------------------------------------------------------------------------------

namespace {

SyncGroup* bn_group_of(const NormPlan& plan, NetContext& ctx) {
  if (!plan.synced()) return nullptr;
  SBN_CHECK(ctx.bn_group != nullptr, plan.name + ": a synced BatchNorm needs a sync group");
  return ctx.bn_group;
}

}  // namespace

BatchNormLayer::BatchNormLayer(const NormPlan& plan, NetContext& ctx)
    : plan_(plan), ctx_(ctx), bn_(plan.name, plan.batchnorm_options(), bn_group_of(plan, ctx), ctx.launch.stream) {}

const DeviceTensor& BatchNormLayer::forward(const DeviceTensor& x, bool training) {
  x_ = &x;
  bn_.forward(x, y_, training);
  return y_;
}

const DeviceTensor* BatchNormLayer::backward(const DeviceTensor& dy, bool need_dx) {
  SBN_CHECK(x_ != nullptr, plan_.name + ": backward before forward");
  bn_.backward(*x_, dy, dx_);  // dx is part of the layer's one pass; computed even when unused
  // γ/β gradients are in the layer's own arrays: the model gathers them into the flat array first.
  grads_done(ctx_, {plan_.gamma, plan_.beta});
  return need_dx ? &dx_ : nullptr;
}

namespace {

// ---- GroupNorm ----------------------------------------------------------------------------------------

class GroupNormLayer final : public Layer {
 public:
  GroupNormLayer(const NormPlan& plan, NetContext& ctx) : p_(plan), ctx_(ctx) {}

  const DeviceTensor& forward(const DeviceTensor& x, bool) override {
    SBN_CHECK((x.rank() == 2 || (x.rank() == 4 && x.layout() == Layout::kChannelsLast)) && x.dim(1) == p_.channels &&
                  x.dtype() == ctx_.dtype,
              p_.name + ": expects (N, " + std::to_string(p_.channels) + ") or NHWC (N, " + std::to_string(p_.channels) +
                  ", H, W) " + dtype_name(ctx_.dtype) + ", got " + describe(x.shape(), x.layout()) + " " +
                  dtype_name(x.dtype()));
    x_ = &x;
    q_ = GnGeom{x.dim(0), x.rank() == 4 ? x.dim(2) * x.dim(3) : 1, p_.channels, p_.spec.gn_groups};
    y_.resize(x.shape(), x.layout(), ctx_.dtype, ctx_.launch.stream);
    const auto groups = static_cast<std::size_t>(std::max<std::int64_t>(q_.N * q_.G, 1));
    const auto channels = static_cast<std::size_t>(std::max<std::int64_t>(q_.N * q_.C, 1));
    const cudaStream_t s = ctx_.launch.stream;
    mean_.resize(groups, p_.name + " mean", s);
    invstd_.resize(groups, p_.name + " invstd", s);
    sum_a_.resize(channels, p_.name + " sums", s);
    sum_b_.resize(channels, p_.name + " sums", s);
    ca_.resize(channels, p_.name + " coefficients", s);
    cb_.resize(channels, p_.name + " coefficients", s);
    cd_.resize(channels, p_.name + " coefficients", s);
    group_norm_forward(x.data(), ctx_.dtype, q_, ctx_.values + p_.gamma.offset, ctx_.values + p_.beta.offset,
                       p_.spec.eps, p_.relu, y_.data(), buffers(), ctx_.reduce_ws, ctx_.launch);
    return y_;
  }

  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override {
    SBN_CHECK(x_ && dy.shape() == y_.shape() && dy.dtype() == ctx_.dtype,
              p_.name + ": backward's gradient " + describe(dy.shape(), dy.layout()) + " does not match the output");
    if (need_dx) dx_.resize(x_->shape(), x_->layout(), ctx_.dtype, ctx_.launch.stream);
    group_norm_backward(x_->data(), y_.data(), dy.data(), ctx_.dtype, q_, ctx_.values + p_.gamma.offset, p_.relu,
                        need_dx ? dx_.data() : nullptr, ctx_.grads + p_.gamma.offset, ctx_.grads + p_.beta.offset,
                        buffers(), ctx_.reduce_ws, ctx_.launch);
    grads_done(ctx_, {p_.gamma, p_.beta});
    return need_dx ? &dx_ : nullptr;
  }

 private:
  GnBuffers buffers() {
    return {mean_.data(), invstd_.data(), sum_a_.data(), sum_b_.data(), ca_.data(), cb_.data(), cd_.data()};
  }

  NormPlan p_;
  NetContext& ctx_;
  GnGeom q_{};
  const DeviceTensor* x_ = nullptr;
  DeviceTensor y_, dx_;
  DeviceArray<double> mean_, invstd_;  // (N·G) of the last forward
  DeviceArray<double> sum_a_, sum_b_;  // (N·C) per-sample channel sums
  DeviceArray<float> ca_, cb_, cd_;    // (N·C) per-sample channel coefficients
};

// ---- --norm none --------------------------------------------------------------------------------------

class ReluLayer final : public Layer {
 public:
  explicit ReluLayer(NetContext& ctx) : ctx_(ctx) {}
  const DeviceTensor& forward(const DeviceTensor& x, bool) override {
    y_.resize(x.shape(), x.layout(), x.dtype(), ctx_.launch.stream);
    relu_forward(x.data(), x.dtype(), x.numel(), y_.data(), ctx_.launch);
    return y_;
  }
  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override {
    if (!need_dx) return nullptr;
    dx_.resize(dy.shape(), dy.layout(), dy.dtype(), ctx_.launch.stream);
    relu_backward(y_.data(), dy.data(), dy.dtype(), dy.numel(), dx_.data(), ctx_.launch);
    return &dx_;
  }

 private:
  NetContext& ctx_;
  DeviceTensor y_, dx_;
};

class IdentityLayer final : public Layer {
 public:
  const DeviceTensor& forward(const DeviceTensor& x, bool) override { return x; }
  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override { return need_dx ? &dy : nullptr; }
};

}  // namespace

std::unique_ptr<Layer> make_norm(const NormPlan& plan, NetContext& ctx) {
  switch (plan.spec.kind) {
    case NormKind::kBatchNorm: return std::make_unique<BatchNormLayer>(plan, ctx);
    case NormKind::kGroupNorm: return std::make_unique<GroupNormLayer>(plan, ctx);
    case NormKind::kNone: break;
  }
  if (plan.relu) return std::make_unique<ReluLayer>(ctx);
  return std::make_unique<IdentityLayer>();
}

}  // namespace syncbn::cuda::train
