#include "syncbn/mpi_communicator.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "syncbn/mpi_check.h"

namespace syncbn {

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(len));
}

std::string Communicator::origin() const {
  return "[rank " + std::to_string(rank()) + "@" + host() + "]";
}

// ---- runtime ----------------------------------------------------------------------------------

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
    std::fprintf(stderr, "error: MPI_Init_thread failed\n");
    std::exit(1);
  }
  if (provided < MPI_THREAD_FUNNELED) {
    std::fprintf(stderr, "error: the MPI library does not provide MPI_THREAD_FUNNELED\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}

MpiRuntime::~MpiRuntime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void abort_job(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this keeps [[noreturn]] honest if it ever did
}

// ---- communicator -----------------------------------------------------------------------------

MpiCommunicator::MpiCommunicator(MPI_Comm parent) {
  MPI_Comm dup = MPI_COMM_NULL;
  SBN_MPI_CHECK(MPI_Comm_dup(parent, &dup), "creating the communicator");
  init_from(dup);
}

MpiCommunicator::MpiCommunicator(MPI_Comm owned, Adopt) { init_from(owned); }

void MpiCommunicator::init_from(MPI_Comm owned) {
  comm_ = owned;
  SBN_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "creating the communicator");
  SBN_MPI_CHECK(MPI_Comm_rank(comm_, &rank_), "creating the communicator");
  SBN_MPI_CHECK(MPI_Comm_size(comm_, &size_), "creating the communicator");
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  SBN_MPI_CHECK(MPI_Get_processor_name(name, &len), "creating the communicator");
  host_.assign(name, static_cast<std::size_t>(len));
  MPI_Comm node = MPI_COMM_NULL;
  SBN_MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
                origin() + " finding node-local ranks");
  SBN_MPI_CHECK(MPI_Comm_rank(node, &local_rank_), origin());
  SBN_MPI_CHECK(MPI_Comm_size(node, &local_size_), origin());
  SBN_MPI_CHECK(MPI_Comm_free(&node), origin());
}

MpiCommunicator::~MpiCommunicator() {
  // After a timeout a peer may still enter the pending collective; freeing the communicator could then
  // block, so a broken communicator is deliberately leaked (the job is about to abort anyway).
  if (comm_ != MPI_COMM_NULL && broken_.empty()) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
}

void MpiCommunicator::check_usable(const char* op, const char* label) const {
  if (!broken_.empty())
    SBN_FAIL(origin() + " " + op + " '" + label + "': communicator unusable after a timeout in " +
             broken_);
}

void MpiCommunicator::complete(MPI_Request* req, const char* op, const char* label, std::size_t bytes,
                               Clock::time_point issued, double extra_s) {
  const auto start = Clock::now();
  const bool bounded = timeout_s_ > 0;
  const auto deadline = issued + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(bounded ? timeout_s_ : 0.0));
  // Spin first (a SyncBN all-reduce normally completes in microseconds), then yield the core: with
  // more ranks than cores a spinning waiter would starve the peer it waits for. The sleeps start after
  // several ms of yields: a balanced step's waits rarely reach them (no wake-up latency for those).
  int done = 0;
  for (long spins = 0;; ++spins) {
    SBN_MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE),
                  origin() + " " + op + " '" + label + "'");
    if (done) break;
    if (spins > 2000) std::this_thread::yield();
    if (spins > 20000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    if (bounded && (spins & 63) == 0 && Clock::now() > deadline) {
      broken_ = std::string(op) + " '" + label + "'";
      char secs[32];
      std::snprintf(secs, sizeof secs, "%g", timeout_s_);
      SBN_FAIL(origin() + " collective timeout: " + op + " '" + label + "' (" +
               std::to_string(bytes) + " bytes, " + std::to_string(size_) +
               " ranks) did not complete within " + secs +
               " s: a peer is missing, stuck, or in a different collective");
    }
  }
  const auto end = Clock::now();
  stats_.collectives += 1;
  stats_.bytes += bytes;
  stats_.seconds += std::chrono::duration<double>(end - start).count() + extra_s;
}

void MpiCommunicator::wait(MPI_Request* req, const char* op, const char* label, std::size_t bytes) {
  complete(req, op, label, bytes, Clock::now());
}

void MpiCommunicator::allreduce_impl(void* buf, std::size_t count, MPI_Datatype type,
                                     std::size_t elem_bytes, const char* op, const char* label) {
  check_usable(op, label);
  SBN_CHECK(count <= static_cast<std::size_t>(INT32_MAX),
            origin() + " " + op + " '" + label + "': " + std::to_string(count) +
                " elements exceed MPI's int count");
  MPI_Request req = MPI_REQUEST_NULL;
  SBN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, static_cast<int>(count), type, MPI_SUM, comm_, &req),
                origin() + " " + op + " '" + label + "'");
  wait(&req, op, label, count * elem_bytes);
  stats_.allreduces += 1;
}

void MpiCommunicator::allreduce_sum(double* buf, std::size_t count, const char* label) {
  allreduce_impl(buf, count, MPI_DOUBLE, sizeof(double), "allreduce_sum(double)", label);
}

void MpiCommunicator::allreduce_sum(float* buf, std::size_t count, const char* label) {
  allreduce_impl(buf, count, MPI_FLOAT, sizeof(float), "allreduce_sum(float)", label);
}

void MpiCommunicator::broadcast(void* buf, std::size_t bytes, int root, const char* label) {
  check_usable("broadcast", label);
  SBN_CHECK(root >= 0 && root < size_, origin() + " broadcast '" + label + "': root " +
                                           std::to_string(root) + " out of range");
  SBN_CHECK(bytes <= static_cast<std::size_t>(INT32_MAX),
            origin() + " broadcast '" + label + "': message too large");
  MPI_Request req = MPI_REQUEST_NULL;
  SBN_MPI_CHECK(MPI_Ibcast(buf, static_cast<int>(bytes), MPI_BYTE, root, comm_, &req),
                origin() + " broadcast '" + label + "'");
  wait(&req, "broadcast", label, bytes);
}

void MpiCommunicator::barrier(const char* label) {
  check_usable("barrier", label);
  MPI_Request req = MPI_REQUEST_NULL;
  SBN_MPI_CHECK(MPI_Ibarrier(comm_, &req), origin() + " barrier '" + label + "'");
  wait(&req, "barrier", label, 0);
}

bool MpiCommunicator::any(bool flag, const char* label) {
  check_usable("any", label);
  int value = flag ? 1 : 0;
  MPI_Request req = MPI_REQUEST_NULL;
  SBN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_MAX, comm_, &req),
                origin() + " any '" + label + "'");
  wait(&req, "any", label, sizeof value);
  return value != 0;
}

bool MpiCommunicator::all_equal(std::uint64_t value, const char* label) {
  check_usable("all_equal", label);
  // max(v) and max(~v) = ~min(v) in one reduction: all equal iff max == min.
  std::uint64_t both[2] = {value, ~value};
  MPI_Request req = MPI_REQUEST_NULL;
  SBN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, both, 2, MPI_UINT64_T, MPI_MAX, comm_, &req),
                origin() + " all_equal '" + label + "'");
  wait(&req, "all_equal", label, sizeof both);
  return both[0] == ~both[1];
}

// ---- non-blocking all-reduce ------------------------------------------------------------------

Communicator::Request Communicator::start_allreduce_sum(float* buf, std::size_t count, const char* label) {
  allreduce_sum(buf, count, label);
  return 0;
}

bool Communicator::test(Request request) {
  (void)request;
  return true;
}

void Communicator::wait(Request request) { (void)request; }

Communicator::Request MpiCommunicator::start_allreduce_sum(float* buf, std::size_t count, const char* label) {
  const char* op = "allreduce_sum(float)";
  check_usable(op, label);
  SBN_CHECK(count <= static_cast<std::size_t>(INT32_MAX),
            origin() + " " + op + " '" + label + "': " + std::to_string(count) +
                " elements exceed MPI's int count");
  const auto issued = Clock::now();
  std::size_t slot = 0;
  while (slot < pending_.size() && pending_[slot].open) ++slot;
  if (slot == pending_.size()) pending_.emplace_back();
  Pending& p = pending_[slot];
  SBN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, static_cast<int>(count), MPI_FLOAT, MPI_SUM, comm_, &p.req),
                origin() + " " + op + " '" + label + "'");
  p.label = label;
  p.bytes = count * sizeof(float);
  p.issued = issued;
  p.open = true;
  p.seconds = std::chrono::duration<double>(Clock::now() - issued).count();
  return static_cast<Request>(slot);
}

MpiCommunicator::Pending& MpiCommunicator::pending(Request request, const char* op) {
  SBN_CHECK(request >= 0 && static_cast<std::size_t>(request) < pending_.size() &&
                pending_[static_cast<std::size_t>(request)].open,
            origin() + " " + op + ": request " + std::to_string(request) + " was not started or was already waited for");
  return pending_[static_cast<std::size_t>(request)];
}

bool MpiCommunicator::test(Request request) {
  Pending& p = pending(request, "test");
  if (p.req == MPI_REQUEST_NULL) return true;  // completed by an earlier test
  check_usable("test", p.label.c_str());
  const auto start = Clock::now();
  int done = 0;
  SBN_MPI_CHECK(MPI_Test(&p.req, &done, MPI_STATUS_IGNORE), origin() + " test '" + p.label + "'");
  p.seconds += std::chrono::duration<double>(Clock::now() - start).count();
  return done != 0;
}

void MpiCommunicator::wait(Request request) {
  Pending& p = pending(request, "wait");
  p.open = false;
  check_usable("wait", p.label.c_str());
  // MPI_Test on a completed (null) request reports done at once: complete() then only counts it.
  complete(&p.req, "allreduce_sum(float)", p.label.c_str(), p.bytes, p.issued, p.seconds);
  stats_.allreduces += 1;
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key, const char* label) {
  check_usable("split", label);
  // MPI_Comm_split is blocking: agree first (non-blocking, with the deadline) that every rank is here.
  barrier(label);
  MPI_Comm sub = MPI_COMM_NULL;
  SBN_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub), origin() + " split '" + label + "'");
  stats_.collectives += 1;
  auto out = std::unique_ptr<MpiCommunicator>(new MpiCommunicator(sub, Adopt{}));
  out->set_timeout(timeout_s_);
  return out;
}

}  // namespace syncbn
