// The GPU network from its plan: pooling, flatten, the residual block and the sequential container
// (the structure of src/nn/model.cpp and src/nn/module.cpp, on device tensors).
#include "layers.h"
#include "syncbn/error.h"

namespace syncbn::cuda::train {
namespace {

// ---- pooling and flatten ------------------------------------------------------------------------------

class MaxPoolLayer final : public Layer {
 public:
  explicit MaxPoolLayer(NetContext& ctx) : ctx_(ctx) {}
  const DeviceTensor& forward(const DeviceTensor& x, bool) override {
    SBN_CHECK(x.rank() == 4 && x.layout() == Layout::kChannelsLast,
              "maxpool: expects an NHWC tensor, got " + describe(x.shape(), x.layout()));
    g_ = PoolGeom{x.dim(0), x.dim(1), x.dim(2), x.dim(3), x.dim(2) / 2, x.dim(3) / 2};
    SBN_CHECK(g_.Ho > 0 && g_.Wo > 0, "maxpool: input " + describe(x.shape(), x.layout()) + " smaller than the window");
    x_ = &x;
    y_.resize({g_.N, g_.C, g_.Ho, g_.Wo}, Layout::kChannelsLast, x.dtype(), ctx_.launch.stream);
    arg_.resize(static_cast<std::size_t>(std::max<std::int64_t>(y_.numel(), 1)), "maxpool positions", ctx_.launch.stream);
    maxpool2x2_forward(x.data(), x.dtype(), g_, y_.data(), arg_.data(), ctx_.launch);
    return y_;
  }
  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override {
    if (!need_dx) return nullptr;
    SBN_CHECK(x_ && dy.shape() == y_.shape(), "maxpool: backward's gradient does not match the output");
    dx_.resize(x_->shape(), x_->layout(), dy.dtype(), ctx_.launch.stream);
    maxpool2x2_backward(dy.data(), arg_.data(), dy.dtype(), g_, dx_.data(), ctx_.launch);
    return &dx_;
  }

 private:
  NetContext& ctx_;
  PoolGeom g_{};
  const DeviceTensor* x_ = nullptr;
  DeviceTensor y_, dx_;
  DeviceArray<std::uint8_t> arg_;  // (N, Ho, Wo, C): position of each maximum in its window
};

class GlobalAvgPoolLayer final : public Layer {
 public:
  explicit GlobalAvgPoolLayer(NetContext& ctx) : ctx_(ctx) {}
  const DeviceTensor& forward(const DeviceTensor& x, bool) override {
    SBN_CHECK(x.rank() == 4 && x.layout() == Layout::kChannelsLast, "global avgpool: expects an NHWC tensor");
    x_ = &x;
    y_.resize({x.dim(0), x.dim(1)}, Layout::kPlanar, x.dtype(), ctx_.launch.stream);
    avgpool_forward(x.data(), x.dtype(), x.dim(0), x.dim(2) * x.dim(3), x.dim(1), y_.data(), ctx_.launch);
    return y_;
  }
  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override {
    if (!need_dx) return nullptr;
    SBN_CHECK(x_ && dy.shape() == y_.shape(), "global avgpool: backward's gradient does not match the output");
    const DeviceTensor& x = *x_;
    dx_.resize(x.shape(), x.layout(), dy.dtype(), ctx_.launch.stream);
    avgpool_backward(dy.data(), dy.dtype(), x.dim(0), x.dim(2) * x.dim(3), x.dim(1), dx_.data(), ctx_.launch);
    return &dx_;
  }

 private:
  NetContext& ctx_;
  const DeviceTensor* x_ = nullptr;
  DeviceTensor y_, dx_;
};

// NHWC (N, C, H, W) → (N, H·W·C) is the memory as it is: the fully connected layer after it reads the
// NHWC tensor as (N, numel/N) rows and gives back a gradient of the NHWC shape, so flatten moves nothing.
class FlattenLayer final : public Layer {
 public:
  const DeviceTensor& forward(const DeviceTensor& x, bool) override {
    SBN_CHECK(x.rank() == 2 || x.layout() == Layout::kChannelsLast || x.dim(1) == 1, "flatten: expects NHWC activations");
    return x;
  }
  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override { return need_dx ? &dy : nullptr; }
};

// ---- residual block -------------------------------------------------------------------------------------

// conv3x3(s)-norm-relu-conv3x3-norm (+ shortcut) → add → relu; backward in the CPU block's order, so the
// SyncBN collectives are issued in the same order on every rank (and as on the CPU).
class BlockLayer final : public Layer {
 public:
  BlockLayer(const BlockPlan& plan, NetContext& ctx) : p_(plan), ctx_(ctx) {
    conv1_ = make_conv(p_.conv1, ctx);
    n1_ = make_norm(p_.n1, ctx);
    conv2_ = make_conv(p_.conv2, ctx);
    n2_ = make_norm(p_.n2, ctx);
    if (p_.shortcut) {
      sc_conv_ = make_conv(p_.sc_conv, ctx);
      sc_norm_ = make_norm(p_.sc_norm, ctx);
    }
  }

  const DeviceTensor& forward(const DeviceTensor& x, bool training) override {
    x_ = &x;
    const DeviceTensor& a1 = conv1_->forward(x, training);
    const DeviceTensor& b1 = n1_->forward(a1, training);
    const DeviceTensor& a2 = conv2_->forward(b1, training);
    const DeviceTensor& b2 = n2_->forward(a2, training);
    const DeviceTensor* skip = &x;
    if (sc_conv_) skip = &sc_norm_->forward(sc_conv_->forward(x, training), training);
    SBN_CHECK(skip->shape() == b2.shape(), p_.name + ": the shortcut " + describe(skip->shape(), skip->layout()) +
                                               " does not match the residual " + describe(b2.shape(), b2.layout()));
    y_.resize(b2.shape(), b2.layout(), b2.dtype(), ctx_.launch.stream);
    add_relu_forward(b2.data(), skip->data(), b2.dtype(), b2.numel(), y_.data(), ctx_.launch);
    return y_;
  }

  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override {
    SBN_CHECK(x_ && dy.shape() == y_.shape(), p_.name + ": backward's gradient does not match the output");
    dsum_.resize(dy.shape(), dy.layout(), dy.dtype(), ctx_.launch.stream);
    relu_backward(y_.data(), dy.data(), dy.dtype(), dy.numel(), dsum_.data(), ctx_.launch);
    const DeviceTensor* g2 = n2_->backward(dsum_, true);
    const DeviceTensor* g1 = conv2_->backward(*g2, true);
    const DeviceTensor* g0 = n1_->backward(*g1, true);
    const DeviceTensor* dx_main = conv1_->backward(*g0, need_dx);
    const DeviceTensor* dx_skip = &dsum_;
    if (sc_conv_) {
      const DeviceTensor* gs = sc_norm_->backward(dsum_, true);
      dx_skip = sc_conv_->backward(*gs, need_dx);
    }
    if (!need_dx) return nullptr;
    dx_.resize(x_->shape(), x_->layout(), dy.dtype(), ctx_.launch.stream);
    add_tensors(dx_main->data(), dx_skip->data(), dy.dtype(), dx_.numel(), dx_.data(), ctx_.launch);
    return &dx_;
  }

  void batchnorms(std::vector<BatchNormLayer*>& out) override {
    for (Layer* l : {n1_.get(), n2_.get(), sc_norm_.get()})
      if (l) l->batchnorms(out);
  }

 private:
  BlockPlan p_;
  NetContext& ctx_;
  std::unique_ptr<Layer> conv1_, n1_, conv2_, n2_, sc_conv_, sc_norm_;
  const DeviceTensor* x_ = nullptr;
  DeviceTensor y_, dsum_, dx_;
};

// ---- sequential ---------------------------------------------------------------------------------------

class Sequential final : public Layer {
 public:
  void add(std::unique_ptr<Layer> l) { layers_.push_back(std::move(l)); }

  const DeviceTensor& forward(const DeviceTensor& x, bool training) override {
    const DeviceTensor* cur = &x;
    for (auto& l : layers_) cur = &l->forward(*cur, training);
    return *cur;
  }

  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override {
    const DeviceTensor* g = &dy;
    for (std::size_t k = layers_.size(); k-- > 0;) g = layers_[k]->backward(*g, k > 0 || need_dx);
    return g;
  }

  void batchnorms(std::vector<BatchNormLayer*>& out) override {
    for (auto& l : layers_) l->batchnorms(out);
  }

 private:
  std::vector<std::unique_ptr<Layer>> layers_;
};

}  // namespace

std::unique_ptr<Layer> make_network(const NetPlan& plan, NetContext& ctx) {
  auto net = std::make_unique<Sequential>();
  for (const OpPlan& o : plan.ops) {
    switch (o.kind) {
      case OpKind::kConv: net->add(make_conv(o.conv, ctx)); break;
      case OpKind::kNorm: net->add(make_norm(o.norm, ctx)); break;
      case OpKind::kMaxPool: net->add(std::make_unique<MaxPoolLayer>(ctx)); break;
      case OpKind::kFlatten: net->add(std::make_unique<FlattenLayer>()); break;
      case OpKind::kLinear: net->add(make_linear(o.linear, ctx)); break;
      case OpKind::kGlobalAvgPool: net->add(std::make_unique<GlobalAvgPoolLayer>(ctx)); break;
      case OpKind::kBlock: net->add(std::make_unique<BlockLayer>(o.block, ctx)); break;
    }
  }
  return net;
}

}  // namespace syncbn::cuda::train
