// CudaTrainModel (cuda_train_model.h): the loop's TrainModel on one GPU per rank.
//
// A step, as the loop drives it (src/train/trainer.cpp), on the compute stream unless said otherwise:
//   train_micro × accum:  input H2D (pinned staging) → NHWC → forward → loss (Σ loss, #correct added to the
//                         step-status array) → backward (gradients +=); in the last one's backward (NCCL,
//                         > 1 rank) each gradient bucket, once complete, is all-reduced on the
//                         communication stream after an event (grad_buckets.h)
//   (first train_micro of a step: BN running state → its copies)
//   reduce_and_update:    BN γ/β gradients not yet gathered into the flat array → the buckets not launched
//                         yet (all of them without overlap) → wait for the last bucket → step check (first
//                         NaN/Inf) → BN running state restored unless the step commits → SGD if it commits
//                         (+ unscale; grads zeroed either way) → verdict (+ fp16 scale update) → BN γ/β
//                         from the flat array
//   check:                [copy the step-status array, wait for the stream through the communicator's
//                         watchdog] → the first failure (bad label, SyncBN status), Σ loss and #correct,
//                         step verdict, loss scale, collective timings; the array zeroed for the next step
// The bracket is the only host wait of a step (see the header; step_status.h). capture_step records one
// micro-batch, reduce_and_update and check()'s copy (and the array's reset) into a CUDA graph; after a
// replay_step, check() only waits.
#include "cuda_train_model.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <utility>

#include "layers.h"
#include "syncbn/error.h"

namespace syncbn::cuda::train {

namespace {

// Gradients are all-reduced in buckets of at most this many bytes: few collectives (one for the models
// here), bounded message size; NCCL pipelines within a bucket. When the buckets overlap the backward
// (grad_buckets.h) the first one (the last parameters) is smaller, as DDP's, so communication starts early.
constexpr std::size_t kBucketBytes = std::size_t{32} << 20;
constexpr std::size_t kFirstBucketBytes = std::size_t{1} << 20;
// Most workspace a single cuDNN algorithm may use (the shared workspace grows to the largest choice).
constexpr std::size_t kConvWorkspaceLimit = std::size_t{256} << 20;

std::string device_text(int dev) {
  cudaDeviceProp prop{};
  SBN_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev), "querying CUDA device " + std::to_string(dev));
  char bus[32] = {0};
  SBN_CUDA_CHECK(cudaDeviceGetPCIBusId(bus, sizeof bus, dev), "querying the PCI bus id of device " + std::to_string(dev));
  return "cuda:" + std::to_string(dev) + " " + prop.name + " (PCI " + bus + ")";
}

// --comm: nccl (stream-ordered NCCL, one rank per GPU unless SBN_GPU_SHARING=1) or mpi (the staged
// communicator: host-synchronous collectives over MPI, ranks may share a GPU; staged_communicator.h).
std::unique_ptr<DeviceCommunicator> make_device_communicator(const std::string& comm, MpiCommunicator& world) {
  if (comm == "mpi") {
    use_local_device(world);  // cannot fail here: make_cuda_train_model agreed that every rank sees a device
    return std::make_unique<StagedCommunicator>(world);
  }
  return std::make_unique<NcclCommunicator>(world, NcclOptions::from_env());
}

}  // namespace

CudaTrainModel::CudaTrainModel(const ModelSpec& spec, const TrainConfig& cfg, MpiCommunicator& world)
    : PlannedTrainModel(spec, cfg.seed), cfg_(cfg), dtype_(parse_dtype(cfg.precision)) {
  SBN_CHECK(cfg.grad_accum == "fp32", "--grad-accum " + cfg.grad_accum + " is not supported with --device cuda");
  // ---- collectives (every rank, same order) ----
  comm_ = make_device_communicator(cfg.comm, world);
  if (spec_.norm.communicates()) group_ = std::make_unique<SyncGroup>(*comm_, spec_.norm.sync);
  if (comm_->size() > 1 && dynamic_cast<NcclCommunicator*>(comm_.get()) != nullptr)
    grad_comm_ = comm_->split(0, comm_->rank(), "gradient buckets");
  // ---- local from here on ----
  stream_ = comm_->stream();
  sm_count_ = current_sm_count();
  device_ = device_text(comm_->device());
  check_cudnn_version();

  // The network and its parameters came from the plan (PlannedTrainModel, net_plan.h), which the CPU
  // model builds too: names, shapes, offsets, initial values for the seed, buffers and the signature are
  // the CPU model's. The flat device arrays hold params_.total() floats.
  init_parameters();
  init_network();
  init_gradient_overlap();
  init_step_check();
  init_checkpoint_state();
  init_loss_scale_and_events();
  sync("GPU model set-up");
}

// Flat device arrays in the ParamStore layout: values, gradients, momentum, weight decay per element.
void CudaTrainModel::init_parameters() {
  const auto total = static_cast<std::size_t>(params_.total());
  values_.resize(std::max<std::size_t>(total, 1), "parameters");
  grads_.resize(std::max<std::size_t>(total, 1), "gradients");
  momentum_.resize(std::max<std::size_t>(total, 1), "momentum");
  decay_.resize(std::max<std::size_t>(total, 1), "weight decay");
  std::vector<float> decay(total, 0.0f);  // per element, as Sgd (optimizer.cpp)
  for (const ParamInfo& p : params_.all())
    if (p.decay || cfg_.decay_norm_bias)
      std::fill(decay.begin() + p.offset, decay.begin() + p.offset + p.size, static_cast<float>(cfg_.weight_decay));
  copy_to_device(params_.values(), values_.data(), stream_);
  copy_to_device(decay, decay_.data(), stream_);
  SBN_CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, total * sizeof(float), stream_), "zeroing the gradients");
  SBN_CUDA_CHECK(cudaMemsetAsync(momentum_.data(), 0, total * sizeof(float), stream_), "zeroing the momentum");
}

// cuDNN/cuBLAS handles, the network's layers, and the BatchNorm γ/β links into the flat arrays.
void CudaTrainModel::init_network() {
  cudnn_ = std::make_unique<CudnnHandle>(stream_);
  cublas_ = std::make_unique<CublasHandle>(stream_);
  ctx_ = std::make_unique<NetContext>();
  ctx_->launch = Launch{stream_, sm_count_};
  ctx_->cudnn = cudnn_->get();
  ctx_->cublas = cublas_->get();
  ctx_->dtype = dtype_;
  ctx_->values = values_.data();
  ctx_->grads = grads_.data();
  ctx_->workspace_limit = kConvWorkspaceLimit;
  ctx_->bn_group = group_.get();
  net_ = make_network(plan_, *ctx_);
  net_->batchnorms(bns_);

  // BatchNorm γ/β links, and the layers' γ/β from the store.
  std::vector<BnParamLink> links;
  for (BatchNormLayer* b : bns_) {
    CudaSyncBatchNorm& bn = b->bn();
    links.push_back({bn.gamma(), bn.beta(), bn.dgamma(), bn.dbeta(), b->plan().gamma.offset, b->plan().beta.offset,
                     b->plan().channels});
  }
  bn_links_.resize(std::max<std::size_t>(links.size(), 1), "BatchNorm parameter links");
  copy_to_device(links, bn_links_.data(), stream_);
  scatter_bn_params();
}

// Gradient buckets overlapping the backward (grad_buckets.h): NCCL with more than one rank only.
void CudaTrainModel::init_gradient_overlap() {
  bn_gathered_.assign(bns_.size(), 0);
  if (!grad_comm_) return;
  grad_dev_comm_ = dynamic_cast<NcclCommunicator*>(grad_comm_.get());
  SBN_CHECK(grad_dev_comm_ != nullptr, "GPU model: the gradient communicator is not an NCCL communicator");
  SBN_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking), "gradient communication stream");
  std::vector<std::pair<std::int64_t, std::int64_t>> spans;
  for (const ParamInfo& p : params_.all()) spans.emplace_back(p.offset, p.size);
  schedule_ = std::make_unique<BucketSchedule>(
      spans, reverse_buckets(params_.total(), static_cast<std::int64_t>(kFirstBucketBytes / sizeof(float)),
                             static_cast<std::int64_t>(kBucketBytes / sizeof(float))));
  bucket_events_.assign(schedule_->buckets().size(), nullptr);
  for (cudaEvent_t& e : bucket_events_)
    SBN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "gradient bucket event");
  SBN_CUDA_CHECK(cudaEventCreateWithFlags(&grads_reduced_, cudaEventDisableTiming), "gradient all-reduce event");
  for (std::size_t i = 0; i < bns_.size(); ++i)
    if (bns_[i]->plan().gamma.present()) bn_by_gamma_.emplace_back(bns_[i]->plan().gamma.offset, static_cast<int>(i));
  std::sort(bn_by_gamma_.begin(), bn_by_gamma_.end());
  ctx_->grads_done = [this](std::initializer_list<ParamSlot> slots) { on_grads_done(slots); };
}

void CudaTrainModel::set_micro_batches(std::int64_t count) {
  SBN_CHECK(count >= 0, "set_micro_batches: negative count " + std::to_string(count));
  micro_batches_ = count;
}

void CudaTrainModel::on_grads_done(std::initializer_list<ParamSlot> slots) {
  if (!overlap_now_) return;  // not the step's last micro-batch: its gradients are still to grow
  for (const ParamSlot& s : slots) {
    if (!s.present()) continue;
    const auto bn = std::lower_bound(bn_by_gamma_.begin(), bn_by_gamma_.end(), std::make_pair(s.offset, -1));
    if (bn != bn_by_gamma_.end() && bn->first == s.offset && !bn_gathered_[static_cast<std::size_t>(bn->second)]) {
      // A BatchNorm layer's γ/β gradients are in its own arrays: into the flat array before their bucket.
      bn_grads_gather(bn_links_.data() + bn->second, 1, grads_.data(), ctx_->launch);
      bn_gathered_[static_cast<std::size_t>(bn->second)] = 1;
    }
    schedule_->complete(s.offset);
  }
  launch_buckets(schedule_->take_ready());
}

void CudaTrainModel::launch_buckets(const std::vector<int>& ids) {
  if (ids.empty()) return;
  // The communication stream waits for the compute stream up to here: the buckets' last gradient writes.
  cudaEvent_t ready = bucket_events_[static_cast<std::size_t>(ids.front())];
  SBN_CUDA_CHECK(cudaEventRecord(ready, stream_), "gradient bucket event");
  SBN_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready, 0), "gradient bucket event");
  if (!grad_timed_ && !capturing_) {  // events recorded inside a capture cannot be timed afterwards
    SBN_CUDA_CHECK(cudaEventRecord(grad_begin_, comm_stream_), "gradient all-reduce timing");
    grad_timed_ = true;
  }
  for (int id : ids) {
    const GradBucket& b = schedule_->buckets()[static_cast<std::size_t>(id)];
    grad_dev_comm_->allreduce_sum(grads_.data() + b.offset, static_cast<std::size_t>(b.count), "gradient bucket",
                                  comm_stream_);
  }
}

void CudaTrainModel::gather_bn_grads() {
  const bool none = std::none_of(bn_gathered_.begin(), bn_gathered_.end(), [](char g) { return g != 0; });
  if (none) {  // one launch for all layers (the usual case without overlap)
    bn_grads_gather(bn_links_.data(), static_cast<int>(bns_.size()), grads_.data(), ctx_->launch);
  } else {  // buckets are in flight: only layers with γ/β (without, their link's offsets are no parameter's)
    for (std::size_t i = 0; i < bns_.size(); ++i)
      if (!bn_gathered_[i] && bns_[i]->plan().gamma.present())
        bn_grads_gather(bn_links_.data() + i, 1, grads_.data(), ctx_->launch);
  }
  std::fill(bn_gathered_.begin(), bn_gathered_.end(), 0);
}

// The step check and the BatchNorm running state a non-committing step restores (step_check.h).
void CudaTrainModel::init_step_check() {
  std::size_t channels = 0;
  for (BatchNormLayer* b : bns_) channels += static_cast<std::size_t>(b->plan().channels);
  bn_saved_stats_.resize(std::max<std::size_t>(2 * channels, 1), "BatchNorm running statistics (step copy)");
  bn_saved_pivots_.resize(std::max<std::size_t>(channels, 1), "BatchNorm pivots (step copy)");
  bn_saved_tracked_.resize(std::max<std::size_t>(bns_.size(), 1), "BatchNorm counters (step copy)");
  std::vector<BnStateLink> state_links;
  std::size_t at = 0;
  for (std::size_t i = 0; i < bns_.size(); ++i) {
    CudaSyncBatchNorm& bn = bns_[i]->bn();
    const auto C = static_cast<std::size_t>(bns_[i]->plan().channels);
    state_links.push_back({bn.running_mean(), bn.running_var(), bn.pivot(), bn.batches_tracked(),
                           bn_saved_stats_.data() + 2 * at, bn_saved_stats_.data() + 2 * at + C,
                           bn_saved_pivots_.data() + at, bn_saved_tracked_.data() + i, bns_[i]->plan().channels});
    at += C;
  }
  bn_state_links_.resize(std::max<std::size_t>(state_links.size(), 1), "BatchNorm state links");
  copy_to_device(state_links, bn_state_links_.data(), stream_);
  // The step-status array: every BatchNorm layer reports into its slot, read with the rest in check().
  status_layout_ = step_status_layout(static_cast<int>(bns_.size()));
  status_.resize((status_layout_.bytes + sizeof(double) - 1) / sizeof(double), "step status");
  SBN_CUDA_CHECK(cudaMemsetAsync(status_.data(), 0, status_layout_.bytes, stream_), "clearing the step status");
  copy_to_device(std::vector<GradCheck>{GradCheck{}}, grad_check_word(), stream_);
  auto* base = reinterpret_cast<char*>(status_.data());
  for (std::size_t i = 0; i < bns_.size(); ++i)
    bns_[i]->bn().set_status_slot(reinterpret_cast<BnStepStatus*>(base + status_layout_.bn + i * sizeof(BnStepStatus)));
  status_pinned_.reserve(status_layout_.bytes, "step status");
  // The copy and the wait apart: a captured step's graph holds the copy, check() after a replay only waits.
  const auto copy = [this](void* host, std::size_t bytes) {
    SBN_CUDA_CHECK(cudaMemcpyAsync(host, status_.data(), bytes, cudaMemcpyDeviceToHost, stream_),
                   "reading the step status");
  };
  const auto wait = [this] {
    // The step's wait; a hung collective surfaces here as the watchdog's error. A gradient bucket's
    // failure (its own communicator's watchdog) is reported as the cause, not the deadline that followed.
    try {
      sync("end of step");
    } catch (const Error&) {
      if (grad_dev_comm_) grad_dev_comm_->raise_if_failed("end of step");
      throw;
    }
    if (grad_dev_comm_) grad_dev_comm_->raise_if_failed("end of step");
  };
  status_reader_ = std::make_unique<StepStatusReader>(status_layout_, status_pinned_.data(), copy, wait);
}

StepCounters* CudaTrainModel::step_counters() const {
  return reinterpret_cast<StepCounters*>(reinterpret_cast<char*>(status_.data()) + status_layout_.counters);
}

GradCheck* CudaTrainModel::grad_check_word() const {
  return reinterpret_cast<GradCheck*>(reinterpret_cast<char*>(status_.data()) + status_layout_.check);
}

LossScaleState* CudaTrainModel::loss_scale_word() const {
  return reinterpret_cast<LossScaleState*>(reinterpret_cast<char*>(status_.data()) + status_layout_.scale);
}

void CudaTrainModel::reset_step_status() {
  SBN_CUDA_CHECK(cudaMemsetAsync(status_.data(), 0, status_layout_.reset_bytes, stream_), "clearing the step status");
  micro_seen_ = StepCounters{};
}

// Checkpointed state: the CPU model's arrays, names and order ("params", "momentum", the plan's buffers:
// each BatchNorm layer's running mean, running var, pivot, num_batches_tracked).
void CudaTrainModel::init_checkpoint_state() {
  const auto total = static_cast<std::size_t>(params_.total());
  params_host_.assign(total, 0.0f);
  momentum_host_.assign(total, 0.0f);
  bn_host_.resize(bns_.size());
  std::vector<BufferRef> buffers;
  for (std::size_t i = 0; i < bns_.size(); ++i) {
    const std::string& n = bns_[i]->plan().name;
    const auto C = static_cast<std::size_t>(bns_[i]->plan().channels);
    BnStaging& h = bn_host_[i];
    h.running_mean.assign(C, 0.0f);
    h.running_var.assign(C, 1.0f);
    h.pivot.assign(C, 0.0);
    const auto c = static_cast<std::int64_t>(C);
    buffers.push_back({n + ".running_mean", h.running_mean.data(), nullptr, nullptr, c});
    buffers.push_back({n + ".running_var", h.running_var.data(), nullptr, nullptr, c});
    buffers.push_back({n + ".pivot", nullptr, h.pivot.data(), nullptr, c});
    buffers.push_back({n + ".num_batches_tracked", nullptr, nullptr, &h.num_batches_tracked, 1});
  }
  // The plan's buffers (the CPU model's), checked by name and size.
  state_ = state_arrays(params_host_.data(), momentum_host_.data(), buffers);
}

// fp16: dynamic loss scaling; the step's counters and events.
void CudaTrainModel::init_loss_scale_and_events() {
  loss_scaling_ = dtype_ == DType::kF16;
  if (loss_scaling_) {
    scale_host_ = loss_scale_initial(scale_cfg_);
    copy_to_device(std::vector<LossScaleState>{scale_host_}, loss_scale_word(), stream_);
  }

  eval_counters_.resize(1, "eval counters");
  lr_dev_.resize(1, "step graph learning rate");
  lr_pinned_.reserve(sizeof(float), "step graph learning rate");
  counters_pinned_.reserve(sizeof(StepCounters), "loss counters");
  SBN_CUDA_CHECK(cudaEventCreateWithFlags(&input_copied_, cudaEventDisableTiming), "input copy event");
  SBN_CUDA_CHECK(cudaEventCreate(&grad_begin_), "gradient all-reduce timing event");
  SBN_CUDA_CHECK(cudaEventCreate(&grad_end_), "gradient all-reduce timing event");
}

CudaTrainModel::~CudaTrainModel() {
  // No throw from a destructor: failures here mean the context is gone anyway.
  if (step_graph_) cudaGraphExecDestroy(step_graph_);
  for (cudaEvent_t e : {input_copied_, grad_begin_, grad_end_, grads_reduced_})
    if (e) cudaEventDestroy(e);
  for (cudaEvent_t e : bucket_events_)
    if (e) cudaEventDestroy(e);
  if (comm_stream_) cudaStreamDestroy(comm_stream_);  // pending work still completes
}

// ---- description --------------------------------------------------------------------------------------

std::string CudaTrainModel::describe() const {
  std::string out = describe_network() + " | " + dtype_name(dtype_) + " activations";
  if (dtype_ != DType::kF32) out += ", fp32 parameters";
  if (loss_scaling_) {
    char buf[160];
    std::snprintf(buf, sizeof buf, ", dynamic loss scale %g (x%g after %d finite steps, x%g and step skipped on inf/NaN)",
                  static_cast<double>(scale_host_.scale), static_cast<double>(scale_cfg_.growth), scale_cfg_.interval,
                  static_cast<double>(scale_cfg_.backoff));
    out += buf;
    if (scale_host_.skipped) out += ", " + std::to_string(scale_host_.skipped) + " step(s) skipped so far";
  }
  return out;
}

// ---- steps ----------------------------------------------------------------------------------------------

void CudaTrainModel::sync(const char* label) {
  ++host_waits_;
  comm_->synchronize(stream_, label);
}

void CudaTrainModel::scatter_bn_params() {
  bn_params_scatter(bn_links_.data(), static_cast<int>(bns_.size()), values_.data(), ctx_->launch);
}

void CudaTrainModel::load_input(const float* images, const std::int32_t* labels, std::int64_t n) {
  stage_input(images, labels, n);
  enqueue_input(n);
}

// Host side, never inside a capture (capture_step stages before it begins).
void CudaTrainModel::stage_input(const float* images, const std::int32_t* labels, std::int64_t n) {
  SBN_CHECK(!capturing_, "GPU model: staging input during a graph capture (a host wait)");
  const std::int64_t C = spec_.in_channels, H = spec_.height, W = spec_.width_px;
  const auto floats = static_cast<std::size_t>(n * C * H * W), count = static_cast<std::size_t>(n);
  // The staging buffers are reused: the previous micro-batch's copy out of them must be complete (after a
  // replay: recorded behind the whole graph).
  SBN_CUDA_CHECK(cudaEventSynchronize(input_copied_), "waiting for the previous input copy");
  images_pinned_.reserve(std::max<std::size_t>(floats, 1) * sizeof(float), "input images (pinned)");
  labels_pinned_.reserve(std::max<std::size_t>(count, 1) * sizeof(std::int32_t), "input labels (pinned)");
  if (n > 0) {
    std::memcpy(images_pinned_.data(), images, floats * sizeof(float));
    std::memcpy(labels_pinned_.data(), labels, count * sizeof(std::int32_t));
  }
}

// The stream's side: capturable once the device buffers have this size (from the pinned staging buffers,
// whose addresses a graph keeps: a replay copies what replay_step staged).
void CudaTrainModel::enqueue_input(std::int64_t n) {
  const std::int64_t C = spec_.in_channels, H = spec_.height, W = spec_.width_px;
  const auto floats = static_cast<std::size_t>(n * C * H * W), count = static_cast<std::size_t>(n);
  images_dev_.resize(std::max<std::size_t>(floats, 1), "input images", stream_);
  labels_dev_.resize(std::max<std::size_t>(count, 1), "input labels", stream_);
  if (n > 0) {
    SBN_CUDA_CHECK(cudaMemcpyAsync(images_dev_.data(), images_pinned_.data(), floats * sizeof(float),
                                   cudaMemcpyHostToDevice, stream_),
                   "copying the input images");
    SBN_CUDA_CHECK(cudaMemcpyAsync(labels_dev_.data(), labels_pinned_.data(), count * sizeof(std::int32_t),
                                   cudaMemcpyHostToDevice, stream_),
                   "copying the labels");
    // Inside a capture the record would only be a graph-internal node: replay_step records it instead.
    if (!capturing_) SBN_CUDA_CHECK(cudaEventRecord(input_copied_, stream_), "input copy event");
  }
  input_.resize({n, C, H, W}, Layout::kChannelsLast, dtype_, stream_);
  input_to_nhwc(images_dev_.data(), n, C, H, W, dtype_, input_.data(), ctx_->launch);
}

void CudaTrainModel::run_loss(const DeviceTensor& logits, std::int64_t n, float grad_scale, bool training,
                              StepCounters* counters_dev) {
  SBN_CHECK(logits.rank() == 2 && logits.dim(0) == n && logits.dim(1) == spec_.classes,
            "GPU model: logits " + syncbn::describe(logits.shape(), logits.layout()) + ", expected (" + std::to_string(n) +
                ", " + std::to_string(spec_.classes) + ")");
  per_sample_.resize(static_cast<std::size_t>(std::max<std::int64_t>(2 * n, 1)), "per-sample loss", stream_);
  if (training) dlogits_.resize(logits.shape(), logits.layout(), dtype_, stream_);
  auto* counters = reinterpret_cast<char*>(counters_dev);
  cross_entropy(logits.data(), dtype_, n, spec_.classes, labels_dev_.data(), training ? grad_scale : 1.0f,
                training && loss_scaling_ ? loss_scale_word() : nullptr, training ? dlogits_.data() : nullptr,
                per_sample_.data(), reinterpret_cast<double*>(counters + offsetof(StepCounters, loss)),
                reinterpret_cast<int*>(counters + offsetof(StepCounters, status)), ctx_->launch);
}

StepCounters CudaTrainModel::read_counters(const char* label, const StepCounters* counters_dev) {
  auto* host = static_cast<StepCounters*>(counters_pinned_.data());
  SBN_CUDA_CHECK(cudaMemcpyAsync(host, counters_dev, sizeof(StepCounters), cudaMemcpyDeviceToHost, stream_),
                 std::string(label) + ": reading the loss");
  sync(label);
  const StepCounters c = *host;
  if (c.status[0]) SBN_FAIL(label_error(c, spec_.classes));
  return c;
}

void CudaTrainModel::train_micro(const float* images, const std::int32_t* labels, std::int64_t n, float grad_scale,
                                 double* loss_sum, std::int64_t* correct) {
  graph_state_.require_no_pending("train_micro");
  // The step's first forward: copy what a non-committing step restores (one launch for all layers).
  if (!step_open_) bn_state_save(bn_state_links_.data(), static_cast<int>(bns_.size()), ctx_->launch);
  step_open_ = true;
  SBN_CHECK(!schedule_ || schedule_->launched() == 0,
            "train_micro: more micro-batches in this step than set_micro_batches(" + std::to_string(micro_batches_) +
                ") declared; the step's gradient all-reduce has started (call reduce_and_update first)");
  if (capturing_) {
    enqueue_input(n);  // staged by capture_step before the capture began
  } else {
    load_input(images, labels, n);
    graph_state_.eager_micro(n);
  }
  run_loss(net_->forward(input_, true), n, grad_scale, true, step_counters());
  overlap_now_ = schedule_ && micro_batches_ > 0 && micro_index_ + 1 == micro_batches_;
  try {
    net_->backward(dlogits_, false);
  } catch (...) {
    overlap_now_ = false;
    throw;
  }
  overlap_now_ = false;
  ++micro_index_;
  if (!loss_sum && !correct) return;  // the loop: the step's sums come with check()'s one wait
  // Tests: this micro-batch's sums, as the difference of the step's counters since the last report.
  const StepCounters c = read_counters("train_micro", step_counters());
  if (loss_sum) *loss_sum += c.loss - micro_seen_.loss;
  if (correct) *correct += static_cast<std::int64_t>(std::llround(c.correct - micro_seen_.correct));
  micro_seen_ = c;
}

void CudaTrainModel::step_totals(double* loss_sum, std::int64_t* correct) const {
  *loss_sum = step_loss_;
  *correct = step_correct_;
}

// Outside the steps, one wait per eval batch (its own counters: an open step's are left alone).
void CudaTrainModel::evaluate(const float* images, const std::int32_t* labels, std::int64_t n, double* loss_sum,
                              std::int64_t* correct) {
  graph_state_.require_no_pending("evaluate");
  load_input(images, labels, n);
  SBN_CUDA_CHECK(cudaMemsetAsync(eval_counters_.data(), 0, sizeof(StepCounters), stream_), "clearing the eval counters");
  run_loss(net_->forward(input_, false), n, 1.0f, false, eval_counters_.data());
  const StepCounters c = read_counters("evaluate", eval_counters_.data());
  *loss_sum += c.loss;
  *correct += static_cast<std::int64_t>(std::llround(c.correct));
}

double CudaTrainModel::reduce_and_update(Communicator& world, double lr) {
  (void)world;  // same ranks as comm_, which works on device memory
  graph_state_.require_no_pending("reduce_and_update");
  enqueue_update(lr);
  return last_grad_seconds_;
}

void CudaTrainModel::enqueue_update(double lr) {
  const Launch& l = ctx_->launch;
  // The BatchNorm layers' local γ/β gradients not gathered during the backward join the flat array
  // (never one whose bucket is in flight: that would race with the all-reduce).
  gather_bn_grads();
  micro_index_ = 0;
  if (schedule_) {
    // NCCL: the buckets the backward did not launch (all of them without overlap), then the compute
    // stream waits for the last one (the optimizer needs every gradient).
    launch_buckets(schedule_->take_rest());
    if (grad_timed_) SBN_CUDA_CHECK(cudaEventRecord(grad_end_, comm_stream_), "gradient all-reduce timing");
    SBN_CUDA_CHECK(cudaEventRecord(grads_reduced_, comm_stream_), "gradient all-reduce event");
    SBN_CUDA_CHECK(cudaStreamWaitEvent(stream_, grads_reduced_, 0), "gradient all-reduce event");
    schedule_->reset();
  } else if (comm_->size() > 1) {
    SBN_CUDA_CHECK(cudaEventRecord(grad_begin_, stream_), "gradient all-reduce timing");
    for (const auto& [off, n] : buckets(params_.total(), sizeof(float), kBucketBytes))
      comm_->allreduce_sum(grads_.data() + off, static_cast<std::size_t>(n), "gradient bucket", stream_);
    SBN_CUDA_CHECK(cudaEventRecord(grad_end_, stream_), "gradient all-reduce timing");
    grad_timed_ = true;
  }
  // The step check: every rank sees the same summed gradients, hence reaches the same verdict. Everything
  // below is predicated on the device word, so the host does not wait for it.
  LossScaleState* scale = loss_scaling_ ? loss_scale_word() : nullptr;
  GradCheck* check = grad_check_word();
  SBN_CUDA_CHECK(cudaMemsetAsync(check, 0xff, sizeof(GradCheck), stream_), "resetting the step check");
  grad_check(grads_.data(), params_.total(), check, l);
  if (step_open_) bn_state_restore(bn_state_links_.data(), static_cast<int>(bns_.size()), check, l);
  step_open_ = false;
  const float* lr_dev = nullptr;  // eager: the kernel argument
  if (capturing_) {
    // A graph's learning rate comes from device memory: each replay copies what set_step_lr left in the
    // pinned float (written only while no replay is in flight: after check()'s wait).
    *static_cast<float*>(lr_pinned_.data()) = static_cast<float>(lr);
    SBN_CUDA_CHECK(cudaMemcpyAsync(lr_dev_.data(), lr_pinned_.data(), sizeof(float), cudaMemcpyHostToDevice, stream_),
                   "copying the step's learning rate");
    lr_dev = lr_dev_.data();
  }
  sgd_step(values_.data(), grads_.data(), momentum_.data(), decay_.data(), params_.total(), static_cast<float>(cfg_.momentum),
           static_cast<float>(lr), cfg_.nesterov, scale, check, l, lr_dev);
  step_finish_launch(check, scale, scale_cfg_, l);
  ++ctx_->version;
  scatter_bn_params();
}

void CudaTrainModel::check() {
  // The step's one copy and one wait; after a replay the graph made the copy (and zeroed the array's
  // per-step part behind it), so only the wait is left.
  const bool replayed = graph_state_.pending();
  const StepStatusView st = replayed ? status_reader_->read_copied() : status_reader_->read();
  if (replayed) {
    graph_state_.replay_checked();
    micro_seen_ = StepCounters{};
  } else {
    reset_step_status();  // the next step's sums and statuses start at zero
    graph_state_.eager_step_checked();
  }
  for (BatchNormLayer* b : bns_) b->bn().fold_timing();  // the stream is idle: event reads only
  if (grad_timed_) {
    float ms = 0;
    SBN_CUDA_CHECK(cudaEventElapsedTime(&ms, grad_begin_, grad_end_), "gradient all-reduce timing");
    last_grad_seconds_ = 1e-3 * static_cast<double>(ms);
    grad_timed_ = false;
  }
  if (loss_scaling_) scale_host_ = st.scale;
  step_loss_ = st.counters.loss;
  step_correct_ = static_cast<std::int64_t>(std::llround(st.counters.correct));
  // The step's first failure, with the error its own check gave (a bad label; a layer's status).
  const StepFailure failure = first_step_failure(st);
  if (failure.kind == StepFailure::kLabel) SBN_FAIL(label_error(st.counters, spec_.classes));
  if (failure.kind == StepFailure::kBatchNorm) {
    const auto i = static_cast<std::size_t>(failure.layer);
    bns_[i]->bn().check_step_status(st.bn[i]);
  }
  const GradCheck& word = st.check;
  switch (word.outcome) {
    case kStepCommitted: last_ = {}; break;
    case kStepSkipped: last_ = {StepResult::Outcome::kSkipped, ""}; break;
    default:
      last_ = word.first_bad == kNoBadGradient ? StepResult{StepResult::Outcome::kNonFinite, "(unknown parameter)"}
                                               : verdict(static_cast<std::int64_t>(word.first_bad));
  }
}

// ---- a whole step as a CUDA graph ------------------------------------------------------------------------

void CudaTrainModel::capture_step(const float* images, const std::int32_t* labels, std::int64_t n, float grad_scale,
                                  double lr, cudaStreamCaptureMode mode) {
  SBN_CHECK(n >= 0, "capture_step: negative batch size " + std::to_string(n));
  const bool staged = dynamic_cast<NcclCommunicator*>(comm_.get()) == nullptr;
  graph_state_.require_capturable(step_open_, micro_batches_, staged, n);
  release_step_graph();
  stage_input(images, labels, n);  // the host part, before the capture: it waits for the last input copy
  // The layers' converted weight copies must be made inside the graph (every replay updates the
  // parameters), even when an eval forward since the last update made them current.
  ++ctx_->version;
  SBN_CUDA_CHECK(cudaStreamBeginCapture(stream_, mode), "beginning the capture of a training step");
  capturing_ = true;
  cudaGraph_t graph = nullptr;
  try {
    capture_body(n, grad_scale, lr);
  } catch (...) {
    // Nothing of the step ran: end the (possibly invalidated) capture, drop it, close the step on the host.
    capturing_ = false;
    if (cudaStreamEndCapture(stream_, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // the failed capture's error is the one being thrown
    step_open_ = false;
    micro_index_ = 0;
    if (schedule_) schedule_->reset();
    std::fill(bn_gathered_.begin(), bn_gathered_.end(), 0);
    throw;
  }
  capturing_ = false;
  SBN_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph), "ending the capture of a training step");
  const cudaError_t rc = cudaGraphInstantiate(&step_graph_, graph, 0);
  cudaGraphDestroy(graph);
  if (rc != cudaSuccess) step_graph_ = nullptr;
  SBN_CUDA_CHECK(rc, "instantiating the captured training step");
  graph_n_ = n;
  graph_state_.captured();
}

// One micro-batch, the update, the status copy and the reset of its per-step part, all stream-ordered.
void CudaTrainModel::capture_body(std::int64_t n, float grad_scale, double lr) {
  train_micro(nullptr, nullptr, n, grad_scale, nullptr, nullptr);
  enqueue_update(lr);
  status_reader_->enqueue_copy();
  SBN_CUDA_CHECK(cudaMemsetAsync(status_.data(), 0, status_layout_.reset_bytes, stream_), "clearing the step status");
}

void CudaTrainModel::replay_step(const float* images, const std::int32_t* labels) {
  SBN_CHECK((images == nullptr) == (labels == nullptr), "replay_step: images and labels go together");
  SBN_CHECK(graph_state_.has_graph(), "replay_step: no step graph (capture_step first)");
  graph_state_.require_no_pending("replay_step");
  if (images) stage_input(images, labels, graph_n_);  // the graph copies from the staging buffers
  SBN_CUDA_CHECK(cudaGraphLaunch(step_graph_, stream_), "replaying the captured training step");
  graph_state_.replaying();  // launched: check() now waits for it
  // Behind the whole graph: the staging buffers are free once the step is done.
  SBN_CUDA_CHECK(cudaEventRecord(input_copied_, stream_), "input copy event");
  // The replay's update changed the parameters: eager steps must convert their weight copies again.
  ++ctx_->version;
}

void CudaTrainModel::set_step_lr(double lr) {
  SBN_CHECK(graph_state_.has_graph(), "set_step_lr: no step graph (capture_step first)");
  graph_state_.require_no_pending("set_step_lr");  // the last replay's copy of it has completed
  *static_cast<float*>(lr_pinned_.data()) = static_cast<float>(lr);
}

void CudaTrainModel::release_step_graph() {
  graph_state_.require_no_pending("release_step_graph");
  if (step_graph_) SBN_CUDA_CHECK(cudaGraphExecDestroy(step_graph_), "destroying the step graph");
  step_graph_ = nullptr;
  graph_state_.released();
}

double CudaTrainModel::take_syncbn_comm_seconds() {
  double s = 0;
  for (BatchNormLayer* b : bns_) {
    s += b->bn().comm_seconds();
    b->bn().reset_comm_seconds();
  }
  return s;
}

void CudaTrainModel::average_running_stats(Communicator& world) {
  if (bns_.empty()) return;
  sync("running-stat average");
  std::vector<CudaBnState> st;
  std::vector<double> acc;
  for (BatchNormLayer* b : bns_) {
    st.push_back(b->bn().state());
    acc.insert(acc.end(), st.back().running_mean.begin(), st.back().running_mean.end());
    acc.insert(acc.end(), st.back().running_var.begin(), st.back().running_var.end());
  }
  world.allreduce_sum(acc.data(), acc.size(), "local BN running-stat average");
  std::size_t i = 0;
  const double P = world.size();
  for (std::size_t k = 0; k < bns_.size(); ++k) {
    for (float& v : st[k].running_mean) v = static_cast<float>(acc[i++] / P);
    for (float& v : st[k].running_var) v = static_cast<float>(acc[i++] / P);
    bns_[k]->bn().set_state(st[k]);
  }
}

// ---- PreciseBN ------------------------------------------------------------------------------------------

void CudaTrainModel::begin_bn_population() {
  for (BatchNormLayer* b : bns_) b->bn().begin_population();
}

void CudaTrainModel::population_forward(const float* images, const std::int32_t* labels, std::int64_t n) {
  load_input(images, labels, n);
  net_->forward(input_, true);
}

void CudaTrainModel::finish_bn_population(Communicator& world) {
  for (BatchNormLayer* b : bns_) b->bn().finish_population(world);
}

// ---- Batch Renormalization ------------------------------------------------------------------------------

void CudaTrainModel::set_renorm_limits(double rmax, double dmax) {
  for (BatchNormLayer* b : bns_) b->bn().set_renorm_limits(rmax, dmax);
}

// ---- state ----------------------------------------------------------------------------------------------

std::vector<StateArray> CudaTrainModel::state() { return state_; }

void CudaTrainModel::download(void* host, const void* dev, std::size_t bytes, const char* what) {
  SBN_CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream_), what);
  sync(what);
}

void CudaTrainModel::upload(void* dev, const void* host, std::size_t bytes, const char* what) {
  SBN_CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream_), what);
  sync(what);  // pageable source: the copy has read it only once the stream got there
}

void CudaTrainModel::state_to_host() {
  const auto bytes = static_cast<std::size_t>(params_.total()) * sizeof(float);
  download(params_host_.data(), values_.data(), bytes, "parameters to host");
  download(momentum_host_.data(), momentum_.data(), bytes, "momentum to host");
  for (std::size_t i = 0; i < bns_.size(); ++i) {
    const CudaBnState s = bns_[i]->bn().state();
    BnStaging& h = bn_host_[i];
    std::copy(s.running_mean.begin(), s.running_mean.end(), h.running_mean.begin());
    std::copy(s.running_var.begin(), s.running_var.end(), h.running_var.begin());
    std::copy(s.pivot.begin(), s.pivot.end(), h.pivot.begin());
    h.num_batches_tracked = s.num_batches_tracked;
  }
}

void CudaTrainModel::state_from_host() {
  step_open_ = false;  // the loaded state replaces an open step's: nothing of it is to be restored
  const auto bytes = static_cast<std::size_t>(params_.total()) * sizeof(float);
  upload(values_.data(), params_host_.data(), bytes, "parameters to device");
  upload(momentum_.data(), momentum_host_.data(), bytes, "momentum to device");
  for (std::size_t i = 0; i < bns_.size(); ++i) {
    CudaBnState s = bns_[i]->bn().state();
    const BnStaging& h = bn_host_[i];
    s.running_mean = h.running_mean;
    s.running_var = h.running_var;
    s.pivot = h.pivot;
    s.num_batches_tracked = h.num_batches_tracked;
    bns_[i]->bn().set_state(s);
  }
  scatter_bn_params();
  ++ctx_->version;  // converted weight copies are stale
  sync("state from host");
}

// ---- test hooks -----------------------------------------------------------------------------------------

std::vector<float> CudaTrainModel::parameters_to_host() {
  std::vector<float> out(static_cast<std::size_t>(params_.total()));
  download(out.data(), values_.data(), out.size() * sizeof(float), "parameters to host");
  return out;
}

std::vector<float> CudaTrainModel::gradients_to_host() {
  bn_grads_gather(bn_links_.data(), static_cast<int>(bns_.size()), grads_.data(), ctx_->launch);
  std::vector<float> out(static_cast<std::size_t>(params_.total()));
  download(out.data(), grads_.data(), out.size() * sizeof(float), "gradients to host");
  return out;
}

void CudaTrainModel::set_loss_scale(float scale) {
  SBN_CHECK(loss_scaling_, "set_loss_scale: the model has no loss scale (--precision fp16 only)");
  sync("set_loss_scale");
  scale_host_ = copy_to_host(loss_scale_word(), 1, stream_)[0];
  scale_host_.scale = scale;
  copy_to_device(std::vector<LossScaleState>{scale_host_}, loss_scale_word(), stream_);
}

void CudaTrainModel::set_gradient(std::int64_t index, float value) {
  SBN_CHECK(index >= 0 && index < params_.total(), "set_gradient: index " + std::to_string(index) + " out of range");
  upload(grads_.data() + index, &value, sizeof value, "set_gradient");
}

}  // namespace syncbn::cuda::train
