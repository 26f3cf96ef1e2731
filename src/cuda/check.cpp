// Error texts for SBN_CUDA_CHECK / SBN_NCCL_CHECK, and the activation dtypes.
#include "syncbn/cuda/check.h"

#include "syncbn/cuda/dtype.h"

namespace syncbn::cuda {

std::string cuda_error_text(cudaError_t code) {
  std::string out = std::string(cudaGetErrorName(code)) + ": " + cudaGetErrorString(code);
  switch (code) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorIllegalInstruction:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
      out += " (a sticky error: it may come from any earlier kernel on this device; rerun with "
             "CUDA_LAUNCH_BLOCKING=1 or compute-sanitizer to find the culprit)";
      break;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      out += " (check nvidia-smi, the driver version, CUDA_VISIBLE_DEVICES)";
      break;
    case cudaErrorStreamCaptureUnsupported:
    case cudaErrorStreamCaptureInvalidated:
      out += " (an operation that cannot be captured ran during CUDA graph capture: warm up one step "
             "eagerly before capturing)";
      break;
    default: break;
  }
  return out;
}

const char* nccl_hint(ncclResult_t code) {
  switch (code) {
    case ncclSuccess: return "";
    case ncclUnhandledCudaError:
      return "a CUDA call inside NCCL failed: check the device (nvidia-smi), the driver, and that every rank "
             "uses its own GPU (CUDA_VISIBLE_DEVICES)";
    case ncclSystemError:
      return "a system call failed (sockets, shared memory): check NCCL_SOCKET_IFNAME names a NIC every node "
             "shares, that /dev/shm is large enough (docker --shm-size, Kubernetes emptyDir medium Memory), "
             "firewalls between nodes; rerun with NCCL_DEBUG=INFO";
    case ncclInternalError:
      return "NCCL internal error: rerun with NCCL_DEBUG=INFO (and NCCL_DEBUG_SUBSYS=ALL) and report it";
    case ncclInvalidArgument:
      return "invalid argument: a null or host pointer where device memory is needed, a bad count or datatype";
    case ncclInvalidUsage:
      return "invalid usage: two ranks of one communicator on the same GPU (\"Duplicate GPU detected\"), "
             "collectives called in a different order on different ranks, or a communicator used after "
             "an abort; rerun with NCCL_DEBUG=WARN";
    case ncclRemoteError:
      return "a peer failed or the network between ranks broke (a peer process died or was killed?)";
    case ncclInProgress:
      return "operation still in progress (non-blocking communicator)";
    default: return "unknown NCCL result";
  }
}

std::string nccl_error_text(ncclResult_t code, ncclComm_t comm) {
  std::string out = ncclGetErrorString(code);
  const char* last = ncclGetLastError(comm);
  if (last && *last) out += " (NCCL: " + std::string(last) + ")";
  const char* hint = nccl_hint(code);
  if (*hint) out += "; hint: " + std::string(hint);
  return out;
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
  }
  SBN_FAIL("unknown dtype " + std::to_string(static_cast<int>(dtype)));
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "fp32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "fp16";
  }
  return "?";
}

DType parse_dtype(const std::string& text) {
  if (text == "fp32" || text == "float32") return DType::kF32;
  if (text == "bf16" || text == "bfloat16") return DType::kBF16;
  if (text == "fp16" || text == "float16" || text == "half") return DType::kF16;
  SBN_FAIL("unknown dtype '" + text + "'; expected fp32, bf16 or fp16");
}

}  // namespace syncbn::cuda
