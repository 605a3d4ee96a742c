// Image preprocessing on the GPU: uint8 NHWC images of any size each -> bilinear resize with
// half-pixel centres -> (v - mean[c]) / std[c] -> NCHW float32 or float16, one launch a batch.
// Semantics and the support table: inferline/kernels/preprocess_cuda.h.
//
// Each float op is spelled as an IEEE round-to-nearest intrinsic in the CPU twin's order
// (preprocess.cpp BuildTaps / ResizePlane) and the file builds with --fmad=false, so the float32
// output is the CPU twin's, bit for bit.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
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

// Limits that keep the kernel's index arithmetic in range (checked by PrepareImage).
constexpr int64_t kMaxChannels = 1 << 16;
constexpr int64_t kMaxImages = 1 << 24;
// gridDim.y limit; larger batches loop over images inside the kernel.
constexpr int64_t kMaxGridY = 65535;

struct ImageParams {
  const uint8_t* in;
  void* out;
  const float* mean;  // `channels` entries
  const float* std;
  const ImageDesc* descs;
  int32_t n, channels, out_h, out_w;
};

// One source coordinate along an axis (preprocess.cpp BuildTaps, in float32).
struct Tap {
  int32_t i0, i1;
  float w;  // weight of i1
};

__device__ __forceinline__ Tap MakeTap(int32_t o, int32_t in_size, int32_t out_size) {
  const float scale = __fdiv_rn(static_cast<float>(in_size), static_cast<float>(out_size));
  float s = __fsub_rn(__fmul_rn(__fadd_rn(static_cast<float>(o), 0.5f), scale), 0.5f);
  s = (s < 0.0f) ? 0.0f : s;  // std::max(s, 0.0f)
  const int32_t i0 = min(static_cast<int32_t>(floorf(s)), in_size - 1);
  return Tap{i0, min(i0 + 1, in_size - 1), __fsub_rn(s, static_cast<float>(i0))};
}

// (1 - w) * a + w * b, as preprocess.cpp ResizePlane writes it.
__device__ __forceinline__ float Lerp(float w1, float w, float a, float b) {
  return __fadd_rn(__fmul_rn(w1, a), __fmul_rn(w, b));
}

// Block (bx, by): output pixels [bx * kThreads * kV, ...) of one plane, flattened as
// y * (out_w / kV) + x / kV, for images by, by + gridDim.y, ... Each thread computes kV
// horizontally adjacent output pixels for every channel: its taps once, then one (vector) store
// per channel plane, so a warp's stores to a plane are contiguous.
template <class Out, int kV>
__global__ void __launch_bounds__(kThreads) ImageKernel(ImageParams p) {
  const int32_t per_row = p.out_w / kV;
  const uint32_t item = blockIdx.x * kThreads + threadIdx.x;
  if (item >= static_cast<uint32_t>(p.out_h) * static_cast<uint32_t>(per_row)) return;
  const int32_t y = static_cast<int32_t>(item / per_row);
  const int32_t x0 = static_cast<int32_t>(item % per_row) * kV;
  const int64_t plane = static_cast<int64_t>(p.out_h) * p.out_w;
  const int64_t c_count = p.channels;
  for (int32_t img = blockIdx.y; img < p.n; img += gridDim.y) {
    const ImageDesc d = p.descs[img];
    const Tap ty = MakeTap(y, d.h, p.out_h);
    Tap tx[kV];
#pragma unroll
    for (int k = 0; k < kV; ++k) tx[k] = MakeTap(x0 + k, d.w, p.out_w);
    const int64_t row_bytes = static_cast<int64_t>(d.w) * c_count;
    const uint8_t* r0 = p.in + d.offset + ty.i0 * row_bytes;
    const uint8_t* r1 = p.in + d.offset + ty.i1 * row_bytes;
    const float wy = ty.w, wy1 = __fsub_rn(1.0f, ty.w);
    Out* dst = static_cast<Out*>(p.out) + img * c_count * plane + static_cast<int64_t>(y) * p.out_w + x0;
    for (int64_t c = 0; c < c_count; ++c, dst += plane) {
      const float mean = __ldg(p.mean + c), sd = __ldg(p.std + c);
      float v[kV];
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        const int64_t a0 = tx[k].i0 * c_count + c, a1 = tx[k].i1 * c_count + c;
        const float wx = tx[k].w, wx1 = __fsub_rn(1.0f, tx[k].w);
        const float top = Lerp(wx1, wx, static_cast<float>(r0[a0]), static_cast<float>(r0[a1]));
        const float bot = Lerp(wx1, wx, static_cast<float>(r1[a0]), static_cast<float>(r1[a1]));
        v[k] = __fdiv_rn(__fsub_rn(Lerp(wy1, wy, top, bot), mean), sd);
      }
      detail::Store<kV>(dst, v);
    }
  }
}

// Dispatch step 3: one launch of the chosen instantiation, checked at once.
template <class Out, int kV>
Status Launch(const ImageParams& p, cudaStream_t stream) {
  const uint32_t items = static_cast<uint32_t>(p.out_h) * static_cast<uint32_t>(p.out_w / kV);
  const dim3 grid(detail::CeilDiv<uint32_t>(items, kThreads),
                  static_cast<uint32_t>(std::min<int64_t>(p.n, kMaxGridY)));
  ImageKernel<Out, kV><<<grid, kThreads, 0, stream>>>(p);
  INFERLINE_CUDA_CHECK(cudaGetLastError());
  return Status::Ok();
}

Status Fail(const std::string& what) { return InvalidArgument("RunImage: " + what); }

// Every descriptor names an image of sane size inside the input buffer.
Status CheckDescs(const ImageDesc* descs, int64_t n, int64_t channels, size_t in_bytes) {
  for (int64_t i = 0; i < n; ++i) {
    const ImageDesc& d = descs[i];
    const std::string who = "image " + std::to_string(i) + " (" + std::to_string(d.h) + "x" +
                            std::to_string(d.w) + " at offset " + std::to_string(d.offset) + ")";
    if (d.h < 1 || d.w < 1 || d.h > kMaxInputImageSide || d.w > kMaxInputImageSide) {
      return Fail(who + ": want sides 1.." + std::to_string(kMaxInputImageSide));
    }
    if (d.offset < 0 || static_cast<uint64_t>(d.offset) > in_bytes ||
        static_cast<uint64_t>(d.h) * static_cast<uint64_t>(d.w) >
            (in_bytes - static_cast<uint64_t>(d.offset)) / static_cast<uint64_t>(channels)) {
      return Fail(who + " of " + std::to_string(channels) + " channels is not inside the " +
                  std::to_string(in_bytes) + "-byte input");
    }
  }
  return Status::Ok();
}

Status CheckRun(const ImagePlan& plan, const uint8_t* in, size_t in_bytes, const ImageDesc* descs,
                int64_t n, const void* out, DataType out_dtype) {
  if (plan.mean == nullptr || plan.std == nullptr || plan.descs == nullptr || plan.channels < 1) {
    return Fail("the plan is not prepared (call PrepareImage)");
  }
  if (out_dtype != DataType::kFloat32 && out_dtype != DataType::kFloat16) {
    return Fail("output DataType " + std::to_string(static_cast<int>(out_dtype)) +
                " is not supported; want kFloat32 or kFloat16");
  }
  if (n < 0 || n > plan.max_images) {
    return Fail(std::to_string(n) + " images; the workspace holds 0.." + std::to_string(plan.max_images));
  }
  if (n == 0) return Status::Ok();
  if (in == nullptr || out == nullptr || descs == nullptr) return Fail("`in`, `out` or `host_descs` is null");
  const size_t out_size = out_dtype == DataType::kFloat32 ? sizeof(float) : sizeof(__half);
  if (!detail::IsAligned(out, out_size)) return Fail("`out` is not aligned to its element size");
  return CheckDescs(descs, n, plan.channels, in_bytes);
}

}  // namespace

size_t ImageWorkspaceBytes(int64_t channels, int64_t max_images) noexcept {
  if (channels < 1 || channels > kMaxChannels || max_images < 1 || max_images > kMaxImages) return 0;
  return 2 * detail::StatTableBytes(channels) + static_cast<size_t>(max_images) * sizeof(ImageDesc);
}

Expected<ImagePlan> PrepareImage(const ImageSpec& spec, int64_t channels, int64_t max_images,
                                 void* workspace, size_t workspace_bytes, Stream stream) {
  const size_t need = ImageWorkspaceBytes(channels, max_images);
  if (need == 0) {
    return InvalidArgument("PrepareImage: channels " + std::to_string(channels) + ", max_images " +
                           std::to_string(max_images) + "; want 1.." + std::to_string(kMaxChannels) +
                           " and 1.." + std::to_string(kMaxImages));
  }
  const auto fits = [&](size_t len) { return len == 1 || len == static_cast<size_t>(channels); };
  if (!fits(spec.mean.size()) || !fits(spec.std.size())) {
    return InvalidArgument("PrepareImage: mean/std have " + std::to_string(spec.mean.size()) + "/" +
                           std::to_string(spec.std.size()) + " entries; want 1 or " + std::to_string(channels));
  }
  if (spec.out_h < 1 || spec.out_h > kMaxImageSide || spec.out_w < 1 || spec.out_w > kMaxImageSide) {
    return InvalidArgument("PrepareImage: output " + std::to_string(spec.out_h) + "x" +
                           std::to_string(spec.out_w) + "; want sides 1.." + std::to_string(kMaxImageSide));
  }
  if (workspace == nullptr || workspace_bytes < need || !detail::IsAligned(workspace, 16)) {
    return InvalidArgument("PrepareImage: workspace needs " + std::to_string(need) +
                           " bytes, 16-byte aligned; got " + std::to_string(workspace_bytes));
  }
  const size_t table = detail::StatTableBytes(channels);
  std::vector<float> host(2 * table / sizeof(float), 0.0f);
  detail::ExpandStat(spec.mean, channels, host.data());
  detail::ExpandStat(spec.std, channels, host.data() + table / sizeof(float));
  INFERLINE_CUDA_CHECK(cudaMemcpyAsync(workspace, host.data(), 2 * table, cudaMemcpyHostToDevice, stream));
  INFERLINE_CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` dies with this call
  auto* base = static_cast<unsigned char*>(workspace);
  ImagePlan plan;
  plan.mean = reinterpret_cast<const float*>(base);
  plan.std = reinterpret_cast<const float*>(base + table);
  plan.descs = reinterpret_cast<ImageDesc*>(base + 2 * table);
  plan.channels = channels;
  plan.max_images = max_images;
  plan.out_h = spec.out_h;
  plan.out_w = spec.out_w;
  return plan;
}

Status RunImage(const ImagePlan& plan, const uint8_t* in, size_t in_bytes, const ImageDesc* host_descs,
                int64_t n, void* out, DataType out_dtype, Stream stream) {
  INFERLINE_RETURN_IF_ERROR(CheckRun(plan, in, in_bytes, host_descs, n, out, out_dtype));
  if (n == 0) return Status::Ok();
  INFERLINE_CUDA_CHECK(cudaMemcpyAsync(plan.descs, host_descs, static_cast<size_t>(n) * sizeof(ImageDesc),
                                       cudaMemcpyHostToDevice, stream));
  const ImageParams p{in, out, plan.mean, plan.std, plan.descs, static_cast<int32_t>(n),
                      static_cast<int32_t>(plan.channels), plan.out_h, plan.out_w};
  // Dispatch: output dtype, then vector width (kVec adjacent pixels per store need out_w % kVec
  // == 0, so every plane row starts a vector, and `out` aligned for one vector), then template.
  const bool row_vec = plan.out_w % kVec == 0;
  if (out_dtype == DataType::kFloat32) {
    return row_vec && detail::IsAligned(out, 16) ? Launch<float, kVec>(p, stream) : Launch<float, 1>(p, stream);
  }
  return row_vec && detail::IsAligned(out, 8) ? Launch<__half, kVec>(p, stream) : Launch<__half, 1>(p, stream);
}

}  // namespace inferline::kernels
