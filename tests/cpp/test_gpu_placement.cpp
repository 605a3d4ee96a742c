// GPU placement (ModelConfig::gpu) checks that hold on every machine: what Model::Create refuses,
// and the reason it gives where no CUDA device can be used. The device path itself is tested in
// test_gpu_model_cuda.cpp (where a device is visible).
#include <gtest/gtest.h>

#include "inferline/gpu.h"
#include "toy_model.h"

namespace inferline {
namespace {

using toy::Config;
using toy::Contains;

// Writes nothing: Create refuses these models before any batch runs.
class NullDeviceBackend final : public DeviceBackend {
 public:
  explicit NullDeviceBackend(int device) : DeviceBackend(device) {}
  Status RunOnDevice(const std::vector<DeviceTensor>&, const std::vector<DeviceTensor>&, void*) override {
    return Status::Ok();
  }
};

ModelConfig GpuConfig(int device) {
  ModelConfig c = Config(8, 0);
  c.gpu.device = device;
  return c;
}

TEST(GpuPlacementTest, DeviceBackendOnAHostModelIsRefused) {
  auto m = Model::Create(Config(8, 0), std::make_shared<NullDeviceBackend>(0));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(m.status().message(), "placed on the host")) << m.status().ToString();
}

TEST(GpuPlacementTest, HostBackendOnAGpuModelIsRefused) {
  auto m = Model::Create(GpuConfig(0), std::make_shared<toy::TestBackend>());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(m.status().message(), "needs a device backend")) << m.status().ToString();
}

TEST(GpuPlacementTest, BackendOnAnotherDeviceIsRefused) {
  auto m = Model::Create(GpuConfig(0), std::make_shared<NullDeviceBackend>(1));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(m.status().message(), "runs on device 1")) << m.status().ToString();
}

TEST(GpuPlacementTest, FreeOutputDimIsRefusedNamingTheOutput) {
  ModelConfig c = GpuConfig(0);
  c.outputs[0].shape = Shape{-1, -1};
  auto m = Model::Create(c, std::make_shared<NullDeviceBackend>(0));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(m.status().message(), "output 'y'")) << m.status().ToString();
  EXPECT_TRUE(Contains(m.status().message(), "must be fixed")) << m.status().ToString();
}

TEST(GpuPlacementTest, WithoutAUsableDeviceTheReasonIsGiven) {
  const GpuAvailability gpus = QueryGpus();
  if (gpus.devices > 0) GTEST_SKIP() << "a CUDA device is visible: test_gpu_model_cuda covers it";
  ASSERT_FALSE(gpus.reason.empty());
  auto m = Model::Create(GpuConfig(0), std::make_shared<NullDeviceBackend>(0));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(m.status().message(), "placed on CUDA device 0")) << m.status().ToString();
  EXPECT_TRUE(Contains(m.status().message(), gpus.reason)) << m.status().ToString();
  uint64_t free_bytes = 0, total_bytes = 0;
  Status st = GpuMemoryInfo(0, &free_bytes, &total_bytes);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  if (!gpus.built) EXPECT_TRUE(Contains(gpus.reason, "without CUDA")) << gpus.reason;
}

TEST(GpuPlacementTest, ADeviceBackendRefusesHostTensors) {
  NullDeviceBackend b(0);
  std::vector<NamedTensor> out;
  EXPECT_EQ(b.Run({}, &out).code(), StatusCode::kFailedPrecondition);
}

TEST(GpuPlacementTest, AHostModelReportsNoGpuMemory) {
  auto model = toy::CreateOrFail(Config(8, 0), std::make_shared<toy::TestBackend>());
  ASSERT_NE(model, nullptr);
  const GpuMemory g = model->gpu_memory();
  EXPECT_EQ(g.device, -1);
  EXPECT_EQ(g.device_bytes, 0u);
  EXPECT_EQ(g.pinned_bytes, 0u);
}

}  // namespace
}  // namespace inferline
