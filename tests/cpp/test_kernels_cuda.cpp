// Tests for inferline/kernels/preprocess_cuda.h: the GPU kernels against their CPU twin
// (PreprocessRows) over tables of cases, plus argument checks.
//   Tabular: bitwise for FP32; FP16 bitwise equal to __float2half_rn of the CPU twin's FP32.
//   Image:   FP32 within preprocess.h's tolerance of a float64 reference (and, separately,
//            bitwise equal to the CPU twin); FP16 within that tolerance plus half rounding
//            (|ref| * 2^-11 + 2^-25), and bitwise equal to __float2half_rn of the CPU twin.
// Device cases skip (GTEST_SKIP) when no CUDA device is visible; with INFERLINE_REQUIRE_GPU=1
// in the environment (bench/gpu/run_device.sh sets it) they fail instead. The argument checks
// need no device: they return before any CUDA call.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "inferline/kernels/preprocess_cuda.h"
#include "inferline/preprocess.h"

#include "test_util.h"

namespace inferline::kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
using Kind = PreprocessSpec::Kind;

// ---- device helpers -----------------------------------------------------------------------------

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) err_ = cudaMalloc(&ptr_, bytes);
  }
  ~DeviceBuffer() { if (ptr_ != nullptr) (void)cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  bool ok() const { return err_ == cudaSuccess; }
  unsigned char* get() const { return static_cast<unsigned char*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  cudaError_t err_ = cudaSuccess;
};

// Device cases: skip without a device, unless the environment demands one.
class KernelsCudaDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() > 0) return;
    if (std::getenv("INFERLINE_REQUIRE_GPU") != nullptr) {
      FAIL() << "INFERLINE_REQUIRE_GPU is set but no CUDA device is visible";
    }
    GTEST_SKIP() << "no CUDA device visible (cudaGetDeviceCount)";
  }
};

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr
#define ASSERT_STATUS_OK(expr)                        \
  do {                                                \
    const ::inferline::Status _st = (expr);           \
    ASSERT_TRUE(_st.ok()) << #expr << ": " << _st.ToString(); \
  } while (0)

uint16_t HalfBits(float v) { return __half_as_ushort(__float2half_rn(v)); }
float HalfToFloat(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

uint32_t FloatBits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

// Copies the `count` outputs of `out_dtype` at `dev` back as bit patterns (FP32: 32-bit words,
// FP16: 16-bit words, widened).
std::vector<uint32_t> Download(const unsigned char* dev, size_t count, DataType out_dtype) {
  std::vector<uint32_t> bits(count);
  if (out_dtype == DataType::kFloat32) {
    std::vector<float> host(count);
    EXPECT_EQ(cudaMemcpy(host.data(), dev, count * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    for (size_t i = 0; i < count; ++i) bits[i] = FloatBits(host[i]);
  } else {
    std::vector<uint16_t> host(count);
    EXPECT_EQ(cudaMemcpy(host.data(), dev, count * sizeof(uint16_t), cudaMemcpyDeviceToHost), cudaSuccess);
    for (size_t i = 0; i < count; ++i) bits[i] = host[i];
  }
  return bits;
}

// Expected bit patterns: the CPU twin's float32, or its __float2half_rn.
std::vector<uint32_t> ExpectedBits(const std::vector<float>& cpu, DataType out_dtype) {
  std::vector<uint32_t> bits(cpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) {
    bits[i] = out_dtype == DataType::kFloat32 ? FloatBits(cpu[i]) : HalfBits(cpu[i]);
  }
  return bits;
}

// Number of differing entries; the first few are reported.
size_t CountBitMismatches(const std::vector<uint32_t>& got, const std::vector<uint32_t>& want,
                          const std::string& what) {
  size_t bad = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    if (got[i] == want[i]) continue;
    if (++bad <= 5) ADD_FAILURE() << what << ": element " << i << " bits 0x" << std::hex << got[i]
                                  << " want 0x" << want[i] << std::dec;
  }
  return bad + (got.size() != want.size() ? 1 : 0);
}

// ---- tabular ------------------------------------------------------------------------------------

struct TabularCase {
  const char* name;
  int64_t rows, features;
  bool mean_vec, std_vec;  // per-feature stats, else length 1 (broadcast)
  bool unit_stats;         // mean 0, std 1: y == x, so inputs at the clip bounds are exact ties
  float fill, lo, hi;
  DataType out;
  int in_shift, out_shift;  // elements past a 256-byte boundary: forces the scalar path
};

const TabularCase kTabularCases[] = {
    {"fp32_vec_F64", 257, 64, true, true, false, 0.0f, -kInf, kInf, DataType::kFloat32, 0, 0},
    {"fp32_F1_broadcast", 1000, 1, false, false, false, -1.0f, -kInf, kInf, DataType::kFloat32, 0, 0},
    {"fp32_F3_tail", 333, 3, true, false, false, 7.0f, -2.0f, 2.0f, DataType::kFloat32, 0, 0},
    {"fp32_F5_clip", 101, 5, false, true, false, 2.5f, -1.0f, 1.0f, DataType::kFloat32, 0, 0},
    {"fp32_signed_zero_ties", 64, 8, false, false, true, 0.5f, 0.0f, 1.0f, DataType::kFloat32, 0, 0},
    {"fp32_degenerate_clip", 50, 7, true, true, false, 0.0f, 0.25f, 0.25f, DataType::kFloat32, 0, 0},
    {"fp32_misaligned_in", 129, 16, true, true, false, 1.0f, -3.0f, 3.0f, DataType::kFloat32, 1, 0},
    {"fp32_misaligned_out", 129, 16, true, true, false, 1.0f, -3.0f, 3.0f, DataType::kFloat32, 0, 3},
    {"fp32_one_wide_row", 1, 1003, true, true, false, 0.0f, -kInf, 5.0f, DataType::kFloat32, 0, 0},
    {"fp32_many_rows", 4096, 37, true, true, false, -0.5f, -10.0f, 10.0f, DataType::kFloat32, 0, 0},
    {"fp32_rows0", 0, 12, true, true, false, 0.0f, -kInf, kInf, DataType::kFloat32, 0, 0},
    {"fp16_vec_F64", 257, 64, true, true, false, 0.0f, -kInf, kInf, DataType::kFloat16, 0, 0},
    {"fp16_F3_tail", 333, 3, true, true, false, 3.0f, -60000.0f, 70000.0f, DataType::kFloat16, 0, 0},
    {"fp16_misaligned_out", 99, 10, false, true, false, 0.0f, -4.0f, 4.0f, DataType::kFloat16, 0, 2},
    {"fp16_misaligned_in", 99, 10, true, false, false, 0.0f, -kInf, kInf, DataType::kFloat16, 2, 0},
};

// Inputs rich in the edge cases: NaN, +-inf, signed zeros, denormals, values equal to the
// feature's mean (y = +-0), huge values (FP16 overflow), ordinary values.
std::vector<float> TabularInputs(const TabularSpec& t, int64_t rows, int64_t f, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> pick(0, 99);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> in(static_cast<size_t>(rows * f));
  for (size_t i = 0; i < in.size(); ++i) {
    const size_t j = i % static_cast<size_t>(f);
    const int k = pick(rng);
    float v = normal(rng);
    if (k < 5) v = kNaN;
    else if (k < 7) v = (k == 5) ? kInf : -kInf;
    else if (k < 10) v = (k == 7) ? 0.0f : -0.0f;
    else if (k < 12) v = (k == 10) ? 1e-40f : -3e-42f;
    else if (k < 16) v = t.mean[t.mean.size() == 1 ? 0 : j];
    else if (k < 19) v = (k == 16) ? 1e30f : -7e5f;
    else if (k < 22) v = (k == 19) ? t.clip_lo : t.clip_hi;  // ties after (x - 0) / 1 cases
    in[i] = v;
  }
  return in;
}

TabularSpec MakeTabularSpec(const TabularCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> mean(-2.0f, 2.0f), sd(0.1f, 3.0f);
  TabularSpec t;
  t.nan_fill = c.fill;
  t.clip_lo = c.lo;
  t.clip_hi = c.hi;
  const size_t nm = c.mean_vec ? static_cast<size_t>(c.features) : 1;
  const size_t ns = c.std_vec ? static_cast<size_t>(c.features) : 1;
  if (c.unit_stats) {  // y = x exactly: -0 meets clip_lo = +0, inputs at the bounds tie
    t.mean.assign(nm, 0.0f);
    t.std.assign(ns, 1.0f);
    return t;
  }
  for (size_t i = 0; i < nm; ++i) t.mean.push_back(mean(rng));
  for (size_t i = 0; i < ns; ++i) t.std.push_back((i % 5 == 4 ? -1.0f : 1.0f) * sd(rng));  // some negative
  return t;
}

TEST_F(KernelsCudaDevice, TabularMatchesCpuTwin) {
  uint32_t seed = 1;
  for (const TabularCase& c : kTabularCases) {
    SCOPED_TRACE(c.name);
    const TabularSpec t = MakeTabularSpec(c, seed++);
    const std::vector<float> in = TabularInputs(t, c.rows, c.features, seed++);
    PreprocessSpec spec;
    spec.kind = Kind::kTabular;
    spec.tabular = t;
    std::vector<float> cpu(in.size());
    PreprocessRows(spec, TensorView{in.data(), DataType::kFloat32, Shape{c.rows, c.features}}, cpu.data());
    if (c.unit_stats && c.lo == 0.0f) {  // the case reaches its tie: y = -0 kept at clip_lo = +0
      EXPECT_TRUE(std::any_of(cpu.begin(), cpu.end(), [](float v) { return FloatBits(v) == 0x80000000u; }));
    }

    DeviceBuffer ws(TabularWorkspaceBytes(c.features));
    ASSERT_TRUE(ws.ok());
    Expected<TabularPlan> plan = PrepareTabular(t, c.features, ws.get(), ws.bytes(), nullptr);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();

    const size_t out_elem = c.out == DataType::kFloat32 ? 4 : 2;
    DeviceBuffer d_in(256 + in.size() * sizeof(float)), d_out(256 + in.size() * out_elem);
    ASSERT_TRUE(d_in.ok() && d_out.ok());
    auto* in_ptr = reinterpret_cast<float*>(d_in.get()) + c.in_shift;
    unsigned char* out_ptr = d_out.get() + c.out_shift * out_elem;
    cudaStream_t stream = nullptr;
    ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    // On the kernel's stream: a non-blocking stream does not wait for the legacy stream, and a
    // cudaMemcpy from pageable memory may return before its DMA has landed.
    ASSERT_CUDA(cudaMemcpyAsync(in_ptr, in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
    const Status st = RunTabular(*plan, in_ptr, c.rows, out_ptr, c.out, stream);
    ASSERT_CUDA(cudaStreamSynchronize(stream));
    ASSERT_CUDA(cudaStreamDestroy(stream));
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(CountBitMismatches(Download(out_ptr, in.size(), c.out), ExpectedBits(cpu, c.out), c.name), 0u);
  }
}

// ---- image --------------------------------------------------------------------------------------

struct ImageCase {
  const char* name;
  std::vector<std::pair<int32_t, int32_t>> sizes;  // (h, w) per image
  int32_t channels, out_h, out_w;
  bool stat_vec;
  DataType out;
  int out_shift;  // elements past a 256-byte boundary
  int gap;        // bytes between consecutive images in the input buffer
};

const ImageCase kImageCases[] = {
    {"fp32_identity", {{8, 12}, {8, 12}}, 3, 8, 12, true, DataType::kFloat32, 0, 0},
    {"fp32_down_480x640_to_224", {{480, 640}}, 3, 224, 224, true, DataType::kFloat32, 0, 0},
    {"fp32_up_gray", {{5, 7}, {3, 3}}, 1, 16, 20, false, DataType::kFloat32, 0, 0},
    {"fp32_mixed_sizes", {{10, 10}, {1, 1}, {37, 53}, {224, 224}}, 3, 32, 32, true, DataType::kFloat32, 0, 5},
    {"fp32_out_w_not_vec", {{40, 30}, {17, 90}}, 3, 30, 31, true, DataType::kFloat32, 0, 0},
    {"fp32_rgba_broadcast", {{64, 48}, {100, 100}}, 4, 64, 64, false, DataType::kFloat32, 0, 13},
    {"fp32_lines", {{1, 17}, {19, 1}}, 2, 8, 8, true, DataType::kFloat32, 0, 1},
    {"fp32_misaligned_out", {{33, 21}}, 3, 12, 16, true, DataType::kFloat32, 1, 0},
    {"fp16_mixed_sizes", {{10, 10}, {1, 1}, {37, 53}, {224, 224}}, 3, 32, 32, true, DataType::kFloat16, 0, 3},
    {"fp16_down", {{480, 640}}, 3, 224, 224, true, DataType::kFloat16, 0, 0},
    {"fp16_misaligned_out", {{33, 21}, {9, 9}}, 3, 12, 16, true, DataType::kFloat16, 2, 0},
    {"fp16_odd_out_w", {{33, 21}}, 1, 7, 9, false, DataType::kFloat16, 0, 0},
};

using inferline::testing::RefCoord;
using inferline::testing::RefTap;

// One image, NHWC uint8 -> NCHW, interpolation and normalisation in float64 (appended to `out`).
void RefImage(const ImageSpec& m, const uint8_t* px, int64_t h, int64_t w, int64_t c, std::vector<double>* out) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const double mean = m.mean[m.mean.size() == 1 ? 0 : static_cast<size_t>(ch)];
    const double sd = m.std[m.std.size() == 1 ? 0 : static_cast<size_t>(ch)];
    for (int64_t y = 0; y < m.out_h; ++y) {
      const RefTap ty = RefCoord(y, h, m.out_h);
      for (int64_t x = 0; x < m.out_w; ++x) {
        const RefTap tx = RefCoord(x, w, m.out_w);
        auto at = [&](int64_t yy, int64_t xx) { return static_cast<double>(px[(yy * w + xx) * c + ch]); };
        const double wy = ty.w, wx = tx.w;
        const double top = (1 - wx) * at(ty.i0, tx.i0) + wx * at(ty.i0, tx.i1);
        const double bot = (1 - wx) * at(ty.i1, tx.i0) + wx * at(ty.i1, tx.i1);
        out->push_back(((1 - wy) * top + wy * bot - mean) / sd);
      }
    }
  }
}

struct ImageBatch {
  std::vector<uint8_t> bytes;     // all images, `gap` bytes apart
  std::vector<ImageDesc> descs;
  std::vector<float> cpu;         // CPU twin, image by image, concatenated NCHW
  std::vector<double> ref;        // float64 reference, same layout
  std::vector<double> tol;        // per output element
};

ImageBatch MakeImageBatch(const ImageCase& c, const ImageSpec& m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  ImageBatch b;
  for (const auto& [h, w] : c.sizes) {
    b.descs.push_back(ImageDesc{static_cast<int64_t>(b.bytes.size()), h, w});
    const size_t n = static_cast<size_t>(h) * static_cast<size_t>(w) * static_cast<size_t>(c.channels);
    for (size_t i = 0; i < n + static_cast<size_t>(c.gap); ++i) b.bytes.push_back(static_cast<uint8_t>(byte(rng)));
  }
  PreprocessSpec spec;
  spec.kind = Kind::kImage;
  spec.image = m;
  const size_t plane = static_cast<size_t>(c.out_h) * static_cast<size_t>(c.out_w);
  for (const ImageDesc& d : b.descs) {
    const uint8_t* px = b.bytes.data() + d.offset;
    const size_t at = b.cpu.size();
    b.cpu.resize(at + plane * static_cast<size_t>(c.channels));
    PreprocessRows(spec, TensorView{px, DataType::kUInt8, Shape{1, d.h, d.w, c.channels}}, b.cpu.data() + at);
    RefImage(m, px, d.h, d.w, c.channels, &b.ref);
    for (int32_t ch = 0; ch < c.channels; ++ch) {
      const double sd = std::fabs(m.std[m.std.size() == 1 ? 0 : static_cast<size_t>(ch)]);
      b.tol.insert(b.tol.end(), plane, 1e-4 * std::max(1.0, 1.0 / sd));  // preprocess.h
    }
  }
  return b;
}

ImageSpec MakeImageSpec(const ImageCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> mean(0.0f, 255.0f), sd(0.5f, 80.0f);
  ImageSpec m;
  m.out_h = c.out_h;
  m.out_w = c.out_w;
  const size_t n = c.stat_vec ? static_cast<size_t>(c.channels) : 1;
  for (size_t i = 0; i < n; ++i) m.mean.push_back(mean(rng));
  for (size_t i = 0; i < n; ++i) m.std.push_back(sd(rng));
  return m;
}

// Runs one case on the GPU; returns the output bit patterns.
std::vector<uint32_t> RunImageCase(const ImageCase& c, const ImageSpec& m, const ImageBatch& b) {
  const int64_t n = static_cast<int64_t>(b.descs.size());
  const size_t out_elem = c.out == DataType::kFloat32 ? 4 : 2;
  const size_t count = b.cpu.size();
  DeviceBuffer ws(ImageWorkspaceBytes(c.channels, n + 3));
  DeviceBuffer d_in(b.bytes.size()), d_out(256 + count * out_elem);
  EXPECT_TRUE(ws.ok() && d_in.ok() && d_out.ok());
  Expected<ImagePlan> plan = PrepareImage(m, c.channels, n + 3, ws.get(), ws.bytes(), nullptr);
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  if (!plan.ok()) return {};
  unsigned char* out_ptr = d_out.get() + c.out_shift * out_elem;
  cudaStream_t stream = nullptr;
  EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  // On the kernel's stream (see RunTabular's test above): a cudaMemcpy here raced the kernel.
  EXPECT_EQ(cudaMemcpyAsync(d_in.get(), b.bytes.data(), b.bytes.size(), cudaMemcpyHostToDevice, stream),
            cudaSuccess);
  const Status st = RunImage(*plan, d_in.get(), b.bytes.size(), b.descs.data(), n, out_ptr, c.out, stream);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return Download(out_ptr, count, c.out);
}

TEST_F(KernelsCudaDevice, ImageWithinToleranceOfFloat64Reference) {
  uint32_t seed = 100;
  for (const ImageCase& c : kImageCases) {
    SCOPED_TRACE(c.name);
    const ImageSpec m = MakeImageSpec(c, seed++);
    const ImageBatch b = MakeImageBatch(c, m, seed++);
    const std::vector<uint32_t> got = RunImageCase(c, m, b);
    ASSERT_EQ(got.size(), b.ref.size());
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const bool fp32 = c.out == DataType::kFloat32;
      float v;
      if (fp32) std::memcpy(&v, &got[i], sizeof(v));
      const double val = fp32 ? v : HalfToFloat(static_cast<uint16_t>(got[i]));
      const double tol = b.tol[i] + (fp32 ? 0.0 : (std::fabs(b.ref[i]) + b.tol[i]) * 0x1p-11 + 0x1p-25);
      if (std::fabs(val - b.ref[i]) <= tol) continue;
      if (++bad <= 5) ADD_FAILURE() << "element " << i << ": " << val << " vs " << b.ref[i] << " (tol " << tol << ")";
    }
    EXPECT_EQ(bad, 0u);
  }
}

TEST_F(KernelsCudaDevice, ImageBitwiseEqualsCpuTwin) {
  uint32_t seed = 100;  // the same cases as above
  for (const ImageCase& c : kImageCases) {
    SCOPED_TRACE(c.name);
    const ImageSpec m = MakeImageSpec(c, seed++);
    const ImageBatch b = MakeImageBatch(c, m, seed++);
    EXPECT_EQ(CountBitMismatches(RunImageCase(c, m, b), ExpectedBits(b.cpu, c.out), c.name), 0u);
  }
}

// Two batches back to back on one stream and one workspace: the second RunImage rewrites the
// descriptor slot only after the first kernel has read it (stream order).
TEST_F(KernelsCudaDevice, ImageBatchesReuseWorkspaceInStreamOrder) {
  const ImageCase c1{"first", {{20, 30}, {64, 64}}, 3, 16, 16, true, DataType::kFloat32, 0, 0};
  const ImageCase c2{"second", {{7, 9}, {300, 200}}, 3, 16, 16, true, DataType::kFloat32, 0, 0};
  const ImageSpec m = MakeImageSpec(c1, 7);
  const ImageBatch b1 = MakeImageBatch(c1, m, 8), b2 = MakeImageBatch(c2, m, 9);
  DeviceBuffer ws(ImageWorkspaceBytes(3, 2)), in1(b1.bytes.size()), in2(b2.bytes.size());
  DeviceBuffer out1(b1.cpu.size() * 4), out2(b2.cpu.size() * 4);
  ASSERT_TRUE(ws.ok() && in1.ok() && in2.ok() && out1.ok() && out2.ok());
  Expected<ImagePlan> plan = PrepareImage(m, 3, 2, ws.get(), ws.bytes(), nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_CUDA(cudaMemcpy(in1.get(), b1.bytes.data(), b1.bytes.size(), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(in2.get(), b2.bytes.data(), b2.bytes.size(), cudaMemcpyHostToDevice));
  ASSERT_STATUS_OK(RunImage(*plan, in1.get(), b1.bytes.size(), b1.descs.data(), 2, out1.get(), DataType::kFloat32, nullptr));
  ASSERT_STATUS_OK(RunImage(*plan, in2.get(), b2.bytes.size(), b2.descs.data(), 2, out2.get(), DataType::kFloat32, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(CountBitMismatches(Download(out1.get(), b1.cpu.size(), DataType::kFloat32),
                               ExpectedBits(b1.cpu, DataType::kFloat32), "first"), 0u);
  EXPECT_EQ(CountBitMismatches(Download(out2.get(), b2.cpu.size(), DataType::kFloat32),
                               ExpectedBits(b2.cpu, DataType::kFloat32), "second"), 0u);
}

// ---- argument checks (no device needed: each returns before any CUDA call) -------------------

// Never dereferenced: every call below fails its checks first.
const float* FakeDevicePtr(uintptr_t at) { return reinterpret_cast<const float*>(at); }

TEST(KernelsCudaArgs, WorkspaceSizes) {
  EXPECT_EQ(TabularWorkspaceBytes(0), 0u);
  EXPECT_EQ(TabularWorkspaceBytes(-3), 0u);
  EXPECT_GE(TabularWorkspaceBytes(1000), 2 * 1000 * sizeof(float));
  EXPECT_EQ(TabularWorkspaceBytes(1000) % 256, 0u);
  EXPECT_EQ(ImageWorkspaceBytes(0, 4), 0u);
  EXPECT_EQ(ImageWorkspaceBytes(3, 0), 0u);
  EXPECT_GE(ImageWorkspaceBytes(3, 64), 64 * sizeof(ImageDesc) + 2 * 3 * sizeof(float));
  EXPECT_GE(CudaDeviceCount(), 0);
}

TEST(KernelsCudaArgs, PrepareRejectsBadArguments) {
  TabularSpec t;
  t.mean = {0.0f, 1.0f};
  t.std = {1.0f};
  alignas(256) static unsigned char fake[4096];  // host memory: never reached by CUDA here
  EXPECT_EQ(PrepareTabular(t, 0, fake, sizeof(fake), nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PrepareTabular(t, 3, fake, sizeof(fake), nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PrepareTabular(t, 2, fake, 16, nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PrepareTabular(t, 2, nullptr, sizeof(fake), nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PrepareTabular(t, 2, fake + 4, sizeof(fake) - 4, nullptr).status().code(), StatusCode::kInvalidArgument);
  ImageSpec m;
  m.out_h = 8;
  m.out_w = 8;
  m.mean = {1.0f, 2.0f};
  m.std = {1.0f};
  EXPECT_EQ(PrepareImage(m, 3, 4, fake, sizeof(fake), nullptr).status().code(), StatusCode::kInvalidArgument);
  m.mean = {1.0f};
  m.out_w = 0;
  EXPECT_EQ(PrepareImage(m, 3, 4, fake, sizeof(fake), nullptr).status().code(), StatusCode::kInvalidArgument);
  m.out_w = 8;
  EXPECT_EQ(PrepareImage(m, 3, 1 << 20, fake, sizeof(fake), nullptr).status().code(), StatusCode::kInvalidArgument);
}

TEST(KernelsCudaArgs, RunTabularRejectsBadArguments) {
  TabularPlan plan;
  float* out = const_cast<float*>(FakeDevicePtr(0x10000));
  const float* in = FakeDevicePtr(0x20000);
  EXPECT_EQ(RunTabular(plan, in, 4, out, DataType::kFloat32, nullptr).code(), StatusCode::kInvalidArgument);
  plan.mean = FakeDevicePtr(0x1000);
  plan.std = FakeDevicePtr(0x2000);
  plan.features = 8;
  EXPECT_EQ(RunTabular(plan, in, 4, out, DataType::kInt32, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RunTabular(plan, in, -1, out, DataType::kFloat32, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RunTabular(plan, in, int64_t{1} << 29, out, DataType::kFloat32, nullptr).code(),
            StatusCode::kInvalidArgument);  // 2^32 elements
  EXPECT_EQ(RunTabular(plan, nullptr, 4, out, DataType::kFloat32, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RunTabular(plan, FakeDevicePtr(0x20002), 4, out, DataType::kFloat32, nullptr).code(),
            StatusCode::kInvalidArgument);
  auto* odd = reinterpret_cast<unsigned char*>(out) + 1;
  EXPECT_EQ(RunTabular(plan, in, 4, odd, DataType::kFloat16, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(RunTabular(plan, nullptr, 0, nullptr, DataType::kFloat32, nullptr).ok());  // empty batch
}

TEST(KernelsCudaArgs, RunImageRejectsBadArguments) {
  ImagePlan plan;
  void* out = reinterpret_cast<void*>(0x10000);
  const auto* in = reinterpret_cast<const uint8_t*>(0x20000);
  const ImageDesc ok_desc{0, 4, 4};
  EXPECT_EQ(RunImage(plan, in, 48, &ok_desc, 1, out, DataType::kFloat32, nullptr).code(), StatusCode::kInvalidArgument);
  plan.mean = FakeDevicePtr(0x1000);
  plan.std = FakeDevicePtr(0x2000);
  plan.descs = reinterpret_cast<ImageDesc*>(0x3000);
  plan.channels = 3;
  plan.max_images = 2;
  plan.out_h = plan.out_w = 8;
  const auto code = [&](const ImageDesc* d, int64_t n, size_t in_bytes, DataType dt = DataType::kFloat32) {
    return RunImage(plan, in, in_bytes, d, n, out, dt, nullptr).code();
  };
  const ImageDesc two[] = {ok_desc, ok_desc};
  const ImageDesc three[] = {ok_desc, ok_desc, ok_desc};
  EXPECT_EQ(code(three, 3, 48), StatusCode::kInvalidArgument);                  // over max_images
  EXPECT_EQ(code(two, 2, 48, DataType::kUInt8), StatusCode::kInvalidArgument);  // output dtype
  EXPECT_EQ(code(nullptr, 1, 48), StatusCode::kInvalidArgument);
  const ImageDesc past_end{1, 4, 4};  // 48 bytes from offset 1 in a 48-byte buffer
  EXPECT_EQ(code(&past_end, 1, 48), StatusCode::kInvalidArgument);
  const ImageDesc zero_h{0, 0, 4};
  EXPECT_EQ(code(&zero_h, 1, 48), StatusCode::kInvalidArgument);
  const ImageDesc negative{-16, 4, 4};
  EXPECT_EQ(code(&negative, 1, 48), StatusCode::kInvalidArgument);
  const ImageDesc huge{0, 1 << 30, 1 << 30};
  EXPECT_EQ(code(&huge, 1, size_t{1} << 62), StatusCode::kInvalidArgument);
  const Status st = RunImage(plan, in, 48, &past_end, 1, out, DataType::kFloat32, nullptr);
  EXPECT_NE(st.message().find("image 0"), std::string::npos) << st.message();
  EXPECT_TRUE(RunImage(plan, nullptr, 0, nullptr, 0, nullptr, DataType::kFloat32, nullptr).ok());  // empty batch
}

}  // namespace
}  // namespace inferline::kernels
