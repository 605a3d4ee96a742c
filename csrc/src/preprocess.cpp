// CPU preprocessing: validation and the fused tabular / image transforms. Semantics, the
// support table and the image tolerance are in inferline/preprocess.h.
//
// Bitwise NumPy parity for the tabular path relies on plain IEEE float32 operations in the
// order NumPy does them: the core builds with -ffp-contract=off and without fast-math, and this
// file never replaces a division by a reciprocal multiplication.
#include "inferline/preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

namespace inferline {
namespace {

using Kind = PreprocessSpec::Kind;

std::string FormatFloat(float v) {
  if (std::isnan(v)) return "nan";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
  return buf;
}

std::string Describe(DataType dtype, const Shape& shape) {
  return std::string(DataTypeName(dtype)) + " " + shape.ToString();
}

Status Fail(const std::string& context, const std::string& what) {
  return InvalidArgument(context + ": preprocessing." + what);
}

// Checks one statistics vector (`field` is e.g. "tabular.std"): its length is 1 or `n`, every
// entry is finite and, for a divisor, nonzero. `unit` says what `n` counts.
Status CheckStat(const std::vector<float>& values, int64_t n, bool divisor, const std::string& field,
                 const char* unit, const std::string& context) {
  const int64_t size = static_cast<int64_t>(values.size());
  if (size != 1 && size != n) {
    return Fail(context, field + " has " + std::to_string(size) + " entries; want 1 or " +
                             std::to_string(n) + " (" + unit + ")");
  }
  const char* want = divisor ? "; want a finite, nonzero value" : "; want a finite value";
  for (int64_t i = 0; i < size; ++i) {
    const float v = values[static_cast<size_t>(i)];
    if (!std::isfinite(v) || (divisor && v == 0.0f)) {
      return Fail(context, field + "[" + std::to_string(i) + "] is " + FormatFloat(v) + want);
    }
  }
  return Status::Ok();
}

Status CheckTabularSpec(const TabularSpec& t, const TensorSpec& input, const std::string& context) {
  const Shape& s = input.shape;
  if (input.dtype != DataType::kFloat32 || s.rank < 2) {
    return Fail(context, "tabular needs a float32 [-1, F, ...] input, got " + Describe(input.dtype, s));
  }
  for (int i = 1; i < s.rank; ++i) {
    if (s[i] < 1) {
      return Fail(context, "tabular needs fixed feature dims (all but dim 0 >= 1), got " +
                               Describe(input.dtype, s));
    }
  }
  const int64_t features = s.RowElements();
  INFERLINE_RETURN_IF_ERROR(CheckStat(t.mean, features, false, "tabular.mean", "features per row", context));
  INFERLINE_RETURN_IF_ERROR(CheckStat(t.std, features, true, "tabular.std", "features per row", context));
  if (std::isnan(t.nan_fill)) return Fail(context, "tabular.nan_fill is nan; want a number");
  if (std::isnan(t.clip_lo)) return Fail(context, "tabular.clip_lo is nan; want a number or -inf");
  if (std::isnan(t.clip_hi)) return Fail(context, "tabular.clip_hi is nan; want a number or inf");
  if (t.clip_lo > t.clip_hi) {
    return Fail(context, "tabular.clip_lo (" + FormatFloat(t.clip_lo) + ") > clip_hi (" +
                             FormatFloat(t.clip_hi) + ")");
  }
  return Status::Ok();
}

Status CheckSide(int32_t side, const char* field, const std::string& context) {
  if (side >= 1 && side <= kMaxImageSide) return Status::Ok();
  return Fail(context, std::string(field) + " is " + std::to_string(side) + "; want 1.." +
                           std::to_string(kMaxImageSide));
}

Status CheckImageSpec(const ImageSpec& m, const TensorSpec& input, const std::string& context) {
  const Shape& s = input.shape;
  if (input.dtype != DataType::kUInt8 || s.rank != 4) {
    return Fail(context, "image needs a uint8 NHWC input, got " + Describe(input.dtype, s));
  }
  if (s[3] < 1) {
    return Fail(context, "image needs a fixed channel count (dim 3 >= 1), got " + Describe(input.dtype, s));
  }
  if (s[1] == 0 || s[1] < -1 || s[2] == 0 || s[2] < -1) {
    return Fail(context, "image needs H and W (dims 1, 2) of -1 or >= 1, got " + Describe(input.dtype, s));
  }
  INFERLINE_RETURN_IF_ERROR(CheckSide(m.out_h, "image.out_h", context));
  INFERLINE_RETURN_IF_ERROR(CheckSide(m.out_w, "image.out_w", context));
  INFERLINE_RETURN_IF_ERROR(CheckStat(m.mean, s[3], false, "image.mean", "channels", context));
  return CheckStat(m.std, s[3], true, "image.std", "channels", context);
}

// ---- tabular ----------------------------------------------------------------------------------

// One element, NumPy's order of operations (see the header). `mean`/`sd` are this feature's.
inline float TabularElem(float v, float mean, float sd, float fill, float lo, float hi) noexcept {
  const float x = std::isnan(v) ? fill : v;
  float y = (x - mean) / sd;
  y = (y < lo) ? lo : y;  // NaN and ties keep y, as NumPy's clip does
  return (y > hi) ? hi : y;
}

// Rows of `f` features. kMeanVec / kStdVec pick per-feature arrays over a broadcast scalar.
// Whole blocks of kLanes run as a fixed-count inner loop, so g++ -O2 (whose default
// "very-cheap" cost model skips loops of unknown count) still vectorises them; -O3 does anyway.
template <bool kMeanVec, bool kStdVec>
void TabularRows(const TabularSpec& t, const float* __restrict in, float* __restrict out,
                 int64_t rows, int64_t f) noexcept {
  constexpr int kLanes = 16;
  const float* __restrict mean = t.mean.data();
  const float* __restrict sd = t.std.data();
  const float m0 = mean[0], s0 = sd[0];
  const float fill = t.nan_fill, lo = t.clip_lo, hi = t.clip_hi;
  for (int64_t r = 0; r < rows; ++r, in += f, out += f) {
    int64_t j = 0;
    for (; j + kLanes <= f; j += kLanes) {
      const float* __restrict bm = mean + (kMeanVec ? j : 0);
      const float* __restrict bs = sd + (kStdVec ? j : 0);
      for (int k = 0; k < kLanes; ++k) {
        out[j + k] = TabularElem(in[j + k], kMeanVec ? bm[k] : m0, kStdVec ? bs[k] : s0, fill, lo, hi);
      }
    }
    for (; j < f; ++j) {
      out[j] = TabularElem(in[j], kMeanVec ? mean[j] : m0, kStdVec ? sd[j] : s0, fill, lo, hi);
    }
  }
}

void PreprocessTabular(const TabularSpec& t, const TensorView& in, float* out) noexcept {
  const auto* src = static_cast<const float*>(in.data);
  const int64_t rows = in.shape[0], f = in.shape.RowElements();
  const bool mean_vec = t.mean.size() != 1, std_vec = t.std.size() != 1;
  if (mean_vec && std_vec) TabularRows<true, true>(t, src, out, rows, f);
  else if (mean_vec) TabularRows<true, false>(t, src, out, rows, f);
  else if (std_vec) TabularRows<false, true>(t, src, out, rows, f);
  else TabularRows<false, false>(t, src, out, rows, f);
}

// ---- image ------------------------------------------------------------------------------------

// One output coordinate along an axis: source offsets (index * stride) and the weight of o1.
struct Tap {
  int64_t o0, o1;
  float w;
};

// Half-pixel-centre taps for resizing `in_size` -> `out_size`, offsets scaled by `stride`.
void BuildTaps(int64_t in_size, int32_t out_size, int64_t stride, Tap* taps) noexcept {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const int64_t last = in_size - 1;
  for (int32_t o = 0; o < out_size; ++o) {
    const float s = std::max((static_cast<float>(o) + 0.5f) * scale - 0.5f, 0.0f);
    const int64_t i0 = std::min(static_cast<int64_t>(std::floor(s)), last);
    const int64_t i1 = std::min(i0 + 1, last);
    taps[o] = Tap{i0 * stride, i1 * stride, s - static_cast<float>(i0)};
  }
}

struct ResizePlan {
  const Tap* ty;  // out_h taps, offsets in bytes of a source row (W * C)
  const Tap* tx;  // out_w taps, offsets in pixels of C bytes
  int32_t out_h, out_w;
};

// One channel plane of one image: `src` points at channel c of pixel (0, 0).
void ResizePlane(const ResizePlan& p, const uint8_t* src, float mean, float sd, float* dst) noexcept {
  for (int32_t y = 0; y < p.out_h; ++y, dst += p.out_w) {
    const uint8_t* r0 = src + p.ty[y].o0;
    const uint8_t* r1 = src + p.ty[y].o1;
    const float wy = p.ty[y].w;
    for (int32_t x = 0; x < p.out_w; ++x) {
      const Tap& t = p.tx[x];
      const float wx = t.w;
      const float top = (1.0f - wx) * static_cast<float>(r0[t.o0]) + wx * static_cast<float>(r0[t.o1]);
      const float bot = (1.0f - wx) * static_cast<float>(r1[t.o0]) + wx * static_cast<float>(r1[t.o1]);
      const float v = (1.0f - wy) * top + wy * bot;
      dst[x] = (v - mean) / sd;
    }
  }
}

void PreprocessImage(const ImageSpec& m, const TensorView& in, float* out) noexcept {
  const int64_t n = in.shape[0], h = in.shape[1], w = in.shape[2], c = in.shape[3];
  std::vector<Tap> taps(static_cast<size_t>(m.out_h) + static_cast<size_t>(m.out_w));
  BuildTaps(h, m.out_h, w * c, taps.data());
  BuildTaps(w, m.out_w, c, taps.data() + m.out_h);
  const ResizePlan plan{taps.data(), taps.data() + m.out_h, m.out_h, m.out_w};
  const auto* src = static_cast<const uint8_t*>(in.data);
  const size_t plane = static_cast<size_t>(m.out_h) * static_cast<size_t>(m.out_w);
  for (int64_t i = 0; i < n; ++i, src += h * w * c) {
    for (int64_t ch = 0; ch < c; ++ch, out += plane) {
      const float mean = m.mean[m.mean.size() == 1 ? 0 : static_cast<size_t>(ch)];
      const float sd = m.std[m.std.size() == 1 ? 0 : static_cast<size_t>(ch)];
      ResizePlane(plan, src + ch, mean, sd, out);
    }
  }
}

bool StatFits(const std::vector<float>& values, int64_t n) {
  return values.size() == 1 || static_cast<int64_t>(values.size()) == n;
}

}  // namespace

Expected<TensorSpec> ResolvePreprocess(const PreprocessSpec& spec, const TensorSpec& input,
                                       const std::string& context) {
  switch (spec.kind) {
    case Kind::kNone:
      return input;
    case Kind::kTabular: {
      INFERLINE_RETURN_IF_ERROR(CheckTabularSpec(spec.tabular, input, context));
      return TensorSpec{input.name, DataType::kFloat32, input.shape};
    }
    case Kind::kImage: {
      INFERLINE_RETURN_IF_ERROR(CheckImageSpec(spec.image, input, context));
      const Shape out{input.shape[0], input.shape[3], spec.image.out_h, spec.image.out_w};
      return TensorSpec{input.name, DataType::kFloat32, out};
    }
  }
  return Fail(context, "kind " + std::to_string(static_cast<int>(spec.kind)) + " is unknown");
}

Status CheckPreprocessInput(const PreprocessSpec& spec, const TensorView& in, const std::string& context) {
  const Shape& s = in.shape;
  if (spec.kind == Kind::kNone) return Status::Ok();
  if (s.rank < 1 || s[0] < 0) {
    return Fail(context, "needs a batch dim >= 0, got " + Describe(in.dtype, s));
  }
  if (spec.kind == Kind::kTabular) {
    const int64_t f = s.RowElements();
    if (in.dtype != DataType::kFloat32 || s.rank < 2 || !StatFits(spec.tabular.mean, f) ||
        !StatFits(spec.tabular.std, f)) {
      return Fail(context, "tabular does not fit the request tensor " + Describe(in.dtype, s));
    }
  } else if (spec.kind == Kind::kImage) {
    if (in.dtype != DataType::kUInt8 || s.rank != 4) {
      return Fail(context, "image needs a uint8 NHWC request tensor, got " + Describe(in.dtype, s));
    }
    if (s[1] < 1 || s[2] < 1) {
      return Fail(context, "image needs H and W >= 1, got " + Describe(in.dtype, s));
    }
    if (s[3] < 1 || !StatFits(spec.image.mean, s[3]) || !StatFits(spec.image.std, s[3])) {
      return Fail(context, "image.mean/std do not fit the " + std::to_string(s[3]) +
                               " channels of the request tensor " + Describe(in.dtype, s));
    }
  }
  return Status::Ok();
}

void PreprocessRows(const PreprocessSpec& spec, const TensorView& in, void* out) noexcept {
  switch (spec.kind) {
    case Kind::kTabular:
      PreprocessTabular(spec.tabular, in, static_cast<float*>(out));
      return;
    case Kind::kImage:
      PreprocessImage(spec.image, in, static_cast<float*>(out));
      return;
    case Kind::kNone:
      break;
  }
  const size_t bytes = in.ByteSize();
  if (bytes > 0) std::memcpy(out, in.data, bytes);
}

size_t OutputRowBytes(const PreprocessSpec& spec, const TensorView& in) noexcept {
  if (spec.kind == Kind::kImage) {
    return static_cast<size_t>(in.shape[3]) * static_cast<size_t>(spec.image.out_h) *
           static_cast<size_t>(spec.image.out_w) * sizeof(float);
  }
  return in.RowBytes();  // tabular keeps float32 and the shape; kNone copies
}

}  // namespace inferline
