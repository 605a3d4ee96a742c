// Tests for inferline/router.h: routing by key over arms, fallback chains for
// every reason (backend error, deadline, overload, breaker open, not loaded),
// the primary's error when the chain is exhausted, INVALID_ARGUMENT never
// falling back, cycle refusal, prediction cache modes, stats, and publishing
// while submitting (for TSan). Also InferResult::answered_* on plain Engine answers.
#include "inferline/router.h"

#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace inferline {
namespace {

using testing::CollectSink;
using testing::FloatView;
using testing::Gate;
using testing::OpenOnExit;
using testing::Scaled;
using testing::ToFloats;

constexpr int64_t kF = 2;        // features per row
constexpr float kFail = -1.0f;   // a row whose first feature is this fails in a failing backend

// y = x * scale (float32 [rows, kF]); fails a batch holding a flagged row
// (when fail_flagged), or every batch while fail_all; may wait at a gate.
class TestBackend final : public Backend {
 public:
  explicit TestBackend(float scale, bool fail_flagged = false, Gate* gate = nullptr)
      : scale_(scale), fail_flagged_(fail_flagged), gate_(gate) {}
  Status Run(const std::vector<NamedTensor>& inputs, std::vector<NamedTensor>* outputs) override {
    if (gate_ != nullptr && !gate_->Pass()) return Internal("gate stayed closed");
    if (sleep_us_ > 0) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us_));
    if (fail_all.load()) return Internal("failing on purpose");
    const Tensor& x = inputs.at(0).tensor;
    const auto* in = static_cast<const float*>(x.data);
    for (int64_t r = 0; fail_flagged_ && r < x.shape.dims[0]; ++r) {
      if (in[r * kF] == kFail) return Internal("flagged row");
    }
    Tensor y = Tensor::Allocate(DataType::kFloat32, x.shape);
    auto* out = static_cast<float*>(y.data);
    for (int64_t i = 0; i < x.shape.NumElements(); ++i) out[i] = in[i] * scale_;
    outputs->push_back(NamedTensor{"y", std::move(y)});
    runs.fetch_add(1);
    return Status::Ok();
  }
  void set_sleep_us(int us) { sleep_us_ = us; }
  std::atomic<bool> fail_all{false};
  std::atomic<int> runs{0};

 private:
  float scale_;
  bool fail_flagged_;
  Gate* gate_;
  int sleep_us_ = 0;
};

ModelConfig Config(const std::string& name, int64_t version, uint32_t queue_capacity = 4096) {
  ModelConfig c;
  c.name = name;
  c.version = version;
  c.inputs = {TensorSpec{"x", DataType::kFloat32, Shape{-1, kF}}};
  c.outputs = {TensorSpec{"y", DataType::kFloat32, Shape{-1, kF}}};
  c.batching.max_batch_size = 8;
  c.batching.max_queue_delay_us = 0;  // also right under a ManualClock
  c.queue_capacity = queue_capacity;
  c.priority_levels = 1;
  return c;
}

ModelPolicy Single(int64_t version, std::vector<FallbackLink> chain = {}, uint64_t epoch = 1) {
  ModelPolicy p;
  p.route = SingleVersionPolicy(version, epoch);
  p.route.fallback = std::move(chain);
  return p;
}

// Rows and sinks owned by the fixture, declared before the engine: input
// memory outlives every answer, and a sink outlives the executors that may
// still be returning from its Deliver after a test saw the answer.
struct Fixture {
  std::deque<CollectSink> sinks;
  Engine engine;
  std::vector<std::unique_ptr<std::vector<float>>> rows;
  std::map<std::string, std::shared_ptr<TestBackend>> backends;

  explicit Fixture(Clock* clock = nullptr) : engine(clock) {}
  CollectSink& NewSink() { return sinks.emplace_back(); }
  TestBackend& Load(const std::string& name, int64_t version, float scale, bool fail_flagged = false,
                    Gate* gate = nullptr, uint32_t capacity = 4096) {
    auto b = std::make_shared<TestBackend>(scale, fail_flagged, gate);
    EXPECT_TRUE(engine.Load(Config(name, version, capacity), b).ok());
    backends[name + ":" + std::to_string(version)] = b;
    return *b;
  }
  InferRequest Request(float first, uint64_t tag, CompletionSink* sink) {
    rows.push_back(std::make_unique<std::vector<float>>(std::vector<float>{first, static_cast<float>(tag)}));
    InferRequest r;
    r.inputs = {FloatView(*rows.back(), 1, kF)};
    r.tag = tag;
    r.sink = sink;
    return r;
  }
};

float Y0(const InferResult& r) { return r.outputs.empty() ? 0.0f : ToFloats(r.outputs[0])[1]; }

TEST(RouterTest, PlainEngineAnswersNameTheirVersion) {
  Fixture f;
  f.Load("m", 3, 2.0f);
  CollectSink& sink = f.NewSink();
  ASSERT_TRUE(f.engine.Submit("m", 0, f.Request(1, 5, &sink)).ok());
  ASSERT_TRUE(sink.WaitFor(1));
  InferResult r = sink.results()[0];
  EXPECT_EQ(r.answered_model, "m");
  EXPECT_EQ(r.answered_version, 3);
  EXPECT_EQ(r.fallback_reason, FallbackReason::kNone);
}

TEST(RouterTest, FailingRowsUnderConcurrencyAreAnsweredByTheFallback) {
  Fixture f;
  f.Load("a", 1, 2.0f, /*fail_flagged=*/true);
  f.Load("b", 1, 3.0f);
  Router router(&f.engine);
  ASSERT_TRUE(router.Publish("a", Single(1, {{"b", 1}})).ok());
  CollectSink& sink = f.NewSink();
  const int kThreads = 4, kPer = Scaled(500);
  std::vector<std::vector<InferRequest>> reqs(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPer; ++i) {
      uint64_t tag = static_cast<uint64_t>(t * kPer + i);
      reqs[t].push_back(f.Request(tag % 5 == 0 ? kFail : 1.0f, tag, &sink));  // 20% failing rows
    }
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (auto& r : reqs[t]) EXPECT_TRUE(router.Submit("a", RouteRequest{}, r).ok());
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(sink.WaitFor(kThreads * kPer));
  auto by_tag = sink.ByTag();
  ASSERT_EQ(by_tag.size(), static_cast<size_t>(kThreads * kPer));
  for (auto& [tag, r] : by_tag) {
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    const bool flagged = tag % 5 == 0;
    EXPECT_EQ(r.answered_model, flagged ? "b" : "a") << tag;
    EXPECT_EQ(r.fallback_reason, flagged ? FallbackReason::kError : FallbackReason::kNone) << tag;
    EXPECT_EQ(r.primary_version, 1) << tag;  // the routed version, whoever answered
    EXPECT_EQ(Y0(r), static_cast<float>(tag) * (flagged ? 3.0f : 2.0f));
  }
  RouterStats s = router.Stats("a").value();
  EXPECT_EQ(s.requests, static_cast<uint64_t>(kThreads * kPer));
  EXPECT_EQ(s.answered_ok, s.requests);
  EXPECT_EQ(s.fallbacks[static_cast<size_t>(FallbackReason::kError)], s.answered_by_fallback);
  EXPECT_EQ(s.answered_by_fallback, static_cast<uint64_t>(kThreads * kPer / 5));
}

// Chain cases: which link answers, or which error the caller gets.
struct ChainCase {
  const char* name;
  bool b_fails, c_loaded;
  std::string want_model;  // "" = the caller gets the primary's error
};

TEST(RouterTest, ChainIsTriedInOrderAndExhaustionGivesThePrimarysError) {
  for (const ChainCase& c : {ChainCase{"b answers", false, true, "b"}, ChainCase{"b fails, c answers", true, true, "c"},
                             ChainCase{"b fails, c not loaded", true, false, ""}}) {
    SCOPED_TRACE(c.name);
    Fixture f;
    f.Load("a", 1, 2.0f, true);
    f.Load("b", 1, 3.0f).fail_all = c.b_fails;
    if (c.c_loaded) f.Load("c", 1, 4.0f);
    Router router(&f.engine);
    ModelPolicy p = Single(1);
    p.versions = {VersionPolicy{1, {{"b", 1}, {"c", 0}}, std::nullopt, 0, false}};
    ASSERT_TRUE(router.Publish("a", p).ok());
    CollectSink& sink = f.NewSink();
    ASSERT_TRUE(router.Submit("a", RouteRequest{}, f.Request(kFail, 9, &sink)).ok());
    ASSERT_TRUE(sink.WaitFor(1));
    InferResult r = sink.results()[0];
    EXPECT_EQ(r.fallback_reason, FallbackReason::kError);
    if (c.want_model.empty()) {
      EXPECT_EQ(r.status.code(), StatusCode::kInternal);
      EXPECT_NE(r.status.message().find("model 'a' version 1"), std::string::npos) << r.status.message();
      EXPECT_EQ(r.answered_model, "a");
      EXPECT_EQ(r.primary_version, 1);
    } else {
      ASSERT_TRUE(r.status.ok()) << r.status.ToString();
      EXPECT_EQ(r.answered_model, c.want_model);
    }
  }
}

TEST(RouterTest, InvalidArgumentNeverFallsBack) {
  Fixture f;
  f.Load("a", 1, 2.0f);
  f.Load("b", 1, 3.0f);
  Router router(&f.engine);
  ASSERT_TRUE(router.Publish("a", Single(1, {{"b", 1}})).ok());
  CollectSink& sink = f.NewSink();
  std::vector<float> wide(3, 1.0f);
  InferRequest bad;
  bad.inputs = {TensorView{wide.data(), DataType::kFloat32, Shape{1, 3}}};
  bad.sink = &sink;
  Status st = router.Submit("a", RouteRequest{}, bad);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(sink.count(), 0u);
  EXPECT_EQ(f.backends["b:1"]->runs.load(), 0);
}

// A version whose inputs are named otherwise (same dtype and shape) never gets
// the request's positional views: a link is skipped, a primary refuses.
TEST(RouterTest, InputsForSkipsLinksAndRefusesPrimariesWithAnotherSignature) {
  Fixture f;
  f.Load("a", 1, 2.0f, /*fail_flagged=*/true);
  ModelConfig other = Config("b", 1);
  other.inputs[0].name = "z";
  ASSERT_TRUE(f.engine.Load(other, std::make_shared<TestBackend>(3.0f)).ok());
  f.Load("c", 1, 5.0f);
  Router router(&f.engine);
  ASSERT_TRUE(router.Publish("a", Single(1, {{"b", 1}, {"c", 1}})).ok());
  EXPECT_EQ(router.DefaultVersion("a"), 1);
  EXPECT_EQ(router.DefaultVersion("nothing"), 0);
  RouteRequest route;
  route.inputs_for = f.engine.Find("a", 1);
  CollectSink& sink = f.NewSink();
  ASSERT_TRUE(router.Submit("a", route, f.Request(kFail, 1, &sink)).ok());
  ASSERT_TRUE(sink.WaitFor(1));
  EXPECT_TRUE(sink.results()[0].status.ok());
  EXPECT_EQ(sink.results()[0].answered_model, "c");  // b skipped: it names its input 'z'
  EXPECT_EQ(sink.results()[0].fallback_reason, FallbackReason::kError);
  route.version = 0;
  ASSERT_TRUE(router.Publish("b", Single(1)).ok());
  Status st = router.Submit("b", route, f.Request(1, 2, &sink));  // converted for a:1, primary b:1
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.message();
  EXPECT_EQ(sink.count(), 1u);
}

TEST(RouterTest, NotLoadedPrimaryFallsBackOrRefusesWithItsError) {
  Fixture f;
  f.Load("b", 1, 3.0f);
  Router router(&f.engine);
  ASSERT_TRUE(router.Publish("a", Single(7, {{"b", 1}})).ok());
  CollectSink& sink = f.NewSink();
  ASSERT_TRUE(router.Submit("a", RouteRequest{}, f.Request(1, 1, &sink)).ok());
  ASSERT_TRUE(sink.WaitFor(1));
  EXPECT_EQ(sink.results()[0].answered_model, "b");
  EXPECT_EQ(sink.results()[0].fallback_reason, FallbackReason::kUnavailable);
  ASSERT_TRUE(router.Publish("a", Single(7, {{"zzz", 1}}, 2)).ok());
  EXPECT_EQ(router.Submit("a", RouteRequest{}, f.Request(1, 2, &sink)).code(), StatusCode::kNotFound);
}

TEST(RouterTest, OverloadGoesToTheFallback) {
  Fixture f;
  Gate gate(false);
  f.Load("a", 1, 2.0f, false, &gate, /*capacity=*/1);
  OpenOnExit open(gate);
  f.Load("b", 1, 3.0f);
  Router router(&f.engine);
  ASSERT_TRUE(router.Publish("a", Single(1, {{"b", 1}})).ok());
  CollectSink& sink = f.NewSink();
  const int kN = 6;  // one running, one queued, the rest refused by the full queue
  for (int i = 0; i < kN; ++i) ASSERT_TRUE(router.Submit("a", RouteRequest{}, f.Request(1, i, &sink)).ok());
  gate.Open();
  ASSERT_TRUE(sink.WaitFor(kN));
  int overload = 0;
  for (auto& r : sink.results()) {
    ASSERT_TRUE(r.status.ok());
    if (r.fallback_reason == FallbackReason::kOverload) {
      ++overload;
      EXPECT_EQ(r.answered_model, "b");
    }
  }
  EXPECT_GE(overload, kN - 2);
}

TEST(RouterTest, DeadlineOutOfReachGoesStraightToTheFallback) {
  Fixture f;
  TestBackend& slow = f.Load("a", 1, 2.0f);
  slow.set_sleep_us(20'000);
  f.Load("b", 1, 3.0f);
  Router router(&f.engine);
  ASSERT_TRUE(router.Publish("a", Single(1, {{"b", 1}})).ok());
  CollectSink& warm = f.NewSink();
  ASSERT_TRUE(router.Submit("a", RouteRequest{}, f.Request(1, 0, &warm)).ok());  // teaches the estimator
  ASSERT_TRUE(warm.WaitFor(1));
  ASSERT_GE(f.engine.Find("a")->EstimateCompletionUs(1), 10'000u);
  CollectSink& sink = f.NewSink();
  InferRequest r = f.Request(1, 1, &sink);
  r.deadline_us = f.engine.NowUs() + 5'000;  // far less than one batch of `a`
  ASSERT_TRUE(router.Submit("a", RouteRequest{}, r).ok());
  ASSERT_TRUE(sink.WaitFor(1));
  EXPECT_EQ(sink.results()[0].answered_model, "b");
  EXPECT_EQ(sink.results()[0].fallback_reason, FallbackReason::kDeadline);
  EXPECT_EQ(slow.runs.load(), 1);
}

TEST(RouterTest, BreakerOpensSendsTrafficToTheFallbackAndAProbeClosesIt) {
  ManualClock clock;
  Fixture f(&clock);
  TestBackend& a = f.Load("a", 1, 2.0f);
  f.Load("b", 1, 3.0f);
  Router router(&f.engine);
  ModelPolicy p = Single(1);
  BreakerConfig bc;
  bc.consecutive_failures = 3;
  bc.error_rate = 0;
  bc.open_us = 1'000'000;
  p.versions = {VersionPolicy{1, {{"b", 1}}, bc, 0, false}};
  ASSERT_TRUE(router.Publish("a", p).ok());
  auto one = [&](uint64_t tag) {
    CollectSink& sink = f.NewSink();
    EXPECT_TRUE(router.Submit("a", RouteRequest{}, f.Request(1, tag, &sink)).ok());
    f.engine.Find("a")->Wake();
    EXPECT_TRUE(sink.WaitFor(1));
    return sink.results()[0];
  };
  a.fail_all = true;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(one(i).fallback_reason, FallbackReason::kError);
  EXPECT_EQ(router.Stats("a").value().versions[0].breaker, BreakerState::kOpen);
  a.fail_all = false;
  const int runs = a.runs.load();
  InferResult r = one(10);
  EXPECT_EQ(r.fallback_reason, FallbackReason::kBreakerOpen);
  EXPECT_EQ(r.answered_model, "b");
  EXPECT_EQ(a.runs.load(), runs);  // the open breaker kept traffic off `a`
  clock.AdvanceUs(1'000'001);
  r = one(11);  // the half-open probe succeeds
  EXPECT_EQ(r.answered_model, "a");
  EXPECT_EQ(router.Stats("a").value().versions[0].breaker, BreakerState::kClosed);
  EXPECT_EQ(one(12).answered_model, "a");
}

TEST(RouterTest, ArmsSplitByKeyDeterministicallyAndExplicitVersionBypasses) {
  Fixture f;
  f.Load("m", 1, 1.0f, false, nullptr, 1 << 16);
  f.Load("m", 2, 2.0f, false, nullptr, 1 << 16);
  Router router(&f.engine);
  ModelPolicy p;
  p.route.arms = {{1, 0, 9000}, {2, 9000, kRouteBuckets}};
  ASSERT_TRUE(router.Publish("m", p).ok());
  CollectSink& sink = f.NewSink();
  const int kKeys = Scaled(4000, 2);
  std::vector<std::string> keys;
  for (int i = 0; i < kKeys; ++i) keys.push_back("user-" + std::to_string(i));
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < kKeys; ++i) {
      RouteRequest rr{0, keys[i], true};
      ASSERT_TRUE(router.Submit("m", rr, f.Request(1, round * kKeys + i, &sink)).ok());
    }
  }
  ASSERT_TRUE(sink.WaitFor(2 * kKeys));
  auto by_tag = sink.ByTag();
  int v2 = 0;
  for (int i = 0; i < kKeys; ++i) {
    const InferResult& r = by_tag[i];
    EXPECT_EQ(r.answered_version, by_tag[kKeys + i].answered_version) << "key " << i;
    EXPECT_EQ(r.answered_version, RouteBucket(HashRoutingKey(keys[i])) < 9000 ? 1 : 2);
    v2 += r.answered_version == 2;
  }
  EXPECT_NEAR(static_cast<double>(v2) / kKeys, 0.10, 0.03);
  CollectSink& one = f.NewSink();
  ASSERT_TRUE(router.Submit("m", RouteRequest{2, keys[0], true}, f.Request(1, 1, &one)).ok());
  ASSERT_TRUE(one.WaitFor(1));
  EXPECT_EQ(one.results()[0].answered_version, 2);
}

TEST(RouterTest, PublishRefusesCyclesAndBadFields) {
  Fixture f;
  Router router(&f.engine);
  ASSERT_TRUE(router.Publish("a", Single(1, {{"b", 0}})).ok());
  Status st = router.Publish("b", Single(1, {{"a", 0}}));  // a -> b -> a
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("cycle"), std::string::npos) << st.message();
  ModelPolicy self = Single(1, {}, 2);  // a:1 -> a:2 -> a (live = 1)
  self.versions = {VersionPolicy{1, {{"a", 2}}, std::nullopt, 0, false},
                   VersionPolicy{2, {{"a", 0}}, std::nullopt, 0, false}};
  st = router.Publish("a", self);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("a:1 -> a:2 -> a:1"), std::string::npos) << st.message();
  ModelPolicy bad = Single(1, {}, 3);
  bad.versions = {VersionPolicy{0, {}, std::nullopt, 0, false}};
  st = router.Publish("a", bad);
  EXPECT_NE(st.message().find("versions[0].version"), std::string::npos) << st.message();
  bad.versions = {VersionPolicy{1, {}, BreakerConfig{.half_open_probes = 0}, 0, false}};
  EXPECT_NE(router.Publish("a", bad).message().find("versions[0].breaker"), std::string::npos);
  EXPECT_EQ(router.Publish("a", Single(1, {}, 0)).code(), StatusCode::kFailedPrecondition);  // stale epoch
  EXPECT_TRUE(router.Publish("b", Single(1, {{"c", 0}})).ok());  // no cycle
}

TEST(RouterTest, CacheAnswersRepeatsExactlyAndLastResortOnlyWhenExhausted) {
  Fixture f;
  TestBackend& a = f.Load("a", 1, 2.0f);
  Router router(&f.engine);
  ModelPolicy p = Single(1);
  p.versions = {VersionPolicy{1, {}, std::nullopt, 1 << 20, false}};
  ASSERT_TRUE(router.Publish("a", p).ok());
  CollectSink& sink = f.NewSink();
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(router.Submit("a", RouteRequest{}, f.Request(1, i, &sink)).ok());
      if (round == 0) ASSERT_TRUE(sink.WaitFor(i + 1));
    }
  }
  ASSERT_TRUE(sink.WaitFor(20));
  for (auto& r : sink.results()) {
    ASSERT_TRUE(r.status.ok());
    EXPECT_EQ(Y0(r), static_cast<float>(r.tag) * 2.0f);
    EXPECT_EQ(r.answered_version, 1);
  }
  RouterStats s = router.Stats("a").value();
  EXPECT_EQ(s.cache_hits, 10u);
  EXPECT_EQ(s.cache_misses, 10u);
  EXPECT_EQ(s.versions[0].cache->hits + s.versions[0].cache->misses, 20u);
  // Last resort: used only once `a` fails and nothing else can answer.
  p.route.epoch = 2;
  p.versions[0].cache_last_resort = true;
  p.versions[0].cache_bytes = 2 << 20;  // a new cache
  ASSERT_TRUE(router.Publish("a", p).ok());
  CollectSink& lr = f.NewSink();
  ASSERT_TRUE(router.Submit("a", RouteRequest{}, f.Request(1, 3, &lr)).ok());
  ASSERT_TRUE(lr.WaitFor(1));
  a.fail_all = true;
  ASSERT_TRUE(router.Submit("a", RouteRequest{}, f.Request(1, 3, &lr)).ok());
  ASSERT_TRUE(router.Submit("a", RouteRequest{}, f.Request(1, 4, &lr)).ok());
  ASSERT_TRUE(lr.WaitFor(3));
  auto by = lr.results();
  ASSERT_TRUE(by[1].status.ok() || by[2].status.ok());
  for (size_t i = 1; i < 3; ++i) {
    if (by[i].tag == 3) {
      EXPECT_TRUE(by[i].status.ok());
      EXPECT_EQ(Y0(by[i]), 6.0f);
      EXPECT_EQ(by[i].fallback_reason, FallbackReason::kError);
    } else {
      EXPECT_EQ(by[i].status.code(), StatusCode::kInternal);
    }
  }
}

TEST(RouterTest, PublishWhileSubmittingAnswersEverything) {
  Fixture f;
  f.Load("m", 1, 1.0f);
  f.Load("m", 2, 2.0f, true);
  f.Load("fb", 1, 5.0f);
  Router router(&f.engine);
  ASSERT_TRUE(router.Publish("m", Single(1, {{"fb", 0}})).ok());
  ASSERT_TRUE(router.Publish("fb", Single(1)).ok());
  const int kPer = Scaled(1000), kThreads = 3;
  std::vector<std::vector<InferRequest>> reqs(kThreads);
  CollectSink& sink = f.NewSink();
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPer; ++i) reqs[t].push_back(f.Request(i % 7 == 0 ? kFail : 1.0f, t * kPer + i, &sink));
  }
  std::atomic<bool> stop{false};
  std::thread publisher([&] {
    BreakerConfig bc;
    for (uint64_t e = 2; !stop.load(); ++e) {
      ModelPolicy p;
      p.route.epoch = e;
      p.route.arms = {{1, 0, static_cast<uint32_t>(e * 997 % kRouteBuckets)},
                      {2, static_cast<uint32_t>(e * 997 % kRouteBuckets), kRouteBuckets}};
      if (p.route.arms[0].hi == 0) p.route.arms.erase(p.route.arms.begin());
      p.route.fallback = {{"fb", 0}};
      p.versions = {VersionPolicy{2, {{"fb", 1}}, e % 2 ? std::optional(bc) : std::nullopt, (e % 3) * 4096, false}};
      EXPECT_TRUE(router.Publish("m", p).ok());
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (auto& r : reqs[t]) EXPECT_TRUE(router.Submit("m", RouteRequest{}, r).ok());
    });
  }
  for (auto& t : threads) t.join();
  stop = true;
  publisher.join();
  ASSERT_TRUE(sink.WaitFor(kThreads * kPer));
  auto by_tag = sink.ByTag();
  EXPECT_EQ(by_tag.size(), static_cast<size_t>(kThreads * kPer));
  for (auto& [tag, r] : by_tag) {
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    const float scale = r.answered_model == "fb" ? 5.0f : static_cast<float>(r.answered_version);
    EXPECT_EQ(Y0(r), static_cast<float>(tag) * scale);
  }
}

}  // namespace
}  // namespace inferline
