// The GPU path of Model (ModelConfig::gpu, gpu_lane.h) on a real device: pinned gather, copy in,
// the fused preprocessing kernels, a device backend, copy out. Every case skips where no CUDA
// device is visible; with INFERLINE_REQUIRE_GPU=1 (bench/gpu/run_device.sh) it fails instead.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "inferline/gpu.h"
#include "inferline/preprocess.h"
#include "toy_model.h"

namespace inferline {
namespace {

using testing::CollectSink;
using toy::Contains;

constexpr float kPoison = -7777.0f;

// Output k = input k, copied on the core's stream (no kernel of its own). With `check_poison` it
// first copies the input back and fails the call when a row holds kPoison (to test bisection).
class CopyDeviceBackend final : public DeviceBackend {
 public:
  explicit CopyDeviceBackend(bool check_poison = false) : DeviceBackend(0), check_poison_(check_poison) {}
  Status RunOnDevice(const std::vector<DeviceTensor>& inputs, const std::vector<DeviceTensor>& outputs,
                     void* stream) override {
    calls_.fetch_add(1);
    auto s = static_cast<cudaStream_t>(stream);
    for (size_t k = 0; k < outputs.size(); ++k) {
      const DeviceTensor& in = inputs[k];
      const size_t bytes = static_cast<size_t>(in.shape.NumElements()) * DataTypeSize(in.dtype);
      if (check_poison_) {
        std::vector<float> host(bytes / sizeof(float));
        if (cudaMemcpyAsync(host.data(), in.data, bytes, cudaMemcpyDeviceToHost, s) != cudaSuccess ||
            cudaStreamSynchronize(s) != cudaSuccess) {
          return Internal("copy for the poison check failed");
        }
        for (float v : host) {
          if (v == kPoison) return InvalidArgument("poisoned row");
        }
      }
      if (cudaMemcpyAsync(outputs[k].data, in.data, bytes, cudaMemcpyDeviceToDevice, s) != cudaSuccess) {
        return Internal("cudaMemcpyAsync failed");
      }
    }
    return Status::Ok();
  }
  int calls() const { return calls_.load(); }

 private:
  const bool check_poison_;
  std::atomic<int> calls_{0};
};

class GpuModel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (QueryGpus().devices > 0) return;
    if (std::getenv("INFERLINE_REQUIRE_GPU") != nullptr) {
      FAIL() << "INFERLINE_REQUIRE_GPU is set but no CUDA device is usable: " << QueryGpus().reason;
    }
    GTEST_SKIP() << QueryGpus().reason;
  }
};

ModelConfig TabularConfig(int64_t features, uint32_t max_batch, uint32_t instances) {
  ModelConfig c;
  c.name = "gpu-tab";
  c.version = 1;
  c.inputs = {TensorSpec{"x", DataType::kFloat32, Shape{-1, features}}};
  c.outputs = {TensorSpec{"y", DataType::kFloat32, Shape{-1, features}}};
  PreprocessSpec p;
  p.kind = PreprocessSpec::Kind::kTabular;
  for (int64_t j = 0; j < features; ++j) {
    p.tabular.mean.push_back(0.25f * static_cast<float>(j));
    p.tabular.std.push_back(1.5f + 0.125f * static_cast<float>(j));
  }
  p.tabular.nan_fill = 3.0f;
  p.tabular.clip_lo = -40.0f;
  p.tabular.clip_hi = 40.0f;
  c.preprocessing = {p};
  c.batching.max_batch_size = max_batch;
  c.batching.max_queue_delay_us = 500;
  c.instances = instances;
  c.queue_capacity = 1 << 16;
  c.gpu.device = 0;
  return c;
}

// Every request, from several threads, gets exactly its own rows back, bitwise equal to the
// CPU twin of the preprocessing: gather, copy in, tabular kernel, backend, copy out.
TEST_F(GpuModel, TabularRowsMatchTheCpuTwinBitwiseUnderConcurrency) {
  constexpr int64_t kFeatures = 37;  // not a multiple of 4: the kernel's scalar tail too
  ModelConfig config = TabularConfig(kFeatures, 64, 2);
  const PreprocessSpec spec = config.preprocessing[0];
  auto backend = std::make_shared<CopyDeviceBackend>();
  auto model = toy::CreateOrFail(config, backend);
  ASSERT_NE(model, nullptr);
  const GpuMemory mem = model->gpu_memory();
  EXPECT_EQ(mem.device, 0);
  EXPECT_GT(mem.device_bytes, 0u);
  EXPECT_GT(mem.pinned_bytes, 0u);

  constexpr int kThreads = 4, kPerThread = 500;
  std::vector<std::vector<float>> data(kThreads * kPerThread);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-100.0f, 100.0f);
  std::uniform_int_distribution<int> rows(1, 3);
  for (auto& v : data) {
    v.resize(static_cast<size_t>(rows(rng) * kFeatures));
    for (float& x : v) x = u(rng);
    v[1] = NAN;
  }
  CollectSink sink;
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const auto& v = data[t * kPerThread + i];
        InferRequest r;
        r.inputs = {testing::FloatView(v, static_cast<int64_t>(v.size()) / kFeatures, kFeatures)};
        r.tag = static_cast<uint64_t>(t * kPerThread + i);
        r.sink = &sink;
        while (model->Submit(r).code() == StatusCode::kResourceExhausted) std::this_thread::yield();
      }
    });
  }
  for (auto& th : pool) th.join();
  ASSERT_TRUE(sink.WaitFor(data.size()));
  auto by_tag = sink.ByTag();
  ASSERT_EQ(by_tag.size(), data.size());
  for (auto& [tag, res] : by_tag) {
    ASSERT_TRUE(res.status.ok()) << res.status.ToString();
    const auto& v = data[tag];
    const int64_t n = static_cast<int64_t>(v.size()) / kFeatures;
    std::vector<float> want(v.size());
    PreprocessRows(spec, testing::FloatView(v, n, kFeatures), want.data());
    ASSERT_EQ(res.outputs.size(), 1u);
    ASSERT_EQ(res.outputs[0].shape[0], n);
    ASSERT_EQ(std::memcmp(res.outputs[0].data, want.data(), want.size() * sizeof(float)), 0) << "tag " << tag;
  }
  EXPECT_LT(backend->calls(), static_cast<int>(data.size()));  // batched
}

// A failing batch is bisected on the device too: only the poisoned requests fail.
TEST_F(GpuModel, BackendErrorIsIsolatedToThePoisonedRequests) {
  ModelConfig config = TabularConfig(4, 32, 1);
  config.preprocessing.clear();  // the backend sees the raw values
  config.batching.max_queue_delay_us = 50'000;
  config.batching.preferred_batch_sizes = {16};
  auto model = toy::CreateOrFail(config, std::make_shared<CopyDeviceBackend>(true));
  ASSERT_NE(model, nullptr);
  std::vector<std::vector<float>> data(16, std::vector<float>(4, 1.0f));
  for (int i = 0; i < 16; ++i) data[i][0] = static_cast<float>(i);
  data[5][2] = kPoison;
  data[11][3] = kPoison;
  CollectSink sink;
  for (int i = 0; i < 16; ++i) {
    InferRequest r;
    r.inputs = {testing::FloatView(data[i], 1, 4)};
    r.tag = static_cast<uint64_t>(i);
    r.sink = &sink;
    ASSERT_TRUE(model->Submit(r).ok());
  }
  ASSERT_TRUE(sink.WaitFor(16));
  for (auto& [tag, res] : sink.ByTag()) {
    if (tag == 5 || tag == 11) {
      EXPECT_EQ(res.status.code(), StatusCode::kInvalidArgument) << tag;
      EXPECT_TRUE(Contains(res.status.message(), "poisoned row")) << res.status.ToString();
    } else {
      ASSERT_TRUE(res.status.ok()) << tag << ": " << res.status.ToString();
      EXPECT_EQ(static_cast<const float*>(res.outputs[0].data)[0], static_cast<float>(tag));
    }
  }
}

// Image preprocessing with free height/width: images of several sizes, one larger than the
// initial staging, come back bitwise equal to the CPU twin.
TEST_F(GpuModel, ImagesOfAnySizeMatchTheCpuTwinAndGrowTheStaging) {
  ModelConfig c;
  c.name = "gpu-img";
  c.inputs = {TensorSpec{"img", DataType::kUInt8, Shape{-1, -1, -1, 3}}};
  c.outputs = {TensorSpec{"y", DataType::kFloat32, Shape{-1, 3, 24, 24}}};
  PreprocessSpec p;
  p.kind = PreprocessSpec::Kind::kImage;
  p.image.out_h = 24;
  p.image.out_w = 24;
  p.image.mean = {120.0f, 110.0f, 100.0f};
  p.image.std = {60.0f, 61.0f, 62.0f};
  c.preprocessing = {p};
  c.batching.max_batch_size = 8;
  c.batching.max_queue_delay_us = 2000;
  c.gpu.device = 0;
  auto model = toy::CreateOrFail(c, std::make_shared<CopyDeviceBackend>());
  ASSERT_NE(model, nullptr);
  const uint64_t before = model->gpu_memory().device_bytes;
  const int sizes[][2] = {{24, 24}, {17, 40}, {300, 200}, {64, 64}, {5, 9}, {128, 96}};
  std::vector<std::vector<uint8_t>> images;
  std::mt19937 rng(3);
  for (auto& hw : sizes) {
    std::vector<uint8_t> im(static_cast<size_t>(hw[0] * hw[1] * 3));
    for (auto& b : im) b = static_cast<uint8_t>(rng());
    images.push_back(std::move(im));
  }
  CollectSink sink;
  for (size_t i = 0; i < images.size(); ++i) {
    InferRequest r;
    r.inputs = {TensorView{images[i].data(), DataType::kUInt8, Shape{1, sizes[i][0], sizes[i][1], 3}}};
    r.tag = i;
    r.sink = &sink;
    ASSERT_TRUE(model->Submit(r).ok());
  }
  ASSERT_TRUE(sink.WaitFor(images.size()));
  for (auto& [tag, res] : sink.ByTag()) {
    ASSERT_TRUE(res.status.ok()) << res.status.ToString();
    TensorView in{images[tag].data(), DataType::kUInt8, Shape{1, sizes[tag][0], sizes[tag][1], 3}};
    std::vector<float> want(3 * 24 * 24);
    PreprocessRows(p, in, want.data());
    EXPECT_EQ(std::memcmp(res.outputs[0].data, want.data(), want.size() * sizeof(float)), 0) << "image " << tag;
  }
  EXPECT_GT(model->gpu_memory().device_bytes, before);  // the 300x200 image outgrew 64x64 staging
}

TEST_F(GpuModel, HighPriorityStreamsServeToo) {
  ModelConfig config = TabularConfig(8, 16, 2);
  config.gpu.high_priority = true;
  auto model = toy::CreateOrFail(config, std::make_shared<CopyDeviceBackend>());
  ASSERT_NE(model, nullptr);
  std::vector<float> v(8, 2.0f);
  CollectSink sink;
  InferRequest r;
  r.inputs = {testing::FloatView(v, 1, 8)};
  r.sink = &sink;
  ASSERT_TRUE(model->Submit(r).ok());
  ASSERT_TRUE(sink.WaitFor(1));
  EXPECT_TRUE(sink.results()[0].status.ok()) << sink.results()[0].status.ToString();
}

TEST_F(GpuModel, MemoryInfoReadsTheDevice) {
  uint64_t free_bytes = 0, total_bytes = 0;
  ASSERT_TRUE(GpuMemoryInfo(0, &free_bytes, &total_bytes).ok());
  EXPECT_GT(total_bytes, 0u);
  EXPECT_LE(free_bytes, total_bytes);
  EXPECT_EQ(GpuMemoryInfo(QueryGpus().devices, &free_bytes, &total_bytes).code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace inferline
