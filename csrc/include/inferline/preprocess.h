// inferline/preprocess.h — CPU preprocessing fused into the copy of request rows into a batch.
//
// A PreprocessSpec travels with a model version. When the version loads, ResolvePreprocess
// checks the spec against the request-facing input signature and returns the backend-facing
// one. Per request, CheckPreprocessInput checks what the spec needs beyond the signature; the
// engine then calls PreprocessRows instead of memcpy when it copies the rows into the batch.
//
// Support table (request-facing -> backend-facing; dim 0 is the batch dim, -1):
//
//   kind      input dtype  input layout                    output dtype  output layout
//   kNone     any          any                             unchanged     unchanged (memcpy)
//   kTabular  FP32 only    [-1, d1, ..., dk], all di >= 1  FP32          same shape
//                          (F = d1*...*dk features a row)
//   kImage    UINT8 only   NHWC [-1, H, W, C]; H, W may    FP32          NCHW [-1, C, out_h, out_w]
//                          be -1 (any size per request);
//                          C fixed >= 1
//
// Tabular semantics, per element j of a row (every step in float32, no FMA, no reciprocal):
//   x = isnan(v) ? nan_fill : v
//   y = (x - mean[j]) / std[j]                       (mean/std of length 1 broadcast)
//   y = (y < clip_lo) ? clip_lo : y                  (= std::min(std::max(y, lo), hi): NaN
//   y = (y > clip_hi) ? clip_hi : y                   passes through, a tie keeps y)
// This is bitwise equal to NumPy float32 (checked against NumPy 2.4)
//   np.clip((np.where(np.isnan(v), fill, v) - mean) / std, lo, hi).
// The one version-dependent detail is a signed-zero tie (y = -0 with clip_lo = +0): NumPy 2.4
// keeps y, as here; a NumPy whose clip loop returns the bound on a tie differs only there.
//
// Image semantics: bilinear resize with half-pixel centres, no antialias (OpenCV INTER_LINEAR,
// PyTorch interpolate(mode="bilinear", align_corners=False)). For each output row y, in float32:
//   sy = max((float(y) + 0.5f) * (float(H) / float(out_h)) - 0.5f, 0.0f)
//   y0 = min(int(floor(sy)), H - 1);  y1 = min(y0 + 1, H - 1);  wy = sy - float(y0)
// and the same for x with W, out_w. Then, per channel c (p00 = in[y0][x0][c], p01 = in[y0][x1][c],
// p10 = in[y1][x0][c], p11 = in[y1][x1][c], as float):
//   v = (1 - wy) * ((1 - wx) * p00 + wx * p01) + wy * ((1 - wx) * p10 + wx * p11)
//   out[c][y][x] = (v - mean[c]) / std[c]             (mean/std in the 0..255 pixel scale)
// Tolerance: against a reference that computes sy/sx/wy/wx in float32 as above and the rest in
// float64, |out - ref| <= 1e-4 * max(1, 1 / |std[c]|) for |mean[c]| <= 255 (i.e. abs 1e-4 in the
// normalised scale for pixel-scale std >= 1; the float32 pixel value v is within 1e-4 of exact).
// The identity size (out_h == H, out_w == W) is exact: out = (float(p) - mean) / std.
//
// Validation (ResolvePreprocess): mean and std have length 1 or F (tabular) / C (image); every
// mean entry is finite; every std entry is finite and nonzero; nan_fill is not NaN; clip_lo and
// clip_hi are not NaN and clip_lo <= clip_hi; 1 <= out_h, out_w <= kMaxImageSide.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "inferline/status.h"
#include "inferline/tensor.h"

namespace inferline {

// Largest accepted ImageSpec::out_h / out_w.
inline constexpr int32_t kMaxImageSide = 32768;

struct TabularSpec {            // float32 input [-1, F] (or [-1, d1, d2, ...], F = d1*d2*...)
  std::vector<float> mean;      // length F, or length 1 (broadcast to all features)
  std::vector<float> std;       // same length rule; every entry finite and != 0
  float nan_fill = 0.0f;        // NaN inputs are replaced by this RAW value before normalising
  float clip_lo = -INFINITY;    // after normalising, clip to [clip_lo, clip_hi]; lo <= hi
  float clip_hi = INFINITY;
};

struct ImageSpec {              // uint8 NHWC input [-1, H_in, W_in, C]; H_in/W_in may be -1
  int32_t out_h = 0, out_w = 0; // > 0
  std::vector<float> mean;      // per channel (length C, or 1 = broadcast), 0..255 pixel scale
  std::vector<float> std;       // per channel, finite, != 0
};

struct PreprocessSpec {
  enum class Kind : uint8_t { kNone, kTabular, kImage } kind = Kind::kNone;
  TabularSpec tabular;
  ImageSpec image;
};

// Checks `spec` against the request-facing input signature and returns the backend-facing
// signature (tabular: float32, same shape; image: float32 [-1, C, out_h, out_w]; none:
// unchanged). Errors are INVALID_ARGUMENT and name `context` (e.g. "model 'digits' version 3
// input 'x'") and the field at fault, e.g. "...: preprocessing.tabular.std[3] is 0; ..." or
// "...: preprocessing.image needs a uint8 NHWC input, got FP32 [-1, 64]".
Expected<TensorSpec> ResolvePreprocess(const PreprocessSpec& spec, const TensorSpec& input,
                                       const std::string& context);

// Checks one request tensor that already matched the input signature, for what the spec needs
// beyond it (image: rank 4 uint8, H_in, W_in >= 1 and channels == C; tabular: float32 with F
// features a row). INVALID_ARGUMENT naming `context` otherwise.
Status CheckPreprocessInput(const PreprocessSpec& spec, const TensorView& in,
                            const std::string& context);

// Transforms all in.shape[0] rows of `in` and writes them densely to `out` (the backend-facing
// row layout, row r at out + r * OutputRowBytes). kNone is a plain memcpy. `in` must have passed
// CheckPreprocessInput and `out` must not overlap it. kImage allocates its O(out_h + out_w)
// index tables once per call; running out of memory there terminates.
void PreprocessRows(const PreprocessSpec& spec, const TensorView& in, void* out) noexcept;

// Bytes of one output row (the backend-facing row for `in`).
size_t OutputRowBytes(const PreprocessSpec& spec, const TensorView& in) noexcept;

}  // namespace inferline
