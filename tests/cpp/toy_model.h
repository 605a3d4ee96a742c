// A toy model for scheduler tests (test_model.cpp, test_overload.cpp): y = x * 2 + 1
// over float32 [rows, kF], a backend that records every batch, and request helpers.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "inferline/model.h"
#include "test_util.h"

namespace inferline::toy {

using testing::CollectSink;
using testing::FloatView;
using testing::Gate;
using testing::kSanitized;
using testing::kWaitTimeout;
using testing::ToFloats;

inline constexpr int64_t kF = 3;               // features per row of input 'x'
inline constexpr float kPoison = -12345.0f;    // a row holding this value poisons the batch
inline constexpr char kCtx[] = "model 'toy' version 3";

inline float Expect(float x) { return x * 2.0f + 1.0f; }

inline bool Contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Lets a test see that something did NOT happen: a short real pause.
inline void Pause() { std::this_thread::sleep_for(std::chrono::milliseconds(kSanitized ? 60 : 30)); }

// y = x * 2 + 1 over a float32 [rows, kF] input 'x'; records every call's
// column-0 values. Optional: waits at a gate, fails or throws on kPoison,
// returns a malformed output.
class TestBackend final : public Backend {
 public:
  enum class OnPoison { kIgnore, kFail, kThrow };
  enum class Output { kGood, kWrongShape, kWrongDtype, kMissing, kNoOwner };

  explicit TestBackend(Gate* gate = nullptr, OnPoison on_poison = OnPoison::kIgnore, Output output = Output::kGood)
      : gate_(gate), on_poison_(on_poison), output_(output) {}

  Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override {
    const Tensor& x = inputs.at(0).tensor;
    const int64_t rows = x.shape[0];
    const auto* in = static_cast<const float*>(x.data);
    std::vector<float> col0;
    bool poisoned = false;
    for (int64_t r = 0; r < rows; ++r) {
      col0.push_back(in[r * kF]);
      for (int64_t j = 0; j < kF; ++j) poisoned = poisoned || in[r * kF + j] == kPoison;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      calls_.push_back(std::move(col0));
      max_inside_ = std::max(max_inside_, ++inside_);
    }
    cv_.notify_all();
    if (gate_ != nullptr) gate_->Pass();
    struct Leave {
      TestBackend* b;
      ~Leave() {
        std::lock_guard<std::mutex> lock(b->mu_);
        --b->inside_;
      }
    } leave{this};

    if (poisoned && on_poison_ == OnPoison::kFail) return Status(StatusCode::kInvalidArgument, "poisoned row seen");
    if (poisoned && on_poison_ == OnPoison::kThrow) throw std::runtime_error("kaboom from the backend");

    Shape shape = x.shape;
    DataType dtype = DataType::kFloat32;
    if (output_ == Output::kWrongShape) shape.dims[1] = kF + 1;
    if (output_ == Output::kWrongDtype) dtype = DataType::kFloat64;
    Tensor y = Tensor::Allocate(dtype, shape);
    if (dtype == DataType::kFloat32) {
      auto* out = static_cast<float*>(y.data);
      for (int64_t i = 0; i < rows * kF && shape.dims[1] == kF; ++i) out[i] = Expect(in[i]);
    }
    if (output_ == Output::kNoOwner) {
      static thread_local std::vector<float> scratch;
      scratch.assign(static_cast<size_t>(rows * kF), 0.0f);
      y.owner.reset();
      y.data = scratch.data();
    }
    outputs->push_back(NamedTensor{output_ == Output::kMissing ? "z" : "y", std::move(y)});
    return Status::Ok();
  }

  // True once `n` calls have started (possibly still held at the gate).
  bool WaitEntered(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWaitTimeout, [&] { return calls_.size() >= n; });
  }
  std::vector<std::vector<float>> calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  std::vector<size_t> batch_sizes() const {
    std::vector<size_t> out;
    for (const auto& c : calls()) out.push_back(c.size());
    return out;
  }
  size_t call_count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_.size();
  }
  int max_inside() const {
    std::lock_guard<std::mutex> lock(mu_);
    return max_inside_;
  }

 private:
  Gate* gate_;
  const OnPoison on_poison_;
  const Output output_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::vector<float>> calls_;
  int inside_ = 0, max_inside_ = 0;
};

inline ModelConfig Config(uint32_t max_batch, uint64_t delay_us) {
  ModelConfig c;
  c.name = "toy";
  c.version = 3;
  c.inputs = {TensorSpec{"x", DataType::kFloat32, Shape{-1, kF}}};
  c.outputs = {TensorSpec{"y", DataType::kFloat32, Shape{-1, kF}}};
  c.batching.max_batch_size = max_batch;
  c.batching.max_queue_delay_us = delay_us;
  return c;
}

inline std::unique_ptr<Model> CreateOrFail(ModelConfig config, std::shared_ptr<Backend> backend, Clock* clock = nullptr) {
  auto m = Model::Create(std::move(config), std::move(backend), clock);
  if (!m.ok()) {
    ADD_FAILURE() << "Model::Create: " << m.status().ToString();
    return nullptr;
  }
  return std::move(m.value());
}

// Request payloads that stay put until the test ends (declare before the model).
class Payloads {
 public:
  // [rows, kF] with column 0 = first0 + row (so a row is identifiable in the
  // backend's record) and random other columns.
  const std::vector<float>& Add(int64_t rows, float first0, std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-100.0f, 100.0f);
    std::vector<float> v(static_cast<size_t>(rows * kF));
    for (int64_t r = 0; r < rows; ++r) {
      v[r * kF] = first0 + static_cast<float>(r);
      for (int64_t j = 1; j < kF; ++j) v[r * kF + j] = u(rng);
    }
    data_.push_back(std::move(v));
    return data_.back();
  }
  const std::vector<float>& Add(std::vector<float> v) {
    data_.push_back(std::move(v));
    return data_.back();
  }

 private:
  std::deque<std::vector<float>> data_;  // deque: references stay valid
};

inline InferRequest Request(const std::vector<float>& data, CompletionSink* sink, uint64_t tag, uint32_t priority = 0,
                     uint64_t deadline_us = 0) {
  InferRequest r;
  r.inputs = {FloatView(data, static_cast<int64_t>(data.size()) / kF, kF)};
  r.sink = sink;
  r.tag = tag;
  r.priority = priority;
  r.deadline_us = deadline_us;
  return r;
}

// The answer is OK and its one output is y = x * 2 + 1 for exactly the request's rows.
inline void ExpectComputed(const InferResult& r, const std::vector<float>& in) {
  ASSERT_TRUE(r.status.ok()) << "tag " << r.tag << ": " << r.status.ToString();
  ASSERT_EQ(r.outputs.size(), 1u);
  const Tensor& y = r.outputs[0];
  ASSERT_EQ(y.shape, (Shape{static_cast<int64_t>(in.size()) / kF, kF})) << "tag " << r.tag;
  std::vector<float> got = ToFloats(y);
  ASSERT_EQ(got.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) ASSERT_EQ(got[i], Expect(in[i])) << "tag " << r.tag << " element " << i;
}

}  // namespace inferline::toy
