// Tests for inferline/preprocess.h: both transforms against scalar references over a table of
// cases (tabular bitwise; image within the header's tolerance, exact at identity size),
// hand-computed bilinear values, and every validation error by the field it names.
#include "inferline/preprocess.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"

namespace inferline {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
const char kCtx[] = "model 'digits' version 3 input 'x'";
using Kind = PreprocessSpec::Kind;

// ---- references ---------------------------------------------------------------------------------

// NumPy float32 np.clip((np.where(np.isnan(v), fill, v) - mean) / std, lo, hi), element by
// element. np.clip propagates NaN, and NumPy 2.4 keeps x on a tie with a bound (observed:
// np.clip(np.float32(-0.0), 0, 1) is -0.0), which only shows for signed zeros.
float ClipLo(float x, float lo) { return std::isnan(x) ? x : (x < lo ? lo : x); }
float ClipHi(float x, float hi) { return std::isnan(x) ? x : (x > hi ? hi : x); }

std::vector<float> RefTabular(const TabularSpec& t, const std::vector<float>& in, size_t f) {
  std::vector<float> out(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const size_t j = i % f;
    const float x = std::isnan(in[i]) ? t.nan_fill : in[i];
    const float diff = x - t.mean[t.mean.size() == 1 ? 0 : j];
    const float y = diff / t.std[t.std.size() == 1 ? 0 : j];
    out[i] = ClipHi(ClipLo(y, t.clip_lo), t.clip_hi);
  }
  return out;
}

using inferline::testing::RefCoord;
using inferline::testing::RefTap;

// Bilinear NHWC uint8 -> normalised NCHW, interpolation and normalisation in float64.
std::vector<double> RefImage(const ImageSpec& m, const std::vector<uint8_t>& in, int64_t n, int64_t h,
                             int64_t w, int64_t c) {
  std::vector<double> out;
  auto px = [&](int64_t i, int64_t y, int64_t x, int64_t ch) {
    return static_cast<double>(in[static_cast<size_t>(((i * h + y) * w + x) * c + ch)]);
  };
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) {
      const double mean = m.mean[m.mean.size() == 1 ? 0 : static_cast<size_t>(ch)];
      const double sd = m.std[m.std.size() == 1 ? 0 : static_cast<size_t>(ch)];
      for (int64_t y = 0; y < m.out_h; ++y) {
        const RefTap ty = RefCoord(y, h, m.out_h);
        for (int64_t x = 0; x < m.out_w; ++x) {
          const RefTap tx = RefCoord(x, w, m.out_w);
          const double wy = ty.w, wx = tx.w;
          const double top = (1 - wx) * px(i, ty.i0, tx.i0, ch) + wx * px(i, ty.i0, tx.i1, ch);
          const double bot = (1 - wx) * px(i, ty.i1, tx.i0, ch) + wx * px(i, ty.i1, tx.i1, ch);
          out.push_back(((1 - wy) * top + wy * bot - mean) / sd);
        }
      }
    }
  }
  return out;
}

// ---- helpers ------------------------------------------------------------------------------------

std::vector<float> Uniform(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Rows of features with NaN, +-inf, denormals and values equal to the feature's mean mixed in.
std::vector<float> TabularInput(std::mt19937& rng, const TabularSpec& t, size_t count, size_t f) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_int_distribution<int> pick(0, 19);
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) {
    switch (pick(rng)) {
      case 0: case 1: v[i] = kNaN; break;
      case 2: v[i] = (i % 2) ? INFINITY : -INFINITY; break;
      case 3: v[i] = 1e-40f; break;
      case 4: v[i] = t.mean[t.mean.size() == 1 ? 0 : i % f]; break;
      default: v[i] = normal(rng);
    }
  }
  return v;
}

PreprocessSpec MakeSpec(TabularSpec t) {
  PreprocessSpec s;
  s.kind = Kind::kTabular;
  s.tabular = std::move(t);
  return s;
}

PreprocessSpec MakeSpec(ImageSpec m) {
  PreprocessSpec s;
  s.kind = Kind::kImage;
  s.image = std::move(m);
  return s;
}

// ---- tabular ------------------------------------------------------------------------------------

struct TabularCase {
  const char* name;
  Shape shape;  // request shape; dim 0 = rows
  bool broadcast_mean, broadcast_std;
  float nan_fill, clip_lo, clip_hi;
};

const TabularCase kTabularCases[] = {
    {"f1", {4, 1}, false, false, 0.0f, -INFINITY, INFINITY},
    {"f7", {5, 7}, false, false, 0.0f, -INFINITY, INFINITY},
    {"f7_broadcast_mean", {5, 7}, true, false, 2.5f, -INFINITY, INFINITY},
    {"f7_broadcast_std", {3, 7}, false, true, -1.0f, -1.0f, INFINITY},
    {"f64_broadcast_both", {6, 64}, true, true, 0.5f, -INFINITY, 1.5f},
    {"f64_rank3", {3, 4, 16}, false, false, 0.0f, -2.0f, 2.0f},
    {"f1000_clip", {4, 1000}, false, false, -1.5f, -2.0f, 3.0f},
    {"f1000_clip_zero_width", {2, 1000}, true, false, 7.0f, 0.0f, 0.0f},
    {"f1000_clip_at_zero", {3, 1000}, false, false, 0.0f, 0.0f, INFINITY},
    {"f33_clip_below_zero", {9, 33}, false, true, 0.0f, -INFINITY, 0.0f},
};

class TabularTest : public ::testing::TestWithParam<TabularCase> {};

TEST_P(TabularTest, BitwiseEqualToNumPyReference) {
  const TabularCase& tc = GetParam();
  const size_t f = static_cast<size_t>(tc.shape.RowElements());
  const size_t count = static_cast<size_t>(tc.shape.NumElements());
  std::mt19937 rng(static_cast<uint32_t>(count * 31 + f));
  PreprocessSpec spec;
  spec.kind = Kind::kTabular;
  TabularSpec& t = spec.tabular;
  t.mean = Uniform(rng, tc.broadcast_mean ? 1 : f, -2.0f, 2.0f);
  t.std = Uniform(rng, tc.broadcast_std ? 1 : f, 0.1f, 5.0f);
  for (size_t j = 0; j < t.std.size(); j += 2) t.std[j] = -t.std[j];  // -0 results at x == mean
  t.nan_fill = tc.nan_fill;
  t.clip_lo = tc.clip_lo;
  t.clip_hi = tc.clip_hi;

  TensorSpec sig{"x", DataType::kFloat32, tc.shape};
  sig.shape[0] = -1;
  auto resolved = ResolvePreprocess(spec, sig, kCtx);
  ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
  EXPECT_EQ(resolved->dtype, DataType::kFloat32);
  EXPECT_EQ(resolved->shape, sig.shape);

  const std::vector<float> in = TabularInput(rng, t, count, f);
  const TensorView view{in.data(), DataType::kFloat32, tc.shape};
  ASSERT_TRUE(CheckPreprocessInput(spec, view, kCtx).ok());
  ASSERT_EQ(OutputRowBytes(spec, view), f * sizeof(float));
  std::vector<float> out(count, -123.0f);
  PreprocessRows(spec, view, out.data());

  const std::vector<float> ref = RefTabular(t, in, f);
  for (size_t i = 0; i < count; ++i) {
    ASSERT_EQ(std::memcmp(&out[i], &ref[i], sizeof(float)), 0)
        << "element " << i << " input " << in[i] << ": got " << out[i] << ", want " << ref[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, TabularTest, ::testing::ValuesIn(kTabularCases),
                         [](const auto& tp) { return std::string(tp.param.name); });

TEST(Tabular, SignedZeroTiesKeepTheValueLikeNumPy) {
  const PreprocessSpec spec = MakeSpec(TabularSpec{{1.0f}, {-2.0f}, 0.0f, 0.0f, INFINITY});
  const std::vector<float> in = {1.0f, kNaN, 3.0f, -1.0f};  // (1 - 1) / -2 == -0, kept by clip
  std::vector<float> out(4);
  PreprocessRows(spec, TensorView{in.data(), DataType::kFloat32, Shape{1, 4}}, out.data());
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_TRUE(std::signbit(out[0]));
  EXPECT_EQ(out[1], 0.5f);  // NaN -> fill 0 -> (0 - 1) / -2
  EXPECT_EQ(out[2], 0.0f);  // -1 clipped
  EXPECT_EQ(out[3], 1.0f);
}

// ---- image --------------------------------------------------------------------------------------

struct ImageCase {
  const char* name;
  int64_t h, w, c;
  int32_t out_h, out_w;
  bool broadcast;
};

const ImageCase kImageCases[] = {
    {"upscale", 4, 5, 3, 9, 11, false},
    {"downscale", 17, 13, 3, 5, 4, false},
    {"identity", 6, 7, 3, 6, 7, false},
    {"identity_gray_broadcast", 3, 5, 1, 3, 5, true},
    {"from_1x1", 1, 1, 1, 3, 4, false},
    {"to_1x1", 5, 6, 3, 1, 1, false},
    {"one_to_one", 1, 1, 1, 1, 1, true},
    {"non_square_mixed", 8, 3, 1, 3, 10, false},
    {"large_downscale_broadcast", 64, 48, 3, 7, 9, true},
    {"upscale_2x_broadcast", 2, 2, 3, 4, 4, true},
    {"odd_ratio", 7, 5, 3, 10, 3, false},
};

class ImageTest : public ::testing::TestWithParam<ImageCase> {};

TEST_P(ImageTest, MatchesReferenceWithinTolerance) {
  const ImageCase& ic = GetParam();
  const int64_t n = 2;
  std::mt19937 rng(static_cast<uint32_t>(ic.h * 1000 + ic.w * 10 + ic.c));
  PreprocessSpec spec;
  spec.kind = Kind::kImage;
  ImageSpec& m = spec.image;
  m.out_h = ic.out_h;
  m.out_w = ic.out_w;
  const size_t stats = ic.broadcast ? 1 : static_cast<size_t>(ic.c);
  m.mean = Uniform(rng, stats, 0.0f, 255.0f);
  m.std = Uniform(rng, stats, 0.5f, 80.0f);
  if (stats > 1) m.std[1] = -m.std[1];

  const TensorSpec sig{"img", DataType::kUInt8, Shape{-1, -1, -1, ic.c}};
  auto resolved = ResolvePreprocess(spec, sig, kCtx);
  ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
  EXPECT_EQ(resolved->shape, (Shape{-1, ic.c, ic.out_h, ic.out_w}));
  EXPECT_EQ(resolved->dtype, DataType::kFloat32);

  std::vector<uint8_t> in(static_cast<size_t>(n * ic.h * ic.w * ic.c));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& p : in) p = static_cast<uint8_t>(byte(rng));
  const TensorView view{in.data(), DataType::kUInt8, Shape{n, ic.h, ic.w, ic.c}};
  ASSERT_TRUE(CheckPreprocessInput(spec, view, kCtx).ok());
  const size_t row_floats = static_cast<size_t>(ic.c * ic.out_h * ic.out_w);
  ASSERT_EQ(OutputRowBytes(spec, view), row_floats * sizeof(float));
  std::vector<float> out(static_cast<size_t>(n) * row_floats + 1, -777.0f);  // +1: overrun canary
  PreprocessRows(spec, view, out.data());

  const std::vector<double> ref = RefImage(m, in, n, ic.h, ic.w, ic.c);
  ASSERT_EQ(ref.size(), out.size() - 1);
  EXPECT_EQ(out.back(), -777.0f);
  const size_t plane = static_cast<size_t>(ic.out_h * ic.out_w), c = static_cast<size_t>(ic.c);
  const bool identity = ic.h == ic.out_h && ic.w == ic.out_w;
  for (size_t i = 0; i < ref.size(); ++i) {
    const size_t ch = (i / plane) % c;
    const float mean = m.mean[ic.broadcast ? 0 : ch], sd = m.std[ic.broadcast ? 0 : ch];
    if (identity) {  // exact: out = (float(p) - mean) / std
      const float p = static_cast<float>(in[(i / plane / c * plane + i % plane) * c + ch]);
      ASSERT_EQ(out[i], (p - mean) / sd) << "output element " << i;
    }
    ASSERT_NEAR(out[i], ref[i], 1e-4 * std::max(1.0, 1.0 / std::fabs(sd))) << "output element " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, ImageTest, ::testing::ValuesIn(kImageCases),
                         [](const auto& tp) { return std::string(tp.param.name); });

// Hand-computed half-pixel bilinear values (a 2x2 -> 4x4 upscale as PyTorch's
// interpolate(mode="bilinear", align_corners=False) gives it), all exact in binary floating point.
TEST(Image, HandComputedValues) {
  const std::vector<uint8_t> up_in = {0, 100, 200, 255};
  std::vector<float> up(16);
  PreprocessRows(MakeSpec(ImageSpec{4, 4, {0.0f}, {1.0f}}),
                 TensorView{up_in.data(), DataType::kUInt8, Shape{1, 2, 2, 1}}, up.data());
  EXPECT_EQ(up, (std::vector<float>{0, 25, 75, 100, 50, 72.1875f, 116.5625f, 138.75f, 150, 166.5625f,
                                    199.6875f, 216.25f, 200, 213.75f, 241.25f, 255}));
  const std::vector<uint8_t> down_in = {0, 10, 20, 30, 40, 50, 60, 70};  // H 2, W 4 -> 1 x 2
  std::vector<float> down(2);
  PreprocessRows(MakeSpec(ImageSpec{1, 2, {5.0f}, {2.0f}}),
                 TensorView{down_in.data(), DataType::kUInt8, Shape{1, 2, 4, 1}}, down.data());
  EXPECT_EQ(down, (std::vector<float>{(25.0f - 5) / 2, (45.0f - 5) / 2}));  // means of 2x2 blocks
}

// ---- none, sizes, empty batches -----------------------------------------------------------------

TEST(Preprocess, NoneIsUnchangedAndCopies) {
  const PreprocessSpec spec;
  const TensorSpec sig{"ids", DataType::kInt64, Shape{-1, 3}};
  auto resolved = ResolvePreprocess(spec, sig, kCtx);
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(resolved->name, "ids");
  EXPECT_EQ(resolved->dtype, DataType::kInt64);
  EXPECT_EQ(resolved->shape, sig.shape);
  const std::vector<int64_t> in = {1, -2, 3, 4, 5, 1LL << 40};
  const TensorView view{in.data(), DataType::kInt64, Shape{2, 3}};
  EXPECT_TRUE(CheckPreprocessInput(spec, view, kCtx).ok());
  EXPECT_EQ(OutputRowBytes(spec, view), 24u);
  std::vector<int64_t> out(6);
  PreprocessRows(spec, view, out.data());
  EXPECT_EQ(out, in);
}

TEST(Preprocess, EmptyBatchWritesNothing) {
  const PreprocessSpec tab = MakeSpec(TabularSpec{{0.0f}, {1.0f}});
  PreprocessRows(tab, TensorView{nullptr, DataType::kFloat32, Shape{0, 5}}, nullptr);
  const PreprocessSpec img = MakeSpec(ImageSpec{2, 2, {0.0f}, {1.0f}});
  PreprocessRows(img, TensorView{nullptr, DataType::kUInt8, Shape{0, 3, 3, 3}}, nullptr);
  PreprocessRows(PreprocessSpec{}, TensorView{nullptr, DataType::kFloat32, Shape{0, 5}}, nullptr);
}

// ---- validation errors --------------------------------------------------------------------------

PreprocessSpec GoodTabular() {
  return MakeSpec(TabularSpec{std::vector<float>(7, 0.5f), std::vector<float>(7, 2.0f)});
}

PreprocessSpec GoodImage() {
  return MakeSpec(ImageSpec{4, 4, {120.0f, 115.0f, 100.0f}, {58.0f, 57.0f, 57.5f}});
}

using Edit = void (*)(PreprocessSpec&);
struct ErrorCase {
  const char* name;
  Edit edit;  // applied to a good spec
  TensorSpec input;
  std::vector<std::string> want;  // substrings of the message
};

void Keep(PreprocessSpec&) {}

::testing::AssertionResult Names(const Status& st, const std::vector<std::string>& want) {
  if (st.code() != StatusCode::kInvalidArgument) return ::testing::AssertionFailure() << st.ToString();
  if (st.message().rfind(std::string(kCtx) + ": ", 0) != 0) {
    return ::testing::AssertionFailure() << "no context: " << st.message();
  }
  for (const std::string& w : want) {
    if (st.message().find(w) == std::string::npos) {
      return ::testing::AssertionFailure() << st.message() << "\n  lacks: " << w;
    }
  }
  return ::testing::AssertionSuccess();
}

void ExpectErrors(const PreprocessSpec& good, const std::vector<ErrorCase>& cases) {
  for (const ErrorCase& ec : cases) {
    SCOPED_TRACE(ec.name);
    PreprocessSpec spec = good;
    ec.edit(spec);
    auto r = ResolvePreprocess(spec, ec.input, kCtx);
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(Names(r.status(), ec.want));
  }
}

const TensorSpec kTab{"x", DataType::kFloat32, Shape{-1, 7}};
const TensorSpec kImg{"img", DataType::kUInt8, Shape{-1, -1, -1, 3}};

TEST(ResolvePreprocess, TabularErrorsNameTheField) {
  using S = PreprocessSpec;
  ExpectErrors(GoodTabular(), {
      {"std0", [](S& s) { s.tabular.std[3] = 0.0f; }, kTab, {"preprocessing.tabular.std[3] is 0"}},
      {"std_nan", [](S& s) { s.tabular.std[5] = kNaN; }, kTab, {"preprocessing.tabular.std[5] is nan"}},
      {"std_inf", [](S& s) { s.tabular.std[0] = -INFINITY; }, kTab, {"tabular.std[0] is -inf"}},
      {"std_empty", [](S& s) { s.tabular.std.clear(); }, kTab, {"tabular.std has 0 entries; want 1 or 7"}},
      {"mean_len", [](S& s) { s.tabular.mean.resize(3); }, kTab,
       {"preprocessing.tabular.mean has 3 entries; want 1 or 7 (features per row)"}},
      {"mean_nan", [](S& s) { s.tabular.mean[2] = kNaN; }, kTab, {"preprocessing.tabular.mean[2] is nan"}},
      {"lo_gt_hi", [](S& s) { s.tabular.clip_lo = 2; s.tabular.clip_hi = 1; }, kTab,
       {"preprocessing.tabular.clip_lo (2) > clip_hi (1)"}},
      {"hi_nan", [](S& s) { s.tabular.clip_hi = kNaN; }, kTab, {"preprocessing.tabular.clip_hi is nan"}},
      {"fill_nan", [](S& s) { s.tabular.nan_fill = kNaN; }, kTab, {"preprocessing.tabular.nan_fill is nan"}},
      {"dtype", Keep, {"x", DataType::kInt64, Shape{-1, 7}},
       {"preprocessing.tabular needs a float32", "got int64 [-1, 7]"}},
      {"rank", Keep, {"x", DataType::kFloat32, Shape{-1}},
       {"preprocessing.tabular needs a float32", "got float32 [-1]"}},
      {"free_dims", Keep, {"x", DataType::kFloat32, Shape{-1, 7, -1}},
       {"preprocessing.tabular needs fixed feature dims", "got float32 [-1, 7, -1]"}},
      {"kind", [](S& s) { s.kind = static_cast<Kind>(9); }, kTab, {"preprocessing.kind 9 is unknown"}},
  });
}

TEST(ResolvePreprocess, ImageErrorsNameTheField) {
  using S = PreprocessSpec;
  using D = DataType;
  ExpectErrors(GoodImage(), {
      {"dtype", Keep, {"img", D::kFloat32, Shape{-1, 64}},
       {"preprocessing.image needs a uint8 NHWC input, got float32 [-1, 64]"}},
      {"rank", Keep, {"img", D::kUInt8, Shape{-1, 8, 8}},
       {"image needs a uint8 NHWC input, got uint8 [-1, 8, 8]"}},
      {"out_h0", [](S& s) { s.image.out_h = 0; }, kImg, {"preprocessing.image.out_h is 0; want 1..32768"}},
      {"out_w_neg", [](S& s) { s.image.out_w = -3; }, kImg, {"preprocessing.image.out_w is -3"}},
      {"out_w_huge", [](S& s) { s.image.out_w = 40000; }, kImg, {"preprocessing.image.out_w is 40000"}},
      {"channels", Keep, {"img", D::kUInt8, Shape{-1, -1, -1, 4}},
       {"preprocessing.image.mean has 3 entries; want 1 or 4 (channels)"}},
      {"std_len", [](S& s) { s.image.std.resize(2); }, kImg,
       {"preprocessing.image.std has 2 entries; want 1 or 3"}},
      {"std0", [](S& s) { s.image.std[1] = 0.0f; }, kImg, {"preprocessing.image.std[1] is 0"}},
      {"mean_inf", [](S& s) { s.image.mean[2] = INFINITY; }, kImg, {"preprocessing.image.mean[2] is inf"}},
      {"free_channels", Keep, {"img", D::kUInt8, Shape{-1, 8, 8, -1}},
       {"preprocessing.image needs a fixed channel count", "got uint8 [-1, 8, 8, -1]"}},
      {"zero_h", Keep, {"img", D::kUInt8, Shape{-1, 0, 8, 3}}, {"preprocessing.image needs H and W"}},
  });
}

TEST(ResolvePreprocess, GoodSpecsResolve) {
  EXPECT_TRUE(ResolvePreprocess(GoodTabular(), kTab, kCtx).ok());
  const TensorSpec fixed_h{"i", DataType::kUInt8, Shape{-1, 32, -1, 3}};
  EXPECT_TRUE(ResolvePreprocess(GoodImage(), fixed_h, kCtx).ok());
  PreprocessSpec lo_eq_hi = GoodTabular();
  lo_eq_hi.tabular.clip_lo = lo_eq_hi.tabular.clip_hi = 1.0f;
  EXPECT_TRUE(ResolvePreprocess(lo_eq_hi, kTab, kCtx).ok());
}

TEST(CheckPreprocessInput, RejectsWhatTheSignatureAllows) {
  const PreprocessSpec img = GoodImage();
  const uint8_t px[3] = {};
  auto check_img = [&](const Shape& s) {
    return CheckPreprocessInput(img, TensorView{px, DataType::kUInt8, s}, kCtx);
  };
  EXPECT_TRUE(check_img(Shape{1, 1, 1, 3}).ok());
  EXPECT_TRUE(Names(check_img(Shape{1, 0, 1, 3}), {"image needs H and W >= 1, got uint8 [1, 0, 1, 3]"}));
  EXPECT_TRUE(Names(check_img(Shape{1, 1, 3, 1}), {"image.mean/std do not fit the 1 channels"}));
  const float row[5] = {};
  const Status feats = CheckPreprocessInput(GoodTabular(), {row, DataType::kFloat32, Shape{1, 5}}, kCtx);
  EXPECT_TRUE(Names(feats, {"tabular does not fit the request tensor float32 [1, 5]"}));
}

}  // namespace
}  // namespace inferline
