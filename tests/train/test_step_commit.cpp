// The step contract of the CPU TrainModel (train_model.h): reduce_and_update() keeps a step — the
// optimizer update AND the BN running-statistics updates of its forwards — only if every all-reduced
// gradient is finite. Otherwise parameters, momentum and every buffer (running mean/var, pivot,
// num_batches_tracked) stay bitwise as before the step, gradients are zeroed, and last_step() says
// kNonFinite with the first parameter (in parameter order) whose reduced gradient is NaN/Inf.
//
// The NaN is injected into ONE rank's input only (the last rank's, in the step's last micro-batch): the
// check runs on the all-reduced gradients, so every rank must reach the same verdict with no collective
// of its own. Run at np 1, 2, 3; sync, sync:2 (even worlds), local, groupnorm; accumulation 1 and 2
// (the running statistics must come back to their value before the step's FIRST forward); fp32 and fp64
// gradient accumulation. MPI rule: no ASSERT (every test here runs collectives to its end).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "syncbn/cpu_train_model.h"
#include "syncbn/model.h"
#include "test_util.h"

namespace syncbn::test {
namespace {

struct Case {
  std::string arch, norm, grad_accum;
  std::int64_t accum;
  std::string str() const {
    return arch + "/" + norm + "/" + grad_accum + "/accum" + std::to_string(accum);
  }
};

ModelSpec spec_of(const Case& c) {
  ModelSpec s;
  s.arch = c.arch;
  s.width = 4;
  s.depth = 1;
  s.in_channels = 1;
  s.height = s.width_px = 8;
  s.norm = parse_norm(c.norm);
  s.norm.gn_groups = 2;
  return s;
}

TrainConfig config_of(const Case& c) {
  TrainConfig cfg;
  cfg.model = c.arch;
  cfg.width = 4;
  cfg.depth = 1;
  cfg.norm = c.norm;
  cfg.gn_groups = 2;
  cfg.grad_accum = c.grad_accum;
  cfg.accum_steps = c.accum;
  cfg.seed = 5;
  return cfg;
}

// A micro-batch of n samples of (1, 8, 8), a pure function of (seed, rank, step, micro).
struct Batch {
  std::vector<float> images;
  std::vector<std::int32_t> labels;
};
Batch make_batch(std::int64_t n, int rank, int step, int micro) {
  std::mt19937 gen(static_cast<std::uint32_t>(1000 * step + 100 * micro + rank));
  std::normal_distribution<float> d(0.5f, 1.0f);
  Batch b;
  b.images.resize(static_cast<std::size_t>(n * 64));
  for (float& v : b.images) v = d(gen);
  for (std::int64_t i = 0; i < n; ++i) b.labels.push_back(static_cast<std::int32_t>(gen() % 10));
  return b;
}

// Every checkpointed array's bytes, by name.
std::vector<std::pair<std::string, std::vector<char>>> snapshot(TrainModel& m) {
  m.state_to_host();
  std::vector<std::pair<std::string, std::vector<char>>> out;
  for (const StateArray& a : m.state()) {
    const char* p = static_cast<const char*>(a.data);
    out.emplace_back(a.name, std::vector<char>(p, p + a.bytes));
  }
  return out;
}

// Names of the arrays whose bytes differ (or all of them when the layouts differ).
std::vector<std::string> changed(const std::vector<std::pair<std::string, std::vector<char>>>& a,
                                 const std::vector<std::pair<std::string, std::vector<char>>>& b) {
  std::vector<std::string> out;
  if (a.size() != b.size()) return {"<state layout>"};
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].first != b[i].first || a[i].second != b[i].second) out.push_back(a[i].first);
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "(none)" : s;
}

const char* outcome_name(StepResult::Outcome o) {
  switch (o) {
    case StepResult::Outcome::kCommitted: return "committed";
    case StepResult::Outcome::kSkipped: return "skipped";
    case StepResult::Outcome::kNonFinite: return "non-finite";
  }
  return "?";
}

// One optimizer step of `accum` micro-batches of 3 samples; poison: NaN in the first image of the last
// rank's last micro-batch.
void step(TrainModel& m, const Case& c, int step_no, bool poison) {
  Communicator& w = world();
  for (int micro = 0; micro < c.accum; ++micro) {
    Batch b = make_batch(3, w.rank(), step_no, micro);
    if (poison && w.rank() == w.size() - 1 && micro == c.accum - 1)
      b.images[5] = std::numeric_limits<float>::quiet_NaN();
    double loss = 0;
    std::int64_t correct = 0;
    m.train_micro(b.images.data(), b.labels.data(), 3, 1.0f / static_cast<float>(3 * w.size() * c.accum), &loss,
                  &correct);
  }
  m.reduce_and_update(w, 0.1);
  m.check();
}

double eval_loss(TrainModel& m) {
  const Batch b = make_batch(4, 0, 99, 0);  // the same on every rank; eval never communicates
  double loss = 0;
  std::int64_t correct = 0;
  m.evaluate(b.images.data(), b.labels.data(), 4, &loss, &correct);
  return loss;
}

void run_case(const Case& c) {
  Communicator& w = world();
  const std::string first_param = c.arch == "resnet" ? "stem.weight" : "conv1.weight";
  std::unique_ptr<TrainModel> m = make_cpu_train_model(spec_of(c), config_of(c), w);

  step(*m, c, 0, false);  // a committed step first: momentum and running statistics are non-trivial
  EXPECT_EQ(outcome_name(m->last_step().outcome), std::string("committed")) << c.str();
  const auto before = snapshot(*m);
  const double eval_before = eval_loss(*m);

  step(*m, c, 1, true);
  const StepResult bad = m->last_step();
  EXPECT_EQ(outcome_name(bad.outcome), std::string("non-finite")) << c.str();
  EXPECT_EQ(bad.nonfinite, first_param) << c.str();
  EXPECT_EQ(join(changed(before, snapshot(*m))), "(none)") << c.str() << ": state moved by a non-finite step";
  // Eval uses the committed running statistics: the same loss, bit for bit.
  const double eval_after = eval_loss(*m);
  EXPECT_EQ(std::memcmp(&eval_before, &eval_after, sizeof(double)), 0)
      << c.str() << ": eval loss " << eval_before << " before, " << eval_after << " after the non-finite step";

  // The next good step commits: parameters, momentum and every BN buffer move.
  step(*m, c, 2, false);
  EXPECT_EQ(outcome_name(m->last_step().outcome), std::string("committed")) << c.str();
  EXPECT_EQ(m->last_step().nonfinite, "") << c.str();
  const auto after = snapshot(*m);
  std::vector<std::string> still;
  for (std::size_t i = 0; i < before.size() && i < after.size(); ++i) {
    const std::string& name = before[i].first;
    // The pivot of local statistics is unused (they shift by each batch's first values).
    if (c.norm == "local" && name.find(".pivot") != std::string::npos) continue;
    if (before[i].second == after[i].second) still.push_back(name);
    if (name.find("num_batches_tracked") != std::string::npos) {
      std::int64_t k0 = 0, k1 = 0;
      std::memcpy(&k0, before[i].second.data(), sizeof k0);
      std::memcpy(&k1, after[i].second.data(), sizeof k1);
      EXPECT_EQ(k1, k0 + c.accum) << c.str() << ": " << name;
    }
  }
  EXPECT_EQ(join(still), "(none)") << c.str() << ": state a committed step left unchanged";
  EXPECT_TRUE(all_ranks(w, !::testing::Test::HasFailure())) << c.str() << ": another rank failed";
}

std::vector<Case> cases() {
  std::vector<Case> out;
  std::vector<std::string> norms = {"sync", "local", "groupnorm"};
  if (world().size() % 2 == 0) norms.push_back("sync:2");
  for (const auto& norm : norms)
    for (std::int64_t accum : {1, 2}) out.push_back({"convnet", norm, "fp32", accum});
  out.push_back({"convnet", "sync", "fp64", 2});
  out.push_back({"convnet", "local", "fp64", 1});
  out.push_back({"resnet", "sync", "fp32", 2});
  return out;
}

TEST(StepCommit, NonFiniteGradientKeepsNothingOnEveryRankAndTheNextStepCommits) {
  for (const Case& c : cases()) run_case(c);
}

// The first parameter in parameter order, whatever the order the NaNs were written in; -1 when all are
// finite. Padding between parameters (16-float alignment) is never a parameter.
TEST(StepCommit, FirstNonFiniteGradientIsNamedInParameterOrder) {
  ModelSpec spec = spec_of({"convnet", "local", "fp32", 1});
  CpuContext ctx;
  std::unique_ptr<Model> m = build_model(spec, ctx, 1);
  ParamStore& ps = m->params;
  EXPECT_EQ(ps.first_nonfinite_grad(), -1);
  auto index_of = [&](const std::string& name) {
    for (std::size_t i = 0; i < ps.all().size(); ++i)
      if (ps.all()[i].name == name) return static_cast<int>(i);
    return -1;
  };
  const int fc1 = index_of("fc1.weight"), conv2 = index_of("conv2.weight");
  EXPECT_GE(fc1, 0);
  EXPECT_GE(conv2, 0);
  if (fc1 < 0 || conv2 < 0) return;
  ps.grad(fc1)[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(ps.first_nonfinite_grad(), ps.info(fc1).offset + 3);
  ps.grad(conv2)[ps.info(conv2).size - 1] = -std::numeric_limits<float>::infinity();
  const std::int64_t at = ps.first_nonfinite_grad();
  EXPECT_EQ(at, ps.info(conv2).offset + ps.info(conv2).size - 1);
  EXPECT_EQ(ps.param_at(at), conv2);
  EXPECT_EQ(ps.info(ps.param_at(at)).name, "conv2.weight");
  EXPECT_EQ(ps.param_at(ps.info(fc1).offset), fc1);
  EXPECT_EQ(ps.param_at(-1), -1);
  EXPECT_EQ(ps.param_at(ps.total()), -1);
  ps.zero_grads();
  EXPECT_EQ(ps.first_nonfinite_grad(), -1);
}

}  // namespace
}  // namespace syncbn::test
