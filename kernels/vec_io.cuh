// Private device helpers: float32 results stored as float32 or float16, one element or a vector of
// 4 (one 16-byte store for float32, one 8-byte store for float16), and the launch constants shared
// by the preprocessing kernels.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace inferline::kernels::detail {

// Threads per block for every preprocessing kernel. 256 (8 warps) is the usual start for
// memory-bound elementwise kernels: enough warps per block to hide latency while up to 8 blocks
// share an SM (2048 threads on sm_90). UNTUNED: not yet measured on the H200; bench/gpu/
// bench_kernels reports the bandwidth to tune against (try 128 and 512 there).
inline constexpr int kThreads = 256;
// Elements per vector access: 4 float32 = 16 bytes (one LDG.128 / STG.128).
inline constexpr int kVec = 4;

__device__ __forceinline__ void StoreOne(float* p, float y) { *p = y; }
__device__ __forceinline__ void StoreOne(__half* p, float y) { *p = __float2half_rn(y); }

// Stores y[0..kV) at p (p aligned for the whole vector when kV == 4).
template <int kV>
__device__ __forceinline__ void Store(float* p, const float (&y)[kV]) {
  if constexpr (kV == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(y[0], y[1], y[2], y[3]);
  } else {
#pragma unroll
    for (int k = 0; k < kV; ++k) p[k] = y[k];
  }
}

template <int kV>
__device__ __forceinline__ void Store(__half* p, const float (&y)[kV]) {
  if constexpr (kV == 4) {
    // Element k at the lower address: little-endian packing of four RN conversions.
    const uint32_t lo = static_cast<uint32_t>(__half_as_ushort(__float2half_rn(y[0]))) |
                        (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(y[1]))) << 16);
    const uint32_t hi = static_cast<uint32_t>(__half_as_ushort(__float2half_rn(y[2]))) |
                        (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(y[3]))) << 16);
    *reinterpret_cast<uint2*>(p) = make_uint2(lo, hi);
  } else {
#pragma unroll
    for (int k = 0; k < kV; ++k) p[k] = __float2half_rn(y[k]);
  }
}

// Loads x[0..kV) from p (p 16-byte aligned when kV == 4), through the read-only path.
template <int kV>
__device__ __forceinline__ void Load(const float* p, float (&x)[kV]) {
  if constexpr (kV == 4) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    x[0] = v.x; x[1] = v.y; x[2] = v.z; x[3] = v.w;
  } else {
#pragma unroll
    for (int k = 0; k < kV; ++k) x[k] = __ldg(p + k);
  }
}

}  // namespace inferline::kernels::detail
