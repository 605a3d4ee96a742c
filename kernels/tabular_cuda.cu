// Tabular preprocessing on the GPU: NaN fill, (x - mean) / std, NumPy clip; float32 in, float32
// or float16 out. Semantics and the support table: inferline/kernels/preprocess_cuda.h.
//
// Bitwise parity with the CPU twin needs the same IEEE float32 ops in the same order: this file
// is compiled with --fmad=false (no contraction into FMA) and --prec-div=true, and the ops are
// spelled __fsub_rn / __fdiv_rn so that neither flag nor a later edit can silently change them.
// The clip is two selects, never fminf/fmaxf (those drop NaN and may pick either signed zero).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda_util.h"
#include "inferline/kernels/preprocess_cuda.h"
#include "vec_io.cuh"

namespace inferline::kernels {
namespace {

using detail::kThreads;
using detail::kVec;

struct TabularParams {
  const float* in;
  void* out;
  const float* mean;  // `features` entries
  const float* std;
  uint32_t n;         // rows * features <= kMaxTabularElements
  uint32_t features;
  float fill, lo, hi;
};

// One element, in the CPU twin's order (preprocess.cpp TabularElem).
__device__ __forceinline__ float TabularElem(float v, float mean, float sd, float fill, float lo,
                                             float hi) {
  const float x = isnan(v) ? fill : v;
  float y = __fdiv_rn(__fsub_rn(x, mean), sd);
  y = (y < lo) ? lo : y;  // NaN and ties keep y, as NumPy's clip does
  return (y > hi) ? hi : y;
}

// Thread t transforms the flat elements [t * kV, t * kV + kV) of the batch; the batch is one flat
// array of rows * features elements, so a vector may span two rows (the feature index wraps).
// The last n % kV elements (only when kV > 1) go to threads 0..2 as scalars.
template <class Out, int kV>
__global__ void __launch_bounds__(kThreads) TabularKernel(TabularParams p) {
  const uint32_t t = blockIdx.x * kThreads + threadIdx.x;
  const uint32_t nvec = p.n / kV;
  Out* out = static_cast<Out*>(p.out);
  if (t < nvec) {
    const uint32_t e = t * kV;
    uint32_t j = e % p.features;
    float x[kV], y[kV];
    detail::Load<kV>(p.in + e, x);
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      y[k] = TabularElem(x[k], __ldg(p.mean + j), __ldg(p.std + j), p.fill, p.lo, p.hi);
      j = (j + 1 == p.features) ? 0 : j + 1;
    }
    detail::Store<kV>(out + e, y);
  }
  if (kV > 1 && t < p.n - nvec * kV) {
    const uint32_t e = nvec * kV + t;
    const uint32_t j = e % p.features;
    detail::StoreOne(out + e, TabularElem(__ldg(p.in + e), __ldg(p.mean + j), __ldg(p.std + j),
                                          p.fill, p.lo, p.hi));
  }
}

// Dispatch step 3: one launch of the chosen instantiation, checked at once.
template <class Out, int kV>
Status Launch(const TabularParams& p, cudaStream_t stream) {
  const uint32_t items = p.n / kV > 0 ? p.n / kV : 1;  // >= 1 thread for a tail-only batch
  const dim3 grid(detail::CeilDiv<uint32_t>(items, kThreads));
  TabularKernel<Out, kV><<<grid, kThreads, 0, stream>>>(p);
  INFERLINE_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

Status CheckRun(const TabularPlan& plan, const float* in, int64_t rows, const void* out,
                DataType out_dtype) {
  if (plan.mean == nullptr || plan.std == nullptr || plan.features < 1) {
    return InvalidArgument("RunTabular: the plan is not prepared (call PrepareTabular)");
  }
  if (out_dtype != DataType::kFloat32 && out_dtype != DataType::kFloat16) {
    return InvalidArgument("RunTabular: output DataType " + std::to_string(static_cast<int>(out_dtype)) +
                           " is not supported; want kFloat32 or kFloat16");
  }
  if (rows < 0 || rows > kMaxTabularElements / plan.features) {
    return InvalidArgument("RunTabular: " + std::to_string(rows) + " rows of " +
                           std::to_string(plan.features) + " features; want 0.." +
                           std::to_string(kMaxTabularElements) + " elements a batch");
  }
  if (rows == 0) return Status::Ok();
  const size_t out_size = out_dtype == DataType::kFloat32 ? sizeof(float) : sizeof(__half);
  if (in == nullptr || out == nullptr) return InvalidArgument("RunTabular: `in` or `out` is null");
  if (!detail::IsAligned(in, sizeof(float)) || !detail::IsAligned(out, out_size)) {
    return InvalidArgument("RunTabular: `in` or `out` is not aligned to its element size");
  }
  return Status::Ok();
}

}  // namespace

size_t TabularWorkspaceBytes(int64_t features) noexcept {
  if (features < 1 || features > kMaxTabularElements) return 0;
  return 2 * detail::StatTableBytes(features);
}

Expected<TabularPlan> PrepareTabular(const TabularSpec& spec, int64_t features, void* workspace,
                                     size_t workspace_bytes, Stream stream) {
  const size_t need = TabularWorkspaceBytes(features);
  if (need == 0) {
    return InvalidArgument("PrepareTabular: features is " + std::to_string(features) +
                           "; want 1.." + std::to_string(kMaxTabularElements));
  }
  const auto fits = [&](size_t len) { return len == 1 || len == static_cast<size_t>(features); };
  if (!fits(spec.mean.size()) || !fits(spec.std.size())) {
    return InvalidArgument("PrepareTabular: mean/std have " + std::to_string(spec.mean.size()) + "/" +
                           std::to_string(spec.std.size()) + " entries; want 1 or " +
                           std::to_string(features));
  }
  if (workspace == nullptr || workspace_bytes < need || !detail::IsAligned(workspace, 16)) {
    return InvalidArgument("PrepareTabular: workspace needs " + std::to_string(need) +
                           " bytes, 16-byte aligned; got " + std::to_string(workspace_bytes));
  }
  const size_t table = detail::StatTableBytes(features);
  std::vector<float> host(need / sizeof(float), 0.0f);
  detail::ExpandStat(spec.mean, features, host.data());
  detail::ExpandStat(spec.std, features, host.data() + table / sizeof(float));
  INFERLINE_CUDA_CHECK(cudaMemcpyAsync(workspace, host.data(), need, cudaMemcpyHostToDevice, stream));
  INFERLINE_CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` dies with this call
  const auto* base = static_cast<const unsigned char*>(workspace);
  TabularPlan plan;
  plan.mean = reinterpret_cast<const float*>(base);
  plan.std = reinterpret_cast<const float*>(base + table);
  plan.features = features;
  plan.nan_fill = spec.nan_fill;
  plan.clip_lo = spec.clip_lo;
  plan.clip_hi = spec.clip_hi;
  return plan;
}

Status RunTabular(const TabularPlan& plan, const float* in, int64_t rows, void* out,
                  DataType out_dtype, Stream stream) {
  INFERLINE_RETURN_IF_ERROR(CheckRun(plan, in, rows, out, out_dtype));
  if (rows == 0) return Status::Ok();
  const TabularParams p{in,        out, plan.mean, plan.std, static_cast<uint32_t>(rows * plan.features),
                        static_cast<uint32_t>(plan.features), plan.nan_fill, plan.clip_lo, plan.clip_hi};
  // Dispatch: output dtype, then vector width (16-byte loads need `in` 16-byte aligned and the
  // vector store `out` aligned for 4 outputs), then the template.
  const bool in_vec = detail::IsAligned(in, 16);
  if (out_dtype == DataType::kFloat32) {
    return in_vec && detail::IsAligned(out, 16) ? Launch<float, kVec>(p, stream) : Launch<float, 1>(p, stream);
  }
  return in_vec && detail::IsAligned(out, 8) ? Launch<__half, kVec>(p, stream) : Launch<__half, 1>(p, stream);
}

}  // namespace inferline::kernels
