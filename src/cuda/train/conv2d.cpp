// Conv2d on cuDNN (legacy API): forward, backward data, backward filter, NHWC activations in the
// activation dtype, fp32 accumulation.
//
// Weights: the ParamStore keeps OIHW fp32 (canonical, as on the CPU); cuDNN's NHWC kernels want the
// filter NHWC ("KRSC") in the data's type, so each layer keeps a converted copy, refreshed on the first
// forward after the parameters change (NetContext::version), and cuDNN writes the weight gradient in
// that layout and type into scratch, which a kernel then adds (+=) into the fp32 OIHW gradient. A bias
// (only with --norm none) is a separate kernel, forward and backward.
//
// Algorithms are chosen once per input shape (N, H, W) and direction, on first use, with cuDNN's _v7
// heuristics (no benchmarking: no device synchronisation, the same choice on every rank with the same
// GPU): the first candidate in cuDNN's order that succeeded, fits the workspace limit and runs with the
// math we ask for (fp32: CUDNN_FMA_MATH on the descriptor and no tensor-op result, i.e. no TF32, so
// --precision fp32 computes in fp32 like the CPU path; bf16/fp16: tensor cores), preferring deterministic algorithms (bit-identical reruns) over faster
// nondeterministic ones; if cuDNN refuses it at its first run, the next candidate (as PyTorch does). The
// workspace is shared by all layers and grows to the largest choice.
#include <array>
#include <map>

#include "layers.h"
#include "syncbn/error.h"

namespace syncbn::cuda::train {
namespace {

std::string shape_text(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) {
  return "(" + std::to_string(n) + ", " + std::to_string(c) + ", " + std::to_string(h) + ", " + std::to_string(w) + ")";
}

// The usable candidates of one direction, in the order to try them, and which one is in use. An
// algorithm cuDNN recommended can still refuse the actual call (CUDNN_STATUS_NOT_SUPPORTED...): the first
// execution then moves on to the next candidate; once one has run, it is kept (and later failures throw).
struct Choice {
  struct Candidate {
    int algo;
    std::size_t memory;
    cudnnMathType_t math;
  };
  std::vector<Candidate> candidates;
  std::size_t current = 0;
  bool proven = false;
  bool chosen = false;
  std::string offered;  // what cuDNN listed, for the error message
};

// Candidates from cuDNN's list (sorted by expected speed): succeeded, within the workspace limit, run
// with fp32 (FMA) math when asked for; deterministic ones first.
template <class Perf>
Choice candidates_of(const Perf* perfs, int count, bool need_fma, std::size_t limit) {
  Choice ch;
  for (int pass = 0; pass < 2; ++pass)
    for (int i = 0; i < count; ++i) {
      const Perf& p = perfs[i];
      if (p.status != CUDNN_STATUS_SUCCESS || p.memory > limit) continue;
      // fp32: no tensor-op (TF32) result; one reported with the default math type runs with FMA math set
      // on the descriptor (the default would permit TF32 on Ampere and later).
      const bool tensor_op = p.mathType == CUDNN_TENSOR_OP_MATH || p.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
      if (need_fma && tensor_op) continue;
      if ((p.determinism == CUDNN_DETERMINISTIC) != (pass == 0)) continue;
      ch.candidates.push_back({static_cast<int>(p.algo), p.memory, need_fma ? CUDNN_FMA_MATH : p.mathType});
    }
  for (int i = 0; i < count; ++i) {
    const Perf& p = perfs[i];
    ch.offered += " [algo " + std::to_string(static_cast<int>(p.algo)) + ": " + cudnnGetErrorString(p.status) + ", " +
                  std::to_string(p.memory) + " bytes, math " + std::to_string(static_cast<int>(p.mathType)) +
                  (p.determinism == CUDNN_DETERMINISTIC ? ", deterministic" : "") + "]";
  }
  ch.chosen = true;
  return ch;
}

class ConvLayer final : public Layer {
 public:
  ConvLayer(const ConvPlan& plan, NetContext& ctx) : p_(plan), ctx_(ctx) {
    const ConvSpec& s = p_.spec;
    w_desc_.set_krsc(ctx_.dtype, s.out, s.in, s.kernel);
    const std::size_t wbytes = static_cast<std::size_t>(s.out * s.in * s.kernel * s.kernel) * dtype_size(ctx_.dtype);
    w_work_.reserve(wbytes, p_.name + " filter (NHWC)");
    dw_work_.reserve(wbytes, p_.name + " filter gradient (NHWC)");
  }

  const DeviceTensor& forward(const DeviceTensor& x, bool) override {
    const ConvSpec& s = p_.spec;
    SBN_CHECK(x.rank() == 4 && x.dim(1) == s.in && x.layout() == Layout::kChannelsLast && x.dtype() == ctx_.dtype,
              p_.name + ": expects NHWC (N, " + std::to_string(s.in) + ", H, W) " + dtype_name(ctx_.dtype) + ", got " +
                  describe(x.shape(), x.layout()) + " " + dtype_name(x.dtype()));
    const std::int64_t N = x.dim(0), H = x.dim(2), W = x.dim(3);
    SBN_CHECK(H + 2 * s.pad >= s.kernel && W + 2 * s.pad >= s.kernel,
              p_.name + ": input " + describe(x.shape(), x.layout()) + " too small");
    const std::int64_t Ho = (H + 2 * s.pad - s.kernel) / s.stride + 1, Wo = (W + 2 * s.pad - s.kernel) / s.stride + 1;
    x_ = &x;
    y_.resize({N, s.out, Ho, Wo}, Layout::kChannelsLast, ctx_.dtype, ctx_.launch.stream);
    if (N == 0) return y_;  // nothing to compute (cuDNN rejects empty tensors)
    refresh_weights();
    Plan& a = plan_for(N, H, W, Ho, Wo);
    if (!a.fwd.chosen) {
      int count = 0, returned = 0;
      SBN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(ctx_.cudnn, &count), p_.name);
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<std::size_t>(std::max(count, 1)));
      SBN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(ctx_.cudnn, a.x.get(), w_desc_.get(), a.fwd_desc.get(),
                                                             a.y.get(), count, &returned, perf.data()),
                      p_.name + " forward algorithm");
      a.fwd = candidates_of(perf.data(), returned, need_fma(), ctx_.workspace_limit);
    }
    const float one = 1.0f, zero = 0.0f;
    run(a.fwd, a.fwd_desc, "forward", N, H, W, [&](int algo, std::size_t ws) {
      return cudnnConvolutionForward(ctx_.cudnn, &one, a.x.get(), x.data(), w_desc_.get(), w_work_.data(),
                                     a.fwd_desc.get(), static_cast<cudnnConvolutionFwdAlgo_t>(algo),
                                     ctx_.workspace.data(), ws, &zero, a.y.get(), y_.data());
    });
    if (p_.bias.present()) add_bias(y_.data(), ctx_.dtype, N * Ho * Wo, s.out, ctx_.values + p_.bias.offset, ctx_.launch);
    return y_;
  }

  const DeviceTensor* backward(const DeviceTensor& dy, bool need_dx) override {
    SBN_CHECK(x_ && dy.shape() == y_.shape() && dy.dtype() == ctx_.dtype,
              p_.name + ": backward's gradient " + describe(dy.shape(), dy.layout()) + " does not match the output " +
                  describe(y_.shape(), y_.layout()));
    const ConvSpec& s = p_.spec;
    const DeviceTensor& x = *x_;
    const std::int64_t N = x.dim(0), H = x.dim(2), W = x.dim(3), Ho = y_.dim(2), Wo = y_.dim(3);
    if (need_dx) dx_.resize(x.shape(), x.layout(), ctx_.dtype, ctx_.launch.stream);
    if (N == 0) {
      grads_done(ctx_, {p_.weight, p_.bias});  // nothing to add: complete as they are
      return need_dx ? &dx_ : nullptr;
    }
    Plan& a = plan_for(N, H, W, Ho, Wo);
    const float one = 1.0f, zero = 0.0f;
    // Weight gradient: into the NHWC scratch in the activation dtype, then += into the fp32 OIHW gradient.
    if (!a.bwd_filter.chosen) {
      int count = 0, returned = 0;
      SBN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(ctx_.cudnn, &count), p_.name);
      std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<std::size_t>(std::max(count, 1)));
      SBN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(ctx_.cudnn, a.x.get(), a.y.get(),
                                                                    a.bwd_filter_desc.get(), w_desc_.get(), count,
                                                                    &returned, perf.data()),
                      p_.name + " weight-gradient algorithm");
      a.bwd_filter = candidates_of(perf.data(), returned, need_fma(), ctx_.workspace_limit);
    }
    run(a.bwd_filter, a.bwd_filter_desc, "weight-gradient", N, H, W, [&](int algo, std::size_t ws) {
      return cudnnConvolutionBackwardFilter(ctx_.cudnn, &one, a.x.get(), x.data(), a.y.get(), dy.data(),
                                            a.bwd_filter_desc.get(), static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo),
                                            ctx_.workspace.data(), ws, &zero, w_desc_.get(), dw_work_.data());
    });
    accumulate_krsc_grad(dw_work_.data(), ctx_.dtype, s.out, s.in, s.kernel, ctx_.grads + p_.weight.offset, ctx_.launch);
    if (p_.bias.present())
      bias_grad(dy.data(), ctx_.dtype, N * Ho * Wo, s.out, ctx_.grads + p_.bias.offset, ctx_.reduce_ws, ctx_.launch);
    grads_done(ctx_, {p_.weight, p_.bias});  // before the input gradient: its bucket may start meanwhile
    if (!need_dx) return nullptr;
    if (!a.bwd_data.chosen) {
      int count = 0, returned = 0;
      SBN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(ctx_.cudnn, &count), p_.name);
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<std::size_t>(std::max(count, 1)));
      SBN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(ctx_.cudnn, w_desc_.get(), a.y.get(),
                                                                  a.bwd_data_desc.get(), a.x.get(), count, &returned,
                                                                  perf.data()),
                      p_.name + " input-gradient algorithm");
      a.bwd_data = candidates_of(perf.data(), returned, need_fma(), ctx_.workspace_limit);
    }
    run(a.bwd_data, a.bwd_data_desc, "input-gradient", N, H, W, [&](int algo, std::size_t ws) {
      return cudnnConvolutionBackwardData(ctx_.cudnn, &one, w_desc_.get(), w_work_.data(), a.y.get(), dy.data(),
                                          a.bwd_data_desc.get(), static_cast<cudnnConvolutionBwdDataAlgo_t>(algo),
                                          ctx_.workspace.data(), ws, &zero, a.x.get(), dx_.data());
    });
    return &dx_;
  }

 private:
  // Descriptors and algorithm choices of one input shape. One convolution descriptor per direction: each
  // carries the math type of its algorithm.
  struct Plan {
    TensorDesc x, y;  // x also describes dx, y also dy
    ConvDesc fwd_desc, bwd_data_desc, bwd_filter_desc;
    Choice fwd, bwd_data, bwd_filter;
  };

  // fp32 data: FMA math only, i.e. no TF32 (--precision fp32 computes in fp32, like the CPU path).
  bool need_fma() const { return ctx_.dtype == DType::kF32; }
  cudnnMathType_t wanted_math() const { return need_fma() ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH; }

  void refresh_weights() {
    if (w_version_ == ctx_.version) return;
    const ConvSpec& s = p_.spec;
    weights_to_krsc(ctx_.values + p_.weight.offset, s.out, s.in, s.kernel, ctx_.dtype, w_work_.data(), ctx_.launch);
    w_version_ = ctx_.version;
  }

  // Runs `call(algo, workspace bytes)` with the current candidate; while no candidate has run yet, a
  // refusal moves on to the next one (the workspace grows as needed: cudaFree waits for the device, so
  // only on the first step of a shape).
  template <class Call>
  void run(Choice& ch, ConvDesc& desc, const char* direction, std::int64_t N, std::int64_t H, std::int64_t W,
           const Call& call) {
    std::string tried;
    for (;;) {
      SBN_CHECK(ch.current < ch.candidates.size(),
                p_.name + ": no usable cuDNN " + direction + " algorithm for " + shape_text(N, p_.spec.in, H, W) + " " +
                    dtype_name(ctx_.dtype) + " within " + std::to_string(ctx_.workspace_limit >> 20) +
                    " MiB of workspace" + (need_fma() ? " with fp32 (FMA) math" : "") + "; cuDNN offered:" + ch.offered +
                    (tried.empty() ? "" : "; refused at run time:" + tried));
      const Choice::Candidate& c = ch.candidates[ch.current];
      if (!ch.proven) {
        desc.set_math(c.math);
        if (c.memory > ctx_.workspace.capacity()) ctx_.workspace.reserve(c.memory, "cuDNN workspace", ctx_.launch.stream);
      }
      const cudnnStatus_t rc = call(c.algo, c.memory);
      if (rc == CUDNN_STATUS_SUCCESS) {
        ch.proven = true;
        return;
      }
      if (ch.proven)
        SBN_CUDNN_CHECK(rc, p_.name + " " + direction + " " + shape_text(N, p_.spec.in, H, W) + " algo " +
                                std::to_string(c.algo));
      tried += " [algo " + std::to_string(c.algo) + ": " + cudnn_error_text(rc) + "]";
      cudaGetLastError();  // a refused launch may leave a (non-sticky) launch error behind: not ours to report
      ++ch.current;
    }
  }

  Plan& plan_for(std::int64_t N, std::int64_t H, std::int64_t W, std::int64_t Ho, std::int64_t Wo) {
    const std::array<std::int64_t, 3> key{N, H, W};
    auto it = plans_.find(key);
    if (it != plans_.end()) return *it->second;
    const ConvSpec& s = p_.spec;
    auto a = std::make_unique<Plan>();
    a->x.set_nhwc(ctx_.dtype, N, s.in, H, W);
    a->y.set_nhwc(ctx_.dtype, N, s.out, Ho, Wo);
    for (ConvDesc* d : {&a->fwd_desc, &a->bwd_data_desc, &a->bwd_filter_desc}) d->set(s.pad, s.stride, wanted_math());
    return *plans_.emplace(key, std::move(a)).first->second;
  }

  ConvPlan p_;
  NetContext& ctx_;
  FilterDesc w_desc_;            // also describes the weight gradient
  DeviceBuffer w_work_;          // (out, k, k, in) in the activation dtype
  DeviceBuffer dw_work_;         // the weight gradient cuDNN writes, same layout
  std::uint64_t w_version_ = 0;  // ctx_.version the copy was made at (0: never)
  std::map<std::array<std::int64_t, 3>, std::unique_ptr<Plan>> plans_;  // by (N, H, W)
  const DeviceTensor* x_ = nullptr;
  DeviceTensor y_, dx_;
};

}  // namespace

std::unique_ptr<Layer> make_conv(const ConvPlan& plan, NetContext& ctx) { return std::make_unique<ConvLayer>(plan, ctx); }

}  // namespace syncbn::cuda::train
