// inferline/kernels/preprocess_cuda.h — fused CUDA preprocessing: the GPU twins of the core's
// PreprocessRows (inferline/preprocess.h), with the same semantics, for a whole batch in device
// memory, in one launch per batch.
//
// Built only where nvcc exists: the CMake target inferline::kernels (a static library that
// links the CUDA runtime statically and defines INFERLINE_HAVE_CUDA=1 for its users). Including
// this header needs no CUDA headers: a stream is a `cudaStream_t`, spelled here through CUDA's
// own forward-declared struct (`CUstream_st*` is what cudaStream_t is), so a caller passes its
// cudaStream_t as is and nullptr is the legacy default stream. We chose this over `void*` for
// type safety, and over an #ifdef'd cudaStream_t so that the header is the same for every
// includer.
//
// Support table (device pointers; "aligned" = the 16-byte vector path is taken, otherwise the
// same kernel runs with scalar accesses; a misaligned element is an error):
//
//   kernel   input                        output                        vector path when
//   Tabular  FP32 [rows, F] dense,        FP32 or FP16 [rows, F] dense  in % 16 == 0 and out % 16 (FP32)
//            4-byte aligned                                             or % 8 (FP16) == 0; any F, any
//                                                                       rows (the flat tail is scalar)
//   Image    UINT8 NHWC, image i at       FP32 or FP16 NCHW             out_w % 4 == 0 and out % 16
//            in + descs[i].offset, own    [n, C, out_h, out_w] dense    (FP32) or % 8 (FP16) == 0
//            h x w, C channels for all
//
// Semantics (exactly preprocess.h's; every float op is an IEEE float32 op rounded to nearest,
// in the CPU twin's order, with no FMA contraction: the kernels build with --fmad=false and
// spell each op as __fadd_rn/__fsub_rn/__fmul_rn/__fdiv_rn):
//   Tabular FP32  bitwise equal to PreprocessRows (NaN fill on the raw value, (x - mean) / std,
//                 then the NumPy clip: NaN passes, a tie keeps y).
//   Tabular FP16  __float2half_rn of that float32 result: bitwise equal to converting the CPU
//                 twin's output.
//   Image FP32    bilinear, half-pixel centres, then (v - mean[c]) / std[c]: within
//                 preprocess.h's stated tolerance of its float64 reference, and by construction
//                 bitwise equal to the CPU twin (same float32 op order); the tests check both.
//   Image FP16    __float2half_rn of the float32 result.
//
// Usage, CUB style (the caller owns all device memory; nothing here allocates):
//   size_t bytes = TabularWorkspaceBytes(F);                // 1. query
//   cudaMalloc(&ws, bytes);                                  // 2. caller allocates, once
//   auto plan = PrepareTabular(spec, F, ws, bytes, stream);  // 3. at model load: uploads mean/std
//   RunTabular(*plan, d_in, rows, d_out, DataType::kFloat16, stream);  // 4. per batch
// The statistics are constant per model version, so they are uploaded once (step 3), not per
// batch. The image path also keeps the per-image descriptor table in its workspace: RunImage
// copies the batch's descriptors there (one small async copy) before its launch.
//
// Every Run checks its arguments first and returns INVALID_ARGUMENT without touching the
// device; launch errors are checked right after the launch. Errors from CUDA map to UNAVAILABLE
// (no device or driver), RESOURCE_EXHAUSTED (out of memory) or INTERNAL (anything else), with the
// CUDA error's name. Errors from kernels that already ran asynchronously show up at the caller's
// next synchronisation, as with any CUDA call.
//
// Launch settings (kernels/vec_io.cuh; UNTUNED until measured on the H200 with bench/gpu):
//   kThreads = 256, 1-D blocks: 8 warps a block, up to 8 resident blocks per SM on sm_90; the
//     usual start for memory-bound elementwise kernels (try 128 and 512 in the bench).
//   Tabular: one thread per 4-element vector (per element on the scalar path), grid =
//     ceil(rows * F / 4 / 256) blocks, no grid-stride loop: each byte is touched once, so there is
//     no reuse to gain from fewer, longer-lived threads. If the H200 shows < 80% of copy bandwidth,
//     the first knob is 2-4 vectors per thread (more bytes in flight per thread).
//   Image: grid (ceil(out_h * out_w / 4 / 256), min(n, 65535)): x covers one output plane, 4
//     adjacent output pixels per thread (all channels); y the images (looped past 65535). Taps
//     are computed per thread (a few float ops) rather than read from tables, since every image
//     has its own size; source bytes are read as scalars (gathers).
//
// Threads and streams: plans are small immutable values. RunTabular writes nothing but `out`, so
// one tabular workspace serves any number of streams. RunImage writes the descriptor slot of its
// workspace: give each stream that runs image batches concurrently its own image workspace.
#pragma once

#include <cstddef>
#include <cstdint>

#include "inferline/preprocess.h"
#include "inferline/status.h"
#include "inferline/tensor.h"

struct CUstream_st;  // CUDA's opaque stream type: cudaStream_t is CUstream_st*

namespace inferline::kernels {

using Stream = CUstream_st*;  // == cudaStream_t; nullptr is the default stream

// Largest element count of one tabular batch (rows * F) and of one image output plane: the
// kernels index with 32-bit integers. 2^31 - 1 floats is an 8 GiB batch.
inline constexpr int64_t kMaxTabularElements = 2147483647;
// Largest input image side accepted by RunImage (the output side limit is kMaxImageSide).
inline constexpr int32_t kMaxInputImageSide = 1 << 20;

// Number of CUDA devices visible to this process; 0 when there is no device or no driver (it
// never fails). Use it to pick the CPU path.
int CudaDeviceCount() noexcept;

// ---- tabular ------------------------------------------------------------------------------------

// A prepared tabular transform: device pointers into the caller's workspace plus the scalars.
struct TabularPlan {
  const float* mean = nullptr;  // device, `features` entries (a length-1 spec is broadcast)
  const float* std = nullptr;   // device, `features` entries
  int64_t features = 0;
  float nan_fill = 0.0f, clip_lo = 0.0f, clip_hi = 0.0f;
};

// Workspace bytes for a spec with `features` features per row (0 if features < 1).
size_t TabularWorkspaceBytes(int64_t features) noexcept;

// Uploads the per-feature tables into `workspace` (device memory, 16-byte aligned, at least
// TabularWorkspaceBytes(features) bytes) on `stream`, then synchronises `stream`: call it when a
// model version loads, not per batch. `spec` must have passed ResolvePreprocess; only what memory
// safety needs is checked again (mean/std lengths 1 or `features`).
Expected<TabularPlan> PrepareTabular(const TabularSpec& spec, int64_t features, void* workspace,
                                     size_t workspace_bytes, Stream stream);

// Transforms `rows` rows of plan.features float32 values at `in` (device) into `out` (device,
// dense, `out_dtype` kFloat32 or kFloat16), asynchronously on `stream`, in one launch. `in` and
// `out` must not overlap. rows == 0 is a no-op.
Status RunTabular(const TabularPlan& plan, const float* in, int64_t rows, void* out,
                  DataType out_dtype, Stream stream);

// ---- image ------------------------------------------------------------------------------------

// Where one image of a batch lies in the input buffer: `offset` bytes from its start, h x w
// pixels of C bytes each, dense NHWC.
struct ImageDesc {
  int64_t offset = 0;
  int32_t h = 0, w = 0;
};
static_assert(sizeof(ImageDesc) == 16, "ImageDesc is copied to the device as is");

// A prepared image transform: device pointers into the caller's workspace.
struct ImagePlan {
  const float* mean = nullptr;  // device, `channels` entries (a length-1 spec is broadcast)
  const float* std = nullptr;   // device, `channels` entries
  ImageDesc* descs = nullptr;   // device, room for `max_images` descriptors (rewritten per batch)
  int64_t channels = 0, max_images = 0;
  int32_t out_h = 0, out_w = 0;
};

// Workspace bytes for `channels` channels and batches of at most `max_images` images (0 if
// either is < 1).
size_t ImageWorkspaceBytes(int64_t channels, int64_t max_images) noexcept;

// Uploads the per-channel tables into `workspace` (as PrepareTabular; synchronises `stream`).
// `spec` must have passed ResolvePreprocess; checked again: mean/std lengths 1 or `channels`,
// 1 <= out_h, out_w <= kMaxImageSide.
Expected<ImagePlan> PrepareImage(const ImageSpec& spec, int64_t channels, int64_t max_images,
                                 void* workspace, size_t workspace_bytes, Stream stream);

// Resizes and normalises `n` images into `out` (device, dense NCHW [n, C, out_h, out_w],
// `out_dtype` kFloat32 or kFloat16) asynchronously on `stream`, in one launch. `in` is a device
// buffer of `in_bytes` bytes holding every image at its descriptor's offset. `host_descs` (n
// entries, host memory) are checked (h, w in 1..kMaxInputImageSide, the image inside the
// buffer), then copied into the workspace on `stream`. With pinned host memory that copy is
// asynchronous: keep `host_descs` unchanged until `stream` has passed this call. With pageable
// memory the runtime stages the buffer before returning (it may wait for `stream` to do so).
// n == 0 is a no-op; n <= plan.max_images.
Status RunImage(const ImagePlan& plan, const uint8_t* in, size_t in_bytes, const ImageDesc* host_descs,
                int64_t n, void* out, DataType out_dtype, Stream stream);

}  // namespace inferline::kernels
