// OrtBackend (inferline/ort_backend.h) on the shipped digits-mlp graph, with the ONNX Runtime
// library CMake found in the onnxruntime Python package (INFERLINE_TEST_ORT_LIBRARY; the tests
// skip without it): results that do not depend on the batch or the thread, outputs that outlive
// the backend, clear errors, and a whole Engine serving it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "inferline/engine.h"
#include "inferline/ort_backend.h"
#include "test_util.h"

namespace inferline {
namespace {

const char* Library() { return std::getenv("INFERLINE_TEST_ORT_LIBRARY"); }
const std::string kModel = std::string(INFERLINE_SOURCE_DIR) + "/python/inferline/demo_models/digits-mlp/model.onnx";

#define REQUIRE_LIBRARY()                                                        \
  if (Library() == nullptr || *Library() == '\0') {                             \
    GTEST_SKIP() << "INFERLINE_TEST_ORT_LIBRARY is not set (no onnxruntime)";   \
  }

std::shared_ptr<OrtBackend> Open() {
  std::shared_ptr<OrtBackend> b;
  Status st = OrtBackend::Open(Library(), kModel, OrtSessionOptionsSpec{}, {"logits", "label"}, &b);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return b;
}

// Rows of 64 pixels with values 0..16, as the digits data set has, different per row.
Tensor Pixels(int64_t rows, int64_t first_row = 0) {
  Tensor t = Tensor::Allocate(DataType::kFloat32, Shape{rows, 64});
  auto* p = static_cast<float*>(t.data);
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < 64; ++c) p[r * 64 + c] = static_cast<float>(((r + first_row) * 7 + c * 3) % 17);
  }
  return t;
}

std::vector<NamedTensor> RunOk(OrtBackend& b, const Tensor& pixels) {
  std::vector<NamedTensor> out;
  Status st = b.Run({NamedTensor{"pixels", pixels}}, &out);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

TEST(OrtBackend, ReportsTheGraphAndAnswersEveryRow) {
  REQUIRE_LIBRARY();
  auto b = Open();
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->graph_inputs().size(), 1u);
  EXPECT_EQ(b->graph_inputs()[0].name, "pixels");
  EXPECT_EQ(b->graph_inputs()[0].type, "tensor(float)");
  EXPECT_EQ(b->graph_inputs()[0].dims, (std::vector<int64_t>{-1, 64}));
  EXPECT_EQ(b->graph_inputs()[0].names[0], "batch");
  ASSERT_EQ(b->graph_outputs().size(), 2u);
  EXPECT_EQ(b->graph_outputs()[1].type, "tensor(int64)");
  EXPECT_FALSE(b->library_version().empty());

  auto out = RunOk(*b, Pixels(5));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].name, "logits");
  EXPECT_EQ(out[0].tensor.dtype, DataType::kFloat32);
  EXPECT_EQ(out[0].tensor.shape, (Shape{5, 10}));
  EXPECT_EQ(out[1].tensor.dtype, DataType::kInt64);
  EXPECT_EQ(out[1].tensor.shape, (Shape{5, 1}));
  const auto* logits = static_cast<const float*>(out[0].tensor.data);
  const auto* label = static_cast<const int64_t*>(out[1].tensor.data);
  for (int r = 0; r < 5; ++r) {  // label = argmax(logits)
    int best = 0;
    for (int k = 1; k < 10; ++k) best = logits[r * 10 + k] > logits[r * 10 + best] ? k : best;
    EXPECT_EQ(label[r], best) << "row " << r;
  }
}

TEST(OrtBackend, RowsDoNotDependOnTheBatchOrTheThread) {
  REQUIRE_LIBRARY();
  auto b = Open();
  ASSERT_NE(b, nullptr);
  const Tensor all = Pixels(32);
  auto whole = RunOk(*b, all);
  // Each row alone, from four threads at once, must equal its row of the whole batch bit for bit.
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 20; ++rep) {
        for (int64_t r = t; r < 32; r += 4) {
          std::vector<NamedTensor> out;
          if (!b->Run({NamedTensor{"pixels", all.SliceRows(r, 1)}}, &out).ok() ||
              std::memcmp(out[0].tensor.data, static_cast<const float*>(whole[0].tensor.data) + r * 10,
                          10 * sizeof(float)) != 0) {
            ++mismatches[t];
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

TEST(OrtBackend, OutputsOutliveTheBackend) {
  REQUIRE_LIBRARY();
  std::vector<NamedTensor> out;
  {
    auto b = Open();
    ASSERT_NE(b, nullptr);
    out = RunOk(*b, Pixels(3));
  }
  Tensor row = out[0].tensor.SliceRows(2, 1);
  out.clear();
  float sum = 0;
  for (int k = 0; k < 10; ++k) sum += static_cast<const float*>(row.data)[k];
  EXPECT_TRUE(sum == sum);  // read after the backend and the batch's vector are gone (ASan checks)
}

TEST(OrtBackend, ClearErrors) {
  REQUIRE_LIBRARY();
  std::shared_ptr<OrtBackend> b;
  Status st = OrtBackend::Open("/nonexistent/libonnxruntime.so", kModel, {}, {"logits"}, &b);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("cannot load ONNX Runtime library"), std::string::npos) << st.message();
  st = OrtBackend::Open(Library(), "/nonexistent/model.onnx", {}, {"logits"}, &b);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("cannot load /nonexistent/model.onnx"), std::string::npos) << st.message();
  OrtSessionOptionsSpec bad;
  bad.graph_optimization = 7;
  st = OrtBackend::Open(Library(), kModel, bad, {"logits"}, &b);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);

  auto good = Open();
  ASSERT_NE(good, nullptr);
  std::vector<NamedTensor> out;
  st = good->Run({NamedTensor{"pixels", Tensor::Allocate(DataType::kFloat32, Shape{2, 63})}}, &out);
  // ONNX Runtime refuses the shape: INTERNAL (a model failure, which fallbacks and breakers act
  // on), whatever ONNX Runtime's own code, with its message.
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(st.message().find("ONNX Runtime run"), std::string::npos) << st.message();
  st = good->Run({NamedTensor{"nope", Pixels(1)}}, &out);
  EXPECT_FALSE(st.ok());
}

TEST(OrtBackend, ServesThroughTheEngine) {
  REQUIRE_LIBRARY();
  auto b = Open();
  ASSERT_NE(b, nullptr);
  ModelConfig c;
  c.name = "digits";
  c.version = 1;
  c.inputs = {TensorSpec{"pixels", DataType::kFloat32, Shape{-1, 64}}};
  c.outputs = {TensorSpec{"logits", DataType::kFloat32, Shape{-1, 10}},
               TensorSpec{"label", DataType::kInt64, Shape{-1, 1}}};
  c.batching.max_batch_size = 8;
  c.batching.max_queue_delay_us = 2000;
  Engine engine;
  ASSERT_TRUE(engine.Load(c, b).ok());
  const Tensor all = Pixels(24);
  auto whole = RunOk(*b, all);
  testing::CollectSink sink;
  for (int64_t r = 0; r < 24; ++r) {
    InferRequest req;
    req.inputs = {all.SliceRows(r, 1).View()};
    req.tag = static_cast<uint64_t>(r);
    req.sink = &sink;
    ASSERT_TRUE(engine.Submit("digits", Engine::kLatest, req).ok());
  }
  ASSERT_TRUE(sink.WaitFor(24));
  for (const auto& [tag, res] : sink.ByTag()) {
    ASSERT_TRUE(res.status.ok()) << res.status.ToString();
    EXPECT_EQ(std::memcmp(res.outputs[0].data, static_cast<const float*>(whole[0].tensor.data) + tag * 10,
                          10 * sizeof(float)), 0) << "row " << tag;
  }
  engine.Shutdown(true);
}

}  // namespace
}  // namespace inferline
