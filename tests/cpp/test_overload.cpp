// Tests for the queue discipline under overload (model.h QueuePolicy): CoDel's
// standing-queue test, newest-first service, shedding the oldest, and requests
// that can no longer meet their deadlines answered without being computed.
//
// The scripted tests run on a ManualClock that only the backend moves (each
// batch "computes" for kComputeUs), so every dispatch chance happens at a known
// time and the order of service is exact.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "inferline/model.h"
#include "test_util.h"
#include "toy_model.h"

namespace inferline {
namespace {

using namespace toy;  // NOLINT: the toy model's fixtures

using testing::OpenOnExit;

constexpr uint64_t kMs = 1000;
constexpr uint64_t kComputeUs = 10 * kMs;

// y = x * 2 + 1; each call records the first column of its rows, runs `on_call`
// (call index, from 0) and moves the clock by kComputeUs. Waits at the gate first.
class ClockedBackend final : public Backend {
 public:
  ClockedBackend(ManualClock* clock, Gate* gate) : clock_(clock), gate_(gate) {}

  Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override {
    const Tensor& x = inputs.at(0).tensor;
    const auto* in = static_cast<const float*>(x.data);
    size_t index;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::vector<float> col0;
      for (int64_t r = 0; r < x.shape[0]; ++r) col0.push_back(in[r * kF]);
      index = calls_.size();
      calls_.push_back(std::move(col0));
    }
    entered_.fetch_add(1);
    gate_->Pass();
    if (on_call) on_call(index);
    clock_->AdvanceUs(kComputeUs);
    Tensor y = Tensor::Allocate(DataType::kFloat32, x.shape);
    auto* out = static_cast<float*>(y.data);
    for (int64_t i = 0; i < x.shape[0] * kF; ++i) out[i] = Expect(in[i]);
    outputs->push_back(NamedTensor{"y", std::move(y)});
    return Status::Ok();
  }

  // Column 0 of every row computed, in order of computation.
  std::vector<float> computed() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<float> out;
    for (const auto& c : calls_) out.insert(out.end(), c.begin(), c.end());
    return out;
  }
  bool WaitEntered(int n) const {
    for (auto end = std::chrono::steady_clock::now() + kWaitTimeout; std::chrono::steady_clock::now() < end;) {
      if (entered_.load() >= n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  }

  std::function<void(size_t)> on_call;  // set before the first call

 private:
  ManualClock* clock_;
  Gate* gate_;
  mutable std::mutex mu_;
  std::vector<std::vector<float>> calls_;
  std::atomic<int> entered_{0};
};

ModelConfig OverloadConfig(OverloadOrder order, uint64_t interval_us) {
  ModelConfig c = Config(1, 0);  // one row per batch, dispatched as soon as an executor is free
  c.queue.overload = order;
  c.queue.target_us = 1 * kMs;
  c.queue.interval_us = interval_us;
  return c;
}

// One scripted run: request 0 occupies the executor while requests 1-4 queue at
// t0 and 5-8 at t0 + 3 ms; then the gate opens and batches of one row run, each
// moving the clock 10 ms. Column 0 of request k is 100 * k. Returns the requests in
// the order they were computed (by k) and every answer by tag (= k).
struct Script {
  std::vector<int> order;
  std::map<uint64_t, InferResult> answers;
  StatsSnapshot stats;
};

Script RunScript(OverloadOrder order, uint64_t interval_us, const std::map<int, uint64_t>& deadline_after_t0 = {}) {
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  Gate gate(false);
  auto backend = std::make_shared<ClockedBackend>(&clock, &gate);
  auto model = CreateOrFail(OverloadConfig(order, interval_us), backend, &clock);
  Script out;
  if (model == nullptr) return out;
  OpenOnExit opener(gate);
  std::mt19937 rng(7);
  const uint64_t t0 = clock.NowUs();
  auto submit = [&](int k) {
    auto it = deadline_after_t0.find(k);
    const uint64_t deadline = it == deadline_after_t0.end() ? 0 : t0 + it->second;
    Status st = model->Submit(Request(payloads.Add(1, 100.0f * k, rng), &sink, k, 0, deadline));
    EXPECT_TRUE(st.ok()) << "request " << k << ": " << st.ToString();
  };
  submit(0);
  EXPECT_TRUE(backend->WaitEntered(1));
  for (int k = 1; k <= 4; ++k) submit(k);
  clock.AdvanceUs(3 * kMs);
  for (int k = 5; k <= 8; ++k) submit(k);
  gate.Open();
  EXPECT_TRUE(sink.WaitFor(9));
  for (float v : backend->computed()) out.order.push_back(static_cast<int>(v / 100.0f));
  out.answers = sink.ByTag();
  model->Shutdown(true);
  out.stats = model->Stats();
  return out;
}

TEST(OverloadTest, FifoServesOldestFirstEvenWhenTheQueueStands) {
  Script s = RunScript(OverloadOrder::kFifo, 10 * kMs);
  EXPECT_EQ(s.order, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(OverloadTest, AStandingQueueIsServedNewestFirstUntilItClears) {
  // Chance at t0+13: the oldest (1) has waited 13 ms > 1 ms target: above target
  // since now, not yet standing (needs 10 ms), so 1 runs. Chance at t0+23: above
  // target for 10 ms: standing, newest first: 8, 7, 6, 5, then the older 4, 3, 2.
  Script s = RunScript(OverloadOrder::kNewestFirst, 10 * kMs);
  EXPECT_EQ(s.order, (std::vector<int>{0, 1, 8, 7, 6, 5, 4, 3, 2}));
  for (int k = 0; k <= 8; ++k) EXPECT_TRUE(s.answers[k].status.ok()) << k << ": " << s.answers[k].status.ToString();
  EXPECT_EQ(s.stats.shed, 0u);
}

TEST(OverloadTest, ANewQueueIsNotStandingBeforeAFullInterval) {
  // With a 100 ms interval the queue never stands in this 90 ms script: plain FIFO.
  Script s = RunScript(OverloadOrder::kNewestFirst, 100 * kMs);
  EXPECT_EQ(s.order, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(OverloadTest, WhileStandingAHopelessRequestIsAnsweredAtOnceAndNeverComputed) {
  // At the standing chance (t0+23) a batch finishes no earlier than t0+33.2
  // (10 ms estimated compute + 0.2 ms slack): request 2 (deadline t0+30) cannot
  // make it and is answered then, before its deadline. Request 3 (deadline t0+60)
  // still could, and waits behind the newer ones; at the chance at t0+53 it no
  // longer could, and is answered the same way.
  Script s = RunScript(OverloadOrder::kNewestFirst, 10 * kMs, {{2, 30 * kMs}, {3, 60 * kMs}});
  EXPECT_EQ(s.order, (std::vector<int>{0, 1, 8, 7, 6, 5, 4}));
  EXPECT_EQ(s.answers[2].status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(s.answers[2].status.message(), "overloaded: cannot finish before its deadline"))
      << s.answers[2].status.message();
  EXPECT_LT(s.answers[2].queue_us, 30 * kMs) << "answered before its deadline passed";
  EXPECT_EQ(s.answers[3].status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(s.stats.deadline_missed, 2u);
  for (int k : {0, 1, 4, 5, 6, 7, 8}) EXPECT_TRUE(s.answers[k].status.ok()) << k;
}

TEST(OverloadTest, ShedOldestAnswersLongWaitersResourceExhausted) {
  // Chance at t0+23: standing; 2-4 have waited 23 ms and 5-8 20 ms, all more
  // than the 10 ms interval: shed. Nothing waits any more, so the queue stops standing.
  Script s = RunScript(OverloadOrder::kShedOldest, 10 * kMs);
  EXPECT_EQ(s.order, (std::vector<int>{0, 1}));
  for (int k = 2; k <= 8; ++k) {
    EXPECT_EQ(s.answers[k].status.code(), StatusCode::kResourceExhausted) << k;
    EXPECT_TRUE(Contains(s.answers[k].status.message(), "overloaded: shed after waiting longer than 10 ms"))
        << s.answers[k].status.message();
  }
  EXPECT_EQ(s.stats.shed, 7u);
  EXPECT_EQ(s.stats.errors, 0u);
}

TEST(OverloadTest, ShedOldestKeepsRecentArrivalsAndServesThemOldestFirst) {
  // A 25 ms interval. Requests 1-8 queue at t0; 9 and 10 arrive at t0+30, while
  // batch 3 computes. Chances: t0+10 (above target from now on), +20, +30 run 1, 2,
  // 3 oldest first; at +40 the queue has stood above target for 30 ms: standing.
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  Gate gate(false);
  auto backend = std::make_shared<ClockedBackend>(&clock, &gate);
  auto model = CreateOrFail(OverloadConfig(OverloadOrder::kShedOldest, 25 * kMs), backend, &clock);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(7);
  auto submit = [&](int k) {
    EXPECT_TRUE(model->Submit(Request(payloads.Add(1, 100.0f * k, rng), &sink, k)).ok()) << k;
  };
  backend->on_call = [&](size_t call) {
    if (call == 3) {  // batch 3 computes from t0+30 to t0+40
      submit(9);
      submit(10);
    }
  };
  submit(0);
  ASSERT_TRUE(backend->WaitEntered(1));
  for (int k = 1; k <= 8; ++k) submit(k);
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(11));
  std::vector<int> order;
  for (float v : backend->computed()) order.push_back(static_cast<int>(v / 100.0f));
  // At +40, 4-8 have waited 40 ms > 25: shed; 9 and 10 (10 ms) run, oldest first.
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 9, 10}));
  auto answers = sink.ByTag();
  for (int k = 4; k <= 8; ++k) EXPECT_EQ(answers[k].status.code(), StatusCode::kResourceExhausted) << k;
  model->Shutdown(true);
  EXPECT_EQ(model->Stats().shed, 5u);
}

// Concurrency (run under TSan): submitters on several threads with deadlines flood
// a slow backend on the real clock; every accepted request is answered exactly once,
// either computed correctly or refused with an overload code, and the stats add up.
TEST(OverloadTest, FloodedModelAnswersEveryRequestOnceWithAnOverloadCodeOrItsRows) {
  for (OverloadOrder order : {OverloadOrder::kNewestFirst, OverloadOrder::kShedOldest}) {
    class SlowBackend final : public Backend {
     public:
      Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override {
        std::this_thread::sleep_for(std::chrono::microseconds(300));
        const Tensor& x = inputs.at(0).tensor;
        Tensor y = Tensor::Allocate(DataType::kFloat32, x.shape);
        const auto* in = static_cast<const float*>(x.data);
        auto* out = static_cast<float*>(y.data);
        for (int64_t i = 0; i < x.shape[0] * kF; ++i) out[i] = Expect(in[i]);
        outputs->push_back(NamedTensor{"y", std::move(y)});
        return Status::Ok();
      }
    };
    ModelConfig config = Config(4, 500);
    config.queue.overload = order;
    config.queue.target_us = 2 * kMs;
    config.queue.interval_us = 5 * kMs;
    config.instances = 2;
    constexpr int kThreads = 4;
    const int per_thread = kSanitized ? 150 : 600;
    Payloads payloads;
    std::mt19937 rng(3);
    std::vector<const std::vector<float>*> inputs;
    for (int i = 0; i < kThreads * per_thread; ++i) inputs.push_back(&payloads.Add(1, static_cast<float>(i), rng));
    CollectSink sink;
    auto model = CreateOrFail(config, std::make_shared<SlowBackend>());
    ASSERT_NE(model, nullptr);
    std::atomic<int> accepted{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < per_thread; ++i) {
          const int k = t * per_thread + i;
          const uint64_t deadline = model->NowUs() + (k % 3 == 0 ? 0 : 20 * kMs);
          if (model->Submit(Request(*inputs[k], &sink, k, k % 2, k % 3 == 0 ? 0 : deadline)).ok()) ++accepted;
          if (i % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
      });
    }
    for (auto& th : threads) th.join();
    ASSERT_TRUE(sink.WaitFor(accepted.load()));
    model->Shutdown(true);
    auto answers = sink.ByTag();
    EXPECT_EQ(answers.size(), static_cast<size_t>(accepted.load()));
    uint64_t ok = 0, late = 0, shed = 0;
    for (const auto& [tag, r] : answers) {
      switch (r.status.code()) {
        case StatusCode::kOk: ++ok; ExpectComputed(r, *inputs[tag]); break;
        case StatusCode::kDeadlineExceeded: ++late; break;
        case StatusCode::kResourceExhausted: ++shed; break;
        default: ADD_FAILURE() << "tag " << tag << ": " << r.status.ToString();
      }
    }
    StatsSnapshot st = model->Stats();
    EXPECT_EQ(st.requests, static_cast<uint64_t>(accepted.load()));
    EXPECT_EQ(st.end_to_end_us.count, ok);
    EXPECT_EQ(st.deadline_missed, late);
    EXPECT_EQ(st.shed, shed);
    EXPECT_EQ(st.errors + st.cancelled, 0u);
    if (order == OverloadOrder::kNewestFirst) EXPECT_EQ(shed, 0u);
    // About 1,200 late (newest first) or 2,000 shed (shed oldest) of 2,400 here; sanitized
    // builds submit too slowly to be sure of a standing queue.
    if (!kSanitized) EXPECT_GT(late + shed, 0u) << "the flood never made the queue stand";
  }
}

}  // namespace
}  // namespace inferline
