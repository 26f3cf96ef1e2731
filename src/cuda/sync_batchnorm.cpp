// CudaSyncBatchNorm: BnLayerHost's steps (bn_layer.h), shared with the CPU layer, over the CUDA kernels.
// Every line of forward()/backward() only enqueues work on stream_: kernel launches, cudaMemsetAsync,
// collectives on stream_ (NCCL: enqueued; staged: host-synchronous), event records. The one host wait of a step is in check().
#include "syncbn/cuda/sync_batchnorm.h"

#include <algorithm>
#include <cstddef>

#include "syncbn/cuda/bn_population.h"
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
    : CudaSyncBatchNorm(current_sm_count(), std::move(name), options, group, stream) {}

CudaSyncBatchNorm::CudaSyncBatchNorm(int sm_count, std::string name, const BatchNormOptions& options,
                                     SyncGroup* group, cudaStream_t stream)
    : BnLayerHost(std::move(name), options, group), stream_(stream), sm_count_(sm_count) {
  const std::string who = this->who();
  if (group_) {
    comm_ = dynamic_cast<DeviceCommunicator*>(group_);
    SBN_CHECK(comm_ != nullptr, who + ": the CUDA layer needs its sync group over a device communicator (NCCL or "
                                      "staged); this group's communicator works on host memory");
    int dev = -1;
    SBN_CUDA_CHECK(cudaGetDevice(&dev), who);
    SBN_CHECK(dev == comm_->device(), who + ": the current CUDA device is " + std::to_string(dev) +
                                          ", the group's communicator uses device " + std::to_string(comm_->device()));
  }
  const auto C = static_cast<std::size_t>(opt_.channels);
  for (auto* a : {&bn_.gamma, &bn_.beta, &dgamma_, &dbeta_, &bn_.running_mean, &bn_.running_var})
    a->resize(C, who + " parameters");
  bn_.pivot.resize(C, who + " pivot");
  batches_tracked_.resize(1, who + " num_batches_tracked");
  status_.resize(1, who + " status");
  status_dev_ = status_.data();
  status_host_.reserve(sizeof(BnStepStatus), who + " status");
  CudaBnState init;
  init.gamma.assign(C, 1.0f);
  init.beta.assign(C, 0.0f);
  init.dgamma.assign(C, 0.0f);
  init.dbeta.assign(C, 0.0f);
  init.running_mean.assign(C, 0.0f);
  init.running_var.assign(C, 1.0f);
  init.pivot.assign(C, 0.0);
  set_state(init);
  SBN_CUDA_CHECK(cudaMemsetAsync(status_.data(), 0, sizeof(BnStepStatus), stream_), who + " status");
  SBN_CUDA_CHECK(cudaStreamSynchronize(stream_), who + " initialisation");
  if (sync_group_) sync_group_->reserve_channels(opt_.channels);
}

CudaSyncBatchNorm::~CudaSyncBatchNorm() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

// ---- helpers ----------------------------------------------------------------------------------

void CudaSyncBatchNorm::size_message() {
  // The layer's size class in its group (see SyncGroup); the kernels fill the first 3 + 2C doubles and
  // the padding stays zero. Resized on the first call after the group's last layer was built.
  const std::size_t len = message_doubles();
  if (msg_.size() == len) return;
  const std::string what = who() + " message";
  msg_.resize(len, what, stream_);
  SBN_CUDA_CHECK(cudaMemsetAsync(msg_.data(), 0, len * sizeof(double), stream_), what);
}

void CudaSyncBatchNorm::size_buffers(const BnGeometry& g, std::int64_t batches) {
  const std::string who = this->who();
  size_message();
  if (batches != chunks_) {
    const auto n = static_cast<std::size_t>(batches * opt_.channels);
    for (auto* a : {&bn_.mean, &bn_.var, &bn_.invstd}) a->resize(n, who + " saved statistics", stream_);
    for (auto* a : {&bn_.hi, &bn_.a, &bn_.b, &bn_.k1, &bn_.k0}) a->resize(n, who + " coefficients", stream_);
    if (opt_.renorm)
      for (auto* a : {&bn_.renorm_r, &bn_.renorm_d}) a->resize(n, who + " renorm factors", stream_);
    counts_.resize(static_cast<std::size_t>(batches), who + " counts", stream_);
    chunks_ = batches;
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
  // Time the collective with events on the stream (read in check()); not inside a graph capture.
  const bool timed = !is_capturing(stream_);
  if (timed) {
    while (events_.size() < events_used_ + 2) {
      cudaEvent_t e = nullptr;
      SBN_CUDA_CHECK(cudaEventCreate(&e), who() + " timing event");
      events_.push_back(e);
    }
    SBN_CUDA_CHECK(cudaEventRecord(events_[events_used_], stream_), who() + " timing event");
  }
  comm_->allreduce_sum(msg_.data(), msg_.size(), label(phase), stream_);
  if (timed) {
    SBN_CUDA_CHECK(cudaEventRecord(events_[events_used_ + 1], stream_), who() + " timing event");
    events_used_ += 2;
  }
}

void CudaSyncBatchNorm::reduce_zero_message(const char* phase) {
  // Stream-ordered like every collective of the layer; the peers' device tag checks then fail and their
  // check() reports this layer too, instead of their collective hanging.
  if (msg_.size() == 0) return;
  SBN_CUDA_CHECK(cudaMemsetAsync(msg_.data(), 0, msg_.size() * sizeof(double), stream_), who() + " message");
  reduce(phase);
}

// ---- forward ----------------------------------------------------------------------------------

void CudaSyncBatchNorm::forward(const DeviceTensor& x, DeviceTensor& y, bool training) {
  if (training && group_ && msg_.size() == 0) size_message();  // needed even to fail collectively
  const BnCall call = begin_forward({x.shape(), x.layout()}, training);
  const std::int64_t C = opt_.channels;
  const DType dt = x.dtype();
  y.resize(x.shape(), x.layout(), dt, stream_);
  const float* gamma = opt_.affine ? bn_.gamma.data() : nullptr;
  const float* beta = opt_.affine ? bn_.beta.data() : nullptr;

  for (std::int64_t k = 0; k < batch_count(); ++k) {
    const BnCallBatch b = batch(call, k);
    const std::int64_t p = b.block;
    const void* xk = offset_bytes(x.data(), b.offset, dt);
    void* yk = offset_bytes(y.data(), b.offset, dt);
    if (b.kind == BnCallBatch::kRunning) {
      // Eval with running statistics: constants, no reduction, no communication.
      bn_running_coefs(C, bn_.running_mean.data(), bn_.running_var.data(), opt_.eps, gamma, beta, bn_.mean.data() + p,
                       bn_.var.data() + p, bn_.invstd.data() + p, bn_.hi.data() + p, bn_.a.data() + p,
                       bn_.b.data() + p, stream_);
    } else if (b.kind == BnCallBatch::kEmpty) {
      // PyTorch's empty batch: nothing to normalize, running statistics untouched, the batch counted.
      SBN_CUDA_CHECK(cudaMemsetAsync(counts_.data() + k, 0, sizeof(double), stream_), name_ + " count");
      if (call.update) bn_count_batch(batches_tracked_.data(), stream_);
      continue;
    } else {
      bn_stats(xk, dt, b.geometry, bn_.pivot.data(), fwd_tag_, msg_.data(), workspace(), stream_);
      if (call.comm) reduce("forward");
      // A cumulative average takes its k from the device counter (graph replays stay correct), not from 0.
      const BnCombineArgs args = combine_args(bn_.arrays(C), k, call, 0);
      BnRunningCounter counter;
      if (call.update) counter.batches_tracked = batches_tracked_.data();
      BnDeviceReport report;
      report.status = member_ptr<int>(status_dev_, offsetof(BnStepStatus, forward));
      report.count = counts_.data() + k;
      bn_combine(msg_.data(), args, counter, report, stream_);
    }
    bn_normalize(xk, dt, b.geometry, bn_.hi.data() + p, bn_.a.data() + p, bn_.b.data() + p, opt_.fuse_relu, yk,
                 sm_count_, stream_);
  }
  if (population_open() && call.batch_stats) accumulate_population(x, call);
}

// ---- population pass (PreciseBN) ---------------------------------------------------------------

void CudaSyncBatchNorm::begin_population() {
  const auto C = static_cast<std::size_t>(opt_.channels);
  const std::string who = this->who() + " PreciseBN";
  open_population();
  for (auto* a : {&pop_pivot_, &pop_saved_pivot_}) a->resize(C, who + " pivot", stream_);
  pop_acc_.resize(1 + 2 * C, who + " sums", stream_);
  pop_msg_.resize(static_cast<std::size_t>(bn_msg_size(opt_.channels)), who + " message", stream_);
  SBN_CUDA_CHECK(cudaMemsetAsync(pop_pivot_.data(), 0, C * sizeof(double), stream_), who);
  SBN_CUDA_CHECK(cudaMemsetAsync(pop_acc_.data(), 0, (1 + 2 * C) * sizeof(double), stream_), who);
  SBN_CUDA_CHECK(cudaMemcpyAsync(pop_saved_pivot_.data(), bn_.pivot.data(), C * sizeof(double),
                                 cudaMemcpyDeviceToDevice, stream_),
                 who);
}

void CudaSyncBatchNorm::accumulate_population(const DeviceTensor& x, const BnCall& call) {
  // The pivot: the first batch mean (the group's when synced), rounded (bn_population_pivot).
  if (population_pivot_due(call)) bn_population_pivot(bn_.mean.data(), pop_pivot_.data(), opt_.channels, stream_);
  if (call.geometry.per_channel() == 0) return;
  bn_stats(x.data(), x.dtype(), call.geometry, pop_pivot_.data(), 0.0, pop_msg_.data(), workspace(), stream_);
  bn_population_add(pop_msg_.data(), pop_acc_.data(), opt_.channels, stream_);
}

void CudaSyncBatchNorm::finish_population(Communicator& world) {
  const auto C = static_cast<std::size_t>(opt_.channels);
  const std::string who = this->who() + " PreciseBN";
  check();  // the pass's forwards: their device status, and the stream done
  const std::vector<double> pivot = copy_to_host(pop_pivot_.data(), C, stream_);
  const std::vector<double> acc = copy_to_host(pop_acc_.data(), 1 + 2 * C, stream_);
  SBN_CUDA_CHECK(cudaMemcpyAsync(bn_.pivot.data(), pop_saved_pivot_.data(), C * sizeof(double),
                                 cudaMemcpyDeviceToDevice, stream_),
                 who);
  std::vector<float> mean(C), var(C);
  close_population(world, pivot.data(), acc.data(), opt_.track_running_stats ? mean.data() : nullptr, var.data());
  if (!opt_.track_running_stats) return;
  copy_to_device(mean, bn_.running_mean.data(), stream_);
  copy_to_device(var, bn_.running_var.data(), stream_);
}

// ---- backward ---------------------------------------------------------------------------------

void CudaSyncBatchNorm::backward(const DeviceTensor& x, const DeviceTensor& dy, DeviceTensor& dx) {
  const BnCall call = begin_backward({x.shape(), x.layout(), dtype_name(x.dtype())},
                                     {dy.shape(), dy.layout(), dtype_name(dy.dtype())});
  const std::int64_t C = opt_.channels;
  size_buffers(call.geometry, chunks_);
  const DType dt = x.dtype();
  dx.resize(x.shape(), x.layout(), dt, stream_);
  float* dgamma = opt_.affine ? dgamma_.data() : nullptr;
  float* dbeta = opt_.affine ? dbeta_.data() : nullptr;

  for (std::int64_t k = 0; k < batch_count(); ++k) {
    const BnCallBatch b = batch(call, k);
    const std::int64_t p = b.block;
    if (b.kind == BnCallBatch::kEmpty) continue;  // forward's empty batch
    const void* xk = offset_bytes(x.data(), b.offset, dt);
    const void* dyk = offset_bytes(dy.data(), b.offset, dt);
    void* dxk = offset_bytes(dx.data(), b.offset, dt);
    bn_backward_reduce(dyk, xk, dt, b.geometry, bn_.hi.data() + p, bn_.a.data() + p, bn_.b.data() + p, opt_.fuse_relu,
                       bn_.mean.data() + p, bn_.invstd.data() + p, bwd_tag_, msg_.data(), dgamma, dbeta, workspace(),
                       stream_, renorm_factors(bn_.arrays(C), k, call));
    if (b.kind == BnCallBatch::kBatchStats) {
      if (call.comm) reduce("backward");
      // The expected count is the device value the forward combine wrote (counts_), not this 0.
      const BnBackwardCombineArgs args = backward_combine_args(bn_.arrays(C), k, call, 0);
      BnDeviceReport report;
      report.status = member_ptr<int>(status_dev_, offsetof(BnStepStatus, backward));
      report.count = member_ptr<double>(status_dev_, offsetof(BnStepStatus, backward_count));
      report.expected = member_ptr<double>(status_dev_, offsetof(BnStepStatus, backward_expected));
      bn_backward_combine(msg_.data(), args, counts_.data() + k, report, stream_);
    } else {
      // Statistics were constants (running stats): dx = a·dy'.
      const std::size_t bytes = static_cast<std::size_t>(C) * sizeof(float);
      SBN_CUDA_CHECK(cudaMemsetAsync(bn_.k1.data() + p, 0, bytes, stream_), name_);
      SBN_CUDA_CHECK(cudaMemsetAsync(bn_.k0.data() + p, 0, bytes, stream_), name_);
    }
    bn_backward_elemt(dyk, xk, dt, b.geometry, bn_.hi.data() + p, bn_.a.data() + p, bn_.b.data() + p, opt_.fuse_relu,
                      bn_.k1.data() + p, bn_.k0.data() + p, dxk, sm_count_, stream_);
  }
}

// ---- end of step ------------------------------------------------------------------------------

void CudaSyncBatchNorm::check() {
  const std::string label = name_ + ".check";
  auto* host = static_cast<BnStepStatus*>(status_host_.data());
  SBN_CUDA_CHECK(cudaMemcpyAsync(host, status_dev_, sizeof(BnStepStatus), cudaMemcpyDeviceToHost, stream_), label);
  // The layer's own wait (a layer used alone; the GPU model reads every layer's status in its one wait
  // instead). Through the communicator when there is one, so that a hung collective surfaces as its
  // watchdog's error instead of a wait without end.
  if (comm_) {
    comm_->synchronize(stream_, label.c_str());
  } else {
    SBN_CUDA_CHECK(cudaStreamSynchronize(stream_), label);
  }
  fold_timing();
  const BnStepStatus st = *host;
  if (st.forward == kBnOk && st.backward == kBnOk) return;
  SBN_CUDA_CHECK(cudaMemsetAsync(status_dev_, 0, sizeof(BnStepStatus), stream_), label);
  check_step_status(st);
}

void CudaSyncBatchNorm::set_status_slot(BnStepStatus* slot) { status_dev_ = slot ? slot : status_.data(); }

void CudaSyncBatchNorm::fold_timing() {
  for (std::size_t i = 0; i + 1 < events_used_; i += 2) {
    float ms = 0;
    SBN_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]), who() + " (collective timing)");
    comm_seconds_ += 1e-3 * ms;
  }
  events_used_ = 0;
}

// ---- state ------------------------------------------------------------------------------------

CudaBnState CudaSyncBatchNorm::state() {
  const auto C = static_cast<std::size_t>(opt_.channels);
  CudaBnState s;
  s.gamma = copy_to_host(bn_.gamma.data(), C, stream_);
  s.beta = copy_to_host(bn_.beta.data(), C, stream_);
  s.dgamma = copy_to_host(dgamma_.data(), C, stream_);
  s.dbeta = copy_to_host(dbeta_.data(), C, stream_);
  s.running_mean = copy_to_host(bn_.running_mean.data(), C, stream_);
  s.running_var = copy_to_host(bn_.running_var.data(), C, stream_);
  s.pivot = copy_to_host(bn_.pivot.data(), C, stream_);
  s.num_batches_tracked = copy_to_host(batches_tracked_.data(), 1, stream_)[0];
  return s;
}

void CudaSyncBatchNorm::set_state(const CudaBnState& s) {
  const auto C = static_cast<std::size_t>(opt_.channels);
  const std::string who = this->who() + " set_state";
  for (const auto* v : {&s.gamma, &s.beta, &s.dgamma, &s.dbeta, &s.running_mean, &s.running_var})
    SBN_CHECK(v->size() == C, who + ": expected " + std::to_string(C) + " values per parameter, got " +
                                  std::to_string(v->size()));
  SBN_CHECK(s.pivot.size() == C, who + ": expected " + std::to_string(C) + " pivot values");
  copy_to_device(s.gamma, bn_.gamma.data(), stream_);
  copy_to_device(s.beta, bn_.beta.data(), stream_);
  copy_to_device(s.dgamma, dgamma_.data(), stream_);
  copy_to_device(s.dbeta, dbeta_.data(), stream_);
  copy_to_device(s.running_mean, bn_.running_mean.data(), stream_);
  copy_to_device(s.running_var, bn_.running_var.data(), stream_);
  copy_to_device(s.pivot, bn_.pivot.data(), stream_);
  copy_to_device(std::vector<std::int64_t>{s.num_batches_tracked}, batches_tracked_.data(), stream_);
}

std::vector<double> CudaSyncBatchNorm::batch_mean() {
  if (chunks_ == 0) return {};
  return copy_to_host(bn_.mean.data(), static_cast<std::size_t>(opt_.channels), stream_);
}

std::vector<double> CudaSyncBatchNorm::batch_var() {
  if (chunks_ == 0) return {};
  return copy_to_host(bn_.var.data(), static_cast<std::size_t>(opt_.channels), stream_);
}

double CudaSyncBatchNorm::last_group_count() {
  if (chunks_ == 0) return 0;
  return copy_to_host(counts_.data(), 1, stream_)[0];
}

}  // namespace syncbn::cuda
