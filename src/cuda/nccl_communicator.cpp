// NcclCommunicator: NCCL over device buffers, bootstrapped over MPI, with a watchdog (see the header).
//
// Threads: the owner's thread makes every call; one watchdog thread per communicator polls CUDA events
// and ncclCommGetAsyncError and may call ncclCommAbort. Two locks, always taken in this order when both
// are needed: `mu` (watchdog queue, failure text, folded seconds) then `nccl_mu` (the ncclComm_t, which
// the watchdog may abort and null). The owner holds nccl_mu only across single non-blocking NCCL calls
// (blocking = 0: they return at once, possibly ncclInProgress), so an abort is never delayed by a call.
#include "syncbn/cuda/nccl_communicator.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "syncbn/cuda/check.h"
#include "syncbn/cuda/device.h"
#include "syncbn/cuda/device_select.h"
#include "syncbn/mpi_check.h"
#include "syncbn/run_agreed.h"

static_assert(NCCL_VERSION_CODE >= 21800, "syncbn needs NCCL >= 2.18 (ncclCommSplit, non-blocking init)");

namespace syncbn::cuda {

using Clock = std::chrono::steady_clock;

namespace {

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

// Polls a non-blocking NCCL call: yields first (it normally completes in microseconds), then sleeps
// kPollSleep at a time — never longer, so a completion is seen within ~20 µs of timer slack after it
// happened (a 1 ms sleep once cost up to a millisecond per wait), while a waiter with more ranks than
// cores (tests) still leaves the core to the peer it waits for. The deadline is the caller's.
constexpr auto kPollSleep = std::chrono::microseconds(20);
void backoff(int round) {
  if (round < 64) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(kPollSleep);
  }
}

// Destructors cannot throw: a failed teardown call is reported on stderr and otherwise ignored.
void warn_if_failed(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess && rc != ncclInProgress)
    std::fprintf(stderr, "warning: %s failed: %s\n", what, nccl_error_text(rc, nullptr).c_str());
}

// True for device (or managed) memory, which NCCL can use; host memory (pageable or pinned) goes via MPI.
bool is_device_memory(const void* p) {
  if (!p) return false;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();  // old drivers report plain host pointers as an error; clear it
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

}  // namespace

NcclOptions NcclOptions::from_env() {
  NcclOptions o;
  const char* v = std::getenv("SBN_GPU_SHARING");
  o.allow_sharing = v && std::strcmp(v, "1") == 0;
  return o;
}

// One watched collective: its two events and what to say if it hangs.
struct Pending {
  cudaEvent_t start = nullptr, end = nullptr;
  std::string what;  // "allreduce_sum(double) 'bn1.forward' (4120 bytes, 4 ranks)"
  bool started = false;
  Clock::time_point started_at;
};

struct NcclCommunicator::State {
  std::unique_ptr<MpiCommunicator> host;
  std::string origin;  // "[rank R@host]"
  int rank = 0, size = 1, device = -1;
  std::shared_ptr<CUstream_st> owned_stream;  // shared with split communicators; null if the caller's
  cudaStream_t stream = nullptr;

  std::mutex nccl_mu;           // guards comm
  ncclComm_t comm = nullptr;    // null after an abort
  std::atomic<bool> aborted{false};

  std::mutex mu;                // guards everything below
  std::condition_variable cv;
  std::deque<Pending> pending;  // in issue (= stream) order
  std::vector<cudaEvent_t> spare_events;
  std::string failure;          // first failure, set once
  bool failure_reported = false;
  double done_seconds = 0;      // device seconds of completed collectives, not yet in stats_
  bool stop = false;
  std::thread watchdog;
  std::atomic<bool> failed{false};
  std::atomic<double> timeout_s{Communicator::kDefaultTimeoutSeconds};

  // Records a failure and aborts the NCCL communicator (idempotent). Call without mu or nccl_mu held.
  void fail(const std::string& why) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (failure.empty()) failure = why;
      failed = true;
    }
    std::string abort_error;
    {
      std::lock_guard<std::mutex> lk(nccl_mu);
      if (comm) {
        // Releases device kernels waiting for peers and frees the communicator.
        const ncclResult_t rc = ncclCommAbort(comm);
        if (rc != ncclSuccess && rc != ncclInProgress) abort_error = nccl_error_text(rc, nullptr);
        comm = nullptr;
      }
      aborted = true;
    }
    if (!abort_error.empty()) {
      std::lock_guard<std::mutex> lk(mu);
      failure += " (ncclCommAbort failed too: " + abort_error + ")";
    }
    cv.notify_all();
  }

  cudaEvent_t take_event() {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (!spare_events.empty()) {
        cudaEvent_t e = spare_events.back();
        spare_events.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    SBN_CUDA_CHECK(cudaEventCreate(&e), origin + " creating a watchdog event");
    return e;
  }

  void give_event(cudaEvent_t e) {
    if (!e) return;
    std::lock_guard<std::mutex> lk(mu);
    spare_events.push_back(e);
  }

  // Polls `*c` (this communicator's handle, or a child being created by split) until its state leaves
  // ncclInProgress (non-blocking init, split, enqueue). On deadline: abort, record, throw. Returns the
  // final state.
  ncclResult_t wait_state(ncclComm_t* c, const std::string& what) {
    const double t = timeout_s.load();
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t));
    for (int round = 0;; ++round) {
      ncclResult_t st = ncclSuccess;
      {
        std::lock_guard<std::mutex> lk(nccl_mu);
        if (!*c) return ncclInvalidUsage;  // aborted by the watchdog meanwhile
        const ncclResult_t rc = ncclCommGetAsyncError(*c, &st);
        if (rc != ncclSuccess) st = rc;
      }
      if (st != ncclInProgress) return st;
      if (failed) return ncclInvalidUsage;
      if (t > 0 && Clock::now() > deadline) {
        const std::string why = origin + " collective timeout: " + what + " did not complete within " +
                                seconds_text(t) + " s: a peer is missing, stuck, or in a different collective";
        if (c != &comm) {
          std::lock_guard<std::mutex> lk(nccl_mu);
          warn_if_failed(ncclCommAbort(*c), "ncclCommAbort (split child)");
          *c = nullptr;
        }
        fail_and_throw(why);
      }
      backoff(round);
    }
  }

  // fail(), then throw `why` to the caller, who thereby has been told (later calls say "unusable").
  [[noreturn]] void fail_and_throw(const std::string& why) {
    fail(why);
    {
      std::lock_guard<std::mutex> lk(mu);
      failure_reported = true;
    }
    throw Error(why);
  }

  void watch() {
    const cudaError_t dev_rc = cudaSetDevice(device);  // the current device is per thread
    if (dev_rc != cudaSuccess) {
      fail(origin + " NCCL watchdog: cudaSetDevice(" + std::to_string(device) + ") failed: " + cuda_error_text(dev_rc));
      return;
    }
    // Relaxed capture mode for this thread: its cudaEventQuery calls would otherwise invalidate a
    // global-mode capture (CUDA's default, PyTorch's) running on the owner's thread.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    const cudaError_t mode_rc = cudaThreadExchangeStreamCaptureMode(&mode);
    if (mode_rc != cudaSuccess) {
      fail(origin + " NCCL watchdog: cudaThreadExchangeStreamCaptureMode failed: " + cuda_error_text(mode_rc));
      return;
    }
    std::unique_lock<std::mutex> lk(mu);
    while (!stop) {
      cv.wait_for(lk, pending.empty() ? std::chrono::milliseconds(100) : std::chrono::milliseconds(2));
      if (stop) break;
      if (failed) continue;  // already aborted: wait for the owner to destroy us
      std::string why;
      while (!pending.empty()) {
        Pending& p = pending.front();
        const cudaError_t q = cudaEventQuery(p.end);
        if (q == cudaSuccess) {
          float ms = 0;
          if (cudaEventElapsedTime(&ms, p.start, p.end) == cudaSuccess) done_seconds += 1e-3 * ms;
          spare_events.push_back(p.start);
          spare_events.push_back(p.end);
          pending.pop_front();
          continue;
        }
        if (q != cudaErrorNotReady) {
          why = origin + " CUDA error while waiting for " + p.what + ": " + cuda_error_text(q);
          break;
        }
        const auto now = Clock::now();
        if (!p.started && cudaEventQuery(p.start) == cudaSuccess) {
          p.started = true;  // the stream has reached the collective: its deadline runs from here
          p.started_at = now;
        }
        const double t = timeout_s.load();
        if (p.started && t > 0 && std::chrono::duration<double>(now - p.started_at).count() > t)
          why = origin + " collective timeout: " + p.what + " did not complete within " + seconds_text(t) +
                " s: a peer is missing, stuck, or in a different collective (NCCL communicator aborted)";
        break;
      }
      if (why.empty()) {
        const std::string during = pending.empty() ? std::string() : " during " + pending.front().what;
        lk.unlock();
        ncclResult_t st = ncclSuccess;
        {
          std::lock_guard<std::mutex> g(nccl_mu);
          if (comm && ncclCommGetAsyncError(comm, &st) != ncclSuccess) st = ncclInternalError;
        }
        if (st != ncclSuccess && st != ncclInProgress)
          why = origin + " asynchronous NCCL error" + during + ": " + nccl_error_text(st, nullptr);
        lk.lock();
      }
      if (!why.empty()) {
        lk.unlock();
        fail(why);
        lk.lock();
      }
    }
  }

  void start_watchdog() { watchdog = std::thread([this] { watch(); }); }

  // Last resort (a constructor that threw after ncclCommInitRankConfig succeeded here but failed on a
  // peer, or a split that failed): abort what is left. The orderly path (finalize + destroy) is
  // ~NcclCommunicator, which leaves comm null.
  ~State() {
    stop_watchdog();
    if (comm) warn_if_failed(ncclCommAbort(comm), "ncclCommAbort (cleanup)");
    for (const Pending& p : pending) {
      if (p.start) cudaEventDestroy(p.start);
      if (p.end) cudaEventDestroy(p.end);
    }
    for (cudaEvent_t e : spare_events) cudaEventDestroy(e);
  }

  void stop_watchdog() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
    }
    cv.notify_all();
    if (watchdog.joinable()) watchdog.join();
  }
};

// ---- construction ---------------------------------------------------------------------------------

namespace {

// Every local rank's global rank and visible device UUIDs (local-rank order), by an allgather over the
// node's ranks (MPI_Comm_split_type SHARED, as MpiCommunicator finds local_rank). Collective over `h`.
std::vector<RankDevices> gather_node_devices(MpiCommunicator& h, const std::vector<std::string>& mine) {
  std::string blob = std::to_string(h.rank());
  for (const std::string& u : mine) blob += "\n" + u;
  MPI_Comm node = MPI_COMM_NULL;
  SBN_MPI_CHECK(MPI_Comm_split_type(h.handle(), MPI_COMM_TYPE_SHARED, h.rank(), MPI_INFO_NULL, &node),
                h.origin() + " device selection: finding node-local ranks");
  int n = 0;
  SBN_MPI_CHECK(MPI_Comm_size(node, &n), h.origin());
  const int len = static_cast<int>(blob.size());
  std::vector<int> lens(static_cast<std::size_t>(n)), offsets(static_cast<std::size_t>(n));
  SBN_MPI_CHECK(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, node), h.origin() + " device selection");
  int total = 0;
  for (int r = 0; r < n; ++r) {
    offsets[static_cast<std::size_t>(r)] = total;
    total += lens[static_cast<std::size_t>(r)];
  }
  std::string all(static_cast<std::size_t>(total), '\0');
  SBN_MPI_CHECK(MPI_Allgatherv(blob.data(), len, MPI_CHAR, all.data(), lens.data(), offsets.data(), MPI_CHAR, node),
                h.origin() + " device selection");
  SBN_MPI_CHECK(MPI_Comm_free(&node), h.origin());
  std::vector<RankDevices> out(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) {
    std::istringstream in(all.substr(static_cast<std::size_t>(offsets[static_cast<std::size_t>(r)]),
                                     static_cast<std::size_t>(lens[static_cast<std::size_t>(r)])));
    std::string line;
    std::getline(in, line);
    out[static_cast<std::size_t>(r)].rank = std::stoi(line);
    while (std::getline(in, line)) out[static_cast<std::size_t>(r)].uuids.push_back(line);
  }
  return out;
}

}  // namespace

int select_device(MpiCommunicator& h, const NcclOptions& opt) {
  std::string why;
  const std::vector<std::string> mine = visible_device_uuids(&why);  // never throws: every rank gathers
  const std::vector<RankDevices> node = gather_node_devices(h, mine);
  int device = -1;
  run_agreed(h, "nccl.init.select_device", [&] {
    SBN_CHECK(!mine.empty(), "no CUDA device visible on " + h.host() + ": " + why);
    const DeviceChoice c = choose_device(node, h.local_rank(), opt.allow_sharing, h.host());
    SBN_CHECK(c.error.empty(), c.error);
    // NCCL rejects two ranks of one communicator on one GPU of one host; separate host ids route the
    // sharing ranks through the network transport instead (see NcclOptions::allow_sharing).
    if (c.shared && !std::getenv("NCCL_HOSTID")) {
      const std::string id = h.host() + ":" + std::to_string(h.local_rank());
      SBN_CHECK(setenv("NCCL_HOSTID", id.c_str(), 1) == 0, "setting NCCL_HOSTID for device sharing");
    }
    device = c.ordinal;
  });
  return device;
}

NcclCommunicator::NcclCommunicator(MpiCommunicator& bootstrap, const NcclOptions& options)
    : s_(std::make_unique<State>()) {
  State& s = *s_;
  set_timeout(bootstrap.timeout());
  s.timeout_s = bootstrap.timeout();
  s.host = std::make_unique<MpiCommunicator>(bootstrap.handle());
  s.host->set_timeout(bootstrap.timeout());
  MpiCommunicator& h = *s.host;
  s.rank = h.rank();
  s.size = h.size();
  s.origin = h.origin();

  s.device = select_device(h, options);  // agreed on its own
  run_agreed(h, "nccl.init.device", [&] {
    int version = 0;
    SBN_NCCL_CHECK(ncclGetVersion(&version), "querying the NCCL version");
    SBN_CHECK(version >= 21800, "NCCL " + std::to_string(version) + " is too old: syncbn needs >= 2.18");
    SBN_CUDA_CHECK(cudaSetDevice(s.device), "selecting CUDA device " + std::to_string(s.device));
    if (options.stream) {
      s.stream = options.stream;
    } else {
      cudaStream_t st = nullptr;
      SBN_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "creating the communicator's stream");
      // Destroyed with the last communicator using it (a deleter cannot throw: failure ignored).
      s.owned_stream = std::shared_ptr<CUstream_st>(st, [](cudaStream_t p) { cudaStreamDestroy(p); });
      s.stream = st;
    }
  });

  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  run_agreed(h, "nccl.init.id", [&] {
    if (h.rank() == 0) SBN_NCCL_CHECK(ncclGetUniqueId(&id), "creating the NCCL unique id");
  });
  h.broadcast(&id, sizeof id, 0, "nccl.init.id");

  run_agreed(h, "nccl.init", [&] {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every call returns at once, so the watchdog can always abort
    ncclResult_t rc;
    {
      std::lock_guard<std::mutex> lk(s.nccl_mu);
      rc = ncclCommInitRankConfig(&s.comm, s.size, id, s.rank, &config);
    }
    if ((rc == ncclSuccess || rc == ncclInProgress) && s.comm)
      rc = s.wait_state(&s.comm, "ncclCommInitRankConfig (" + std::to_string(s.size) + " ranks)");
    if (rc != ncclSuccess) {
      const std::string why = "ncclCommInitRankConfig on device " + std::to_string(s.device) + " failed: " +
                              nccl_error_text(rc, nullptr);
      s.fail(why);
      SBN_FAIL(s.origin + " " + why);
    }
  });
  s.start_watchdog();
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<State> state) : s_(std::move(state)) {
  s_->start_watchdog();
}

NcclCommunicator::~NcclCommunicator() {
  State& s = *s_;
  s.stop_watchdog();
  std::lock_guard<std::mutex> lk(s.nccl_mu);
  if (s.comm) {
    bool clean = std::uncaught_exceptions() == 0;  // unwinding after an error: peers may be gone
    const ncclResult_t fin = clean ? ncclCommFinalize(s.comm) : ncclInternalError;
    if (fin == ncclSuccess || fin == ncclInProgress) {
      // Finalize flushes this rank's outstanding operations; bounded wait, then abort if it does not end.
      const double t = s.timeout_s.load();
      const double limit = t > 0 && t < 30.0 ? t : 30.0;
      const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limit));
      ncclResult_t st = ncclInProgress;
      for (int round = 0; st == ncclInProgress && Clock::now() < deadline; ++round) {
        if (ncclCommGetAsyncError(s.comm, &st) != ncclSuccess) st = ncclInternalError;
        if (st == ncclInProgress) backoff(round);
      }
      clean = st == ncclSuccess;
    } else {
      clean = false;
    }
    if (clean) {
      warn_if_failed(ncclCommDestroy(s.comm), "ncclCommDestroy");
    } else {
      warn_if_failed(ncclCommAbort(s.comm), "ncclCommAbort");
    }
    s.comm = nullptr;
  }
  // Events go with the State.
}

// ---- accessors ------------------------------------------------------------------------------------

int NcclCommunicator::rank() const { return s_->rank; }
int NcclCommunicator::size() const { return s_->size; }
int NcclCommunicator::local_rank() const { return s_->host->local_rank(); }
int NcclCommunicator::local_size() const { return s_->host->local_size(); }
const std::string& NcclCommunicator::host() const { return s_->host->host(); }
int NcclCommunicator::device() const { return s_->device; }
cudaStream_t NcclCommunicator::stream() const { return s_->stream; }
ncclComm_t NcclCommunicator::handle() const { return s_->comm; }
MpiCommunicator& NcclCommunicator::host_comm() { return *s_->host; }

// ---- failure handling -----------------------------------------------------------------------------

void NcclCommunicator::check_usable(const char* op, const char* label) {
  State& s = *s_;
  s.timeout_s = timeout_s_;  // set_timeout() is not virtual: pass the current value on at every call
  s.host->set_timeout(timeout_s_);
  std::lock_guard<std::mutex> lk(s.mu);
  stats_.seconds += s.done_seconds;
  s.done_seconds = 0;
  if (!s.failed) return;
  if (!s.failure_reported) {
    s.failure_reported = true;  // the watchdog's message is the root cause: report it first, as is
    throw Error(s.failure);
  }
  SBN_FAIL(s.origin + " " + op + " '" + label + "': NCCL communicator unusable after: " + s.failure);
}

void NcclCommunicator::raise_if_failed(const char* label) {
  if (s_->failed) check_usable("raise_if_failed", label);
}

void NcclCommunicator::synchronize(cudaStream_t stream, const char* label) {
  State& s = *s_;
  check_usable("synchronize", label);  // also takes the current timeout()
  const std::string where = s.origin + " synchronize '" + label + "'";
  // Own deadline: collectives replayed from a CUDA graph are not watched, so this bounds them.
  const double t = timeout_s_;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t));
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) break;
    if (q != cudaErrorNotReady) SBN_CUDA_CHECK(q, where);
    // "Not ready" is a status, not an error; make sure no runtime leaves it behind as this thread's last
    // error, where the next kernel-launch check (cudaGetLastError) would report it.
    if (cudaPeekAtLastError() == cudaErrorNotReady) cudaGetLastError();
    if (s.failed) check_usable("synchronize", label);  // the watchdog's failure first, as it is
    if (t > 0 && Clock::now() > deadline)
      s.fail_and_throw(where + ": the stream did not finish within the collective timeout of " + seconds_text(t) +
                       " s (a collective, possibly inside a replayed CUDA graph, is stuck: a peer is missing, stuck, "
                       "or in a different collective); NCCL communicator aborted");
    // Poll interval well under 20 µs: a yield, not a sleep (sleeps round up to ~60 µs on Linux); the
    // yield still lets a peer rank sharing this core run.
    std::this_thread::yield();
  }
  check_usable("synchronize", label);  // folds the seconds of collectives completed meanwhile
}

// ---- collectives ----------------------------------------------------------------------------------

void NcclCommunicator::device_collective(const char* op, const char* label, std::size_t bytes, bool allreduce,
                                         cudaStream_t stream, const std::function<ncclResult_t(ncclComm_t)>& issue) {
  State& s = *s_;
  check_usable(op, label);
  const std::string what = std::string(op) + " '" + label + "' (" + std::to_string(bytes) + " bytes, " +
                           std::to_string(s.size) + " ranks)";
  // Inside a CUDA graph capture events cannot be queried later: the collective is captured unwatched.
  const bool watched = !is_capturing(stream);
  Pending p;
  p.what = what;
  if (watched) {
    p.start = s.take_event();
    const cudaError_t rec = cudaEventRecord(p.start, stream);
    if (rec != cudaSuccess) s.give_event(p.start);
    SBN_CUDA_CHECK(rec, s.origin + " " + what);
  }
  ncclResult_t rc = ncclSuccess;
  {
    std::lock_guard<std::mutex> lk(s.nccl_mu);
    rc = s.comm ? issue(s.comm) : ncclInvalidUsage;
  }
  if (rc == ncclInProgress) rc = s.wait_state(&s.comm, what);
  if (rc != ncclSuccess) {
    s.give_event(p.start);
    check_usable(op, label);  // aborted by the watchdog meanwhile: throws its message
    // Peers may already be inside this collective: abort rather than leave them waiting.
    s.fail_and_throw(s.origin + " " + what + ": " + nccl_error_text(rc, nullptr));
  }
  if (watched) {
    p.end = s.take_event();
    const cudaError_t rec = cudaEventRecord(p.end, stream);
    if (rec != cudaSuccess) {
      s.give_event(p.start);
      s.give_event(p.end);
    }
    SBN_CUDA_CHECK(rec, s.origin + " " + what);
    {
      std::lock_guard<std::mutex> lk(s.mu);
      s.pending.push_back(std::move(p));
    }
    s.cv.notify_all();
  }
  stats_.collectives += 1;
  stats_.allreduces += allreduce ? 1 : 0;
  stats_.bytes += bytes;
}

void NcclCommunicator::count_host_op(double seconds, std::size_t bytes, bool allreduce) {
  stats_.collectives += 1;
  stats_.allreduces += allreduce ? 1 : 0;
  stats_.bytes += bytes;
  stats_.seconds += seconds;
}

void NcclCommunicator::allreduce_sum(double* buf, std::size_t count, const char* label, cudaStream_t stream) {
  device_collective("allreduce_sum(double)", label, count * sizeof(double), true, stream, [&](ncclComm_t c) {
    return ncclAllReduce(buf, buf, count, ncclFloat64, ncclSum, c, stream);
  });
}

void NcclCommunicator::allreduce_sum(float* buf, std::size_t count, const char* label, cudaStream_t stream) {
  device_collective("allreduce_sum(float)", label, count * sizeof(float), true, stream, [&](ncclComm_t c) {
    return ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, c, stream);
  });
}

void NcclCommunicator::allreduce_sum(double* buf, std::size_t count, const char* label) {
  if (is_capturing(s_->stream) || is_device_memory(buf)) {
    allreduce_sum(buf, count, label, s_->stream);
    return;
  }
  check_usable("allreduce_sum(double)", label);
  const auto t0 = Clock::now();
  s_->host->allreduce_sum(buf, count, label);
  count_host_op(std::chrono::duration<double>(Clock::now() - t0).count(), count * sizeof(double), true);
}

void NcclCommunicator::allreduce_sum(float* buf, std::size_t count, const char* label) {
  if (is_capturing(s_->stream) || is_device_memory(buf)) {
    allreduce_sum(buf, count, label, s_->stream);
    return;
  }
  check_usable("allreduce_sum(float)", label);
  const auto t0 = Clock::now();
  s_->host->allreduce_sum(buf, count, label);
  count_host_op(std::chrono::duration<double>(Clock::now() - t0).count(), count * sizeof(float), true);
}

void NcclCommunicator::broadcast(void* buf, std::size_t bytes, int root, const char* label) {
  State& s = *s_;
  check_usable("broadcast", label);
  SBN_CHECK(root >= 0 && root < s.size,
            s.origin + " broadcast '" + label + "': root " + std::to_string(root) + " out of range");
  if (!is_capturing(s.stream) && !is_device_memory(buf)) {
    const auto t0 = Clock::now();
    s.host->broadcast(buf, bytes, root, label);
    count_host_op(std::chrono::duration<double>(Clock::now() - t0).count(), bytes, false);
    return;
  }
  const cudaStream_t stream = s.stream;
  device_collective("broadcast", label, bytes, false, stream, [&](ncclComm_t c) {
    return ncclBroadcast(buf, buf, bytes, ncclUint8, root, c, stream);
  });
}

void NcclCommunicator::barrier(const char* label) {
  check_usable("barrier", label);
  const auto t0 = Clock::now();
  s_->host->barrier(label);
  count_host_op(std::chrono::duration<double>(Clock::now() - t0).count(), 0, false);
}

bool NcclCommunicator::any(bool flag, const char* label) {
  check_usable("any", label);
  const auto t0 = Clock::now();
  const bool out = s_->host->any(flag, label);
  count_host_op(std::chrono::duration<double>(Clock::now() - t0).count(), sizeof(int), false);
  return out;
}

bool NcclCommunicator::all_equal(std::uint64_t value, const char* label) {
  check_usable("all_equal", label);
  const auto t0 = Clock::now();
  const bool out = s_->host->all_equal(value, label);
  count_host_op(std::chrono::duration<double>(Clock::now() - t0).count(), 2 * sizeof(std::uint64_t), false);
  return out;
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key, const char* label) {
  State& s = *s_;
  check_usable("split", label);
  SBN_CHECK(color >= 0, s.origin + " split '" + label + "': color must be >= 0, got " + std::to_string(color));
  // Host side first (MPI, with its own deadline), then NCCL: both collective, same order on every rank.
  std::unique_ptr<Communicator> host_sub = s.host->split(color, key, label);
  auto child = std::make_unique<State>();
  child->host.reset(dynamic_cast<MpiCommunicator*>(host_sub.release()));
  SBN_CHECK(child->host != nullptr, s.origin + " split '" + label + "': the host split is not an MPI communicator");
  child->origin = child->host->origin();
  child->rank = child->host->rank();
  child->size = child->host->size();
  child->device = s.device;
  child->owned_stream = s.owned_stream;
  child->stream = s.stream;
  child->timeout_s = timeout_s_;

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t rc;
  {
    std::lock_guard<std::mutex> lk(s.nccl_mu);
    rc = s.comm ? ncclCommSplit(s.comm, color, key, &child->comm, &config) : ncclInvalidUsage;
  }
  const std::string what = "split '" + std::string(label) + "' (color " + std::to_string(color) + ")";
  if (rc == ncclInProgress) rc = s.wait_state(&s.comm, what);  // the parent runs the split
  if (rc == ncclSuccess && child->comm) {
    try {
      rc = child->wait_state(&child->comm, what);
    } catch (const Error& e) {
      s.fail(e.what());  // peers may be inside the split of the parent: the parent is unusable too
      throw;
    }
  }
  if (rc != ncclSuccess || !child->comm) {
    if (child->comm) warn_if_failed(ncclCommAbort(child->comm), "ncclCommAbort (split child)");
    child->comm = nullptr;
    check_usable("split", label);
    s.fail_and_throw(s.origin + " " + what + ": ncclCommSplit failed: " +
                     (rc != ncclSuccess ? nccl_error_text(rc, nullptr) : std::string("no communicator returned")));
  }
  int nccl_rank = -1, nccl_size = -1;
  SBN_NCCL_CHECK(ncclCommUserRank(child->comm, &nccl_rank), s.origin + " " + what);
  SBN_NCCL_CHECK(ncclCommCount(child->comm, &nccl_size), s.origin + " " + what);
  SBN_CHECK(nccl_rank == child->rank && nccl_size == child->size,
            s.origin + " " + what + ": NCCL and MPI disagree on the sub-communicator (NCCL rank " +
                std::to_string(nccl_rank) + "/" + std::to_string(nccl_size) + ", MPI " +
                std::to_string(child->rank) + "/" + std::to_string(child->size) + ")");
  stats_.collectives += 1;
  auto out = std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(child)));
  out->set_timeout(timeout_s_);
  return out;
}

}  // namespace syncbn::cuda
