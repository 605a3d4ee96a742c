// inferline/stats.h — per-model-version serving statistics.
//
// What: counters (requests, rows, batches, rejections, deadline misses, errors,
// cancellations), three latency histograms (queue wait, batch compute, request
// end to end, all in microseconds) and the distribution of executed batch sizes.
//
// Concurrency rules:
//  - Every Add*/Record* method is lock-free, wait-free except for the max CAS
//    loop, noexcept, and safe to call from any number of threads at once. Each
//    update is a single relaxed atomic read-modify-write per field; nothing on
//    the hot path allocates, locks or orders memory.
//  - Counters are grouped by who writes them, one cache line per group
//    (alignas(kCacheLineBytes)): submitting threads (requests, rows, rejected),
//    executor threads (batches, batch sizes, histograms), and the rarer outcome
//    counters (deadline missed, errors, cancelled). Groups never share a line.
//  - Snapshot() may run on any thread, concurrently with recording. Every value
//    it returns is one whole atomic load (no torn 64-bit values), but the loads
//    are relaxed and not taken at a single instant: while records are in
//    flight, a histogram's bucket total may lag or lead its `count` (and `sum`)
//    by those in-flight records, and counters of different groups may be
//    slightly out of step. Snapshot raises `max` to at least the lower bound of
//    the highest non-empty bucket, so a snapshot never claims a maximum below a
//    value it counts. Once recording has stopped (threads joined), a snapshot
//    is exact.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

namespace inferline {

inline constexpr size_t kCacheLineBytes = 64;

// A plain copy of a LatencyHistogram at one moment.
struct HistogramSnapshot {
  std::vector<uint64_t> buckets;  // counts per bucket index (LatencyHistogram::kBuckets entries)
  uint64_t count = 0, sum = 0, max = 0;  // sum wraps modulo 2^64

  // Value at quantile q in [0,1] (e.g. 0.99): the upper bound of the bucket holding
  // rank ceil(q*n), capped at max, where n is the total of `buckets` (equal to
  // `count` unless the snapshot raced with recording). q <= 0 or NaN means rank 1;
  // q >= 1 means rank n. Returns 0 if there are no samples.
  uint64_t Percentile(double q) const noexcept;
  // sum / count; 0 if empty.
  double Mean() const noexcept;
};

// Log-linear histogram of non-negative integers (microseconds): exact for 0..15,
// then each power of two [2^k, 2^(k+1)) for k = 4..39 is split into 16 equal
// sub-buckets (relative error <= 1/16). Values >= 2^40 (~12.7 days in us) share
// the last bucket, [2^40, UINT64_MAX].
class alignas(kCacheLineBytes) LatencyHistogram {
 public:
  static constexpr uint32_t kSubBits = 4;                // 16 sub-buckets per power of two
  static constexpr uint64_t kSubBuckets = 1u << kSubBits;
  static constexpr uint32_t kMaxExponent = 40;           // values >= 2^40 overflow
  static constexpr size_t kBuckets = kSubBuckets + (kMaxExponent - kSubBits) * kSubBuckets + 1;

  LatencyHistogram() noexcept = default;
  LatencyHistogram(const LatencyHistogram&) = delete;
  LatencyHistogram& operator=(const LatencyHistogram&) = delete;

  // Relaxed fetch_add on the bucket, count and sum; max via a relaxed CAS loop.
  void Record(uint64_t value) noexcept;
  HistogramSnapshot Snapshot() const;
  // Relaxed stores of zero; see ModelStats::Reset for when that is exact.
  void Reset() noexcept;

  // For v >= 16 with top bit k: the top five bits (16..31) picked by v >> (k-4),
  // offset by 16 per exponent above 4. Values below 32 map to themselves.
  static constexpr size_t BucketIndex(uint64_t value) noexcept {
    if (value < kSubBuckets) return static_cast<size_t>(value);
    const uint32_t k = static_cast<uint32_t>(std::bit_width(value)) - 1;
    if (k >= kMaxExponent) return kBuckets - 1;
    const uint32_t shift = k - kSubBits;
    return static_cast<size_t>(shift * kSubBuckets + (value >> shift));
  }
  // Smallest value in bucket `index` (indices past the end clamp to the last bucket).
  static constexpr uint64_t BucketLower(size_t index) noexcept {
    if (index >= kBuckets) index = kBuckets - 1;
    if (index < kSubBuckets) return index;
    const uint64_t shift = index / kSubBuckets - 1;
    return (kSubBuckets + index % kSubBuckets) << shift;
  }
  // Largest value in bucket `index`.
  static constexpr uint64_t BucketUpper(size_t index) noexcept {
    if (index + 1 >= kBuckets) return std::numeric_limits<uint64_t>::max();
    return BucketLower(index + 1) - 1;
  }

 private:
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_{0};
  std::atomic<uint64_t> max_{0};
  alignas(kCacheLineBytes) std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
};

static_assert(LatencyHistogram::kBuckets == 593);
static_assert(LatencyHistogram::BucketIndex((uint64_t{1} << 40) - 1) == LatencyHistogram::kBuckets - 2);
static_assert(LatencyHistogram::BucketLower(LatencyHistogram::kBuckets - 1) == uint64_t{1} << 40);
static_assert(LatencyHistogram::BucketUpper(31) == 31 && LatencyHistogram::BucketUpper(32) == 33);
static_assert(alignof(LatencyHistogram) == kCacheLineBytes);
static_assert(std::atomic<uint64_t>::is_always_lock_free, "stats need lock-free 64-bit atomics");

struct StatsSnapshot {
  uint64_t requests = 0;         // accepted into the queue
  uint64_t rows = 0;             // rows of the accepted requests
  uint64_t batches = 0;          // executed batches
  uint64_t rejected = 0;         // refused at submit (queue full)
  uint64_t deadline_missed = 0;  // also counts requests refused at Submit with a passed deadline (not in `requests`)
  uint64_t errors = 0;
  uint64_t cancelled = 0;
  uint64_t shed = 0;             // answered RESOURCE_EXHAUSTED after admission: shed by the queue
                                 // discipline under overload (or a backend out of memory)
  uint64_t last_batch_end_us = 0;  // the model's clock when the latest batch finished; 0 = none yet
  uint64_t queued_rows = 0;  // rows admitted and not answered yet (queued or running): a gauge that
                             // Model::Stats fills (ModelStats::Snapshot leaves it 0)
  HistogramSnapshot queue_us, compute_us, end_to_end_us;
  std::vector<uint64_t> batch_size_counts;  // index = rows in the batch (0..max_batch_size)

  // Both are computed from batch_size_counts (so they agree with each other even
  // mid-recording); 0 when no batch has run or max_batch_size is 0.
  double mean_batch_size() const;  // executed rows / executed batches
  double fill_ratio() const;       // executed rows / (batches * max_batch_size), in [0,1]
  uint32_t max_batch_size = 0;
};

class ModelStats {
 public:
  // max_batch_size sizes the batch-size distribution (0 is allowed: every batch
  // then counts as size 0 and fill_ratio is 0).
  explicit ModelStats(uint32_t max_batch_size);
  ModelStats(const ModelStats&) = delete;
  ModelStats& operator=(const ModelStats&) = delete;

  void AddRequests(uint64_t n, uint64_t rows) noexcept;  // accepted into the queue
  void AddRejected(uint64_t n) noexcept;                 // refused at submit (queue full)
  void AddDeadlineMissed(uint64_t n) noexcept;
  void AddErrors(uint64_t n) noexcept;
  void AddCancelled(uint64_t n) noexcept;
  void AddShed(uint64_t n) noexcept;
  // One executed batch that finished at `end_us` (the model's clock); rows above
  // max_batch_size are counted as max_batch_size. With several executors the
  // recorded end is that of the batch recorded last (close to, not always, the latest).
  void RecordBatch(uint32_t rows, uint64_t compute_us, uint64_t end_us = 0) noexcept;
  void RecordRequest(uint64_t queue_us, uint64_t end_to_end_us) noexcept;  // one request answered
  StatsSnapshot Snapshot() const;
  // Zeroes every counter and histogram (e.g. after a warm-up, so that served
  // traffic alone is counted). Exact when no request is in flight; a record
  // racing with Reset may be partly kept (never torn).
  void Reset() noexcept;

  uint32_t max_batch_size() const noexcept { return max_batch_size_; }

 private:
  // Eight counters per line so the batch-size array shares no line with other heap data.
  struct alignas(kCacheLineBytes) CounterLine {
    static constexpr size_t kCount = kCacheLineBytes / sizeof(uint64_t);
    std::array<std::atomic<uint64_t>, kCount> v{};
  };
  std::atomic<uint64_t>& BatchSizeCounter(size_t rows) const noexcept;

  // Read-only after construction.
  const uint32_t max_batch_size_;
  const std::unique_ptr<CounterLine[]> batch_size_lines_;  // executor threads write
  // Submitting threads.
  struct alignas(kCacheLineBytes) {
    std::atomic<uint64_t> requests{0}, rows{0}, rejected{0};
  } submit_;
  // Executor threads.
  struct alignas(kCacheLineBytes) {
    std::atomic<uint64_t> batches{0}, last_batch_end_us{0};
  } exec_;
  // Outcomes, written by whichever thread finishes a request.
  struct alignas(kCacheLineBytes) {
    std::atomic<uint64_t> deadline_missed{0}, errors{0}, cancelled{0}, shed{0};
  } outcome_;
  LatencyHistogram queue_us_, compute_us_, end_to_end_us_;
};

}  // namespace inferline
