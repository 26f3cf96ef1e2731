// libsyncbn_bench.so: a C entry point to one local SyncBatchNorm layer, so that bench/torch_bn.py can
// time syncbn and PyTorch in the same process, repetition by repetition (the machines we measure on are
// shared: only ratios taken side by side are trustworthy). Not a public API.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "syncbn/sync_batchnorm.h"

namespace {
struct Handle {
  std::unique_ptr<syncbn::SyncBatchNorm> bn;
  syncbn::Tensor x, y, dy, dx;
  std::string error;
};
}  // namespace

extern "C" {

// Creates a layer and its buffers for an (N, C, H, W) input (H = W = 0: (N, C)). Null on bad input.
void* sbn_bench_create(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w, int channels_last,
                       int relu) {
  try {
    auto hd = std::make_unique<Handle>();
    syncbn::BatchNormOptions opt;
    opt.channels = c;
    opt.fuse_relu = relu != 0;
    hd->bn = std::make_unique<syncbn::SyncBatchNorm>("bench", opt, nullptr);
    const std::vector<std::int64_t> shape = h ? std::vector<std::int64_t>{n, c, h, w} : std::vector<std::int64_t>{n, c};
    const auto layout = channels_last && h ? syncbn::Layout::kChannelsLast : syncbn::Layout::kPlanar;
    hd->x.resize(shape, layout);
    hd->dy.resize(shape, layout);
    hd->y.resize(shape, layout);
    hd->dx.resize(shape, layout);
    return hd.release();
  } catch (...) {
    return nullptr;
  }
}

// Buffers in the layout given at creation: input x (0), output gradient dy (1), output y (2), input
// gradient dx (3).
float* sbn_bench_buffer(void* h, int which) {
  auto* hd = static_cast<Handle*>(h);
  switch (which) {
    case 0: return hd->x.data();
    case 1: return hd->dy.data();
    case 2: return hd->y.data();
    default: return hd->dx.data();
  }
}

// One training forward (0 on success).
int sbn_bench_forward(void* h) {
  auto* hd = static_cast<Handle*>(h);
  try {
    hd->bn->forward(hd->x, hd->y, true);
    return 0;
  } catch (const std::exception& e) {
    hd->error = e.what();
    return 1;
  }
}

// The backward of the last forward (0 on success).
int sbn_bench_backward(void* h) {
  auto* hd = static_cast<Handle*>(h);
  try {
    hd->bn->backward(hd->x, hd->dy, hd->dx);
    return 0;
  } catch (const std::exception& e) {
    hd->error = e.what();
    return 1;
  }
}

const char* sbn_bench_error(void* h) { return static_cast<Handle*>(h)->error.c_str(); }

void sbn_bench_destroy(void* h) { delete static_cast<Handle*>(h); }

}  // extern "C"
