// StagedCommunicator (staged_communicator.h): device collectives staged through host memory over MPI.
#include "syncbn/cuda/staged_communicator.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "syncbn/cuda/check.h"
#include "syncbn/cuda/device.h"
#include "syncbn/error.h"

namespace syncbn::cuda {

namespace {

using Clock = std::chrono::steady_clock;

// Never a null staging buffer, even for empty messages (MPI is handed a valid address).
constexpr std::size_t kMinStaging = 64;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---- staging policies -------------------------------------------------------------------------

class CudaStaging final : public Staging {
 public:
  explicit CudaStaging(int device) : device_(device) {}
  void* host_buffer(std::size_t bytes, const char* label) override {
    pinned_.reserve(bytes, std::string("staged communicator '") + label + "'");
    return pinned_.data();
  }
  void to_host(void* host, const void* dev, std::size_t bytes, cudaStream_t stream, const char* label) override {
    SBN_CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream), label);
  }
  void to_device(void* dev, const void* host, std::size_t bytes, cudaStream_t stream, const char* label) override {
    SBN_CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream), label);
  }
  void wait(cudaStream_t stream, const char* label) override {
    SBN_CUDA_CHECK(cudaStreamSynchronize(stream), label);
  }
  bool is_device(const void* p) override {
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
      (void)cudaGetLastError();  // an unregistered host pointer on old runtimes: not an error to keep
      return false;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  }
  std::unique_ptr<Staging> clone() const override { return std::make_unique<CudaStaging>(device_); }
  int device() const override { return device_; }

 private:
  int device_ = -1;
  PinnedBuffer pinned_;  // grows to the largest message
};

class HostStaging final : public Staging {
 public:
  void* host_buffer(std::size_t bytes, const char*) override {
    if (buf_.size() < bytes) buf_.resize(bytes);
    return buf_.data();
  }
  void to_host(void* host, const void* dev, std::size_t bytes, cudaStream_t, const char*) override {
    if (bytes > 0) std::memcpy(host, dev, bytes);
  }
  void to_device(void* dev, const void* host, std::size_t bytes, cudaStream_t, const char*) override {
    if (bytes > 0) std::memcpy(dev, host, bytes);
  }
  void wait(cudaStream_t, const char*) override {}
  bool is_device(const void*) override { return true; }
  std::unique_ptr<Staging> clone() const override { return std::make_unique<HostStaging>(); }
  int device() const override { return -1; }

 private:
  std::vector<unsigned char> buf_;
};

// What agree() compares: the operation, its length and root, mixed into one word.
std::uint64_t collective_signature(const char* op, std::size_t count, int root) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the op name, then the numbers
  for (const char* c = op; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 1099511628211ull;
  h = (h ^ static_cast<std::uint64_t>(count)) * 1099511628211ull;
  return (h ^ static_cast<std::uint64_t>(root + 1)) * 1099511628211ull;
}

}  // namespace

std::unique_ptr<Staging> cuda_staging() {
  int dev = -1;
  SBN_CUDA_CHECK(cudaGetDevice(&dev), "staged communicator: current device");
  return std::make_unique<CudaStaging>(dev);
}
std::unique_ptr<Staging> host_staging() { return std::make_unique<HostStaging>(); }

int use_local_device(const Communicator& world) {
  std::string why;
  const int n = visible_devices(&why);
  SBN_CHECK(n > 0, world.origin() + " no CUDA device visible (" + why + ")");
  const int dev = world.local_rank() % n;
  SBN_CUDA_CHECK(cudaSetDevice(dev), world.origin() + " selecting device " + std::to_string(dev));
  return dev;
}

// ---- construction -----------------------------------------------------------------------------

StagedCommunicator::StagedCommunicator(MpiCommunicator& world, std::unique_ptr<Staging> staging,
                                       cudaStream_t stream)
    : mpi_(std::make_unique<MpiCommunicator>(world.handle())), staging_(std::move(staging)), stream_(stream) {
  SBN_CHECK(staging_ != nullptr, origin() + " staged communicator: no staging policy");
  set_timeout(world.timeout());
  if (stream_ == nullptr && staging_->device() >= 0) {
    SBN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), origin() + " staged communicator stream");
    stream_owner_ = std::shared_ptr<void>(static_cast<void*>(stream_),
                                          [](void* s) { cudaStreamDestroy(static_cast<cudaStream_t>(s)); });
  }
}

StagedCommunicator::StagedCommunicator(std::unique_ptr<MpiCommunicator> mpi, std::unique_ptr<Staging> staging,
                                       std::shared_ptr<void> stream_owner, cudaStream_t stream, Adopt)
    : mpi_(std::move(mpi)), staging_(std::move(staging)), stream_owner_(std::move(stream_owner)), stream_(stream) {}

StagedCommunicator::~StagedCommunicator() = default;

// ---- helpers ----------------------------------------------------------------------------------

MpiCommunicator& StagedCommunicator::mpi() {
  mpi_->set_timeout(timeout());  // set_timeout() on this communicator applies to its MPI calls
  return *mpi_;
}

void StagedCommunicator::tally(double seconds, std::size_t bytes, bool allreduce) {
  stats_.collectives += 1;
  stats_.allreduces += allreduce ? 1 : 0;
  stats_.bytes += bytes;
  stats_.seconds += seconds;
}

void StagedCommunicator::agree(const char* op, std::size_t count, int root, const char* label) {
  if (mpi().all_equal(collective_signature(op, count, root), label)) return;
  SBN_FAIL(origin() + " " + op + " '" + label + "': the ranks are not all in the same collective with the same " +
           "length (this rank: " + std::to_string(count) + (root >= 0 ? " bytes from root " + std::to_string(root)
                                                                      : std::string(" elements")) + ")");
}

template <class T>
void StagedCommunicator::staged_allreduce(T* buf, std::size_t count, const char* op, const char* label,
                                          cudaStream_t stream) {
  const auto start = Clock::now();
  const std::size_t bytes = count * sizeof(T);
  auto* host = static_cast<T*>(staging_->host_buffer(std::max(bytes, kMinStaging), label));
  staging_->to_host(host, buf, bytes, stream, label);
  staging_->wait(stream, label);  // the MPI call reads the staged copy on the host
  agree(op, count, -1, label);
  mpi().allreduce_sum(host, count, label);
  staging_->to_device(buf, host, bytes, stream, label);
  staging_->wait(stream, label);  // the staging buffer is reused by the next call
  tally(seconds_since(start), bytes, true);
}

// ---- collectives ------------------------------------------------------------------------------

void StagedCommunicator::allreduce_sum(double* buf, std::size_t count, const char* label, cudaStream_t stream) {
  staged_allreduce(buf, count, "allreduce_sum(double)", label, stream);
}

void StagedCommunicator::allreduce_sum(float* buf, std::size_t count, const char* label, cudaStream_t stream) {
  staged_allreduce(buf, count, "allreduce_sum(float)", label, stream);
}

void StagedCommunicator::allreduce_sum(double* buf, std::size_t count, const char* label) {
  if (staging_->is_device(buf)) return allreduce_sum(buf, count, label, stream_);
  const auto start = Clock::now();
  mpi().allreduce_sum(buf, count, label);
  tally(seconds_since(start), count * sizeof(double), true);
}

void StagedCommunicator::allreduce_sum(float* buf, std::size_t count, const char* label) {
  if (staging_->is_device(buf)) return allreduce_sum(buf, count, label, stream_);
  const auto start = Clock::now();
  mpi().allreduce_sum(buf, count, label);
  tally(seconds_since(start), count * sizeof(float), true);
}

void StagedCommunicator::broadcast(void* buf, std::size_t bytes, int root, const char* label) {
  const auto start = Clock::now();
  if (!staging_->is_device(buf)) {
    mpi().broadcast(buf, bytes, root, label);
  } else {
    void* host = staging_->host_buffer(std::max(bytes, kMinStaging), label);
    staging_->to_host(host, buf, bytes, stream_, label);  // only the root's matters; one code path
    staging_->wait(stream_, label);
    agree("broadcast", bytes, root, label);
    mpi().broadcast(host, bytes, root, label);
    staging_->to_device(buf, host, bytes, stream_, label);
    staging_->wait(stream_, label);
  }
  tally(seconds_since(start), bytes, false);
}

void StagedCommunicator::barrier(const char* label) {
  const auto start = Clock::now();
  mpi().barrier(label);
  tally(seconds_since(start), 0, false);
}

bool StagedCommunicator::any(bool flag, const char* label) {
  const auto start = Clock::now();
  const bool out = mpi().any(flag, label);
  tally(seconds_since(start), sizeof(int), false);
  return out;
}

bool StagedCommunicator::all_equal(std::uint64_t value, const char* label) {
  const auto start = Clock::now();
  const bool out = mpi().all_equal(value, label);
  tally(seconds_since(start), 2 * sizeof(std::uint64_t), false);
  return out;
}

std::unique_ptr<Communicator> StagedCommunicator::split(int color, int key, const char* label) {
  const auto start = Clock::now();
  std::unique_ptr<Communicator> sub = mpi().split(color, key, label);
  std::unique_ptr<MpiCommunicator> sub_mpi(dynamic_cast<MpiCommunicator*>(sub.get()));
  SBN_CHECK(sub_mpi != nullptr, origin() + " split '" + label + "': MPI split did not return an MpiCommunicator");
  (void)sub.release();  // owned by sub_mpi now
  std::unique_ptr<StagedCommunicator> out(
      new StagedCommunicator(std::move(sub_mpi), staging_->clone(), stream_owner_, stream_, Adopt{}));
  out->set_timeout(timeout());
  tally(seconds_since(start), 0, false);
  return out;
}

void StagedCommunicator::synchronize(cudaStream_t stream, const char* label) { staging_->wait(stream, label); }

}  // namespace syncbn::cuda
