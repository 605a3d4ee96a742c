// Tests for inferline/stats.h: histogram bucketing and percentiles, snapshots,
// concurrent recording, and ModelStats counters.
#include "inferline/stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <thread>
#include <vector>

namespace inferline {
namespace {

using H = LatencyHistogram;
constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();

// The reference: value of rank ceil(q*n) in the sorted samples.
uint64_t ExactPercentile(std::vector<uint64_t> sorted, double q) {
  std::sort(sorted.begin(), sorted.end());
  const auto n = static_cast<double>(sorted.size());
  auto rank = static_cast<size_t>(std::ceil(q * n));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

TEST(LatencyHistogramTest, SmallValuesAreExact) {
  for (uint64_t v = 0; v < 32; ++v) {
    EXPECT_EQ(H::BucketIndex(v), v);
    EXPECT_EQ(H::BucketLower(v), v);
    EXPECT_EQ(H::BucketUpper(v), v);
  }
}

TEST(LatencyHistogramTest, BucketBoundariesContainEveryValue) {
  size_t prev = 0;
  for (uint64_t v = 0; v <= 100000; ++v) {
    const size_t i = H::BucketIndex(v);
    ASSERT_LT(i, H::kBuckets);
    ASSERT_LE(H::BucketLower(i), v) << v;
    ASSERT_GE(H::BucketUpper(i), v) << v;
    ASSERT_GE(i, prev) << "indices must be monotonic at " << v;
    ASSERT_LE(i - prev, 1u) << "no bucket may be skipped at " << v;
    prev = i;
  }
}

TEST(LatencyHistogramTest, BucketsTileTheRangeWithBoundedRelativeWidth) {
  EXPECT_EQ(H::BucketLower(0), 0u);
  for (size_t i = 0; i + 1 < H::kBuckets; ++i) {
    const uint64_t lo = H::BucketLower(i), hi = H::BucketUpper(i);
    ASSERT_LE(lo, hi) << i;
    ASSERT_EQ(hi + 1, H::BucketLower(i + 1)) << "gap or overlap after bucket " << i;
    ASSERT_EQ(H::BucketIndex(lo), i);
    ASSERT_EQ(H::BucketIndex(hi), i);
    if (lo >= 16) {
      ASSERT_LE(static_cast<double>(hi - lo + 1) / static_cast<double>(lo), 1.0 / 16) << i;
    }
  }
  EXPECT_EQ(H::BucketUpper(H::kBuckets - 1), kMaxU64);
}

TEST(LatencyHistogramTest, HugeValuesGoToTheLastBucket) {
  const uint64_t two40 = uint64_t{1} << 40;
  EXPECT_EQ(H::BucketIndex(two40 - 1), H::kBuckets - 2);
  EXPECT_EQ(H::BucketIndex(two40), H::kBuckets - 1);
  EXPECT_EQ(H::BucketIndex(uint64_t{1} << 50), H::kBuckets - 1);
  EXPECT_EQ(H::BucketIndex(kMaxU64), H::kBuckets - 1);

  H h;
  h.Record(two40);
  h.Record(uint64_t{1} << 50);
  HistogramSnapshot s = h.Snapshot();
  EXPECT_EQ(s.count, 2u);
  EXPECT_EQ(s.max, uint64_t{1} << 50);
  EXPECT_EQ(s.buckets[H::kBuckets - 1], 2u);
  EXPECT_EQ(s.Percentile(1.0), uint64_t{1} << 50);  // overflow bucket capped at max

  h.Record(kMaxU64);
  s = h.Snapshot();
  EXPECT_EQ(s.max, kMaxU64);
  EXPECT_EQ(s.Percentile(1.0), kMaxU64);
}

TEST(LatencyHistogramTest, EmptySnapshot) {
  H h;
  const HistogramSnapshot s = h.Snapshot();
  EXPECT_EQ(s.buckets.size(), H::kBuckets);
  EXPECT_EQ(s.count, 0u);
  EXPECT_EQ(s.sum, 0u);
  EXPECT_EQ(s.max, 0u);
  EXPECT_EQ(s.Percentile(0.5), 0u);
  EXPECT_EQ(s.Percentile(0.99), 0u);
  EXPECT_EQ(s.Mean(), 0.0);
  EXPECT_EQ(HistogramSnapshot{}.Percentile(0.5), 0u);  // default-constructed, no buckets
}

TEST(LatencyHistogramTest, SingleValueAndQuantileEdges) {
  H h;
  h.Record(1000);
  const HistogramSnapshot s = h.Snapshot();
  EXPECT_EQ(s.count, 1u);
  EXPECT_EQ(s.sum, 1000u);
  EXPECT_DOUBLE_EQ(s.Mean(), 1000.0);
  // The bucket holding 1000 is wider than 1, but the answer is capped at max.
  for (double q : {0.0, 0.5, 1.0, -1.0, 2.0, std::numeric_limits<double>::quiet_NaN()}) {
    EXPECT_EQ(s.Percentile(q), 1000u) << q;
  }
}

TEST(LatencyHistogramTest, PercentilesMatchSortedReference) {
  std::mt19937_64 rng(12345);
  // Mix of scales: log-uniform up to ~2^30, so every bucket width is exercised.
  std::uniform_real_distribution<double> log2v(0.0, 30.0);
  for (int trial = 0; trial < 5; ++trial) {
    H h;
    std::vector<uint64_t> values(2000 + 1000 * trial);
    uint64_t sum = 0;
    for (uint64_t& v : values) {
      v = static_cast<uint64_t>(std::exp2(log2v(rng)));
      h.Record(v);
      sum += v;
    }
    const HistogramSnapshot s = h.Snapshot();
    ASSERT_EQ(s.count, values.size());
    ASSERT_EQ(s.sum, sum);
    ASSERT_EQ(s.max, *std::max_element(values.begin(), values.end()));
    for (double q : {0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0}) {
      const uint64_t exact = ExactPercentile(values, q);
      const uint64_t got = s.Percentile(q);
      // Same bucket as the exact value, never below it, at most 1/16 above.
      EXPECT_GE(got, exact) << "q=" << q;
      EXPECT_LE(got - exact, exact / 16) << "q=" << q << " exact=" << exact;
      EXPECT_EQ(H::BucketIndex(got), H::BucketIndex(exact)) << "q=" << q;
    }
  }
}

TEST(LatencyHistogramTest, ConcurrentRecordingKeepsExactTotals) {
  constexpr int kThreads = 4;
  constexpr uint64_t kPerThread = 20000;
  H h;
  std::atomic<bool> stop{false};
  // A reader snapshots while writers record; every snapshot must be plausible.
  std::thread reader([&] {
    uint64_t last_count = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      const HistogramSnapshot s = h.Snapshot();
      EXPECT_GE(s.count, last_count);
      EXPECT_LE(s.count, kThreads * kPerThread);
      EXPECT_LE(s.Percentile(0.99), s.max);
      last_count = s.count;
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&h, t] {
      for (uint64_t i = 0; i < kPerThread; ++i) h.Record(i * kThreads + t);
    });
  }
  for (auto& w : writers) w.join();
  stop.store(true, std::memory_order_relaxed);
  reader.join();

  const uint64_t n = kThreads * kPerThread;  // values 0..n-1, each once
  const HistogramSnapshot s = h.Snapshot();
  EXPECT_EQ(s.count, n);
  EXPECT_EQ(s.sum, n * (n - 1) / 2);
  EXPECT_EQ(s.max, n - 1);
  uint64_t total = 0;
  for (uint64_t c : s.buckets) total += c;
  EXPECT_EQ(total, n);
  for (size_t i = 0; i < 40; ++i) EXPECT_EQ(s.buckets[i], H::BucketUpper(i) - H::BucketLower(i) + 1);
}

TEST(ModelStatsTest, CountersAndHistograms) {
  ModelStats stats(8);
  stats.AddRequests(3, 10);
  stats.AddRequests(2, 4);
  stats.AddRejected(5);
  stats.AddDeadlineMissed(2);
  stats.AddErrors(1);
  stats.AddCancelled(4);
  stats.RecordRequest(100, 250);
  stats.RecordRequest(300, 900);

  const StatsSnapshot s = stats.Snapshot();
  EXPECT_EQ(s.requests, 5u);
  EXPECT_EQ(s.rows, 14u);
  EXPECT_EQ(s.rejected, 5u);
  EXPECT_EQ(s.deadline_missed, 2u);
  EXPECT_EQ(s.errors, 1u);
  EXPECT_EQ(s.cancelled, 4u);
  EXPECT_EQ(s.batches, 0u);
  EXPECT_EQ(s.queue_us.count, 2u);
  EXPECT_EQ(s.queue_us.sum, 400u);
  EXPECT_EQ(s.end_to_end_us.max, 900u);
  EXPECT_DOUBLE_EQ(s.end_to_end_us.Mean(), 575.0);
  EXPECT_EQ(s.compute_us.count, 0u);
  EXPECT_EQ(s.mean_batch_size(), 0.0);
  EXPECT_EQ(s.fill_ratio(), 0.0);
}

TEST(ModelStatsTest, BatchSizeDistributionAndFillRatio) {
  ModelStats stats(8);
  stats.RecordBatch(8, 1000);
  stats.RecordBatch(4, 600);
  stats.RecordBatch(4, 500);
  stats.RecordBatch(2, 300);
  stats.RecordBatch(12, 1200);  // over the limit: counted as a full batch

  const StatsSnapshot s = stats.Snapshot();
  EXPECT_EQ(s.max_batch_size, 8u);
  ASSERT_EQ(s.batch_size_counts.size(), 9u);
  const std::vector<uint64_t> expected = {0, 0, 1, 0, 2, 0, 0, 0, 2};
  EXPECT_EQ(s.batch_size_counts, expected);
  EXPECT_EQ(s.batches, 5u);
  EXPECT_EQ(s.compute_us.count, 5u);
  EXPECT_EQ(s.compute_us.sum, 3600u);
  EXPECT_EQ(s.compute_us.max, 1200u);
  EXPECT_DOUBLE_EQ(s.mean_batch_size(), 26.0 / 5);       // 8+4+4+2+8
  EXPECT_DOUBLE_EQ(s.fill_ratio(), 26.0 / (5.0 * 8.0));
}

TEST(ModelStatsTest, ResetZeroesEverythingThenCountsAgain) {
  ModelStats stats(8);
  stats.AddRequests(3, 7);
  stats.AddRejected(1);
  stats.AddDeadlineMissed(1);
  stats.AddErrors(2);
  stats.AddCancelled(1);
  stats.RecordBatch(4, 100, 5000);
  stats.RecordRequest(10, 120);
  EXPECT_EQ(stats.Snapshot().last_batch_end_us, 5000u);

  stats.Reset();
  StatsSnapshot s = stats.Snapshot();
  EXPECT_EQ(s.requests + s.rows + s.rejected + s.deadline_missed + s.errors + s.cancelled + s.batches, 0u);
  EXPECT_EQ(s.last_batch_end_us, 0u);
  for (const HistogramSnapshot* h : {&s.queue_us, &s.compute_us, &s.end_to_end_us}) {
    EXPECT_EQ(h->count + h->sum + h->max, 0u);
    for (uint64_t b : h->buckets) EXPECT_EQ(b, 0u);
  }
  for (uint64_t n : s.batch_size_counts) EXPECT_EQ(n, 0u);

  stats.RecordBatch(2, 50, 9000);
  stats.RecordRequest(5, 60);
  s = stats.Snapshot();
  EXPECT_EQ(s.batches, 1u);
  EXPECT_EQ(s.batch_size_counts[2], 1u);
  EXPECT_EQ(s.last_batch_end_us, 9000u);
  EXPECT_EQ(s.end_to_end_us.count, 1u);
  EXPECT_EQ(s.end_to_end_us.max, 60u);
}

TEST(ModelStatsTest, ZeroAndLargeMaxBatchSize) {
  ModelStats zero(0);
  zero.RecordBatch(3, 10);
  StatsSnapshot s = zero.Snapshot();
  ASSERT_EQ(s.batch_size_counts.size(), 1u);
  EXPECT_EQ(s.batch_size_counts[0], 1u);
  EXPECT_EQ(s.fill_ratio(), 0.0);

  ModelStats big(1000);  // spans many counter lines
  for (uint32_t r = 0; r <= 1000; ++r) big.RecordBatch(r, 1);
  s = big.Snapshot();
  ASSERT_EQ(s.batch_size_counts.size(), 1001u);
  for (uint64_t c : s.batch_size_counts) ASSERT_EQ(c, 1u);
  EXPECT_DOUBLE_EQ(s.fill_ratio(), 0.5);
}

TEST(ModelStatsTest, ConcurrentSubmittersAndExecutors) {
  constexpr int kThreads = 4;
  constexpr uint32_t kIters = 5000;
  ModelStats stats(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&stats, t] {
      for (uint32_t i = 0; i < kIters; ++i) {
        if (t % 2 == 0) {
          stats.AddRequests(1, 2);
          stats.AddRejected(1);
        } else {
          stats.RecordBatch(i % 5, i);
          stats.RecordRequest(i, 2 * i);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const StatsSnapshot s = stats.Snapshot();
  EXPECT_EQ(s.requests, 2u * kIters);
  EXPECT_EQ(s.rows, 4u * kIters);
  EXPECT_EQ(s.rejected, 2u * kIters);
  EXPECT_EQ(s.batches, 2u * kIters);
  for (uint64_t c : s.batch_size_counts) EXPECT_EQ(c, 2u * kIters / 5);
  EXPECT_DOUBLE_EQ(s.mean_batch_size(), 2.0);
  EXPECT_DOUBLE_EQ(s.fill_ratio(), 0.5);
  EXPECT_EQ(s.queue_us.count, 2u * kIters);
  EXPECT_EQ(s.end_to_end_us.max, 2u * (kIters - 1));
}

}  // namespace
}  // namespace inferline
