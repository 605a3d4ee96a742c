// Tests for inferline/batch_policy.h: DecideBatch as a table of cases (no
// threads, no clock), BatchPolicy::Validate, ComputeModel and ComputeEstimator.
#include "inferline/batch_policy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace inferline {
namespace {

using Kind = BatchDecision::Kind;
constexpr uint64_t kForever = BatchDecision::kForever;
constexpr uint64_t kT0 = 1'000'000;  // an arbitrary "now" base, microseconds

struct Case {
  std::string name;
  std::vector<PendingItem> items;  // dispatch order
  uint64_t oldest_enqueue_us;
  uint64_t now_us;
  BatchPolicy policy;
  ComputeModel compute;
  // Expected decision.
  Kind kind;
  size_t take = 0;      // kDispatch
  uint32_t rows = 0;    // kDispatch
  uint64_t wait_us = 0; // kWait
};

BatchPolicy Policy(uint32_t max, uint64_t delay_us, std::vector<uint32_t> preferred = {},
                   BatchingMode mode = BatchingMode::kDeadlineAware, uint64_t slack_us = 200) {
  BatchPolicy p;
  p.max_batch_size = max;
  p.max_queue_delay_us = delay_us;
  p.preferred_batch_sizes = std::move(preferred);
  p.mode = mode;
  p.deadline_slack_us = slack_us;
  return p;
}

// `n` one-row items enqueued at `enqueue_us`, no deadline.
std::vector<PendingItem> Ones(size_t n, uint64_t enqueue_us) {
  return std::vector<PendingItem>(n, PendingItem{1, enqueue_us, 0});
}

Case Dispatch(std::string name, std::vector<PendingItem> items, uint64_t oldest, uint64_t now, BatchPolicy p,
              ComputeModel c, size_t take, uint32_t rows) {
  return Case{std::move(name), std::move(items), oldest, now, std::move(p), c, Kind::kDispatch, take, rows, 0};
}

Case Wait(std::string name, std::vector<PendingItem> items, uint64_t oldest, uint64_t now, BatchPolicy p,
          ComputeModel c, uint64_t wait_us) {
  return Case{std::move(name), std::move(items), oldest, now, std::move(p), c, Kind::kWait, 0, 0, wait_us};
}

const ComputeModel kNoCompute{};
// 1000 us fixed + 100 us per row.
const ComputeModel kLinear{1000.0, 100.0};

std::vector<Case> Cases() {
  std::vector<Case> c;
  // Rule 1.
  c.push_back(Wait("empty waits forever", {}, 0, kT0, Policy(8, 5000), kNoCompute, kForever));
  c.push_back(Wait("empty waits forever even with delay 0", {}, 0, kT0, Policy(8, 0), kNoCompute, kForever));

  // Rule 2: full.
  c.push_back(Dispatch("rows == max dispatches", Ones(4, kT0), kT0, kT0, Policy(4, 5000), kNoCompute, 4, 4));
  c.push_back(Dispatch("next does not fit: prefix", {{3, kT0, 0}, {2, kT0, 0}}, kT0, kT0, Policy(4, 5000),
                       kNoCompute, 1, 3));
  c.push_back(Dispatch("next does not fit among several", {{1, kT0, 0}, {2, kT0, 0}, {2, kT0, 0}, {1, kT0, 0}}, kT0,
                       kT0, Policy(4, 5000), kNoCompute, 2, 3));
  c.push_back(Dispatch("view stopping after the misfit", {{2, kT0, 0}, {2, kT0, 0}, {5, kT0, 0}}, kT0, kT0,
                       Policy(5, 5000), kNoCompute, 2, 4));
  c.push_back(Dispatch("one multi-row item == max", {{5, kT0, 0}}, kT0, kT0, Policy(5, 5000), kNoCompute, 1, 5));
  c.push_back(Dispatch("multi-row items fill exactly", {{2, kT0, 0}, {3, kT0, 0}, {1, kT0, 0}}, kT0, kT0,
                       Policy(5, 5000), kNoCompute, 2, 5));
  c.push_back(Wait("multi-row items under max wait", {{2, kT0, 0}, {2, kT0, 0}}, kT0, kT0, Policy(5, 5000),
                   kNoCompute, 5000));

  // Rule 3: preferred sizes.
  c.push_back(Dispatch("preferred size reached", Ones(3, kT0), kT0, kT0, Policy(8, 5000, {3, 6}), kNoCompute, 3, 3));
  c.push_back(Dispatch("second preferred size", {{4, kT0, 0}, {2, kT0, 0}}, kT0, kT0, Policy(8, 5000, {3, 6}),
                       kNoCompute, 2, 6));
  c.push_back(Wait("between preferred sizes", Ones(4, kT0), kT0, kT0 + 1000, Policy(8, 5000, {3, 6}), kNoCompute,
                   4000));

  // Rule 4: the oldest request waited max_queue_delay_us.
  c.push_back(Dispatch("oldest waited exactly the delay", Ones(2, kT0), kT0, kT0 + 5000, Policy(8, 5000),
                       kNoCompute, 2, 2));
  c.push_back(Dispatch("oldest waited longer", Ones(2, kT0), kT0, kT0 + 9000, Policy(8, 5000), kNoCompute, 2, 2));
  c.push_back(Wait("1 us before the delay", Ones(2, kT0), kT0, kT0 + 4999, Policy(8, 5000), kNoCompute, 1));
  c.push_back(Dispatch("oldest is a low-priority item not in the view",
                       {{1, kT0 + 4000, 0}}, kT0, kT0 + 5000, Policy(8, 5000), kNoCompute, 1, 1));
  c.push_back(Dispatch("oldest is the low-priority item behind young high ones",
                       {{1, kT0 + 4900, 0}, {1, kT0 + 4900, 0}, {1, kT0, 0}}, kT0, kT0 + 5000, Policy(8, 5000),
                       kNoCompute, 3, 3));
  c.push_back(Wait("young items wait the remaining delay of the oldest", {{1, kT0 + 3000, 0}}, kT0 + 1000,
                   kT0 + 3500, Policy(8, 5000), kNoCompute, 2500));

  // Rule 6: wait exactly the remaining time.
  c.push_back(Wait("lone item waits the rest", Ones(1, kT0), kT0, kT0 + 1500, Policy(8, 5000), kNoCompute, 3500));
  c.push_back(Wait("lone item, just enqueued", Ones(1, kT0), kT0, kT0, Policy(8, 5000), kNoCompute, 5000));

  // max_queue_delay_us = 0.
  c.push_back(Dispatch("delay 0 dispatches at once", Ones(1, kT0), kT0, kT0, Policy(8, 0), kNoCompute, 1, 1));
  c.push_back(Dispatch("delay 0 takes the fitting prefix", Ones(3, kT0), kT0, kT0, Policy(8, 0), kNoCompute, 3, 3));

  // Rule 5: deadline-aware closes early. est(1) = 1100, slack 200: latest start = deadline - 1300.
  const uint64_t dl = kT0 + 10'000;
  c.push_back(Wait("deadline-aware shortens the wait", {{1, kT0, dl}}, kT0, kT0, Policy(8, 1'000'000), kLinear,
                   10'000 - 1300));
  c.push_back(Dispatch("deadline-aware closes at the latest start", {{1, kT0, dl}}, kT0, dl - 1300,
                       Policy(8, 1'000'000), kLinear, 1, 1));
  c.push_back(Wait("deadline-aware 1 us before the latest start", {{1, kT0, dl}}, kT0, dl - 1301,
                   Policy(8, 1'000'000), kLinear, 1));
  c.push_back(Wait("estimate grows with rows", {{3, kT0, dl}}, kT0, kT0, Policy(8, 1'000'000), kLinear,
                   10'000 - 1500));
  c.push_back(Wait("tightest deadline in the batch counts", {{1, kT0, dl + 50'000}, {1, kT0, 0}, {1, kT0, dl}}, kT0,
                   kT0, Policy(8, 1'000'000), kLinear, 10'000 - 1500));
  c.push_back(Wait("no estimate yet: slack only", {{1, kT0, dl}}, kT0, kT0, Policy(8, 1'000'000), kNoCompute,
                   10'000 - 200));
  c.push_back(Wait("zero slack, no estimate: wait until the deadline", {{1, kT0, dl}}, kT0, kT0,
                   Policy(8, 1'000'000, {}, BatchingMode::kDeadlineAware, 0), kNoCompute, 10'000));
  c.push_back(Dispatch("deadline nearer than estimate + slack", {{1, kT0, kT0 + 500}}, kT0, kT0,
                       Policy(8, 1'000'000), kLinear, 1, 1));
  c.push_back(Dispatch("deadline smaller than estimate (no underflow)", {{1, kT0, 700}}, kT0, kT0,
                       Policy(8, 1'000'000), kLinear, 1, 1));
  c.push_back(Wait("queue delay still wins when earlier", {{1, kT0, dl}}, kT0, kT0, Policy(8, 2000), kLinear, 2000));

  // Fixed-delay mode ignores deadlines.
  c.push_back(Wait("fixed delay ignores a tight deadline", {{1, kT0, dl}}, kT0, kT0,
                   Policy(8, 1'000'000, {}, BatchingMode::kFixedDelay), kLinear, 1'000'000));
  c.push_back(Wait("fixed delay ignores a passed latest start", {{1, kT0, kT0 + 500}}, kT0, kT0 + 100,
                   Policy(8, 1'000'000, {}, BatchingMode::kFixedDelay), kLinear, 999'900));
  c.push_back(Dispatch("fixed delay still closes on the delay", {{1, kT0, dl}}, kT0, kT0 + 5000,
                       Policy(8, 5000, {}, BatchingMode::kFixedDelay), kLinear, 1, 1));

  // Saturation: a huge delay must not wrap around and dispatch at once.
  c.push_back(Dispatch("huge slack closes at once (no overflow)", {{1, kT0, dl}}, kT0, kT0,
                       Policy(8, 1'000'000, {}, BatchingMode::kDeadlineAware, UINT64_MAX - 10), kLinear, 1, 1));
  c.push_back(Wait("huge delay does not overflow", Ones(1, kT0), kT0, kT0, Policy(8, UINT64_MAX), kNoCompute,
                   UINT64_MAX - kT0));
  return c;
}

TEST(DecideBatchTest, Table) {
  for (const Case& tc : Cases()) {
    SCOPED_TRACE(tc.name);
    PendingView view{tc.items.data(), tc.items.size(), tc.oldest_enqueue_us};
    BatchDecision d = DecideBatch(view, tc.policy, tc.now_us, tc.compute);
    ASSERT_EQ(d.kind, tc.kind);
    if (tc.kind == Kind::kDispatch) {
      EXPECT_EQ(d.take, tc.take);
      EXPECT_EQ(d.rows, tc.rows);
    } else {
      EXPECT_EQ(d.wait_us, tc.wait_us);
    }
  }
}

// Waiting then re-deciding at now + wait_us must dispatch: the wait is never
// too short (a spin) nor too long (a missed close).
TEST(DecideBatchTest, WaitEndsExactlyAtTheDispatch) {
  for (const Case& tc : Cases()) {
    if (tc.kind != Kind::kWait || tc.items.empty() || tc.wait_us > 1'000'000'000) continue;
    SCOPED_TRACE(tc.name);
    PendingView view{tc.items.data(), tc.items.size(), tc.oldest_enqueue_us};
    BatchDecision early = DecideBatch(view, tc.policy, tc.now_us + tc.wait_us - 1, tc.compute);
    EXPECT_EQ(early.kind, Kind::kWait);
    EXPECT_EQ(early.wait_us, 1u);
    BatchDecision at = DecideBatch(view, tc.policy, tc.now_us + tc.wait_us, tc.compute);
    EXPECT_EQ(at.kind, Kind::kDispatch);
    EXPECT_EQ(at.take, tc.items.size());
  }
}

TEST(DecideBatchTest, DeadlineAwareWaitShrinksAsTheDeadlineNears) {
  BatchPolicy p = Policy(8, 1'000'000);
  uint64_t prev = kForever;
  for (uint64_t dl_offset : {900'000u, 100'000u, 10'000u, 2'000u}) {
    std::vector<PendingItem> items{{1, kT0, kT0 + dl_offset}};
    BatchDecision d = DecideBatch(PendingView{items.data(), 1, kT0}, p, kT0, kLinear);
    ASSERT_EQ(d.kind, Kind::kWait) << dl_offset;
    EXPECT_EQ(d.wait_us, dl_offset - 1300);
    EXPECT_LT(d.wait_us, prev);
    prev = d.wait_us;
  }
  // The same items in fixed-delay mode all wait the full delay.
  p.mode = BatchingMode::kFixedDelay;
  std::vector<PendingItem> items{{1, kT0, kT0 + 2'000}};
  BatchDecision d = DecideBatch(PendingView{items.data(), 1, kT0}, p, kT0, kLinear);
  EXPECT_EQ(d.kind, Kind::kWait);
  EXPECT_EQ(d.wait_us, 1'000'000u);
}

TEST(DecideBatchTest, DispatchTakesTheLongestFittingPrefixOnly) {
  // Never skips a request to fit a later, smaller one.
  std::vector<PendingItem> items{{3, kT0, 0}, {4, kT0, 0}, {1, kT0, 0}};
  BatchDecision d = DecideBatch(PendingView{items.data(), items.size(), kT0}, Policy(6, 5000), kT0, kNoCompute);
  ASSERT_EQ(d.kind, Kind::kDispatch);
  EXPECT_EQ(d.take, 1u);
  EXPECT_EQ(d.rows, 3u);
}

// ---- BatchPolicy::Validate -------------------------------------------------

TEST(BatchPolicyValidateTest, DefaultsAreValid) { EXPECT_TRUE(BatchPolicy{}.Validate("ctx").ok()); }

TEST(BatchPolicyValidateTest, ErrorsNameTheContextAndTheField) {
  struct Bad {
    std::string name;
    BatchPolicy policy;
    std::string field;
  };
  std::vector<Bad> bad{
      {"max 0", Policy(0, 5000), "max_batch_size"},
      {"preferred 0", Policy(8, 5000, {0}), "preferred_batch_sizes[0]"},
      {"preferred above max", Policy(8, 5000, {4, 9}), "preferred_batch_sizes[1]"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.name);
    Status st = b.policy.Validate("model 'm' version 7");
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("model 'm' version 7"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find(b.field), std::string::npos) << st.message();
  }
  EXPECT_TRUE(Policy(8, 5000, {1, 8}).Validate("ctx").ok());
  EXPECT_TRUE(Policy(1, 0).Validate("ctx").ok());
}

// ---- ComputeModel / ComputeEstimator ---------------------------------------

TEST(ComputeModelTest, EstimateIsLinearRoundedUpAndNeverNegative) {
  EXPECT_EQ((ComputeModel{1e30, 0.0}.EstimateUs(1)), UINT64_MAX);  // saturates, no UB cast
  EXPECT_EQ((ComputeModel{std::nan(""), 0.0}.EstimateUs(1)), 0u);
  EXPECT_EQ((ComputeModel{1000.0, 100.0}.EstimateUs(3)), 1300u);
  EXPECT_EQ((ComputeModel{0.5, 0.0}.EstimateUs(1)), 1u);
  EXPECT_EQ((ComputeModel{10.0, 0.25}.EstimateUs(3)), 11u);
  EXPECT_EQ((ComputeModel{-50.0, 1.0}.EstimateUs(10)), 0u);
  EXPECT_EQ(ComputeModel{}.EstimateUs(32), 0u);
}

TEST(ComputeEstimatorTest, NoDataEstimatesZero) {
  ComputeEstimator e;
  ComputeModel m = e.Current();
  EXPECT_EQ(m.fixed_us, 0.0);
  EXPECT_EQ(m.per_row_us, 0.0);
  EXPECT_EQ(m.EstimateUs(16), 0u);
}

TEST(ComputeEstimatorTest, OneSizeGivesAConstant) {
  ComputeEstimator e;
  for (int i = 0; i < 10; ++i) e.Observe(8, 400);
  ComputeModel m = e.Current();
  EXPECT_NEAR(m.fixed_us, 400.0, 1e-6);
  EXPECT_EQ(m.per_row_us, 0.0);
  EXPECT_EQ(m.EstimateUs(1), 400u);
  EXPECT_EQ(m.EstimateUs(8), 400u);
}

TEST(ComputeEstimatorTest, TwoSizesFitAPlusBn) {
  ComputeEstimator e;
  // t = 200 + 50 n, alternating sizes 2 and 10.
  for (int i = 0; i < 20; ++i) {
    e.Observe(2, 300);
    e.Observe(10, 700);
  }
  ComputeModel m = e.Current();
  EXPECT_NEAR(m.fixed_us, 200.0, 1e-6);
  EXPECT_NEAR(m.per_row_us, 50.0, 1e-6);
  EXPECT_EQ(m.EstimateUs(32), 1800u);
}

TEST(ComputeEstimatorTest, ManySizesFitTheLine) {
  ComputeEstimator e(0.9);
  for (int i = 0; i < 50; ++i) e.Observe(1 + i % 16, 1000 + 30 * (1 + i % 16));
  ComputeModel m = e.Current();
  EXPECT_NEAR(m.fixed_us, 1000.0, 1e-3);
  EXPECT_NEAR(m.per_row_us, 30.0, 1e-3);
}

TEST(ComputeEstimatorTest, RecentObservationsDominate) {
  ComputeEstimator e(0.9);
  for (int i = 0; i < 200; ++i) {  // old regime: t = 100 + 10 n
    e.Observe(4, 140);
    e.Observe(16, 260);
  }
  for (int i = 0; i < 50; ++i) {  // new regime (slower device): t = 1000 + 100 n
    e.Observe(4, 1400);
    e.Observe(16, 2600);
  }
  ComputeModel m = e.Current();
  EXPECT_NEAR(m.fixed_us, 1000.0, 1.0);
  EXPECT_NEAR(m.per_row_us, 100.0, 0.1);
  // And it adapts back.
  for (int i = 0; i < 50; ++i) {
    e.Observe(4, 140);
    e.Observe(16, 260);
  }
  m = e.Current();
  EXPECT_NEAR(m.fixed_us, 100.0, 1.0);
  EXPECT_NEAR(m.per_row_us, 10.0, 0.1);
}

TEST(ComputeEstimatorTest, NegativeSlopeIsClampedToNonNegative) {
  ComputeEstimator e;
  for (int i = 0; i < 10; ++i) {
    e.Observe(2, 900);
    e.Observe(8, 300);
  }
  ComputeModel m = e.Current();
  EXPECT_GE(m.per_row_us, 0.0);
  // With the slope clamped to 0 the estimate is the (recency-weighted) mean time.
  EXPECT_GT(m.fixed_us, 300.0);
  EXPECT_LT(m.fixed_us, 900.0);
  EXPECT_EQ(m.EstimateUs(2), m.EstimateUs(8));
}

}  // namespace
}  // namespace inferline
