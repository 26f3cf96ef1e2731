// Linear layer on oneDNN's sgemm (row-major): y = x·Wᵀ + b, W is (out, in) in the ParamStore.
// The weight gradient is accumulated by the GEMM itself (beta = 1), straight into the store.
//
// oneDNN's sgemm picks a different kernel for fewer than 16 rows, so a sample's output would depend on
// how many samples share the call (measured: 1..11 rows differ from 32 in the last bits, 16 and 32 agree).
// The per-sample GEMMs (forward and input gradient) therefore always run on row counts that are multiples
// of 16, padding with zero rows: every sample is computed by the same kernel whatever the batch split,
// which keeps training invariant to the world size (README "World-size invariance").
//
// --precision bf16 (CpuContext::bf16): the three GEMMs are oneDNN inner products on bf16 copies of x, W
// and dy (one converting reorder each) with fp32 outputs, input gradient and weight gradient (fp32
// accumulation), on the same zero-padded row counts; the bf16 copies of x (and of W, where the input
// gradient takes the forward's weight format) made by forward() are the ones backward() reads: backward
// follows the forward of the same input with the same parameters. The bias and its gradient stay fp32.
#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "syncbn/error.h"
#include "syncbn/nn.h"

namespace syncbn {
namespace {

constexpr std::int64_t kRowBlock = 16;

void check_gemm(dnnl::status st, const std::string& name, const char* what) {
  SBN_CHECK(st == dnnl::status::success, name + ": oneDNN sgemm failed in " + what);
}

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// The bf16 inner products for one padded row count M, built on first use and cached (a run sees a few).
struct Bf16Plan {
  dnnl::inner_product_forward fwd;
  dnnl::inner_product_backward_data bwd_d;
  dnnl::inner_product_backward_weights bwd_w;
  memory x, x_lp, dy, dy_lp, y, dx, w_user, w_fwd, w_bwd, dw, dw_user;
  dnnl::reorder x_to_lp, dy_to_lp, w_to_fwd, w_to_bwd, dw_to_user;
  bool w_bwd_is_fwd = false;  // the input gradient takes the forward's weight format: reuse its copy
};

Bf16Plan make_bf16_plan(std::int64_t M, std::int64_t in, std::int64_t out, const dnnl::engine& eng,
                        float* dw_scratch, const std::string& name) {
  Bf16Plan p;
  const memory::desc x_md({M, in}, dt::f32, tag::nc), x_lp_md({M, in}, dt::bf16, tag::nc);
  const memory::desc y_md({M, out}, dt::f32, tag::nc), dy_lp_md({M, out}, dt::bf16, tag::nc);
  const memory::desc w_md({out, in}, dt::f32, tag::oi), w_any({out, in}, dt::bf16, tag::any);
  const std::string no_bf16 = name + ": --precision bf16 has no optimized oneDNN inner product on this CPU "
                                     "(needs AVX-512; fast with AVX512-BF16 or AMX); use --precision fp32";
  dnnl::inner_product_forward::primitive_desc fpd;
  try {
    fpd = {{dnnl::prop_kind::forward_training, x_lp_md, w_any, y_md}, eng};
  } catch (const dnnl::error&) {
    SBN_FAIL(no_bf16);
  }
  SBN_CHECK(std::strncmp(fpd.impl_info_str(), "ref", 3) != 0, no_bf16);
  const dnnl::inner_product_backward_data::primitive_desc dpd({x_md, w_any, dy_lp_md}, eng, fpd);
  const dnnl::inner_product_backward_weights::primitive_desc wpd(
      {x_lp_md, memory::desc({out, in}, dt::f32, tag::any), dy_lp_md}, eng, fpd);
  SBN_CHECK(dpd.diff_src_desc() == x_md && dpd.diff_dst_desc() == dy_lp_md && wpd.src_desc() == x_lp_md &&
                wpd.diff_dst_desc() == dy_lp_md,
            name + ": oneDNN chose other activation formats for the bf16 inner product");
  p.fwd = dnnl::inner_product_forward(fpd);
  p.bwd_d = dnnl::inner_product_backward_data(dpd);
  p.bwd_w = dnnl::inner_product_backward_weights(wpd);
  p.x = memory(x_md, eng, nullptr);
  p.x_lp = memory(x_lp_md, eng);
  p.dy = memory(y_md, eng, nullptr);
  p.dy_lp = memory(dy_lp_md, eng);
  p.y = memory(y_md, eng, nullptr);
  p.dx = memory(x_md, eng, nullptr);
  p.w_user = memory(w_md, eng, nullptr);
  p.w_fwd = memory(fpd.weights_desc(), eng);
  p.w_bwd_is_fwd = dpd.weights_desc() == fpd.weights_desc();
  p.w_bwd = p.w_bwd_is_fwd ? p.w_fwd : memory(dpd.weights_desc(), eng);
  p.dw = memory(wpd.diff_weights_desc(), eng);
  p.dw_user = memory(w_md, eng, dw_scratch);
  p.x_to_lp = dnnl::reorder(p.x, p.x_lp);
  p.dy_to_lp = dnnl::reorder(p.dy, p.dy_lp);
  p.w_to_fwd = dnnl::reorder(p.w_user, p.w_fwd);
  p.w_to_bwd = dnnl::reorder(p.w_user, p.w_bwd);
  p.dw_to_user = dnnl::reorder(p.dw, p.dw_user);
  return p;
}

class Linear final : public Module {
 public:
  Linear(const LinearPlan& plan, ParamStore& store, CpuContext* ctx)
      : name_(plan.name),
        in_(plan.in),
        out_(plan.out),
        store_(store),
        ctx_(ctx && ctx->bf16 ? ctx : nullptr),
        weight_(plan.weight.index),
        bias_(plan.bias.index) {}

  void forward(const Tensor& x, Tensor& y, bool) override {
    const std::int64_t N = x.rank() ? x.dim(0) : 0;
    SBN_CHECK(N == 0 || x.numel() / N == in_, name_ + ": expects " + std::to_string(in_) +
                                                  " features per sample, got " + syncbn::describe(x.shape(), x.layout()));
    SBN_CHECK(x.dtype() == ElementType::kF32, name_ + ": reads fp32 activations (bf16 ones end at a convolution)");
    y.resize({N, out_});
    if (N == 0) return;
    const std::int64_t M = (N + kRowBlock - 1) / kRowBlock * kRowBlock;
    const float* a = pad_rows(x.data(), N, M, in_, pad_in_);
    float* c = M == N ? y.data() : pad_out_.data();
    if (M != N) pad_out_.resize(static_cast<std::size_t>(M * out_)), c = pad_out_.data();
    if (ctx_) {
      bf16_forward(a, M, c);
    } else {
      check_gemm(dnnl::sgemm('N', 'T', M, out_, in_, 1.0f, a, in_, store_.value(weight_), in_, 0.0f, c, out_), name_,
                 "forward");
    }
    if (M != N) std::copy(c, c + N * out_, y.data());
    if (bias_ >= 0) {
      const float* b = store_.value(bias_);
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t o = 0; o < out_; ++o) y.data()[n * out_ + o] += b[o];
    }
  }

  void backward(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx) override {
    const std::int64_t N = x.dim(0);
    if (N > 0 && store_.fp64_grads()) {
      // dW += dyᵀ·x in double (float products are exact in double): OpenBLAS DGEMM.
      x64_.assign(x.data(), x.data() + N * in_);
      dy64_.assign(dy.data(), dy.data() + N * out_);
      cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(out_), static_cast<int>(in_),
                  static_cast<int>(N), 1.0, dy64_.data(), static_cast<int>(out_), x64_.data(), static_cast<int>(in_),
                  1.0, store_.grad64(weight_), static_cast<int>(in_));
      if (bias_ >= 0) {
        double* db = store_.grad64(bias_);
        for (std::int64_t n = 0; n < N; ++n)
          for (std::int64_t o = 0; o < out_; ++o) db[o] += dy64_[static_cast<std::size_t>(n * out_ + o)];
      }
    } else if (N > 0 && ctx_) {
      bf16_weight_grad(dy, N);
    } else if (N > 0) {
      check_gemm(dnnl::sgemm('T', 'N', out_, in_, N, 1.0f, dy.data(), out_, x.data(), in_, 1.0f,
                             store_.grad(weight_), in_),
                 name_, "weight gradient");
      if (bias_ >= 0) {
        float* db = store_.grad(bias_);
        for (std::int64_t n = 0; n < N; ++n)
          for (std::int64_t o = 0; o < out_; ++o) db[o] += dy.data()[n * out_ + o];
      }
    }
    if (!dx) return;
    dx->resize(x.shape(), x.layout());
    if (N == 0) return;
    const std::int64_t M = (N + kRowBlock - 1) / kRowBlock * kRowBlock;
    float* c = dx->data();
    if (M != N) pad_out_.resize(static_cast<std::size_t>(M * in_)), c = pad_out_.data();
    if (ctx_) {
      bf16_input_grad(dy, N, M, c);
    } else {
      const float* a = pad_rows(dy.data(), N, M, out_, pad_in_);
      check_gemm(dnnl::sgemm('N', 'N', M, in_, out_, 1.0f, a, out_, store_.value(weight_), in_, 0.0f, c, in_), name_,
                 "input gradient");
    }
    if (M != N) std::copy(c, c + N * in_, dx->data());
  }

  std::string describe() const override {
    return "fc(" + std::to_string(in_) + "->" + std::to_string(out_) + ")";
  }

 private:
  // ---- --precision bf16 ----

  Bf16Plan& bf16_plan(std::int64_t M) {
    auto it = bf16_plans_.find(M);
    if (it != bf16_plans_.end()) return it->second;
    dw_scratch_.resize(static_cast<std::size_t>(in_ * out_));
    return bf16_plans_.emplace(M, make_bf16_plan(M, in_, out_, ctx_->engine, dw_scratch_.data(), name_)).first->second;
  }

  // y (M, out) = x·Wᵀ for the row-padded x `a`; keeps the bf16 copy of x for the weight gradient.
  void bf16_forward(const float* a, std::int64_t M, float* y) {
    Bf16Plan& p = bf16_plan(M);
    p.x.set_data_handle(const_cast<float*>(a));
    p.x_to_lp.execute(ctx_->stream, p.x, p.x_lp);
    p.w_user.set_data_handle(store_.value(weight_));
    p.w_to_fwd.execute(ctx_->stream, p.w_user, p.w_fwd);
    p.y.set_data_handle(y);
    p.fwd.execute(ctx_->stream, {{DNNL_ARG_SRC, p.x_lp}, {DNNL_ARG_WEIGHTS, p.w_fwd}, {DNNL_ARG_DST, p.y}});
    ctx_->stream.wait();
  }

  // dW += dyᵀ·x over the forward's padded rows (zero rows add nothing), through fp32 scratch; then the
  // plan's dy_lp holds the bf16 dy for the input gradient.
  void bf16_weight_grad(const Tensor& dy, std::int64_t N) {
    const std::int64_t M = (N + kRowBlock - 1) / kRowBlock * kRowBlock;
    Bf16Plan& p = bf16_plan(M);
    p.dy.set_data_handle(const_cast<float*>(pad_rows(dy.data(), N, M, out_, pad_in_)));
    p.dy_to_lp.execute(ctx_->stream, p.dy, p.dy_lp);
    p.bwd_w.execute(ctx_->stream,
                    {{DNNL_ARG_SRC, p.x_lp}, {DNNL_ARG_DIFF_DST, p.dy_lp}, {DNNL_ARG_DIFF_WEIGHTS, p.dw}});
    p.dw_to_user.execute(ctx_->stream, p.dw, p.dw_user);
    ctx_->stream.wait();
    float* g = store_.grad(weight_);
    for (std::int64_t i = 0; i < in_ * out_; ++i) g[i] += dw_scratch_[static_cast<std::size_t>(i)];
    if (bias_ < 0) return;
    float* db = store_.grad(bias_);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t o = 0; o < out_; ++o) db[o] += dy.data()[n * out_ + o];
  }

  // dx (M, in) = dy·W. The fp64 gradient mode skipped bf16_weight_grad: convert dy here then.
  void bf16_input_grad(const Tensor& dy, std::int64_t N, std::int64_t M, float* dx) {
    Bf16Plan& p = bf16_plan(M);
    if (store_.fp64_grads()) {
      p.dy.set_data_handle(const_cast<float*>(pad_rows(dy.data(), N, M, out_, pad_in_)));
      p.dy_to_lp.execute(ctx_->stream, p.dy, p.dy_lp);
    }
    if (!p.w_bwd_is_fwd) {  // else the forward's bf16 weights: the parameters have not moved since
      p.w_user.set_data_handle(store_.value(weight_));
      p.w_to_bwd.execute(ctx_->stream, p.w_user, p.w_bwd);
    }
    p.dx.set_data_handle(dx);
    p.bwd_d.execute(ctx_->stream,
                    {{DNNL_ARG_DIFF_DST, p.dy_lp}, {DNNL_ARG_WEIGHTS, p.w_bwd}, {DNNL_ARG_DIFF_SRC, p.dx}});
    ctx_->stream.wait();
  }

  std::string name_;
  std::int64_t in_, out_;
  ParamStore& store_;
  CpuContext* ctx_;  // set for --precision bf16 only
  std::map<std::int64_t, Bf16Plan> bf16_plans_;  // by padded row count
  std::vector<float> dw_scratch_;                // bf16 weight gradient before it is accumulated
  int weight_ = -1, bias_ = -1;
  // Rows [0, n) of a (n, cols) matrix followed by zero rows up to m, in `buf` (or the data itself when
  // m == n).
  static const float* pad_rows(const float* data, std::int64_t n, std::int64_t m, std::int64_t cols,
                               std::vector<float>& buf) {
    if (m == n) return data;
    buf.assign(static_cast<std::size_t>(m * cols), 0.0f);
    std::copy(data, data + n * cols, buf.begin());
    return buf.data();
  }

  std::vector<double> x64_, dy64_;   // fp64 gradient mode: the operands in double
  std::vector<float> pad_in_, pad_out_;  // row-padded operands (see kRowBlock)
};

}  // namespace

ModulePtr make_linear(const LinearPlan& plan, ParamStore& store, CpuContext* ctx) {
  return std::make_unique<Linear>(plan, store, ctx);
}

ModulePtr make_linear(const std::string& name, std::int64_t in, std::int64_t out, bool bias, bool classifier,
                      ParamStore& store) {
  return make_linear(plan_linear(store, name, in, out, bias, classifier), store);
}

}  // namespace syncbn
