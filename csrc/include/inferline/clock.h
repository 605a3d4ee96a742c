// inferline/clock.h — the time source of the scheduler, injectable for tests.
//
// All scheduler times are microseconds on one monotonic clock. Deadlines passed
// to Model::Submit are absolute on the model's clock (see Model::NowUs()).
#pragma once

#include <atomic>
#include <cstdint>

namespace inferline {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual uint64_t NowUs() const noexcept = 0;
};

// std::chrono::steady_clock in microseconds. Thread-safe.
class SteadyClock final : public Clock {
 public:
  uint64_t NowUs() const noexcept override;
  static SteadyClock& Instance() noexcept;
};

// A clock that moves only when told to. Thread-safe. After moving it, call
// Model::Wake() so a waiting scheduler re-evaluates at the new time.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(uint64_t start_us = 1'000'000) noexcept : now_us_(start_us) {}
  uint64_t NowUs() const noexcept override { return now_us_.load(std::memory_order_acquire); }
  void AdvanceUs(uint64_t us) noexcept { now_us_.fetch_add(us, std::memory_order_acq_rel); }
  void SetUs(uint64_t us) noexcept { now_us_.store(us, std::memory_order_release); }

 private:
  std::atomic<uint64_t> now_us_;
};

}  // namespace inferline
