// Shared helpers for the scheduler tests: a collecting completion sink with
// bounded waits, a gate that holds a backend busy, and tensor builders.
//
// Nothing here sleeps for correctness: every wait is bounded by kWaitTimeout
// (generous, so a slow sanitizer run never fails by timing) and reports
// failure instead of hanging.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "inferline/completion.h"
#include "inferline/tensor.h"

namespace inferline::testing {

#if defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define INFERLINE_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__) || defined(INFERLINE_TEST_SANITIZED)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
// Scales a loop count down under sanitizers (2 cores, 5-20x slower).
constexpr int Scaled(int n, int divisor = 4) { return kSanitized ? (n / divisor > 0 ? n / divisor : 1) : n; }

inline constexpr std::chrono::seconds kWaitTimeout{20};

// The independent reference of the CPU and CUDA image tests: the source coordinate of output
// index `o` for bilinear resizing with half-pixel centres, computed in float32 exactly as
// preprocess.h specifies (i0, i1: the two source taps; w: the weight of i1).
struct RefTap { int64_t i0, i1; float w; };
inline RefTap RefCoord(int64_t o, int64_t in_size, int64_t out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float s = (static_cast<float>(o) + 0.5f) * scale - 0.5f;
  if (s < 0.0f) s = 0.0f;
  int64_t i0 = static_cast<int64_t>(std::floor(s));
  if (i0 > in_size - 1) i0 = in_size - 1;
  const int64_t i1 = i0 + 1 < in_size ? i0 + 1 : in_size - 1;
  return {i0, i1, s - static_cast<float>(i0)};
}

// Collects every answer; tests wait for a count with a bounded timeout.
class CollectSink final : public CompletionSink {
 public:
  void Deliver(InferResult* results, size_t count) noexcept override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < count; ++i) results_.push_back(std::move(results[i]));
      ++deliver_calls_;
    }
    cv_.notify_all();
  }

  // True once at least `n` answers arrived; false after kWaitTimeout.
  [[nodiscard]] bool WaitFor(size_t n, std::chrono::milliseconds timeout = kWaitTimeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return results_.size() >= n; });
  }

  size_t count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return results_.size();
  }
  size_t deliver_calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return deliver_calls_;
  }
  // A copy of everything received so far (tensors share ownership).
  std::vector<InferResult> results() const {
    std::lock_guard<std::mutex> lock(mu_);
    return results_;
  }
  // Answers by tag; a tag answered twice is a test failure.
  std::map<uint64_t, InferResult> ByTag() const {
    std::map<uint64_t, InferResult> out;
    for (auto& r : results()) {
      EXPECT_TRUE(out.emplace(r.tag, r).second) << "tag " << r.tag << " answered more than once";
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<InferResult> results_;
  size_t deliver_calls_ = 0;
};

// A gate a backend waits at. Opening it lets every waiter through until it is
// closed again. A waiter gives up after kWaitTimeout so a failing test cannot
// hang in Model shutdown.
class Gate {
 public:
  explicit Gate(bool open = true) : open_(open) {}
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }
  // Returns false if the gate stayed closed for the whole timeout.
  bool Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWaitTimeout, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_;
};

// Opens a gate when it goes out of scope (declare it after the Model, so a
// failed assertion never leaves Shutdown waiting on a closed gate).
class OpenOnExit {
 public:
  explicit OpenOnExit(Gate& g) : g_(g) {}
  ~OpenOnExit() { g_.Open(); }
  OpenOnExit(const OpenOnExit&) = delete;
  OpenOnExit& operator=(const OpenOnExit&) = delete;

 private:
  Gate& g_;
};

// A float32 [rows, features] view over `data`.
inline TensorView FloatView(const std::vector<float>& data, int64_t rows, int64_t features) {
  return TensorView{data.data(), DataType::kFloat32, Shape{rows, features}};
}

// Copies a float32 tensor's elements out.
inline std::vector<float> ToFloats(const Tensor& t) {
  EXPECT_EQ(t.dtype, DataType::kFloat32);
  const auto* p = static_cast<const float*>(t.data);
  return std::vector<float>(p, p + t.shape.NumElements());
}

}  // namespace inferline::testing
