// How the CUDA SyncBN kernels split a tensor over blocks and threads: the launch plan (BnTile) and the
// two cursors every element loop walks with. Host+device (SBN_HD) and free of CUDA runtime calls, so the
// CPU test (tests/gpu/test_gpu_emulation.cpp) walks every (block, thread) of a plan and checks that each
// element is visited exactly once, with the right channel, through aligned vectors.
//
// Shapes (BnGeometry): planar = outer planes of `inner` contiguous elements per channel, channels-last
// = outer rows of C contiguous channels. Every access is a vector of `vec` elements (16 bytes at most);
// `vec` divides the row length (inner or C) and the base addresses are aligned to vec·sizeof(T), so a
// vector never straddles a plane or a row and needs no tail code: a row length with no such divisor
// (odd inner, e.g. 7×7) falls back to vec = 1.
//
// Each thread handles U = bn_unroll(vec) vectors per step (4, or 2 for 8-wide vectors: at most 16
// elements per tensor and step, which bounds the fp32 registers a step needs), all loaded before any
// is used, so they are in flight together.
// Channels-last REDUCTIONS use at most kMaxRowsReduceVec = 4 lanes (so 8-byte bf16/fp16 vectors): each
// lane is a channel with its own fp32 and double accumulators, and 8 lanes cost ~90 registers, i.e. only
// 2 resident blocks per SM (docs/GPU.md "Registers and occupancy").
//
// Planar cursor: a plane is cut into segments of seg = tx·vec·U elements; a "piece" is one segment of
// one plane. A block row (fixed threadIdx.y) takes pieces p, p + stride, ...; inside a piece thread x
// reads vectors at x·vec + u·tx·vec for u < U (coalesced across x for each u).
//   reduce:      block (c, split): pieces enumerate (sample, segment) of channel c; partials per split.
//   elementwise: 1-d grid: pieces enumerate (sample, channel, segment) of the whole tensor.
// Rows cursor (channels-last): thread x of block column bx owns channels [c0, c0 + vec) with
// c0 = (bx·tx + x)·vec for the whole kernel (its parameters stay in registers); block row y takes rows
// r = split·ty + y, stepping by S = grid_y·ty, U rows per step (r, r+S, …, r+(U−1)S).
#pragma once

#include <cstdint>
#include <type_traits>

#include "syncbn/bn_math.h"

namespace syncbn::cuda {

constexpr int kThreads = 256;               // threads per block of every element kernel
constexpr int kMinBlocksPerSm = 2;          // __launch_bounds__: ≥ 512 resident threads per SM (≤ 128 regs)
constexpr int kMaxUnroll = 4;               // vectors each thread keeps in flight per step, at most
constexpr int kStepElems = 16;              // ... and at most this many elements per tensor and step
constexpr int kMaxVecBytes = 16;            // widest access: 128-bit loads/stores
constexpr int kMaxTileChannels = 128;       // channels-last reductions: channels per block (smem bound)
constexpr int kMaxRowsReduceVec = 4;        // channels-last reductions: lanes (channels) per thread, at most
constexpr int kStatsMinBlocksPerSm = 4;     // bn_stats' partial kernels: ≤ 64 registers, 1024 threads per SM
constexpr int kReduceBlocksPerSm = 4;       // reduction grids: enough blocks to fill every SM a few times
constexpr int kElementwiseBlocksPerSm = 8;  // elementwise grids: 8 × 256 = 2048 threads = a full SM
constexpr std::int64_t kMaxGridY = 65535;   // CUDA's limit on gridDim.y

enum class BnPass { kReduce, kElementwise };

// A launch plan. Built on the host by bn_plan(), passed by value to the kernels.
struct BnTile {
  std::int64_t outer = 0;     // planar: N; channels-last: N·H·W rows
  std::int64_t channels = 0;  // C
  std::int64_t inner = 1;     // planar: elements per plane; channels-last: 1
  bool channels_last = false;
  bool elementwise = false;
  int vec = 1;                // elements per access
  int unroll = 1;             // vectors per thread and step: bn_unroll(vec)
  int tx = 1, ty = kThreads;  // block shape, tx·ty == kThreads, tx a power of two
  std::int64_t seg = 1;       // planar: elements per segment (tx·vec·unroll)
  std::int64_t segs = 0;      // planar: segments per plane
  std::int64_t grid_x = 0, grid_y = 0;  // 0: nothing to launch (empty tensor)
};

SBN_HD std::int64_t bn_ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Smallest power of two ≥ v, clamped to [1, cap] (cap a power of two).
SBN_HD int bn_pow2_at_least(std::int64_t v, int cap) {
  int p = 1;
  while (p < cap && p < v) p *= 2;
  return p;
}

// q = a / b, r = a % b for a ≥ 0, b > 0. 64-bit division is a long software sequence on the GPU; the
// cursors divide once per step, and nearly always both operands fit in 32 bits (uniform branch).
SBN_HD void bn_divmod(std::int64_t a, std::int64_t b, std::int64_t* q, std::int64_t* r) {
  if (((a | b) >> 31) == 0) {
    const auto ua = static_cast<std::uint32_t>(a), ub = static_cast<std::uint32_t>(b);
    const std::uint32_t uq = ua / ub;
    *q = uq;
    *r = ua - uq * ub;
  } else {
    *q = a / b;
    *r = a - *q * b;
  }
}

// Elements per access: the widest power of two with vec·elem_bytes ≤ 16 (and vec ≤ max_vec, a cap in
// elements; the default caps nothing) that divides the row length and whose byte size divides every base
// address. `addr_bits` is the OR of all the kernel's base addresses (the OR has the alignment of the least
// aligned one).
SBN_HD int bn_pick_vec(std::int64_t row_len, std::uint64_t addr_bits, int elem_bytes, int max_vec = kMaxVecBytes) {
  int v = kMaxVecBytes / elem_bytes < max_vec ? kMaxVecBytes / elem_bytes : max_vec;
  while (v > 1 && (row_len % v != 0 || addr_bits % static_cast<std::uint64_t>(v * elem_bytes) != 0)) v /= 2;
  return v;
}

// Vectors per thread and step for a vector width (a compile-time constant in the kernels).
SBN_HD constexpr int bn_unroll(int vec) {
  return vec >= kStepElems ? 1 : (kStepElems / vec < kMaxUnroll ? kStepElems / vec : kMaxUnroll);
}

// Host dispatch on a plan's vector width: calls f(std::integral_constant<int, V>{}) for V = vec,
// instantiating only the widths that fit kMaxVecBytes of T. Returns false, calling nothing, for any
// other width (the caller reports it: the launchers throw, the CPU emulation test fails).
template <class T, class F>
bool bn_with_vec(int vec, F&& f) {
  switch (vec) {
    case 1: f(std::integral_constant<int, 1>{}); return true;
    case 2: f(std::integral_constant<int, 2>{}); return true;
    case 4: f(std::integral_constant<int, 4>{}); return true;
    case 8:
      if constexpr (8 * sizeof(T) <= kMaxVecBytes) {
        f(std::integral_constant<int, 8>{});
        return true;
      }
      break;
    default: break;
  }
  return false;
}

// Calls f(std::true_type{}) or f(std::false_type{}): a run-time flag as a template argument.
template <class F>
void bn_with_flag(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Target block count of a pass on a device with `sm_count` multiprocessors.
SBN_HD std::int64_t bn_target_blocks(BnPass pass, int sm_count) {
  const int per_sm = pass == BnPass::kReduce ? kReduceBlocksPerSm : kElementwiseBlocksPerSm;
  return sm_count > 0 ? static_cast<std::int64_t>(sm_count) * per_sm : per_sm;
}

SBN_HD std::int64_t bn_clamp(std::int64_t v, std::int64_t lo, std::int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// The launch plan of one kernel over a tensor of the given geometry.
inline BnTile bn_plan(BnPass pass, std::int64_t outer, std::int64_t channels, std::int64_t inner,
                      bool channels_last, int elem_bytes, std::uint64_t addr_bits, int sm_count) {
  BnTile t;
  t.outer = outer;
  t.channels = channels;
  t.inner = channels_last ? 1 : inner;
  t.channels_last = channels_last;
  t.elementwise = pass == BnPass::kElementwise;
  if (outer <= 0 || channels <= 0 || t.inner <= 0) return t;  // grid 0: nothing to launch
  const std::int64_t target = bn_target_blocks(pass, sm_count);
  if (!channels_last) {
    t.vec = bn_pick_vec(t.inner, addr_bits, elem_bytes);
    t.unroll = bn_unroll(t.vec);
    const std::int64_t vecs = t.inner / t.vec;
    t.tx = bn_pow2_at_least(bn_ceil_div(vecs, t.unroll), kThreads);
    t.ty = kThreads / t.tx;
    t.seg = static_cast<std::int64_t>(t.tx) * t.vec * t.unroll;
    t.segs = bn_ceil_div(t.inner, t.seg);
    if (t.elementwise) {
      t.grid_x = bn_clamp(bn_ceil_div(outer * channels * t.segs, t.ty), 1, target);
      t.grid_y = 1;
    } else {
      t.grid_x = channels;
      const std::int64_t most = bn_clamp(bn_ceil_div(outer * t.segs, t.ty), 1, kMaxGridY);
      t.grid_y = bn_clamp(bn_ceil_div(target, channels), 1, most);
    }
  } else {
    t.vec = bn_pick_vec(channels, addr_bits, elem_bytes, t.elementwise ? kMaxVecBytes : kMaxRowsReduceVec);
    t.unroll = bn_unroll(t.vec);
    const std::int64_t vecs = channels / t.vec;
    const int cap = kMaxTileChannels / t.vec < 32 ? kMaxTileChannels / t.vec : 32;
    t.tx = bn_pow2_at_least(vecs, cap);
    t.ty = kThreads / t.tx;
    t.grid_x = bn_ceil_div(vecs, t.tx);
    const std::int64_t most = bn_clamp(bn_ceil_div(outer, static_cast<std::int64_t>(t.ty) * t.unroll), 1, kMaxGridY);
    t.grid_y = bn_clamp(bn_ceil_div(target, t.grid_x), 1, most);
  }
  return t;
}

// Upper bound of a reduction plan's grid_y (partials per channel) for any alignment, so a layer can size
// its workspace once: planar grids have C columns, channels-last ones at least ⌈C/kMaxTileChannels⌉.
inline std::int64_t bn_max_splits(std::int64_t channels, bool channels_last, int sm_count) {
  const std::int64_t columns = channels_last ? bn_ceil_div(channels, kMaxTileChannels) : channels;
  return bn_clamp(bn_ceil_div(bn_target_blocks(BnPass::kReduce, sm_count), columns), 1, kMaxGridY);
}

// ---- cursors ------------------------------------------------------------------------------------

// Planar walk of one thread (see the file comment). Reduce: block = split index (blockIdx.y) and
// `channel` = blockIdx.x. Elementwise: block = blockIdx.x, `channel` ignored (derived per piece).
struct PlanarCursor {
  std::int64_t p, stride, end;
  std::int64_t lane;       // element offset of this thread's first vector in a segment: x·vec
  std::int64_t step;       // elements between its vectors in a segment: tx·vec
  std::int64_t base = 0;   // element offset of the current piece
  std::int64_t len = 0;    // elements in the current piece (a multiple of vec)
  std::int64_t channel;    // channel of the current piece
  // Copies of the plan's fields (by value: a reference to a kernel parameter could force it into
  // local memory).
  std::int64_t segs, seg, inner, channels;
  bool elementwise;

  SBN_HD PlanarCursor(const BnTile& t, std::int64_t block, std::int64_t fixed_channel, int x, int y)
      : p(block * t.ty + y),
        stride((t.elementwise ? t.grid_x : t.grid_y) * t.ty),
        end((t.elementwise ? t.outer * t.channels : t.outer) * t.segs),
        lane(static_cast<std::int64_t>(x) * t.vec),
        step(static_cast<std::int64_t>(t.tx) * t.vec),
        channel(fixed_channel),
        segs(t.segs),
        seg(t.seg),
        inner(t.inner),
        channels(t.channels),
        elementwise(t.elementwise) {
    if (p < end) locate();
  }
  SBN_HD void locate() {
    std::int64_t plane = 0, s = 0;
    bn_divmod(p, segs, &plane, &s);
    if (elementwise) {
      std::int64_t sample = 0;
      bn_divmod(plane, channels, &sample, &channel);
      base = plane * inner + s * seg;
    } else {
      base = (plane * channels + channel) * inner + s * seg;
    }
    const std::int64_t rest = inner - s * seg;
    len = rest < seg ? rest : seg;
  }
  SBN_HD bool ok() const { return p < end; }
  SBN_HD void next() {
    p += stride;
    if (p < end) locate();
  }
  SBN_HD bool valid(int u) const { return lane + u * step < len; }
  SBN_HD std::int64_t offset(int u) const { return base + lane + u * step; }
};

// Channels-last walk of one thread (see the file comment).
struct RowsCursor {
  std::int64_t c0;      // first channel of this thread's vector
  bool active;          // c0 < C (the last block column may be partly idle)
  std::int64_t r, stride, outer, channels;
  int unroll;

  SBN_HD RowsCursor(const BnTile& t, std::int64_t bx, std::int64_t by, int x, int y)
      : c0((bx * t.tx + x) * t.vec),
        active(c0 < t.channels),
        r(by * t.ty + y),
        stride(t.grid_y * t.ty),
        outer(t.outer),
        channels(t.channels),
        unroll(t.unroll) {}
  SBN_HD bool ok() const { return active && r < outer; }
  SBN_HD void next() { r += unroll * stride; }
  SBN_HD bool valid(int u) const { return r + u * stride < outer; }
  SBN_HD std::int64_t offset(int u) const { return (r + u * stride) * channels + c0; }
};

}  // namespace syncbn::cuda
