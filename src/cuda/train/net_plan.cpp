// plan_network(): model.cpp's architectures, layer by layer, over the CPU model's ParamStore (net_plan.h).
#include "net_plan.h"

#include <map>

#include "syncbn/error.h"

namespace syncbn::cuda::train {
namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s + "]";
}

// Claims parameters of the store by name and shape, each exactly once.
class Claims {
 public:
  explicit Claims(const ParamStore& params) : params_(params), claimed_(params.all().size(), false) {
    for (std::size_t i = 0; i < params.all().size(); ++i) index_[params.all()[i].name] = static_cast<int>(i);
  }

  ParamSlot take(const std::string& name, const std::vector<std::int64_t>& shape) {
    const auto it = index_.find(name);
    SBN_CHECK(it != index_.end(), "GPU model: the CPU model has no parameter '" + name + "' " + shape_text(shape) +
                                      " (src/nn/model.cpp and src/cuda/train/net_plan.cpp disagree)");
    const ParamInfo& p = params_.info(it->second);
    SBN_CHECK(p.shape == shape, "GPU model: parameter '" + name + "' is " + shape_text(p.shape) +
                                    " in the CPU model, the GPU model expects " + shape_text(shape));
    SBN_CHECK(!claimed_[static_cast<std::size_t>(it->second)], "GPU model: parameter '" + name + "' used twice");
    claimed_[static_cast<std::size_t>(it->second)] = true;
    return {it->second, p.offset, p.size};
  }

  void check_all_claimed() const {
    for (std::size_t i = 0; i < claimed_.size(); ++i)
      SBN_CHECK(claimed_[i], "GPU model: the CPU model's parameter '" + params_.all()[i].name + "' " +
                                 shape_text(params_.all()[i].shape) + " has no place in the GPU network " +
                                 "(src/nn/model.cpp and src/cuda/train/net_plan.cpp disagree)");
  }

 private:
  const ParamStore& params_;
  std::map<std::string, int> index_;
  std::vector<bool> claimed_;
};

ConvPlan conv(Claims& c, const std::string& name, const ConvSpec& spec) {
  ConvPlan p;
  p.name = name;
  p.spec = spec;
  p.weight = c.take(name + ".weight", {spec.out, spec.in, spec.kernel, spec.kernel});
  if (spec.bias) p.bias = c.take(name + ".bias", {spec.out});
  return p;
}

NormPlan norm(Claims& c, const std::string& name, std::int64_t channels, const NormSpec& spec, bool relu) {
  NormPlan p;
  p.name = name;
  p.kind = spec.kind;
  p.sync = spec.sync;
  p.channels = channels;
  p.relu = relu;
  if (spec.kind != NormKind::kNone) {
    p.gamma = c.take(name + ".weight", {channels});
    p.beta = c.take(name + ".bias", {channels});
  }
  if (spec.kind == NormKind::kGroupNorm) {
    SBN_CHECK(spec.gn_groups > 0 && channels % spec.gn_groups == 0,
              name + ": --gn-groups " + std::to_string(spec.gn_groups) + " must divide the channel count " +
                  std::to_string(channels));
    p.groups = spec.gn_groups;
  }
  return p;
}

LinearPlan linear(Claims& c, const std::string& name, std::int64_t in, std::int64_t out, bool bias) {
  LinearPlan p;
  p.name = name;
  p.in = in;
  p.out = out;
  p.weight = c.take(name + ".weight", {out, in});
  if (bias) p.bias = c.take(name + ".bias", {out});
  return p;
}

OpPlan op(OpKind kind) {
  OpPlan o;
  o.kind = kind;
  return o;
}

std::string describe_conv(const ConvPlan& p) {
  const ConvSpec& s = p.spec;
  return "conv" + std::to_string(s.kernel) + "x" + std::to_string(s.kernel) + "(" + std::to_string(s.in) + "->" +
         std::to_string(s.out) + (s.stride > 1 ? ",s" + std::to_string(s.stride) : "") + ")";
}

std::string describe_norm(const NormPlan& p, const std::string& bn_mode) {
  const std::string relu = p.relu ? "+relu" : "";
  if (p.batchnorm()) return "bn[" + (p.synced() ? bn_mode : p.sync.str()) + "]" + relu;
  if (p.kind == NormKind::kGroupNorm) return "gn" + std::to_string(p.groups) + relu;
  return p.relu ? "relu" : "identity";
}

}  // namespace

NetPlan plan_network(const ModelSpec& spec, const ParamStore& params) {
  Claims claims(params);
  NetPlan plan;
  plan.arch = spec.arch;
  const NormSpec& ns = spec.norm;
  const bool bias = ns.kind == NormKind::kNone;  // a norm's shift makes a conv bias redundant (model.cpp)
  const std::int64_t w = spec.width;
  if (spec.arch == "convnet") {
    std::int64_t c = spec.in_channels, h = spec.height, wd = spec.width_px;
    for (int i = 0; i < 3; ++i) {
      const std::int64_t out = w << i;
      const std::string name = "conv" + std::to_string(i + 1);
      OpPlan cv = op(OpKind::kConv);
      cv.conv = conv(claims, name, {c, out, 3, 1, 1, bias});
      plan.ops.push_back(cv);
      OpPlan nm = op(OpKind::kNorm);
      nm.norm = norm(claims, name + ".bn", out, ns, true);
      plan.ops.push_back(nm);
      plan.ops.push_back(op(OpKind::kMaxPool));
      c = out;
      h /= 2;
      wd /= 2;
    }
    SBN_CHECK(h > 0 && wd > 0, "convnet: input " + std::to_string(spec.height) + "x" + std::to_string(spec.width_px) +
                                   " is too small for three 2x2 poolings");
    plan.ops.push_back(op(OpKind::kFlatten));
    OpPlan fc1 = op(OpKind::kLinear);
    fc1.linear = linear(claims, "fc1", c * h * wd, 8 * w, bias);
    plan.ops.push_back(fc1);
    OpPlan nm = op(OpKind::kNorm);
    nm.norm = norm(claims, "fc1.bn", 8 * w, ns, true);
    plan.ops.push_back(nm);
    OpPlan fc2 = op(OpKind::kLinear);
    fc2.linear = linear(claims, "fc2", 8 * w, spec.classes, true);
    plan.ops.push_back(fc2);
  } else if (spec.arch == "resnet") {
    OpPlan stem = op(OpKind::kConv);
    stem.conv = conv(claims, "stem", {spec.in_channels, w, 3, 1, 1, bias});
    plan.ops.push_back(stem);
    OpPlan nm = op(OpKind::kNorm);
    nm.norm = norm(claims, "stem.bn", w, ns, true);
    plan.ops.push_back(nm);
    std::int64_t c = w;
    for (int stage = 0; stage < 3; ++stage) {
      const std::int64_t out = w << stage;
      for (std::int64_t b = 0; b < spec.depth; ++b) {
        const std::int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
        OpPlan blk = op(OpKind::kBlock);
        BlockPlan& p = blk.block;
        p.name = "layer" + std::to_string(stage + 1) + "." + std::to_string(b);
        p.conv1 = conv(claims, p.name + ".conv1", {c, out, 3, stride, 1, bias});
        p.n1 = norm(claims, p.name + ".bn1", out, ns, true);
        p.conv2 = conv(claims, p.name + ".conv2", {out, out, 3, 1, 1, bias});
        p.n2 = norm(claims, p.name + ".bn2", out, ns, false);
        if (stride != 1 || c != out) {
          p.shortcut = true;
          p.sc_conv = conv(claims, p.name + ".shortcut.conv", {c, out, 1, stride, 0, bias});
          p.sc_norm = norm(claims, p.name + ".shortcut.bn", out, ns, false);
        }
        plan.ops.push_back(blk);
        c = out;
      }
    }
    plan.ops.push_back(op(OpKind::kGlobalAvgPool));
    OpPlan fc = op(OpKind::kLinear);
    fc.linear = linear(claims, "fc", c, spec.classes, true);
    plan.ops.push_back(fc);
  } else {
    SBN_FAIL("unknown model '" + spec.arch + "'; expected convnet or resnet");
  }
  claims.check_all_claimed();
  return plan;
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

std::string NetPlan::describe(const std::string& bn_mode) const {
  std::string s;
  for (const OpPlan& o : ops) {
    std::string t;
    switch (o.kind) {
      case OpKind::kConv: t = describe_conv(o.conv); break;
      case OpKind::kNorm: t = describe_norm(o.norm, bn_mode); break;
      case OpKind::kMaxPool: t = "maxpool2"; break;
      case OpKind::kFlatten: t = "flatten"; break;
      case OpKind::kLinear: t = "fc(" + std::to_string(o.linear.in) + "->" + std::to_string(o.linear.out) + ")"; break;
      case OpKind::kGlobalAvgPool: t = "global-avgpool"; break;
      case OpKind::kBlock: {
        const BlockPlan& b = o.block;
        t = "res[" + describe_conv(b.conv1) + " " + describe_norm(b.n1, bn_mode) + " " + describe_conv(b.conv2) + " " +
            describe_norm(b.n2, bn_mode) +
            (b.shortcut ? " | " + describe_conv(b.sc_conv) + " " + describe_norm(b.sc_norm, bn_mode) : " | id") + "]";
        break;
      }
    }
    s += (s.empty() ? "" : " -> ") + t;
  }
  return s;
}

}  // namespace syncbn::cuda::train
