// CudaTrainModel (cuda_train_model.h): the loop's TrainModel on one GPU per rank.
//
// A step, as the loop drives it (src/train/trainer.cpp), all on one stream:
//   train_micro × accum:  input H2D (pinned staging) → NHWC → forward → loss → backward (gradients +=)
//                         → [read Σ loss, #correct]
//   (first train_micro of a step: BN running state → its copies)
//   reduce_and_update:    BN γ/β gradients into the flat array → NCCL all-reduce buckets → step check (first
//                         NaN/Inf) → BN running state restored unless the step commits → SGD if it commits
//                         (+ unscale; grads zeroed either way) → verdict (+ fp16 scale update) → BN γ/β
//                         from the flat array
//   check:                [wait for the stream through the communicator's watchdog] → SyncBN status,
//                         step verdict, loss scale, all-reduce timing
// The brackets are the only host waits of a step (see the header).
#include "cuda_train_model.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>

#include "layers.h"
#include "syncbn/error.h"

namespace syncbn::cuda::train {

// Device counters of one micro-batch (one D2H copy reads them all).
struct CudaTrainModel::StepCounters {
  double loss;       // Σ per-sample loss
  double correct;    // #correct predictions
  int status[3];     // cross_entropy: bad label flag, the label, the sample
  int pad;
};

namespace {

// Gradients are all-reduced in buckets of at most this many bytes: few collectives (one for the models
// here), bounded message size; NCCL pipelines within a bucket.
constexpr std::size_t kBucketBytes = std::size_t{32} << 20;
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
  check_.resize(1, "step check");
  copy_to_device(std::vector<GradCheck>{GradCheck{}}, check_.data(), stream_);
  check_pinned_.reserve(sizeof(GradCheck), "step check");
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
  scale_.resize(1, "loss scale");
  scale_pinned_.reserve(sizeof(LossScaleState), "loss scale");
  if (loss_scaling_) {
    scale_host_ = loss_scale_initial(scale_cfg_);
    copy_to_device(std::vector<LossScaleState>{scale_host_}, scale_.data(), stream_);
  }

  counters_.resize(1, "step counters");
  counters_pinned_.reserve(sizeof(StepCounters), "step counters");
  SBN_CUDA_CHECK(cudaEventCreateWithFlags(&input_copied_, cudaEventDisableTiming), "input copy event");
  SBN_CUDA_CHECK(cudaEventCreate(&grad_begin_), "gradient all-reduce timing event");
  SBN_CUDA_CHECK(cudaEventCreate(&grad_end_), "gradient all-reduce timing event");
}

CudaTrainModel::~CudaTrainModel() {
  // No throw from a destructor: failures here mean the context is gone anyway.
  for (cudaEvent_t e : {input_copied_, grad_begin_, grad_end_})
    if (e) cudaEventDestroy(e);
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

void CudaTrainModel::sync(const char* label) { comm_->synchronize(stream_, label); }

void CudaTrainModel::scatter_bn_params() {
  bn_params_scatter(bn_links_.data(), static_cast<int>(bns_.size()), values_.data(), ctx_->launch);
}

void CudaTrainModel::load_input(const float* images, const std::int32_t* labels, std::int64_t n) {
  const std::int64_t C = spec_.in_channels, H = spec_.height, W = spec_.width_px;
  const auto floats = static_cast<std::size_t>(n * C * H * W), count = static_cast<std::size_t>(n);
  // The staging buffers are reused: the previous micro-batch's copy out of them must be complete.
  SBN_CUDA_CHECK(cudaEventSynchronize(input_copied_), "waiting for the previous input copy");
  images_pinned_.reserve(std::max<std::size_t>(floats, 1) * sizeof(float), "input images (pinned)");
  labels_pinned_.reserve(std::max<std::size_t>(count, 1) * sizeof(std::int32_t), "input labels (pinned)");
  images_dev_.resize(std::max<std::size_t>(floats, 1), "input images", stream_);
  labels_dev_.resize(std::max<std::size_t>(count, 1), "input labels", stream_);
  if (n > 0) {
    std::memcpy(images_pinned_.data(), images, floats * sizeof(float));
    std::memcpy(labels_pinned_.data(), labels, count * sizeof(std::int32_t));
    SBN_CUDA_CHECK(cudaMemcpyAsync(images_dev_.data(), images_pinned_.data(), floats * sizeof(float),
                                   cudaMemcpyHostToDevice, stream_),
                   "copying the input images");
    SBN_CUDA_CHECK(cudaMemcpyAsync(labels_dev_.data(), labels_pinned_.data(), count * sizeof(std::int32_t),
                                   cudaMemcpyHostToDevice, stream_),
                   "copying the labels");
    SBN_CUDA_CHECK(cudaEventRecord(input_copied_, stream_), "input copy event");
  }
  input_.resize({n, C, H, W}, Layout::kChannelsLast, dtype_, stream_);
  input_to_nhwc(images_dev_.data(), n, C, H, W, dtype_, input_.data(), ctx_->launch);
  SBN_CUDA_CHECK(cudaMemsetAsync(counters_.data(), 0, sizeof(StepCounters), stream_), "clearing the step counters");
}

void CudaTrainModel::run_loss(const DeviceTensor& logits, std::int64_t n, float grad_scale, bool training) {
  SBN_CHECK(logits.rank() == 2 && logits.dim(0) == n && logits.dim(1) == spec_.classes,
            "GPU model: logits " + syncbn::describe(logits.shape(), logits.layout()) + ", expected (" + std::to_string(n) +
                ", " + std::to_string(spec_.classes) + ")");
  per_sample_.resize(static_cast<std::size_t>(std::max<std::int64_t>(2 * n, 1)), "per-sample loss", stream_);
  if (training) dlogits_.resize(logits.shape(), logits.layout(), dtype_, stream_);
  auto* counters = reinterpret_cast<char*>(counters_.data());
  cross_entropy(logits.data(), dtype_, n, spec_.classes, labels_dev_.data(), training ? grad_scale : 1.0f,
                training && loss_scaling_ ? scale_.data() : nullptr, training ? dlogits_.data() : nullptr,
                per_sample_.data(), reinterpret_cast<double*>(counters + offsetof(StepCounters, loss)),
                reinterpret_cast<int*>(counters + offsetof(StepCounters, status)), ctx_->launch);
}

void CudaTrainModel::read_counters(const char* label, double* loss_sum, std::int64_t* correct) {
  auto* host = static_cast<StepCounters*>(counters_pinned_.data());
  SBN_CUDA_CHECK(cudaMemcpyAsync(host, counters_.data(), sizeof(StepCounters), cudaMemcpyDeviceToHost, stream_),
                 std::string(label) + ": reading the loss");
  sync(label);  // the one wait of a micro-batch: the interface returns Σ loss and #correct per call
  const StepCounters c = *host;
  if (c.status[0])
    SBN_FAIL("cross-entropy: label " + std::to_string(c.status[1]) + " outside [0, " + std::to_string(spec_.classes) +
             ") (sample " + std::to_string(c.status[2]) + " of this rank's batch)");
  *loss_sum += c.loss;
  *correct += static_cast<std::int64_t>(std::llround(c.correct));
}

void CudaTrainModel::train_micro(const float* images, const std::int32_t* labels, std::int64_t n, float grad_scale,
                                 double* loss_sum, std::int64_t* correct) {
  // The step's first forward: copy what a non-committing step restores (one launch for all layers).
  if (!step_open_) bn_state_save(bn_state_links_.data(), static_cast<int>(bns_.size()), ctx_->launch);
  step_open_ = true;
  load_input(images, labels, n);
  run_loss(net_->forward(input_, true), n, grad_scale, true);
  net_->backward(dlogits_, false);
  read_counters("train_micro", loss_sum, correct);
}

void CudaTrainModel::evaluate(const float* images, const std::int32_t* labels, std::int64_t n, double* loss_sum,
                              std::int64_t* correct) {
  load_input(images, labels, n);
  run_loss(net_->forward(input_, false), n, 1.0f, false);
  read_counters("evaluate", loss_sum, correct);
}

double CudaTrainModel::reduce_and_update(Communicator& world, double lr) {
  (void)world;  // same ranks as comm_, which works on device memory
  const Launch& l = ctx_->launch;
  // Every BatchNorm layer's local γ/β gradients join the flat array, then one pass of buckets.
  bn_grads_gather(bn_links_.data(), static_cast<int>(bns_.size()), grads_.data(), l);
  if (comm_->size() > 1) {
    SBN_CUDA_CHECK(cudaEventRecord(grad_begin_, stream_), "gradient all-reduce timing");
    for (const auto& [off, n] : buckets(params_.total(), sizeof(float), kBucketBytes))
      comm_->allreduce_sum(grads_.data() + off, static_cast<std::size_t>(n), "gradient bucket", stream_);
    SBN_CUDA_CHECK(cudaEventRecord(grad_end_, stream_), "gradient all-reduce timing");
    grad_timed_ = true;
  }
  // The step check: every rank sees the same summed gradients, hence reaches the same verdict. Everything
  // below is predicated on the device word, so the host does not wait for it.
  LossScaleState* scale = loss_scaling_ ? scale_.data() : nullptr;
  SBN_CUDA_CHECK(cudaMemsetAsync(check_.data(), 0xff, sizeof(GradCheck), stream_), "resetting the step check");
  grad_check(grads_.data(), params_.total(), check_.data(), l);
  if (step_open_) bn_state_restore(bn_state_links_.data(), static_cast<int>(bns_.size()), check_.data(), l);
  step_open_ = false;
  sgd_step(values_.data(), grads_.data(), momentum_.data(), decay_.data(), params_.total(), static_cast<float>(cfg_.momentum),
           static_cast<float>(lr), cfg_.nesterov, scale, check_.data(), l);
  step_finish_launch(check_.data(), scale, scale_cfg_, l);
  ++ctx_->version;
  scatter_bn_params();
  return last_grad_seconds_;
}

void CudaTrainModel::check() {
  if (loss_scaling_)
    SBN_CUDA_CHECK(cudaMemcpyAsync(scale_pinned_.data(), scale_.data(), sizeof(LossScaleState), cudaMemcpyDeviceToHost,
                                   stream_),
                   "reading the loss scale");
  SBN_CUDA_CHECK(cudaMemcpyAsync(check_pinned_.data(), check_.data(), sizeof(GradCheck), cudaMemcpyDeviceToHost, stream_),
                 "reading the step check");
  sync("end of step");  // the step's wait; a hung collective surfaces here as the watchdog's error
  const GradCheck word = *static_cast<const GradCheck*>(check_pinned_.data());
  for (BatchNormLayer* b : bns_) b->bn().check();  // the stream is idle: status copies only
  if (grad_timed_) {
    float ms = 0;
    SBN_CUDA_CHECK(cudaEventElapsedTime(&ms, grad_begin_, grad_end_), "gradient all-reduce timing");
    last_grad_seconds_ = 1e-3 * static_cast<double>(ms);
    grad_timed_ = false;
  }
  if (loss_scaling_) scale_host_ = *static_cast<const LossScaleState*>(scale_pinned_.data());
  switch (word.outcome) {
    case kStepCommitted: last_ = {}; break;
    case kStepSkipped: last_ = {StepResult::Outcome::kSkipped, ""}; break;
    default:
      last_ = word.first_bad == kNoBadGradient ? StepResult{StepResult::Outcome::kNonFinite, "(unknown parameter)"}
                                               : verdict(static_cast<std::int64_t>(word.first_bad));
  }
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
  scale_host_ = copy_to_host(scale_.data(), 1, stream_)[0];
  scale_host_.scale = scale;
  copy_to_device(std::vector<LossScaleState>{scale_host_}, scale_.data(), stream_);
}

void CudaTrainModel::set_gradient(std::int64_t index, float value) {
  SBN_CHECK(index >= 0 && index < params_.total(), "set_gradient: index " + std::to_string(index) + " out of range");
  upload(grads_.data() + index, &value, sizeof value, "set_gradient");
}

}  // namespace syncbn::cuda::train
