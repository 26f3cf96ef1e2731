#include "syncbn/model.h"

#include "syncbn/error.h"

namespace syncbn {
namespace {

// conv3x3(s)-norm-relu-conv3x3-norm (+ shortcut) → add → relu. The shortcut is the identity, or a 1×1
// convolution with stride s and a norm when the shape changes (He et al. 2016, option B).
class ResidualBlock final : public Module {
 public:
  ResidualBlock(const BlockPlan& plan, ParamStore& store, CpuContext& ctx, SyncGroup* group) : plan_(plan) {
    conv1_ = make_conv2d(plan.conv1, store, ctx);
    n1_ = make_norm(plan.n1, store, group);
    conv2_ = make_conv2d(plan.conv2, store, ctx);
    n2_ = make_norm(plan.n2, store, group);
    if (plan.shortcut) {
      sc_conv_ = make_conv2d(plan.sc_conv, store, ctx);
      sc_norm_ = make_norm(plan.sc_norm, store, group);
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
  std::string describe() const override { return syncbn::describe(plan_); }

 private:
  BlockPlan plan_;
  ModulePtr conv1_, n1_, conv2_, n2_, sc_conv_, sc_norm_;
  Tensor a1_, b1_, a2_, b2_, sa_, sb_;     // activations kept for backward
  Tensor dsum_, g2_, g1_, g0_, gs_, gx_;  // gradients
};

}  // namespace

ModulePtr make_residual_block(const BlockPlan& plan, ParamStore& store, CpuContext& ctx, SyncGroup* group) {
  return std::make_unique<ResidualBlock>(plan, store, ctx, group);
}

ModulePtr make_residual_block(const std::string& name, std::int64_t in, std::int64_t out, std::int64_t stride,
                              const NormSpec& norm, ParamStore& store, CpuContext& ctx, SyncGroup* group) {
  return make_residual_block(plan_block(store, name, in, out, stride, norm), store, ctx, group);
}

ModulePtr make_module(const OpPlan& op, ParamStore& store, CpuContext& ctx, SyncGroup* group) {
  switch (op.kind) {
    case OpKind::kConv: return make_conv2d(op.conv, store, ctx);
    case OpKind::kNorm: return make_norm(op.norm, store, group);
    case OpKind::kMaxPool: return make_maxpool(2);
    case OpKind::kFlatten: return make_flatten();
    case OpKind::kLinear: return make_linear(op.linear, store, &ctx);
    case OpKind::kGlobalAvgPool: return make_global_avgpool();
    case OpKind::kBlock: return make_residual_block(op.block, store, ctx, group);
  }
  SBN_FAIL("make_module: unknown op kind " + std::to_string(static_cast<int>(op.kind)));
}

Network build_network(const NetPlan& plan, ParamStore& params, CpuContext& ctx, SyncGroup* group) {
  Network n;
  n.net = std::make_unique<Sequential>();
  // --precision bf16 activations (Tensor's dtype): a convolution before a fused BN+pool writes bf16, and a
  // fused BN+pool whose output goes straight into a convolution writes bf16; every other tensor is fp32.
  auto fused_pool_at = [&](std::size_t i) {
    return i < plan.ops.size() && plan.ops[i].kind == OpKind::kNorm && plan.ops[i].norm.fused_pool > 0;
  };
  auto reads_bf16_at = [&](std::size_t i) {
    return ctx.bf16 && i < plan.ops.size() && plan.ops[i].kind == OpKind::kConv &&
           conv2d_reads_bf16(plan.ops[i].conv.spec);
  };
  for (std::size_t i = 0; i < plan.ops.size(); ++i) {
    const OpPlan& op = plan.ops[i];
    if (fused_pool_at(i)) {
      // The norm and the max pooling after it as one pass (NormPlan::fused_pool): skip the pool op.
      SBN_CHECK(i + 1 < plan.ops.size() && plan.ops[i + 1].kind == OpKind::kMaxPool,
                op.norm.name + ": fused_pool set, but no max-pool op follows");
      n.net->add(make_norm_pool(op.norm, op.norm.fused_pool, params, group,
                                reads_bf16_at(i + 2) ? ElementType::kBF16 : ElementType::kF32));
      ++i;
      continue;
    }
    if (op.kind == OpKind::kConv) {
      n.net->add(make_conv2d(op.conv, params, ctx, ctx.bf16 && fused_pool_at(i + 1)));
      continue;
    }
    n.net->add(make_module(op, params, ctx, group));
  }
  n.net->sync_bns(n.bns);
  n.net->buffers(n.buffers);
  // The layers' buffers are the plan's (its signature names them): names and sizes, in order.
  bool same = plan.buffers.size() == n.buffers.size();
  for (std::size_t i = 0; same && i < n.buffers.size(); ++i)
    same = plan.buffers[i].name == n.buffers[i].name && plan.buffers[i].size == n.buffers[i].size;
  SBN_CHECK(same, "CPU model: the layers' buffers differ from the plan's (src/nn and src/model disagree)");
  return n;
}

std::unique_ptr<Model> build_model(const ModelSpec& spec, CpuContext& ctx, std::uint64_t seed, SyncGroup* group) {
  auto model = std::make_unique<Model>();
  model->plan = plan_network(spec, model->params);
  model->params.init_params(seed);
  Network n = build_network(model->plan, model->params, ctx, group);
  model->net = std::move(n.net);
  model->bns = std::move(n.bns);
  model->buffers = std::move(n.buffers);
  model->signature = model->plan.signature;
  return model;
}

}  // namespace syncbn
