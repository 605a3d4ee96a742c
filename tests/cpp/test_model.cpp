// Tests for inferline/model.h: the scheduler end to end through
// Model::Create / Submit / Shutdown / Stats, with small backends defined here.
//
// Timing-dependent tests use a ManualClock and Model::Wake(); the only real
// waits are bounded waits for answers (CollectSink::WaitFor) and short
// "nothing happened yet" pauses, which can only miss a bug, never fail a
// correct engine.
#include "inferline/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"
#include "toy_model.h"

namespace inferline {
namespace {

using namespace toy;  // NOLINT: the toy model's fixtures

using testing::CollectSink;
using testing::FloatView;
using testing::Gate;
using testing::kSanitized;
using testing::kWaitTimeout;
using testing::OpenOnExit;
using testing::Scaled;
using testing::ToFloats;

// ---- correctness under concurrency -----------------------------------------

TEST(ModelTest, EveryAcceptedRequestIsAnsweredOnceWithItsOwnRows) {
  const int threads = kSanitized ? 3 : 6;
  const int per_thread = Scaled(2000, 4);
  CollectSink sinks[2];
  std::vector<std::vector<std::vector<float>>> data(threads);
  double expected_sum = 0;
  uint64_t total_rows = 0;
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> u(-1000.0f, 1000.0f);
  std::uniform_int_distribution<int> rows_dist(1, 5);
  for (int t = 0; t < threads; ++t) {
    for (int i = 0; i < per_thread; ++i) {
      std::vector<float> v(static_cast<size_t>(rows_dist(rng) * kF));
      for (float& x : v) {
        x = u(rng);
        expected_sum += Expect(x);
      }
      total_rows += v.size() / kF;
      data[t].push_back(std::move(v));
    }
  }

  ModelConfig config = Config(16, 300);
  config.instances = 2;
  auto backend = std::make_shared<TestBackend>();
  auto model = CreateOrFail(config, backend);
  ASSERT_NE(model, nullptr);

  std::vector<std::thread> pool;
  std::atomic<int> refused{0};
  std::atomic<uint64_t> full{0};  // RESOURCE_EXHAUSTED, retried
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937 prio_rng(t);
      for (int i = 0; i < per_thread; ++i) {
        InferRequest r = Request(data[t][i], &sinks[(t + i) % 2], uint64_t(t) * 1'000'000 + i, prio_rng() % 2);
        Status st;
        while ((st = model->Submit(r)).code() == StatusCode::kResourceExhausted) {
          full.fetch_add(1);
          std::this_thread::yield();
        }
        if (!st.ok()) refused.fetch_add(1);
      }
    });
  }
  for (auto& th : pool) th.join();
  ASSERT_EQ(refused.load(), 0);
  const size_t total = size_t(threads) * per_thread;
  ASSERT_TRUE(sinks[0].WaitFor(total / 2)) << sinks[0].count();
  ASSERT_TRUE(sinks[1].WaitFor(total - total / 2)) << sinks[1].count();

  double sum = 0;
  size_t answered = 0;
  for (int s = 0; s < 2; ++s) {
    for (const auto& [tag, res] : sinks[s].ByTag()) {
      const int t = static_cast<int>(tag / 1'000'000), i = static_cast<int>(tag % 1'000'000);
      ASSERT_LT(t, threads);
      ASSERT_LT(i, per_thread);
      ASSERT_EQ((t + i) % 2, s) << "answer went to the wrong sink";
      ExpectComputed(res, data[t][i]);
      for (float y : ToFloats(res.outputs[0])) sum += y;
      ++answered;
    }
  }
  EXPECT_EQ(answered, total);
  EXPECT_NEAR(sum, expected_sum, 1e-6 * std::max(1.0, std::abs(expected_sum)) + 1.0);

  model->Shutdown();
  EXPECT_EQ(sinks[0].count() + sinks[1].count(), total) << "an answer arrived twice";
  StatsSnapshot s = model->Stats();
  EXPECT_EQ(s.requests, total);
  EXPECT_EQ(s.rows, total_rows);
  EXPECT_EQ(s.errors + s.cancelled + s.deadline_missed, 0u);
  EXPECT_EQ(s.rejected, full.load());
  uint64_t batch_rows = 0, batches = 0;
  for (size_t n = 0; n < s.batch_size_counts.size(); ++n) {
    batch_rows += n * s.batch_size_counts[n];
    batches += s.batch_size_counts[n];
  }
  EXPECT_EQ(batch_rows, total_rows);
  EXPECT_EQ(batches, s.batches);
  EXPECT_EQ(backend->call_count(), s.batches);
  EXPECT_EQ(s.end_to_end_us.count, total);
  // One Deliver per sink per batch at most.
  EXPECT_LE(sinks[0].deliver_calls(), s.batches);
  EXPECT_LE(sinks[1].deliver_calls(), s.batches);
}

TEST(ModelTest, OneDeliverPerSinkPerBatch) {
  Payloads payloads;
  CollectSink a, b;
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>();
  auto model = CreateOrFail(Config(8, 1'000'000), backend, &clock);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(5);
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(model->Submit(Request(payloads.Add(1, float(i), rng), i % 2 ? &a : &b, i)).ok());
  }
  ASSERT_TRUE(a.WaitFor(4));
  ASSERT_TRUE(b.WaitFor(4));
  EXPECT_EQ(backend->batch_sizes(), std::vector<size_t>({8}));
  EXPECT_EQ(a.deliver_calls(), 1u);
  EXPECT_EQ(b.deliver_calls(), 1u);
}

// ---- batch formation -------------------------------------------------------

TEST(ModelTest, BatchesFillUpToMaxWhileTheExecutorIsBusy) {
  Payloads payloads;
  CollectSink sink;
  Gate gate(false);
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>(&gate);
  auto model = CreateOrFail(Config(8, 1'000'000), backend, &clock);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(6);
  std::vector<const std::vector<float>*> in;
  for (int i = 0; i < 28; ++i) {
    in.push_back(&payloads.Add(1, float(i), rng));
    ASSERT_TRUE(model->Submit(Request(*in.back(), &sink, i)).ok());
    if (i == 7) {
      ASSERT_TRUE(backend->WaitEntered(1));  // the first 8 are running
    }
  }
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(24));
  Pause();
  EXPECT_EQ(sink.count(), 24u) << "4 leftover rows must wait for the queue delay";
  clock.AdvanceUs(1'000'000);
  model->Wake();
  ASSERT_TRUE(sink.WaitFor(28));
  EXPECT_EQ(backend->batch_sizes(), std::vector<size_t>({8, 8, 8, 4}));
  // FIFO within a priority: batches hold consecutive requests.
  auto calls = backend->calls();
  for (size_t b = 0; b < calls.size(); ++b) {
    for (size_t k = 0; k < calls[b].size(); ++k) EXPECT_EQ(calls[b][k], float(b * 8 + k));
  }
  for (const auto& [tag, res] : sink.ByTag()) ExpectComputed(res, *in[tag]);
}

TEST(ModelTest, PreferredSizeDispatchesWithoutWaiting) {
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>();
  ModelConfig config = Config(8, 1'000'000);
  config.batching.preferred_batch_sizes = {3};
  auto model = CreateOrFail(config, backend, &clock);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(7);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(model->Submit(Request(payloads.Add(1, float(i), rng), &sink, i)).ok());
  ASSERT_TRUE(sink.WaitFor(3));  // the clock never moved
  ASSERT_TRUE(model->Submit(Request(payloads.Add(3, 10.0f, rng), &sink, 3)).ok());
  ASSERT_TRUE(sink.WaitFor(4));
  EXPECT_EQ(backend->batch_sizes(), std::vector<size_t>({3, 3}));
  for (const auto& r : sink.results()) {
    EXPECT_TRUE(r.status.ok());
    EXPECT_EQ(r.queue_us, 0u);
  }
}

TEST(ModelTest, LoneRequestWaitsExactlyTheQueueDelay) {
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>();
  auto model = CreateOrFail(Config(8, 5000), backend, &clock);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(8);
  const auto& in = payloads.Add(2, 0.0f, rng);
  ASSERT_TRUE(model->Submit(Request(in, &sink, 1)).ok());
  Pause();
  EXPECT_EQ(backend->call_count(), 0u);
  clock.AdvanceUs(4999);
  model->Wake();
  Pause();
  EXPECT_EQ(backend->call_count(), 0u) << "dispatched before max_queue_delay_us";
  clock.AdvanceUs(1);
  model->Wake();
  ASSERT_TRUE(sink.WaitFor(1));
  auto res = sink.results();
  ExpectComputed(res[0], in);
  EXPECT_EQ(res[0].queue_us, 5000u);
  EXPECT_EQ(backend->batch_sizes(), std::vector<size_t>({2}));
}

TEST(ModelTest, ZeroDelayDispatchesAtOnce) {
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>();
  auto model = CreateOrFail(Config(8, 0), backend, &clock);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(9);
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 0.0f, rng), &sink, 1)).ok());
  ASSERT_TRUE(sink.WaitFor(1));
  EXPECT_TRUE(sink.results()[0].status.ok());
}

// ---- deadlines ---------------------------------------------------------------

TEST(ModelTest, TightDeadlineClosesTheBatchEarly) {
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>();
  ModelConfig config = Config(8, 1'000'000);
  config.batching.deadline_slack_us = 200;
  auto model = CreateOrFail(config, backend, &clock);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(10);
  const auto& in = payloads.Add(1, 0.0f, rng);
  // No batch has run yet, so the compute estimate is 0: latest start = deadline - 200.
  ASSERT_TRUE(model->Submit(Request(in, &sink, 1, 0, model->NowUs() + 1000)).ok());
  Pause();
  EXPECT_EQ(backend->call_count(), 0u);
  clock.AdvanceUs(799);
  model->Wake();
  Pause();
  EXPECT_EQ(backend->call_count(), 0u) << "closed before the deadline required";
  clock.AdvanceUs(1);
  model->Wake();
  ASSERT_TRUE(sink.WaitFor(1));
  ExpectComputed(sink.results()[0], in);
}

TEST(ModelTest, FixedDelayModeWaitsDespiteADeadline) {
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>();
  ModelConfig config = Config(8, 1'000'000);
  config.batching.mode = BatchingMode::kFixedDelay;
  auto model = CreateOrFail(config, backend, &clock);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(11);
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 0.0f, rng), &sink, 1, 0, model->NowUs() + 1000)).ok());
  clock.AdvanceUs(900);
  model->Wake();
  Pause();
  EXPECT_EQ(backend->call_count(), 0u);
  EXPECT_EQ(sink.count(), 0u);
  clock.AdvanceUs(100);  // now == deadline: expired, never computed
  model->Wake();
  ASSERT_TRUE(sink.WaitFor(1));
  InferResult r = sink.results()[0];
  EXPECT_EQ(r.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(r.status.message(), kCtx)) << r.status.message();
  EXPECT_TRUE(r.outputs.empty());
  EXPECT_EQ(backend->call_count(), 0u);
  EXPECT_EQ(model->Stats().deadline_missed, 1u);
}

TEST(ModelTest, DeadlinePassingWhileQueuedIsNeverComputed) {
  Payloads payloads;
  CollectSink sink;
  Gate gate(false);
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>(&gate);
  auto model = CreateOrFail(Config(8, 0), backend, &clock);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(12);
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 1.0f, rng), &sink, 1)).ok());
  ASSERT_TRUE(backend->WaitEntered(1));
  const uint64_t now = model->NowUs();
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 2.0f, rng), &sink, 2, 0, now + 100)).ok());
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 3.0f, rng), &sink, 3, 0, now + 100'000)).ok());
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 4.0f, rng), &sink, 4)).ok());
  clock.AdvanceUs(200);
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(4));
  auto by_tag = sink.ByTag();
  EXPECT_TRUE(by_tag[1].status.ok());
  EXPECT_EQ(by_tag[2].status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(by_tag[3].status.ok());
  EXPECT_TRUE(by_tag[4].status.ok());
  for (const auto& call : backend->calls()) {
    EXPECT_EQ(std::count(call.begin(), call.end(), 2.0f), 0) << "the expired request reached the backend";
  }
  EXPECT_EQ(model->Stats().deadline_missed, 1u);
}

TEST(ModelTest, AWithdrawnRequestIsAnsweredCancelledAndNeverComputed) {
  Payloads payloads;
  CollectSink sink;
  Gate gate(false);
  auto backend = std::make_shared<TestBackend>(&gate);
  auto model = CreateOrFail(Config(8, 0), backend);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(13);
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 1.0f, rng), &sink, 1)).ok());
  ASSERT_TRUE(backend->WaitEntered(1));  // the executor is busy: the next ones queue
  std::atomic<bool> gone{false}, kept{false};
  InferRequest withdrawn = Request(payloads.Add(1, 2.0f, rng), &sink, 2);
  withdrawn.cancelled = &gone;
  InferRequest staying = Request(payloads.Add(1, 3.0f, rng), &sink, 3);
  staying.cancelled = &kept;
  ASSERT_TRUE(model->Submit(withdrawn).ok());
  ASSERT_TRUE(model->Submit(staying).ok());
  gone.store(true);  // its client went away while it queued
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(3));
  auto by_tag = sink.ByTag();
  EXPECT_TRUE(by_tag[1].status.ok());
  EXPECT_EQ(by_tag[2].status.code(), StatusCode::kCancelled);
  EXPECT_NE(by_tag[2].status.message().find("cancelled by the caller"), std::string::npos);
  EXPECT_TRUE(by_tag[3].status.ok());
  for (const auto& call : backend->calls()) {
    EXPECT_EQ(std::count(call.begin(), call.end(), 2.0f), 0) << "the withdrawn request reached the backend";
  }
  EXPECT_EQ(model->Stats().cancelled, 1u);
}

TEST(ModelTest, DeadlineAlreadyPastAtSubmitIsRefused) {
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>();
  auto model = CreateOrFail(Config(8, 0), backend, &clock);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(13);
  const auto& in = payloads.Add(1, 0.0f, rng);
  for (uint64_t deadline : {model->NowUs(), model->NowUs() - 1, uint64_t{1}}) {
    Status st = model->Submit(Request(in, &sink, 1, 0, deadline));
    EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded) << st.ToString();
    EXPECT_TRUE(Contains(st.message(), kCtx)) << st.message();
  }
  // Oversize requests too.
  const auto& big = payloads.Add(20, 0.0f, rng);
  EXPECT_EQ(model->Submit(Request(big, &sink, 2, 0, model->NowUs())).code(), StatusCode::kDeadlineExceeded);
  model->Shutdown();
  EXPECT_EQ(sink.count(), 0u) << "a refused request must not be answered through its sink";
  EXPECT_EQ(backend->call_count(), 0u);
  EXPECT_EQ(model->Stats().requests, 0u);
}

// ---- priorities --------------------------------------------------------------

TEST(ModelTest, HighPriorityIsServedBeforeOlderLowPriority) {
  Payloads payloads;
  CollectSink sink;
  Gate gate(false);
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>(&gate);
  ModelConfig config = Config(2, 0);
  config.priority_levels = 3;
  auto model = CreateOrFail(config, backend, &clock);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(14);
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 0.0f, rng), &sink, 0)).ok());
  ASSERT_TRUE(backend->WaitEntered(1));
  // Low (0) first, then high (1), then "priority 9" clamped to the top level (2).
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 100.0f + i, rng), &sink, i, 0)).ok());
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 200.0f + i, rng), &sink, 10 + i, 1)).ok());
  for (int i = 1; i <= 2; ++i) ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 300.0f + i, rng), &sink, 20 + i, 9)).ok());
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(11));
  std::vector<std::vector<float>> want{{0}, {301, 302}, {201, 202}, {203, 204}, {101, 102}, {103, 104}};
  EXPECT_EQ(backend->calls(), want);
  for (const auto& r : sink.results()) EXPECT_TRUE(r.status.ok());
}

// ---- admission -----------------------------------------------------------------

TEST(ModelTest, QueueFullIsRefusedCountedAndNothingIsLost) {
  Payloads payloads;
  CollectSink sink;
  Gate gate(false);
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>(&gate);
  ModelConfig config = Config(8, 0);
  config.queue_capacity = 4;
  auto model = CreateOrFail(config, backend, &clock);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(15);
  std::map<uint64_t, const std::vector<float>*> accepted;
  accepted[0] = &payloads.Add(1, 0.0f, rng);
  ASSERT_TRUE(model->Submit(Request(*accepted[0], &sink, 0)).ok());
  ASSERT_TRUE(backend->WaitEntered(1));  // the executor is busy; nothing leaves the queue
  for (uint64_t i = 1; i <= 4; ++i) {
    accepted[i] = &payloads.Add(1, float(i), rng);
    ASSERT_TRUE(model->Submit(Request(*accepted[i], &sink, i)).ok()) << i;
  }
  for (uint64_t i = 5; i <= 6; ++i) {
    Status st = model->Submit(Request(payloads.Add(1, float(i), rng), &sink, i));
    EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
    EXPECT_TRUE(Contains(st.message(), kCtx)) << st.message();
  }
  // Another priority level has its own room.
  accepted[7] = &payloads.Add(1, 7.0f, rng);
  ASSERT_TRUE(model->Submit(Request(*accepted[7], &sink, 7, 1)).ok());
  EXPECT_EQ(model->Stats().rejected, 2u);
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(accepted.size()));
  model->Shutdown();
  auto by_tag = sink.ByTag();
  ASSERT_EQ(by_tag.size(), accepted.size());
  for (const auto& [tag, in] : accepted) ExpectComputed(by_tag[tag], *in);
  StatsSnapshot s = model->Stats();
  EXPECT_EQ(s.rejected, 2u);
  EXPECT_EQ(s.requests, accepted.size());
}

TEST(ModelTest, OversizeRequestIsAdmittedWholeOrRefusedWhole) {
  Payloads payloads;
  CollectSink sink;
  Gate gate(false);
  auto backend = std::make_shared<TestBackend>(&gate);
  ModelConfig config = Config(8, 0);
  config.queue_capacity = 4;
  auto model = CreateOrFail(config, backend);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(25);
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 0.0f, rng), &sink, 0)).ok());
  ASSERT_TRUE(backend->WaitEntered(1));
  // 20 rows need 3 parts of <= 8 rows; with 2 of 4 slots taken, it is refused whole.
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 1.0f, rng), &sink, 1)).ok());
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 2.0f, rng), &sink, 2)).ok());
  const auto& big = payloads.Add(20, 100.0f, rng);
  Status st = model->Submit(Request(big, &sink, 3));
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
  EXPECT_TRUE(Contains(st.message(), kCtx)) << st.message();
  // More parts than the queue can ever hold: always refused.
  const auto& huge = payloads.Add(40, 200.0f, rng);
  EXPECT_EQ(model->Submit(Request(huge, &sink, 4, 1)).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(model->Stats().rejected, 2u);
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(3));
  // Room again: the same request is accepted whole.
  ASSERT_TRUE(model->Submit(Request(big, &sink, 3)).ok());
  ASSERT_TRUE(sink.WaitFor(4));
  model->Shutdown();
  auto by_tag = sink.ByTag();
  EXPECT_EQ(by_tag.size(), 4u);
  EXPECT_EQ(by_tag.count(4), 0u);
  ExpectComputed(by_tag[3], big);
  StatsSnapshot s = model->Stats();
  EXPECT_EQ(s.requests, 4u);
  EXPECT_EQ(s.rows, 23u);
  EXPECT_EQ(s.errors, 0u);
}

// ---- backend failures ----------------------------------------------------------

TEST(ModelTest, BackendErrorIsIsolatedToThePoisonedRequests) {
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>(nullptr, TestBackend::OnPoison::kFail);
  auto model = CreateOrFail(Config(16, 1'000'000), backend, &clock);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(16);
  const std::vector<std::set<int>> rounds{{0}, {15}, {7}, {3, 12}, {8, 9}, {0, 15}};
  uint64_t tag = 0, poisoned_total = 0;
  for (const auto& poisoned : rounds) {
    SCOPED_TRACE(::testing::Message() << "poisoned count " << poisoned.size() << " first " << *poisoned.begin());
    const size_t calls_before = backend->call_count();
    const size_t answers_before = sink.count();
    std::map<uint64_t, std::pair<const std::vector<float>*, bool>> sent;
    for (int i = 0; i < 16; ++i) {
      // Requests of 1 or 2 rows; 16 requests and max 16 rows: one request waits for the next batch
      // unless all are 1 row, so use 1 row each.
      std::vector<float> v = payloads.Add(1, float(i), rng);
      const bool bad = poisoned.count(i) > 0;
      if (bad) v[2] = kPoison;
      sent[tag] = {&payloads.Add(std::move(v)), bad};
      ASSERT_TRUE(model->Submit(Request(*sent[tag].first, &sink, tag)).ok());
      ++tag;
    }
    ASSERT_TRUE(sink.WaitFor(answers_before + 16));
    EXPECT_EQ(backend->calls().at(calls_before).size(), 16u) << "the 16 requests form one batch";
    auto by_tag = sink.ByTag();
    for (const auto& [t, p] : sent) {
      const InferResult& r = by_tag[t];
      if (p.second) {
        EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument) << r.status.ToString();
        EXPECT_TRUE(Contains(r.status.message(), "poisoned row seen")) << r.status.message();
        EXPECT_TRUE(Contains(r.status.message(), kCtx)) << r.status.message();
        EXPECT_TRUE(r.outputs.empty());
      } else {
        ExpectComputed(r, *p.first);
      }
    }
    poisoned_total += poisoned.size();
  }
  StatsSnapshot s = model->Stats();
  EXPECT_EQ(s.errors, poisoned_total);
  EXPECT_EQ(s.batches, rounds.size()) << "re-runs while isolating are not extra batches";
  EXPECT_EQ(s.batch_size_counts[16], rounds.size());
}

TEST(ModelTest, ThrowingBackendFailsItsBatchAndTheEngineKeepsWorking) {
  Payloads payloads;
  CollectSink sink;
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>(nullptr, TestBackend::OnPoison::kThrow);
  auto model = CreateOrFail(Config(4, 1'000'000), backend, &clock);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(17);
  for (int i = 0; i < 4; ++i) {
    std::vector<float> v = payloads.Add(1, float(i), rng);
    if (i == 1) v[0] = kPoison;
    ASSERT_TRUE(model->Submit(Request(payloads.Add(std::move(v)), &sink, i)).ok());
  }
  ASSERT_TRUE(sink.WaitFor(4));
  for (const auto& r : sink.results()) {
    EXPECT_EQ(r.status.code(), StatusCode::kInternal) << r.status.ToString();
    EXPECT_TRUE(Contains(r.status.message(), "kaboom from the backend")) << r.status.message();
    EXPECT_TRUE(Contains(r.status.message(), kCtx)) << r.status.message();
  }
  EXPECT_EQ(backend->call_count(), 1u) << "a backend that threw is not re-run to bisect";
  std::vector<const std::vector<float>*> good;
  for (int i = 0; i < 4; ++i) {
    good.push_back(&payloads.Add(1, float(10 + i), rng));
    ASSERT_TRUE(model->Submit(Request(*good.back(), &sink, 10 + i)).ok());
  }
  ASSERT_TRUE(sink.WaitFor(8));
  auto by_tag = sink.ByTag();
  for (int i = 0; i < 4; ++i) ExpectComputed(by_tag[10 + i], *good[i]);
  EXPECT_EQ(model->Stats().errors, 4u);
}

TEST(ModelTest, MalformedBackendOutputIsInternalNamingTheOutput) {
  using Output = TestBackend::Output;
  const std::vector<std::pair<Output, std::string>> cases{
      {Output::kWrongShape, "float32 [2, 4]"},
      {Output::kWrongDtype, "float64"},
      {Output::kMissing, "no output 'y'"},
      {Output::kNoOwner, "own"},
  };
  for (const auto& [mode, detail] : cases) {
    SCOPED_TRACE(detail);
    Payloads payloads;
    CollectSink sink;
    ManualClock clock;
    auto backend = std::make_shared<TestBackend>(nullptr, TestBackend::OnPoison::kIgnore, mode);
    auto model = CreateOrFail(Config(2, 1'000'000), backend, &clock);
    ASSERT_NE(model, nullptr);
    std::mt19937 rng(18);
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(model->Submit(Request(payloads.Add(1, float(i), rng), &sink, i)).ok());
    ASSERT_TRUE(sink.WaitFor(2));
    for (const auto& r : sink.results()) {
      EXPECT_EQ(r.status.code(), StatusCode::kInternal) << r.status.ToString();
      EXPECT_TRUE(Contains(r.status.message(), "'y'")) << r.status.message();
      EXPECT_TRUE(Contains(r.status.message(), detail)) << r.status.message();
      EXPECT_TRUE(Contains(r.status.message(), kCtx)) << r.status.message();
    }
    EXPECT_EQ(backend->call_count(), 1u) << "bad outputs are not bisected";
  }
}

// ---- oversize requests -----------------------------------------------------------

TEST(ModelTest, OversizeRequestsAreSplitAndReassembledInOrder) {
  Payloads payloads;
  CollectSink sink;
  auto backend = std::make_shared<TestBackend>();
  auto model = CreateOrFail(Config(32, 300), backend);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(19);
  // id -> rows; ids 100+ are oversize. Column 0 of row r is id * 1000 + r.
  std::map<uint64_t, int64_t> rows{{100, 70}, {101, 64}, {102, 33}};
  std::uniform_int_distribution<int> small(1, 9);
  for (uint64_t id = 1; id <= 24; ++id) rows[id] = small(rng);
  std::map<uint64_t, const std::vector<float>*> in;
  std::vector<uint64_t> order;
  for (const auto& kv : rows) order.push_back(kv.first);
  std::shuffle(order.begin(), order.end(), rng);
  for (uint64_t id : order) {
    in[id] = &payloads.Add(rows[id], float(id * 1000), rng);
    ASSERT_TRUE(model->Submit(Request(*in[id], &sink, id)).ok());
  }
  ASSERT_TRUE(sink.WaitFor(rows.size()));
  auto by_tag = sink.ByTag();
  ASSERT_EQ(by_tag.size(), rows.size());
  for (const auto& [id, data] : in) ExpectComputed(by_tag[id], *data);

  // Every batch fits; small requests are whole in one batch; the parts of an
  // oversize request are contiguous runs, and together cover it exactly once.
  std::map<uint64_t, std::vector<int>> seen_rows;
  for (const auto& call : backend->calls()) {
    EXPECT_LE(call.size(), 32u);
    std::map<uint64_t, std::vector<int>> in_batch;
    for (float v : call) in_batch[uint64_t(v) / 1000].push_back(int(v) % 1000);
    for (const auto& [id, rs] : in_batch) {
      for (size_t k = 1; k < rs.size(); ++k) EXPECT_EQ(rs[k], rs[k - 1] + 1) << "id " << id;
      if (id < 100) {
        EXPECT_EQ(int64_t(rs.size()), rows[id]) << "small request " << id << " was split";
      }
      seen_rows[id].insert(seen_rows[id].end(), rs.begin(), rs.end());
    }
  }
  for (const auto& [id, n] : rows) {
    std::vector<int> got = seen_rows[id];
    std::sort(got.begin(), got.end());
    std::vector<int> want(static_cast<size_t>(n));
    for (int r = 0; r < n; ++r) want[r] = r;
    EXPECT_EQ(got, want) << "id " << id;
  }
  model->Shutdown();
  StatsSnapshot s = model->Stats();
  EXPECT_EQ(s.requests, rows.size());
  EXPECT_EQ(s.end_to_end_us.count, rows.size());
}

TEST(ModelTest, OversizeRequestWithAFailingPartFailsWhole) {
  Payloads payloads;
  CollectSink sink;
  auto backend = std::make_shared<TestBackend>(nullptr, TestBackend::OnPoison::kFail);
  auto model = CreateOrFail(Config(8, 0), backend);
  ASSERT_NE(model, nullptr);
  std::mt19937 rng(20);
  std::vector<float> v = payloads.Add(20, 0.0f, rng);
  v[13 * kF + 1] = kPoison;  // in the second part
  ASSERT_TRUE(model->Submit(Request(payloads.Add(std::move(v)), &sink, 7)).ok());
  ASSERT_TRUE(sink.WaitFor(1));
  model->Shutdown();
  ASSERT_EQ(sink.count(), 1u);
  InferResult r = sink.results()[0];
  EXPECT_EQ(r.tag, 7u);
  EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.status.message(), "poisoned row seen")) << r.status.message();
  EXPECT_TRUE(r.outputs.empty());
  StatsSnapshot s = model->Stats();
  EXPECT_EQ(s.requests, 1u);
  EXPECT_EQ(s.errors, 1u);
}

// ---- shutdown ---------------------------------------------------------------------

// Holds the executor in the backend with `queued` requests behind it, starts
// Shutdown(drain) on another thread, waits until Submit is refused, then lets
// the backend go. Returns the answers; `accepted_probes` counts probes that
// were accepted before shutdown began.
struct ShutdownRun {
  Payloads payloads;  // request memory, kept for the caller's checks
  std::map<uint64_t, InferResult> answers;
  std::vector<const std::vector<float>*> in;  // by tag
  StatsSnapshot stats;
  size_t backend_calls = 0;
};

void RunShutdown(bool drain, int queued, ShutdownRun* out) {
  Payloads& payloads = out->payloads;
  CollectSink sink;
  Gate gate(false);
  auto backend = std::make_shared<TestBackend>(&gate);
  ModelConfig config = Config(4, 0);
  config.queue_capacity = 64;
  auto model = CreateOrFail(config, backend);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(21);
  out->in.push_back(&payloads.Add(1, 0.0f, rng));
  ASSERT_TRUE(model->Submit(Request(*out->in[0], &sink, 0)).ok());
  ASSERT_TRUE(backend->WaitEntered(1));
  for (int i = 1; i <= queued; ++i) {
    out->in.push_back(&payloads.Add(1 + i % 3, float(i * 10), rng));
    ASSERT_TRUE(model->Submit(Request(*out->in.back(), &sink, i)).ok());
  }
  std::thread stopper([&] { model->Shutdown(drain); });
  // Probes: accepted until Shutdown starts refusing.
  const auto give_up = std::chrono::steady_clock::now() + kWaitTimeout;
  for (;;) {
    out->in.push_back(&payloads.Add(1, 5000.0f + float(out->in.size()), rng));
    Status st = model->Submit(Request(*out->in.back(), &sink, out->in.size() - 1));
    if (st.code() == StatusCode::kResourceExhausted) {  // Shutdown has not begun yet; the queue is full
      out->in.pop_back();
      std::this_thread::yield();
      continue;
    }
    if (!st.ok()) {
      out->in.pop_back();
      EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
      EXPECT_TRUE(Contains(st.message(), kCtx)) << st.message();
      break;
    }
    if (std::chrono::steady_clock::now() > give_up) {
      ADD_FAILURE() << "Submit kept succeeding during Shutdown";
      break;
    }
    std::this_thread::yield();
  }
  gate.Open();
  stopper.join();
  // Shutdown has returned: everything accepted is answered already.
  EXPECT_EQ(sink.count(), out->in.size());
  // Submit after shutdown, also an oversize one.
  EXPECT_EQ(model->Submit(Request(*out->in[0], &sink, 999)).code(), StatusCode::kUnavailable);
  const auto& big = payloads.Add(9, 0.0f, rng);
  EXPECT_EQ(model->Submit(Request(big, &sink, 998)).code(), StatusCode::kUnavailable);
  model->Shutdown(true);  // idempotent
  EXPECT_EQ(sink.count(), out->in.size());
  out->answers = sink.ByTag();
  out->stats = model->Stats();
  out->backend_calls = backend->call_count();
}

TEST(ModelTest, ShutdownWithDrainComputesEverythingQueued) {
  ShutdownRun run;
  RunShutdown(true, 10, &run);
  if (HasFatalFailure()) return;
  ASSERT_EQ(run.answers.size(), run.in.size());
  for (size_t tag = 0; tag < run.in.size(); ++tag) ExpectComputed(run.answers[tag], *run.in[tag]);
  EXPECT_EQ(run.stats.cancelled, 0u);
  EXPECT_EQ(run.stats.requests, run.in.size());
}

TEST(ModelTest, ShutdownWithoutDrainCancelsQueued) {
  ShutdownRun run;
  RunShutdown(false, 10, &run);
  if (HasFatalFailure()) return;
  ASSERT_EQ(run.answers.size(), run.in.size());
  ExpectComputed(run.answers[0], *run.in[0]);  // was already running
  for (size_t tag = 1; tag < run.in.size(); ++tag) {
    EXPECT_EQ(run.answers[tag].status.code(), StatusCode::kCancelled) << tag;
    EXPECT_TRUE(Contains(run.answers[tag].status.message(), kCtx));
  }
  EXPECT_EQ(run.backend_calls, 1u) << "nothing may start computing after Shutdown(false)";
  EXPECT_EQ(run.stats.cancelled, run.in.size() - 1);
  EXPECT_EQ(run.stats.batches, 1u);
}

TEST(ModelTest, ShutdownRacingSubmittersNeverLosesARequest) {
  const int rounds = Scaled(16, 2);
  const int threads = kSanitized ? 3 : 4;
  for (int round = 0; round < rounds; ++round) {
    const bool drain = round % 2 == 0;
    SCOPED_TRACE(::testing::Message() << "round " << round << " drain " << drain);
    // Per thread: a pool of payloads (1..20 rows; max_batch_size 8, so some split).
    std::vector<std::vector<std::vector<float>>> pool(threads);
    std::mt19937 rng(100 + round);
    for (auto& p : pool) {
      for (int k = 0; k < 32; ++k) {
        std::vector<float> v(static_cast<size_t>((1 + rng() % 20) * kF));
        for (float& x : v) x = float(rng() % 1000);
        p.push_back(std::move(v));
      }
    }
    CollectSink sink;
    ModelConfig config = Config(8, 100);
    config.instances = 2;
    config.queue_capacity = 256;
    auto model = CreateOrFail(config, std::make_shared<TestBackend>());
    ASSERT_NE(model, nullptr);
    std::atomic<uint64_t> accepted{0};
    std::vector<std::vector<uint64_t>> accepted_tags(threads);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        for (uint64_t i = 0; i < 100'000; ++i) {
          const uint64_t tag = uint64_t(t) << 32 | i;
          Status st = model->Submit(Request(pool[t][i % 32], &sink, tag, uint32_t(i % 2)));
          if (st.ok()) {
            accepted_tags[t].push_back(tag);
            accepted.fetch_add(1, std::memory_order_relaxed);
          } else if (st.code() == StatusCode::kUnavailable) {
            return;
          } else {
            ASSERT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
            std::this_thread::yield();
          }
        }
      });
    }
    const auto give_up = std::chrono::steady_clock::now() + kWaitTimeout;
    while (accepted.load(std::memory_order_relaxed) < uint64_t(Scaled(200, 4) + 30 * round) &&
           std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
    model->Shutdown(drain);
    const size_t answered_at_return = sink.count();
    for (auto& w : workers) w.join();
    const size_t total = accepted.load();
    EXPECT_EQ(answered_at_return, total) << "Shutdown returned before answering every accepted request";
    EXPECT_EQ(sink.count(), total);
    auto by_tag = sink.ByTag();
    EXPECT_EQ(by_tag.size(), total);
    for (int t = 0; t < threads; ++t) {
      for (uint64_t tag : accepted_tags[t]) {
        auto it = by_tag.find(tag);
        ASSERT_NE(it, by_tag.end()) << "accepted tag " << tag << " never answered";
        if (it->second.status.ok()) {
          ExpectComputed(it->second, pool[t][(tag & 0xffffffffu) % 32]);
        } else {
          EXPECT_FALSE(drain) << it->second.status.ToString();
          EXPECT_EQ(it->second.status.code(), StatusCode::kCancelled) << it->second.status.ToString();
        }
      }
    }
    StatsSnapshot s = model->Stats();
    EXPECT_EQ(s.requests, total);
    EXPECT_EQ(s.end_to_end_us.count + s.cancelled, total);
  }
}

// ---- validation ------------------------------------------------------------------

Shape BadRank() {
  Shape s{2, kF};
  s.rank = Shape::kMaxRank + 3;  // garbage from a careless caller: must not be read past dims
  return s;
}

TEST(ModelTest, InputValidationNamesModelVersionAndInput) {
  ModelConfig config = Config(8, 0);
  config.inputs.push_back(TensorSpec{"ids", DataType::kInt64, Shape{-1, 2}});
  auto model = CreateOrFail(config, std::make_shared<TestBackend>());
  ASSERT_NE(model, nullptr);
  CollectSink sink;
  std::vector<float> x2(2 * kF, 1.0f), x2wide(2 * (kF + 1), 1.0f);
  std::vector<int64_t> ids2(4, 1), ids3(6, 1);
  const TensorView xv{x2.data(), DataType::kFloat32, Shape{2, kF}};
  const TensorView idv{ids2.data(), DataType::kInt64, Shape{2, 2}};
  struct Bad {
    std::string name;
    std::vector<TensorView> inputs;
    CompletionSink* sink;
    std::string want;  // besides the model
  };
  std::vector<Bad> bad{
      {"no inputs", {}, &sink, "expected 2 inputs, got 0"},
      {"too many inputs", {xv, idv, idv}, &sink, "expected 2 inputs, got 3"},
      {"wrong dtype", {xv, TensorView{ids2.data(), DataType::kInt32, Shape{2, 2}}}, &sink, "input 'ids'"},
      {"wrong rank", {TensorView{x2.data(), DataType::kFloat32, Shape{2 * kF}}, idv}, &sink, "input 'x'"},
      {"wrong feature dim", {TensorView{x2wide.data(), DataType::kFloat32, Shape{2, kF + 1}}, idv}, &sink,
       "input 'x'"},
      {"zero rows", {TensorView{x2.data(), DataType::kFloat32, Shape{0, kF}}, idv}, &sink, "input 'x'"},
      {"rank beyond Shape", {TensorView{x2.data(), DataType::kFloat32, BadRank()}, idv}, &sink, "input 'x'"},
      {"mismatched rows", {xv, TensorView{ids3.data(), DataType::kInt64, Shape{3, 2}}}, &sink, "input 'ids'"},
      {"null data", {xv, TensorView{nullptr, DataType::kInt64, Shape{2, 2}}}, &sink, "input 'ids'"},
      {"null sink", {xv, idv}, nullptr, "sink"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.name);
    InferRequest r;
    r.inputs = b.inputs;
    r.sink = b.sink;
    Status st = model->Submit(r);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
    EXPECT_TRUE(Contains(st.message(), kCtx)) << st.message();
    EXPECT_TRUE(Contains(st.message(), b.want)) << st.message();
  }
  EXPECT_TRUE(Contains(model->Submit(InferRequest{{xv, TensorView{ids2.data(), DataType::kInt32, Shape{2, 2}}}, 0, 0,
                                                  0, &sink})
                           .message(),
                       "int32"));
  model->Shutdown();
  EXPECT_EQ(sink.count(), 0u);
  EXPECT_EQ(model->Stats().requests, 0u);
}

TEST(ModelTest, ConfigValidationNamesTheField) {
  struct Bad {
    std::string name;
    std::function<void(ModelConfig&)> mutate;
    std::string want;
  };
  std::vector<Bad> bad{
      {"input dim 0 not -1", [](ModelConfig& c) { c.inputs[0].shape = Shape{4, kF}; }, "input 'x'"},
      {"input scalar", [](ModelConfig& c) { c.inputs[0].shape = Shape{}; }, "input 'x'"},
      {"input rank above kMaxRank", [](ModelConfig& c) { c.inputs[0].shape.rank = Shape::kMaxRank + 1; },
       "input 'x'"},
      {"output dim 0", [](ModelConfig& c) { c.outputs[0].shape = Shape{-1, 0}; }, "output 'y'"},
      {"free input feature dim", [](ModelConfig& c) { c.inputs[0].shape = Shape{-1, -1}; }, "input 'x'"},
      {"empty input name", [](ModelConfig& c) { c.inputs[0].name.clear(); }, "empty name"},
      {"duplicate input", [](ModelConfig& c) { c.inputs.push_back(c.inputs[0]); }, "input 'x' is declared twice"},
      {"duplicate output", [](ModelConfig& c) { c.outputs.push_back(c.outputs[0]); }, "output 'y' is declared twice"},
      {"no inputs", [](ModelConfig& c) { c.inputs.clear(); }, "no inputs"},
      {"no outputs", [](ModelConfig& c) { c.outputs.clear(); }, "no outputs"},
      {"preprocessing count", [](ModelConfig& c) { c.preprocessing.resize(2); }, "preprocessing has 2 entries"},
      {"bad preprocessing", [](ModelConfig& c) {
         c.preprocessing.resize(1);
         c.preprocessing[0].kind = PreprocessSpec::Kind::kTabular;
         c.preprocessing[0].tabular.mean = {0.0f};
         c.preprocessing[0].tabular.std = {0.0f};
       }, "tabular.std[0]"},
      {"instances 0", [](ModelConfig& c) { c.instances = 0; }, "instances"},
      {"queue capacity 0", [](ModelConfig& c) { c.queue_capacity = 0; }, "queue_capacity"},
      {"queue capacity huge", [](ModelConfig& c) { c.queue_capacity = UINT32_MAX; }, "queue_capacity"},
      {"priority levels 0", [](ModelConfig& c) { c.priority_levels = 0; }, "priority_levels"},
      {"max batch 0", [](ModelConfig& c) { c.batching.max_batch_size = 0; }, "max_batch_size"},
      {"preferred above max", [](ModelConfig& c) { c.batching.preferred_batch_sizes = {4, 9}; },
       "preferred_batch_sizes[1]"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.name);
    ModelConfig c = Config(8, 0);
    b.mutate(c);
    auto m = Model::Create(c, std::make_shared<TestBackend>());
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(m.status().message(), kCtx)) << m.status().message();
    EXPECT_TRUE(Contains(m.status().message(), b.want)) << m.status().message();
  }
  auto no_backend = Model::Create(Config(8, 0), nullptr);
  ASSERT_FALSE(no_backend.ok());
  EXPECT_TRUE(Contains(no_backend.status().message(), "backend")) << no_backend.status().message();
  ModelConfig unnamed = Config(8, 0);
  unnamed.name.clear();
  auto m = Model::Create(unnamed, std::make_shared<TestBackend>());
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(Contains(m.status().message(), "name")) << m.status().message();
}

// ---- parallel instances ----------------------------------------------------------

TEST(ModelTest, TwoInstancesRunTwoBatchesAtOnce) {
  Payloads payloads;
  CollectSink sink;
  Gate gate(false);
  auto backend = std::make_shared<TestBackend>(&gate);
  ModelConfig config = Config(4, 0);
  config.instances = 2;
  auto model = CreateOrFail(config, backend);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(22);
  const auto& a = payloads.Add(1, 1.0f, rng);
  const auto& b = payloads.Add(2, 2.0f, rng);
  ASSERT_TRUE(model->Submit(Request(a, &sink, 1)).ok());
  ASSERT_TRUE(backend->WaitEntered(1));
  ASSERT_TRUE(model->Submit(Request(b, &sink, 2)).ok());
  ASSERT_TRUE(backend->WaitEntered(2)) << "the second instance never started a batch";
  EXPECT_EQ(backend->max_inside(), 2);
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(2));
  auto by_tag = sink.ByTag();
  ExpectComputed(by_tag[1], a);
  ExpectComputed(by_tag[2], b);
}

// ---- stats -------------------------------------------------------------------------

TEST(ModelTest, StatsCountWhatHappened) {
  Payloads payloads;
  CollectSink sink;
  Gate gate(false);
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>(&gate, TestBackend::OnPoison::kFail);
  ModelConfig config = Config(4, 0);
  config.queue_capacity = 16;
  auto model = CreateOrFail(config, backend, &clock);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(23);
  // A (1 row) runs alone and blocks.
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 1.0f, rng), &sink, 1)).ok());
  ASSERT_TRUE(backend->WaitEntered(1));
  clock.AdvanceUs(50);
  // B and C (2 rows each) queue; D (1 row) queues with a deadline that passes.
  ASSERT_TRUE(model->Submit(Request(payloads.Add(2, 2.0f, rng), &sink, 2)).ok());
  ASSERT_TRUE(model->Submit(Request(payloads.Add(2, 3.0f, rng), &sink, 3)).ok());
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 4.0f, rng), &sink, 4, 0, model->NowUs() + 100)).ok());
  clock.AdvanceUs(200);
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(4));  // A; D expired; B + C in one batch of 4
  // E fails in the backend (a batch of 1).
  std::vector<float> e = payloads.Add(1, 5.0f, rng);
  e[1] = kPoison;
  ASSERT_TRUE(model->Submit(Request(payloads.Add(std::move(e)), &sink, 5)).ok());
  ASSERT_TRUE(sink.WaitFor(5));
  // G runs (blocked) while F queues, then Shutdown(false) cancels F.
  gate.Close();
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 7.0f, rng), &sink, 7)).ok());
  ASSERT_TRUE(backend->WaitEntered(4));
  ASSERT_TRUE(model->Submit(Request(payloads.Add(3, 6.0f, rng), &sink, 6)).ok());
  std::thread stopper([&] { model->Shutdown(false); });
  const auto& probe = payloads.Add(1, 0.0f, rng);
  size_t probes = 0, full = 0;
  for (;;) {  // until Shutdown refuses: only then may the held batch finish
    Status st = model->Submit(Request(probe, &sink, 100 + probes));
    if (st.ok()) {
      ++probes;
    } else if (st.code() == StatusCode::kResourceExhausted) {
      ++full;
      std::this_thread::yield();
    } else {
      EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
      break;
    }
  }
  gate.Open();
  stopper.join();
  ASSERT_EQ(sink.count(), 7 + probes);

  auto by_tag = sink.ByTag();
  for (uint64_t t : {1, 2, 3, 7}) EXPECT_TRUE(by_tag[t].status.ok()) << t << by_tag[t].status.ToString();
  EXPECT_EQ(by_tag[4].status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(by_tag[5].status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(by_tag[6].status.code(), StatusCode::kCancelled);
  EXPECT_EQ(backend->batch_sizes(), std::vector<size_t>({1, 4, 1, 1}));
  EXPECT_EQ(by_tag[2].queue_us, 200u);  // queued at t0+50, batch started at t0+250 (manual clock)

  StatsSnapshot s = model->Stats();
  EXPECT_EQ(s.requests, 7u + probes);
  EXPECT_EQ(s.rows, 1u + 2 + 2 + 1 + 1 + 1 + 3 + probes);
  EXPECT_EQ(s.batches, 4u);
  EXPECT_EQ(s.rejected, full);
  EXPECT_EQ(s.deadline_missed, 1u);
  EXPECT_EQ(s.errors, 1u);
  EXPECT_EQ(s.cancelled, 1u + probes);
  ASSERT_EQ(s.batch_size_counts.size(), 5u);
  EXPECT_EQ(s.batch_size_counts, std::vector<uint64_t>({0, 3, 0, 0, 1}));
  EXPECT_EQ(s.max_batch_size, 4u);
  EXPECT_DOUBLE_EQ(s.mean_batch_size(), 7.0 / 4.0);
  EXPECT_EQ(s.queue_us.count, 4u);  // answered OK: A, B, C, G
  EXPECT_EQ(s.end_to_end_us.count, 4u);
  EXPECT_EQ(s.compute_us.count, 4u);
  EXPECT_EQ(s.queue_us.max, 200u);
}

TEST(ModelTest, QueuedRowsCountAdmittedRowsUntilAnswered) {
  Payloads payloads;
  CollectSink sink;
  Gate gate(false);
  ManualClock clock;
  auto backend = std::make_shared<TestBackend>(&gate);
  auto model = CreateOrFail(Config(8, 0), backend, &clock);
  ASSERT_NE(model, nullptr);
  OpenOnExit opener(gate);
  std::mt19937 rng(31);
  EXPECT_EQ(model->Stats().queued_rows, 0u);
  ASSERT_TRUE(model->Submit(Request(payloads.Add(1, 1.0f, rng), &sink, 1)).ok());
  ASSERT_TRUE(backend->WaitEntered(1));  // A (1 row) runs, held at the gate
  EXPECT_EQ(model->Stats().queued_rows, 1u) << "a running request counts until answered";
  ASSERT_TRUE(model->Submit(Request(payloads.Add(2, 2.0f, rng), &sink, 2)).ok());
  ASSERT_TRUE(model->Submit(Request(payloads.Add(3, 3.0f, rng), &sink, 3)).ok());
  EXPECT_EQ(model->Stats().queued_rows, 6u);
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(3));
  EXPECT_EQ(model->Stats().queued_rows, 0u) << "rows leave the count before their answer is delivered";
  EXPECT_EQ(model->Stats().rows, 6u);
}

// ---- preprocessing -------------------------------------------------------------------

TEST(ModelTest, PreprocessingIsAppliedInTheGather) {
  ModelConfig config = Config(8, 0);
  PreprocessSpec spec;
  spec.kind = PreprocessSpec::Kind::kTabular;
  spec.tabular.mean = {1.0f, -2.0f, 0.5f};
  spec.tabular.std = {2.0f, 4.0f, 0.25f};
  spec.tabular.nan_fill = 3.0f;
  spec.tabular.clip_lo = -5.0f;
  spec.tabular.clip_hi = 5.0f;
  config.preprocessing = {spec};
  CollectSink sink;
  auto model = CreateOrFail(config, std::make_shared<EchoBackend>(std::vector<std::string>{"y"}));
  ASSERT_NE(model, nullptr);
  ASSERT_EQ(model->backend_inputs().size(), 1u);
  EXPECT_EQ(model->backend_inputs()[0].dtype, DataType::kFloat32);
  std::mt19937 rng(24);
  std::uniform_real_distribution<float> u(-30.0f, 30.0f);
  std::vector<std::vector<float>> in;
  for (int i = 0; i < 10; ++i) {
    std::vector<float> v(static_cast<size_t>((1 + i % 3) * kF));
    for (float& x : v) x = u(rng);
    v[0] = std::numeric_limits<float>::quiet_NaN();
    in.push_back(std::move(v));
  }
  for (size_t i = 0; i < in.size(); ++i) ASSERT_TRUE(model->Submit(Request(in[i], &sink, i)).ok());
  ASSERT_TRUE(sink.WaitFor(in.size()));
  auto by_tag = sink.ByTag();
  for (size_t i = 0; i < in.size(); ++i) {
    const InferResult& r = by_tag[i];
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    std::vector<float> got = ToFloats(r.outputs.at(0));
    ASSERT_EQ(got.size(), in[i].size());
    for (size_t k = 0; k < got.size(); ++k) {
      const size_t j = k % kF;
      const float x = std::isnan(in[i][k]) ? spec.tabular.nan_fill : in[i][k];
      float y = (x - spec.tabular.mean[j]) / spec.tabular.std[j];
      y = y > spec.tabular.clip_lo ? y : spec.tabular.clip_lo;
      y = y < spec.tabular.clip_hi ? y : spec.tabular.clip_hi;
      EXPECT_EQ(got[k], y) << "request " << i << " element " << k;
    }
  }
  // The input the caller sent is untouched.
  EXPECT_TRUE(std::isnan(in[0][0]));
  model->Shutdown();
}

}  // namespace
}  // namespace inferline
