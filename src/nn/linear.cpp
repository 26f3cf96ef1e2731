// Linear layer on oneDNN's sgemm (row-major): y = x·Wᵀ + b, W is (out, in) in the ParamStore.
// The weight gradient is accumulated by the GEMM itself (beta = 1), straight into the store.
//
// oneDNN's sgemm picks a different kernel for fewer than 16 rows, so a sample's output would depend on
// how many samples share the call (measured: 1..11 rows differ from 32 in the last bits, 16 and 32 agree).
// The per-sample GEMMs (forward and input gradient) therefore always run on row counts that are multiples
// of 16, padding with zero rows: every sample is computed by the same kernel whatever the batch split,
// which keeps training invariant to the world size (README "World-size invariance").
#include <cblas.h>

#include <algorithm>

#include "syncbn/error.h"
#include "syncbn/nn.h"

namespace syncbn {
namespace {

constexpr std::int64_t kRowBlock = 16;

void check_gemm(dnnl::status st, const std::string& name, const char* what) {
  SBN_CHECK(st == dnnl::status::success, name + ": oneDNN sgemm failed in " + what);
}

class Linear final : public Module {
 public:
  Linear(const LinearPlan& plan, ParamStore& store)
      : name_(plan.name),
        in_(plan.in),
        out_(plan.out),
        store_(store),
        weight_(plan.weight.index),
        bias_(plan.bias.index) {}

  void forward(const Tensor& x, Tensor& y, bool) override {
    const std::int64_t N = x.rank() ? x.dim(0) : 0;
    SBN_CHECK(N == 0 || x.numel() / N == in_, name_ + ": expects " + std::to_string(in_) +
                                                  " features per sample, got " + syncbn::describe(x.shape(), x.layout()));
    y.resize({N, out_});
    if (N == 0) return;
    const std::int64_t M = (N + kRowBlock - 1) / kRowBlock * kRowBlock;
    const float* a = pad_rows(x.data(), N, M, in_, pad_in_);
    float* c = M == N ? y.data() : pad_out_.data();
    if (M != N) pad_out_.resize(static_cast<std::size_t>(M * out_)), c = pad_out_.data();
    check_gemm(dnnl::sgemm('N', 'T', M, out_, in_, 1.0f, a, in_, store_.value(weight_), in_, 0.0f, c, out_), name_,
               "forward");
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
    const float* a = pad_rows(dy.data(), N, M, out_, pad_in_);
    float* c = dx->data();
    if (M != N) pad_out_.resize(static_cast<std::size_t>(M * in_)), c = pad_out_.data();
    check_gemm(dnnl::sgemm('N', 'N', M, in_, out_, 1.0f, a, out_, store_.value(weight_), in_, 0.0f, c, in_), name_,
               "input gradient");
    if (M != N) std::copy(c, c + N * in_, dx->data());
  }

  std::string describe() const override {
    return "fc(" + std::to_string(in_) + "->" + std::to_string(out_) + ")";
  }

 private:
  std::string name_;
  std::int64_t in_, out_;
  ParamStore& store_;
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

ModulePtr make_linear(const LinearPlan& plan, ParamStore& store) { return std::make_unique<Linear>(plan, store); }

ModulePtr make_linear(const std::string& name, std::int64_t in, std::int64_t out, bool bias, bool classifier,
                      ParamStore& store) {
  return make_linear(plan_linear(store, name, in, out, bias, classifier), store);
}

}  // namespace syncbn
