#include "syncbn/model.h"

#include "syncbn/error.h"

namespace syncbn {
namespace {

// conv3x3(s)-norm-relu-conv3x3-norm (+ shortcut) → add → relu. The shortcut is the identity, or a 1×1
// convolution with stride s and a norm when the shape changes (He et al. 2016, option B).
class ResidualBlock final : public Module {
 public:
  ResidualBlock(const std::string& name, std::int64_t in, std::int64_t out, std::int64_t stride, const NormSpec& norm,
                ParamStore& store, CpuContext& ctx, SyncGroup* group) {
    const bool bias = norm.kind == NormKind::kNone;
    conv1_ = make_conv2d(name + ".conv1", {in, out, 3, stride, 1, bias}, store, ctx);
    n1_ = make_norm(name + ".bn1", out, norm, true, store, group);
    conv2_ = make_conv2d(name + ".conv2", {out, out, 3, 1, 1, bias}, store, ctx);
    n2_ = make_norm(name + ".bn2", out, norm, false, store, group);
    if (stride != 1 || in != out) {
      sc_conv_ = make_conv2d(name + ".shortcut.conv", {in, out, 1, stride, 0, bias}, store, ctx);
      sc_norm_ = make_norm(name + ".shortcut.bn", out, norm, false, store, group);
    }
  }

  void forward(const Tensor& x, Tensor& y, bool training) override {
    conv1_->forward(x, a1_, training);
    n1_->forward(a1_, b1_, training);
    conv2_->forward(b1_, a2_, training);
    n2_->forward(a2_, b2_, training);
    const Tensor* skip = &x;
    if (sc_conv_) {
      sc_conv_->forward(x, sa_, training);
      sc_norm_->forward(sa_, sb_, training);
      skip = &sb_;
    }
    y.resize(b2_.shape(), b2_.layout());
    const float* p = b2_.data();
    const float* q = skip->data();
    float* o = y.data();
    for (std::int64_t i = 0, n = y.numel(); i < n; ++i) o[i] = std::max(p[i] + q[i], 0.0f);
  }

  void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx) override {
    dsum_.resize(dy.shape(), dy.layout());
    for (std::int64_t i = 0, n = dy.numel(); i < n; ++i) dsum_[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    n2_->backward(a2_, b2_, dsum_, &g2_);
    conv2_->backward(b1_, a2_, g2_, &g1_);
    n1_->backward(a1_, b1_, g1_, &g0_);
    conv1_->backward(x, a1_, g0_, dx);
    if (sc_conv_) {
      sc_norm_->backward(sa_, sb_, dsum_, &gs_);
      sc_conv_->backward(x, sa_, gs_, dx ? &gx_ : nullptr);
      if (dx)
        for (std::int64_t i = 0, n = dx->numel(); i < n; ++i) (*dx)[i] += gx_[i];
    } else if (dx) {
      for (std::int64_t i = 0, n = dx->numel(); i < n; ++i) (*dx)[i] += dsum_[i];
    }
  }

  void buffers(std::vector<BufferRef>& out) override {
    for (Module* m : {n1_.get(), n2_.get(), sc_norm_.get()})
      if (m) m->buffers(out);
  }
  void sync_bns(std::vector<SyncBatchNorm*>& out) override {
    for (Module* m : {n1_.get(), n2_.get(), sc_norm_.get()})
      if (m) m->sync_bns(out);
  }
  std::string describe() const override {
    return "res[" + conv1_->describe() + " " + n1_->describe() + " " + conv2_->describe() + " " + n2_->describe() +
           (sc_conv_ ? " | " + sc_conv_->describe() + " " + sc_norm_->describe() : " | id") + "]";
  }

 private:
  ModulePtr conv1_, n1_, conv2_, n2_, sc_conv_, sc_norm_;
  Tensor a1_, b1_, a2_, b2_, sa_, sb_;     // activations kept for backward
  Tensor dsum_, g2_, g1_, g0_, gs_, gx_;  // gradients
};

std::int64_t pooled(std::int64_t n, int times) {
  for (int i = 0; i < times; ++i) n /= 2;
  return n;
}

}  // namespace

ModulePtr make_residual_block(const std::string& name, std::int64_t in, std::int64_t out, std::int64_t stride,
                              const NormSpec& norm, ParamStore& store, CpuContext& ctx, SyncGroup* group) {
  return std::make_unique<ResidualBlock>(name, in, out, stride, norm, store, ctx, group);
}

std::unique_ptr<Model> build_model(const ModelSpec& spec, CpuContext& ctx, std::uint64_t seed, SyncGroup* group) {
  SBN_CHECK(spec.width > 0 && spec.width <= 4096, "--width must be in [1, 4096], got " + std::to_string(spec.width));
  auto model = std::make_unique<Model>();
  auto net = std::make_unique<Sequential>();
  ParamStore& ps = model->params;
  const NormSpec& norm = spec.norm;
  const bool bias = norm.kind == NormKind::kNone;  // a norm's shift makes a conv bias redundant
  const std::int64_t w = spec.width;
  if (spec.arch == "convnet") {
    std::int64_t c = spec.in_channels;
    for (int i = 0; i < 3; ++i) {
      const std::int64_t out = w << i;
      const std::string name = "conv" + std::to_string(i + 1);
      net->add(make_conv2d(name, {c, out, 3, 1, 1, bias}, ps, ctx));
      net->add(make_norm(name + ".bn", out, norm, true, ps, group));
      net->add(make_maxpool(2));
      c = out;
    }
    const std::int64_t h = pooled(spec.height, 3), wd = pooled(spec.width_px, 3);
    SBN_CHECK(h > 0 && wd > 0, "convnet: input " + std::to_string(spec.height) + "x" + std::to_string(spec.width_px) +
                                   " is too small for three 2x2 poolings");
    net->add(make_flatten());
    net->add(make_linear("fc1", c * h * wd, 8 * w, bias, false, ps));
    net->add(make_norm("fc1.bn", 8 * w, norm, true, ps, group));
    net->add(make_linear("fc2", 8 * w, spec.classes, true, true, ps));
  } else if (spec.arch == "resnet") {
    SBN_CHECK(spec.depth >= 1 && spec.depth <= 64, "--depth must be in [1, 64], got " + std::to_string(spec.depth));
    net->add(make_conv2d("stem", {spec.in_channels, w, 3, 1, 1, bias}, ps, ctx));
    net->add(make_norm("stem.bn", w, norm, true, ps, group));
    std::int64_t c = w;
    for (int stage = 0; stage < 3; ++stage) {
      const std::int64_t out = w << stage;
      for (std::int64_t b = 0; b < spec.depth; ++b) {
        const std::int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
        net->add(make_residual_block("layer" + std::to_string(stage + 1) + "." + std::to_string(b), c, out, stride,
                                     norm, ps, ctx, group));
        c = out;
      }
    }
    net->add(make_global_avgpool());
    net->add(make_linear("fc", c, spec.classes, true, true, ps));
  } else {
    SBN_FAIL("unknown model '" + spec.arch + "'; expected convnet or resnet");
  }
  ps.finalize();
  ps.init_params(seed);
  net->sync_bns(model->bns);
  net->buffers(model->buffers);
  std::string sig = spec.arch + ";in=" + std::to_string(spec.in_channels) + "x" + std::to_string(spec.height) + "x" +
                    std::to_string(spec.width_px) + ";classes=" + std::to_string(spec.classes) +
                    ";norm=" + norm.signature_text();
  for (const auto& p : ps.all()) {
    sig += ";" + p.name + "[";
    for (std::size_t i = 0; i < p.shape.size(); ++i) sig += (i ? "x" : "") + std::to_string(p.shape[i]);
    sig += "]";
  }
  for (const auto& b : model->buffers) sig += ";" + b.name + "(" + std::to_string(b.size) + ")";
  model->signature = sig;
  model->net = std::move(net);
  return model;
}

}  // namespace syncbn
