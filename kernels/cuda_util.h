// Private helpers of the kernels library: CUDA errors as Status, launch arithmetic and the
// workspace layout shared by the preprocessing kernels. Not installed; include only from
// kernels/*.cu and kernels/*.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "inferline/kernels/preprocess_cuda.h"
#include "inferline/status.h"

static_assert(std::is_same_v<inferline::kernels::Stream, cudaStream_t>,
              "preprocess_cuda.h spells cudaStream_t as CUstream_st*");

namespace inferline::kernels::detail {

// UNAVAILABLE (no device / no driver), RESOURCE_EXHAUSTED (out of memory) or INTERNAL, naming
// the CUDA error and the call: "INTERNAL: CUDA error cudaErrorInvalidValue (invalid argument)
// in cudaMemcpyAsync(...) at kernels/image_cuda.cu:120".
Status CudaStatus(cudaError_t err, const char* call, const char* file, int line);

// Workspace tables start on 256-byte boundaries (cudaMalloc's alignment), so each table is
// aligned for vector loads whatever its length.
inline constexpr size_t kTableAlign = 256;
inline constexpr size_t AlignUp(size_t n) { return (n + kTableAlign - 1) / kTableAlign * kTableAlign; }
inline constexpr size_t StatTableBytes(int64_t entries) {
  return AlignUp(static_cast<size_t>(entries) * sizeof(float));
}

template <class T>
constexpr T CeilDiv(T a, T b) { return (a + b - 1) / b; }

inline bool IsAligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Expands a length-1 statistics vector to `n` entries into `dst` (host), else copies it.
inline void ExpandStat(const std::vector<float>& src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[src.size() == 1 ? 0 : static_cast<size_t>(i)];
}

}  // namespace inferline::kernels::detail

// Evaluates a CUDA runtime call; on failure returns its Status from the enclosing function.
#define INFERLINE_CUDA_CHECK(expr)                                                         \
  do {                                                                                     \
    const cudaError_t _il_cuda_err = (expr);                                               \
    if (_il_cuda_err != cudaSuccess) {                                                     \
      return ::inferline::kernels::detail::CudaStatus(_il_cuda_err, #expr, __FILE__, __LINE__); \
    }                                                                                      \
  } while (0)
