// Per-model-version serving statistics; see inferline/stats.h for the
// concurrency rules. Every atomic here is relaxed: the counters carry no data
// that another thread must see in order, so no fences are needed.
#include "inferline/stats.h"

#include <algorithm>
#include <cmath>

namespace inferline {
namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

// Rank (1-based) of the q-quantile among n > 0 samples: ceil(q*n) clamped to [1, n].
uint64_t RankFor(double q, uint64_t n) noexcept {
  if (!(q > 0.0)) return 1;  // also catches NaN
  if (q >= 1.0) return n;
  const double r = std::ceil(q * static_cast<double>(n));
  if (r < 1.0) return 1;
  if (r >= static_cast<double>(n)) return n;
  return static_cast<uint64_t>(r);
}

struct BatchTotals {
  uint64_t batches = 0;
  uint64_t rows = 0;
};

BatchTotals SumBatches(const std::vector<uint64_t>& counts) noexcept {
  BatchTotals t;
  for (size_t size = 0; size < counts.size(); ++size) {
    t.batches += counts[size];
    t.rows += counts[size] * size;
  }
  return t;
}

}  // namespace

// ---- HistogramSnapshot -------------------------------------------------------

uint64_t HistogramSnapshot::Percentile(double q) const noexcept {
  uint64_t total = 0;
  for (uint64_t c : buckets) total += c;
  if (total == 0) return 0;
  const uint64_t rank = RankFor(q, total);
  uint64_t seen = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    seen += buckets[i];
    if (seen >= rank) return std::min(LatencyHistogram::BucketUpper(i), max);
  }
  return max;  // not reached: seen == total >= rank after the last bucket
}

double HistogramSnapshot::Mean() const noexcept {
  if (count == 0) return 0.0;
  return static_cast<double>(sum) / static_cast<double>(count);
}

// ---- LatencyHistogram ----------------------------------------------------------

void LatencyHistogram::Record(uint64_t value) noexcept {
  buckets_[BucketIndex(value)].fetch_add(1, kRelaxed);
  count_.fetch_add(1, kRelaxed);
  sum_.fetch_add(value, kRelaxed);
  uint64_t seen = max_.load(kRelaxed);
  // On failure compare_exchange_weak reloads `seen`; stop once the max is >= value.
  while (seen < value && !max_.compare_exchange_weak(seen, value, kRelaxed, kRelaxed)) {
  }
}

void LatencyHistogram::Reset() noexcept {
  count_.store(0, kRelaxed);
  sum_.store(0, kRelaxed);
  max_.store(0, kRelaxed);
  for (auto& b : buckets_) b.store(0, kRelaxed);
}

HistogramSnapshot LatencyHistogram::Snapshot() const {
  HistogramSnapshot s;
  s.count = count_.load(kRelaxed);
  s.sum = sum_.load(kRelaxed);
  s.max = max_.load(kRelaxed);
  s.buckets.resize(kBuckets);
  size_t highest = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    s.buckets[i] = buckets_[i].load(kRelaxed);
    if (s.buckets[i] != 0) highest = i;
  }
  // A racing Record may have bumped its bucket before we read max_; never report
  // a max below a value the buckets already count.
  if (s.buckets[highest] != 0) s.max = std::max(s.max, BucketLower(highest));
  return s;
}

// ---- StatsSnapshot -------------------------------------------------------------

double StatsSnapshot::mean_batch_size() const {
  const BatchTotals t = SumBatches(batch_size_counts);
  if (t.batches == 0) return 0.0;
  return static_cast<double>(t.rows) / static_cast<double>(t.batches);
}

double StatsSnapshot::fill_ratio() const {
  const BatchTotals t = SumBatches(batch_size_counts);
  if (t.batches == 0 || max_batch_size == 0) return 0.0;
  return static_cast<double>(t.rows) /
         (static_cast<double>(t.batches) * static_cast<double>(max_batch_size));
}

// ---- ModelStats ----------------------------------------------------------------

ModelStats::ModelStats(uint32_t max_batch_size)
    : max_batch_size_(max_batch_size),
      batch_size_lines_(std::make_unique<CounterLine[]>(
          (size_t{max_batch_size} + CounterLine::kCount) / CounterLine::kCount)) {}  // ceil((max+1)/kCount)

std::atomic<uint64_t>& ModelStats::BatchSizeCounter(size_t rows) const noexcept {
  return batch_size_lines_[rows / CounterLine::kCount].v[rows % CounterLine::kCount];
}

void ModelStats::AddRequests(uint64_t n, uint64_t rows) noexcept {
  submit_.requests.fetch_add(n, kRelaxed);
  submit_.rows.fetch_add(rows, kRelaxed);
}

void ModelStats::AddRejected(uint64_t n) noexcept { submit_.rejected.fetch_add(n, kRelaxed); }

void ModelStats::AddDeadlineMissed(uint64_t n) noexcept {
  outcome_.deadline_missed.fetch_add(n, kRelaxed);
}

void ModelStats::AddErrors(uint64_t n) noexcept { outcome_.errors.fetch_add(n, kRelaxed); }

void ModelStats::AddCancelled(uint64_t n) noexcept { outcome_.cancelled.fetch_add(n, kRelaxed); }
void ModelStats::AddShed(uint64_t n) noexcept { outcome_.shed.fetch_add(n, kRelaxed); }

void ModelStats::RecordBatch(uint32_t rows, uint64_t compute_us, uint64_t end_us) noexcept {
  exec_.batches.fetch_add(1, kRelaxed);
  exec_.last_batch_end_us.store(end_us, kRelaxed);
  BatchSizeCounter(std::min(rows, max_batch_size_)).fetch_add(1, kRelaxed);
  compute_us_.Record(compute_us);
}

void ModelStats::RecordRequest(uint64_t queue_us, uint64_t end_to_end_us) noexcept {
  queue_us_.Record(queue_us);
  end_to_end_us_.Record(end_to_end_us);
}

StatsSnapshot ModelStats::Snapshot() const {
  StatsSnapshot s;
  s.requests = submit_.requests.load(kRelaxed);
  s.rows = submit_.rows.load(kRelaxed);
  s.rejected = submit_.rejected.load(kRelaxed);
  s.batches = exec_.batches.load(kRelaxed);
  s.last_batch_end_us = exec_.last_batch_end_us.load(kRelaxed);
  s.deadline_missed = outcome_.deadline_missed.load(kRelaxed);
  s.errors = outcome_.errors.load(kRelaxed);
  s.cancelled = outcome_.cancelled.load(kRelaxed);
  s.shed = outcome_.shed.load(kRelaxed);
  s.queue_us = queue_us_.Snapshot();
  s.compute_us = compute_us_.Snapshot();
  s.end_to_end_us = end_to_end_us_.Snapshot();
  s.batch_size_counts.resize(size_t{max_batch_size_} + 1);
  for (size_t i = 0; i < s.batch_size_counts.size(); ++i) {
    s.batch_size_counts[i] = BatchSizeCounter(i).load(kRelaxed);
  }
  s.max_batch_size = max_batch_size_;
  return s;
}

void ModelStats::Reset() noexcept {
  for (auto* counter : {&submit_.requests, &submit_.rows, &submit_.rejected, &exec_.batches,
                        &exec_.last_batch_end_us, &outcome_.deadline_missed, &outcome_.errors,
                        &outcome_.cancelled, &outcome_.shed}) {
    counter->store(0, kRelaxed);
  }
  for (size_t i = 0; i <= max_batch_size_; ++i) BatchSizeCounter(i).store(0, kRelaxed);
  queue_us_.Reset();
  compute_us_.Reset();
  end_to_end_us_.Reset();
}

}  // namespace inferline
