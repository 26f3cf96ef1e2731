// Activation dtypes of the CUDA path. Parameters, statistics and all arithmetic stay fp32 or wider;
// only x, y, dy and dx are stored in the activation dtype (as with PyTorch autocast + SyncBatchNorm).
#pragma once

#include <cstddef>
#include <string>

namespace syncbn::cuda {

enum class DType { kF32, kBF16, kF16 };

std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "fp32", "bf16", "fp16"
// "fp32" | "float32" | "bf16" | "bfloat16" | "fp16" | "float16" | "half"; throws naming the text otherwise.
DType parse_dtype(const std::string& text);

}  // namespace syncbn::cuda
