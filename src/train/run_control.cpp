#include "syncbn/run_control.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "syncbn/error.h"

namespace syncbn {
namespace {

constexpr int kSignals[3] = {SIGTERM, SIGINT, SIGUSR1};
// The only process-wide state: a signal handler needs it. Set on the catcher thread, read on the
// computing one: a lock-free atomic (safe in a handler, and a defined cross-thread read).
std::atomic<int> g_pending{0};
static_assert(std::atomic<int>::is_always_lock_free, "a signal handler may only touch lock-free atomics");

extern "C" void on_stop_signal(int sig) {
  if (g_pending != 0 && sig == SIGINT) {
    // A second Ctrl-C: the user does not want to wait for the checkpoint. A repeated SIGTERM is not
    // that: Slurm signals every process of a step and srun/mpirun forward the same signal again.
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  int none = 0;
  g_pending.compare_exchange_strong(none, sig);
}

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : kSignals) sigaddset(&set, sig);
  return set;
}

}  // namespace

StopSignals::StopSignals() {
  SBN_CHECK(::pipe2(wake_, O_CLOEXEC) == 0, std::string("stop signals: pipe2 failed (") + std::strerror(errno) + ")");
  g_pending = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // collectives and file writes continue; the loop polls the flag
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &sa, &old_[i]);
  // Block first, then start the catcher: it inherits the blocked mask and opens it itself, so there is
  // no moment at which a signal could land on this thread.
  const sigset_t set = stop_set();
  pthread_sigmask(SIG_BLOCK, &set, &old_mask_);
  const int wake = wake_[0];
  catcher_ = std::thread([wake] {
    const sigset_t open = stop_set();
    pthread_sigmask(SIG_UNBLOCK, &open, nullptr);
    pollfd p{wake, POLLIN, 0};
    // A handled signal interrupts poll (EINTR even with SA_RESTART); the destructor's byte ends it.
    while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
  });
}

StopSignals::~StopSignals() {
  const char byte = 0;
  while (::write(wake_[1], &byte, 1) < 0 && errno == EINTR) {
  }
  catcher_.join();
  ::close(wake_[0]);
  ::close(wake_[1]);
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &old_[i], nullptr);
  pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

int StopSignals::pending() const { return g_pending; }

const char* StopSignals::name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "a signal";
  }
}

RunDirLock::RunDirLock(const std::string& run_dir) {
  const std::string path = (std::filesystem::path(run_dir) / ".lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  SBN_CHECK(fd_ >= 0, "--run-dir " + run_dir + ": cannot create the lock file .lock (" + std::strerror(errno) + ")");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[256] = {0};
    const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
    ::close(fd_);
    fd_ = -1;
    std::string who = n > 0 ? std::string(holder, static_cast<std::size_t>(n)) : "";
    while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
    if (err == EWOULDBLOCK)
      SBN_FAIL("--run-dir " + run_dir + " is in use by another job (" + (who.empty() ? "holder unknown" : who) +
               "); give each job its own --run-dir");
    SBN_FAIL("--run-dir " + run_dir + ": cannot lock .lock (" + std::strerror(err) + ")");
  }
  // Who holds it, for the next job's message.
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  const std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  const std::string who = "pid " + std::to_string(::getpid()) + " on " + host + ", since " + when + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, who.data(), who.size(), 0) != static_cast<ssize_t>(who.size())) {
    // The lock is what matters; the holder text is a courtesy.
  }
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock; the file stays (removing it would race a new holder)
}

int remove_stale_temporaries(const std::string& run_dir) {
  int removed = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(run_dir, ec)) {
    const std::string n = e.path().filename().string();
    const auto at = n.rfind(".tmp.");
    if (at == std::string::npos || at + 5 >= n.size()) continue;
    if (n.find_first_not_of("0123456789", at + 5) != std::string::npos) continue;
    if (std::filesystem::remove(e.path(), ec)) ++removed;
  }
  return removed;
}

}  // namespace syncbn
