// CudaSyncBatchNorm: the CPU layer's control flow (src/nn/sync_batchnorm.cpp) over the CUDA kernels.
// Every line of forward()/backward() only enqueues work on stream_: kernel launches, cudaMemsetAsync,
// NCCL collectives on stream_, event records. The one host wait of a step is in check().
#include "syncbn/cuda/sync_batchnorm.h"

#include <algorithm>
#include <cstddef>

#include "syncbn/error.h"

namespace syncbn::cuda {

namespace {

template <class T>
T* member_ptr(void* base, std::size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

const char* offset_bytes(const void* p, std::int64_t elements, DType dtype) {
  return static_cast<const char*>(p) + static_cast<std::size_t>(elements) * dtype_size(dtype);
}

char* offset_bytes(void* p, std::int64_t elements, DType dtype) {
  return static_cast<char*>(p) + static_cast<std::size_t>(elements) * dtype_size(dtype);
}

}  // namespace

CudaSyncBatchNorm::CudaSyncBatchNorm(std::string name, const BatchNormOptions& options, SyncGroup* group,
                                     cudaStream_t stream)
    : name_(std::move(name)),
      opt_(options),
      sync_group_(group),
      group_(group ? group->comm() : nullptr),
      nccl_(nullptr),
      group_size_(group_ ? group_->size() : 1),
      stream_(stream),
      sm_count_(current_sm_count()) {
  const std::string who = "SyncBatchNorm '" + name_ + "'";
  SBN_CHECK(opt_.channels > 0, who + ": channels must be positive, got " + std::to_string(opt_.channels));
  SBN_CHECK(opt_.eps > 0, who + ": eps must be positive");
  SBN_CHECK(!opt_.momentum || (*opt_.momentum >= 0 && *opt_.momentum <= 1), who + ": momentum must be in [0, 1]");
  SBN_CHECK(opt_.ghost_batch >= 0, who + ": ghost batch must be >= 0");
  SBN_CHECK(opt_.ghost_batch == 0 || group_ == nullptr, who + ": ghost batches need local statistics (mode local)");
  if (group_) {
    nccl_ = dynamic_cast<NcclCommunicator*>(group_);
    SBN_CHECK(nccl_ != nullptr, who + ": the CUDA layer needs its sync group over an NcclCommunicator (device "
                                      "memory); this group's communicator works on host memory");
    int dev = -1;
    SBN_CUDA_CHECK(cudaGetDevice(&dev), who);
    SBN_CHECK(dev == nccl_->device(), who + ": the current CUDA device is " + std::to_string(dev) +
                                          ", the group's communicator uses device " + std::to_string(nccl_->device()));
  }
  fwd_tag_ = bn_layer_tag(name_, "forward", opt_.channels);
  bwd_tag_ = bn_layer_tag(name_, "backward", opt_.channels);
  fwd_label_ = name_ + ".forward";
  bwd_label_ = name_ + ".backward";

  const auto C = static_cast<std::size_t>(opt_.channels);
  for (auto* a : {&gamma_, &beta_, &dgamma_, &dbeta_, &running_mean_, &running_var_}) a->resize(C, who + " parameters");
  pivot_.resize(C, who + " pivot");
  batches_tracked_.resize(1, who + " num_batches_tracked");
  status_.resize(1, who + " status");
  status_host_.reserve(sizeof(StepStatus), who + " status");
  CudaBnState init;
  init.gamma.assign(C, 1.0f);
  init.beta.assign(C, 0.0f);
  init.dgamma.assign(C, 0.0f);
  init.dbeta.assign(C, 0.0f);
  init.running_mean.assign(C, 0.0f);
  init.running_var.assign(C, 1.0f);
  init.pivot.assign(C, 0.0);
  set_state(init);
  SBN_CUDA_CHECK(cudaMemsetAsync(status_.data(), 0, sizeof(StepStatus), stream_), who + " status");
  SBN_CUDA_CHECK(cudaStreamSynchronize(stream_), who + " initialisation");
  if (sync_group_) sync_group_->reserve_channels(opt_.channels);
}

CudaSyncBatchNorm::~CudaSyncBatchNorm() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

// ---- helpers ----------------------------------------------------------------------------------

BnGeometry CudaSyncBatchNorm::validate(const DeviceTensor& x, const char* phase) const {
  const std::string who = "SyncBatchNorm '" + name_ + "' " + phase;
  BnGeometry g = bn_geometry(x.shape(), x.layout(), who);
  SBN_CHECK(g.channels == opt_.channels,
            who + ": input has " + std::to_string(g.channels) + " channels, the layer expects " +
                std::to_string(opt_.channels) + " (input " + describe(x.shape(), x.layout()) + ")");
  return g;
}

void CudaSyncBatchNorm::size_buffers(const BnGeometry& g, std::int64_t chunks) {
  const std::string who = "SyncBatchNorm '" + name_ + "'";
  // The group's common message length (see SyncGroup); the kernels fill the first 3 + 2C doubles and
  // the padding stays zero. Resized on the first call after the group's last layer was built.
  const auto len = static_cast<std::size_t>(sync_group_ ? sync_group_->message_size() : bn_msg_size(opt_.channels));
  if (msg_.size() != len) {
    msg_.resize(len, who + " message", stream_);
    SBN_CUDA_CHECK(cudaMemsetAsync(msg_.data(), 0, len * sizeof(double), stream_), who + " message");
  }
  if (chunks != chunks_) {
    const auto n = static_cast<std::size_t>(chunks * opt_.channels);
    for (auto* a : {&mean_, &var_, &invstd_}) a->resize(n, who + " saved statistics", stream_);
    for (auto* a : {&hi_, &a_, &b_, &k1_, &k0_}) a->resize(n, who + " coefficients", stream_);
    counts_.resize(static_cast<std::size_t>(chunks), who + " counts", stream_);
    chunks_ = chunks;
  }
  const std::size_t need = bn_workspace_doubles(g, sm_count_);
  if (need > ws_.size()) ws_.resize(need, who + " workspace", stream_);
}

BnWorkspace CudaSyncBatchNorm::workspace() {
  BnWorkspace w;
  w.data = ws_.data();
  w.doubles = ws_.size();
  w.sm_count = sm_count_;
  return w;
}

void CudaSyncBatchNorm::reduce(const char* phase) {
  const bool forward = phase[0] == 'f';
  // Time the collective with events on the stream (read in check()); not inside a graph capture.
  const bool timed = !is_capturing(stream_);
  if (timed) {
    while (events_.size() < events_used_ + 2) {
      cudaEvent_t e = nullptr;
      SBN_CUDA_CHECK(cudaEventCreate(&e), "SyncBatchNorm '" + name_ + "' timing event");
      events_.push_back(e);
    }
    SBN_CUDA_CHECK(cudaEventRecord(events_[events_used_], stream_), "SyncBatchNorm '" + name_ + "' timing event");
  }
  nccl_->allreduce_sum(msg_.data(), msg_.size(), forward ? fwd_label_.c_str() : bwd_label_.c_str(), stream_);
  if (timed) {
    SBN_CUDA_CHECK(cudaEventRecord(events_[events_used_ + 1], stream_), "SyncBatchNorm '" + name_ + "' timing event");
    events_used_ += 2;
  }
}

void CudaSyncBatchNorm::fail_collectively(const char* phase, const std::string& why) {
  // Still take part in the group's all-reduce, with a tag no layer uses (0): the peers' device tag
  // checks fail and their check() reports this layer too, instead of their collective hanging.
  if (group_ && msg_.size() > 0) {
    try {
      SBN_CUDA_CHECK(cudaMemsetAsync(msg_.data(), 0, msg_.size() * sizeof(double), stream_), why);
      reduce(phase);
    } catch (const Error&) {
      // The collective itself failed; the input error below is the root cause to report.
    }
  }
  throw Error(why);
}

// ---- forward ----------------------------------------------------------------------------------

void CudaSyncBatchNorm::forward(const DeviceTensor& x, DeviceTensor& y, bool training) {
  Communicator* comm = training ? group_ : nullptr;  // eval never communicates
  if (comm && msg_.size() == 0) {
    // The message buffer is needed even to fail collectively.
    const auto len = static_cast<std::size_t>(sync_group_->message_size());
    msg_.resize(len, "SyncBatchNorm '" + name_ + "' message", stream_);
    SBN_CUDA_CHECK(cudaMemsetAsync(msg_.data(), 0, len * sizeof(double), stream_), "SyncBatchNorm message");
  }
  BnGeometry g;
  try {
    g = validate(x, "forward");
  } catch (const Error& e) {
    if (comm) fail_collectively("forward", e.what());
    throw;
  }
  const std::int64_t C = opt_.channels;
  const std::int64_t N = x.rank() ? x.dim(0) : 0;
  const bool batch_stats = training || !opt_.track_running_stats;
  batches_ = bn_chunks(N, batch_stats ? opt_.ghost_batch : 0);
  size_buffers(g, batches_.count);
  saved_batch_stats_ = batch_stats;
  saved_comm_ = comm;
  saved_samples_ = N;
  const DType dt = x.dtype();
  y.resize(x.shape(), x.layout(), dt, stream_);
  const float* gamma = opt_.affine ? gamma_.data() : nullptr;
  const float* beta = opt_.affine ? beta_.data() : nullptr;
  const bool update = training && opt_.track_running_stats;

  for (std::int64_t k = 0; k < batches_.count; ++k) {
    const auto [gk, off] = batches_.slice(g, N, k);
    const std::int64_t p = k * C;
    const void* xk = offset_bytes(x.data(), off, dt);
    void* yk = offset_bytes(y.data(), off, dt);
    if (!batch_stats) {
      // Eval with running statistics: constants, no reduction, no communication.
      bn_running_coefs(C, running_mean_.data(), running_var_.data(), opt_.eps, gamma, beta, mean_.data() + p,
                       var_.data() + p, invstd_.data() + p, hi_.data() + p, a_.data() + p, b_.data() + p, stream_);
    } else if (bn_local_empty_batch(gk, comm != nullptr)) {
      // PyTorch's empty batch: nothing to normalize, running statistics untouched, the batch counted.
      SBN_CUDA_CHECK(cudaMemsetAsync(counts_.data() + k, 0, sizeof(double), stream_), name_ + " count");
      if (update) bn_count_batch(batches_tracked_.data(), stream_);
      continue;
    } else {
      bn_stats(xk, dt, gk, pivot_.data(), fwd_tag_, msg_.data(), workspace(), stream_);
      if (comm) reduce("forward");
      BnLayerArrays arrays;
      arrays.channels = C;
      arrays.gamma = gamma;
      arrays.beta = beta;
      arrays.running_mean = running_mean_.data();
      arrays.running_var = running_var_.data();
      arrays.pivot = pivot_.data();
      arrays.mean = mean_.data();
      arrays.var = var_.data();
      arrays.invstd = invstd_.data();
      arrays.hi = hi_.data();
      arrays.a = a_.data();
      arrays.b = b_.data();
      // A cumulative average takes its k from the device counter (graph replays stay correct), not from 0.
      const BnCombineArgs args = bn_combine_args(arrays, k, comm ? group_size_ : 1, fwd_tag_, opt_.eps,
                                                 BnRunningUpdate::of(update, opt_.momentum, 0));
      BnRunningCounter counter;
      if (update) counter.batches_tracked = batches_tracked_.data();
      BnDeviceReport report;
      report.status = member_ptr<int>(status_.data(), offsetof(StepStatus, forward));
      report.count = counts_.data() + k;
      bn_combine(msg_.data(), args, counter, report, stream_);
    }
    bn_normalize(xk, dt, gk, hi_.data() + p, a_.data() + p, b_.data() + p, opt_.fuse_relu, yk, sm_count_, stream_);
  }
}

// ---- backward ---------------------------------------------------------------------------------

void CudaSyncBatchNorm::backward(const DeviceTensor& x, const DeviceTensor& dy, DeviceTensor& dx) {
  Communicator* comm = saved_comm_;
  BnGeometry g;
  try {
    g = validate(x, "backward");
    const std::string who = "SyncBatchNorm '" + name_ + "' backward";
    SBN_CHECK(dy.shape() == x.shape() && dy.layout() == x.layout(),
              who + ": gradient " + describe(dy.shape(), dy.layout()) + " does not match the input " +
                  describe(x.shape(), x.layout()));
    SBN_CHECK(dy.dtype() == x.dtype(), who + ": gradient dtype " + dtype_name(dy.dtype()) +
                                           " differs from the input's " + dtype_name(x.dtype()));
    SBN_CHECK(saved_samples_ >= 0, who + ": called before any forward");
    SBN_CHECK(x.dim(0) == saved_samples_, who + ": the input's batch (" + std::to_string(x.dim(0)) +
                                              " samples) differs from the last forward's (" +
                                              std::to_string(saved_samples_) + ")");
  } catch (const Error& e) {
    if (comm) fail_collectively("backward", e.what());
    throw;
  }
  const std::int64_t C = opt_.channels;
  const std::int64_t N = x.dim(0);
  size_buffers(g, chunks_);
  const DType dt = x.dtype();
  dx.resize(x.shape(), x.layout(), dt, stream_);
  float* dgamma = opt_.affine ? dgamma_.data() : nullptr;
  float* dbeta = opt_.affine ? dbeta_.data() : nullptr;

  for (std::int64_t k = 0; k < batches_.count; ++k) {
    const auto [gk, off] = batches_.slice(g, N, k);
    const std::int64_t p = k * C;
    const void* xk = offset_bytes(x.data(), off, dt);
    const void* dyk = offset_bytes(dy.data(), off, dt);
    void* dxk = offset_bytes(dx.data(), off, dt);
    if (saved_batch_stats_ && bn_local_empty_batch(gk, comm != nullptr)) continue;  // forward's empty batch
    bn_backward_reduce(dyk, xk, dt, gk, hi_.data() + p, a_.data() + p, b_.data() + p, opt_.fuse_relu,
                       mean_.data() + p, invstd_.data() + p, bwd_tag_, msg_.data(), dgamma, dbeta, workspace(),
                       stream_);
    if (saved_batch_stats_) {
      if (comm) reduce("backward");
      BnLayerArrays arrays;
      arrays.channels = C;
      arrays.gamma = opt_.affine ? gamma_.data() : nullptr;
      arrays.mean = mean_.data();
      arrays.invstd = invstd_.data();
      arrays.hi = hi_.data();
      arrays.k1 = k1_.data();
      arrays.k0 = k0_.data();
      // The expected count is the device value the forward combine wrote (counts_), not this 0.
      const BnBackwardCombineArgs args = bn_backward_combine_args(arrays, k, comm ? group_size_ : 1, bwd_tag_, 0);
      BnDeviceReport report;
      report.status = member_ptr<int>(status_.data(), offsetof(StepStatus, backward));
      report.count = member_ptr<double>(status_.data(), offsetof(StepStatus, backward_count));
      report.expected = member_ptr<double>(status_.data(), offsetof(StepStatus, backward_expected));
      bn_backward_combine(msg_.data(), args, counts_.data() + k, report, stream_);
    } else {
      // Statistics were constants (running stats): dx = a·dy'.
      SBN_CUDA_CHECK(cudaMemsetAsync(k1_.data() + p, 0, static_cast<std::size_t>(C) * sizeof(float), stream_), name_);
      SBN_CUDA_CHECK(cudaMemsetAsync(k0_.data() + p, 0, static_cast<std::size_t>(C) * sizeof(float), stream_), name_);
    }
    bn_backward_elemt(dyk, xk, dt, gk, hi_.data() + p, a_.data() + p, b_.data() + p, opt_.fuse_relu, k1_.data() + p,
                      k0_.data() + p, dxk, sm_count_, stream_);
  }
}

// ---- end of step ------------------------------------------------------------------------------

void CudaSyncBatchNorm::check() {
  const std::string label = name_ + ".check";
  auto* host = static_cast<StepStatus*>(status_host_.data());
  SBN_CUDA_CHECK(cudaMemcpyAsync(host, status_.data(), sizeof(StepStatus), cudaMemcpyDeviceToHost, stream_), label);
  // The one wait of the step. Through the communicator when there is one, so that a hung collective
  // surfaces as its watchdog's error instead of a wait without end.
  if (nccl_) {
    nccl_->synchronize(stream_, label.c_str());
  } else {
    SBN_CUDA_CHECK(cudaStreamSynchronize(stream_), label);
  }
  for (std::size_t i = 0; i + 1 < events_used_; i += 2) {
    float ms = 0;
    SBN_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]), label + " (collective timing)");
    comm_seconds_ += 1e-3 * ms;
  }
  events_used_ = 0;
  const StepStatus st = *host;
  if (st.forward == kBnOk && st.backward == kBnOk) return;
  SBN_CUDA_CHECK(cudaMemsetAsync(status_.data(), 0, sizeof(StepStatus), stream_), label);
  const int group = saved_comm_ ? group_size_ : 0;
  if (st.forward != kBnOk)
    throw_bn_status(static_cast<BnStatus>(st.forward), name_, "forward", group, 0, 0);
  throw_bn_status(static_cast<BnStatus>(st.backward), name_, "backward", group, st.backward_count,
                  st.backward_expected);
}

// ---- state ------------------------------------------------------------------------------------

CudaBnState CudaSyncBatchNorm::state() {
  const auto C = static_cast<std::size_t>(opt_.channels);
  CudaBnState s;
  s.gamma = copy_to_host(gamma_.data(), C, stream_);
  s.beta = copy_to_host(beta_.data(), C, stream_);
  s.dgamma = copy_to_host(dgamma_.data(), C, stream_);
  s.dbeta = copy_to_host(dbeta_.data(), C, stream_);
  s.running_mean = copy_to_host(running_mean_.data(), C, stream_);
  s.running_var = copy_to_host(running_var_.data(), C, stream_);
  s.pivot = copy_to_host(pivot_.data(), C, stream_);
  s.num_batches_tracked = copy_to_host(batches_tracked_.data(), 1, stream_)[0];
  return s;
}

void CudaSyncBatchNorm::set_state(const CudaBnState& s) {
  const auto C = static_cast<std::size_t>(opt_.channels);
  const std::string who = "SyncBatchNorm '" + name_ + "' set_state";
  for (const auto* v : {&s.gamma, &s.beta, &s.dgamma, &s.dbeta, &s.running_mean, &s.running_var})
    SBN_CHECK(v->size() == C, who + ": expected " + std::to_string(C) + " values per parameter, got " +
                                  std::to_string(v->size()));
  SBN_CHECK(s.pivot.size() == C, who + ": expected " + std::to_string(C) + " pivot values");
  copy_to_device(s.gamma, gamma_.data(), stream_);
  copy_to_device(s.beta, beta_.data(), stream_);
  copy_to_device(s.dgamma, dgamma_.data(), stream_);
  copy_to_device(s.dbeta, dbeta_.data(), stream_);
  copy_to_device(s.running_mean, running_mean_.data(), stream_);
  copy_to_device(s.running_var, running_var_.data(), stream_);
  copy_to_device(s.pivot, pivot_.data(), stream_);
  copy_to_device(std::vector<std::int64_t>{s.num_batches_tracked}, batches_tracked_.data(), stream_);
}

std::vector<double> CudaSyncBatchNorm::batch_mean() {
  if (chunks_ == 0) return {};
  return copy_to_host(mean_.data(), static_cast<std::size_t>(opt_.channels), stream_);
}

std::vector<double> CudaSyncBatchNorm::batch_var() {
  if (chunks_ == 0) return {};
  return copy_to_host(var_.data(), static_cast<std::size_t>(opt_.channels), stream_);
}

double CudaSyncBatchNorm::last_group_count() {
  if (chunks_ == 0) return 0;
  return copy_to_host(counts_.data(), 1, stream_)[0];
}

}  // namespace syncbn::cuda
