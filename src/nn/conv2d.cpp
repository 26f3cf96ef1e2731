// Conv2d on oneDNN (chosen by measurement, see README "Design": on this machine's shapes oneDNN's jit
// NHWC kernels ran at 86-136 GFLOP/s single-threaded, im2col + OpenBLAS at 13-18).
//
// Activations are NHWC, so convolutions, SyncBN and pooling exchange tensors without reorders. The
// weights stay OIHW in the ParamStore (canonical for the optimizer, the gradient all-reduce across
// possibly different CPUs, and checkpoints) and are reordered to oneDNN's preferred blocked format each
// step (a few hundred KB at most). Convolutions with fewer than kGemmMaxIn input channels (the network's
// input layer: 1 or 3) have no fast NHWC-output kernel in oneDNN (its reference kernel is ~1000x slower;
// its jit kernel writes a blocked layout whose reorders to and from NHWC cost more than the convolution),
// so they are computed as im2col + oneDNN's sgemm, which writes NHWC directly. Any other plan whose
// NHWC output would take the reference kernel computes in the blocked layout and reorders.
//
// --precision bf16 (CpuContext::bf16): the oneDNN convolutions take bf16 copies of their input, weights
// and output gradient (one reorder each, converting as it goes) and write fp32 outputs, input gradients
// and weight gradients (oneDNN accumulates in fp32), so the tensors between layers, the ParamStore and
// its gradient accumulation stay fp32. The bf16 input copy made by forward() is the one the weight
// gradient reads in backward(). The im2col + sgemm layers (the network input) stay fp32: a few percent
// of the FLOPs, and their input is the data itself.
//
// bf16 activations: a bf16 input (a fused BN+pool's output) is the bf16 operand itself, no reorder, and
// the input gradient is written in bf16 (oneDNN's diff_src); with bf16_out the output is written in bf16
// (for a fused BN+pool, which reads it widened) and its gradient arrives in bf16, the diff_dst operand
// itself. Weight gradients stay fp32 either way.
#include <cblas.h>

#include <omp.h>

#include <cstring>
#include <map>

#include "syncbn/error.h"
#include "syncbn/nn.h"

namespace syncbn {
namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

bool is_reference_impl(const char* impl) { return std::strncmp(impl, "ref", 3) == 0; }

constexpr const char* kNoBf16 =
    ": --precision bf16 has no optimized oneDNN convolution on this CPU (needs AVX-512; fast with AVX512-BF16 "
    "or AMX); use --precision fp32";

// Convolutions with fewer input channels than this take the im2col + sgemm path (see above).
constexpr std::int64_t kGemmMaxIn = 8;

// Every primitive owns its scratchpad (scratchpad_mode::user) instead of sharing the library's: the
// memory each layer needs is explicit and allocated once, with its plan.
dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

struct Prim {
  dnnl::primitive prim;
  memory scratch;
  void execute(dnnl::stream& s, std::unordered_map<int, memory> args) const {
    args[DNNL_ARG_SCRATCHPAD] = scratch;
    prim.execute(s, args);
  }
  void reorder(dnnl::stream& s, const memory& from, const memory& to) const {
    execute(s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
  }
};

Prim make_reorder(const memory& from, const memory& to, const dnnl::engine& eng) {
  const dnnl::reorder::primitive_desc pd(from, to, user_scratchpad());
  return {dnnl::reorder(pd), memory(pd.scratchpad_desc(), eng)};
}

template <class Pd>
memory scratch_of(const Pd& pd, const dnnl::engine& eng) {
  return memory(pd.scratchpad_desc(), eng);
}

class Conv2d final : public Module {
 public:
  Conv2d(const ConvPlan& plan, ParamStore& store, CpuContext& ctx, bool bf16_out)
      : name_(plan.name),
        spec_(plan.spec),
        store_(store),
        ctx_(ctx),
        weight_(plan.weight.index),
        bias_(plan.bias.index),
        gemm_(plan.spec.in < kGemmMaxIn),
        bf16_out_(bf16_out && ctx.bf16 && !gemm_) {}

  void forward(const Tensor& x, Tensor& y, bool) override {
    SBN_CHECK(x.rank() == 4 && x.dim(1) == spec_.in,
              name_ + ": expects (N, " + std::to_string(spec_.in) + ", H, W), got " + syncbn::describe(x.shape(), x.layout()));
    if (gemm_) {
      SBN_CHECK(x.dtype() == ElementType::kF32, name_ + ": an im2col convolution (fewer than " +
                                                    std::to_string(kGemmMaxIn) + " input channels) reads fp32 only");
      gemm_forward(x, y);
      return;
    }
    Plan& p = plan_for(x);
    const std::int64_t N = x.dim(0);
    y.resize({N, spec_.out, p.ho, p.wo}, Layout::kChannelsLast, p.out_bf16 ? ElementType::kBF16 : ElementType::kF32);
    if (N == 0) return;
    // Weights: canonical OIHW → the forward primitive's format.
    p.w_user.set_data_handle(store_.value(weight_));
    p.w_to_fwd.reorder(ctx_.stream, p.w_user, p.w_fwd);
    set_src(x, p);
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, p.lp ? p.src_lp : p.src}, {DNNL_ARG_WEIGHTS, p.w_fwd}};
    if (bias_ >= 0) {
      p.b.set_data_handle(store_.value(bias_));
      args[DNNL_ARG_BIAS] = p.b;
    }
    p.dst_user.set_data_handle(y.data());
    args[DNNL_ARG_DST] = p.blocked_dst ? p.dst_blocked : p.dst_user;
    p.fwd.execute(ctx_.stream, args);
    if (p.blocked_dst) p.dst_to_user.reorder(ctx_.stream, p.dst_blocked, p.dst_user);
    ctx_.stream.wait();
  }

  void backward(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx) override {
    if (gemm_) {
      gemm_backward(x, dy, dx);
      return;
    }
    Plan& p = plan_for(x);
    if (x.dim(0) == 0) {
      if (dx) dx->resize(x.shape(), x.layout(), x.dtype());
      return;
    }
    SBN_CHECK(dy.dtype() == (p.out_bf16 ? ElementType::kBF16 : ElementType::kF32),
              name_ + ": the output gradient's dtype is not the output's");
    p.dst_user.set_data_handle(const_cast<float*>(dy.data()));
    memory diff_dst = p.dst_user;
    if (p.lp) {
      if (p.dy_direct) {
        p.diff_dst_lp.set_data_handle(const_cast<float*>(dy.data()));
      } else {
        p.dy_to_lp.reorder(ctx_.stream, p.dst_user, p.diff_dst_lp);
      }
      diff_dst = p.diff_dst_lp;
    } else if (p.blocked_dst) {
      p.user_to_dst.reorder(ctx_.stream, p.dst_user, p.dst_blocked);
      diff_dst = p.dst_blocked;
    }
    if (store_.fp64_grads()) {
      weight_grad_fp64(x, dy, p.ho, p.wo);
    } else {
      weight_grad_fp32(x, diff_dst, p);
    }
    if (!dx) return;
    dx->resize(x.shape(), x.layout(), x.dtype());
    ensure_bwd_data(p);
    p.w_user.set_data_handle(store_.value(weight_));
    p.w_to_bwd.reorder(ctx_.stream, p.w_user, p.w_bwd);
    p.diff_src.set_data_handle(dx->data());
    p.bwd_d.execute(ctx_.stream, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, p.w_bwd},
                                  {DNNL_ARG_DIFF_SRC, p.diff_src}});
    ctx_.stream.wait();
  }

  std::string describe() const override { return syncbn::describe(spec_); }

 private:
  // ---- the im2col + sgemm path (few input channels) ----

  std::int64_t out_size(std::int64_t n) const { return (n + 2 * spec_.pad - spec_.kernel) / spec_.stride + 1; }

  // colT (C·K·K, N·Ho·Wo): row (c, kh, kw) holds that tap's input value at every output position (0 in
  // the padding), matching OIHW weights. Transposed, so each row fills with contiguous spans of the input
  // (one per output row), not 9 strided scalars per output position.
  void im2col(const Tensor& x, std::int64_t ho, std::int64_t wo) {
    const std::int64_t N = x.dim(0), C = spec_.in, H = x.dim(2), W = x.dim(3), K = spec_.kernel, s = spec_.stride;
    const std::int64_t rows = N * ho * wo;
    const bool nhwc = x.layout() == Layout::kChannelsLast && C > 1;
    col_.resize(static_cast<std::size_t>(C * K * K * rows));
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t kh = 0; kh < K; ++kh)
        for (std::int64_t kw = 0; kw < K; ++kw) {
          float* row = col_.data() + ((c * K + kh) * K + kw) * rows;
          // Output columns j whose input column j·s + kw − pad is inside [0, W).
          const std::int64_t j0 = std::max<std::int64_t>(0, (spec_.pad - kw + s - 1) / s);
          const std::int64_t j1 = std::min<std::int64_t>(wo, (W - 1 + spec_.pad - kw) / s + 1);
          for (std::int64_t n = 0; n < N; ++n)
            for (std::int64_t i = 0; i < ho; ++i) {
              float* out = row + (n * ho + i) * wo;
              const std::int64_t h = i * s + kh - spec_.pad;
              if (h < 0 || h >= H || j1 <= j0) {
                std::fill_n(out, wo, 0.0f);
                continue;
              }
              std::fill_n(out, j0, 0.0f);
              const std::int64_t w0 = j0 * s + kw - spec_.pad;
              if (nhwc) {
                const float* in = x.data() + ((n * H + h) * W + w0) * C + c;
                for (std::int64_t j = j0; j < j1; ++j) out[j] = in[(j - j0) * s * C];
              } else {
                const float* in = x.data() + ((n * C + c) * H + h) * W + w0;
                for (std::int64_t j = j0; j < j1; ++j) out[j] = in[(j - j0) * s];
              }
              std::fill(out + j1, out + wo, 0.0f);
            }
        }
  }

  void gemm_forward(const Tensor& x, Tensor& y) {
    SBN_CHECK(x.rank() == 4 && x.dim(1) == spec_.in,
              name_ + ": expects (N, " + std::to_string(spec_.in) + ", H, W), got " + syncbn::describe(x.shape(), x.layout()));
    const std::int64_t N = x.dim(0), ho = out_size(x.dim(2)), wo = out_size(x.dim(3)), O = spec_.out;
    SBN_CHECK(ho > 0 && wo > 0, name_ + ": input " + syncbn::describe(x.shape(), x.layout()) + " too small");
    y.resize({N, O, ho, wo}, Layout::kChannelsLast);
    if (N == 0) return;
    const std::int64_t rows = N * ho * wo, kkc = spec_.in * spec_.kernel * spec_.kernel;
    im2col(x, ho, wo);  // kept for backward
    // y (rows, O) = colTᵀ · Wᵀ
    SBN_CHECK(dnnl::sgemm('T', 'T', rows, O, kkc, 1.0f, col_.data(), rows, store_.value(weight_), kkc, 0.0f, y.data(), O) ==
                  dnnl::status::success,
              name_ + ": oneDNN sgemm failed");
    if (bias_ >= 0) {
      const float* b = store_.value(bias_);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t o = 0; o < O; ++o) y.data()[r * O + o] += b[o];
    }
  }

  void gemm_backward(const Tensor& x, const Tensor& dy, Tensor* dx) {
    const std::int64_t N = x.dim(0), ho = out_size(x.dim(2)), wo = out_size(x.dim(3)), O = spec_.out;
    if (dx) dx->resize(x.shape(), x.layout());
    if (N == 0) return;
    const std::int64_t rows = N * ho * wo, K = spec_.kernel, C = spec_.in, kkc = C * K * K, s = spec_.stride;
    if (store_.fp64_grads()) {
      weight_grad_fp64(x, dy, ho, wo);
    } else {
      // dW (O, kkc) += dyᵀ · colTᵀ, accumulated by the GEMM (beta = 1) straight into the store.
      SBN_CHECK(dnnl::sgemm('T', 'T', O, kkc, rows, 1.0f, dy.data(), O, col_.data(), rows, 1.0f, store_.grad(weight_),
                            kkc) == dnnl::status::success,
                name_ + ": oneDNN sgemm failed");
      if (bias_ >= 0) {
        float* db = store_.grad(bias_);
        for (std::int64_t r = 0; r < rows; ++r)
          for (std::int64_t o = 0; o < O; ++o) db[o] += dy.data()[r * O + o];
      }
    }
    if (!dx) return;
    // dcolT (kkc, rows) = Wᵀ · dyᵀ, then col2im: every tap adds its row back onto the input positions.
    dcol_.resize(static_cast<std::size_t>(kkc * rows));
    SBN_CHECK(dnnl::sgemm('T', 'T', kkc, rows, O, 1.0f, store_.value(weight_), kkc, dy.data(), O, 0.0f, dcol_.data(),
                          rows) == dnnl::status::success,
              name_ + ": oneDNN sgemm failed");
    dx->zero();
    const std::int64_t H = x.dim(2), W = x.dim(3);
    const bool nhwc = x.layout() == Layout::kChannelsLast && C > 1;
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t kh = 0; kh < K; ++kh)
        for (std::int64_t kw = 0; kw < K; ++kw) {
          const float* row = dcol_.data() + ((c * K + kh) * K + kw) * rows;
          const std::int64_t j0 = std::max<std::int64_t>(0, (spec_.pad - kw + s - 1) / s);
          const std::int64_t j1 = std::min<std::int64_t>(wo, (W - 1 + spec_.pad - kw) / s + 1);
          for (std::int64_t n = 0; n < N; ++n)
            for (std::int64_t i = 0; i < ho; ++i) {
              const std::int64_t h = i * s + kh - spec_.pad;
              if (h < 0 || h >= H) continue;
              const float* g = row + (n * ho + i) * wo;
              const std::int64_t w0 = j0 * s + kw - spec_.pad;
              if (nhwc) {
                float* out = dx->data() + ((n * H + h) * W + w0) * C + c;
                for (std::int64_t j = j0; j < j1; ++j) out[(j - j0) * s * C] += g[j];
              } else {
                float* out = dx->data() + ((n * C + c) * H + h) * W + w0;
                for (std::int64_t j = j0; j < j1; ++j) out[(j - j0) * s] += g[j];
              }
            }
        }
  }

  // Everything oneDNN needs for one input shape and layout; built on first use and cached (a training
  // run sees a handful of batch sizes: the slices, the last eval batch).
  struct Plan {
    std::int64_t ho = 0, wo = 0;
    bool blocked_dst = false;
    dnnl::convolution_forward::primitive_desc fwd_pd;
    Prim fwd, bwd_w, bwd_d;
    bool has_bwd_d = false;
    bool lp = false;  // bf16 compute (CpuContext::bf16): src_lp, diff_dst_lp are the bf16 operands
    bool src_bf16 = false;   // the input is bf16: src_lp is its buffer, dx is written in bf16
    bool out_bf16 = false;   // the output (so dy) is bf16
    bool dy_direct = false;  // diff_dst_lp is dy's buffer (bf16 NHWC, as the primitives take it)
    memory src_lp, diff_dst_lp;
    Prim src_to_lp, dy_to_lp;
    memory::desc src_cmp_md, diff_dst_md;  // src and diff_dst as the primitives take them
    memory src, dst_user, dst_blocked, w_user, w_fwd, w_bwd, b, dw, dw_user, db, diff_src;
    Prim dst_to_user, user_to_dst, w_to_fwd, w_to_bwd, dw_to_user;
    memory::desc src_md, dst_md, wei_any, bias_md;
    memory::dims strides, pad;
  };

  static void accumulate(float* dst, const float* src, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) dst[i] += src[i];
  }

  // The source operand from x: its own buffer, or (fp32 x, bf16 compute) its bf16 copy, made by forward
  // and kept for the weight gradient.
  void set_src(const Tensor& x, Plan& p) {
    if (p.src_bf16) {
      p.src_lp.set_data_handle(const_cast<float*>(x.data()));
      return;
    }
    p.src.set_data_handle(const_cast<float*>(x.data()));
    if (p.lp) p.src_to_lp.reorder(ctx_.stream, p.src, p.src_lp);
  }

  // Weight (and bias) gradients on oneDNN: it assigns; the ParamStore accumulates, so through scratch.
  void weight_grad_fp32(const Tensor& x, const memory& diff_dst, Plan& p) {
    if (p.src_bf16) {
      p.src_lp.set_data_handle(const_cast<float*>(x.data()));
    } else {
      p.src.set_data_handle(const_cast<float*>(x.data()));
    }
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, p.lp ? p.src_lp : p.src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, p.dw}};
    if (bias_ >= 0) args[DNNL_ARG_DIFF_BIAS] = p.db;
    p.bwd_w.execute(ctx_.stream, args);
    p.dw_user.set_data_handle(dw_scratch_.data());
    p.dw_to_user.reorder(ctx_.stream, p.dw, p.dw_user);
    ctx_.stream.wait();
    accumulate(store_.grad(weight_), dw_scratch_.data(), store_.info(weight_).size);
    if (bias_ >= 0) accumulate(store_.grad(bias_), db_scratch_.data(), spec_.out);
  }

  // Element i of an fp32 or bf16 (exactly widened) activation.
  static double element(const Tensor& t, std::int64_t i) {
    return t.dtype() == ElementType::kBF16 ? bf16_to_float(t.bf16()[i]) : t.data()[i];
  }

  // --grad-accum fp64: dW = dyᵀ·im2col(x) with OpenBLAS DGEMM over all N·Ho·Wo output positions (the
  // float products are exact in double; see ParamStore::enable_fp64_grads for why).
  void weight_grad_fp64(const Tensor& x, const Tensor& dy, std::int64_t ho, std::int64_t wo) {
    const std::int64_t N = x.dim(0), C = spec_.in, H = x.dim(2), W = x.dim(3), K = spec_.kernel;
    const std::int64_t rows = N * ho * wo, kkc = K * K * C, O = spec_.out;
    const bool nhwc = x.layout() == Layout::kChannelsLast || C == 1;
    col64_.assign(static_cast<std::size_t>(rows * kkc), 0.0);  // (rows, kh, kw, c), zero padding
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < ho; ++i)
        for (std::int64_t j = 0; j < wo; ++j) {
          double* row = col64_.data() + ((n * ho + i) * wo + j) * kkc;
          for (std::int64_t kh = 0; kh < K; ++kh) {
            const std::int64_t h = i * spec_.stride + kh - spec_.pad;
            if (h < 0 || h >= H) continue;
            for (std::int64_t kw = 0; kw < K; ++kw) {
              const std::int64_t w = j * spec_.stride + kw - spec_.pad;
              if (w < 0 || w >= W) continue;
              double* out = row + (kh * K + kw) * C;
              for (std::int64_t c = 0; c < C; ++c)
                out[c] = element(x, nhwc ? ((n * H + h) * W + w) * C + c : ((n * C + c) * H + h) * W + w);
            }
          }
        }
    dy64_.resize(static_cast<std::size_t>(rows * O));  // NHWC: (rows, O)
    for (std::int64_t i = 0; i < rows * O; ++i) dy64_[static_cast<std::size_t>(i)] = element(dy, i);
    dw64_.assign(static_cast<std::size_t>(O * kkc), 0.0);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(O), static_cast<int>(kkc),
                static_cast<int>(rows), 1.0, dy64_.data(), static_cast<int>(O), col64_.data(), static_cast<int>(kkc),
                0.0, dw64_.data(), static_cast<int>(kkc));
    double* g = store_.grad64(weight_);  // OIHW
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t k = 0; k < K * K; ++k)
          g[(o * C + c) * K * K + k] += dw64_[static_cast<std::size_t>(o * kkc + k * C + c)];
    if (bias_ >= 0) {
      double* gb = store_.grad64(bias_);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t o = 0; o < O; ++o) gb[o] += dy64_[static_cast<std::size_t>(r * O + o)];
    }
  }

  // The weight-gradient primitive of a plan and what it needs (plan_for's second half).
  void plan_weight_grad(Plan& p, const memory::dims& wei_dims, const memory::dims& dst_dims,
                        const memory::desc& wei_user) {
    // oneDNN 2.6.3's jit_1x1 weight-gradient kernel hangs, aborts or crashes with more than one thread
    // when the layer has fewer than 16 input channels and a small batch (reproduced with the plain oneDNN
    // API: 1x1 stride-2 conv, 8 -> 16 channels, batch 3, 2 OpenMP threads; fine with 1 thread or 16+
    // channels). For those layers, ask for plain OIHW weight gradients, which oneDNN computes with its
    // reference kernel: correct, and cheap at these sizes.
    const bool avoid_jit_1x1 = spec_.kernel == 1 && spec_.in < 16 && omp_get_max_threads() > 1;
    const memory::desc wei_grad_md(wei_dims, dt::f32, avoid_jit_1x1 ? tag::oihw : tag::any);
    // diff_dst: fp32 in the output's format; bf16 in NHWC, or in the kernel's choice when the output is
    // blocked (dy is converted from NHWC into it by one reorder either way).
    const bool diff_dst_any = p.lp && p.blocked_dst;
    p.diff_dst_md = p.lp ? memory::desc(dst_dims, dt::bf16, diff_dst_any ? tag::any : tag::nhwc) : p.dst_md;
    auto wd = spec_.bias ? dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct,
                                                                    p.src_cmp_md, wei_grad_md, p.bias_md,
                                                                    p.diff_dst_md, p.strides, p.pad, p.pad)
                         : dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct,
                                                                    p.src_cmp_md, wei_grad_md, p.diff_dst_md,
                                                                    p.strides, p.pad, p.pad);
    auto wpd = dnnl::convolution_backward_weights::primitive_desc(wd, user_scratchpad(), ctx_.engine, p.fwd_pd);
    SBN_CHECK(wpd.src_desc() == p.src_cmp_md && (diff_dst_any || wpd.diff_dst_desc() == p.diff_dst_md),
              name_ + ": oneDNN chose other activation formats for the weight gradient");
    p.diff_dst_md = wpd.diff_dst_desc();
    p.dy_direct = p.out_bf16 && !diff_dst_any;
    if (p.dy_direct) {
      p.diff_dst_lp = memory(p.diff_dst_md, ctx_.engine, nullptr);
    } else if (p.lp) {
      p.diff_dst_lp = memory(p.diff_dst_md, ctx_.engine);
      p.dy_to_lp = make_reorder(p.dst_user, p.diff_dst_lp, ctx_.engine);
    }
    p.bwd_w = {dnnl::convolution_backward_weights(wpd), scratch_of(wpd, ctx_.engine)};
    p.dw = memory(wpd.diff_weights_desc(), ctx_.engine);
    dw_scratch_.resize(static_cast<std::size_t>(store_.info(weight_).size));
    p.dw_user = memory(wei_user, ctx_.engine, dw_scratch_.data());
    p.dw_to_user = make_reorder(p.dw, p.dw_user, ctx_.engine);
    db_scratch_.resize(static_cast<std::size_t>(spec_.out));
    p.db = memory(p.bias_md, ctx_.engine, db_scratch_.data());
  }

  Plan& plan_for(const Tensor& x) {
    const bool planar = x.layout() == Layout::kPlanar && x.dim(1) > 1;
    const bool src_bf16 = x.dtype() == ElementType::kBF16;
    SBN_CHECK(!src_bf16 || (ctx_.bf16 && !planar), name_ + ": a bf16 input needs --precision bf16 and NHWC");
    const auto key = std::make_tuple(x.dim(0), x.dim(2), x.dim(3), planar, src_bf16);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    Plan& p = plans_[key];
    const std::int64_t N = x.dim(0), H = x.dim(2), W = x.dim(3), k = spec_.kernel, s = spec_.stride;
    p.ho = (H + 2 * spec_.pad - k) / s + 1;
    p.wo = (W + 2 * spec_.pad - k) / s + 1;
    SBN_CHECK(p.ho > 0 && p.wo > 0, name_ + ": input " + syncbn::describe(x.shape(), x.layout()) + " too small");
    p.lp = ctx_.bf16;
    p.src_bf16 = src_bf16;
    p.out_bf16 = bf16_out_;  // also for an empty batch: the dtypes a layer hands on do not depend on N
    if (N == 0) return p;
    const memory::dims src_dims = {N, spec_.in, H, W}, dst_dims = {N, spec_.out, p.ho, p.wo},
                       wei_dims = {spec_.out, spec_.in, k, k}, bias_dims = {spec_.out};
    p.strides = {s, s};
    p.pad = {spec_.pad, spec_.pad};
    // (N, 1, H, W) is the same bytes in NCHW and NHWC; give oneDNN the tag its first-layer kernels take.
    const tag src_tag = planar || spec_.in == 1 ? tag::nchw : tag::nhwc;
    const dt cdt = p.lp ? dt::bf16 : dt::f32;  // the compute type of src, weights and diff_dst
    const dt out_dt = p.out_bf16 ? dt::bf16 : dt::f32;
    p.src_md = memory::desc(src_dims, dt::f32, src_tag);
    p.src_cmp_md = memory::desc(src_dims, cdt, src_tag);
    const memory::desc dst_nhwc(dst_dims, out_dt, tag::nhwc);
    p.wei_any = memory::desc(wei_dims, cdt, tag::any);
    p.bias_md = memory::desc(bias_dims, dt::f32, tag::x);
    auto make_fwd = [&](const memory::desc& dst_md) {
      auto d = spec_.bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                           dnnl::algorithm::convolution_direct, p.src_cmp_md,
                                                           p.wei_any, p.bias_md, dst_md, p.strides, p.pad, p.pad)
                          : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                           dnnl::algorithm::convolution_direct, p.src_cmp_md,
                                                           p.wei_any, dst_md, p.strides, p.pad, p.pad);
      return dnnl::convolution_forward::primitive_desc(d, user_scratchpad(), ctx_.engine);
    };
    try {
      p.fwd_pd = make_fwd(dst_nhwc);
    } catch (const dnnl::error&) {
      SBN_CHECK(!p.lp, name_ + kNoBf16);  // below AVX-512 oneDNN 2.6 has no bf16 convolution at all
      throw;
    }
    if (is_reference_impl(p.fwd_pd.impl_info_str())) {
      p.fwd_pd = make_fwd(memory::desc(dst_dims, out_dt, tag::any));
      p.blocked_dst = true;
    }
    // bf16 is a speed option: on a CPU where oneDNN has only its reference kernel for it, say so.
    SBN_CHECK(!p.lp || !is_reference_impl(p.fwd_pd.impl_info_str()), name_ + kNoBf16);
    p.dst_md = p.fwd_pd.dst_desc();
    p.fwd = {dnnl::convolution_forward(p.fwd_pd), scratch_of(p.fwd_pd, ctx_.engine)};
    p.src = memory(p.src_md, ctx_.engine, nullptr);
    if (p.src_bf16) {
      p.src_lp = memory(p.src_cmp_md, ctx_.engine, nullptr);
    } else if (p.lp) {
      p.src_lp = memory(p.src_cmp_md, ctx_.engine);
      p.src_to_lp = make_reorder(p.src, p.src_lp, ctx_.engine);
    }
    p.dst_user = memory(dst_nhwc, ctx_.engine, nullptr);
    if (p.blocked_dst) {
      p.dst_blocked = memory(p.dst_md, ctx_.engine);
      p.dst_to_user = make_reorder(p.dst_blocked, p.dst_user, ctx_.engine);
      p.user_to_dst = make_reorder(p.dst_user, p.dst_blocked, ctx_.engine);
    }
    const memory::desc wei_user(wei_dims, dt::f32, tag::oihw);
    p.w_user = memory(wei_user, ctx_.engine, nullptr);
    p.w_fwd = memory(p.fwd_pd.weights_desc(), ctx_.engine);
    p.w_to_fwd = make_reorder(p.w_user, p.w_fwd, ctx_.engine);
    p.b = memory(p.bias_md, ctx_.engine, nullptr);

    plan_weight_grad(p, wei_dims, dst_dims, wei_user);
    return p;
  }

  // Input-gradient primitives are built only for layers that need them (not the network input's).
  void ensure_bwd_data(Plan& p) {
    if (p.has_bwd_d) return;
    const memory::desc diff_src_md = p.src_bf16 ? p.src_cmp_md : p.src_md;
    auto dd = dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, diff_src_md, p.wei_any,
                                                    p.diff_dst_md, p.strides, p.pad, p.pad);
    auto dpd = dnnl::convolution_backward_data::primitive_desc(dd, user_scratchpad(), ctx_.engine, p.fwd_pd);
    SBN_CHECK(dpd.diff_src_desc() == diff_src_md && dpd.diff_dst_desc() == p.diff_dst_md,
              name_ + ": oneDNN chose other activation formats for the input gradient");
    p.bwd_d = {dnnl::convolution_backward_data(dpd), scratch_of(dpd, ctx_.engine)};
    p.w_bwd = memory(dpd.weights_desc(), ctx_.engine);
    p.w_to_bwd = make_reorder(p.w_user, p.w_bwd, ctx_.engine);
    p.diff_src = memory(diff_src_md, ctx_.engine, nullptr);
    p.has_bwd_d = true;
  }

  std::string name_;
  ConvSpec spec_;
  ParamStore& store_;
  CpuContext& ctx_;
  int weight_ = -1, bias_ = -1;
  std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t, bool, bool>, Plan> plans_;
  std::vector<float> dw_scratch_, db_scratch_;
  std::vector<double> col64_, dy64_, dw64_;  // fp64 gradient mode scratch
  bool gemm_;                                 // the im2col + sgemm path
  bool bf16_out_;                             // bf16 output (make_conv2d)
  std::vector<float> col_, dcol_;             // its im2col of the last forward's input, and dcol
};

}  // namespace

ModulePtr make_conv2d(const ConvPlan& plan, ParamStore& store, CpuContext& ctx, bool bf16_out) {
  return std::make_unique<Conv2d>(plan, store, ctx, bf16_out);
}

bool conv2d_reads_bf16(const ConvSpec& spec) { return spec.in >= kGemmMaxIn; }

ModulePtr make_conv2d(const std::string& name, const ConvSpec& spec, ParamStore& store, CpuContext& ctx) {
  return make_conv2d(plan_conv(store, name, spec), store, ctx);
}

}  // namespace syncbn
