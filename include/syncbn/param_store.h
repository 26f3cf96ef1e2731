// The flat parameter store of a network: every parameter's name, canonical shape (OIHW for conv weights,
// (out, in) for linear weights, (C) for norm parameters), offset, weight-decay flag and initializer, over
// one flat array of values and one of gradients. Device-agnostic: the network plan (net_plan.h) registers
// the parameters; the CPU layers compute in these arrays, the GPU model mirrors them on the device in the
// same layout, so checkpoints, signatures and the gradient all-reduce buckets are the same on both.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace syncbn {

// How a parameter starts (init_params): Kaiming-normal weights (fan-in, ReLU gain), the classifier's
// weights with std 1/sqrt(fan-in), ones (norm scales), zeros (biases, norm shifts).
enum class ParamInit { kKaiming, kClassifier, kOnes, kZeros };

struct ParamInfo {
  std::string name;                 // "conv1.weight"
  std::vector<std::int64_t> shape;  // canonical shape (OIHW, (out, in), (C))
  std::int64_t offset = 0;          // into the flat arrays
  std::int64_t size = 0;
  bool decay = true;                // weight decay applies (off by default for norm params and biases)
  ParamInit init = ParamInit::kZeros;
  std::int64_t fan_in = 1;          // for the random inits
};

class ParamStore {
 public:
  // Registers a parameter before finalize(); returns its index. fan_in: inputs per output (random inits).
  int add(const std::string& name, const std::vector<std::int64_t>& shape, bool decay, ParamInit init,
          std::int64_t fan_in = 1);
  // Allocates values and gradients (zeros). No add() afterwards.
  void finalize();
  float* value(int id) { return values_.data() + params_[static_cast<std::size_t>(id)].offset; }
  float* grad(int id) { return grads_.data() + params_[static_cast<std::size_t>(id)].offset; }
  const ParamInfo& info(int id) const { return params_[static_cast<std::size_t>(id)]; }
  const std::vector<ParamInfo>& all() const { return params_; }
  std::vector<float>& values() { return values_; }
  std::vector<float>& grads() { return grads_; }
  std::int64_t total() const { return total_; }
  void zero_grads();
  // The flat index of the first NaN/Inf in grads() (the parameter order is the offset order, so it lies
  // in the first parameter with a non-finite gradient), or -1: the step check on the reduced gradients.
  std::int64_t first_nonfinite_grad() const;
  // The parameter holding flat element `index`, or -1 (out of range, or alignment padding).
  int param_at(std::int64_t index) const;

  // --grad-accum fp64: layers accumulate parameter gradients in double (grads64) instead of float. A
  // float sum's rounding depends on how the samples were split over ranks (and BN networks amplify
  // 1e-7 differences chaotically); with products of floats summed in double, world sizes differ only
  // by double rounding, which the final cast to float removes (README "World-size invariance").
  void enable_fp64_grads();
  bool fp64_grads() const { return fp64_; }
  double* grad64(int id) { return grads64_.data() + params_[static_cast<std::size_t>(id)].offset; }
  std::vector<double>& grads64() { return grads64_; }
  // Sets every parameter from its ParamInit, deterministically from the seed (a platform-independent
  // generator: the same seed gives the same model on every machine and rank).
  void init_params(std::uint64_t seed);

 private:
  std::vector<ParamInfo> params_;
  std::vector<float> values_, grads_;
  std::vector<double> grads64_;
  std::int64_t total_ = 0;
  bool final_ = false;
  bool fp64_ = false;
};

// A non-parameter state array saved in checkpoints (running statistics, pivots, counters).
struct BufferRef {
  std::string name;
  float* f32 = nullptr;   // one of f32 / f64 / i64 is set
  double* f64 = nullptr;
  std::int64_t* i64 = nullptr;
  std::int64_t size = 0;
};

}  // namespace syncbn
