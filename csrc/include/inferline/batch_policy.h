// inferline/batch_policy.h — when to close a micro-batch, as a pure function.
//
// DecideBatch(pending, policy, now, compute) looks at the requests waiting for a
// model version (in dispatch order: highest priority first, FIFO within a
// priority) and says either "dispatch the first `take` requests now" or "wait
// up to `wait_us`". It has no side effects and reads no clock, so every rule is
// unit-tested without threads. The scheduler calls it only when an executor
// instance is free, so "dispatch" always means "start computing now".
//
// Rules, in order (the batch is the longest prefix of pending requests whose
// rows fit in max_batch_size; a request is never skipped to fit a later one):
//   1. nothing pending                          -> wait (until woken)
//   2. the batch is full: rows == max, or the next request does not fit
//                                               -> dispatch
//   3. rows is one of preferred_batch_sizes     -> dispatch
//   4. the oldest pending request (any priority) has waited max_queue_delay_us
//                                               -> dispatch
//   5. deadline-aware mode only: starting later than
//        tightest_deadline - estimated_compute(rows) - deadline_slack_us
//      would miss the tightest deadline in the batch
//                                               -> dispatch
//   6. otherwise wait until the earliest moment rule 4 or 5 would fire.
// Requests whose deadline has already passed are removed by the caller first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "inferline/status.h"

namespace inferline {

enum class BatchingMode : uint8_t {
  kDeadlineAware,  // default: rules 1-6
  kFixedDelay,     // rules 1-4 and 6 without 5 (deadlines only expire requests)
};

struct BatchPolicy {
  uint32_t max_batch_size = 32;
  uint64_t max_queue_delay_us = 5000;          // 0 = dispatch as soon as an instance is free;
                                               // sums saturate (UINT64_MAX = never close on delay)
  std::vector<uint32_t> preferred_batch_sizes;  // each in [1, max_batch_size]
  BatchingMode mode = BatchingMode::kDeadlineAware;
  uint64_t deadline_slack_us = 200;             // margin for gather, scatter and wake-up

  // INVALID_ARGUMENT naming `context` and the field at fault.
  Status Validate(const std::string& context) const;
};

// Linear estimate of one batch's compute time: fixed_us + per_row_us * rows.
struct ComputeModel {
  double fixed_us = 0.0;
  double per_row_us = 0.0;
  uint64_t EstimateUs(uint32_t rows) const noexcept;
};

struct PendingItem {
  uint32_t rows = 1;
  uint64_t enqueue_us = 0;
  uint64_t deadline_us = 0;  // absolute; 0 = none
};

struct PendingView {
  const PendingItem* items = nullptr;  // dispatch order; may stop after the first item that does not fit
  size_t count = 0;
  uint64_t oldest_enqueue_us = 0;  // over every pending request, whatever its priority
};

struct BatchDecision {
  enum class Kind : uint8_t { kWait, kDispatch };
  static constexpr uint64_t kForever = UINT64_MAX;

  Kind kind = Kind::kWait;
  size_t take = 0;       // kDispatch: requests to take from the front
  uint32_t rows = 0;     // kDispatch: their rows
  uint64_t wait_us = kForever;  // kWait: how long until the decision may change without new input
};

BatchDecision DecideBatch(const PendingView& pending, const BatchPolicy& policy, uint64_t now_us,
                          const ComputeModel& compute) noexcept;

// Online estimate of compute time by batch size: exponentially weighted least
// squares of time = a + b * rows (recent batches weigh most). Thread-safe.
class ComputeEstimator {
 public:
  explicit ComputeEstimator(double decay = 0.95) noexcept : decay_(decay) {}
  void Observe(uint32_t rows, uint64_t compute_us) noexcept;
  ComputeModel Current() const noexcept;

 private:
  double decay_;
  mutable std::mutex mu_;  // held once per batch, never per request
  double w_ = 0, sn_ = 0, st_ = 0, snn_ = 0, snt_ = 0;  // weighted sums; require mu_
};

}  // namespace inferline
