#include "inferline/batch_policy.h"

#include <algorithm>
#include <cmath>

namespace inferline {

Status BatchPolicy::Validate(const std::string& context) const {
  if (max_batch_size == 0) {
    return InvalidArgument(context + ": batching.max_batch_size must be >= 1");
  }
  for (size_t i = 0; i < preferred_batch_sizes.size(); ++i) {
    uint32_t p = preferred_batch_sizes[i];
    if (p == 0 || p > max_batch_size) {
      return InvalidArgument(context + ": batching.preferred_batch_sizes[" + std::to_string(i) + "] = " +
                             std::to_string(p) + " is outside [1, max_batch_size=" +
                             std::to_string(max_batch_size) + "]");
    }
  }
  return Status::Ok();
}

uint64_t ComputeModel::EstimateUs(uint32_t rows) const noexcept {
  double t = fixed_us + per_row_us * rows;
  if (!(t > 0)) return 0;  // also NaN
  t = std::ceil(t);
  // Casting a double >= 2^64 to uint64_t is undefined; saturate instead.
  return t >= 18446744073709551616.0 ? UINT64_MAX : static_cast<uint64_t>(t);
}

namespace {

bool IsPreferred(const BatchPolicy& policy, uint32_t rows) {
  const auto& p = policy.preferred_batch_sizes;
  return std::find(p.begin(), p.end(), rows) != p.end();
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) { return b > UINT64_MAX - a ? UINT64_MAX : a + b; }

BatchDecision Dispatch(size_t take, uint32_t rows) {
  BatchDecision d;
  d.kind = BatchDecision::Kind::kDispatch;
  d.take = take;
  d.rows = rows;
  return d;
}

}  // namespace

BatchDecision DecideBatch(const PendingView& pending, const BatchPolicy& policy, uint64_t now_us,
                          const ComputeModel& compute) noexcept {
  if (pending.count == 0) return BatchDecision{};  // rule 1

  size_t take = 0;
  uint32_t rows = 0;
  uint64_t tightest = 0;
  for (; take < pending.count; ++take) {
    const PendingItem& it = pending.items[take];
    if (take > 0 && rows + it.rows > policy.max_batch_size) break;
    rows += it.rows;
    if (it.deadline_us != 0 && (tightest == 0 || it.deadline_us < tightest)) tightest = it.deadline_us;
  }
  if (rows >= policy.max_batch_size || take < pending.count) return Dispatch(take, rows);  // rule 2
  if (IsPreferred(policy, rows)) return Dispatch(take, rows);                               // rule 3

  // rule 4 (saturating: a huge delay means "never", not a wrap-around to "now")
  uint64_t close_at = SaturatingAdd(pending.oldest_enqueue_us, policy.max_queue_delay_us);
  if (policy.mode == BatchingMode::kDeadlineAware && tightest != 0) {  // rule 5
    uint64_t need = SaturatingAdd(compute.EstimateUs(rows), policy.deadline_slack_us);
    uint64_t latest_start = tightest > need ? tightest - need : 0;
    close_at = std::min(close_at, latest_start);
  }
  if (now_us >= close_at) return Dispatch(take, rows);

  BatchDecision d;  // rule 6
  d.wait_us = close_at - now_us;
  return d;
}

void ComputeEstimator::Observe(uint32_t rows, uint64_t compute_us) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  double n = rows, t = static_cast<double>(compute_us);
  w_ = w_ * decay_ + 1.0;
  sn_ = sn_ * decay_ + n;
  st_ = st_ * decay_ + t;
  snn_ = snn_ * decay_ + n * n;
  snt_ = snt_ * decay_ + n * t;
}

ComputeModel ComputeEstimator::Current() const noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  ComputeModel m;
  if (w_ <= 0) return m;  // nothing observed yet: estimate 0
  double mean_n = sn_ / w_, mean_t = st_ / w_;
  double var_n = snn_ / w_ - mean_n * mean_n;
  if (var_n < 1e-6 * std::max(1.0, mean_n * mean_n)) {
    // One batch size seen so far: no slope can be fitted, so assume the
    // observed time for every size (conservative for smaller batches).
    m.fixed_us = mean_t;
    m.per_row_us = 0.0;
    return m;
  }
  double cov = snt_ / w_ - mean_n * mean_t;
  m.per_row_us = std::max(0.0, cov / var_n);
  m.fixed_us = std::max(0.0, mean_t - m.per_row_us * mean_n);
  return m;
}

}  // namespace inferline
