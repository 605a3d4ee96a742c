// CUDA runtime errors as Status, and the device query. Host-only: compiled by the C++ compiler.
#include <cuda_runtime.h>

#include <string>

#include "cuda_util.h"
#include "inferline/kernels/preprocess_cuda.h"

namespace inferline::kernels {
namespace detail {

Status CudaStatus(cudaError_t err, const char* call, const char* file, int line) {
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                    ") in " + call + " at " + file + ":" + std::to_string(line);
  switch (err) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorNoKernelImageForDevice:
      return Unavailable(std::move(msg));
    case cudaErrorMemoryAllocation:
      return Status(StatusCode::kResourceExhausted, std::move(msg));
    default:
      return Internal(std::move(msg));
  }
}

}  // namespace detail

int CudaDeviceCount() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) error so later calls start clean
    return 0;
  }
  return count;
}

}  // namespace inferline::kernels
