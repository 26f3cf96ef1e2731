// Run-directory and stop-request mechanics of the trainer (src/train/run_control.cpp, checkpoint.cpp,
// metrics.cpp): which checkpoint --resume latest picks, the one-job-per-run-dir lock, the clean-up of
// interrupted writes, the stop-signal flag, and the throughput window that keeps evaluation out.
#include <dnnl.hpp>
#include <gtest/gtest.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "syncbn/checkpoint.h"
#include "syncbn/error.h"
#include "syncbn/metrics.h"
#include "syncbn/run_control.h"

namespace syncbn {
namespace {

namespace fs = std::filesystem;

// A fresh empty directory per test, removed after.
class RunDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sbn-run-control-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void touch(const std::string& name) { std::ofstream(dir_ / name) << "x"; }
  fs::path dir_;
};

TEST_F(RunDir, LatestCheckpointIsTheHighestStepNotTheLastName) {
  EXPECT_EQ(latest_checkpoint(dir_.string()), "");
  touch("checkpoint-00000020.ckpt");
  touch("checkpoint-99999999.ckpt");
  touch("checkpoint-100000000.ckpt");  // sorts before 99999999 as text
  touch("checkpoint-100000001.ckpt.tmp.1234");
  touch("checkpoint-abc.ckpt");
  fs::create_directories(dir_ / "checkpoint-200000000.ckpt");  // not a regular file
  EXPECT_EQ(fs::path(latest_checkpoint(dir_.string())).filename(), "checkpoint-100000000.ckpt");
  EXPECT_EQ(checkpoint_path(dir_.string(), 100000000), (dir_ / "checkpoint-100000000.ckpt").string());
}

TEST_F(RunDir, SecondHolderOfTheLockIsRefusedNamingTheHolder) {
  auto first = std::make_unique<RunDirLock>(dir_.string());
  try {
    RunDirLock second(dir_.string());
    FAIL() << "a second lock on the same run dir was granted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("--run-dir " + dir_.string() + " is in use by another job"), std::string::npos) << what;
    EXPECT_NE(what.find("pid " + std::to_string(::getpid())), std::string::npos) << what;
  }
  first.reset();  // released: the next job gets it
  EXPECT_NO_THROW(RunDirLock again(dir_.string()));
}

TEST_F(RunDir, StaleTemporariesAreRemovedAndNothingElse) {
  touch("metrics.csv.tmp.4242");
  touch("checkpoint-00000010.ckpt.tmp.17");
  touch("checkpoint-00000010.ckpt");
  touch("notes.tmp.txt");
  touch("metrics.csv");
  EXPECT_EQ(remove_stale_temporaries(dir_.string()), 2);
  EXPECT_TRUE(fs::exists(dir_ / "checkpoint-00000010.ckpt"));
  EXPECT_TRUE(fs::exists(dir_ / "notes.tmp.txt"));
  EXPECT_TRUE(fs::exists(dir_ / "metrics.csv"));
  EXPECT_FALSE(fs::exists(dir_ / "metrics.csv.tmp.4242"));
}

// Waits (≤ 5 s) until the catcher thread has seen a signal sent to the process.
int wait_pending(const StopSignals& stop, int want) {
  for (int i = 0; i < 5000 && stop.pending() != want; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return stop.pending();
}

bool blocked_here(int sig) {
  sigset_t now;
  pthread_sigmask(SIG_BLOCK, nullptr, &now);
  return sigismember(&now, sig) == 1;
}

TEST(StopSignals, FirstSignalIsKeptUntilTheHandlersGo) {
  {
    StopSignals stop;
    EXPECT_EQ(stop.pending(), 0);
    EXPECT_TRUE(blocked_here(SIGTERM) && blocked_here(SIGINT) && blocked_here(SIGUSR1));
    ASSERT_EQ(::kill(::getpid(), SIGUSR1), 0);
    EXPECT_EQ(wait_pending(stop, SIGUSR1), SIGUSR1);
    ::kill(::getpid(), SIGUSR1);  // repeated stop signals change nothing (a second SIGINT would end the process)
    ::kill(::getpid(), SIGTERM);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(stop.pending(), SIGUSR1);
  }
  // The previous mask is back once the object is gone.
  EXPECT_FALSE(blocked_here(SIGTERM) || blocked_here(SIGINT) || blocked_here(SIGUSR1));
  EXPECT_STREQ(StopSignals::name(SIGTERM), "SIGTERM");
}

// CI saw a SIGTERM'd rank abort in free() inside dnnl_sgemm instead of saving: oneDNN's JIT GEMM points
// rsp into the heap while it runs (oneDNN issue #4845), so a signal handled on that thread writes its
// frame over the heap. Signals rain on the process while this thread runs that GEMM (the input conv's
// weight-gradient shape) and allocates; they must all be handled elsewhere. Without the catcher thread
// this aborts within a second ("free(): invalid pointer").
TEST(StopSignals, HandlersNeverRunOnTheComputingThread) {
  StopSignals stop;
  std::atomic<bool> done{false};
  std::atomic<long> sent{0};
  std::thread rain([&] {
    while (!done) {
      ::kill(::getpid(), SIGUSR1);
      sent += 1;
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  });
  const long O = 8, kkc = 9, rows = 6272;
  std::vector<float> dy(rows * O, 0.5f), col(kkc * rows, 0.25f), w(O * kkc, 0.0f), y(rows * O);
  const auto t0 = std::chrono::steady_clock::now();
  long calls = 0;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(3000)) {
    ASSERT_EQ(dnnl::sgemm('T', 'T', O, kkc, rows, 1.0f, dy.data(), O, col.data(), rows, 1.0f, w.data(), kkc),
              dnnl::status::success);
    ASSERT_EQ(dnnl::sgemm('T', 'T', rows, O, kkc, 1.0f, col.data(), rows, w.data(), kkc, 0.0f, y.data(), O),
              dnnl::status::success);
    std::vector<float> churn(1000 + static_cast<std::size_t>(calls % 777));  // malloc/free between the calls
    churn[0] = 1.0f;
    ++calls;
  }
  done = true;
  rain.join();
  EXPECT_GT(calls, 100);
  EXPECT_GT(sent.load(), 1000);
  EXPECT_EQ(stop.pending(), SIGUSR1);
}

// The first progress line after an evaluation used to divide the steps of the whole window by the time
// since the evaluation ended ("9721 img/s step 6.6 ms" where 2700 and 24 ms were real).
TEST(RateWindow, EvaluationTimeIsExcludedNotTheStepsBeforeIt) {
  RateWindow w(100.0);
  for (int i = 0; i < 5; ++i) w.add_step(0.001, 0.002);  // 5 steps of 24 ms: 100.00 .. 100.12
  w.exclude(3.0);                                        // then a 3 s evaluation
  for (int i = 0; i < 5; ++i) w.add_step(0.001, 0.002);  // 5 more steps: done at 103.24
  const RateWindow::Rates r = w.take(103.24, 64);
  EXPECT_NEAR(r.step_ms, 24.0, 1e-9);
  EXPECT_NEAR(r.images_per_s, 64 / 0.024, 1e-6);
  EXPECT_NEAR(r.comm_ms, 1.0, 1e-12);
  EXPECT_NEAR(r.grad_ms, 2.0, 1e-12);
  // The next window starts at take()'s time, with nothing excluded.
  w.add_step(0, 0);
  EXPECT_NEAR(w.take(103.264, 64).step_ms, 24.0, 1e-9);
}

}  // namespace
}  // namespace syncbn
