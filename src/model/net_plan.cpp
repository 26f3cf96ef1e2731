// plan_network(): the architectures of net_plan.h, layer by layer, registering each parameter once.
//
// The registration order below IS the flat layout (offsets) and the initializer streams (one per
// parameter index): checkpoints written by every earlier version rely on it. Per layer: weight, then
// bias; per residual block: conv1, bn1, conv2, bn2, then the shortcut's conv and norm.
#include "syncbn/net_plan.h"

#include "syncbn/error.h"

namespace syncbn {
namespace {

ParamSlot slot(const ParamStore& params, int index) {
  const ParamInfo& p = params.info(index);
  return {index, p.offset, p.size};
}

OpPlan op(OpKind kind) {
  OpPlan o;
  o.kind = kind;
  return o;
}

std::string describe_conv(const ConvSpec& s) {
  return "conv" + std::to_string(s.kernel) + "x" + std::to_string(s.kernel) + "(" + std::to_string(s.in) + "->" +
         std::to_string(s.out) + (s.stride > 1 ? ",s" + std::to_string(s.stride) : "") + ")";
}

std::string describe_norm(const NormPlan& p) {
  const std::string relu = p.relu ? "+relu" : "";
  if (p.batchnorm()) return "bn[" + p.spec.str() + "]" + relu;  // "bn[local+renorm]" with Batch Renormalization
  if (p.spec.kind == NormKind::kGroupNorm) return "gn" + std::to_string(p.spec.gn_groups) + relu;
  return p.relu ? "relu" : "identity";
}

std::string describe_block(const BlockPlan& b) {
  return "res[" + describe_conv(b.conv1.spec) + " " + describe_norm(b.n1) + " " + describe_conv(b.conv2.spec) + " " +
         describe_norm(b.n2) + (b.shortcut ? " | " + describe_conv(b.sc_conv.spec) + " " + describe_norm(b.sc_norm) : " | id") +
         "]";
}

std::string describe_op(const OpPlan& o) {
  switch (o.kind) {
    case OpKind::kConv: return describe_conv(o.conv.spec);
    case OpKind::kNorm: return describe_norm(o.norm);
    case OpKind::kMaxPool: return "maxpool2";
    case OpKind::kFlatten: return "flatten";
    case OpKind::kLinear: return "fc(" + std::to_string(o.linear.in) + "->" + std::to_string(o.linear.out) + ")";
    case OpKind::kGlobalAvgPool: return "global-avgpool";
    case OpKind::kBlock: return describe_block(o.block);
  }
  return "?";
}

// A conv-norm pair of the convnet or the stem: (conv, norm+relu) ops.
void add_conv_norm(NetPlan& plan, ParamStore& params, const std::string& name, const ConvSpec& spec,
                   const std::string& norm_name, const NormSpec& norm) {
  OpPlan cv = op(OpKind::kConv);
  cv.conv = plan_conv(params, name, spec);
  plan.ops.push_back(cv);
  OpPlan nm = op(OpKind::kNorm);
  nm.norm = plan_norm(params, norm_name, spec.out, norm, true);
  plan.ops.push_back(nm);
}

void add_linear(NetPlan& plan, ParamStore& params, const std::string& name, std::int64_t in, std::int64_t out,
                bool bias, bool classifier) {
  OpPlan fc = op(OpKind::kLinear);
  fc.linear = plan_linear(params, name, in, out, bias, classifier);
  plan.ops.push_back(fc);
}

void plan_convnet(const ModelSpec& spec, NetPlan& plan, ParamStore& params) {
  const NormSpec& ns = spec.norm;
  const bool bias = ns.kind == NormKind::kNone;  // a norm's shift makes a conv bias redundant
  const std::int64_t w = spec.width;
  std::int64_t c = spec.in_channels, h = spec.height, wd = spec.width_px;
  for (int i = 0; i < 3; ++i) {
    const std::int64_t out = w << i;
    const std::string name = "conv" + std::to_string(i + 1);
    add_conv_norm(plan, params, name, {c, out, 3, 1, 1, bias}, name + ".bn", ns);
    plan.ops.push_back(op(OpKind::kMaxPool));
    c = out;
    h /= 2;
    wd /= 2;
  }
  SBN_CHECK(h > 0 && wd > 0, "convnet: input " + std::to_string(spec.height) + "x" + std::to_string(spec.width_px) +
                                 " is too small for three 2x2 poolings");
  plan.ops.push_back(op(OpKind::kFlatten));
  add_linear(plan, params, "fc1", c * h * wd, 8 * w, bias, false);
  OpPlan nm = op(OpKind::kNorm);
  nm.norm = plan_norm(params, "fc1.bn", 8 * w, ns, true);
  plan.ops.push_back(nm);
  add_linear(plan, params, "fc2", 8 * w, spec.classes, true, true);
}

void plan_resnet(const ModelSpec& spec, NetPlan& plan, ParamStore& params) {
  SBN_CHECK(spec.depth >= 1 && spec.depth <= 64, "--depth must be in [1, 64], got " + std::to_string(spec.depth));
  const bool bias = spec.norm.kind == NormKind::kNone;
  const std::int64_t w = spec.width;
  add_conv_norm(plan, params, "stem", {spec.in_channels, w, 3, 1, 1, bias}, "stem.bn", spec.norm);
  std::int64_t c = w;
  for (int stage = 0; stage < 3; ++stage) {
    const std::int64_t out = w << stage;
    for (std::int64_t b = 0; b < spec.depth; ++b) {
      const std::int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
      OpPlan blk = op(OpKind::kBlock);
      blk.block = plan_block(params, "layer" + std::to_string(stage + 1) + "." + std::to_string(b), c, out, stride,
                             spec.norm);
      plan.ops.push_back(blk);
      c = out;
    }
  }
  plan.ops.push_back(op(OpKind::kGlobalAvgPool));
  add_linear(plan, params, "fc", c, spec.classes, true, true);
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s;
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s;
}

// The format every checkpoint so far carries; change it and they stop loading.
std::string signature_of(const ModelSpec& spec, const ParamStore& params, const std::vector<BufferSpec>& buffers) {
  std::string sig = spec.arch + ";in=" + std::to_string(spec.in_channels) + "x" + std::to_string(spec.height) + "x" +
                    std::to_string(spec.width_px) + ";classes=" + std::to_string(spec.classes) +
                    ";norm=" + spec.norm.signature_text();
  for (const ParamInfo& p : params.all()) sig += ";" + p.name + "[" + shape_text(p.shape) + "]";
  for (const BufferSpec& b : buffers) sig += ";" + b.name + "(" + std::to_string(b.size) + ")";
  return sig;
}

}  // namespace

BatchNormOptions NormPlan::batchnorm_options() const {
  BatchNormOptions o;
  o.channels = channels;
  o.eps = spec.eps;
  o.momentum = spec.momentum;
  o.fuse_relu = relu;
  o.ghost_batch = spec.ghost_batch;
  o.renorm = spec.renorm;  // the final limits; the trainer sets each step's (NormSpec::renorm_limits)
  o.renorm_rmax = spec.renorm_rmax;
  o.renorm_dmax = spec.renorm_dmax;
  return o;
}

ConvPlan plan_conv(ParamStore& params, const std::string& name, const ConvSpec& spec) {
  SBN_CHECK(spec.in > 0 && spec.out > 0 && spec.kernel > 0 && spec.stride > 0 && spec.pad >= 0,
            name + ": bad convolution spec");
  ConvPlan p;
  p.name = name;
  p.spec = spec;
  p.weight = slot(params, params.add(name + ".weight", {spec.out, spec.in, spec.kernel, spec.kernel}, true,
                                     ParamInit::kKaiming, spec.in * spec.kernel * spec.kernel));
  if (spec.bias) p.bias = slot(params, params.add(name + ".bias", {spec.out}, false, ParamInit::kZeros));
  return p;
}

LinearPlan plan_linear(ParamStore& params, const std::string& name, std::int64_t in, std::int64_t out, bool bias,
                       bool classifier) {
  SBN_CHECK(in > 0 && out > 0, name + ": bad linear sizes");
  LinearPlan p;
  p.name = name;
  p.in = in;
  p.out = out;
  p.weight = slot(params, params.add(name + ".weight", {out, in}, true,
                                     classifier ? ParamInit::kClassifier : ParamInit::kKaiming, in));
  if (bias) p.bias = slot(params, params.add(name + ".bias", {out}, false, ParamInit::kZeros));
  return p;
}

NormPlan plan_norm(ParamStore& params, const std::string& name, std::int64_t channels, const NormSpec& spec,
                   bool relu) {
  NormPlan p;
  p.name = name;
  p.spec = spec;
  p.channels = channels;
  p.relu = relu;
  if (spec.kind == NormKind::kGroupNorm)
    SBN_CHECK(spec.gn_groups > 0 && channels % spec.gn_groups == 0,
              name + ": --gn-groups " + std::to_string(spec.gn_groups) + " must divide the channel count " +
                  std::to_string(channels));
  if (spec.kind != NormKind::kNone) {
    p.gamma = slot(params, params.add(name + ".weight", {channels}, false, ParamInit::kOnes));
    p.beta = slot(params, params.add(name + ".bias", {channels}, false, ParamInit::kZeros));
  }
  return p;
}

BlockPlan plan_block(ParamStore& params, const std::string& name, std::int64_t in, std::int64_t out,
                     std::int64_t stride, const NormSpec& spec) {
  const bool bias = spec.kind == NormKind::kNone;
  BlockPlan p;
  p.name = name;
  p.conv1 = plan_conv(params, name + ".conv1", {in, out, 3, stride, 1, bias});
  p.n1 = plan_norm(params, name + ".bn1", out, spec, true);
  p.conv2 = plan_conv(params, name + ".conv2", {out, out, 3, 1, 1, bias});
  p.n2 = plan_norm(params, name + ".bn2", out, spec, false);
  if (stride != 1 || in != out) {
    p.shortcut = true;
    p.sc_conv = plan_conv(params, name + ".shortcut.conv", {in, out, 1, stride, 0, bias});
    p.sc_norm = plan_norm(params, name + ".shortcut.bn", out, spec, false);
  }
  return p;
}

NetPlan plan_network(const ModelSpec& spec, ParamStore& params) {
  SBN_CHECK(params.all().empty(), "plan_network: the parameter store already holds parameters");
  SBN_CHECK(spec.width > 0 && spec.width <= 4096, "--width must be in [1, 4096], got " + std::to_string(spec.width));
  NetPlan plan;
  plan.arch = spec.arch;
  if (spec.arch == "convnet") {
    plan_convnet(spec, plan, params);
  } else if (spec.arch == "resnet") {
    plan_resnet(spec, plan, params);
  } else {
    SBN_FAIL("unknown model '" + spec.arch + "'; expected convnet or resnet");
  }
  params.finalize();
  for (std::size_t i = 0; i < plan.ops.size(); ++i)
    if (plan.ops[i].kind == OpKind::kNorm) plan.ops[i].norm.fused_pool = fused_pool_window(plan, i);
  for (const NormPlan* n : norm_layers(plan)) {
    if (!n->batchnorm()) continue;
    for (const char* field : {".running_mean", ".running_var", ".pivot"}) plan.buffers.push_back({n->name + field, n->channels});
    plan.buffers.push_back({n->name + ".num_batches_tracked", 1});
  }
  plan.signature = signature_of(spec, params, plan.buffers);
  return plan;
}

std::int64_t fused_pool_window(const NetPlan& plan, std::size_t i) {
  constexpr std::int64_t kPoolWindow = 2;  // every kMaxPool op is 2×2, stride 2
  if (i + 1 >= plan.ops.size() || plan.ops[i].kind != OpKind::kNorm || plan.ops[i + 1].kind != OpKind::kMaxPool)
    return 0;
  const NormPlan& n = plan.ops[i].norm;
  return n.batchnorm() && n.spec.fuse_pool ? kPoolWindow : 0;
}

std::vector<const NormPlan*> norm_layers(const NetPlan& plan) {
  std::vector<const NormPlan*> out;
  for (const OpPlan& o : plan.ops) {
    if (o.kind == OpKind::kNorm) out.push_back(&o.norm);
    if (o.kind == OpKind::kBlock) {
      out.push_back(&o.block.n1);
      out.push_back(&o.block.n2);
      if (o.block.shortcut) out.push_back(&o.block.sc_norm);
    }
  }
  return out;
}

std::string NetPlan::describe() const {
  std::string s;
  for (const OpPlan& o : ops) s += (s.empty() ? "" : " -> ") + describe_op(o);
  return s;
}

std::string describe(const ConvSpec& s) { return describe_conv(s); }
std::string describe(const NormPlan& p) { return describe_norm(p); }
std::string describe(const BlockPlan& p) { return describe_block(p); }

}  // namespace syncbn
